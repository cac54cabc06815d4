"""`condition` and `assert` (systemd's ConditionPathExists= and AssertPathExists= kin).

First each check against real files, directories, links, mounts and /proc, and (by
hypothesis) the combination rule of `!` and `|` against a plain statement of systemd's.
Then the table's cells, then a real restarter: a service whose condition does not hold
is skipped with no process and its dependents go on; `start` asks again; a reload that
changes it asks again; a restarted restarter keeps it skipped; an assert that does not
hold is a failed start the policy answers. And the configuration's errors.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hachain import conditions, config
from hachain.configtypes import ServiceConfig, StartChecks
from hachain.restarter import states
from hachain.restarter.states import Ev, Event, State, Svc
from tests.conftest import wait_until

RUN_BOUND = 30.0  # a restarter answering a request; no chain timer involved


def test_path_checks_on_real_files(tmp_path: Any) -> None:
    f, d, link, empty_f, x = (tmp_path / n for n in ("f", "d", "link", "empty", "x"))
    f.write_text("data")
    d.mkdir()
    empty_f.touch()
    x.write_text("#!/bin/sh\n")
    x.chmod(0o755)
    link.symlink_to(f)
    missing = str(tmp_path / "missing")
    assert conditions.path_exists(str(f)) == (True, "it is a regular file")
    assert conditions.path_exists(missing) == (False, "no such path")
    assert conditions.path_is_directory(str(d))[0] and not conditions.path_is_directory(str(f))[0]
    assert conditions.path_is_symbolic_link(str(link)) == (True, "it is a symbolic link")
    assert not conditions.path_is_symbolic_link(str(f))[0]
    assert conditions.file_not_empty(str(f)) == (True, "4 bytes")
    assert conditions.file_not_empty(str(empty_f)) == (False, "0 bytes")
    assert conditions.file_not_empty(str(d)) == (False, "it is a directory")
    assert conditions.file_is_executable(str(x)) == (True, "mode 0755")
    assert conditions.file_is_executable(str(f))[0] is False
    assert conditions.path_is_mount_point("/proc")[0]
    assert not conditions.path_is_mount_point(str(d))[0]
    assert conditions.path_is_read_write(str(tmp_path))[0]
    assert conditions.path_exists_glob(str(tmp_path / "*"))[0]
    assert conditions.path_exists_glob(str(tmp_path / "nothing*")) == (False, "no match")


def test_a_directory_of_hidden_entries_only_is_empty(tmp_path: Any) -> None:
    assert conditions.directory_not_empty(str(tmp_path)) == (False, "it is empty")
    (tmp_path / ".hidden").touch()
    assert conditions.directory_not_empty(str(tmp_path)) == (False, "it is empty")
    (tmp_path / "a.conf").touch()
    assert conditions.directory_not_empty(str(tmp_path)) == (True, "1 entries")
    assert conditions.directory_not_empty(str(tmp_path / "a.conf"))[0] is False
    assert conditions.directory_not_empty(str(tmp_path / "no")) == (False, "no such directory")


def test_a_read_only_mount_is_not_read_write(tmp_path: Any) -> None:
    """/proc/sys is read-only inside this container when it is mounted so; a bind mount
    made read-only would need a namespace. Find one read-only mount from /proc/mounts."""
    with open("/proc/self/mounts") as f:
        ro = [line.split()[1] for line in f if "ro" in line.split()[3].split(",")]
    if not ro:
        pytest.skip("no read-only mount on this host to check against")
    assert conditions.path_is_read_write(ro[0]) == (False, "its file system is read-only")


def test_kernel_command_line_words(tmp_path: Any) -> None:
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("console=ttyS0 quiet panic=1 app.mode=safe\n")
    p = str(cmdline)
    assert conditions.kernel_command_line("quiet", p)[0]
    assert conditions.kernel_command_line("panic", p)[0]  # NAME: as NAME=... too
    assert conditions.kernel_command_line("panic=1", p)[0]
    assert not conditions.kernel_command_line("panic=2", p)[0]
    assert not conditions.kernel_command_line("pani", p)[0]  # whole words only
    assert conditions.kernel_command_line("app.mode=safe", p)[0]
    # and this host's real one: its first word is there
    with open("/proc/cmdline") as f:
        first = f.read().split()[0]
    assert conditions.kernel_command_line(first) == (True, "it is there")


def test_capability_in_the_bounding_set() -> None:
    with open("/proc/self/status") as f:
        bnd = int(next(ln for ln in f if ln.startswith("CapBnd:")).split()[1], 16)
    # CAP_CHOWN (0) and CAP_SYS_MODULE (16): each answered as the kernel's set says
    assert conditions.capability("CAP_CHOWN")[0] == bool(bnd & 1)
    assert conditions.capability("CAP_SYS_MODULE")[0] == bool(bnd >> 16 & 1)


@pytest.mark.parametrize("vm, container, holds", [
    ("", "", {"no", "false"}),
    ("kvm", "", {"yes", "true", "vm", "kvm"}),
    ("", "docker", {"yes", "true", "container", "docker"}),
    ("vm-other", "docker", {"yes", "true", "vm", "container", "docker", "vm-other"}),
])
def test_virtualization_reads_as_systemd(monkeypatch: Any, vm: str, container: str,
                                         holds: set[str]) -> None:
    monkeypatch.setattr(conditions, "detect_virtualization", lambda: (vm, container))
    for word in ("yes", "true", "no", "false", "vm", "container", "kvm", "docker",
                 "vm-other", "lxc"):
        assert conditions.virtualization(word)[0] == (word in holds), word


def test_virtualization_security_and_power_on_this_host() -> None:
    """What this host is, read for real: each check and its negation disagree, and what
    is found is said."""
    vm, container = conditions.detect_virtualization()
    ok, found = conditions.virtualization("yes")
    assert ok == bool(vm or container) and found.startswith("found ")
    assert conditions.virtualization("no")[0] != ok
    apparmor = conditions.security("apparmor")
    assert apparmor[0] == (os.path.exists("/sys/module/apparmor/parameters/enabled") and
                           open("/sys/module/apparmor/parameters/enabled").read().strip()
                           == "Y")
    assert conditions.ac_power("true")[0] != conditions.ac_power("false")[0]
    c = StartChecks(virtualization=("!" + (container or vm or "none-at-all"),))
    if vm or container:
        assert conditions.verdict(c).startswith("condition virtualization=!")


def test_verdict_says_which_check_failed_and_what_it_found(tmp_path: Any) -> None:
    flag = tmp_path / "not_to_be_run"
    c = StartChecks(path_exists=(f"!{flag}",))
    assert conditions.verdict(c) == ""
    flag.touch()
    flag.chmod(0o644)
    assert conditions.verdict(c) == \
        f"condition path_exists=!{flag} failed: it is a regular file"
    a = StartChecks(file_is_executable=(str(flag),))
    assert conditions.verdict(a, "assert") == \
        f"assert file_is_executable={flag} failed: mode 0644"
    t = StartChecks(path_exists=(f"|{tmp_path}/a",), directory_not_empty=(f"|{tmp_path}/b",))
    assert conditions.verdict(t) == (
        f'condition failed: none of its "|" checks holds (path_exists=|{tmp_path}/a: no '
        f"such path; directory_not_empty=|{tmp_path}/b: no such directory)")
    (tmp_path / "a").touch()
    assert conditions.verdict(t) == ""


# Each check as a value the test sets: (kind, argument with prefix), the outcome the
# fake check gives for its bare argument.
ARGS = st.lists(st.tuples(st.sampled_from(["", "!", "|", "|!"]), st.booleans()),
                max_size=6)


@settings(max_examples=300, deadline=None)
@given(ARGS)
def test_combination_is_systemds_rule(checks: list[tuple[str, bool]]) -> None:
    """Every check without `|` holds, and when there are `|` ones, at least one of them;
    `!` negates. The checks' outcomes are set through path_exists on real paths."""
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        args = []
        for i, (prefix, exists) in enumerate(checks):
            p = os.path.join(d, str(i))
            if exists:
                open(p, "w").close()
            args.append(prefix + p)
        holds = [exists != ("!" in prefix) for prefix, exists in checks]
        plain = [h for (prefix, _), h in zip(checks, holds, strict=True) if "|" not in prefix]
        trig = [h for (prefix, _), h in zip(checks, holds, strict=True) if "|" in prefix]
        expect = all(plain) and (not trig or any(trig))
        assert (conditions.verdict(StartChecks(path_exists=tuple(args))) == "") == expect


def test_a_check_that_raises_fails_saying_why(monkeypatch: Any) -> None:
    def broken(_value: str) -> tuple[bool, str]:
        raise PermissionError(13, "Permission denied")
    monkeypatch.setitem(conditions.CHECKS, "path_exists", (broken, "path", ""))
    assert conditions.verdict(StartChecks(path_exists=("/x",))) == \
        "condition path_exists=/x failed: PermissionError: [Errno 13] Permission denied"


# --- the configuration -----------------------------------------------------------------------

def parse(body: str) -> ServiceConfig:
    return config.parse('[service.ssh]\ncommand = ["/bin/true"]\n' + body + "\n",
                        "c.toml").services["ssh"]


def test_config_takes_prefixes_single_values_and_capabilities() -> None:
    s = parse('condition = { path_exists = "!/etc/ssh/sshd_not_to_be_run", '
              'capability = ["|net_admin", "|!CAP_SYS_ADMIN"] }\n'
              'assert = { kernel_command_line = "quiet" }')
    assert s.condition == StartChecks(path_exists=("!/etc/ssh/sshd_not_to_be_run",),
                                      capability=("|CAP_NET_ADMIN", "|!CAP_SYS_ADMIN"))
    assert s.assertion == StartChecks(kernel_command_line=("quiet",))
    assert parse("").condition is None and parse("").assertion is None


@pytest.mark.parametrize("body, error", [
    ('condition = { path_exists = "etc/x" }', 'service.ssh.condition.path_exists: must be '
     'an absolute path after an optional "!" (negate) or "|" (triggering) prefix, got '
     '"etc/x"'),
    ('condition = { path_exist = "/x" }', "service.ssh.condition.path_exist: unknown key; "
     "did you mean 'path_exists'?"),
    ('assert = { capability = "CAP_FOO" }', 'service.ssh.assert.capability: must be a Linux '
     'capability such as "CAP_NET_BIND_SERVICE"'),
    ('condition = { kernel_command_line = "a b" }', "service.ssh.condition."
     "kernel_command_line: must be one word (NAME or NAME=VALUE) after an optional prefix"),
    ("condition = 3", "service.ssh.condition: must be a table, got 3"),
    ('assert = { path_exists = 3 }', "service.ssh.assert.path_exists: must be a string"),
])
def test_config_errors_name_the_key(body: str, error: str) -> None:
    with pytest.raises(config.ConfigError) as e:
        parse(body)
    assert f"c.toml:3: {error}" in str(e.value)


# --- the table -------------------------------------------------------------------------------

C = ServiceConfig("ssh", ("/bin/true",), condition=StartChecks(path_exists=("/x",)))


def test_a_condition_that_fails_skips_without_a_process_and_satisfies_dependents() -> None:
    s = Svc("ssh", state=State.STARTING, want="up")
    nxt, acts = states.step(s, Event(Ev.CONDITION_FAILED, 1.0, reason="condition x"), C)
    assert (nxt.state, nxt.pid, nxt.reason) == (State.SKIPPED, None, "skipped: condition x")
    assert acts == [states.Persist("ssh")]
    assert nxt.restarts == 0 and nxt.history == ()  # nothing counted against intensity
    assert states.satisfies_dependents(nxt) and not states.is_up(nxt)
    web = ServiceConfig("web", ("/bin/true",), requires=("ssh",))
    assert states.deps_blocker(web, {"ssh": nxt}) == ""
    # start and restart ask again (a Spawn, which the loop answers by asking it); what
    # requires it and runs ran on nothing of it: not stopped first, as a restart would
    for kind in (Ev.START, Ev.RESTART):
        again, acts = states.step(nxt, Event(kind, 2.0, dependents_up="web"), C)
        assert again.state is State.STARTING and states.Spawn("ssh") in acts
        assert not any(isinstance(a, states.StopDependents) for a in acts)
    # a stop by hand stops it; nothing else moves it
    assert states.step(nxt, Event(Ev.STOP, 2.0), C)[0].state is State.STOPPED
    for kind in (Ev.DEPS_LOST, Ev.DEPS_READY, Ev.CLEAR, Ev.BACKOFF_DONE, Ev.EXITED):
        assert states.step(nxt, Event(kind, 2.0), C)[0] == nxt


def test_condition_failed_after_the_spawn_or_elsewhere_is_stale() -> None:
    spawned = Svc("ssh", state=State.STARTING, want="up", pid=42)
    assert states.step(spawned, Event(Ev.CONDITION_FAILED, 1.0, reason="x"), C) == (spawned, [])
    for st_ in State:
        if st_ is State.STARTING:
            continue
        s = Svc("ssh", state=st_, want="up")
        assert states.step(s, Event(Ev.CONDITION_FAILED, 1.0, reason="x"), C) == (s, [])


def test_a_new_restarter_keeps_a_skipped_service_skipped() -> None:
    found = states.Found(record="skipped", restarts=2)
    nxt, _ = states.step(Svc("ssh"), Event(Ev.ADOPTED, 1.0, found=found), C)
    assert nxt.state is State.SKIPPED and nxt.pid is None


# --- with a real restarter -------------------------------------------------------------------

def body(flag: Any, marker: Any) -> str:
    """ssh does not run while `flag` exists (as Debian's sshd_not_to_be_run); web requires
    it; `marker` is written by each start of ssh."""
    return f'''
[service.ssh]
command = ["/bin/sh", "-c", "echo $$ >> {marker}; exec sleep 1000"]
condition = {{ path_exists = "!{flag}" }}
[service.web]
command = ["/bin/sleep", "1001"]
requires = ["ssh"]
'''


@pytest.mark.slow
def test_a_service_whose_condition_fails_is_skipped_and_its_dependents_run(
        restarter: Any, tmp_path: Any) -> None:
    flag, marker = tmp_path / "not_to_be_run", tmp_path / "started"
    flag.touch()
    r = restarter(body(flag, marker))
    web = r.wait_state("web", "ready", timeout=RUN_BOUND)
    ssh = r.svc("ssh")
    assert (ssh["state"], ssh["pid"]) == ("skipped", None), ssh
    assert ssh["reason"] == (f"skipped: condition path_exists=!{flag} failed: it is a "
                             "regular file"), ssh
    assert not marker.exists()  # never spawned
    assert f"ssh: starting -> skipped (skipped: condition path_exists=!{flag}" in \
        open(r.log).read()
    # the flag goes; `start` asks again, and ssh runs; web keeps running, it never lost ssh
    flag.unlink()
    assert r.req("start", "ssh")["ok"]
    ssh = r.wait_state("ssh", "ready", timeout=RUN_BOUND)
    wait_until(lambda: marker.exists() and marker.read_text().split() == [str(ssh["pid"])],
               what="ssh's start to write its pid")
    assert r.svc("web")["pid"] == web["pid"]
    # the flag again, and ssh crashes: its restart asks, and it is skipped
    flag.touch()
    os.kill(ssh["pid"], 9)
    r.wait_state("ssh", "skipped", timeout=RUN_BOUND)
    assert len(marker.read_text().split()) == 1


@pytest.mark.slow
def test_a_new_restarter_keeps_it_skipped_and_a_reload_that_changes_it_asks_again(
        restarter: Any, tmp_path: Any) -> None:
    flag, marker = tmp_path / "not_to_be_run", tmp_path / "started"
    flag.touch()
    r = restarter(body(flag, marker))
    r.wait_state("ssh", "skipped", timeout=RUN_BOUND)
    r.kill_restarter()
    flag.unlink()  # a restart of the restarter is not a start: it stays skipped
    r.start()
    ssh = r.svc("ssh")
    assert ssh["state"] == "skipped", ssh
    r.beats(3)
    assert r.svc("ssh")["state"] == "skipped" and not marker.exists()
    # a reload that changes ssh (here: its condition) asks again
    other = tmp_path / "other_flag"
    with open(r.config) as f:
        text = f.read()
    with open(r.config, "w") as f:
        f.write(text.replace(f'"!{flag}"', f'"!{other}"'))
    assert r.req("reload")["ok"]
    r.wait_state("ssh", "ready", timeout=RUN_BOUND)
    wait_until(marker.exists, RUN_BOUND, "ssh's start to run its command")


@pytest.mark.slow
def test_an_assert_that_fails_is_a_failed_start_the_policy_answers(
        restarter: Any, tmp_path: Any) -> None:
    conf = tmp_path / "postgresql.conf"
    marker = tmp_path / "started"
    r = restarter(f'''
[service.db]
command = ["/bin/sh", "-c", "touch {marker}; exec sleep 1000"]
assert = {{ path_exists = "{conf}" }}
backoff = {{ initial = 0.2, factor = 1.0, max = 0.2 }}
intensity = {{ max_restarts = 2, window = 60 }}
''')
    st_ = r.wait_state("db", "maintenance", timeout=RUN_BOUND)
    assert f"cannot start: assert path_exists={conf} failed: no such path" in \
        open(r.log).read()
    assert not marker.exists()
    conf.write_text("ok\n")
    assert r.req("clear", "db")["ok"]
    r.wait_state("db", "ready", timeout=RUN_BOUND)
    # ready = "none": ready at its spawn; its first line may still be on its way
    wait_until(marker.exists, RUN_BOUND, "db's start to run its command")
    assert st_["pid"] is None

