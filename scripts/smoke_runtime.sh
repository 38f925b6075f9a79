#!/usr/bin/env bash
# The user's install, tested as the user gets it: a fresh virtual environment with
# exactly what scripts/demo.sh installs (`scripts/setup.sh runtime`, no test tools), a
# small `chan demo --no-serve` run from outside the checkout, `chan serve` on a free
# loopback port, and scripts/smoke_http.py against it (text search, image and
# thumbnail, upload search, score with an upload, search by gallery id, info, a 4xx),
# then SIGTERM and a clean exit. scripts/test.sh runs it after pytest.
#
#   bash scripts/smoke_runtime.sh      # CHAN_SMOKE_IMAGES (300) sets the world size
#
# Prints each step's time; exits non-zero with the logs on any failure. Everything it
# makes lives in one temporary folder, removed on exit; it stops only its own server.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMAGES=${CHAN_SMOKE_IMAGES:-300}
READY_TIMEOUT_S=120
WORK=$(mktemp -d "${TMPDIR:-/tmp}/chan-runtime-smoke.XXXXXX")
SERVER_PID=""
T0=$(date +%s)

log() { printf '[runtime smoke %4ds] %s\n' "$(($(date +%s) - T0))" "$*"; }
fail() {
    printf 'runtime smoke FAILED: %s\n' "$*" >&2
    exit 1
}
cleanup() {
    local rc=$?
    set +e
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2> /dev/null; then
        kill -9 "$SERVER_PID"
        wait "$SERVER_PID" 2> /dev/null
    fi
    if [ "$rc" -ne 0 ]; then
        for file in "$WORK/setup.log" "$WORK/demo.log" "$WORK/serve.log"; do
            [ -f "$file" ] || continue
            echo "---- last lines of $(basename "$file") ----" >&2
            tail -40 "$file" >&2
        done
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

venv="$WORK/venv"
CHAN_VENV="$venv" bash "$REPO/scripts/setup.sh" runtime > "$WORK/setup.log" 2>&1 \
    || fail "scripts/setup.sh runtime failed (exit $?)"
[ -x "$venv/bin/chan" ] || fail "scripts/setup.sh runtime left no chan command in $venv"
"$venv/bin/python" - << 'PY' || fail "the runtime install is not the user's install"
import importlib.util, sys
test_tools = ("pytest", "httpx", "hypothesis", "schemathesis", "playwright", "deptry")
found = [name for name in test_tools if importlib.util.find_spec(name)]
sys.exit(f"test tools in the runtime install: {found}" if found else 0)
PY
log "runtime install in a fresh venv (scripts/setup.sh runtime, no test tools)"

cd "$WORK"  # nothing from the checkout's working directory can leak in
"$venv/bin/chan" demo --workdir "$WORK/demo" --images "$IMAGES" --epochs 1 \
    --train-budget-min 1 --no-serve > "$WORK/demo.log" 2>&1 \
    || fail "chan demo --no-serve failed (exit $?)"
log "chan demo --no-serve: $IMAGES-image world, features, model (1 epoch), index"

port=$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$venv/bin/chan" serve --index "$WORK/demo/index" --checkpoint "$WORK/demo/run/best" \
    --port "$port" > "$WORK/serve.log" 2>&1 &
SERVER_PID=$!
"$venv/bin/python" "$REPO/scripts/smoke_http.py" "http://127.0.0.1:$port" \
    --wait-ready "$READY_TIMEOUT_S" --server-pid "$SERVER_PID" \
    || fail "the HTTP checks against chan serve failed"
log "chan serve (runtime install) answered every check"

kill -TERM "$SERVER_PID"
server_rc=0
wait "$SERVER_PID" || server_rc=$?
SERVER_PID=""
# uvicorn shuts down gracefully, then re-raises the signal it caught: 0 or 128 + 15
[ "$server_rc" -eq 0 ] || [ "$server_rc" -eq 143 ] \
    || fail "chan serve exited with $server_rc after SIGTERM"
# grep reads files, not pipes: stopping at the first match cannot fail a writer
grep -q 'Application shutdown complete' "$WORK/serve.log" \
    || fail "no graceful shutdown in the server log"
if grep -n -E 'Traceback| (ERROR|CRITICAL) ' "$WORK/serve.log" > "$WORK/errors.txt"; then
    fail "the server logged errors: $(head -5 "$WORK/errors.txt")"
fi
log "SIGTERM: chan serve shut down gracefully (exit $server_rc), no error in its log"
log "runtime smoke test passed"
