"""The restarter holds the write end of a running service's output pipe until it has
handled that process's exit (loop.HeldOutput): the exit then wakes the restarter alone,
and the logger gets its end of file once the replacement runs. Real restarter, logger
and services: the pipe a service writes to is found by its inode in /proc, in the
service, the restarter and the logger."""

from __future__ import annotations

import os
import resource
import signal

from tests.conftest import wait_until

SERVICE = ('[service.echo]\ncommand = ["/bin/sh", "-c", "echo started $$; exec sleep 3600"]\n'
           'backoff = { initial = 0.0, factor = 1.0, max = 0 }\n')


def _pipes(pid: int) -> set[str]:
    """The pipes `pid` holds a descriptor of ("pipe:[inode]")."""
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("pipe:"):
            out.add(target)
    return out


def _output_pipe(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/fd/1")


def _running(run, other_than: int = 0) -> int:
    return wait_until(lambda: (s := run.svc("echo"))["state"] == "ready" and s["pid"]
                      and s["pid"] != other_than and s["pid"], 10, "echo running")


def _logged(run, pid: int) -> None:
    """Wait until the start of `pid` is in the service's log: it wrote its line before it
    is killed (a kill right after the spawn may come before the shell's echo)."""
    log = os.path.join(run.persist_dir, "log", "echo.log")
    wait_until(lambda: os.path.exists(log) and f"started {pid}\n" in open(log).read(), 10,
               f"pid {pid}'s line in the service's log")


def test_the_pipe_is_held_while_the_service_runs_and_let_go_after_its_exit(restarter):
    run = restarter(SERVICE)
    rpid = run.proc.pid
    pid = _running(run)
    pipe = _output_pipe(pid)
    logger = wait_until(run.logger_pid, 10, "the logger's lock file")
    assert pipe in _pipes(rpid), "the restarter does not hold the running service's pipe"
    held_before = len(_pipes(rpid))
    for _ in range(5):
        _logged(run, pid)
        os.kill(pid, signal.SIGKILL)
        new = _running(run, other_than=pid)
        new_pipe = _output_pipe(new)
        assert new_pipe != pipe
        # the old pipe is let go by both: the restarter closed its write end, and so the
        # logger had its end of file and closed the read end
        wait_until(lambda p=pipe: p not in _pipes(rpid), 10, "the restarter to let go")
        wait_until(lambda p=pipe: p not in _pipes(logger), 10, "the logger's end of file")
        assert new_pipe in _pipes(rpid)
        pid, pipe = new, new_pipe
    # one held pipe per running service, not one per start; every start's output logged
    assert len(_pipes(rpid)) == held_before
    _logged(run, pid)


def test_a_stopped_service_leaves_no_pipe_behind(restarter):
    run = restarter(SERVICE)
    rpid = run.proc.pid
    pid = _running(run)
    pipe = _output_pipe(pid)
    # the logger is forked by the restarter and names itself in its lock file when it has
    # set up: on a loaded host that can come after the service is ready
    logger = wait_until(run.logger_pid, 10, "the logger's lock file")
    assert run.req("stop", "echo")["ok"]
    run.wait_state("echo", "stopped")
    wait_until(lambda: pipe not in _pipes(rpid), 10, "the restarter to let go")
    wait_until(lambda: pipe not in _pipes(logger), 10, "the logger's end of file")


def test_the_logger_does_not_preempt_on_wakeup(restarter):
    """The logger runs as SCHED_BATCH (the same CPU share, no preemption when it wakes),
    at nice 0 whatever the restarter's nice: a wake-up of the logger no longer pushes
    aside the process on its CPU, which was often a dying service (logger/main.py)."""
    run = restarter(SERVICE)
    _running(run)
    pid = wait_until(run.logger_pid, 10, "the logger's lock file")
    assert os.sched_getscheduler(pid) == os.SCHED_BATCH
    assert os.getpriority(os.PRIO_PROCESS, pid) == 0


def test_only_a_small_chain_holds_pipes_where_children_copy_them(monkeypatch) -> None:
    """Where a spawned child copies every descriptor the restarter holds (the fallback
    spawn), past KEEP_SERVICES services no pipe is held, and growing past it lets go of
    those held; where it copies only a few low ones (clone3 with the reserved slots), a
    chain of any size holds them."""
    from hachain.restarter import spawn
    from hachain.restarter.loop import HeldOutput
    monkeypatch.setattr(spawn, "_slots", False)
    held = HeldOutput()
    held.keep_for(spawn.KEEP_SERVICES)
    assert held.may_hold()
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        held.hold("a", w)
        held.keep_for(spawn.KEEP_SERVICES + 1)
        assert not held.may_hold()
        assert held.fds == {}
        assert os.read(r, 1) == b""  # the write end was closed: end of file
    finally:
        os.close(r)
    if not spawn.direct_spawn_available():
        return
    monkeypatch.setattr(spawn, "_slots", True)
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    roomy = max(spawn.KEEP_SERVICES + 1, soft // spawn.FDS_PER_SERVICE)
    held.keep_for(roomy)
    assert held.may_hold() == (roomy * spawn.FDS_PER_SERVICE <= soft)
    # a file limit without room for a few descriptors per service: none held (a host
    # with a hard limit of 4096 and 1000 services would run out otherwise)
    held.keep_for(soft // spawn.FDS_PER_SERVICE + 1)
    assert not held.may_hold()

