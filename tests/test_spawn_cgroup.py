"""A service is born in its cgroup (issue 19): clone3(CLONE_INTO_CGROUP) through the
`_clone3` extension where it is built and the kernel has it, else the fallback (the
restarter moves itself in and out around posix_spawn). Real processes in real cgroups:
the service and a child it forks at once are in the service's cgroup; the child starts
with stdin /dev/null, output in the log, its own process group, default dispositions for
the signals the restarter ignores, an empty signal mask and the restarter's original
file limit; a missing program is named; a frozen cgroup is thawed first."""

from __future__ import annotations

import os
import platform
import resource
import select
import signal
import sys

import pytest

from hachain.cgroupfs import find_cgroup2_mount
from hachain.config import ServiceConfig
from hachain.restarter import spawn
from tests.conftest import KILLED_BOUND, children, wait_until

SVC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "svc.py")


def _cgroup_of(pid: int) -> str:
    with open(f"/proc/{pid}/cgroup") as f:
        return next(ln[3:].strip() for ln in f if ln.startswith("0::"))


def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(ln.rstrip("\n").split(":\t", 1) for ln in f if ":\t" in ln)


def _no_zombie() -> bool:
    """No exited child of ours waits to be reaped."""
    try:
        return os.waitpid(-1, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


# A service that forks a child first thing, then reports what it was given and sleeps.
FORKER = ("import os, sys, time\n"
          "if os.fork() == 0:\n"
          "    time.sleep(3600)\n"
          "print('stdin', os.readlink('/proc/self/fd/0'), 'pgid', os.getpgid(0), flush=True)\n"
          "time.sleep(3600)\n")


def _spawn(cg: spawn.Cgroups, tmp_path, name: str, command: tuple[str, ...],
           started: list[int]) -> int:
    cfg = ServiceConfig(name=name, command=command)
    sp = spawn.spawn(cfg, str(tmp_path / "logs"), cg, None, yield_cpu=False)
    started.append(sp.pid)
    return sp.pid


def _check_born_in_cgroup(cg: spawn.Cgroups, tmp_path, started: list[int]) -> None:
    mount = find_cgroup2_mount()
    assert mount is not None
    home = _cgroup_of(os.getpid())
    pid = _spawn(cg, tmp_path, "forker", (sys.executable, "-S", "-c", FORKER), started)
    want = "/" + os.path.relpath(cg.path("forker") or "", mount)
    assert _cgroup_of(pid) == want
    assert _cgroup_of(os.getpid()) == home  # the restarter is where it was
    child = wait_until(lambda: (children(pid) or [None])[0], 10, "the service's child")
    assert _cgroup_of(child) == want
    assert set(cg.procs("forker")) == {pid, child}
    log = tmp_path / "logs" / "forker.log"
    wait_until(lambda: log.exists() and b"pgid" in log.read_bytes(), 10, "the service's line")
    assert log.read_text().split() == ["stdin", "/dev/null", "pgid", str(pid)]
    # what the program is given (sleep changes no disposition; Python would)
    blocked = {signal.SIGUSR1, signal.SIGCHLD}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)  # a service starts unblocked
    ign = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # as the restarter has it
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit[0], 512) - 1, limit[1]))
    try:
        pid = _spawn(cg, tmp_path, "sleeper", ("sleep", "3600"), started)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        signal.signal(signal.SIGXFSZ, ign)
        resource.setrlimit(resource.RLIMIT_NOFILE, limit)
    assert _cgroup_of(pid) == "/" + os.path.relpath(cg.path("sleeper") or "", mount)
    st = _status(pid)
    assert int(st["SigBlk"], 16) == 0
    ignored = int(st["SigIgn"], 16)
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # ignored here, default in the service
        assert not ignored & (1 << (sig - 1)), (sig, st["SigIgn"])
    assert resource.prlimit(pid, resource.RLIMIT_NOFILE) == spawn.BASE_NOFILE


def test_direct_spawn_is_there_on_x86_64() -> None:
    """setup.py builds the extension, and this kernel (>= 5.7) and architecture take it:
    the fast path is what runs here, not the fallback."""
    if platform.machine() != "x86_64":
        pytest.skip(f"the clone3 entry is written for x86_64, this is {platform.machine()}")
    assert spawn._clone3 is not None, "hachain.restarter._clone3 was not built (setup.py)"
    assert spawn.direct_spawn_available()


def test_service_and_its_child_are_born_in_the_cgroup(cgroups, tmp_path, started,
                                                     monkeypatch) -> None:
    def enter(path: str) -> None:
        raise AssertionError(f"the restarter moved itself into {path}: the fallback ran")
    monkeypatch.setattr(cgroups, "enter", enter)
    _check_born_in_cgroup(cgroups, tmp_path, started)
    assert spawn.direct_spawn_available()  # nothing made it fall back for good


def test_the_fallback_also_puts_them_in_the_cgroup(cgroups, tmp_path, started,
                                                   monkeypatch) -> None:
    """Without clone3 (patched off: the path a kernel < 5.7 or a missing extension takes)
    the restarter moves itself in and out, with the same result."""
    monkeypatch.setattr(spawn, "_direct", False)
    _check_born_in_cgroup(cgroups, tmp_path, started)


def test_a_missing_program_is_named_and_leaves_no_child(cgroups, tmp_path, started) -> None:
    cfg = ServiceConfig(name="gone", command=("/nonexistent-hachain/prog", "x"))
    with pytest.raises(spawn.SpawnError) as e:
        spawn.spawn(cfg, str(tmp_path / "logs"), cgroups, None)
    assert str(e.value) == ('command[0] = "/nonexistent-hachain/prog": exec: No such file or '
                            "directory (errno ENOENT)")
    assert not e.value.transient
    with pytest.raises(ChildProcessError):  # the failed child was reaped, not left a zombie
        os.waitpid(-1, os.WNOHANG)
    assert cgroups.procs("gone") == []
    assert spawn.direct_spawn_available()  # an exec failure is not the kernel refusing


def test_a_frozen_cgroup_is_thawed_first(cgroups, tmp_path, started) -> None:
    path = cgroups.ensure("cold")
    assert path is not None
    with open(os.path.join(path, "cgroup.freeze"), "w") as f:
        f.write("1")
    note = tmp_path / "ran"
    # (were it born frozen, the spawn would not return: vfork waits for the exec)
    pid = _spawn(cgroups, tmp_path, "cold", (sys.executable, SVC, "record", str(note)),
                 started)
    with open(os.path.join(path, "cgroup.events")) as f:
        assert "frozen 0" in f.read()
    assert pid in cgroups.procs("cold")
    # it runs: it wrote its pid (a frozen process writes nothing)
    wait_until(lambda: note.exists() and note.read_text().split() == [str(pid)], 10,
               "the service's own note")


def test_only_a_cgroup_the_spawn_made_itself_skips_the_thaw(cgroups, tmp_path, started,
                                                             monkeypatch) -> None:
    """A cgroup the spawn has just made is not frozen: no write to its cgroup.freeze (a
    system call less per start of 1000 services). One it did not make (left by an
    earlier restarter, or made before and frozen since, as above) is thawed."""
    thawed: list[str] = []
    real_thaw = cgroups.thaw
    monkeypatch.setattr(cgroups, "thaw",
                        lambda path: (thawed.append(os.path.basename(path)), real_thaw(path)))
    pid = _spawn(cgroups, tmp_path, "new", ("sleep", "3600"), started)
    assert cgroups.procs("new") == [pid] and thawed == []
    os.mkdir(os.path.join(cgroups.root or "", "old"))  # an earlier restarter's
    pid = _spawn(cgroups, tmp_path, "old", ("sleep", "3600"), started)
    assert cgroups.procs("old") == [pid] and thawed == ["old"]
    assert cgroups.ensure("later") is not None  # made before the spawn, not by it
    _spawn(cgroups, tmp_path, "later", ("sleep", "3600"), started)
    assert thawed == ["old", "later"]


def test_a_cgroup_that_was_killed_takes_a_new_service(cgroups, tmp_path, started,
                                                      monkeypatch) -> None:
    """Linux 6.18 SIGKILLs every child cloned into a cgroup that was once cgroup.kill'ed
    (before it runs). The spawn sees that, makes the cgroup afresh and starts the service
    there, still straight into it (no move of the restarter)."""
    first = _spawn(cgroups, tmp_path, "k", ("sleep", "3600"), started)
    assert cgroups.kill("k")
    os.waitpid(first, 0)
    started.remove(first)
    wait_until(lambda: not cgroups.populated("k"), KILLED_BOUND, "the killed cgroup empty")

    def enter(path: str) -> None:
        raise AssertionError(f"the restarter moved itself into {path}: the fallback ran")
    monkeypatch.setattr(cgroups, "enter", enter)
    pid = _spawn(cgroups, tmp_path, "k", ("sleep", "3600"), started)
    assert cgroups.procs("k") == [pid]
    assert _status(pid)["State"][0] in "RS"
    assert os.waitpid(-1, os.WNOHANG) == (0, 0)  # the child killed at birth was reaped
    assert spawn.direct_spawn_available()


def test_the_whole_set_up_goes_straight_into_the_cgroup(cgroups, tmp_path, started,
                                                         monkeypatch) -> None:
    """cwd, umask, rlimits, user and groups and the readiness fd are set in the child
    that clone3 starts in the cgroup: no fallback for services that need them."""
    import pwd

    def enter(path: str) -> None:
        raise AssertionError(f"the restarter moved itself into {path}: the fallback ran")
    monkeypatch.setattr(cgroups, "enter", enter)
    nobody = pwd.getpwnam("nobody")
    work = tmp_path / "work"
    work.mkdir()
    cfg = ServiceConfig(name="full", command=("sleep", "3600"), cwd=str(work), umask=0o027,
                        user="nobody", rlimits=(("nofile", 64, 128), ("core", 0, -1)),
                        ready="fd", ready_fd=5)
    sp = spawn.spawn(cfg, str(tmp_path / "logs"), cgroups, None, yield_cpu=False)
    started.append(sp.pid)
    try:
        pid = sp.pid
        assert cgroups.procs("full") == [pid]
        assert os.readlink(f"/proc/{pid}/cwd") == str(work)
        st = _status(pid)
        assert st["Umask"] == "0027"
        assert st["Uid"].split() == [str(nobody.pw_uid)] * 4
        assert st["Gid"].split() == [str(nobody.pw_gid)] * 4
        assert sorted(int(g) for g in st["Groups"].split()) == \
            sorted(set(os.getgrouplist("nobody", nobody.pw_gid)))
        with open(f"/proc/{pid}/limits") as f:  # (prlimit needs the same user)
            limits = {ln[:26].strip(): ln[26:].split()[:2] for ln in f}
        assert limits["Max open files"] == ["64", "128"]
        assert limits["Max core file size"] == ["0", "unlimited"]
        assert os.readlink(f"/proc/{pid}/fd/5").startswith("pipe:")  # the readiness fd
        assert sp.ready_fd is not None
        assert os.fstat(sp.ready_fd).st_ino == os.stat(f"/proc/{pid}/fd/5").st_ino
    finally:
        if sp.ready_fd is not None:
            os.close(sp.ready_fd)


def test_a_failed_set_up_step_names_its_setting(cgroups, tmp_path, started) -> None:
    """The child's failing step is worded as the other spawn paths word it."""
    cases = [
        (dict(cwd="/nonexistent-hachain/dir"),
         'cwd = "/nonexistent-hachain/dir": chdir: No such file or directory (errno ENOENT)'),
        (dict(rlimits=(("nofile", 64, 32),)),  # soft above hard
         "rlimits.nofile = [64, 32]: setrlimit: Invalid argument (errno EINVAL)"),
    ]
    for kw, want in cases:
        cfg = ServiceConfig(name="bad", command=("sleep", "3600"), **kw)
        with pytest.raises(spawn.SpawnError) as e:
            spawn.spawn(cfg, str(tmp_path / "logs"), cgroups, None)
        assert str(e.value) == want
        assert _no_zombie()  # the failed child was reaped
        assert cgroups.procs("bad") == []


def test_a_build_of_another_abi_is_not_called() -> None:
    """An editable install keeps its compiled _clone3 until pip builds it again: one of
    another calling convention is left alone (services are moved into their cgroups
    instead) rather than failing every spawn with a TypeError."""
    import types
    mod = types.SimpleNamespace(AVAILABLE=1, ABI=spawn.CLONE3_ABI)
    assert spawn.clone3_usable(mod)
    for stale in (types.SimpleNamespace(AVAILABLE=1),  # before the ABI number
                  types.SimpleNamespace(AVAILABLE=1, ABI=spawn.CLONE3_ABI - 1),
                  types.SimpleNamespace(AVAILABLE=0, ABI=spawn.CLONE3_ABI), None):
        assert not spawn.clone3_usable(stale)
    # the build here is this source's (scripts/test.sh runs setup.sh, which builds it)
    assert spawn.direct_spawn_problem() is None


def _fds_of(pid: int) -> set[int]:
    return {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}


def test_the_service_gets_no_descriptor_of_the_spawner(cgroups, tmp_path, started) -> None:
    """The child shares the spawner's descriptor table only until it makes its own of the
    few low ones it needs (close_range CLOSE_RANGE_UNSHARE, _clone3.c SLOTS): even a
    descriptor left inheritable by mistake, and hundreds of others, never reach the
    service, which holds stdin, stdout and stderr only."""
    if spawn._clone3 is None or spawn._clone3.reserve() is None:
        pytest.skip("no _clone3 extension or no close_range(CLOSE_RANGE_UNSHARE) here")
    many = [os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC) for _ in range(300)]
    leaky = os.open(os.devnull, os.O_RDONLY)  # inheritable: the old path passed it on
    try:
        pid = _spawn(cgroups, tmp_path, "sleeper", ("sleep", "3600"), started)
        # (spawn returns while the exec is still closing the close-on-exec ones)
        wait_until(lambda: _fds_of(pid) == {0, 1, 2}, 10, "the service with 0-2 only")
        assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"
        assert os.readlink(f"/proc/{pid}/fd/1").endswith("sleeper.log")
    finally:
        for fd in many + [leaky]:
            os.close(fd)


def test_the_spawner_keeps_no_copy_of_the_service_pipes(cgroups, tmp_path, started) -> None:
    """The output and readiness descriptors pass through the two reserved slots, which hold
    /dev/null again once the child has exec'd: the spawner keeps no write end, so the
    reader of the output sees its end when the service exits, and the slots are the same
    two descriptors after every spawn (nothing leaks)."""
    if spawn._clone3 is None or spawn._clone3.reserve() is None:
        pytest.skip("no _clone3 extension or no close_range(CLOSE_RANGE_UNSHARE) here")
    slots = spawn._clone3.reserve()
    before = _fds_of(os.getpid())
    for i in range(3):
        r, w = os.pipe2(os.O_CLOEXEC)
        cg = cgroups.ensure(f"echo{i}")
        assert cg is not None
        dirfd = os.open(cg, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            pid = spawn._clone3.spawn(b"/bin/echo", [b"echo", b"hello"], [], w, dirfd,
                                      [], None)
        finally:
            os.close(dirfd)
            os.close(w)
        started.append(pid)
        for slot in slots:
            assert os.readlink(f"/proc/self/fd/{slot}") == "/dev/null"
        got = b""
        while True:  # bounded: the pipe ends when echo exits, unless a copy is left open
            ready, _, _ = select.select([r], [], [], 10)
            assert ready, "no end of file: a write end of the service's pipe is still open"
            chunk = os.read(r, 100)
            if not chunk:
                break
            got += chunk
        os.close(r)
        assert got == b"hello\n"
        os.waitpid(pid, 0)
    assert _fds_of(os.getpid()) == before


def test_the_restarter_reserves_its_slots_and_keeps_descriptors_for_any_chain(
        restarter) -> None:
    """A real restarter reserves the slots at start (so its children copy only low
    descriptors) and then keeps each service's cgroup descriptors and output pipe even in
    a chain past KEEP_SERVICES services."""
    if not spawn.direct_spawn_available() or not hasattr(spawn._clone3, "reserve") or \
            spawn._clone3.reserve() is None:
        pytest.skip("no clone3 spawn or no close_range(CLOSE_RANGE_UNSHARE) here")
    n = spawn.KEEP_SERVICES + 2
    body = "".join(f'[service.s{i}]\ncommand = ["sleep", "3600"]\n' for i in range(n))
    run = restarter(body)
    wait_until(lambda: sum(1 for s in run.status().values() if s["state"] == "ready") == n,
               60, f"{n} services running")
    pid = run.proc.pid
    pipes = cgroup_dirs = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        pipes += target.startswith("pipe:")
        cgroup_dirs += target.endswith("/cgroup.events")
    # the restarter lifts its soft file limit to the hard one: room for them, or none kept
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < n * spawn.FDS_PER_SERVICE:
        assert cgroup_dirs == 0, f"{cgroup_dirs} kept with a hard file limit of {hard}"
        return
    assert pipes >= n, f"{pipes} pipes held for {n} services"
    assert cgroup_dirs >= n, f"{cgroup_dirs} cgroup.events held for {n} services"


def test_a_root_outside_cgroup2_is_refused_and_nothing_is_made_there(tmp_path) -> None:
    """A `cgroup_root` in a file system that is not cgroup v2 (here the test's tmp dir;
    on a host: /sys/fs/cgroup of a hybrid layout, a v1 hierarchy, a tmpfs) takes mkdir and
    plain files, but moves and kills no process. It is not used: one line says why, and
    nothing is created under it."""
    root = tmp_path / "not-cgroups" / "chain"
    cg = spawn.Cgroups.from_config(str(root))
    assert not cg.active and cg.path("svc") is None
    assert cg.problem is not None
    assert cg.problem.startswith(f"cgroup_root {root}: not in a cgroup v2 file system ("), \
        cg.problem
    assert "\n" not in cg.problem
    assert not (tmp_path / "not-cgroups").exists()
    mount = find_cgroup2_mount()
    if mount is not None:
        assert f"cgroup v2 is mounted at {mount}" in cg.problem


def test_a_restarter_given_a_root_outside_cgroup2_runs_services_in_process_groups(
        restarter, tmp_path) -> None:
    """The whole restarter on such a root: it says so once, starts the service in a process
    group of its own, stops it, and writes no `cgroup.procs` (a plain file there would
    keep stale pids that a later stop would signal)."""
    root = tmp_path / "plain-dir"
    run = restarter('[service.a]\ncommand = ["sleep", "3600"]\n', cgroups=False, start=False)
    with open(run.config) as f:
        text = f.read()
    with open(run.config, "w") as f:
        f.write(text.replace('cgroup_root = "none"', f'cgroup_root = "{root}"', 1))
    run.start()
    pid = run.wait_state("a", "ready")["pid"]
    assert os.getpgid(pid) == pid
    warned = [ln for ln in open(run.log).read().splitlines() if "cgroup_root" in ln]
    assert len(warned) == 1 and f"cgroup_root {root}: not in a cgroup v2" in warned[0], warned
    run.req("stop", "a")
    run.wait_state("a", "stopped")
    wait_until(lambda: not os.path.exists(f"/proc/{pid}"), 10, "the service to be gone")
    assert not root.exists()
