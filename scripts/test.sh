#!/usr/bin/env bash
# Set up .venv (scripts/setup.sh) and run the checks: ruff lint + format, pytest, then
# the container test (docker/test.sh). Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup_browser.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -q "$@"
# The container recipe, built and run for real (needs root to start its own dockerd).
if [ "$(id -u)" -eq 0 ] && [ -z "${CHAN_SKIP_DOCKER_TEST:-}" ]; then
    bash docker/test.sh
else
    echo "test.sh: docker/test.sh skipped (needs root; CHAN_SKIP_DOCKER_TEST unset)" >&2
fi
