"""state_dir removed while the chain runs (an `rm -rf` of the run directory by hand, a
cleaner of /run or /tmp): a healthy machine is not reset, and nothing the chain keeps
there stays lost.

Before, the heartbeat files went with the directory and their writers could not make
them again (their directory was gone), so the tickler's gate failed after the grace and
the watchdog reset a machine whose every process was fine; the control socket was gone
(`hachain status` could not reach the restarter), and so were the service records a
later restarter re-adopts from and the running snapshot a later layer starts from.
Now every layer makes again, at its next heartbeat, what it keeps there
(channels.Kept), and the tickler judges a heartbeat file that went missing by the age of
the last one it read.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hachain import channels, credentials
from hachain.simulators.wdsim import SoftWatchdog, WatchdogServer
from tests.conftest import START_TIMEOUT, descendants, stop_chain, wait_until
from tests.test_tickler import ForgedLayers, Rig

pytestmark = pytest.mark.timeout(180)


# --- units ----------------------------------------------------------------------------------


def test_kept_names_what_was_removed_or_replaced(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "d" / "c"
    a.write_text("x")
    b.write_text("y")
    c.parent.mkdir()
    c.write_text("z")
    kept = channels.Kept()
    for p in (a, b, c):
        kept.note(str(p))
    assert kept.lost() == []
    a.unlink()
    # b replaced: made beside it and renamed over it, so the new file has another inode
    # number (a file removed and then made can be given the removed one's number on a
    # disk filesystem, /tmp here: CI saw it; Kept cannot tell those apart)
    (tmp_path / "b.new").write_text("another file, another inode")
    os.rename(tmp_path / "b.new", b)
    shutil.rmtree(c.parent)
    assert sorted(kept.lost()) == sorted([str(a), str(b), str(c)])
    kept.note(str(b))
    assert str(b) not in kept.lost()


def test_kept_ids_travel_through_the_environment(tmp_path: Path) -> None:
    p = tmp_path / "s"
    p.write_text("")
    kept = channels.Kept()
    kept.note(str(p))
    text = kept.encode({"HACHAIN_X_FD": str(p), "HACHAIN_Y_FD": str(tmp_path / "none")})
    st = os.stat(p)
    assert channels.Kept.decode(text) == {"HACHAIN_X_FD": (st.st_dev, st.st_ino)}
    assert channels.Kept.decode("garbage,=,A=1:,B=x:2") == {}


def test_bind_unix_puts_a_new_socket_in_place_of_whatever_is_there(tmp_path: Path) -> None:
    path = str(tmp_path / "run" / "control.sock")
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        f.write("a stale file in the way")
    s = channels.bind_unix(path, socket.SOCK_STREAM, 0o600)
    try:
        s.listen(1)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.connect(path)
        assert os.stat(path).st_mode & 0o777 == 0o600
        assert sorted(os.listdir(tmp_path / "run")) == ["control.sock"]  # no temp name left
    finally:
        s.close()
    shutil.rmtree(tmp_path / "run")  # the directory itself gone: made again
    s = channels.bind_unix(path, socket.SOCK_DGRAM, 0o666)
    s.close()
    assert os.stat(path).st_mode & 0o777 == 0o666


def test_a_heartbeat_writer_makes_its_directory_again(tmp_path: Path) -> None:
    w = channels.HeartbeatWriter(str(tmp_path), "init")
    w.beat()
    shutil.rmtree(tmp_path / channels.HEARTBEAT_DIR)
    w.beat()
    hb = channels.read_heartbeat(str(tmp_path), "init")
    assert hb is not None and hb.seq == 2
    w.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(str(tmp_path))
    r.server.start()
    try:
        yield r
    finally:
        r.close()


@pytest.mark.slow
def test_the_tickler_judges_a_heartbeat_file_gone_by_the_last_one_it_read(rig: Rig) -> None:
    """A heartbeat file removed between its writer's beats is not a missing layer: the
    gate fails only once the last heartbeat read is older than heartbeat_timeout, and
    says the file is missing. (It failed at the first tick after the removal, as a layer
    that never beat: "heartbeat missing".)"""
    with ForgedLayers(rig.state_dir, rig.sleeper.pid) as layers:
        rig.start_tickler()
        wait_until(lambda: rig.pets() >= 2, START_TIMEOUT, "petting")
        layers.beating("restarter", False)
        path = channels.heartbeat_path(rig.state_dir, "restarter")
        os.unlink(path)

        def failing() -> channels.Heartbeat | None:
            hb = rig.tickler_hb()
            return hb if hb is not None and not hb.extra["gate"]["ok"] else None
        hb = wait_until(failing, 30, "the gate to fail")
        reasons = hb.extra["gate"]["reasons"]
        assert any(r.startswith("restarter heartbeat stale") and
                   r.endswith(f"(its file {path} is missing)") for r in reasons), reasons
        assert not any("heartbeat missing" in r for r in reasons), reasons
        layers.beating("restarter", True)  # its writer makes it again: passes again
        wait_until(lambda: (h := rig.tickler_hb()) is not None and h.extra["gate"]["ok"],
                   30, "the gate to pass again")


def test_write_atomic_makes_its_directory_only_when_asked(tmp_path: Path) -> None:
    path = str(tmp_path / "gone" / "deeper" / "admin.json")
    with pytest.raises(FileNotFoundError):
        channels.write_atomic(path, b"{}")  # a reader's write (status) makes nothing
    assert not (tmp_path / "gone").exists()
    channels.write_atomic(path, b"{}", durable=True, make_dir=True)
    assert channels.read_json(path) == {}


def test_a_log_file_removed_under_the_logger_is_made_again(tmp_path: Path,
                                                           monkeypatch: Any) -> None:
    from hachain.logger import files
    monkeypatch.setattr(files, "RELINK_CHECK", 0.0)
    f = files.LogFile(str(tmp_path / "log"), "web", 1 << 20, 2)
    f.append(b"one\n")
    shutil.rmtree(tmp_path / "log")
    f.append(b"two\n")
    assert (tmp_path / "log" / "web.log").read_bytes() == b"two\n"
    f.close()


# --- the whole chain ------------------------------------------------------------------------

WD_TIMEOUT = 6  # s: the simulated device's timeout
PET = 1.0
HB = 0.5  # heartbeat_interval


def _tickler_pets(run: Path) -> int:
    hb = channels.read_heartbeat(str(run), "tickler")
    return int(hb.extra.get("pets") or 0) if hb is not None else 0


def _status(cfg: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hachain.cli", "status", "--json", "-c",
                           str(cfg)], capture_output=True, text=True, timeout=60)


def _services(cfg: Path) -> dict[str, Any] | None:
    """The restarter's answer, per service; None while it does not answer."""
    out = _status(cfg)
    try:
        d = json.loads(out.stdout)
    except ValueError:
        return None
    svcs = d.get("services")
    if d.get("chain", {}).get("restarter_error") or not isinstance(svcs, dict) or not svcs:
        return None  # the restarter did not answer (what status shows is a last-known)
    return svcs



@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the chain makes cgroups")
def test_removing_state_dir_resets_nothing_and_loses_nothing(tmp_path: Path) -> None:
    run, persist = tmp_path / "run", tmp_path / "persist"
    sock = str(tmp_path / "wd.sock")
    fired = threading.Event()
    wd = SoftWatchdog(timeout=WD_TIMEOUT)
    server = WatchdogServer(sock, wd, fired.set)
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    cfg = tmp_path / "chain.toml"
    cfg.write_text(f'[chain]\nstate_dir = "{run}"\npersist_dir = "{persist}"\n'
                   f'heartbeat_interval = {HB}\n'
                   f'[watchdog]\ndevice = "sim:{sock}"\ntimeout = {WD_TIMEOUT}\n'
                   f'pet_interval = {PET}\n'
                   '[service.a]\ncommand = ["sleep", "600"]\n'
                   f'credentials = {{ token = "{secret}" }}\n'
                   '[service.b]\ncommand = ["sh", "-c", "echo b up; exec sleep 600"]\n')
    log = tmp_path / "chain.log"
    server.start()
    seen: set[int] = set()
    chain = None
    try:
        with open(log, "wb") as logf:
            chain = subprocess.Popen([sys.executable, "-m", "hachain.cli", "run", "-c",
                                      str(cfg)], stdout=logf, stderr=logf)

        def text() -> str:
            return log.read_text(errors="replace")

        def both_up() -> dict[str, Any] | None:
            seen.update(descendants(chain.pid))
            svcs = _services(cfg)
            return svcs if svcs and all(svcs.get(n, {}).get("state") == "ready"
                                        for n in "ab") else None
        before = wait_until(both_up, 60, "both services ready")
        pids = {n: before[n]["pid"] for n in "ab"}
        wait_until(lambda: (run / channels.LOGGER_SOCKET).exists(), 30, "the logger")
        wait_until(lambda: _tickler_pets(run) >= 2, 30, "the tickler petting")

        shutil.rmtree(run)  # the whole run directory, as `rm -rf` would
        assert not run.exists()
        # each layer makes again what it keeps there, at its next heartbeat
        wanted = ["hb/init.json", "hb/restarter.json", "hb/tickler.json", "init.lock",
                  "control.sock", "notify.sock", "restarter.lock", "logger.sock",
                  "logger.lock", "config/running.json", "services/a.json",
                  "services/b.json",  # and the copy of a's credential it may read again
                  os.path.relpath(credentials.directory(str(run), "a"), run) + "/token"]
        try:
            wait_until(lambda: all((run / w).exists() for w in wanted), 30, "")
        except AssertionError:
            raise AssertionError(f"not made again: {[w for w in wanted if not (run / w).exists()]}"
                                 f"\n{text()[-3000:]}") from None
        # and the device goes on being petted past its whole timeout: no reset
        pets = _tickler_pets(run)
        wait_until(lambda: fired.is_set() or _tickler_pets(run) >= pets + WD_TIMEOUT / PET + 2,
                   WD_TIMEOUT * 10, "pets past the device's timeout")
        assert not fired.is_set(), "the watchdog fired:\n" + text()[-3000:]
        assert "health gate FAILED" not in text(), text()[-3000:]
        assert "made again what was removed or replaced" in text(), text()[-3000:]
        after = wait_until(lambda: _services(cfg), 30, "the restarter answering again")
        assert {n: after[n]["pid"] for n in "ab"} == pids

        # the file on disk broken now: a later restarter still runs this run's snapshot
        good = tmp_path / "good.toml"  # (for status, which reads the file for its paths)
        good.write_text(cfg.read_text())
        cfg.write_text("[chain\nthis is not TOML\n")
        hb = channels.read_heartbeat(str(run), "restarter")
        assert hb is not None
        os.kill(hb.pid, signal.SIGKILL)

        def readopted() -> dict[str, Any] | None:
            seen.update(descendants(chain.pid))
            h = channels.read_heartbeat(str(run), "restarter")
            if h is None or h.pid == hb.pid:
                return None
            svcs = _services(good)
            return svcs if svcs and all(svcs.get(n, {}).get("state") == "ready"
                                        for n in "ab") else None
        again = wait_until(readopted, 60, "a new restarter answering with both ready")
        assert {n: again[n]["pid"] for n in "ab"} == pids, "a service was started twice"
        # of the chain's processes, the services' two only: nothing runs twice
        seen.update(descendants(chain.pid))
        live = sorted(p for p in seen if _cmdline(p)[-1:] == ["600"])
        assert live == sorted(pids.values()), live
        assert text().count("writing service logs") == 1, "a second logger:\n" + text()
        assert "took over the running logger" in text(), text()[-3000:]
        # and the init lock taken again still keeps a second chain out
        with pytest.raises(channels.ChainRunning):
            channels.take_init_lock(str(run))
        assert not fired.is_set()
    finally:
        stop_chain(chain, seen)
        server.stop()


@pytest.mark.slow
def test_an_init_lock_removed_alone_is_taken_again(tmp_path: Path) -> None:
    """init looks at its lock's link count every LOCK_LOOK_EVERY heartbeats (and at once
    when the heartbeat file went too): a lock removed by hand is back within that many
    intervals, and keeps a second chain out."""
    from hachain.init.main import LOCK_LOOK_EVERY
    hb = 0.1
    run = tmp_path / "run"
    cfg = tmp_path / "chain.toml"
    cfg.write_text(f'[chain]\nstate_dir = "{run}"\npersist_dir = "{tmp_path / "persist"}"\n'
                   f'cgroup_root = "none"\nheartbeat_interval = {hb}\n'
                   '[watchdog]\ndevice = "none"\n[service.a]\ncommand = ["sleep", "600"]\n')
    log = tmp_path / "chain.log"
    seen: set[int] = set()
    with open(log, "wb") as logf:
        chain = subprocess.Popen([sys.executable, "-m", "hachain.cli", "run", "-c", str(cfg)],
                                 stdout=logf, stderr=logf)
    try:
        wait_until(lambda: channels.read_heartbeat(str(run), "init") is not None,
                   START_TIMEOUT, "init's heartbeat")
        seen.update(descendants(chain.pid))
        lock = run / channels.INIT_LOCK
        first = lock.stat().st_ino
        lock.unlink()
        gone = channels.read_heartbeat(str(run), "init")
        assert gone is not None
        # within LOCK_LOOK_EVERY of init's heartbeats from here: counted by its seq, so
        # the bound holds however slowly a loaded machine runs them
        wait_until(lambda: lock.exists() or ((h := channels.read_heartbeat(str(run), "init"))
                                             is not None and h.seq > gone.seq
                                             + LOCK_LOOK_EVERY + 1),
                   START_TIMEOUT, "the lock back, or init's heartbeats past the bound")
        assert lock.exists(), log.read_text(errors="replace")[-2000:]
        assert lock.stat().st_ino != first
        with pytest.raises(channels.ChainRunning):
            channels.take_init_lock(str(run))
        assert "init.lock was removed: taken again" in log.read_text(errors="replace")
    finally:
        seen.update(descendants(chain.pid))
        stop_chain(chain, seen)


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the chain makes cgroups")
def test_removing_persist_dir_loses_no_later_log_line_or_admin_change(tmp_path: Path) -> None:
    """persist_dir removed while the chain runs (`rm -rf /var/lib/hachain` to "start
    afresh"): a service's output goes on into a new log file (it went on into the removed
    file, which nobody could read, until the next rotation), and an administrator's change
    is written (its write waited for a directory that was never made again)."""
    run, persist = tmp_path / "run", tmp_path / "persist"
    cfg = tmp_path / "chain.toml"
    cfg.write_text(f'[chain]\nstate_dir = "{run}"\npersist_dir = "{persist}"\n'
                   f'heartbeat_interval = {HB}\n[watchdog]\ndevice = "none"\n'
                   '[service.a]\ncommand = ["sleep", "600"]\n'
                   '[service.talker]\ncommand = ["sh", "-c", "n=0; while :; do '
                   'n=$((n+1)); echo line $n; sleep 0.1; done"]\n')
    log = tmp_path / "chain.log"
    seen: set[int] = set()
    chain = None
    talker_log = persist / "log" / "talker.log"
    try:
        with open(log, "wb") as logf:
            chain = subprocess.Popen([sys.executable, "-m", "hachain.cli", "run", "-c",
                                      str(cfg)], stdout=logf, stderr=logf)

        def text() -> str:
            return log.read_text(errors="replace")

        def up() -> dict[str, Any] | None:
            seen.update(descendants(chain.pid))
            svcs = _services(cfg)
            return svcs if svcs and all(svcs.get(n, {}).get("state") == "ready"
                                        for n in ("a", "talker")) else None
        wait_until(up, 60, "both services ready")
        wait_until(lambda: talker_log.exists() and "line 3\n" in talker_log.read_text(),
                   30, "the talker's first lines in its log")

        shutil.rmtree(persist)
        # the logger makes the file again at its next write past a second (RELINK_CHECK)
        wait_until(lambda: talker_log.exists() and talker_log.read_text().count("line") >= 3,
                   30, "the talker's later lines in a new log file\n" + text()[-2000:])
        got = subprocess.run([sys.executable, "-m", "hachain.cli", "stop", "a", "-c",
                              str(cfg)], capture_output=True, text=True, timeout=60)
        assert got.returncode == 0, got.stdout + got.stderr
        admin = persist / channels.ADMIN_STATE
        wait_until(lambda: admin.exists() and channels.read_json(str(admin)) ==
                   {"a": {"want": "down"}}, 30, "admin.json to say a is stopped\n" + text())
        assert "cannot write in" not in text(), text()[-3000:]
    finally:
        stop_chain(chain, seen)
