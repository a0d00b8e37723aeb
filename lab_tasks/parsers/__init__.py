"""Parsers for the configuration the checks read on lab hosts: `nginx -T` output and keepalived.conf."""
