"""protect_system, protect_home, read_only_paths, read_write_paths, inaccessible_paths
(systemd's ProtectSystem=, ProtectHome=, ReadOnlyPaths=, ReadWritePaths=,
InaccessiblePaths=): the file system a service sees, in a mount namespace of its own.

The plan (hachain/sandbox.py) on its own, then real services on every spawn path (the
compiled clone3 child with and without a cgroup, and the fallback through subprocess):
what each writes or reads is tried for real and what it sees read back from /proc. A
check that would write to this host if the protection failed writes only under the
test's own temporary directory.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest

from hachain import config, sandbox
from hachain.config import ServiceConfig
from hachain.restarter import spawn
from tests.conftest import SPAWN_PATHS, spawn_path, wait_until

RUN_BOUND = 30.0  # a /bin/sh and coreutils; no chain timer involved
needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason="a mount namespace needs root (CAP_SYS_ADMIN)")


def kinds(c: ServiceConfig) -> list[tuple[int, str]]:
    return [(s.kind, s.path) for s in sandbox.plan(c)]


def test_the_more_specific_path_wins_and_private_tmp_comes_last() -> None:
    c = ServiceConfig("a", ("/bin/true",), protect_system="strict", protect_home="yes",
                      read_only_paths=("/srv/data/conf",), read_write_paths=("/srv/data",),
                      inaccessible_paths=("-/srv/data/secret/",), private_tmp=True,
                      directories=("/run/a",))
    assert kinds(c) == [
        (sandbox.READ_ONLY, "/"), (sandbox.KEEP, "/dev"), (sandbox.KEEP, "/proc"),
        (sandbox.KEEP, "/sys"), (sandbox.HIDE, "/home"), (sandbox.HIDE, "/root"),
        (sandbox.READ_WRITE, "/run/a"), (sandbox.HIDE, "/run/user"),
        (sandbox.READ_WRITE, "/srv/data"), (sandbox.READ_ONLY, "/srv/data/conf"),
        (sandbox.HIDE, "/srv/data/secret"), (sandbox.TMPFS, "/tmp"),
        (sandbox.TMPFS, "/var/tmp")]
    secret = sandbox.plan(c)[10]
    assert secret.optional and sandbox.describe(secret) == \
        "inaccessible_paths: /srv/data/secret (inaccessible)"
    assert kinds(ServiceConfig("a", ("/bin/true",), protect_system="full")) == [
        (sandbox.READ_ONLY, "/usr"), (sandbox.READ_ONLY, "/boot"), (sandbox.READ_ONLY, "/efi"),
        (sandbox.READ_ONLY, "/etc")]
    assert not sandbox.needs_namespace(ServiceConfig("a", ("/bin/true",)))
    # the kernel's files come after the API paths are put back (LATE): read-only even
    # under "strict", which keeps /proc and /sys as they were
    late = sandbox.plan(ServiceConfig("a", ("/bin/true",), protect_system="strict",
                                      protect_kernel_tunables=True,
                                      protect_control_groups=True))
    assert [s.path for s in late if s.kind == sandbox.READ_ONLY | sandbox.LATE][-2:] == \
        ["/sys", "/sys/fs/cgroup"]
    assert sandbox.describe(late[-1]) == \
        "protect_control_groups = true: /sys/fs/cgroup (read-only)"


def test_config_takes_booleans_choices_and_optional_paths() -> None:
    s = config.parse('[service.a]\ncommand = ["/bin/true"]\nprotect_system = true\n'
                     'protect_home = "read-only"\nread_write_paths = "-/var/lib/a"\n',
                     "c.toml").services["a"]
    assert (s.protect_system, s.protect_home, s.read_write_paths) == \
        ("yes", "read-only", ("-/var/lib/a",))
    for body, error in (('protect_system = "ful"', 'service.a.protect_system: must be '
                         'true, false or one of "yes", "full", "strict"'),
                        ('read_only_paths = ["srv"]', 'service.a.read_only_paths: must be '
                         'an absolute path, with a leading "-" when a missing one is no '
                         'error')):
        with pytest.raises(config.ConfigError) as e:
            config.parse(f'[service.a]\ncommand = ["/bin/true"]\n{body}\n', "c.toml")
        assert f"c.toml:3: {error}" in str(e.value)


def run(cfg: ServiceConfig, cgroups: Any, tmp_path: Any, started: list[int], lines: int
        ) -> tuple[int, list[str]]:
    """Start `cfg` (its script prints `lines` lines, then sleeps): (pid, the lines)."""
    logs = tmp_path / "logs"
    sp = spawn.spawn(cfg, str(logs), cgroups, None, yield_cpu=False)
    started.append(sp.pid)
    log = logs / f"{cfg.name}.log"
    said = wait_until(lambda: log.exists() and len(log.read_text().splitlines()) >= lines
                      and log.read_text().splitlines(), RUN_BOUND, "the service's lines")
    return sp.pid, said


def tried(what: str) -> str:
    """A shell line that says whether `what` succeeded."""
    return f"if {what} 2>/dev/null; then echo yes; else echo no; fi"


@needs_root
@pytest.mark.parametrize("path", SPAWN_PATHS)
def test_listed_paths_read_only_writable_inside_and_hidden(
        cgroups: Any, tmp_path: Any, started: list[int], monkeypatch: Any, path: str) -> None:
    cgroups = spawn_path(path, cgroups, monkeypatch)
    ro, rw, hidden = tmp_path / "ro", tmp_path / "ro" / "rw", tmp_path / "hidden"
    rw.mkdir(parents=True)
    hidden.mkdir()
    (hidden / "secret").write_text("s")
    script = "; ".join([
        tried(f"touch {ro}/a"), tried(f"touch {rw}/b"), tried("touch ./c"),
        f"ls -A {hidden} | wc -l", tried(f"cat {hidden}/secret"), "exec sleep 3600"])
    cfg = ServiceConfig("web", ("/bin/sh", "-c", script), cwd=str(ro),
                        read_only_paths=(str(ro), "-/nonexistent/x"),
                        read_write_paths=(str(rw),), inaccessible_paths=(str(hidden),))
    _pid, said = run(cfg, cgroups, tmp_path, started, 5)
    # read-only (through its cwd too: changed into after the mounts), writable below,
    # the hidden directory empty
    assert said == ["no", "yes", "no", "0", "no"], said
    assert not (ro / "a").exists() and (rw / "b").exists() and not (ro / "c").exists()
    assert (hidden / "secret").read_text() == "s"  # the host's is untouched


@needs_root
@pytest.mark.parametrize("path", SPAWN_PATHS)
def test_strict_leaves_dev_as_it_was_and_opens_its_directories(
        cgroups: Any, tmp_path: Any, started: list[int], monkeypatch: Any, path: str) -> None:
    cgroups = spawn_path(path, cgroups, monkeypatch)
    own = tmp_path / "own"
    shm = f"/dev/shm/hachain-test-{uuid.uuid4().hex}"
    script = "; ".join([tried(f"touch {tmp_path}/x"), tried(f"touch {own}/y"),
                        tried(f"touch {shm}"), tried("echo > /dev/null"), "exec sleep 3600"])
    cfg = ServiceConfig("web", ("/bin/sh", "-c", script), protect_system="strict",
                        directories=(str(own),))
    try:
        pid, said = run(cfg, cgroups, tmp_path, started, 4)
        assert said == ["no", "yes", "yes", "yes"], said
        opts = {}
        with open(f"/proc/{pid}/mountinfo") as f:
            for ln in f:
                fields = ln.split()
                opts[fields[4]] = fields[5].split(",")
        assert "ro" in opts["/"], opts["/"]
        assert "rw" in opts["/dev"] and "rw" in opts["/proc"], opts
    finally:
        if os.path.exists(shm):
            os.unlink(shm)


@needs_root
@pytest.mark.parametrize("path", SPAWN_PATHS)
def test_protect_home_hides_root_and_full_makes_etc_read_only(
        cgroups: Any, tmp_path: Any, started: list[int], monkeypatch: Any, path: str) -> None:
    cgroups = spawn_path(path, cgroups, monkeypatch)
    cfg = ServiceConfig("web", ("/bin/sh", "-c", "ls -A /root | wc -l; exec sleep 3600"),
                        protect_home="yes", protect_system="full")
    pid, said = run(cfg, cgroups, tmp_path, started, 1)
    assert said == ["0"], said
    with open(f"/proc/{pid}/mountinfo") as f:
        seen = {ln.split()[4]: ln.split()[5] for ln in f}
    assert "ro" in seen["/etc"].split(",") and "ro" in seen["/usr"].split(","), seen


@needs_root
@pytest.mark.parametrize("path", SPAWN_PATHS)
def test_a_missing_path_fails_the_start_naming_the_setting(
        cgroups: Any, tmp_path: Any, started: list[int], monkeypatch: Any, path: str) -> None:
    cgroups = spawn_path(path, cgroups, monkeypatch)
    cfg = ServiceConfig("web", ("/bin/sleep", "3600"), read_only_paths=("/nonexistent/ro",))
    with pytest.raises(spawn.SpawnError) as e:
        sp = spawn.spawn(cfg, str(tmp_path / "logs"), cgroups, None, yield_cpu=False)
        started.append(sp.pid)
    assert str(e.value) == ("read_only_paths: /nonexistent/ro (read-only): No such file or "
                            "directory (errno ENOENT)"), str(e.value)


@needs_root
@pytest.mark.parametrize("path", SPAWN_PATHS)
def test_a_command_of_a_running_service_joins_its_namespaces(
        cgroups: Any, tmp_path: Any, started: list[int], monkeypatch: Any, path: str) -> None:
    """A stop or reload command (spawn's `join`) sees the service's own /tmp and
    loopback, not fresh ones of its own."""
    cgroups = spawn_path(path, cgroups, monkeypatch)
    mark = f"hachain-{uuid.uuid4().hex[:8]}"
    svc = ServiceConfig("svc", ("/bin/sh", "-c", f"echo here > /tmp/{mark}; echo made; "
                                "exec sleep 600"), private_tmp=True, private_network=True)
    pid, _ = run(svc, cgroups, tmp_path, started, 1)
    assert not os.path.exists(f"/tmp/{mark}")  # (its own /tmp)
    look = ServiceConfig("svc", ("/bin/sh", "-c", f"cat /tmp/{mark} 2>&1; readlink "
                                 "/proc/self/ns/net"), private_tmp=True,
                         private_network=True)
    logs = tmp_path / "logs"
    for name, join in (("joined", spawn.join_namespaces(look, pid)), ("own", None)):
        cfg = ServiceConfig(name, look.command, private_tmp=True, private_network=True)
        try:
            sp = spawn.spawn(cfg, str(logs), cgroups, None, yield_cpu=False, join=join)
        finally:
            if join is not None:
                os.close(join[0])
        started.append(sp.pid)
        log = logs / f"{name}.log"
        wait_until(lambda: log.exists() and "net:" in log.read_text(),  # noqa: B023
                   RUN_BOUND, f"{name}'s lines")
        text = log.read_text()
        net = os.readlink(f"/proc/{pid}/ns/net")
        if name == "joined":
            assert text.startswith("here\n") and net in text, text
        else:
            assert "No such file" in text and net not in text, text


@needs_root
@pytest.mark.parametrize("path", SPAWN_PATHS)
def test_protect_proc_hides_other_users_processes(
        cgroups: Any, tmp_path: Any, started: list[int], monkeypatch: Any, path: str) -> None:
    """protect_proc = "invisible" and proc_subset = "pid" (systemd's ProtectProc=,
    ProcSubset=): a procfs of its own in which pid 1 and the kernel's files are not
    there for a service that runs as nobody; without them, both are."""
    cgroups = spawn_path(path, cgroups, monkeypatch)
    look = ("/bin/sh", "-c", "test -e /proc/1 && echo pid1=yes || echo pid1=no; test -e "
            "/proc/meminfo && echo meminfo=yes || echo meminfo=no; test -e /proc/self/status "
            "&& echo self=yes; exec sleep 600")
    for name, keys, want in (
            ("host", {}, ["pid1=yes", "meminfo=yes", "self=yes"]),
            ("own", {"protect_proc": "invisible", "proc_subset": "pid"},
             ["pid1=no", "meminfo=no", "self=yes"]),
            ("strict", {"protect_proc": "invisible", "protect_system": "strict"},
             ["pid1=no", "meminfo=yes", "self=yes"])):
        cfg = ServiceConfig(name, look, user="nobody", **keys)
        _, said = run(cfg, cgroups, tmp_path, started, 3)
        assert said == want, (name, said)


@needs_root
@pytest.mark.parametrize("path", SPAWN_PATHS)
def test_no_exec_paths_and_exec_paths(
        cgroups: Any, tmp_path: Any, started: list[int], monkeypatch: Any, path: str) -> None:
    """no_exec_paths = ["/"] with exec_paths = ["/usr"] (systemd's NoExecPaths=,
    ExecPaths=): its shell and coreutils run, a copy of one of them elsewhere does not."""
    cgroups = spawn_path(path, cgroups, monkeypatch)
    copy = tmp_path / "mytrue"
    copy.write_bytes(open("/usr/bin/true", "rb").read())
    os.chmod(copy, 0o755)
    look = ("/bin/sh", "-c", f"{tried(str(copy))}; {tried('/usr/bin/true')}; "
            "exec sleep 600")
    for name, keys, want in (
            ("free", {}, ["yes", "yes"]),
            ("held", {"no_exec_paths": ("/",), "exec_paths": ("/usr",)}, ["no", "yes"])):
        _, said = run(ServiceConfig(name, look, **keys), cgroups, tmp_path, started, 2)
        assert said == want, (name, said)
