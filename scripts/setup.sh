#!/usr/bin/env bash
# Create a virtual environment (.venv, or CHAN_VENV) and install the project in it.
#   bash scripts/setup.sh           the project with its test tools (what the tests use)
#   bash scripts/setup.sh runtime   only what the product needs (the demo, a user install)
# torch is installed first, pinned to the CPU build: a bare `torch` requirement on a
# machine without torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
VENV="${CHAN_VENV:-.venv}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "torch==2.13.0"
case "${1:-test}" in
    runtime) "$VENV/bin/python" -m pip install --quiet -e . ;;
    test) "$VENV/bin/python" -m pip install --quiet -e ".[test]" ;;
    *) echo "setup.sh: unknown install '$1' (runtime or test)" >&2; exit 2 ;;
esac
