#!/usr/bin/env bash
# The whole test suite, including the real-kernel (QEMU) proof. Installs what it needs.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test || exit 1
if [ $# -eq 0 ]; then
    echo "test: ruff and mypy"
    .venv/bin/ruff check hachain simulators tests bench || exit 1
    .venv/bin/mypy hachain simulators || exit 1
fi
.venv/bin/python -m pytest "$@"
rc=$?
if [ $rc -eq 5 ]; then
    echo "test: pytest collected no tests: that is a failure" >&2
    exit 1
fi
exit $rc
