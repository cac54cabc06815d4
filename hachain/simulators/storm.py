"""A crash storm on the whole chain: N services crash-looping, a CPU hog on every core.

Shared by `bench/storm_bench.py` (the figures) and `tests/test_storm.py` (the bounds).
`Storm` runs `hachain run` (init as subreaper, the restarter, the tickler) against the
software watchdog, served from a process of its own (`SimProcess`), with N services that
exit 1 at once
(`/bin/false`; a constant backoff and intensity action "ignore", so they loop for as
long as the storm lasts). What it observes, and how:

- pets: a sampler thread reads the tickler's heartbeat every SAMPLE_EVERY seconds. Each
  pet is stamped by the tickler itself (`last_pet_mono`), so the gaps are the tickler's
  own; when the sampler missed pets in between, the gap it records is an upper bound
  (the span less the shortest gaps the tickler can make);
- gate failures: the tickler logs one "health gate FAILED" line per streak, and the
  sampler counts the ticks whose heartbeat says the gate failed;
- resets: the software watchdog counts its expirations and the least time it had left;
- the restarter's heartbeat age and loop lag, as the sampler saw them.

Must not: signal anything it did not start. The hog processes and the chain are its own
children; `close()` ends them and removes the cgroup and directories it made.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from hachain import channels
from hachain.cgroupfs import find_cgroup2_mount, remove_cgroup_tree
from hachain.simulators.wdsim import SoftWatchdog, WatchdogServer

GATE_FAILED = b"health gate FAILED"
SAMPLE_EVERY = 0.05
# s for a SIGKILLed process to be reaped: the kernel runs its exit, no timer of ours;
# on a loaded host an uninterruptible wait can hold that back for seconds
KILLED_BOUND = 60.0


class RecordingWatchdog(SoftWatchdog):
    """The software watchdog, remembering the least time it had left at a pet."""

    def __init__(self, timeout: int) -> None:
        super().__init__(timeout)
        self.least_left: float | None = None

    def _ping(self, now: float) -> None:
        d = self.deadline()
        if d is not None:
            left = d - now
            self.least_left = left if self.least_left is None else min(self.least_left, left)
        super()._ping(now)


def _serve(socket_path: str, timeout: int, conn: Connection) -> None:
    """The body of `SimProcess`: SCHED_FIFO first (the server thread, made after, inherits
    it), then serve until told to stop or the parent is gone."""
    realtime()
    wd = RecordingWatchdog(timeout)
    server = WatchdogServer(socket_path, wd, on_expire=lambda: None)
    try:
        server.start()
        conn.send("ready")
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break
            if msg != "stats":
                break
            conn.send({"expirations": server.expirations, "least_left": wd.least_left})
    finally:
        server.stop()


class SimProcess:
    """The software watchdog served by a child process of its own.

    Served from a thread of the test's process, a pet waits for that process's
    interpreter lock: while the test's own thread holds it (a status call parsing 200
    services) and a loaded host has not scheduled that thread for half a second, the
    tickler's keepalive gets its answer half a second late, and the pet looks late
    although the tickler sent it on time. A process of its own, SCHED_FIFO, answers as a
    driver in the kernel would. Started with "spawn": no thread of this process is copied.
    """

    def __init__(self, socket_path: str, timeout: int) -> None:
        self.socket_path = socket_path
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(socket_path, timeout, child),
                                 name="wdsim", daemon=True)
        self._child_end = child

    def start(self, timeout: float = 60.0) -> None:
        self._proc.start()
        self._child_end.close()
        if not self._conn.poll(timeout):
            raise RuntimeError(f"the watchdog simulator did not serve {self.socket_path} "
                               f"within {timeout:g} s")
        if self._conn.recv() != "ready":
            raise RuntimeError("the watchdog simulator answered something else than ready")

    def stats(self, timeout: float = 10.0) -> dict[str, Any]:
        """{"expirations": n, "least_left": seconds or None}; RuntimeError if it does not
        answer within `timeout`."""
        self._conn.send("stats")
        if not self._conn.poll(timeout):
            raise RuntimeError(f"the watchdog simulator did not answer within {timeout:g} s")
        got: dict[str, Any] = self._conn.recv()
        return got

    def stop(self) -> None:
        """Stop it (its socket removed), SIGKILL if it does not go within 10 s."""
        if self._proc.pid is None:
            return
        try:
            self._conn.send("stop")
        except OSError:
            pass
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(KILLED_BOUND)
        self._conn.close()


@dataclass
class Samples:
    """What the sampler thread saw."""

    pets: int = 0
    gaps: list[float] = field(default_factory=list)  # seconds between pets (upper bounds)
    last_pet: float | None = None
    gate_fail_ticks: int = 0
    first_fail: float | None = None  # monotonic time the sampler first saw the gate fail
    fail_reasons: list[str] = field(default_factory=list)
    max_restarter_age: float = 0.0
    max_lag: float = 0.0
    rates: list[float] = field(default_factory=list)


def realtime(tid: int = 0, prio: int = 20) -> bool:
    """SCHED_FIFO for thread `tid` (0: the calling thread), so a hog cannot make the
    measurement late; False when refused (not root)."""
    try:
        os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(prio))
        return True
    except (OSError, AttributeError):
        return False


def start_hogs(n: int) -> list[subprocess.Popen[bytes]]:
    """n processes that spin on the CPU until killed (one per core makes every core busy)."""
    return [subprocess.Popen([sys.executable, "-S", "-c", "while True: pass"],
                             stdin=subprocess.DEVNULL) for _ in range(n)]


def stop_procs(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGKILL and reap processes this module started."""
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        try:
            p.wait(KILLED_BOUND)
        except subprocess.TimeoutExpired:
            pass


def storm_config(services: int, backoff: float, state: str, persist: str, cgroup: str | None,
                 device: str, timeout: int, pet_interval: float, chain_extra: str = "",
                 watchdog_extra: str = "") -> str:
    """The chain.toml of a storm: N services exiting 1 at once, looping forever."""
    body = "".join(
        f'[service.c{i}]\ncommand = ["/bin/false"]\n'
        f'backoff = {{ initial = {backoff:g}, factor = 1.0, max = {backoff:g} }}\n'
        'intensity = { max_restarts = 1000000, window = 1, action = "ignore" }\n'
        for i in range(services))
    return (f'[chain]\nstate_dir = "{state}"\npersist_dir = "{persist}"\n'
            f'cgroup_root = "{cgroup or "none"}"\n{chain_extra}'
            f'[watchdog]\ndevice = "{device}"\ntimeout = {timeout}\n'
            f'pet_interval = {pet_interval:g}\n{watchdog_extra}' + body)


class Storm:
    """One chain under a crash storm, in `tmp` (the runtime directory on /dev/shm when
    there is one, as /run is on tmpfs on a real system)."""

    def __init__(self, services: int, backoff: float, tmp: str, timeout: int = 10,
                 pet_interval: float = 1.0, heartbeat_interval: float = 2.0,
                 chain_extra: str = "", watchdog_extra: str = "") -> None:
        self.tmp = tmp
        self.state = tempfile.mkdtemp(prefix="hachain-storm-run-", dir="/dev/shm") \
            if os.path.isdir("/dev/shm") else os.path.join(tmp, "run")
        self.persist = os.path.join(tmp, "persist")
        self.pet_interval = pet_interval
        self.min_gap = pet_interval  # the shortest gap the tickler makes between pets
        self.server = SimProcess(os.path.join(tmp, "wd.sock"), timeout)
        mount = find_cgroup2_mount()
        self.cg = os.path.join(mount, f"hachain-storm-{os.getpid()}-{id(self)}") \
            if mount and os.access(mount, os.W_OK) else None
        self.config = os.path.join(tmp, "chain.toml")
        with open(self.config, "w") as f:
            f.write(storm_config(services, backoff, self.state, self.persist, self.cg,
                                 f"sim:{self.server.socket_path}", timeout, pet_interval,
                                 f"heartbeat_interval = {heartbeat_interval:g}\n" + chain_extra,
                                 watchdog_extra))
        self.log_path = os.path.join(tmp, "chain.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.samples = Samples()
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None

    @property
    def expirations(self) -> int:
        """Times the software watchdog expired (the machine would have reset)."""
        return int(self.server.stats()["expirations"])

    @property
    def least_left(self) -> float | None:
        """The least time the software watchdog had left at a pet, in seconds."""
        got = self.server.stats()["least_left"]
        return None if got is None else float(got)

    def start(self) -> None:
        """Start the watchdog server and the chain."""
        self.server.start()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "hachain.cli", "run", "-c",
                                          self.config], stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL)

    def heartbeat(self, layer: str) -> channels.Heartbeat | None:
        return channels.read_heartbeat(self.state, layer)

    def wait_petting(self, timeout: float) -> None:
        """Until the tickler has pet with the gate passing; RuntimeError if not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hb = self.heartbeat("tickler")
            if hb is not None and hb.extra.get("pets", 0) >= 1 and \
                    (hb.extra.get("gate") or {}).get("ok"):
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the chain exited ({self.proc.returncode}); see "
                                   f"{self.log_path}")
            time.sleep(0.05)
        raise RuntimeError(f"the tickler did not pet within {timeout:g} s; see {self.log_path}")

    def start_sampling(self) -> None:
        self._sampler = threading.Thread(target=self._sample, name="sampler", daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        realtime()
        s = self.samples
        last: tuple[int, int, float] | None = None  # (tickler pid, pets, last_pet_mono)
        while not self._stop.wait(SAMPLE_EVERY):
            now = time.monotonic()
            tk = self.heartbeat("tickler")
            if tk is not None:
                pets, at = tk.extra.get("pets") or 0, tk.extra.get("last_pet_mono")
                if isinstance(at, (int, float)):
                    if last is not None and last[0] == tk.pid and pets > last[1]:
                        k = pets - last[1]
                        s.gaps.append(at - last[2] - (k - 1) * self.min_gap)
                        s.pets += k
                    last = (tk.pid, pets, float(at))
                    s.last_pet = float(at)
                gate = tk.extra.get("gate") or {}
                if not gate.get("ok", True):
                    s.gate_fail_ticks += 1
                    if s.first_fail is None:
                        s.first_fail = now
                        s.fail_reasons = [str(r) for r in gate.get("reasons", [])]
            rs = self.heartbeat("restarter")
            if rs is not None:
                s.max_restarter_age = max(s.max_restarter_age, rs.age(now))
                lag = rs.extra.get("lag")
                if isinstance(lag, (int, float)):
                    s.max_lag = max(s.max_lag, float(lag))
                rate = rs.extra.get("restart_rate")
                if isinstance(rate, (int, float)):
                    s.rates.append(float(rate))

    def stop_sampling(self) -> None:
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join(5)

    def pet_gaps(self) -> list[float]:
        """Every gap between pets seen, and the one still open now: from the last pet the
        tickler's heartbeat names now (the sampler's last look may be older, when this
        process's interpreter lock kept it waiting)."""
        last = self.samples.last_pet
        tk = self.heartbeat("tickler")
        at = tk.extra.get("last_pet_mono") if tk is not None else None
        if isinstance(at, (int, float)) and (last is None or at > last):
            last = float(at)
        return self.samples.gaps + ([time.monotonic() - last] if last is not None else [])

    def gate_failures(self) -> int:
        """The tickler's "health gate FAILED" lines so far (one per failing streak)."""
        try:
            with open(self.log_path, "rb") as f:
                return f.read().count(GATE_FAILED)
        except OSError:
            return 0

    def status_cli(self, env: dict[str, str] | None = None,
                   command: str = "hachain") -> tuple[float, float, Any]:
        """One `hachain status --json` through the installed command (`hachain`: the
        native front when it is built; `hachain-py`: the Python CLI): (wall seconds, CPU
        seconds of the process, its stdout, or None when it failed: exit 2 or worse)."""
        script = os.path.join(os.path.dirname(sys.executable), command)
        argv = [script] if os.access(script, os.X_OK) else [sys.executable, "-m", "hachain.cli"]
        t0 = time.monotonic()
        p = subprocess.Popen(argv + ["status", "--json", "--state-dir", self.state,
                                     "--persist-dir", self.persist],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             stdin=subprocess.DEVNULL, env=env)
        assert p.stdout is not None
        with p.stdout:
            out = p.stdout.read()
        _, status, ru = os.wait4(p.pid, 0)  # reaped here, for its rusage
        dt = time.monotonic() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        # exit 1 is a degraded chain (services not ready: a storm is that), still an answer
        return dt, ru.ru_utime + ru.ru_stime, out if p.returncode in (0, 1) else None

    def close(self) -> None:
        """Stop everything this storm started and remove what it made."""
        self.stop_sampling()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                try:
                    self.proc.wait(KILLED_BOUND)
                except subprocess.TimeoutExpired:
                    pass  # a stuck kernel: still remove what this storm made
        self.server.stop()
        if self.cg:
            remove_cgroup_tree(self.cg)
        if self.state.startswith("/dev/shm/"):
            shutil.rmtree(self.state, ignore_errors=True)
