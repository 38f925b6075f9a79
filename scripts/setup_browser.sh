#!/usr/bin/env bash
# Headless Chromium (Debian's package) for the web page test; scripts/test.sh runs this,
# the demo does not need it. Nothing is downloaded by the tests themselves. Best effort:
# without chromium that one test is skipped, with a warning here and in pytest's summary.
set -uo pipefail
command -v chromium >/dev/null 2>&1 && exit 0
command -v apt-get >/dev/null 2>&1 || { echo "setup: no apt-get; install chromium" >&2; exit 0; }
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
if ! { $SUDO apt-get install -y -qq chromium >/dev/null 2>&1 \
    || { $SUDO apt-get update -qq >/dev/null 2>&1 \
         && $SUDO apt-get install -y -qq chromium >/dev/null 2>&1; }; }; then
    echo "setup: could not install chromium; the web page test will be skipped" >&2
fi
exit 0
