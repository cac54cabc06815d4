#!/usr/bin/env bash
# The main job on the embedded default: the whole chain as PID 1 of a simulated machine
# with the software watchdog. Extra arguments go to `hachain sim` (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/hachain sim "$@"
