"""Readiness and health commands run as their service runs, never as the restarter.

A check of a service that runs as `nobody` ran as root before: a script the service's
user could rewrite then ran with root's rights at every check. Now each runs with the
service's user and groups, umask and oom_score_adj. A real restarter, real checks: each
check below passes only when it runs with the service's identity, and fails (visibly,
in the status's health detail or as a readiness timeout) when it does not.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import wait_until

RUN_BOUND = 30.0  # a few checks, each a /bin/sh; no chain timer involved
NOBODY = 65534


@pytest.mark.slow
def test_a_readiness_command_runs_as_the_services_user(restarter: Any) -> None:
    """Ready only if `id -u` in the check says nobody: a check run as root never
    passes, and the start fails at its ready_timeout."""
    r = restarter(f'''
[service.web]
command = ["/bin/sleep", "1000"]
user = "nobody"
ready = "exec"
ready_command = ["/bin/sh", "-c", "test $(id -u) = {NOBODY} && test $(id -g) = {NOBODY}"]
ready_timeout = 20
restart = "never"
''')
    st = r.wait_state("web", "ready", timeout=RUN_BOUND)
    assert st["restarts"] == 0


@pytest.mark.slow
def test_a_health_command_runs_with_the_services_user_umask_and_oom_score(
        restarter: Any) -> None:
    """The check exits 0 only as nobody, with umask 027 and oom_score_adj 300 (raising
    it needs no privilege, so this holds on any host); each wrong one gives its own
    status, shown as the health detail."""
    check = (f"[ $(id -u) = {NOBODY} ] || exit 3; [ $(umask) = 0027 ] || exit 4; "
             "[ $(cat /proc/self/oom_score_adj) = 300 ] || exit 5")
    r = restarter(f'''
[service.web]
command = ["/bin/sleep", "1000"]
user = "nobody"
umask = "027"
oom_score_adj = 300
health = {{ kind = "exec", command = ["/bin/sh", "-c", "{check}"], interval = 0.1, failures = 50 }}
''')
    r.wait_state("web", "ready", timeout=RUN_BOUND)
    st = wait_until(lambda: (h := r.svc("web")["health"])["last"] and h, RUN_BOUND,
                    "a health check to finish")
    assert st["last"] == "exit status 0", st
    assert st["failures"] == 0
