"""A service that cannot be started says which setting is at fault, with the errno, and
follows its restart policy (issue 16.7). Real spawns: a missing cwd, an unknown user, a
missing program, and a restarter without the capabilities to raise an rlimit or to
switch users."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys

import pytest

from hachain.restarter import spawn
from tests.conftest import wait_until

MISSING = "/nonexistent-hachain"


def _reason(r, name: str, state: str) -> str:
    return r.wait_state(name, state, 15)["reason"]


@pytest.mark.slow
def test_each_setting_is_named_and_never_retried_with_restart_never(restarter):
    r = restarter(f"""
[service.nocwd]
command = ["/bin/true"]
cwd = "{MISSING}/dir"
restart = "never"
[service.nouser]
command = ["/bin/true"]
user = "no-such-user-hachain"
restart = "never"
[service.nogroup]
command = ["/bin/true"]
group = "no-such-group-hachain"
restart = "never"
[service.noprog]
command = ["{MISSING}/prog", "--flag"]
restart = "never"
[service.noprog2]
command = ["{MISSING}/prog"]
cwd = "/"
restart = "never"
[service.notinpath]
command = ["no-such-program-hachain"]
restart = "never"
""")
    tail = "; not retried (restart = never)"
    assert _reason(r, "nocwd", "failed") == \
        f'cannot start: cwd = "{MISSING}/dir": chdir: No such file or directory ' \
        f'(errno ENOENT){tail}'
    assert _reason(r, "nouser", "failed") == \
        f'cannot start: user = "no-such-user-hachain": no such user{tail}'
    assert _reason(r, "nogroup", "failed") == \
        f'cannot start: group = "no-such-group-hachain": no such group{tail}'
    for name in ("noprog", "noprog2"):  # posix_spawn, and subprocess (for the cwd)
        assert _reason(r, name, "failed") == \
            f'cannot start: command[0] = "{MISSING}/prog": exec: No such file or ' \
            f'directory (errno ENOENT){tail}'
    assert _reason(r, "notinpath", "failed") == \
        'cannot start: command[0] = "no-such-program-hachain": exec: No such file or ' \
        f'directory (errno ENOENT){tail}'
    st = r.svc("nocwd")
    assert st["last_exit"]["kind"] == "spawn" and st["restarts"] == 0
    log = open(r.log).read()
    assert f'cannot start nocwd: cwd = "{MISSING}/dir": chdir: No such file or directory ' \
        f'(errno ENOENT){tail}' in log
    assert "preexec_fn" not in log


def test_a_failed_start_follows_the_restart_policy_and_intensity(restarter):
    r = restarter(f"""
[service.nocwd]
command = ["/bin/true"]
cwd = "{MISSING}/dir"
restart = "on-failure"
backoff = {{ initial = 0.2, factor = 1.0, max = 0.2 }}
intensity = {{ max_restarts = 2, window = 60, action = "maintenance" }}
""")
    why = _reason(r, "nocwd", "maintenance")
    assert why.startswith(f'cannot start: cwd = "{MISSING}/dir": chdir: ')
    assert "maintenance: 3 restarts in 60 s (limit 2); last: could not be started" in why
    said = [line for line in open(r.log).read().splitlines()
            if line.startswith("hachain-restarter: cannot start nocwd: ")]
    assert len(said) == 3
    assert all(line.endswith("; retrying per restart policy in 0.2 s") for line in said[:2])


@pytest.mark.slow
def test_dependents_of_a_service_that_cannot_start_say_why(restarter):
    r = restarter(f"""
[service.prepare]
kind = "oneshot"
command = ["{MISSING}/prepare"]
[service.app]
command = ["/bin/sleep", "1000"]
requires = ["prepare"]
""")
    r.wait_state("prepare", "failed")
    assert wait_until(lambda: r.svc("app")["reason"] ==
                      "waiting for prepare: failed (could not be started)", 10, "app's reason")


def _unprivileged_restarter(r) -> None:
    """Start `r`'s restarter as root without CAP_SYS_RESOURCE, CAP_SETUID and CAP_SETGID
    (dropped from the bounding set, so the exec'd Python lacks them) and with a hard
    RLIMIT_NOFILE of 4096."""
    import resource
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv (util-linux) to drop capabilities")
    caps = "-sys_resource,-setuid,-setgid"
    logf = open(r.log, "ab")
    r.proc = subprocess.Popen(
        ["setpriv", "--bounding-set", caps, "--inh-caps", caps,
         sys.executable, "-m", "hachain.restarter", "-c", r.config],
        stdout=logf, stderr=logf,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096)))
    logf.close()
    wait_until(r.ping, 10, "the restarter's control socket")


def test_rlimit_and_credential_failures_name_the_setting_and_errno(restarter):
    r = restarter("""
[service.lim]
command = ["/bin/sleep", "1000"]
rlimits = { nofile = 65535 }
restart = "on-failure"
backoff = { initial = 30, factor = 1.0, max = 30 }
[service.cred]
command = ["/bin/sleep", "1000"]
user = "nobody"
restart = "never"
[service.credlim]
command = ["/bin/sleep", "1000"]
user = "nobody"
rlimits = { nofile = [64, 128] }
restart = "never"
""", start=False)
    _unprivileged_restarter(r)
    assert _reason(r, "lim", "backoff") == \
        "cannot start: rlimits.nofile = 65535: setrlimit: Operation not permitted " \
        "(errno EPERM); retrying per restart policy in 30 s"
    # started straight into its cgroup (clone3, spawn.py), the child says which call
    # failed; without a preexec function, subprocess switches users and cannot say which
    # call failed; with one (for the rlimits, set first, while still root), it can
    direct = r.cg_root is not None and spawn.direct_spawn_available()
    assert _reason(r, "cred", "failed") == \
        'cannot start: user = "nobody": ' + \
        ("setgroups" if direct else "switching credentials") + \
        ": Operation not permitted (errno EPERM); not retried (restart = never)"
    assert _reason(r, "credlim", "failed") == \
        'cannot start: user = "nobody": setgroups: Operation not permitted (errno EPERM); ' \
        "not retried (restart = never)"
    log = open(r.log).read()
    assert "cannot start lim: rlimits.nofile = 65535: setrlimit: Operation not permitted " \
        "(errno EPERM); retrying per restart policy in 30 s" in log


@pytest.fixture
def shared_dir():
    """A directory `nobody` can write to (pytest's tmp_path is private to root)."""
    import tempfile
    d = tempfile.mkdtemp(prefix="hachain-spawn-")
    os.chmod(d, 0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_a_user_service_gets_its_own_groups_not_roots(restarter, shared_dir):
    """user = "nobody" without group: nobody's primary group and supplementary groups
    (as initgroups gives them), never root's gid 0 or root's supplementary groups."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch users")
    out = os.path.join(shared_dir, "ids")
    r = restarter(f"""
[service.plain]
command = ["/bin/sh", "-c", "echo $(id -u) $(id -g) $(id -G) > {out}; exec sleep 1000"]
user = "nobody"
[service.limited]
command = ["/bin/sh", "-c", "echo $(id -u) $(id -g) $(id -G) > {out}.2; exec sleep 1000"]
user = "nobody"
rlimits = {{ nofile = 64 }}
""")
    nobody = pwd.getpwnam("nobody")
    want = [nobody.pw_uid, nobody.pw_gid] + sorted(set(os.getgrouplist("nobody",
                                                                       nobody.pw_gid)))
    for path in (str(out), f"{out}.2"):
        got = wait_until(lambda p=path: os.path.exists(p) and open(p).read().split(), 10,
                         f"{path} written")
        assert [int(got[0]), int(got[1])] + sorted({int(g) for g in got[2:]}) == want
    assert r.svc("plain")["state"] == "ready"


def test_table_retries_a_failed_start_never_in_a_tight_loop():
    """Pure: backoff 0 would respawn at once; a start that failed waits at least
    SPAWN_RETRY_MIN, and on-abnormal does not retry it (it is a failure, not abnormal)."""
    from hachain.config import Backoff, ServiceConfig
    from hachain.restarter import states
    from hachain.restarter.states import Ev, Event, State, Svc, step
    c = ServiceConfig(name="a", command=("x",), backoff=Backoff(0.0, 1.0, 0.0))
    s, _ = step(Svc("a"), Event(Ev.START, 0), c)
    s, acts = step(s, Event(Ev.SPAWN_FAILED, 0, reason='cwd = "/x": chdir: ...'), c)
    assert s.state is State.BACKOFF and s.restarts == 1 and s.history == (0,)
    assert states.ArmTimer("a", "backoff_done", states.SPAWN_RETRY_MIN) in acts
    assert not any(isinstance(a, states.Spawn) for a in acts)
    ab = ServiceConfig(name="a", command=("x",), restart="on-abnormal")
    s, _ = step(Svc("a"), Event(Ev.START, 0), ab)
    s, _ = step(s, Event(Ev.SPAWN_FAILED, 0, reason="r"), ab)
    assert s.state is State.FAILED and s.reason == "cannot start: r; not retried " \
        "(restart = on-abnormal)"
