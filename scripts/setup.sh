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
MODE="${1:-test}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
case "$MODE" in
    # The runtime install skips byte-compiling at install time (about 45 s less):
    # Python compiles what a command imports when it first imports it. The test install
    # compiles everything: its many test processes would otherwise each recompile torch
    # where PYTHONDONTWRITEBYTECODE is set (as in CI).
    runtime) COMPILE=(--no-compile); TARGET=(-e .) ;;
    test) COMPILE=(); TARGET=(-e ".[test]") ;;
    *) echo "setup.sh: unknown install '$MODE' (runtime or test)" >&2; exit 2 ;;
esac
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "${COMPILE[@]}" "torch==2.13.0"
"$VENV/bin/python" -m pip install --quiet "${COMPILE[@]}" "${TARGET[@]}"
