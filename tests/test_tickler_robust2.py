"""The tickler and its gate, second round of the reliability review: what keeps a chain
that cannot supervise itself from being reset.

- A tickler that fails after it armed the device (here it cannot start a thread: a pids
  cgroup stands for systemd's TasksMax or a fork bomb elsewhere in the box) used to exit
  1; init restarted it, and every restart opened the device again and petted it, so the
  machine was never reset. It now stays up without petting (the watchdog fires), and a
  SIGTERM still disarms it.
- With no running snapshot (init as PID 1), the tickler's configuration parser wrote the
  last-known-good copy into persist_dir before the device was opened: a hung persist_dir
  kept the device unopened for good.
- The gate returned early while init said `stopping`, before the cluster fence: a
  fenced node that was shutting down kept petting while another node could take its
  singletons over (the pure gate: tests/test_health_robust2.py).

Real processes and the watchdog simulator.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from hachain import channels
from hachain.simulators import wdsim
from hachain.simulators.wdsim import SoftWatchdog
from hachain.watchdog.device import WDIOC_SETPRETIMEOUT, WDIOC_SETTIMEOUT
from tests.conftest import children, heartbeat_window, wait_until
from tests.test_tickler import PET, TIMEOUT, ForgedLayers, Rig
from tests.test_tickler_robust import hung_mount, init_with_tickler, tickler_that_pets

PY = sys.executable
pytestmark = pytest.mark.timeout(120)
PIDS_V1 = "/sys/fs/cgroup/pids"
CGROUP_V2 = "/sys/fs/cgroup"
# Tasks the tickler has at most before it opens the device: the main thread, the
# configuration parser (a child), the log thread and the boot record's thread. After the
# open it starts the heartbeat reader, a thread that reads its old heartbeat (held on a
# FIFO by the test), and the record writer: the fifth task, refused.
TASKS_BEFORE_OPEN = 4


def pids_root() -> str | None:
    """Where a pids cgroup can be made: the v1 hierarchy, or v2 with the controller."""
    if os.path.isdir(PIDS_V1) and os.access(PIDS_V1, os.W_OK):
        return PIDS_V1
    try:
        with open(os.path.join(CGROUP_V2, "cgroup.subtree_control")) as f:
            if "pids" in f.read().split():
                return CGROUP_V2
    except OSError:
        pass
    return None


@contextlib.contextmanager
def pids_cgroup(name: str, limit: int) -> Iterator[str]:
    """A cgroup whose pids.max is `limit`; removed once its processes are gone (the
    caller kills them first)."""
    root = pids_root()
    if os.geteuid() != 0 or root is None:
        pytest.skip("a pids cgroup needs root and a pids controller (v1, or v2 enabled "
                    "in the root's subtree_control)")
    path = os.path.join(root, f"hachain-test-{name}-{os.getpid()}")
    os.mkdir(path)
    try:
        with open(os.path.join(path, "pids.max"), "w") as f:
            f.write(str(limit))
        yield path
    finally:
        def removed() -> bool:
            try:
                os.rmdir(path)
            except OSError:
                return False
            return True
        wait_until(removed, 10, f"{path} to be empty and removed")


def in_cgroup(cg: str) -> tuple[str, ...]:
    """A command prefix that moves itself into `cg`, then execs the rest."""
    return ("sh", "-c", f'echo $$ > {cg}/cgroup.procs && exec "$@"', "sh")


# -- 1. a failure after the open -----------------------------------------------------


@pytest.mark.slow
def test_a_tickler_that_fails_after_the_open_lets_the_watchdog_fire(tmp_path: Any) -> None:
    """Under real init, a tickler that cannot start its threads once the device is armed
    (RuntimeError: can't start new thread). It used to exit 1, and init's restarts of it
    (each opens the device again: SETTIMEOUT pets it) kept the machine from ever being
    reset. It now logs one line and stays up without petting: the watchdog fires one
    timeout after the open, and init has nothing to restart."""
    timeout, delay = 10, 1.0
    state_dir, persist_dir = tmp_path / "run", tmp_path / "persist"
    (state_dir / channels.HEARTBEAT_DIR).mkdir(parents=True)
    os.mkfifo(channels.heartbeat_path(str(state_dir), "tickler"))
    fired_at: list[float] = []
    fired = threading.Event()

    def on_fire() -> None:
        fired_at.append(time.monotonic())
        fired.set()
    wd = SoftWatchdog(timeout=60)
    with pids_cgroup("tickler", TASKS_BEFORE_OPEN) as cg, \
            init_with_tickler(tmp_path, state_dir, persist_dir, wd, on_fire, timeout, 60,
                              ["--restart-delay", str(delay)], in_cgroup(cg)) as (init, err):
        wait_until(lambda: wd.armed, 30, "the tickler to arm the device")
        armed_at = time.monotonic()
        # the last pet is the SETTIMEOUT right after the open; 2 s for the simulator's
        # thread to be scheduled
        assert fired.wait(timeout + 2), (
            "the watchdog never fired:\n" + err.read_text(errors="replace")[-3000:])
        text = err.read_text(errors="replace")
        assert text.count("started tickler") == 1, text[-3000:]
        assert "internal error after the watchdog was armed: RuntimeError: can't start new " \
            "thread" in text, text[-3000:]
        assert fired_at[0] - armed_at <= timeout + 2
        print(f"armed to fired: {fired_at[0] - armed_at:.2f} s (timeout {timeout} s)")


@pytest.mark.slow
def test_a_tickler_that_failed_after_the_open_still_disarms_on_sigterm(
        tmp_path: Any) -> None:
    """The failed tickler stays up without petting, and an orderly stop (SIGTERM) still
    makes the magic close: a chain stopped on purpose is not reset."""
    rig = Rig(str(tmp_path))
    with open(rig.config) as f:
        text = f.read()
    with open(rig.config, "w") as f:  # time for the SIGTERM before the watchdog fires
        f.write(text.replace(f"\ntimeout = {TIMEOUT}\n", "\ntimeout = 60\n"))
    os.makedirs(os.path.join(rig.state_dir, channels.HEARTBEAT_DIR))
    os.mkfifo(channels.heartbeat_path(rig.state_dir, "tickler"))
    rig.server.start()
    try:
        with pids_cgroup("tickler-term", TASKS_BEFORE_OPEN) as cg:
            try:
                with ForgedLayers(rig.state_dir, rig.sleeper.pid), open(rig.log, "ab") as logf:
                    p = subprocess.Popen([*in_cgroup(cg), PY, "-m", "hachain.watchdog.tickler",
                                          "-c", rig.config], stdout=logf, stderr=logf)
                    rig.procs.append(p)
                    rig.wait_log("not petting any more", 30)
                    assert p.poll() is None, rig.log_text()
                    assert rig.wd.armed
                    p.send_signal(signal.SIGTERM)
                    assert p.wait(10) == 1, rig.log_text()
                    assert "magic close: watchdog disarmed" in rig.log_text()
                    wait_until(lambda: not rig.wd.armed, 5, "the simulator to see the magic close")
                    assert rig.server.expirations == 0
            finally:
                rig.close()  # (idempotent) before the cgroup is removed
    finally:
        rig.close()


# -- 2. a hung persist_dir with no running snapshot ----------------------------------------


@pytest.mark.slow
def test_a_hung_persist_dir_without_a_snapshot_does_not_keep_the_device_unopened(
        tmp_path: Any) -> None:
    """No running snapshot (init as PID 1, not `hachain run`): the tickler's parser
    accepts the file itself. It wrote the last-known-good copy into persist_dir before it
    handed the configuration back, so with persist_dir on a mount that never answers the
    device was never opened. Now the copy is written after the hand-over: the device is
    armed after the boot record's deadline and petted."""
    rig = Rig(str(tmp_path))
    mnt = tmp_path / "hung"
    try:
        with hung_mount(mnt):
            try:
                with open(rig.config) as f:
                    text = f.read()
                with open(rig.config, "w") as f:
                    f.write(text.replace(rig.persist_dir, str(mnt / "persist")))
                rig.server.start()
                with ForgedLayers(rig.state_dir, rig.sleeper.pid):
                    p = rig.start_tickler()
                    # the boot record's deadline (5 s), then the open
                    wait_until(lambda: rig.pets() >= 2 or p.poll() is not None,
                               5 + TIMEOUT + 10, "the tickler to arm the device and pet it")
                    assert p.poll() is None, rig.log_text()
                    heartbeat_window(rig.tickler_hb, 2 * TIMEOUT, "the tickler")
                    assert rig.server.expirations == 0, rig.log_text()
            finally:
                for q in rig.procs:  # the parser, waiting on persist_dir: SIGKILL ends it
                    for pid in children(q.pid):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                rig.close()  # (idempotent) before the mount goes
    finally:
        rig.close()
    rig.wait_log("cannot write the boot record in")


@pytest.mark.slow
def test_without_a_snapshot_the_last_known_good_copy_is_still_written(
        tmp_path: Any) -> None:
    """The copy moved after the hand-over is still written, for the other layers."""
    rig = Rig(str(tmp_path))
    rig.server.start()
    try:
        with ForgedLayers(rig.state_dir, rig.sleeper.pid):
            rig.start_tickler()
            wait_until(lambda: rig.pets() >= 1, TIMEOUT + 10, "the tickler to pet")
            lkg = wait_until(lambda: channels.read_json(
                os.path.join(rig.persist_dir, channels.LAST_GOOD_CONFIG)), 10, "last_good.json")
            assert lkg["source"] == os.path.abspath(rig.config), lkg
            wait_until(lambda: not children(rig.procs[0].pid), 10, "the parser to be reaped")
    finally:
        rig.close()


# -- 3. the fence while init is stopping, on the simulator ---------------------------------


class StoppingNode(ForgedLayers):
    """A cluster node whose init says `stopping`, whose restarter still lists `db` up,
    and whose cluster layer's fence time the test sets (far ahead: the lease is renewed)."""

    def __init__(self, state_dir: str, pid: int) -> None:
        super().__init__(state_dir, pid)
        self.pids["cluster"] = pid
        self.layers["cluster"] = True
        self.restarter_extra["singletons_up"] = ["db"]
        self.fence_at = time.monotonic() + 3600.0

    def beat_once(self) -> None:
        self.seq += 1
        for layer in list(self.layers):
            now = time.monotonic()
            extra = {"init": {"stopping": True}, "restarter": self.restarter_extra,
                     "cluster": {"fence_at": self.fence_at,
                                 "start_until": self.fence_at - 1.0}}[layer]
            channels.write_heartbeat(self.state_dir, channels.Heartbeat(
                layer, self.pids[layer], now, now, self.seq, 0, extra))


@pytest.mark.slow
def test_a_stopping_node_past_its_fence_stops_petting(tmp_path: Any) -> None:
    """The real tickler of a cluster node that is stopping (init says so) with a
    singleton still up: it pets while the lease is renewed, and stops once the fence time
    has passed, so the watchdog resets the node before another may start the singleton.
    The gate used to pass on `stopping` before it looked at the fence."""
    rig = Rig(str(tmp_path))
    with open(rig.config, "a") as f:
        f.write('[cluster]\nendpoints = ["127.0.0.1:1"]\nnode = "n0"\nlease_ttl = 4\n'
                "margin = 0.25\n")
    rig.server.start()
    try:
        with StoppingNode(rig.state_dir, rig.sleeper.pid) as node:
            rig.start_tickler()
            wait_until(lambda: rig.pets() >= 2, TIMEOUT + 10, "the stopping node to pet")
            node.fence_at = time.monotonic()  # the lease was not renewed: fenced now
            # the last pet at most a pet interval before the gate fails, then a timeout
            assert rig.expired.wait(TIMEOUT + PET + 2), rig.log_text()
        gate = wait_until(lambda: channels.read_json(
            os.path.join(rig.persist_dir, channels.GATE_RECORD)), 5, "gate.json")
        assert any("singletons still up: db" in r for r in gate["reasons"]), gate
    finally:
        rig.close()


# -- a driver that refuses the pretimeout --------------------------------------------------


@pytest.mark.slow
def test_a_driver_that_refuses_the_pretimeout_is_petted_without_one(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """`pretimeout = 1` on a driver without a pretimeout (iTCO_wdt, for one: the watchdog
    core answers EOPNOTSUPP), simulated by the simulator's SETPRETIMEOUT refusing. The
    tickler exited 1 after the open; init's restarts of it petted the device for ever (the
    close without 'V', SETTIMEOUT) and no gate ran. It now warns and pets as usual."""
    def refuse(_wd: SoftWatchdog, _value: int, _now: float) -> None:
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
    monkeypatch.setitem(wdsim._IOCTLS, WDIOC_SETPRETIMEOUT, refuse)
    rig = Rig(str(tmp_path))
    with open(rig.config, "a") as f:  # [watchdog] is the last table
        f.write("pretimeout = 1\n")
    rig.server.start()
    try:
        with ForgedLayers(rig.state_dir, rig.sleeper.pid):
            tickler_that_pets(rig)
            heartbeat_window(rig.tickler_hb, 2 * TIMEOUT, "the tickler")
            assert rig.server.expirations == 0, rig.log_text()
        rig.wait_log("cannot set pretimeout 1 s")
    finally:
        rig.close()


@pytest.mark.slow
def test_a_driver_that_refuses_the_timeout_is_held_unpetted(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The driver refuses the configured timeout (out of its range: iTCO_wdt's first
    versions take at most 39 s), simulated by SETTIMEOUT refusing. The tickler used to
    close the device (which pets it) and exit 1, and init's restarts did the same every
    second: the machine was never reset and no gate ran. Now it holds the device without
    petting, and the simulator fires within the driver's own timeout."""
    def refuse(_wd: SoftWatchdog, _value: int, _now: float) -> None:
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
    monkeypatch.setitem(wdsim._IOCTLS, WDIOC_SETTIMEOUT, refuse)
    driver_timeout = 8
    state_dir, persist_dir = tmp_path / "run", tmp_path / "persist"
    fired_at: list[float] = []
    wd = SoftWatchdog(timeout=driver_timeout)
    with init_with_tickler(tmp_path, state_dir, persist_dir, wd,
                           lambda: fired_at.append(time.monotonic()), 5, 60,
                           ["--restart-delay", "1"]) as (init, err):
        wait_until(lambda: wd.armed, 30, "the tickler to open the device")
        armed_at = time.monotonic()
        wait_until(lambda: fired_at, driver_timeout + 2, "the simulated watchdog to fire")
        text = err.read_text(errors="replace")
        assert text.count("started tickler") == 1, text[-3000:]
        assert "the driver refused the timeout after the watchdog was armed" in text, \
            text[-3000:]
        print(f"opened to fired: {fired_at[0] - armed_at:.2f} s (driver timeout "
              f"{driver_timeout} s)")
