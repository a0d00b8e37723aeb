"""The one-box lab: a cached Debian 12 golden image and the lab hosts as systemd-nspawn containers."""
