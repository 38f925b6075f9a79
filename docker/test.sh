#!/usr/bin/env bash
# End-to-end test of the container image, for a Debian/Ubuntu host without a registry.
#
#   sudo bash docker/test.sh
#
# 1. installs docker.io and debootstrap with apt-get when missing, and starts its own
#    dockerd (data root CHAN_TEST_STATE/docker, log CHAN_TEST_STATE/dockerd.log, own
#    socket) unless a Docker engine already answers, in which case that one is used;
# 2. builds a local Debian base image (debootstrap minbase + python3, python3-venv,
#    ca-certificates) from the host's own apt mirror, once: the image stays cached;
# 3. builds docker/Dockerfile on a copy of the working tree (tracked and untracked,
#    non-ignored files), with the host's CPU torch wheel (from pip's find-links) and CA
#    bundle as build-only inputs, and the host's http(s) package index settings;
# 4. makes a small demo index on the host (`chan demo`, 140 images, 1 epoch);
# 5. runs the image with the index, checkpoint and demo images mounted read-only, a
#    read-only root filesystem, --init, on a free 127.0.0.1 port; waits for the health
#    status, runs scripts/smoke_http.py (text search, image + thumbnail, upload search,
#    score with an upload, search by id, info, a JSON 4xx), checks /healthz, the web
#    page, the user (10001), then `docker stop` (SIGTERM) and the exit within the grace
#    period, and the graceful shutdown in the logs.
# Prints each step's time and "container test passed in N s"; exits non-zero on any
# failure, with the container logs. Re-runnable: the dockerd it started is stopped, its
# container and temporary folder removed, on every exit.
#
# Environment: CHAN_TEST_STATE (/var/lib/chan-docker-test), CHAN_TEST_IMAGE
# (chan-retrieval:test), CHAN_TEST_BASE (chan-test-base:bookworm; CHAN_TEST_REBUILD_BASE=1
# makes it again), CHAN_TEST_SUITE (bookworm), CHAN_TEST_TORCH_INDEX_URL (a CPU torch wheel
# index when the host has no torch wheel in its find-links), CHAN_TEST_TIMEOUT (180 s
# to become healthy).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${CHAN_TEST_STATE:-/var/lib/chan-docker-test}
IMAGE=${CHAN_TEST_IMAGE:-chan-retrieval:test}
BASE=${CHAN_TEST_BASE:-chan-test-base:bookworm}
SUITE=${CHAN_TEST_SUITE:-bookworm}
TORCH_VERSION=2.13.0
READY_TIMEOUT=${CHAN_TEST_TIMEOUT:-180}
STOP_GRACE=15
NAME=chan-container-test
RUNDIR=/run/chan-docker-test

T0=$(date +%s)
STEP_T=$T0
WORK=""
OWN_DOCKERD_PID=""
DEMO_PID=""
POLICY_RC_ADDED=0

log() { printf '[%4ds] %s\n' "$(($(date +%s) - T0))" "$*"; }
step_done() {
    local now
    now=$(date +%s)
    printf '[%4ds] -- %s: %d s\n' "$((now - T0))" "$1" "$((now - STEP_T))"
    STEP_T=$now
}
fail() {
    printf '\nFAILED: %s\n' "$*" >&2
    exit 1
}

cleanup() {
    local rc=$?
    set +e
    if [ "$rc" -ne 0 ] && [ -n "${DOCKER_READY:-}" ] \
        && docker container inspect "$NAME" > /dev/null 2>&1; then
        echo "---- container logs ($NAME) ----" >&2
        docker logs --tail 200 "$NAME" >&2
        echo "---- end of container logs ----" >&2
    fi
    [ -n "${DOCKER_READY:-}" ] && docker rm -f "$NAME" > /dev/null 2>&1
    if [ -n "$DEMO_PID" ] && kill -0 "$DEMO_PID" 2> /dev/null; then
        kill "$DEMO_PID"
        wait "$DEMO_PID" 2> /dev/null
    fi
    if [ -n "$OWN_DOCKERD_PID" ]; then
        log "stopping the dockerd this test started (pid $OWN_DOCKERD_PID)"
        kill "$OWN_DOCKERD_PID" 2> /dev/null
        for _ in $(seq 60); do
            kill -0 "$OWN_DOCKERD_PID" 2> /dev/null || break
            sleep 0.5
        done
        if kill -0 "$OWN_DOCKERD_PID" 2> /dev/null; then
            kill -9 "$OWN_DOCKERD_PID" 2> /dev/null
        fi
        wait "$OWN_DOCKERD_PID" 2> /dev/null
    fi
    [ "$POLICY_RC_ADDED" = 1 ] && rm -f /usr/sbin/policy-rc.d
    [ -n "$WORK" ] && rm -rf "$WORK"
    if [ "$rc" -ne 0 ]; then
        echo "container test FAILED after $(($(date +%s) - T0)) s" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ "$(id -u)" = 0 ] || fail "run as root (it installs packages and starts dockerd)"
mkdir -p "$STATE" "$RUNDIR"
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/chan-docker-test.XXXXXX")

# ------------------------------------------------- 1-2. packages, dockerd, the base image
# shellcheck source=docker/engine.sh
source "$REPO/docker/engine.sh"

# --------------------------------------------------------------- 3. context and build
host_python=python3
[ -x "$REPO/.venv/bin/python" ] && host_python="$REPO/.venv/bin/python"
pip_config=$("$host_python" -m pip config list 2> /dev/null || true)
pip_setting() {  # every value of a pip setting (any scope, env included), one a line
    printf '%s\n' "$pip_config" | sed -n "s/^[^=]*\.$1='\(.*\)'\$/\1/p" | tr ' ' '\n' | sed '/^$/d'
}

ctx="$WORK/context"
mkdir -p "$ctx/wheels"
git -C "$REPO" ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' file; do
        if [ -e "$REPO/$file" ]; then printf '%s\0' "$file"; fi  # skip deleted files
    done \
    | tar -C "$REPO" --null -T - -cf - | tar -C "$ctx" -xf -

build_args=(--build-arg "BASE_IMAGE=$BASE" --build-arg "TORCH_VERSION=$TORCH_VERSION")
torch_wheel=""
while IFS= read -r dir; do
    dir=${dir#file://}
    [ -d "$dir" ] || continue
    for wheel in "$dir"/torch-"$TORCH_VERSION"[+-]*.whl; do
        [ -f "$wheel" ] || continue
        cp "$wheel" "$ctx/wheels/" && torch_wheel=$(basename "$wheel")
    done
done < <(pip_setting find-links)
if [ -n "$torch_wheel" ]; then
    build_args+=(--build-arg PIP_FIND_LINKS=wheels)
    log "torch wheel from pip's find-links: $torch_wheel"
elif [ -n "${CHAN_TEST_TORCH_INDEX_URL:-}" ]; then
    build_args+=(--build-arg "TORCH_INDEX_URL=$CHAN_TEST_TORCH_INDEX_URL")
    log "no torch $TORCH_VERSION wheel in pip's find-links: torch from CHAN_TEST_TORCH_INDEX_URL"
else
    fail "no torch-$TORCH_VERSION wheel in pip's find-links ($(pip_setting find-links | tr '\n' ' '))" \
        "and CHAN_TEST_TORCH_INDEX_URL is not set: the build would pull a CUDA torch"
fi

ca_bundle=$(pip_setting cert | tail -1)
[ -f "$ca_bundle" ] || ca_bundle=/etc/ssl/certs/ca-certificates.crt
if [ -f "$ca_bundle" ]; then
    cp "$ca_bundle" "$ctx/ca.crt"
    build_args+=(--build-arg PIP_CERT=ca.crt)
fi
# package indexes: only http(s) ones reach into the build (file:// ones are host folders)
index_url=$(pip_setting index-url | grep -E '^https?://' | tail -1 || true)
extra_urls=$(pip_setting extra-index-url | grep -E '^https?://' | tr '\n' ' ' | sed 's/ $//' || true)
[ -n "$index_url" ] && build_args+=(--build-arg "PIP_INDEX_URL=$index_url")
[ -n "$extra_urls" ] && build_args+=(--build-arg "PIP_EXTRA_INDEX_URL=$extra_urls")
log "pip settings passed to the build: cert=$([ -f "$ctx/ca.crt" ] && echo yes || echo no)" \
    "index-url=${index_url:+yes}${index_url:-default} extra-index-urls=$(wc -w <<< "$extra_urls")"
step_done "build context ($(du -sh "$ctx" | cut -f1))"

# the demo index is made on the host while the image builds
demo="$WORK/demo"
host_chan=""
[ -x "$REPO/.venv/bin/chan" ] && host_chan="$REPO/.venv/bin/chan"
if [ -n "$host_chan" ]; then
    log "making the demo index on the host in the background ($host_chan demo, 140 images)"
    "$host_chan" demo --workdir "$demo" --images 140 --epochs 1 --train-budget-min 1 \
        --no-serve > "$WORK/demo.log" 2>&1 &
    DEMO_PID=$!
    DEMO_T=$(date +%s)
fi

if [ -z "${DOCKER_BUILDKIT:-}" ] && ! docker buildx version > /dev/null 2>&1; then
    export DOCKER_BUILDKIT=0  # no buildx plugin: the classic builder
fi
log "docker build -t $IMAGE (builder: $([ "${DOCKER_BUILDKIT:-1}" = 0 ] && echo classic || echo BuildKit))"
set +e
# --network host: the build reaches the package index exactly as the host does
docker build --network host -f "$ctx/docker/Dockerfile" -t "$IMAGE" "${build_args[@]}" "$ctx" 2>&1 \
    | tee "$WORK/build.log" \
    | grep --line-buffered -E '^(Step [0-9]+/|pip-build\.sh|torch [0-9]|static:|Successfully (built|tagged)| ---> Using cache)'
build_rc=${PIPESTATUS[0]}
set -e
if [ "$build_rc" -ne 0 ]; then
    tail -40 "$WORK/build.log" >&2
    fail "docker build failed (exit $build_rc)"
fi
step_done "image build"

if [ -n "$DEMO_PID" ]; then
    if ! wait "$DEMO_PID"; then
        DEMO_PID=""
        tail -30 "$WORK/demo.log" >&2
        fail "chan demo failed on the host (log above)"
    fi
    DEMO_PID=""
    log "demo index ready ($(($(date +%s) - DEMO_T)) s on the host, overlapping the build)"
else
    # no host venv: make the demo with the image itself
    log "no $REPO/.venv: making the demo index with the image"
    mkdir -p "$demo"
    chown 10001:10001 "$demo"
    docker run --rm -v "$demo:$demo" "$IMAGE" demo --workdir "$demo" --images 140 \
        --epochs 1 --train-budget-min 1 --no-serve > "$WORK/demo.log" 2>&1 || {
        tail -30 "$WORK/demo.log" >&2
        fail "chan demo failed in the container"
    }
fi
[ -f "$demo/index/manifest.json" ] && [ -f "$demo/run/best/config.json" ] \
    || fail "the demo left no index or checkpoint under $demo"
chmod -R a+rX "$demo/index" "$demo/run/best" "$demo/world"
step_done "demo index"

# -------------------------------------------------------------- 4. the image's content
leaks=$(docker run --rm "$IMAGE" sh -c \
    'ls -d /build /src 2> /dev/null; env | grep -E "^(PIP_|TORCH_)" || true; find / -xdev \
     \( -name "ca.crt" -o -name "torch-*.whl" \) 2> /dev/null || true' | tr '\n' ' ') \
    || fail "could not list the final image's content"
[ -z "$leaks" ] || fail "build-only inputs reached the final image: $leaks"
docker run --rm "$IMAGE" index --help > /dev/null || fail "'index --help' through the entrypoint failed"
log "final image holds no build inputs; 'docker run IMAGE index --help' works"
step_done "image content"

# --------------------------------------------------------------------- 5. run and probe
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base_url="http://127.0.0.1:$port"
log "docker run $IMAGE on $base_url (index and checkpoint read-only, read-only rootfs, --init)"
docker run -d --name "$NAME" --init --read-only --tmpfs /tmp \
    -p "127.0.0.1:$port:8000" \
    -v "$demo/index:/data/index:ro" -v "$demo/run/best:/data/checkpoint:ro" \
    -v "$demo/world:$demo/world:ro" \
    --health-interval 2s --health-start-period 120s \
    "$IMAGE" > /dev/null
RUN_T=$(date +%s)

http_status() {  # METHOD URL [JSON body] -> the status code (000 when unreachable)
    python3 - "$@" << 'EOF'
import sys, urllib.error, urllib.request
method, url = sys.argv[1], sys.argv[2]
body = sys.argv[3].encode() if len(sys.argv) > 3 else None
req = urllib.request.Request(url, data=body, method=method,
                             headers={"Content-Type": "application/json"} if body else {})
try:
    with urllib.request.urlopen(req, timeout=10) as resp:
        print(resp.status)
except urllib.error.HTTPError as exc:
    print(exc.code)
except OSError:
    print("000")
EOF
}

ready_at="" healthy_at=""
while :; do
    elapsed=$(($(date +%s) - RUN_T))
    state=$(docker inspect -f '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' "$NAME")
    [ "${state%% *}" = running ] || fail "the container stopped while starting ($state)"
    if [ -z "$ready_at" ] && [ "$(http_status GET "$base_url/readyz")" = 200 ]; then
        ready_at=$elapsed
        log "/readyz answers 200 from the host after $ready_at s"
    fi
    if [ "${state#* }" = healthy ]; then
        healthy_at=$elapsed
        log "container health status: healthy after $healthy_at s"
        break
    fi
    [ "$elapsed" -lt "$READY_TIMEOUT" ] || fail "not healthy within $READY_TIMEOUT s ($state)"
    sleep 1
done
step_done "start until healthy"

# the API as a user calls it: text search, the image and its thumbnail, an upload search,
# score with an upload, a search by gallery id, /v1/info, a JSON 4xx (stdlib client)
python3 "$REPO/scripts/smoke_http.py" "$base_url" > "$WORK/smoke.log" 2>&1 || {
    cat "$WORK/smoke.log" >&2
    fail "the HTTP checks against the container failed"
}
sed 's/^/    /' "$WORK/smoke.log"

code=$(http_status GET "$base_url/healthz")
[ "$code" = 200 ] || fail "GET /healthz answered $code"
code=$(http_status GET "$base_url/")
[ "$code" = 200 ] || fail "GET / (web page) answered $code"
code=$(http_status GET "$base_url/static/app.js")
[ "$code" = 200 ] || fail "GET /static/app.js answered $code"
log "GET /healthz, / and /static/app.js: 200"

uid=$(docker exec "$NAME" id -u)
[ "$uid" = 10001 ] || fail "docker exec id -u printed $uid, expected 10001"
pid1=$(docker inspect -f '{{.State.Pid}}' "$NAME")
server_uids=""
for status in /proc/[0-9]*/status; do  # the container's init and its children
    entry=$(awk -v top="$pid1" '/^Pid:/ {pid = $2} /^PPid:/ {ppid = $2} /^Uid:/ {uid = $2}
        END {if (pid == top || ppid == top) print uid}' "$status" 2> /dev/null || true)
    [ -n "$entry" ] && server_uids+="$entry "
done
[ -n "$server_uids" ] || fail "no process of the container found under /proc"
for u in $server_uids; do
    [ "$u" = 10001 ] || fail "a container process runs as uid $u (uids: $server_uids)"
done
log "user: docker exec id -u = $uid; init and server processes run as uid $server_uids"
step_done "probes"

stop_t0=$(date +%s.%N)
docker stop -t "$STOP_GRACE" "$NAME" > /dev/null
stop_s=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" \
    "$stop_t0" "$(date +%s.%N)")
exit_code=$(docker inspect -f '{{.State.ExitCode}}' "$NAME")
too_slow=$(python3 -c "import sys; print(int(float(sys.argv[1]) >= $STOP_GRACE))" "$stop_s")
if [ "$exit_code" = 137 ] || [ "$too_slow" = 1 ]; then
    fail "docker stop: not stopped by SIGTERM within $STOP_GRACE s (took $stop_s s, exit $exit_code)"
fi
# the logs go to a file first: `docker logs | grep -q` under pipefail fails at random
# (grep exits at the first match and docker logs dies of SIGPIPE)
docker logs "$NAME" > "$WORK/container.log" 2>&1 || fail "docker logs $NAME failed"
grep -q -i -E 'shutting down|finished server process' "$WORK/container.log" \
    || fail "no graceful shutdown in the logs"
log "docker stop (SIGTERM): exited with code $exit_code after $stop_s s (grace $STOP_GRACE s)"
step_done "stop"

docker image ls "$IMAGE" --format 'image {{.Repository}}:{{.Tag}}  {{.Size}}'
[ -n "$OWN_DOCKERD_PID" ] && docker image prune -f > /dev/null 2>&1 || true
echo "container test passed in $(($(date +%s) - T0)) s"
