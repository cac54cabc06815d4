"""The restarter's CPU priority (`[chain] restarter_nice`, default -5): it runs at that
nice value so that its control answers and heartbeats do not queue behind other jobs on
a busy host, and everything it spawns starts at nice 0 (SCHED_RESET_ON_FORK), whichever
spawn path it takes. Refused (not root): one warning, and it runs on at 0."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from hachain import channels
from tests.conftest import SVC, wait_until

PY = sys.executable


def nice_of(pid: int) -> int:
    """Field 19 of /proc/PID/stat (proc(5)): the nice value."""
    fields = channels.proc_fields(pid)  # from field 3 on
    assert fields is not None, f"pid {pid} is gone"
    return int(fields[19 - 3])


def policy_of(pid: int) -> int:
    return os.sched_getscheduler(pid)


@pytest.mark.skipif(os.geteuid() != 0, reason="a negative nice value needs root")
def test_the_restarter_runs_above_its_services(restarter: Any) -> None:
    r = restarter(f"""
[service.plain]
command = ["{PY}", "{SVC}", "sleep"]

[service.shell]
command = "exec {PY} {SVC} sleep"
shell = true
""")
    a = r.wait_state("plain", "ready")
    b = r.wait_state("shell", "ready")
    assert nice_of(r.proc.pid) == -5
    # the flag rides on the policy; SCHED_OTHER is 0
    assert policy_of(r.proc.pid) & ~os.SCHED_RESET_ON_FORK == os.SCHED_OTHER
    for s in (a, b):
        assert nice_of(s["pid"]) == 0, s
        assert policy_of(s["pid"]) == os.SCHED_OTHER  # not even the reset flag inherited
    # a restart spawns afresh: still 0
    pid = a["pid"]
    r.req("restart", "plain")
    again = wait_until(lambda: (s := r.svc("plain"))["state"] == "ready"
                       and s["pid"] != pid and s, 20, "plain ready again")
    assert nice_of(again["pid"]) == 0


def test_refused_priority_is_one_warning() -> None:
    """Without CAP_SYS_NICE the call is refused: a warning naming the key, no raise."""
    code = ("from hachain.restarter.loop import take_priority; "
            "print(take_priority(-5)); print(take_priority(0))")
    # root without CAP_SYS_NICE (dropped from the bounding set before exec) is refused
    # as an ordinary user is
    drop = ["setpriv", "--bounding-set", "-sys_nice", "--inh-caps", "-sys_nice", "--"] \
        if os.geteuid() == 0 else []
    out = subprocess.run([*drop, PY, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.splitlines()
    assert first.startswith("cannot run at restarter_nice -5 (") and \
        "control requests" in first
    assert second == "None"
