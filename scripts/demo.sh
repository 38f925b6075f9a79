#!/usr/bin/env bash
# Set up .venv (scripts/setup.sh), then run the demo: synthetic world, features, demo
# model, index, and the API + web page on http://127.0.0.1:8000. Arguments go to
# `chan demo` (e.g. --port 8080). A second run reuses everything already built.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh runtime
exec .venv/bin/chan demo "$@"
