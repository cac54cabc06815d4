"""A persist_dir that never answers (a hung NFS or FUSE mount, a disk in error recovery)
does not hold `hachain run` before the watchdog is armed.

`hachain run` used to make persist_dir itself (os.makedirs) on its way to init, and to
read the last-known-good copy of a broken file there, with no deadline: on a hung mount
it waited for good, nothing armed the device, and nothing would ever reset the machine.
Now both are done by a child given a deadline (snapshot.in_child); the chain starts, the
tickler arms the device, and the restarter, which cannot read its state there, fails the
health gate, so the machine is reset. The FUSE mounts need root and /dev/fuse.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from hachain import channels, cli, snapshot
from hachain.simulators.wdsim import SoftWatchdog, WatchdogServer
from tests.conftest import children, descendants, reap, stop_chain, wait_until
from tests.test_tickler import HB_TIMEOUT, PET, TIMEOUT
from tests.test_tickler_robust import hung_mount

pytestmark = pytest.mark.timeout(120)


def test_in_child_answers_with_what_the_work_returned() -> None:
    assert snapshot.in_child(lambda: b"made " + str(os.getpid()).encode(), 5) != \
        b"made " + str(os.getpid()).encode()  # it ran in another process
    assert snapshot.in_child(lambda: b"", 5) == b""


def test_in_child_carries_the_error_of_the_work_over(tmp_path: Path) -> None:
    def work() -> bytes:
        with open(tmp_path / "missing", "rb") as f:
            return f.read()
    with pytest.raises(FileNotFoundError) as e:
        snapshot.in_child(work, 5)
    assert e.value.strerror == "No such file or directory"


def test_in_child_gives_up_at_the_deadline_and_kills_the_child() -> None:
    def work() -> bytes:
        time.sleep(600)
        return b"late"
    before = set(children(os.getpid()))
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="no answer within 0.3 s"):
        snapshot.in_child(work, 0.3)
    assert time.monotonic() - t0 >= 0.3
    left = set(children(os.getpid())) - before  # (a zombie is still a child)

    def gone() -> bool:  # killed: reaped by in_child, or a zombie reaped here
        for pid in list(left):
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    left.discard(pid)
            except ChildProcessError:
                left.discard(pid)
        return not left
    try:
        wait_until(gone, 30, "the child to be killed")
    finally:
        for pid in left:  # (only when it was not)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def test_in_child_runs_then_after_it_has_answered(tmp_path: Path) -> None:
    """`then` is work nobody waits for: the answer comes first (hachain run goes on to
    init while its child writes the last-known-good copy)."""
    go = tmp_path / "go"
    done = tmp_path / "done"

    def work() -> bytes:
        return str(os.getpid()).encode()

    def then() -> None:
        while not go.exists():
            time.sleep(0.01)
        done.write_text("yes")
    pid = int(snapshot.in_child(work, 5, then=then))
    try:
        assert not done.exists()
        go.write_text("")
        wait_until(done.exists, 30, "the child's later work")
    finally:
        go.write_text("")
        os.waitpid(pid, 0)  # left to the caller's reaping: this test's


def _chain_config(tmp_path: Path, persist: Path, sock: str, grace: float) -> Path:
    cfg = tmp_path / "chain.toml"
    cfg.write_text(f'[chain]\nstate_dir = "{tmp_path / "run"}"\npersist_dir = "{persist}"\n'
                   f'heartbeat_interval = 0.2\ncgroup_root = "none"\n'
                   f'[watchdog]\ndevice = "sim:{sock}"\ntimeout = {TIMEOUT}\n'
                   f'pet_interval = {PET}\nheartbeat_timeout = {HB_TIMEOUT}\n'
                   f'restart_grace = {grace}\n'
                   f'[service.a]\ncommand = ["sleep", "600"]\n')
    return cfg


@pytest.mark.slow
def test_hachain_run_arms_the_watchdog_with_a_hung_persist_dir(tmp_path: Path) -> None:
    mnt = tmp_path / "hung"
    sock = str(tmp_path / "wd.sock")
    fired = threading.Event()
    wd = SoftWatchdog(timeout=10)
    server = WatchdogServer(sock, wd, fired.set)
    grace = 4.0
    cfg = _chain_config(tmp_path, mnt / "persist", sock, grace)
    log = tmp_path / "chain.log"
    with hung_mount(mnt):
        server.start()
        seen: set[int] = set()
        try:
            with open(log, "wb") as logf:
                chain = subprocess.Popen([sys.executable, "-m", "hachain.cli", "run", "-c",
                                          str(cfg)], stdout=logf, stderr=logf)
            try:
                # the deadline for persist_dir, then init starts the tickler: armed
                wait_until(lambda: seen.update(descendants(chain.pid)) or wd.armed,
                           cli.PERSIST_DIR_TIMEOUT + 60, "the tickler to arm the device")
                text = log.read_text(errors="replace")
                assert f"chain.persist_dir {mnt / 'persist'}: no answer within " \
                       f"{cli.PERSIST_DIR_TIMEOUT:g} s" in text, text
                assert chain.poll() is None, text
                # the restarter cannot read its state: the gate fails, the device fires
                assert fired.wait(grace + TIMEOUT + 60), \
                    "the watchdog never fired:\n" + log.read_text(errors="replace")[-3000:]
            finally:
                seen.update(descendants(chain.pid))
                if chain.poll() is None:
                    os.kill(chain.pid, signal.SIGSTOP)  # init restarts nothing now
                for pid in seen:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                chain.kill()
                reap(chain, "the chain's init")
        finally:
            server.stop()


@pytest.mark.slow
def test_a_broken_file_with_a_hung_persist_dir_is_refused_not_waited_on(
        tmp_path: Path) -> None:
    """The file does not load, and its last-known-good copy is on a mount that does not
    answer: refused after the deadline, saying so, instead of waiting for good."""
    mnt = tmp_path / "hung"
    with hung_mount(mnt):
        cfg = _chain_config(tmp_path, mnt / "persist", str(tmp_path / "wd.sock"), 4.0)
        cfg.write_text(cfg.read_text() + "[service.b]\ncommand = 3\n")
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "hachain.cli", "run", "-c", str(cfg)],
                           capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        took = time.monotonic() - t0
    assert r.returncode == 2, r.stderr
    assert "service.b.command" in r.stderr and \
        f"{mnt / 'persist'}/config/last-good.json: no answer within " \
        f"{snapshot.LAST_GOOD_READ_TIMEOUT:g} s" in r.stderr, r.stderr
    assert took >= snapshot.LAST_GOOD_READ_TIMEOUT, took


@pytest.mark.slow
def test_status_answers_when_persist_dir_does_not(tmp_path: Path) -> None:
    """`hachain status` reads the last boot, the gate record and the boot record from
    persist_dir: on a hung mount it used to wait for good. Now those come from a child
    given PERSIST_TIMEOUT, and status says what it could not show."""
    from hachain import status
    mnt = tmp_path / "hung"
    (tmp_path / "run").mkdir()
    with hung_mount(mnt):
        cfg = _chain_config(tmp_path, mnt / "persist", str(tmp_path / "wd.sock"), 4.0)
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "hachain.cli", "status", "-c", str(cfg)],
                           capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL)
        took = time.monotonic() - t0
        # the metrics server's scrape reads the same with the same deadline
        code = (f"import json; from hachain import metrics; print(json.dumps(metrics."
                f"_default_gather({str(tmp_path / 'run')!r}, {str(mnt / 'persist')!r})))")
        m = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=60, stdin=subprocess.DEVNULL)
        assert m.returncode == 0, m.stderr
        st = json.loads(m.stdout)
    assert r.returncode == 1, r.stderr  # no chain runs here: degraded
    assert f"warning: {mnt / 'persist'}: no answer within {status.PERSIST_TIMEOUT:g} s" \
        in r.stdout + r.stderr, r.stdout + r.stderr
    assert "init" in r.stdout and "dead" in r.stdout, r.stdout
    assert took >= status.PERSIST_TIMEOUT, took
    assert st["chain"]["boot"]["history"] == [] and any(
        "no answer within" in w for w in st["chain"]["warnings"]), st["chain"]


@pytest.mark.slow
def test_a_service_log_tail_on_a_hung_mount_is_said_not_waited_on(tmp_path: Path) -> None:
    """`hachain status NAME` ends with the service's log; a log directory that does not
    answer is a line naming it (and the rest of the block is shown)."""
    from hachain import status
    mnt = tmp_path / "hung"
    good = tmp_path / "log"
    good.mkdir()
    (good / "b.log").write_text("one\ntwo\n")
    st = {"chain": {"layers": {}, "restarter": {}},
          "services": {"a": {"state": "ready", "want": "up", "pid": None},
                       "b": {"state": "ready", "want": "up", "pid": None}}}
    with hung_mount(mnt):
        details = status.service_details(st, ["a"], 10, str(mnt / "log"), log_timeout=0.5)
    assert details["a"]["log_error"].startswith("no answer within 0.5 s"), details
    text = "\n".join(status.render_details(details))
    assert f"{mnt / 'log' / 'a.log'}: no answer within 0.5 s" in text, text
    assert text.startswith("a: ready (want up"), text
    # a log directory that answers: the same through the child
    details = status.service_details(st, ["b"], 10, str(good), log_timeout=5)
    assert details["b"]["log_tail"] == ["one", "two"] and details["b"]["log_written"]


# Numbered 1000-byte lines as fast as it can; after every 1000 lines the count goes to
# the file named by argv[1] (on a disk that answers), so the test sees it go on.
WRITER = """
import os, sys
pad = b"." * 989
n = 0
while True:
    os.write(1, b"".join(b"%09d %s\\n" % (i, pad) for i in range(n, n + 1000)))
    n += 1000
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(str(n))
    os.replace(sys.argv[1] + ".tmp", sys.argv[1])
"""


@pytest.mark.slow
def test_a_hung_log_dir_does_not_stop_a_service_that_writes(tmp_path: Path,
                                                           restarter: Any) -> None:
    """The service logs are on a mount that does not answer. The logger's writes are
    made by a thread of their own: once one has not returned for STALL_SECONDS the
    logger reads on and drops the output (and says so), so the service goes on
    writing. It used to write inline: it blocked on the disk, the service's pipe filled
    (64 KiB) and the service blocked for as long as the disk hung."""
    from hachain.logger import writer
    mnt = tmp_path / "hung"
    (tmp_path / "w.py").write_text(WRITER)
    progress = tmp_path / "progress"

    def lines() -> int:
        try:
            return int(progress.read_text() or 0)
        except (FileNotFoundError, ValueError):
            return 0
    with hung_mount(mnt):
        r = restarter(f'[service.w]\ncommand = ["{sys.executable}", "{tmp_path / "w.py"}", '
                      f'"{progress}"]\n', start=False)
        text = Path(r.config).read_text()
        Path(r.config).write_text(text.replace("heartbeat_interval = 0.2\n",
                                               f'heartbeat_interval = 0.2\nlog_dir = '
                                               f'"{mnt / "log"}"\n', 1))
        r.start()
        # 8 MiB: far more than a pipe (64 KiB) and the writer's queue (1 MiB) hold
        want = 8 * (1 << 20) // 1000
        wait_until(lambda: lines() >= want, writer.STALL_SECONDS + 60,
                   "the service to write on past a hung log disk")
        log = wait_until(lambda: "has not returned for" in (t := Path(r.log).read_text())
                         and t, 30, "the logger to say its disk hangs")
        assert f"a write in {mnt / 'log'} has not returned for " \
               f"{writer.STALL_SECONDS:g} s" in log, log
        assert r.svc("w")["state"] in ("running", "ready")
    # the mount is gone (what waited gets an error): the writes return, and say what
    # was dropped meanwhile
    log = wait_until(lambda: "return again after" in (t := Path(r.log).read_text()) and t,
                     30, "the logger to say its writes return")
    assert re.search(r"dropped meanwhile: w [0-9]+ bytes", log), log
    n = lines()
    wait_until(lambda: lines() > n, 30, "the service to write on")


@pytest.mark.slow
def test_an_admin_change_on_a_hung_persist_dir_resets_nothing(tmp_path: Path) -> None:
    """`hachain stop NAME` while persist_dir hangs: admin.json is written by a thread of
    its own (persist.DurableWriter), the loop waits for it at most WRITE_WAIT, the
    service stops, the restarter beats on and nothing resets the box; the change is
    written when the disk answers. (The loop wrote it itself and hung there: its heartbeat
    went stale and the watchdog reset the box, the change lost with it.)"""
    from hachain.restarter import persist as persist_mod
    real, link, mnt = tmp_path / "real", tmp_path / "persist", tmp_path / "hung"
    real.mkdir()
    link.symlink_to(real)
    sock = str(tmp_path / "wd.sock")
    fired = threading.Event()
    wd = SoftWatchdog(timeout=6)
    server = WatchdogServer(sock, wd, fired.set)
    cfg = tmp_path / "chain.toml"
    cfg.write_text(f'[chain]\nstate_dir = "{tmp_path / "run"}"\npersist_dir = "{link}"\n'
                   'heartbeat_interval = 0.5\ncgroup_root = "none"\n'
                   f'[watchdog]\ndevice = "sim:{sock}"\ntimeout = 6\npet_interval = 1\n'
                   '[service.a]\ncommand = ["sleep", "600"]\n'
                   '[service.b]\ncommand = ["sleep", "600"]\n')
    log = tmp_path / "chain.log"
    server.start()
    seen: set[int] = set()
    chain = None
    run = tmp_path / "run"

    def text() -> str:
        return log.read_text(errors="replace")

    def state(name: str) -> str | None:
        rec = run / "services" / f"{name}.json"
        try:
            return str(json.loads(rec.read_text()).get("state"))
        except (OSError, ValueError):
            return None

    def pets() -> int:
        hb = channels.read_heartbeat(str(run), "tickler")
        return int(hb.extra.get("pets") or 0) if hb is not None else 0
    try:
        with open(log, "wb") as logf:
            chain = subprocess.Popen([sys.executable, "-m", "hachain.cli", "run", "-c",
                                      str(cfg)], stdout=logf, stderr=logf)
        wait_until(lambda: seen.update(descendants(chain.pid)) or
                   (state("a") == "ready" and state("b") == "ready" and pets() >= 2),
                   60, "both services ready and the device petted")
        with hung_mount(mnt):
            os.symlink(mnt, tmp_path / "swap")
            os.replace(tmp_path / "swap", link)  # persist_dir now hangs
            got = subprocess.run([sys.executable, "-m", "hachain.cli", "stop", "a", "-c",
                                  str(cfg)], capture_output=True, text=True, timeout=60)
            assert got.returncode == 0, got.stdout + got.stderr
            wait_until(lambda: state("a") == "stopped", 30, "a stopped\n" + text()[-2000:])
            # the restarter beats on: pets go on past the device's timeout and STALL
            start = pets()
            wait_until(lambda: fired.is_set() or pets() >= start + 6 / 1 + 2 and
                       "has not returned for" in text(), 60,
                       "pets past the timeout and the stalled write said")
            assert not fired.is_set(), "the watchdog fired:\n" + text()[-3000:]
            assert state("b") == "ready"
            assert not (real / channels.ADMIN_STATE).exists()
            # status says what waits, and why
            st = subprocess.run([sys.executable, "-m", "hachain.cli", "status", "--json",
                                 "-c", str(cfg)], capture_output=True, text=True, timeout=60)
            unwritten = json.loads(st.stdout)["chain"]["restarter"]["unwritten"]
            assert [(u["file"], u["error"]) for u in unwritten] == [
                ("admin.json", "no answer from the disk")], unwritten
            os.symlink(real, tmp_path / "swap")
            os.replace(tmp_path / "swap", link)  # (what still waits on the mount is
            # aborted as the context ends: ENOTCONN, tried again after RETRY)
        admin = real / channels.ADMIN_STATE
        wait_until(lambda: admin.exists() and channels.read_json(str(admin)) ==
                   {"a": {"want": "down"}}, 30 + persist_mod.RETRY,
                   "admin.json written once the disk answers\n" + text()[-2000:])
        assert "persist_dir answers again" in text(), text()[-3000:]
        assert not fired.is_set()
    finally:
        stop_chain(chain, seen)
        server.stop()
