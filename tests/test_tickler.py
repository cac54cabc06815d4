"""The tickler as a real process against the watchdog simulator, with heartbeats we forge.

The test plays init and the restarter: a thread writes their heartbeat files (naming
processes we start, so "alive" is real), and the tickler decides from them whether to
pet a `WatchdogServer` in this process. Every wait is on a condition with a deadline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, Self

import pytest

from hachain import channels
from hachain.simulators.wdsim import SoftWatchdog, WatchdogServer
from hachain.watchdog import tickler
from hachain.watchdog.device import WDIOF_CARDRESET, sim_attributes
from tests.conftest import LIVENESS, START_TIMEOUT, heartbeat_window, reap, wait_until

TIMEOUT = 3
PET = 0.5
HB_TIMEOUT = 1.0
GRACE = 4.0
BOUND = TIMEOUT + PET + HB_TIMEOUT  # from the last good restarter heartbeat to the reset
# The first pets wait on the tickler's Python start-up and on the forged layers' first
# fresh heartbeats, which nothing configures: START_TIMEOUT, as a restarter's first
# answer (CI, 2026-12-05: 10 s were not enough with two CI runs on the two cores). The
# bounds measured after that come from the configuration.

class ForgedLayers:
    """Writes init's and the restarter's heartbeats from a thread, naming real processes."""

    def __init__(self, state_dir: str, pid: int, restarter_pid: int | None = None) -> None:
        self.state_dir = state_dir
        self.pid = pid  # a live process we own (stands for both layers)
        self.pids = {"init": pid, "restarter": restarter_pid or pid}
        self.layers = {"init": True, "restarter": True}  # which ones keep beating
        self.restarter_extra: dict[str, Any] = {"lag": 0.0, "critical": {},
                                                "restart_rate": 0.0, "services": 0,
                                                "reboot_requested": None}
        self.last: dict[str, float] = {}
        self.stop = threading.Event()
        self.seq = 0
        self.lock = threading.Lock()  # held across a round of writes: see beating()
        os.makedirs(os.path.join(state_dir, channels.HEARTBEAT_DIR), exist_ok=True)
        self.thread = threading.Thread(target=self.run, daemon=True)

    def beating(self, layer: str, on: bool) -> None:
        """Start or stop `layer`'s heartbeats. Once this returns no write of it is under
        way, so a test may put something else in its file (a write in flight would
        rename a heartbeat over it) and `last[layer]` is final."""
        with self.lock:
            self.layers[layer] = on

    def beat_once(self) -> None:
        """One heartbeat for each layer still beating."""
        with self.lock:
            self.seq += 1
            for layer, on in list(self.layers.items()):
                if not on:
                    continue
                now = time.monotonic()
                extra = self.restarter_extra if layer == "restarter" else {}
                channels.write_heartbeat(self.state_dir, channels.Heartbeat(
                    layer, self.pids[layer], now, now, self.seq, 0, extra))
                self.last[layer] = now

    def run(self) -> None:
        """Beat every 0.1 s until stopped."""
        while not self.stop.wait(0.1):
            self.beat_once()

    def __enter__(self) -> Self:
        self.beat_once()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)


class Rig:
    """A simulator, a config, a forged chain and the tickler processes we started."""

    def __init__(self, tmp: str, bootstatus: int = 0, device: str | None = None) -> None:
        self.tmp = tmp
        self.state_dir = os.path.join(tmp, "run")
        self.persist_dir = os.path.join(tmp, "persist")
        self.sock = os.path.join(tmp, "wd.sock")
        self.expired_at: list[float] = []
        self.expired = threading.Event()
        self.wd = SoftWatchdog(timeout=10, bootstatus=bootstatus)  # the tickler sets 3
        self.server = WatchdogServer(self.sock, self.wd, self.on_expire)
        self.config = os.path.join(tmp, "chain.toml")
        with open(self.config, "w") as f:
            f.write(f'[chain]\nstate_dir = "{self.state_dir}"\n'
                    f'persist_dir = "{self.persist_dir}"\nheartbeat_interval = 0.2\n'
                    f'[watchdog]\ndevice = "{device or "sim:" + self.sock}"\n'
                    f"timeout = {TIMEOUT}\npet_interval = {PET}\n"
                    f"heartbeat_timeout = {HB_TIMEOUT}\nrestart_grace = {GRACE}\n")
        self.procs: list[subprocess.Popen[bytes]] = []
        self.sleeper = subprocess.Popen(["sleep", "600"])
        self.log = os.path.join(tmp, "tickler.log")

    def on_expire(self) -> None:
        """The simulator fired: remember when."""
        self.expired_at.append(time.monotonic())
        self.expired.set()

    def start_tickler(self) -> subprocess.Popen[bytes]:
        """Start `python -m hachain.watchdog.tickler -c CONFIG`, stderr to the log."""
        with open(self.log, "ab") as logf:
            p = subprocess.Popen([sys.executable, "-m", "hachain.watchdog.tickler",
                                  "-c", self.config], stderr=logf, stdout=logf)
        self.procs.append(p)
        return p

    def tickler_hb(self) -> channels.Heartbeat | None:
        return channels.read_heartbeat(self.state_dir, "tickler")

    def pets(self) -> int:
        hb = self.tickler_hb()
        return int(hb.extra.get("pets", 0)) if hb else 0

    def log_text(self) -> str:
        with open(self.log, errors="replace") as f:
            return f.read()

    def wait_log(self, text: str, timeout: float = LIVENESS) -> str:
        """The log once it holds `text`: the tickler's lines go out through a thread of
        their own, after the heartbeat or record that a test may have waited for."""
        return str(wait_until(lambda: text in (t := self.log_text()) and t, timeout,
                              f"the tickler to log {text!r}"))

    def close(self) -> None:
        for p in self.procs + [self.sleeper]:
            if p.poll() is None:
                p.kill()
            reap(p, "a process of the rig")
        self.server.stop()


@pytest.fixture
def rig(tmp_path: Any) -> Iterator[Rig]:
    r = Rig(str(tmp_path))
    r.server.start()
    try:
        yield r
    finally:
        r.close()


@pytest.mark.slow
def test_fresh_chain_is_petted_and_never_expires(rig: Rig) -> None:
    with ForgedLayers(rig.state_dir, rig.sleeper.pid):
        rig.start_tickler()
        wait_until(lambda: rig.pets() >= 1, 10, "the first pet")
        assert rig.wd.timeout == TIMEOUT  # the tickler applied the configured timeout
        first = rig.pets()
        # Watching for longer than two timeouts is the point of this test.
        heartbeat_window(rig.tickler_hb, 2 * TIMEOUT + 0.5, "the tickler")
        assert rig.server.expirations == 0
        hb = rig.tickler_hb()
        assert hb is not None
        assert rig.pets() >= first + 2 * TIMEOUT / PET - 2
        assert hb.extra["gate"] == {"ok": True, "reasons": []}
        assert hb.extra["petting"] and hb.extra["armed"]
        assert hb.extra["timeout"] == TIMEOUT
        assert hb.extra["device"] == "sim:" + rig.sock
        assert 0 < hb.extra["timeleft"] <= TIMEOUT


@pytest.mark.slow
def test_dead_restarter_gets_the_grace_then_fails_the_gate(rig: Rig) -> None:
    """The tickler learns of the restarter's death through a pidfd: past
    heartbeat_timeout it still passes (init is restarting a dead layer), and only past
    restart_grace does the gate fail, naming the dead pid."""
    victim = subprocess.Popen(["sleep", "600"])
    try:
        with ForgedLayers(rig.state_dir, rig.sleeper.pid, restarter_pid=victim.pid) as layers:
            rig.start_tickler()
            wait_until(lambda: rig.pets() >= 2, START_TIMEOUT, "petting")
            layers.beating("restarter", False)
            victim.kill()
            reap(victim, "the stand-in restarter")
            t0 = layers.last["restarter"]

            def tick_after(t: float) -> channels.Heartbeat | None:
                hb = rig.tickler_hb()
                return hb if hb is not None and hb.mono > t else None
            hb = wait_until(lambda: tick_after(t0 + HB_TIMEOUT + PET), 10,
                            "a tick past the heartbeat timeout")
            assert hb.extra["gate"]["ok"], hb.extra["gate"]
            gate = wait_until(lambda: not (g := rig.tickler_hb().extra["gate"])["ok"] and g,
                              GRACE + 3, "the gate to fail after the grace")
            assert f"pid {victim.pid} dead: not restarted" in gate["reasons"][0], gate
    finally:
        victim.kill()
        reap(victim, "the stand-in restarter")


@pytest.mark.slow
def test_hung_restarter_stops_petting_and_the_watchdog_fires(rig: Rig) -> None:
    with ForgedLayers(rig.state_dir, rig.sleeper.pid) as layers:
        rig.start_tickler()
        wait_until(lambda: rig.pets() >= 2, START_TIMEOUT, "petting")
        layers.beating("restarter", False)  # alive (the sleeper) but silent: hung
        t0 = layers.last["restarter"]
        assert rig.expired.wait(BOUND + 2), "the watchdog did not expire"
        elapsed = rig.expired_at[0] - t0
        assert elapsed <= BOUND + 0.3, elapsed
        assert elapsed >= HB_TIMEOUT + TIMEOUT - PET - 0.3, elapsed
    gate = channels.read_json(os.path.join(rig.persist_dir, channels.GATE_RECORD))
    assert gate["device"] == "sim:" + rig.sock
    with open("/proc/sys/kernel/random/boot_id") as f:
        assert gate["boot_id"] == f.read().strip()
    assert len(gate["reasons"]) == 1
    assert gate["reasons"][0].startswith("restarter heartbeat stale")
    assert f"pid {rig.sleeper.pid} alive: hung" in gate["reasons"][0]
    rig.wait_log("health gate FAILED, not petting: restarter heartbeat stale")


@pytest.mark.slow
def test_critical_service_down_stops_petting(rig: Rig) -> None:
    with ForgedLayers(rig.state_dir, rig.sleeper.pid) as layers:
        rig.start_tickler()
        wait_until(lambda: rig.pets() >= 1, START_TIMEOUT, "petting")
        layers.restarter_extra = {**layers.restarter_extra, "critical": {
            "db": {"state": "maintenance", "ok": False, "reason": "too many restarts"}}}
        hb = wait_until(lambda: (h := rig.tickler_hb()) and not h.extra["gate"]["ok"] and h,
                        5, "the gate to fail")
        assert hb.extra["gate"]["reasons"] == [
            "critical service db not ok: maintenance (too many restarts)"]
        assert not hb.extra["petting"]
        assert rig.expired.wait(TIMEOUT + 2)


@pytest.mark.slow
def test_sigterm_disarms_with_magic_close(rig: Rig) -> None:
    with ForgedLayers(rig.state_dir, rig.sleeper.pid):
        p = rig.start_tickler()
        wait_until(lambda: rig.pets() >= 1, START_TIMEOUT, "petting")
        assert sim_attributes(rig.sock)["state"] == "active"
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 0
        assert sim_attributes(rig.sock)["state"] == "inactive"
        assert "magic close: watchdog disarmed" in rig.log_text()
    time.sleep(TIMEOUT + 0.5)  # disarmed: nothing may fire although nobody pets
    assert rig.server.expirations == 0


@pytest.mark.slow
def test_killed_tickler_leaves_it_armed_and_a_new_one_takes_over(rig: Rig) -> None:
    with ForgedLayers(rig.state_dir, rig.sleeper.pid):
        p = rig.start_tickler()
        wait_until(lambda: rig.pets() >= 1, START_TIMEOUT, "petting")
        boot_rec = wait_until(lambda: channels.read_json(  # written by the writer thread
            os.path.join(rig.persist_dir, "last_boot.json")), 5, "last_boot.json")
        p.kill()
        reap(p, "the tickler")
        assert sim_attributes(rig.sock)["state"] == "active"  # no magic close: still armed
        rig.start_tickler()
        wait_until(lambda: (h := rig.tickler_hb()) and h.pid != p.pid and h.extra["pets"] >= 2,
                   TIMEOUT, "the second tickler to pet")
        assert rig.server.expirations == 0
    # Same boot: the restarted tickler did not record the boot a second time.
    assert channels.read_json(os.path.join(rig.persist_dir, "last_boot.json")) == boot_rec


def test_last_boot_records_watchdog_reset_and_previous_gate_failure(tmp_path: Any) -> None:
    r = Rig(str(tmp_path), bootstatus=WDIOF_CARDRESET)
    os.makedirs(r.persist_dir)
    reason = "restarter heartbeat stale: 3.4 s > 3 s (pid 9 alive: hung)"
    prev = {"wall": 1.0, "reasons": [reason], "device": "sim", "boot_id": "an-older-boot"}
    channels.write_json(os.path.join(r.persist_dir, channels.GATE_RECORD), prev)
    r.server.start()
    try:
        with ForgedLayers(r.state_dir, r.sleeper.pid):
            r.start_tickler()
            path = os.path.join(r.persist_dir, "last_boot.json")
            rec = wait_until(lambda: channels.read_json(path), 10, "last_boot.json")
            r.wait_log("previous boot ended by: watchdog reset (boot status 0x20)")
    finally:
        r.close()
    assert rec["cause"] == "watchdog reset"
    assert rec["bootstatus"] == WDIOF_CARDRESET and rec["flags"] == ["CARDRESET"]
    assert rec["last_gate_failure"] == prev


def test_unopenable_device_exits_nonzero_with_a_clear_message(tmp_path: Any) -> None:
    r = Rig(str(tmp_path))  # the server is never started: nothing listens on the socket
    try:
        p = r.start_tickler()
        assert p.wait(20) == tickler.EXIT_NOT_OPENED  # init: no pet, not counted
        assert "cannot open the watchdog: sim:" in r.log_text()
    finally:
        r.close()


@pytest.mark.slow
def test_device_none_still_publishes_the_gate(tmp_path: Any) -> None:
    r = Rig(str(tmp_path), device="none")
    try:
        r.start_tickler()  # no heartbeats at all: startup grace, then failing
        hb = wait_until(lambda: (h := r.tickler_hb()) and not h.extra["gate"]["ok"] and h,
                        GRACE + 5, "the gate to fail after the startup grace")
        assert hb.extra["device"] == "none" and not hb.extra["armed"]
        assert "init heartbeat missing" in hb.extra["gate"]["reasons"][0]
        text = r.wait_log("health gate FAILED, no device to stop petting")
        assert text.count('device = "none"') == 1
    finally:
        r.close()


def test_bad_config_exits_2(tmp_path: Any) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[watchdog]\ntimeout = 0\n")
    p = subprocess.run([sys.executable, "-m", "hachain.watchdog.tickler", "-c", str(cfg)],
                       check=False, capture_output=True, text=True, timeout=30)
    assert p.returncode == 2
    assert "bad.toml:2: watchdog.timeout" in p.stderr


def test_tickler_notifies_systemd_ready_and_watchdog(tmp_path):
    """Under systemd (NOTIFY_SOCKET set), a passing gate sends READY=1, then WATCHDOG=1."""
    import socket as so
    import subprocess
    import sys
    import time as t

    from hachain import channels as ch
    state, persist = tmp_path / "run", tmp_path / "persist"
    cfg = tmp_path / "chain.toml"
    cfg.write_text(f'[chain]\nstate_dir = "{state}"\npersist_dir = "{persist}"\n'
                   '[watchdog]\ndevice = "none"\npet_interval = 0.2\n')
    nsock = so.socket(so.AF_UNIX, so.SOCK_DGRAM)
    nsock.bind(str(tmp_path / "notify"))
    nsock.settimeout(10)
    writers = [ch.HeartbeatWriter(str(state), layer) for layer in ("init", "restarter")]
    for w in writers:
        w.beat({"lag": 0.0, "critical": {}, "restart_rate": 0.0})
    env = dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify"))
    p = subprocess.Popen([sys.executable, "-m", "hachain.watchdog.tickler", "-c", str(cfg),
                          "--no-realtime"], env=env, stderr=subprocess.DEVNULL)
    try:
        got = []
        deadline = t.monotonic() + 15
        while len(got) < 3 and t.monotonic() < deadline:
            for w in writers:
                w.beat({"lag": 0.0, "critical": {}, "restart_rate": 0.0})
            got.append(nsock.recv(256).decode())
        assert got[0].startswith("READY=1")
        assert got[1] == "WATCHDOG=1" and got[2] == "WATCHDOG=1"
    finally:
        p.terminate()
        p.wait(10)
        nsock.close()


@pytest.mark.slow
def test_a_device_error_in_a_tick_of_the_reader_thread_ends_the_tickler(
        tmp_path: Any) -> None:
    """With pet_interval = heartbeat_interval every pet goes out with a tick, and ticks
    run in the reader's thread (Tickler.on_round). A WatchdogError there (the simulated
    machine was reset under the tickler: ENODEV) is handed to the loop, which ends the
    tickler as one of its own did: exit 1, the device left armed (no magic close)."""
    rig = Rig(str(tmp_path))
    with open(rig.config) as f:
        text = f.read()
    with open(rig.config, "w") as f:
        f.write(text.replace(f"pet_interval = {PET}\n", "pet_interval = 0.2\n"))
    rig.server.start()
    try:
        with ForgedLayers(rig.state_dir, rig.sleeper.pid):
            p = rig.start_tickler()
            wait_until(lambda: rig.pets() >= 3, START_TIMEOUT, "petting")
            rig.server.reset_for_boot(0)
            assert p.wait(LIVENESS) == 1
            log = rig.log_text()
            assert "watchdog error: " in log and "exiting without disarming" in log, log
            assert "magic close" not in log, log
    finally:
        rig.close()
