# Sourced by docker/test.sh (steps 1 and 2): a Docker engine that answers (the host's, or
# our own dockerd with its own data root and socket) and the local Debian base image,
# built once from the host's apt mirror. Uses test.sh's variables and log/fail/step_done;
# sets OWN_DOCKERD_PID and POLICY_RC_ADDED for its cleanup.

# ---------------------------------------------------------------- 1. packages, dockerd
missing=()
command -v dockerd > /dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap > /dev/null 2>&1 || missing+=(debootstrap)
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]} with apt-get"
    if [ ! -e /usr/sbin/policy-rc.d ]; then  # no service starts during the install
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        POLICY_RC_ADDED=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || fail "apt-get update failed (is the host's apt mirror reachable?)"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" \
        || fail "apt-get install ${missing[*]} failed"
    if [ "$POLICY_RC_ADDED" = 1 ]; then
        rm -f /usr/sbin/policy-rc.d
        POLICY_RC_ADDED=0
    fi
fi
command -v docker > /dev/null 2>&1 || fail "no docker command line found"

if docker info > /dev/null 2>&1; then
    log "using the running Docker engine ($(docker info -f '{{.ServerVersion}}'))"
else
    export DOCKER_HOST="unix://$RUNDIR/docker.sock"
    if [ -f "$RUNDIR/dockerd.pid" ] && kill -0 "$(cat "$RUNDIR/dockerd.pid")" 2> /dev/null; then
        fail "a dockerd of an earlier run still runs (pid $(cat "$RUNDIR/dockerd.pid"))"
    fi
    rm -f "$RUNDIR/dockerd.pid" "$RUNDIR/docker.sock"
    start_dockerd() {  # extra dockerd flags; returns 1 when dockerd exits while starting
        log "starting dockerd $* (data root $STATE/docker, log $STATE/dockerd.log)"
        echo "==== $(date -Is) dockerd $*" >> "$STATE/dockerd.log"
        dockerd --data-root "$STATE/docker" --exec-root "$RUNDIR/exec" \
            --pidfile "$RUNDIR/dockerd.pid" --host "$DOCKER_HOST" "$@" \
            >> "$STATE/dockerd.log" 2>&1 &
        OWN_DOCKERD_PID=$!
        for _ in $(seq 120); do
            docker info > /dev/null 2>&1 && return 0
            if ! kill -0 "$OWN_DOCKERD_PID" 2> /dev/null; then
                wait "$OWN_DOCKERD_PID" 2> /dev/null || true
                OWN_DOCKERD_PID=""
                return 1
            fi
            sleep 0.5
        done
    }
    if ! start_dockerd; then
        # kernels without the netfilter features docker's bridge setup needs: no iptables
        # rules (the build uses the host network anyway; published ports use docker-proxy)
        tail -5 "$STATE/dockerd.log" >&2
        start_dockerd --iptables=false || {
            tail -20 "$STATE/dockerd.log" >&2
            fail "dockerd exited at start (log: $STATE/dockerd.log)"
        }
    fi
    docker info > /dev/null 2>&1 || fail "dockerd did not answer in 60 s ($STATE/dockerd.log)"
    log "dockerd $(docker info -f '{{.ServerVersion}}') ready, storage $(docker info -f '{{.Driver}}')"
fi
DOCKER_READY=1
docker rm -f "$NAME" > /dev/null 2>&1 || true
step_done "docker engine"

# ------------------------------------------------------------------- 2. the base image
apt_mirror() {  # the host's main Debian archive for $SUITE, from its apt sources
    local file uri=""
    for file in /etc/apt/sources.list.d/*.sources; do
        [ -f "$file" ] || continue
        uri=$(awk -v suite="$SUITE" '
            function flush() {
                if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ") && uris != "")
                    { split(uris, u, " "); print u[1]; found = 1; exit }
                types = suites = uris = ""
            }
            /^[ \t]*$/ { flush(); next }
            /^[ \t]*#/ { next }
            tolower($1) == "types:" { $1 = ""; types = $0 }
            tolower($1) == "suites:" { $1 = ""; suites = $0 }
            tolower($1) == "uris:" { $1 = ""; sub(/^ +/, ""); uris = $0 }
            END { if (!found) flush() }
        ' "$file")
        [ -n "$uri" ] && break
    done
    if [ -z "$uri" ]; then
        local lists=()
        for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
            [ -f "$file" ] && lists+=("$file")
        done
        [ "${#lists[@]}" -gt 0 ] && uri=$(awk -v suite="$SUITE" '$1 == "deb" {
                    i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                    if ($(i + 1) == suite) { print $i; exit } }' "${lists[@]}")
    fi
    printf '%s' "${uri%/}"
}

if [ "${CHAN_TEST_REBUILD_BASE:-0}" != 1 ] && docker image inspect "$BASE" > /dev/null 2>&1; then
    log "base image $BASE exists: reused"
else
    mirror=$(apt_mirror)
    [ -n "$mirror" ] || fail "no deb source for suite $SUITE in /etc/apt/sources.list{,.d}"
    log "debootstrap $SUITE (minbase + python3) from the host's apt mirror $mirror"
    rootfs="$WORK/rootfs"
    debootstrap --variant=minbase \
        --include=python3,python3-venv,ca-certificates,libstdc++6 \
        "$SUITE" "$rootfs" "$mirror" > "$WORK/debootstrap.log" 2>&1 || {
        tail -30 "$WORK/debootstrap.log" >&2
        fail "debootstrap failed (log above)"
    }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | docker import \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'ENV LANG=C.UTF-8' -c 'CMD ["python3"]' - "$BASE" > /dev/null
    rm -rf "$rootfs"
    log "imported $BASE ($(docker image inspect -f '{{.Size}}' "$BASE" | awk '{printf "%.0f MB", $1 / 1e6}'))"
fi
step_done "base image"
