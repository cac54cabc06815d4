"""`hachain check` names a service program this host cannot run as the service runs it:
missing from its PATH, not executable, or behind a directory its user cannot search. A
warning each (the file may be checked on a build host), naming the service, the setting
and the reason, with the mode that refuses."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from hachain import config, hostcheck

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="files owned by root that another user is refused")


@pytest.fixture
def place() -> Iterator[str]:
    """A world-searchable directory outside pytest's own 0700 tmp."""
    d = tempfile.mkdtemp(prefix="hachain-test-hostcheck-")
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def program(path: str, mode: int) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    shutil.copy("/bin/true", path)
    os.chmod(path, mode)
    return path


def lines(body: str) -> list[str]:
    return hostcheck.problems(config.parse("[watchdog]\ndevice = \"none\"\n" + body, "c.toml"))


def test_each_kind_of_program_a_service_cannot_run(place: str) -> None:
    hidden = os.path.join(place, "private")
    inner = program(os.path.join(hidden, "prog"), 0o755)
    os.chmod(hidden, 0o700)
    plain = program(os.path.join(place, "plain"), 0o644)
    ok = program(os.path.join(place, "ok"), 0o755)
    got = lines(f'''
[service.hidden]
command = ["{inner}"]
user = "nobody"
[service.plain]
command = ["{ok}"]
user = "nobody"
pre_start = [["-{plain}"]]
[service.missing]
command = ["no-such-program-here", "x"]
[service.rootplain]
command = ["{plain}"]
[service.roothidden]
command = ["{inner}"]
[service.fine]
command = ["true"]
user = "nobody"
[service.ownpath]
command = ["prog"]
env = {{ PATH = "{hidden}" }}
''')
    assert got == [
        f"service hidden: command[0] = {inner}: user nobody cannot reach it: {hidden} is "
        "0700 root:root",
        f"service plain: pre_start[0] = {plain}: user nobody cannot run it: {plain} is "
        "0644 root:root",
        "service missing: command[0] = no-such-program-here: not found in PATH "
        "(/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)",
        f"service rootplain: command[0] = {plain}: not executable (0644 root:root)",
    ]  # roothidden: root searches any directory; ownpath: found in its own PATH


def test_hachain_check_warns_and_still_passes(place: str, tmp_path: Any) -> None:
    hidden = os.path.join(place, "private")
    inner = program(os.path.join(hidden, "prog"), 0o755)
    os.chmod(hidden, 0o700)
    cfg = tmp_path / "chain.toml"
    cfg.write_text(f'[watchdog]\ndevice = "none"\n[service.web]\ncommand = ["{inner}"]\n'
                   'user = "nobody"\n')
    p = subprocess.run([sys.executable, "-m", "hachain.cli", "check", "-c", str(cfg)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stderr.splitlines() == [
        f"hachain: {cfg}: warning: service web: command[0] = {inner}: user nobody cannot "
        f"reach it: {hidden} is 0700 root:root"]


def test_settings_this_host_would_refuse() -> None:
    eff, bounding = hostcheck._capability_sets()
    resource = 1 << config.CAPABILITIES.index("SYS_RESOURCE")
    missing = [n for i, n in enumerate(config.CAPABILITIES) if not bounding >> i & 1]
    caps = ", ".join(f'"CAP_{n}"' for n in ["NET_BIND_SERVICE"] + missing)
    import resource as rl
    hard = rl.getrlimit(rl.RLIMIT_NOFILE)[1]
    above = 4096 if hard == rl.RLIM_INFINITY else hard + 1
    got = lines('[service.db]\ncommand = ["true"]\noom_score_adj = -500\n'
                f'rlimits = {{ nofile = {above} }}\n'
                '[service.web]\ncommand = ["true"]\nuser = "nobody"\n'
                f'capabilities = [{caps}]\n')
    want = []
    if not eff & resource:
        want.append("service db: oom_score_adj = -500 will not be applied here (no "
                    "CAP_SYS_RESOURCE): it runs at the restarter's value")
        if hard != rl.RLIM_INFINITY:  # (raising a hard limit needs it too)
            want.append(f"service db: rlimits.nofile hard limit {above} is above this "
                        f"host's {hard} and raising it needs CAP_SYS_RESOURCE, which the "
                        "restarter does not have here: every start would fail")
    if missing:
        want.append(f"service web: capabilities: {', '.join('CAP_' + n for n in missing)} "
                    "not in this host's bounding set: every start would fail")
    assert got == want


def test_a_condition_or_assert_that_does_not_hold_here_now(place: str) -> None:
    flag = os.path.join(place, "not_to_be_run")
    open(flag, "w").close()
    got = lines(f'''
[service.ssh]
command = ["/bin/true"]
condition = {{ path_exists = "!{flag}" }}
[service.db]
command = ["/bin/true"]
assert = {{ path_exists = "{place}/db.conf" }}
[service.fine]
command = ["/bin/true"]
condition = {{ path_exists = "{flag}" }}
''')
    assert got == [
        f"service ssh: condition path_exists=!{flag} failed: it is a regular file on this "
        "host now: it would be skipped",
        f"service db: assert path_exists={place}/db.conf failed: no such path on this host "
        "now: its start would fail"]


def test_cgroup_programs_a_chain_without_cgroups_cannot_hold(place: str) -> None:
    """device_allow and ip_address_* need the chain's cgroups: said for a chain with
    none; with them, the programs are loaded here (not attached) and pass. The
    post_start and post_stop programs are looked for as pre_start's are."""
    body = ('[service.a]\ncommand = ["true"]\ndevice_allow = ["/dev/null rw"]\n'
            '[service.b]\ncommand = ["true"]\nip_address_deny = ["any"]\n'
            f'post_stop = [["{place}/missing"]]\n')
    got = lines('[chain]\ncgroup_root = "none"\n' + body)
    assert got[:2] == [
        "service a: device_allow / device_policy need the chain's cgroups, which it has "
        "none of here (chain.cgroup_root = 'none'): every start would fail",
        "service b: ip_address_allow / ip_address_deny need the chain's cgroups, which it "
        "has none of here (chain.cgroup_root = 'none'): every start would fail"]
    assert got[2].startswith(f"service b: post_stop[0] = {place}/missing: "), got
    from hachain.cgroupfs import find_cgroup2_mount
    if (m := find_cgroup2_mount()) and os.access(m, os.W_OK):
        assert len(lines(body)) == 1  # the programs load here: only post_stop's line
