"""Readiness and health commands run as their service runs, never as the restarter.

A check of a service that runs as `nobody` ran as root before: a script the service's
user could rewrite then ran with root's rights at every check. Now each runs with the
service's user and groups, umask and oom_score_adj. A real restarter, real checks: each
check below passes only when it runs with the service's identity, and fails (visibly,
in the status's health detail or as a readiness timeout) when it does not.
"""

from __future__ import annotations

import os
import socket
import sys
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


NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0,
                                reason="private_tmp and private_network need root (namespaces)")


@pytest.mark.slow
@NEEDS_ROOT
def test_a_health_command_of_a_sandboxed_service_runs_in_its_sandbox(
        restarter: Any, tmp_path: Any) -> None:
    """A check of a service with a world of its own runs in that world, as its stop
    command does: it sees the service's private /tmp (a socket or pid file kept there),
    has its MAINPID, its no_new_privileges and its address-family filter. Run from the
    host, each of these fails with its own status."""
    mark = f"hachain-check-{tmp_path.name}"
    refused = f"{sys.executable} -c 'import socket; socket.socket(socket.AF_INET)'"
    check = (f"test -e /tmp/{mark} || exit 3; [ -n \\\"$MAINPID\\\" ] && "
             "kill -0 $MAINPID || exit 4; grep -q 'NoNewPrivs:.1' /proc/self/status || exit 5; "
             f"{refused} 2>/dev/null && exit 6; exit 0")
    r = restarter(f'''
[service.web]
command = ["/bin/sh", "-c", "touch /tmp/{mark}; exec sleep 1000"]
private_tmp = true
no_new_privileges = true
restrict_address_families = ["AF_UNIX"]
health = {{ kind = "exec", command = ["/bin/sh", "-c", "{check}"], interval = 0.1, failures = 50 }}
''')
    assert not os.path.exists(f"/tmp/{mark}")  # (not in the host's /tmp)
    r.wait_state("web", "ready", timeout=RUN_BOUND)
    # (ready at its spawn: a first check may come before its shell has made the file,
    # and fail with 3; from the host every check would fail, each with its own status)
    st = wait_until(lambda: (h := r.svc("web")["health"])["last"] == "exit status 0" and h,
                    RUN_BOUND, "a health check to pass")
    assert st["failures"] == 0


@pytest.mark.slow
@NEEDS_ROOT
def test_a_readiness_command_reaches_a_private_network_services_loopback(
        restarter: Any) -> None:
    """The service listens on its own loopback; nothing listens on that port on the
    host's. Ready only if the check connects from inside the service's network
    namespace (from the host's, every try is refused until ready_timeout)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free on the host's loopback
    serve = (f"import socket; s = socket.socket(); s.bind(('127.0.0.1', {port})); "
             "s.listen(); import time; time.sleep(1000)")
    probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), 2)"
    r = restarter(f'''
[service.web]
command = ["{sys.executable}", "-c", "{serve}"]
private_network = true
ready = "exec"
ready_command = ["{sys.executable}", "-c", "{probe}"]
ready_timeout = 20
restart = "never"
''')
    st = r.wait_state("web", "ready", timeout=RUN_BOUND)
    assert st["restarts"] == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), 2).close()  # (not on the host's)
