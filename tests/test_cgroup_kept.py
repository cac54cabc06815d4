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
