#!/usr/bin/env bash
# The main job on the embedded default: the whole chain as PID 1 of a simulated machine
# with the software watchdog. With no arguments it runs a guided tour (a crash and a hang
# of the restarter) and keeps running until Ctrl-C; any arguments go to `hachain sim`
# instead (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ $# -eq 0 ]; then
    set -- --tour
fi
exec .venv/bin/hachain sim "$@"
