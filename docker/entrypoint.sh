#!/bin/sh
# Entry point of the chan-retrieval image.
#
#   (no arguments) | serve [flags]    -> chan serve [flags]   (settings from CHAN_* env)
#   --port 9000 ... (flags only)      -> chan serve --port 9000 ...
#   index build ... | demo | synth | extract | train | eval | score | bench | ...
#                                     -> chan <subcommand> ...
#   anything else (sh, python, chan ...) -> run as given
#
# Every branch ends in exec: the server replaces this shell, so SIGTERM from `docker stop`
# (directly as PID 1, or forwarded by `docker run --init`) reaches uvicorn, which stops
# accepting connections and finishes the requests in flight.
set -eu

if [ "$#" -eq 0 ]; then
    exec chan serve
fi

case "$1" in
    serve)
        shift
        exec chan serve "$@"
        ;;
    -h | --help | -v | --verbose)
        exec chan "$@"
        ;;
    -*)
        exec chan serve "$@"
        ;;
    synth | extract | train | eval | score | import-official | index | demo | bench)
        exec chan "$@"
        ;;
    *)
        exec "$@"
        ;;
esac
