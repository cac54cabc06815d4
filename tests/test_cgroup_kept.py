"""A service's cgroup directory and cgroup.events are opened once and kept (issue 19):
the restart path reads `populated`/`frozen` with one pread and clones into the kept
directory, instead of two opens after every quiet second. Real cgroups, real processes:
what the kept file says is read afresh each time, a cgroup made afresh is opened again,
and a cgroup removed behind the restarter's back is read by name again."""

from __future__ import annotations

import os

import pytest

from hachain.config import ServiceConfig
from hachain.restarter import spawn


def _spawn(cg: spawn.Cgroups, tmp_path, name: str, started: list[int],
           thaw: bool = True) -> int:
    cfg = ServiceConfig(name=name, command=("sleep", "3600"))
    sp = spawn.spawn(cfg, str(tmp_path / "logs"), cg, None, yield_cpu=False, thaw=thaw)
    started.append(sp.pid)
    return sp.pid


def _end(pid: int, started: list[int]) -> None:
    """SIGKILL and reap one of the test's services."""
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    started.remove(pid)


def _opens_during(monkeypatch, fn) -> list[str]:
    """The paths os.open was asked for while fn() ran."""
    seen: list[str] = []
    real = os.open

    def spy(path, *a, **kw):  # type: ignore[no-untyped-def]
        seen.append(os.fsdecode(path))
        return real(path, *a, **kw)
    monkeypatch.setattr(os, "open", spy)
    try:
        fn()
    finally:
        monkeypatch.setattr(os, "open", real)
    return seen


def test_the_exit_and_the_respawn_open_nothing_of_the_cgroup(
        cgroups, tmp_path, started, monkeypatch) -> None:
    if not spawn.direct_spawn_available():
        pytest.skip("clone3(CLONE_INTO_CGROUP) is not available here (the _clone3 "
                    "extension is not built, or the kernel refuses it)")
    pid = _spawn(cgroups, tmp_path, "web", started)
    assert cgroups.events("web") == (True, False)  # read afresh, through the kept file
    _end(pid, started)
    assert cgroups.events("web") == (False, False)

    def restart() -> None:  # as the loop's exit path: read empty, so no thaw
        calm = spawn.kill_leftovers(pid, "web", cgroups, zombie=False)
        assert calm
        _spawn(cgroups, tmp_path, "web", started, thaw=not calm)
    opened = _opens_during(monkeypatch, restart)
    assert not [p for p in opened if "web" in p and (cgroups.root or "") in p], opened
    assert cgroups.events("web") == (True, False)
    assert cgroups.procs("web") == [started[-1]]


def test_a_cgroup_made_afresh_is_opened_again(cgroups, tmp_path, started) -> None:
    pid = _spawn(cgroups, tmp_path, "k", started)
    old = cgroups.kept("k")
    assert old is not None
    _end(pid, started)
    assert cgroups.renew("k")  # what the spawn does with a cgroup once cgroup.kill'ed
    pid = _spawn(cgroups, tmp_path, "k", started)
    assert cgroups.procs("k") == [pid]
    assert cgroups.events("k") == (True, False)


def test_a_cgroup_removed_behind_its_back_is_read_by_name(
        cgroups, tmp_path, started) -> None:
    pid = _spawn(cgroups, tmp_path, "gone", started)
    assert cgroups.kept("gone") is not None
    _end(pid, started)
    path = cgroups.path("gone") or ""
    os.rmdir(path)  # an administrator's rmdir, and the directory made again
    os.mkdir(path)
    assert cgroups.events("gone") == (False, False)
    with open(os.path.join(path, "cgroup.freeze"), "w") as f:
        f.write("1")
    assert cgroups.events("gone") == (False, True)  # the new directory's file, not the old
    cgroups.thaw(path)


def test_removing_the_cgroup_closes_what_was_kept(cgroups, tmp_path, started) -> None:
    pid = _spawn(cgroups, tmp_path, "r", started)
    kept = cgroups.kept("r")
    assert kept is not None
    _end(pid, started)
    cgroups.remove("r")
    for fd in kept:
        with pytest.raises(OSError):
            os.fstat(fd)
    assert cgroups.events("r") is None


def test_the_output_pipe_of_a_restart_is_made_ahead(tmp_path) -> None:
    """The restarter makes the next spawn's output pipe after a spawn (make_spare), so a
    restart takes it instead of calling pipe2 on its path; without a spare, pipe() still
    makes one; drop_spare closes it."""
    from hachain.restarter.logpipe import LogPipes
    lp = LogPipes(str(tmp_path), str(tmp_path), log=lambda m: None)
    lp.make_spare()
    spare = lp.spare
    assert spare is not None
    assert lp.pipe() == spare and lp.spare is None
    fresh = lp.pipe()
    assert fresh != spare
    os.write(spare[1], b"x")  # a working pipe, close-on-exec at both ends
    assert os.read(spare[0], 1) == b"x"
    assert all(os.get_inheritable(fd) is False for fd in spare + fresh)
    for fd in spare + fresh:
        os.close(fd)
    lp.make_spare()
    kept = lp.spare
    assert kept is not None
    lp.drop_spare()
    assert lp.spare is None
    for fd in kept:
        with pytest.raises(OSError):
            os.fstat(fd)


def test_what_every_start_passes_is_made_once(tmp_path) -> None:
    """The program's path as bytes, whether the start is plain, and the file limit given
    are made with the environment, once per configuration object."""
    plain = ServiceConfig(name="p", command=("/bin/sleep", "1"))
    prep = spawn._prepared(plain, None)
    assert prep.exe == b"/bin/sleep" and prep.plain and prep.nofile == spawn.BASE_NOFILE
    assert spawn._prepared(plain, None) is prep
    looked_up = ServiceConfig(name="q", command=("sleep", "1"), cwd="/",
                              rlimits=(("nofile", 64, 64),))
    prep = spawn._prepared(looked_up, None)
    assert prep.exe is None and not prep.plain and prep.nofile is None


def test_a_chain_of_many_services_keeps_no_descriptors(cgroups, tmp_path, started) -> None:
    """Each descriptor the restarter holds costs every spawn a little (the child copies
    the table and closes it again at exec): above KEEP_SERVICES services none are kept,
    and those kept are closed when a reload grows the chain past it."""
    pid = _spawn(cgroups, tmp_path, "a", started)
    kept = cgroups.kept("a")
    assert kept is not None
    cgroups.keep_for(spawn.KEEP_SERVICES + 1)
    for fd in kept:
        with pytest.raises(OSError):
            os.fstat(fd)
    assert cgroups.kept("a") is None
    _end(pid, started)
    assert cgroups.events("a") == (False, False)  # read by name
    _spawn(cgroups, tmp_path, "a", started)
    assert cgroups.kept("a") is None and cgroups.procs("a") == [started[-1]]
    cgroups.keep_for(spawn.KEEP_SERVICES)
    assert cgroups.kept("a") is not None
