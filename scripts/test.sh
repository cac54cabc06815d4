#!/usr/bin/env bash
# The test suite, including the real-kernel (QEMU) proof. Installs what it needs.
#
#   bash scripts/test.sh              ruff and mypy, the fast lane, then every other test
#                                     (CI runs this: .ci/run)
#   bash scripts/test.sh --fast [ARG...]  ruff and mypy, then the fast lane only: the pure
#                                     and unit tests, about 3 minutes on two cores
#   bash scripts/test.sh ARG...       pytest ARG... as given (one file, -k, ...)
#
# The lanes are split by pytest markers (pyproject.toml): `qemu` boots a kernel, `slow`
# runs a whole chain, a benchmark, a campaign or a wait of several seconds. The fast lane
# deselects both and the second lane selects exactly them, so no test runs twice. The
# second lane does not start when the fast lane fails. pytest's exit 5 (no test ran) is
# a failure in every lane.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test || exit 1

FAST="not qemu and not slow"
# Both lanes run on pytest-xdist workers: the second lane mostly waits (on timers,
# heartbeats, watchdog timeouts, guests booting) and the workers overlap those waits; the
# fast lane's 1500-odd short tests share the cores (6 min in one process, under 3 min on
# three workers). The QEMU tests stay on one worker (tests/conftest.py,
# pytest_xdist_make_scheduler). HACHAIN_TEST_WORKERS=0 runs each lane in one process.
WORKERS="${HACHAIN_TEST_WORKERS:-3}"

lint() {
    echo "test: ruff and mypy"
    .venv/bin/ruff check hachain tests bench || exit 1
    .venv/bin/mypy hachain || exit 1
}

# pytest with ARGS; exits this script on a failure (no test collected counts as one)
lane() {
    local what=$1
    shift
    .venv/bin/python -m pytest "$@"
    local rc=$?
    if [ $rc -eq 5 ]; then
        echo "test: $what: pytest collected no tests: that is a failure" >&2
        exit 1
    fi
    if [ $rc -ne 0 ]; then
        echo "test: $what failed (exit $rc)" >&2
        exit $rc
    fi
}

if [ "${1:-}" = "--fast" ]; then
    shift
    lint
    lane "fast lane" -m "$FAST" -n "$WORKERS" "$@"
    exit 0
fi
if [ $# -gt 0 ]; then
    lane "pytest $*" "$@"
    exit 0
fi
lint
echo "test: the fast lane (pure and unit tests: -m '$FAST')"
lane "fast lane" -m "$FAST" -n "$WORKERS"
echo "test: the rest (whole chains, campaigns, benchmarks, QEMU: -m 'not ($FAST)')"
# its 15 longest tests are listed at the end: what keeps CI's run long, in every CI log
lane "slow lane" -m "not ($FAST)" -n "$WORKERS" --durations=15
