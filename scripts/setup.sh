#!/usr/bin/env bash
# Create .venv and install the project with its test tools.
# torch is installed first, pinned to the CPU build: a bare `torch` requirement on a
# machine without torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
# `bash scripts/setup.sh` installs the test tools too; `bash scripts/setup.sh runtime`
# (what the demo runs) only what the service needs.
if [ "${1:-test}" = "runtime" ]; then
    .venv/bin/python -m pip install --quiet -e .
else
    .venv/bin/python -m pip install --quiet -e ".[test]"
fi
