"""The restarter's machine checks: running the tries and repairs of `[check.NAME]`.

Owns: when each check is tried (on the heartbeat grid, every `interval`), running a try
without ever blocking the loop, giving up on one at its `timeout`, running the repair
commands the streak asks for, and the report the heartbeat carries to the tickler's
gate. Must not: judge a reading or a streak (hachain/checks.py does, purely), or decide
what a failed check does to the machine (the tickler's gate reads the report).

How a try runs, by kind:

- `load`, `memory`, `interface`: one read of /proc or /sys, which never waits on a disk
  or a device: in the loop (tens of microseconds);
- `file`, `pidfile`, `temperature`, `ping`: may wait (a hung NFS mount, a sensor on a
  slow bus, a host that does not answer): in a thread of their own, one per try, whose
  answer wakes the loop through a pipe. A try that has not answered by its timeout
  failed; a thread still stuck in the kernel is left there, and no new try of that check
  starts until it returns (each due try fails, saying so);
- `command` and every repair: a child process watched through its pidfd, killed (its
  process group) at its timeout; what a `command` check leaves running in its process
  group is killed when it exits (a repair's is left: it may start something on purpose).

A failed try carries an error number (checks.py: an errno value, or the `watchdog`
daemon's own), which the repair commands find in `$HACHAIN_CHECK_ERROR`. What a command
or repair prints goes to the logger, as `check:NAME` (`hachain logs check:NAME`), through
one pipe per check made at its first command (`output`, from the loop) and held while
the check exists: a command that prints nothing costs the logger nothing.

A failing check's standing outlives the restarter: the loop writes `standing()` to
`<state_dir>/checks.json` when it changes, and the next restarter of the same boot takes
it back (`restored`), so a restarter that is restarted, even over and over, does not
start a failure afresh (its retry_timeout, its repairs) and cannot keep a failed check
from the gate.

A repair outlives the restarter that started it too, and at most one of a check runs at a
time. Some facts this relies on:

- The standing names a running repair by pid, start time (field 22 of /proc/PID/stat)
  and deadline (monotonic; checks.json is taken back within its boot only). A pid alone
  could be another process by then; with its start time it is that one process.
- When the restarter dies, its repair is reparented to the nearest subreaper: init
  (hachain-init, PID 1 or PR_SET_CHILD_SUBREAPER), never the restarter's standby
  (restarter/standby.py forks the worker but is no subreaper). Init reaps it with the
  rest of its orphans, so the next restarter never has its exit status: the repair
  "ended, status unknown". A repair that ended while no restarter ran may still be a
  zombie waiting for init's reap: ended as well.
- The next restarter watches it through a pidfd (readable when the process exits,
  whoever its parent is), opened *before* the start time is compared: a pid reused
  between the read and the open then shows a different start time instead of lending
  its pidfd. At the saved deadline its process group is killed, as the live code kills
  a repair that timed out; the group is signalled only while the pidfd says the leader
  runs, as while the leader (or any member) lives its pid names that group and no
  other process. A repair that exits on its own keeps what it started, as a live one.
"""

from __future__ import annotations

import errno
import os
import selectors
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from hachain import channels, checks
from hachain.checks import Seen, Streak, Verdict
from hachain.configtypes import SERVICE_PATH, CheckConfig
from hachain.restarter import probes, spawn

_INLINE = frozenset({"load", "memory", "interface"})
_THREADED = frozenset({"file", "pidfile", "temperature", "ping"})


def _read(path: str) -> str:
    return channels.read_small(path).decode(errors="replace")


class _Try:
    """One try or repair in flight: a thread's or a command's."""

    def __init__(self, started: float, deadline: float, repair: bool = False,
                 probe: probes.Probe | None = None) -> None:
        self.started, self.deadline, self.repair, self.probe = started, deadline, repair, probe
        self.abandoned = False  # its thread passed the deadline (failed): still waited for
        self.abandoned_at = 0.0
        # a repair: its pid and start time, as the standing names it (none: not known);
        # `adopted`: started by the last restarter, so not our child (its probe has no
        # pid: nothing of it is reaped or killed by pid here)
        self.pid = 0
        self.start_time: int | None = None
        self.adopted = False

    def in_flight(self) -> checks.InFlight | None:
        """The repair as the next restarter must find it."""
        if not self.repair or not self.pid or self.start_time is None:
            return None
        return checks.InFlight(self.pid, self.start_time, self.deadline)


class MachineChecks:
    """Every `[check.NAME]` of the running configuration. `sel`: the loop's selector,
    where this registers its pipe and its commands' pidfds with the data
    ("machine", KEY); the loop hands those events to `on_event`."""

    def __init__(self, conf: Mapping[str, CheckConfig], grid: float,
                 sel: selectors.BaseSelector, log: Callable[[str], None],
                 output: Callable[[str], int] | None = None,
                 restored: Mapping[str, Any] | None = None) -> None:
        """`output(name)`: a new pipe's write end whose read end went to the logger as
        check `name`'s log (OSError when it cannot be made); None: output discarded.
        `restored`: the standing the last restarter of this boot left (`standing()`)."""
        self.grid, self.sel, self.log, self.output = grid, sel, log, output
        self.out: dict[str, int] = {}  # check -> the write end its commands print to
        self.restore: dict[str, Any] = dict(restored or {})  # taken at the first update
        self.keys: dict[str, str] = {}  # check -> key(its configuration)
        # a streak's standing changed since standing() last said; at first, whatever was
        # left is rewritten (an entry not taken back must not be taken by a later one)
        self.changed = bool(self.restore)
        self.conf: dict[str, CheckConfig] = {}
        self.streaks: dict[str, Streak] = {}
        self.due: dict[str, float] = {}
        self.running: dict[str, _Try] = {}
        self.seen: dict[str, Seen] = {}  # file, interface: what the last try saw
        self.held: set[str] = set()  # a rescue boot holds them out of the gate
        self.lock = threading.Lock()
        self.answers: list[tuple[str, _Try, Verdict, Seen | None]] = []  # under lock
        self.wake: tuple[int, int] | None = None  # the threads' pipe (made at first use)
        self.update(conf, time.monotonic())

    # --- configuration ------------------------------------------------------------------

    def period(self, c: CheckConfig) -> float:
        """The check's interval rounded up to the heartbeat grid (a try never adds a
        wake-up of its own)."""
        n = max(1, -(-round(c.interval * 1e6) // round(self.grid * 1e6)))
        return n * self.grid

    def update(self, conf: Mapping[str, CheckConfig], now: float) -> None:
        """A (re)loaded configuration: new checks start pending, changed ones afresh,
        removed ones are dropped (a command of theirs killed)."""
        for name in list(self.conf):
            if conf.get(name) != self.conf[name]:
                self._drop(name)
        for name, c in conf.items():
            if name not in self.conf:
                self.conf[name] = c
                self.keys[name] = self.key(c)
                self.streaks[name] = Streak()
                self.due[name] = channels.next_tick(now, self.grid)  # soon, on the grid
                if name in self.restore:
                    self._take_back(name, c, self.restore[name], now)
        self.restore = {}  # (only the first configuration takes the last standing back)

    @staticmethod
    def key(c: CheckConfig) -> str:
        """What names a check's configuration in its saved standing."""
        return channels.sha256_hex(repr(c).encode())[:16]

    def _take_back(self, name: str, c: CheckConfig, d: Any, now: float) -> None:
        got = checks.restored(d, self.keys[name], now, c.repair_timeout)
        if got is None:
            self.log(f"check {name}: its configuration changed: the last restarter's "
                     "standing is not taken back")
            return
        if isinstance(got, str):
            self.log(f"check {name}: the last restarter's standing is unusable ({got}): "
                     "starting afresh")
            return
        st, seen = got.streak, got.seen
        if seen is not None:
            self.seen[name] = seen
        self.changed = True
        what = ""
        if got.repair is not None:
            gone = self._adopt_repair(name, got.repair, now)
            if gone:
                st = checks.taken_as_ended(st, now)
                what = f"; repair {st.repairs} (pid {got.repair.pid}) {gone}: taken as ended"
            else:
                left = got.repair.deadline - now
                what = (f"; repair {st.repairs} (pid {got.repair.pid}) still runs: waited "
                        f"for, killed if it runs {max(0.0, left):.0f} s more")
        self.streaks[name] = st
        self.log(f"check {name}: {st.state} for {now - (st.began or now):.0f} s, "
                 f"{st.repairs} repair(s) run: carried over from the last restarter{what}")

    def _adopt_repair(self, name: str, rp: checks.InFlight, now: float) -> str:
        """Watch the repair the last restarter left running as check `name`'s own
        (""), or say why it is not there to watch."""
        try:
            fd = spawn.pidfd_open(rp.pid)  # first: see the module's facts
        except OSError as e:
            return f"cannot be watched ({e.strerror or e})"
        if fd is None:
            return "is gone"
        got = channels.proc_stat(rp.pid)
        if got is None or got[1] != rp.start_time or got[0] in ("Z", "X"):
            os.close(fd)
            return "is gone" if got is None or got[1] == rp.start_time else \
                "is gone (its pid is another process's now)"
        t = _Try(now, rp.deadline, repair=True,
                 probe=probes.Probe(name, "repair", "exec", fd=fd))
        t.pid, t.start_time, t.adopted = rp.pid, rp.start_time, True
        self.running[name] = t
        self.sel.register(fd, selectors.EVENT_READ, ("machine", name))
        return ""

    def standing(self) -> dict[str, Any] | None:
        """What the next restarter must take back, when a failure began or ended, a
        repair ran or ended, or a check failed for good since the last call (None:
        nothing did; a try that fails again changes only counts and the line, which
        are not worth a write)."""
        if not self.changed:
            return None
        self.changed = False
        return {n: d for n, st in self.streaks.items()
                if (d := checks.saved(st, self.seen.get(n), self.keys[n],
                                      t.in_flight() if (t := self.running.get(n)) else None))
                is not None}

    def _drop(self, name: str) -> None:
        t = self.running.pop(name, None)
        if t is not None:
            self._end_probe(t)
        for d in (self.conf, self.streaks, self.due, self.seen, self.keys):
            d.pop(name, None)
        self.changed = True
        fd = self.out.pop(name, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        for name in list(self.running):
            self._end_probe(self.running.pop(name))
        for fd in self.out.values():
            os.close(fd)
        self.out.clear()

    def _out(self, name: str) -> int | None:
        """Where check `name`'s commands print (None: nowhere; a pipe that cannot be made
        now is tried again at the next command)."""
        if name not in self.out and self.output is not None:
            try:
                self.out[name] = self.output(name)
            except OSError as e:
                self.log(f"check {name}: its output is discarded: no pipe to the logger: "
                         f"{e.strerror or e}")
        return self.out.get(name)

    # --- the schedule -------------------------------------------------------------------

    def next_event(self) -> float | None:
        """The monotonic time of the next try or deadline (None: nothing to do)."""
        times = [self.due[n] for n in self.conf
                 if n not in self.running or self.running[n].abandoned]
        times += [t.deadline for t in self.running.values() if not t.abandoned]
        return min(times) if times else None

    def tick(self, now: float) -> None:
        """Deadlines passed, then the tries that are due."""
        for name, t in list(self.running.items()):
            if t.abandoned or now < t.deadline:
                continue
            c = self.conf[name]
            if t.probe is not None:
                self.running.pop(name)
                self._end_probe(t)
            else:
                t.abandoned, t.abandoned_at = True, now  # its thread may come back later
            limit = c.repair_timeout if t.repair else c.timeout
            self._answer(name, t, Verdict(False, f"no answer within {limit:g} s",
                                          checks.ETOOLONG), now)
        for name, due in list(self.due.items()):
            if due > now:
                continue
            self.due[name] = channels.next_tick(now, self.period(self.conf[name]))
            busy = self.running.get(name)
            if busy is None:
                self._try(name, now)
            elif busy.abandoned and not busy.repair and busy.abandoned_at < now:
                # a thread still stuck in the kernel (not one given up on just now)
                self._observe(name, Verdict(False, "the last try has not returned for "
                                            f"{now - busy.started:.0f} s", checks.ETOOLONG),
                              now)

    # --- running tries ------------------------------------------------------------------

    def _try(self, name: str, now: float) -> None:
        c = self.conf[name]
        if c.kind in _INLINE:
            try:
                v = self._inline(name, c, now)
            except OSError as e:
                v = _failed_on(e, c.kind)
            self._observe(name, v, now)
        elif c.kind in _THREADED:
            t = _Try(now, now + c.timeout)
            self.running[name] = t
            self._thread(name, t, c, now)
        else:
            self._command(name, c.command, now, now + c.timeout, repair=False)

    def _inline(self, name: str, c: CheckConfig, now: float) -> Verdict:
        if c.kind == "load":
            return checks.load_verdict(_read("/proc/loadavg"), c)
        if c.kind == "memory":
            return checks.memory_verdict(_read("/proc/meminfo"), c)
        path = f"/sys/class/net/{c.interface}/statistics/rx_bytes"
        try:
            rx = int(_read(path).strip() or "0")
        except FileNotFoundError:
            return Verdict(False, f"{c.interface}: no such interface", errno.ENODEV)
        v, self.seen[name] = checks.interface_verdict(rx, self.seen.get(name), now, c)
        return v

    def _thread(self, name: str, t: _Try, c: CheckConfig, now: float) -> None:
        if self.wake is None:
            r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            self.wake = (r, w)
            self.sel.register(r, selectors.EVENT_READ, ("machine", None))
        seen = self.seen.get(name)

        def work() -> None:
            saw: Seen | None = None
            try:
                v, saw = _threaded(c, seen, now)
            except OSError as e:
                v = _failed_on(e, c.kind)
            except Exception as e:  # noqa: BLE001 - a bug must fail the try, not vanish
                v = Verdict(False, f"{type(e).__name__}: {e}", checks.EDONTKNOW)
            with self.lock:
                self.answers.append((name, t, v, saw))
            assert self.wake is not None
            try:
                os.write(self.wake[1], b"x")
            except OSError:
                pass
        try:
            threading.Thread(target=work, name=f"check-{name}", daemon=True).start()
        except RuntimeError as e:  # no thread can start (a pids limit): a failed try
            self.running.pop(name, None)
            self._observe(name, Verdict(False, f"cannot start its thread: {e}", errno.EAGAIN),
                          now)

    def _command(self, name: str, argv: tuple[str, ...], now: float, deadline: float,
                 repair: bool, env: Mapping[str, str] | None = None) -> None:
        try:
            pr = probes.start_exec(name, "repair" if repair else "check", argv,
                                   {"PATH": SERVICE_PATH, **(env or {})}, "/",
                                   out=self._out(name))
        except OSError as e:
            v = Verdict(False, f"cannot run {argv[0]}: {e.strerror or e}",
                        e.errno or checks.EDONTKNOW)
            if repair:
                self._repaired(name, v, now)
            else:
                self._observe(name, v, now)
            return
        t = _Try(now, deadline, repair=repair, probe=pr)
        self.running[name] = t
        if repair:  # the next restarter must find it (written as the streak's change)
            t.pid, t.start_time = pr.pid, channels.proc_start_time(pr.pid)
            self.changed = True
        if pr.fd >= 0:
            self.sel.register(pr.fd, selectors.EVENT_READ, ("machine", name))

    def _end_probe(self, t: _Try) -> None:
        pr = t.probe
        if pr is None:
            t.abandoned = True
            return
        if pr.fd >= 0:
            try:
                self.sel.unregister(pr.fd)
            except (KeyError, ValueError):
                pass
        if t.adopted and pr.fd >= 0 and not channels.readable(pr.fd):
            try:
                os.killpg(t.pid, signal.SIGKILL)  # its leader runs: the group is its own
            except OSError:
                pass
        if pr.pid:
            try:
                os.killpg(pr.pid, signal.SIGKILL)  # the command and what it started
            except OSError:
                pass
        pr.close()

    # --- answers ------------------------------------------------------------------------

    def on_event(self, key: str | None, now: float) -> None:
        """The pipe (a thread answered) or a command's pidfd (it ended)."""
        if key is None:
            assert self.wake is not None
            try:
                os.read(self.wake[0], 4096)
            except BlockingIOError:
                pass
            with self.lock:
                got, self.answers = self.answers, []
            for name, t, v, saw in got:
                if self.running.get(name) is t:
                    del self.running[name]
                    if saw is not None:
                        self.seen[name] = saw
                    # (one given up on at its deadline still says what it found, late)
                    self._answer(name, t, v, now)
            return
        cmd = self.running.get(key)
        if cmd is None or cmd.probe is None:
            return
        del self.running[key]
        if cmd.adopted:  # not our child: init reaps it; Linux >= 6.15 keeps its status
            st = spawn.reaped_status(cmd.probe.fd) if cmd.probe.fd >= 0 else None
            self._end_probe(cmd)
            v = Verdict(False, "status unknown: it outlived the restarter that started it",
                        checks.EDONTKNOW) if st is None else \
                Verdict(st.kind == "exited" and st.code == 0,
                        f"{st.describe()}; it outlived the restarter that started it",
                        0 if st.kind == "exited" and st.code == 0 else
                        st.code if st.kind == "exited" else checks.ECHKILL)
            self._answer(key, cmd, v, now)
            return
        group = cmd.probe.pid
        ok = probes.finish_exec(cmd.probe)
        detail, status = cmd.probe.detail, cmd.probe.status
        self._end_probe(cmd)
        if not cmd.repair:
            # what a test left running in its process group goes with it (a check that
            # forks would leave one more process at every try); a repair may start
            # something on purpose, and is left alone
            try:
                os.killpg(group, signal.SIGKILL)
            except OSError:
                pass
        # the error number: the test's exit status, as the daemon passes a test-binary's
        code = 0 if ok else (status.code if status is not None and status.kind == "exited"
                             else checks.ECHKILL if status is not None else checks.EDONTKNOW)
        self._answer(key, cmd, Verdict(ok, detail, code), now)

    def _answer(self, name: str, t: _Try, v: Verdict, now: float) -> None:
        if name not in self.conf:
            return
        if t.repair:
            self._repaired(name, v, now)
        else:
            self._observe(name, v, now)

    def _observe(self, name: str, v: Verdict, now: float) -> None:
        c = self.conf[name]
        was = self.streaks[name]
        st, act = checks.observe(was, v, now, c)
        self.streaks[name] = st
        if (st.state, st.since, st.repairs) != (was.state, was.since, was.repairs) and \
                {st.state, was.state} - {checks.PENDING, checks.OK}:
            self.changed = True  # (pending -> ok changes nothing worth a write)
        if act == checks.RECOVER:
            self.log(f"check {name}: passes again ({v.detail})")
        elif act == checks.FAIL:
            what = {"reboot": "the health gate fails: the watchdog resets the machine",
                    "log": "reported only (action = \"log\")"}[c.action]
            if name in self.held:
                what = "held by the rescue boot: out of the health gate"
            tried = f" after {st.repairs} repair(s)" if st.repairs else ""
            self.log(f"check {name}: FAILED{tried}, failing for {now - (st.began or now):.0f} s"
                     f" ({v.detail}); {what}")
        elif act == checks.REPAIR:
            argv = c.repair[st.repairs - 1]
            self.log(f"check {name}: failing for {now - (st.since or now):.0f} s ({v.detail});"
                     f" repair {st.repairs} of {len(c.repair)}: {' '.join(argv)}")
            self._command(name, argv, now, now + c.repair_timeout, repair=True,
                          env=repair_env(name, st, c))
        elif v.ok is False and st.failures == 1:
            self.log(f"check {name}: failing ({v.detail}); "
                     f"{c.retry_timeout:g} s before it counts")

    def _repaired(self, name: str, v: Verdict, now: float) -> None:
        self.streaks[name] = checks.repaired(self.streaks[name], v, now)
        self.changed = True
        self.log(f"check {name}: repair {self.streaks[name].repairs} ended ({v.detail})")

    # --- reports ------------------------------------------------------------------------

    def report(self, now: float) -> dict[str, Any]:
        """{name: {ok, state, ...}}: the heartbeat's `checks`, which the gate reads."""
        return {n: checks.report(self.streaks[n], c, n in self.held, now)
                for n, c in self.conf.items()}

    def status(self, now: float) -> dict[str, Any]:
        out = self.report(now)
        for n, st in self.streaks.items():
            out[n].update(tries=st.tries, failures=st.failures, error=st.code or None,
                          last_try=None if st.last_try is None
                          else round(now - st.last_try, 1),
                          next_try=round(max(0.0, self.due[n] - now), 1)
                          if n in self.due else None)
        return out


def repair_env(name: str, st: Streak, c: CheckConfig) -> dict[str, str]:
    """What a repair command finds in its environment, beside PATH: the check, its kind,
    the error number and line of the try that failed, which repair of how many."""
    return {channels.ENV_CHECK: name, channels.ENV_CHECK_KIND: c.kind,
            channels.ENV_CHECK_ERROR: str(st.code or checks.EDONTKNOW),
            channels.ENV_CHECK_DETAIL: st.detail, channels.ENV_CHECK_REPAIR: str(st.repairs),
            channels.ENV_CHECK_REPAIRS: str(len(c.repair))}


def _failed_on(e: OSError, kind: str) -> Verdict:
    """A try that a system call failed: its line and its errno."""
    return Verdict(False, f"{e.filename or kind}: {e.strerror or e}",
                   e.errno or checks.EDONTKNOW)


# --- the kinds that run in a thread -------------------------------------------------------

def _threaded(c: CheckConfig, seen: Seen | None, now: float) -> tuple[Verdict, Seen | None]:
    """One try of a kind that may wait; for `file`, also what it saw."""
    if c.kind == "temperature":
        return checks.temperature_verdict(_read(c.path), c), None
    if c.kind == "pidfile":
        pid = checks.pid_in(_read(c.path))
        if isinstance(pid, str):
            return Verdict(False, f"{c.path}: {pid}", errno.EINVAL), None
        if not channels.pid_alive(pid):
            return Verdict(False, f"{c.path}: pid {pid} is not running", errno.ESRCH), None
        return Verdict(True, f"pid {pid} runs"), None
    if c.kind == "file":
        st = os.stat(c.path)
        return checks.file_verdict(st.st_mtime_ns, time.time_ns(), seen, now, c)
    return ping(c.host, c.timeout), None


_ECHO = {socket.AF_INET: (8, 0), socket.AF_INET6: (128, 129)}


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def ping(host: str, timeout: float) -> Verdict:
    """One ICMP echo to `host` (an address), answered within `timeout`. An unprivileged
    ping socket where the host allows it (net.ipv4.ping_group_range), else a raw one
    (CAP_NET_RAW)."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    proto = socket.IPPROTO_ICMPV6 if fam == socket.AF_INET6 else socket.IPPROTO_ICMP
    try:
        s = socket.socket(fam, socket.SOCK_DGRAM, proto)
        raw = False
    except PermissionError:
        try:
            s = socket.socket(fam, socket.SOCK_RAW, proto)
        except PermissionError:
            return Verdict(False, f"{host}: no ping socket here (a raw one needs "
                           "CAP_NET_RAW; an unprivileged one, net.ipv4.ping_group_range)",
                           errno.EPERM)
        raw = True
    try:
        return _echo(s, raw, fam, host, timeout)
    except OSError as e:  # a send refused at once: no route, the network unreachable
        return Verdict(False, f"{host}: {e.strerror or e}", e.errno or checks.EDONTKNOW)
    finally:
        s.close()


def _echo(s: socket.socket, raw: bool, fam: socket.AddressFamily, host: str,
          timeout: float) -> Verdict:
    """One echo request on `s` and its reply (a raw socket sees every ICMP packet of
    the host: matched by type, identifier, sequence and payload)."""
    req, rep = _ECHO[fam]
    ident, seq = os.getpid() & 0xFFFF, int(time.monotonic() * 1000) & 0xFFFF
    payload = b"hachain check " + struct.pack("!d", time.monotonic())
    body = struct.pack("!BBHHH", req, 0, 0, ident, seq) + payload
    if fam == socket.AF_INET:  # (the kernel sums ICMPv6 itself)
        body = body[:2] + struct.pack("!H", _checksum(body)) + body[4:]
    start = time.monotonic()
    deadline = start + timeout
    s.settimeout(timeout)
    s.sendto(body, (host, 0))
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return Verdict(False, f"{host}: no echo reply within {timeout:g} s",
                           errno.ENETUNREACH)
        s.settimeout(left)
        try:
            data, _ = s.recvfrom(2048)
        except TimeoutError:
            return Verdict(False, f"{host}: no echo reply within {timeout:g} s",
                           errno.ENETUNREACH)
        if raw and fam == socket.AF_INET:
            data = data[(data[0] & 0x0F) * 4:]  # past the IP header
        if len(data) < 8:
            continue
        typ, _, _, rid, rseq = struct.unpack("!BBHHH", data[:8])
        if typ == rep and rseq == seq and (rid == ident or not raw) \
                and data[8:] == payload:
            return Verdict(True, f"{host}: echo reply in "
                           f"{(time.monotonic() - start) * 1000:.1f} ms")
