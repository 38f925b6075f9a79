#!/bin/sh
# pip for the build stage of docker/Dockerfile (never copied into the final image).
#
#   pip-build.sh STEP [pip install arguments...]
#
# Turns the build arguments into pip settings: PIP_CERT and PIP_FIND_LINKS name files of
# the build context, copied by the Dockerfile to /build/ca-bundle.pem and
# /build/find-links/; empty settings are removed so that pip falls back to its defaults.
# STEP "torch" also takes TORCH_INDEX_URL (as --index-url) when it is set.
# PIP_EXTRA_ARGS is split into words on purpose.
set -eu

step=${1:?usage: pip-build.sh STEP [pip install arguments...]}
shift

if [ -n "${PIP_CERT:-}" ]; then
    export PIP_CERT=/build/ca-bundle.pem
else
    unset PIP_CERT
fi
if [ -n "${PIP_FIND_LINKS:-}" ]; then
    export PIP_FIND_LINKS=/build/find-links
else
    unset PIP_FIND_LINKS
fi
for name in PIP_INDEX_URL PIP_EXTRA_INDEX_URL; do
    eval "value=\${$name:-}"
    [ -n "$value" ] || unset "$name"
done

if [ "$step" = torch ] && [ -n "${TORCH_INDEX_URL:-}" ]; then
    set -- --index-url "$TORCH_INDEX_URL" "$@"
fi

# values are not printed: index URLs may carry credentials
shown() { if [ -n "$1" ]; then echo set; else echo default; fi; }
echo "pip-build.sh $step: cert=${PIP_CERT:-default} find-links=${PIP_FIND_LINKS:-none}" \
    "index=$(shown "${PIP_INDEX_URL:-}") extra-index=$(shown "${PIP_EXTRA_INDEX_URL:-}")" \
    "torch-index=$(shown "${TORCH_INDEX_URL:-}")"
# shellcheck disable=SC2086  # PIP_EXTRA_ARGS holds several arguments
exec /opt/venv/bin/python -m pip install --no-input --progress-bar off ${PIP_EXTRA_ARGS:-} "$@"
