#!/usr/bin/env bash
# Set up .venv (scripts/setup.sh) and run the checks: ruff lint + format, the dependency
# check (deptry), pytest, the runtime-install smoke test (scripts/smoke_runtime.sh: a
# fresh venv with only what the demo installs, serving real HTTP), then the container
# test (docker/test.sh). Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup_browser.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/deptry .
.venv/bin/python -m pytest -q "$@"
bash scripts/smoke_runtime.sh
# The container recipe, built and run for real (needs root to start its own dockerd).
if [ "$(id -u)" -eq 0 ] && [ -z "${CHAN_SKIP_DOCKER_TEST:-}" ]; then
    bash docker/test.sh
else
    echo "test.sh: docker/test.sh skipped (needs root; CHAN_SKIP_DOCKER_TEST unset)" >&2
fi
