"""`hachain metrics`: the chain's state in Prometheus text format, in its own process.

Owns: one small HTTP server (TCP, or a Unix socket) whose every scrape calls
`hachain.status.gather_status` — the same heartbeats, control-socket status and records
`hachain status` shows — and turns the answer into metric families. Must not: write
anything of its own (gather_status keeps the last service table the restarter gave in
`<state_dir>/status-last.json`), or be needed by the chain: it is off unless started,
and the restarter knows nothing about it.

A scrape while the restarter does not answer (dead, hung, busy) still answers: the
layers, the watchdog, `hachain_restarter_up 0`, and the *last known* service series with
`hachain_service_info_age_seconds` saying how old they are. Series that vanish during an
outage cannot fire an alert; series that stay, with their age beside them, can
(`hachain_service_info_age_seconds > 30`). The last table comes from gather_status's
copy; when it has none (a state directory this process cannot write), from the last
answer this process itself saw.

Needs prometheus_client (the `metrics` extra: `pip install hachain[metrics]`).

Metrics (every name starts with `hachain_`):

  build_info{version,python}     1, labelled with hachain's and Python's versions
  service_state{service,state}   1 for the state the service is in, 0 for the others
  service_up_wanted{service}     1 when the administrator wants it up
  service_ready{service}         1 when ready (a oneshot: done)
  service_restarts_total{service}  restarts since the restarter started it
  service_uptime_seconds{service}  how long the current process has run (0 when none)
  service_critical{service}      1 for a critical service (its health gates the watchdog)
  service_info_age_seconds       age of the service series: 0 when the restarter answered
                                 this scrape, else since its last answer (the series are
                                 then its last values)
  check_state{check,state}       1 for the machine check's state ([check.NAME]: pending,
                                 ok, failing, repairing, failed, held), 0 for the others
  check_gates{check}             1 when the check would fail the gate (action = "reboot")
  check_failing_seconds{check}   how long it has failed (0 while it passes)
  check_repairs{check}           repair commands run in its current failure
  restarter_up                   1 when the control socket answered this scrape
  layer_up{layer}                1 when the layer's heartbeat exists and its pid lives
  layer_state{layer,state}       1 for the layer's state (alive, hung, stale, restarting,
                                 dead, absent: as `hachain status`), 0 for the others
  layer_stopped{layer}           1 when its process is stopped (SIGSTOP: hung)
  layer_heartbeat_age_seconds{layer}
  layer_uptime_seconds{layer}
  layer_restarts_total{layer}    how often init restarted the layer
  gate_ok                        1 when the tickler's last health-gate check passed
  watchdog_armed / watchdog_petting
  watchdog_pets_total            keepalives sent by the current tickler process
  watchdog_timeout_seconds / watchdog_timeleft_seconds (absent when the driver cannot tell)
  watchdog_pet_late_worst_seconds  the latest a pet came against its schedule, since boot
  watchdog_pet_late_warnings     pets since boot later than half the margin
                                 (timeout - pet_interval): each one also a log line
  last_boot_watchdog_reset       1 when the previous boot ended in a watchdog reset
  last_boot_info{cause}          1, labelled with the recorded cause
  boots_total                    boots this machine's boot record has counted
  boot_ends{cause}               of the boots the record keeps (the last 32), those that
                                 ended, by the recorded cause (unknown: nothing said why,
                                 e.g. a power cut or a hang; gate-failure;
                                 reboot-requested; tickler-failed; shutdown)
  boot_watchdog_resets           of the boots the record keeps, those the watchdog device
                                 reset (the next boot read WDIOF_CARDRESET)
  boot_unclean_in_a_row          unclean boots in a row before this one (the boot-loop count)
"""

from __future__ import annotations

import argparse
import errno
import http.server
import os
import platform
import signal
import socket
import socketserver
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from hachain import __version__, bootrecord, cmdline
from hachain.status import LAYER_STATES

try:  # the optional `metrics` extra; without it the command says what to install
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.exposition import choose_encoder
    from prometheus_client.registry import CollectorRegistry
except ImportError:
    HAVE_PROMETHEUS = False
else:
    HAVE_PROMETHEUS = True

PROG = "hachain metrics"
SERVICE_STATES = ("stopped", "waiting", "starting", "ready", "stopping", "backoff",
                  "maintenance", "failed", "done", "standby", "skipped")
BOOT_CAUSES = (bootrecord.UNKNOWN, bootrecord.GATE_FAILURE, bootrecord.REBOOT_REQUESTED,
               bootrecord.TICKLER_FAILED, bootrecord.SHUTDOWN)

Gather = Callable[[str, str], dict[str, Any]]


CHECK_STATES = ("pending", "ok", "failing", "repairing", "failed", "held")


def _one_hot(fam: GaugeMetricFamily, name: str, cur: str, known: tuple[str, ...]) -> None:
    """`fam{NAME, state}`: 1 for the state `cur`, 0 for every other known one (an unknown
    `cur` gets its own series, so no state is ever left out)."""
    for value in known if cur in known else (*known, cur):
        fam.add_metric([name, value], 1.0 if value == cur else 0.0)


def _num(v: Any) -> float | None:
    """`v` as a float when it is a real number (not a bool, not None), else None."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def _default_gather(state_dir: str, persist_dir: str) -> dict[str, Any]:
    """`hachain.status.gather_status`, looked up on each call (what persist_dir keeps
    with a deadline: a scrape answers when that disk does not)."""
    from hachain.status import PERSIST_TIMEOUT, gather_status
    return gather_status(state_dir, persist_dir, persist_timeout=PERSIST_TIMEOUT)


class ChainCollector:
    """Collects the chain's metrics afresh on every scrape."""

    def __init__(self, state_dir: str, persist_dir: str, gather: Gather | None = None) -> None:
        self.state_dir = state_dir
        self.persist_dir = persist_dir
        self.gather = gather or _default_gather
        self._last: tuple[float, dict[str, Any]] | None = None  # (monotonic, services)
        self._lock = threading.Lock()  # scrapes run in threads of their own

    def describe(self) -> list[Metric]:
        """Nothing up front: the registry must not call `collect` at registration."""
        return []

    def collect(self) -> Iterator[Metric]:
        """One `gather_status` call, turned into metric families."""
        st = self.gather(self.state_dir, self.persist_dir)
        chain = st.get("chain", {})
        build = GaugeMetricFamily("hachain_build_info", "1, labelled with the versions "
                                  "of hachain and Python", labels=["version", "python"])
        build.add_metric([__version__, platform.python_version()], 1.0)
        yield build
        services, age = self._service_table(st)
        yield from self._services(services)
        if services:
            fam = GaugeMetricFamily("hachain_service_info_age_seconds", "age of the "
                                    "service series: 0 when the restarter answered this "
                                    "scrape, else since its last answer")
            fam.add_metric([], age)
            yield fam
        if isinstance(st.get("checks"), dict) and st["checks"]:
            yield from self._checks(st["checks"])
        up = GaugeMetricFamily("hachain_restarter_up", "1 when the restarter's control "
                               "socket answered this scrape")
        up.add_metric([], 0.0 if chain.get("restarter_error") else 1.0)
        yield up
        yield from self._layers(chain.get("layers") or {})
        yield from self._watchdog(chain.get("watchdog") or {})
        yield from self._last_boot(chain.get("last_boot"))
        layers = chain.get("layers") or {}
        yield from self._boot_record(any(isinstance(d, dict) and d.get("alive")
                                         for d in layers.values()))

    def _service_table(self, st: dict[str, Any]) -> tuple[dict[str, Any], float]:
        """(services, age in seconds): this scrape's answer (age 0), else the last known
        table (gather_status's copy, else the last answer this process saw)."""
        chain = st.get("chain", {})
        now = time.monotonic()
        services = st.get("services")
        with self._lock:
            if not chain.get("restarter_error") and isinstance(services, dict):
                self._last = (now, services)
                return services, 0.0
            last = chain.get("last_known")
            if isinstance(last, dict) and isinstance(last.get("services"), dict):
                return last["services"], _num(last.get("age")) or 0.0
            if self._last is not None:
                return self._last[1], round(now - self._last[0], 3)
        return {}, 0.0

    def _services(self, services: dict[str, Any]) -> Iterator[Metric]:
        """Per-service families."""
        state = GaugeMetricFamily("hachain_service_state", "1 for the service's current "
                                  "state, 0 for the others", labels=["service", "state"])
        wanted = GaugeMetricFamily("hachain_service_up_wanted", "1 when the service is "
                                   "wanted up", labels=["service"])
        ready = GaugeMetricFamily("hachain_service_ready", "1 when the service is ready "
                                  "(a oneshot: done)", labels=["service"])
        restarts = CounterMetricFamily("hachain_service_restarts", "restarts of the "
                                       "service", labels=["service"])
        uptime = GaugeMetricFamily("hachain_service_uptime_seconds", "how long the "
                                   "service's current process has run", labels=["service"])
        critical = GaugeMetricFamily("hachain_service_critical", "1 when the service's "
                                     "health gates the watchdog", labels=["service"])
        for name, s in sorted(services.items()):
            if not isinstance(s, dict):
                continue
            cur = str(s.get("state", ""))
            _one_hot(state, name, cur, SERVICE_STATES)
            wanted.add_metric([name], 1.0 if s.get("want") == "up" else 0.0)
            ready.add_metric([name], 1.0 if cur in ("ready", "done") else 0.0)
            restarts.add_metric([name], _num(s.get("restarts")) or 0.0)
            uptime.add_metric([name], _num(s.get("uptime")) or 0.0)
            critical.add_metric([name], 1.0 if s.get("critical") else 0.0)
        yield from (state, wanted, ready, restarts, uptime, critical)

    def _checks(self, checks: dict[str, Any]) -> Iterator[Metric]:
        """Per machine check ([check.NAME], docs/checks.md)."""
        state = GaugeMetricFamily("hachain_check_state", "1 for the machine check's "
                                  "current state, 0 for the others", labels=["check", "state"])
        gates = GaugeMetricFamily("hachain_check_gates", "1 when the check fails the "
                                  "health gate once it has failed", labels=["check"])
        failing = GaugeMetricFamily("hachain_check_failing_seconds", "how long the check "
                                    "has failed (0 while it passes)", labels=["check"])
        repairs = GaugeMetricFamily("hachain_check_repairs", "repair commands run in the "
                                    "check's current failure", labels=["check"])
        for name, c in sorted(checks.items()):
            if not isinstance(c, dict):
                continue
            cur = str(c.get("state", ""))
            _one_hot(state, name, cur, CHECK_STATES)
            gates.add_metric([name], 1.0 if c.get("action") == "reboot" else 0.0)
            failing.add_metric([name], _num(c.get("failing_for")) or 0.0)
            repairs.add_metric([name], _num(c.get("repairs")) or 0.0)
        yield from (state, gates, failing, repairs)

    def _layers(self, layers: dict[str, Any]) -> Iterator[Metric]:
        """Per-layer families from the heartbeats."""
        up = GaugeMetricFamily("hachain_layer_up", "1 when the layer is alive: its process "
                               "runs and its heartbeat is fresh", labels=["layer"])
        lstate = GaugeMetricFamily("hachain_layer_state", "1 for the layer's state as "
                                   "hachain status derives it, 0 for the others",
                                   labels=["layer", "state"])
        stopped = GaugeMetricFamily("hachain_layer_stopped", "1 when the layer's process "
                                    "is stopped (SIGSTOP)", labels=["layer"])
        age = GaugeMetricFamily("hachain_layer_heartbeat_age_seconds", "age of the layer's "
                                "last heartbeat", labels=["layer"])
        uptime = GaugeMetricFamily("hachain_layer_uptime_seconds", "how long the layer's "
                                   "process has run", labels=["layer"])
        restarts = CounterMetricFamily("hachain_layer_restarts", "how often init restarted "
                                       "the layer", labels=["layer"])
        for layer, d in sorted(layers.items()):
            if not isinstance(d, dict):
                continue
            missing = d.get("state") == "missing" or d.get("pid") is None  # no heartbeat
            up.add_metric([layer], 0.0 if missing or not d.get("alive") else 1.0)
            cur = d.get("state")
            if isinstance(cur, str):
                _one_hot(lstate, layer, cur, LAYER_STATES)
            if missing:
                continue
            stopped.add_metric([layer], 1.0 if d.get("stopped") else 0.0)
            for fam, key in ((age, "heartbeat_age"), (uptime, "uptime"), (restarts, "restarts")):
                v = _num(d.get(key))
                if v is not None:
                    fam.add_metric([layer], v)
        yield from (up, lstate, stopped, age, uptime, restarts)

    def _watchdog(self, wd: dict[str, Any]) -> Iterator[Metric]:
        """The tickler's view of the gate and the device (absent without a tickler)."""
        if not wd.get("device"):
            return
        raw_gate = wd.get("gate")
        gate: dict[str, Any] = raw_gate if isinstance(raw_gate, dict) else {}
        g = GaugeMetricFamily("hachain_gate_ok", "1 when the tickler's last health-gate "
                              "check passed")
        g.add_metric([], 1.0 if gate.get("ok") else 0.0)
        yield g
        for name, key, doc in (("armed", "armed", "1 while the watchdog device is open"),
                               ("petting", "petting", "1 while the tickler pets the device")):
            m = GaugeMetricFamily(f"hachain_watchdog_{name}", doc)
            m.add_metric([], 1.0 if wd.get(key) else 0.0)
            yield m
        pets = CounterMetricFamily("hachain_watchdog_pets", "keepalives sent by the current "
                                   "tickler process")
        pets.add_metric([], _num(wd.get("pets")) or 0.0)
        yield pets
        raw_pt = wd.get("pet_timing")
        pt: dict[str, Any] = raw_pt if isinstance(raw_pt, dict) else {}
        for name, key, doc in (("timeout_seconds", "timeout", "the device's timeout"),
                               ("timeleft_seconds", "timeleft", ("time left before the device "
                                "resets the machine")),
                               ("pet_late_worst_seconds", "pet_late_worst", "the latest a pet "
                                "came against its schedule, since boot"),
                               ("pet_late_warnings", "pet_late_warnings", "pets since boot "
                                "later than half the margin (timeout - pet_interval)")):
            v = _num(wd.get(key) if key in ("timeout", "timeleft") else pt.get(key))
            if v is not None:
                m = GaugeMetricFamily(f"hachain_watchdog_{name}", doc)
                m.add_metric([], v)
                yield m

    def _last_boot(self, lb: Any) -> Iterator[Metric]:
        """Why the previous boot ended, from last_boot.json."""
        if not isinstance(lb, dict):
            return
        cause = str(lb.get("cause") or "unknown")
        reset = GaugeMetricFamily("hachain_last_boot_watchdog_reset", "1 when the previous "
                                  "boot ended in a watchdog reset")
        reset.add_metric([], 1.0 if cause == "watchdog reset" else 0.0)
        info = GaugeMetricFamily("hachain_last_boot_info", "the recorded cause of the end "
                                 "of the previous boot", labels=["cause"])
        info.add_metric([cause], 1.0)
        yield from (reset, info)

    def _boot_record(self, chain_alive: bool) -> Iterator[Metric]:
        """Boots and how they ended, from the boot record (hachain/bootrecord.py);
        nothing when the machine has none (no layer has started there). The running
        boot is the entry of this kernel's boot id; failing that (a chain seen from
        another boot id: a simulated machine from its host), the newest entry while a
        layer of the chain is alive. A scrape waits on nothing: a FIFO there is no
        record (as a file that is none: `hachain status` says what is wrong with it)."""
        rec = bootrecord.read(self.persist_dir, regular=True)
        if not rec["boots"]:
            return
        boots = CounterMetricFamily("hachain_boots", "boots the boot record has counted")
        boots.add_metric([], float(rec.get("counter") or 0))
        yield boots
        cur = bootrecord.entry_for(rec, bootrecord.current_boot_id())
        if cur is None and chain_alive:
            cur = rec["boots"][-1]
        ended = [b for b in rec["boots"] if b is not cur]
        by_cause: dict[str, int] = {}
        for b in ended:
            cause = str(b.get("reason") or bootrecord.UNKNOWN)
            by_cause[cause] = by_cause.get(cause, 0) + 1
        ends = GaugeMetricFamily("hachain_boot_ends", "of the boots the record keeps, those "
                                 "that ended, by recorded cause", labels=["cause"])
        for cause in sorted({*BOOT_CAUSES, *by_cause}):
            ends.add_metric([cause], float(by_cause.get(cause, 0)))
        yield ends
        # a boot's bootstatus tells how the boot before it ended
        wd = sum(1 for b in rec["boots"] if isinstance(b.get("bootstatus"), int)
                 and not isinstance(b.get("bootstatus"), bool)
                 and b["bootstatus"] & bootrecord.WDIOF_CARDRESET)
        resets = GaugeMetricFamily("hachain_boot_watchdog_resets", "of the boots the record "
                                   "keeps, those the watchdog device reset")
        resets.add_metric([], float(wd))
        yield resets
        i = rec["boots"].index(cur) if cur is not None else len(rec["boots"])
        streak = GaugeMetricFamily("hachain_boot_unclean_in_a_row", "unclean boots in a row "
                                   "before this one")
        streak.add_metric([], float(len(bootrecord.unclean_run(rec["boots"][:i]))))
        yield streak


def make_registry(state_dir: str, persist_dir: str, gather: Gather | None = None
                  ) -> CollectorRegistry:
    """A registry holding only the chain collector (no process metrics of this server)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(ChainCollector(state_dir, persist_dir, gather))
    return reg


def handler_for(registry: CollectorRegistry) -> type[http.server.BaseHTTPRequestHandler]:
    """A request handler serving `registry` on `/metrics` (and `/`)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            """Answer a scrape; a failing collection is a 500 with a one-line reason."""
            path = self.path.split("?", 1)[0]
            if path not in ("/", "/metrics"):
                self.send_error(404, "try /metrics")
                return
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            try:
                body = encoder(registry)
            except Exception as e:  # noqa: BLE001 - a scrape error must not end the server
                self.send_error(500, f"collecting failed: {e}")
                return
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def address_string(self) -> str:
            """Unix-socket clients have no address."""
            return self.client_address[0] if isinstance(self.client_address, tuple) else "unix"

        def log_message(self, format: str, *args: Any) -> None:
            """Scrapes are not logged."""

    return Handler


class _TCPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True


class _TCP6Server(_TCPServer):
    address_family = socket.AF_INET6


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self) -> tuple[socket.socket, Any]:
        """Unix clients have an empty address; give the handler a tuple it can print."""
        conn, _ = super().get_request()
        return conn, ("unix", 0)


def make_server(registry: CollectorRegistry, listen: str | None, unix: str | None
                ) -> socketserver.BaseServer:
    """Bind the server (not yet serving). ValueError / OSError with a reason on failure."""
    handler = handler_for(registry)
    if unix:
        _remove_stale_socket(unix)
        return _UnixServer(unix, handler)
    host, sep, port = (listen or "").rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--listen must be HOST:PORT, got {listen!r}")
    host = host.strip("[]")
    cls: type[_TCPServer] = _TCP6Server if ":" in host else _TCPServer
    return cls((host, int(port)), handler)


def _remove_stale_socket(path: str) -> None:
    """Remove the socket an earlier run left at `path`. Anything else is left alone: OSError
    when the path is not a socket (a file named by mistake) or a live server answers on it."""
    try:
        st = os.lstat(path)
    except OSError:
        return  # nothing there, or the bind says why
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, "exists and is not a socket; left untouched")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    probe.settimeout(1.0)  # a listening server accepts at once (the kernel's backlog)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)  # nobody listens: stale
        return
    except OSError:
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, "another process serves on this socket")


def _same_file(path: str, ident: tuple[int, int] | None) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return ident == (st.st_dev, st.st_ino)


def describe_address(server: socketserver.BaseServer) -> str:
    """"127.0.0.1:9464" or the socket path, for the start-up line."""
    addr = server.server_address
    if isinstance(addr, tuple):
        return f"{addr[0]}:{addr[1]}" if ":" not in str(addr[0]) else f"[{addr[0]}]:{addr[1]}"
    return addr.decode() if isinstance(addr, bytes) else str(addr)


def cmd_metrics(args: argparse.Namespace) -> int:
    """Serve until SIGTERM / SIGINT. Exit 1 when the address cannot be bound."""
    if not HAVE_PROMETHEUS:
        sys.stderr.write(f"{PROG}: needs prometheus_client: pip install 'hachain[metrics]'\n")
        return 1
    state_dir, persist_dir = cmdline.dirs(args)
    try:
        server = make_server(make_registry(state_dir, persist_dir), args.listen, args.unix)
    except (ValueError, OSError) as e:
        sys.stderr.write(f"{PROG}: cannot listen on {args.unix or args.listen}: "
                         f"{getattr(e, 'strerror', None) or e}\n")
        return 1
    ident = None
    if args.unix:  # removed at the end only while it is still this server's socket
        try:
            st = os.lstat(args.unix)
            ident = (st.st_dev, st.st_ino)
        except OSError:
            pass
    done = threading.Event()

    def stop(_sig: int, _frame: object) -> None:
        done.set()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    t = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    t.start()
    sys.stderr.write(f"{PROG}: serving {state_dir} on {describe_address(server)}\n")
    sys.stderr.flush()
    try:
        done.wait()
    finally:
        server.shutdown()
        server.server_close()
        if args.unix and _same_file(args.unix, ident):
            try:
                os.unlink(args.unix)
            except OSError:
                pass
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `metrics` on an argparse sub-parsers object."""
    p = subparsers.add_parser(
        "metrics", help="serve the chain's state as Prometheus metrics (off unless started)",
        description="A small HTTP server, separate from the chain, that reads the same "
                    "state as `hachain status` on every scrape.")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--listen", default="127.0.0.1:9464", metavar="HOST:PORT",
                       help="TCP address (default 127.0.0.1:9464; port 0 picks one)")
    where.add_argument("--unix", metavar="PATH", help="serve on a Unix socket instead")
    p.add_argument("-c", "--config", help="configuration file (to find state_dir)")
    p.add_argument("--state-dir", help="the chain's runtime directory")
    p.add_argument("--persist-dir", help="the chain's persistent directory")
    p.set_defaults(func=cmd_metrics)
    return p


def main(argv: list[str] | None = None) -> int:
    """`python -m hachain.metrics ...`: the same as `hachain metrics ...`."""
    return cmdline.main_of("metrics", add_parser, argv)


if __name__ == "__main__":
    sys.exit(main())
