#!/usr/bin/env bash
# The project venv at .venv with `lab` on its PATH: `pip install -e '.[dev]'`, rerun only when
# pyproject.toml changed (a stamp file holds its hash).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv
stamp="$venv/.opslab-installed"
python=${PYTHON:-python3}
wanted=$(sha256sum pyproject.toml | cut -d' ' -f1)

if [[ -x "$venv/bin/lab" && -f "$stamp" && "$(cat "$stamp")" == "$wanted" ]]; then
    echo "venv: up to date ($venv)"
    exit 0
fi
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
echo "venv: pip install -e '.[dev]' (a few minutes the first time)"
"$venv/bin/pip" install -q -e '.[dev]'
echo "$wanted" > "$stamp"
echo "venv: ready ($venv/bin/lab)"
