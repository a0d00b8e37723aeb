#!/usr/bin/env bash
# Build the offline wheelhouse the inference nodes install from: the server's runtime dependencies as
# CPython 3.11 manylinux x86-64 wheels (torch for the chosen variant) plus our own wheel, and the model,
# under ${OPSLAB_CACHE:-/var/cache/opslab}/wheelhouse. Cached: dependencies are downloaded again only when
# pyproject.toml changes, our wheel is rebuilt only when its sources change.
#
#   scripts/build-wheelhouse.sh [--variant cpu|cu126|cu128] [--model FILE] [--torch-index-url URL]
#
# Prints one JSON line (the manifest plus "changed"). Serve it with
#   python -m lab_tasks.wheelhouse serve --bind 10.213.7.1 --port 8070
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
exec "$PYTHON" -m lab_tasks.wheelhouse build "$@"
