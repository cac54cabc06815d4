"""`hachain metrics`: Prometheus text built from the chain's state on every scrape.

The state directory is fake but made the real way: heartbeats written with
`hachain.channels`, a control socket answering the restarter's status reply, the
tickler's records in the persistent directory. One test runs a real restarter.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("prometheus_client")
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hachain import channels, metrics
from tests.conftest import RestarterRun, reap, svc, wait_until

SERVICES = {
    "db": {"state": "ready", "want": "up", "pid": 4242, "kind": "longrun", "uptime": 12.5,
           "restarts": 2, "reason": "", "critical": True, "ready": "notify",
           "status_text": "", "last_exit": None},
    "web": {"state": "backoff", "want": "up", "pid": None, "kind": "longrun", "uptime": None,
            "restarts": 7, "reason": "exited 1", "critical": False, "ready": "none",
            "status_text": "", "last_exit": None},
    "init-db": {"state": "done", "want": "up", "pid": None, "kind": "oneshot", "uptime": None,
                "restarts": 0, "reason": "", "critical": False, "ready": "none",
                "status_text": "", "last_exit": None},
}


class _FakeRestarter(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def _serve_status(path: str) -> _FakeRestarter:
    """A control socket that answers every request with a status reply."""

    class H(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            self.rfile.readline()
            self.wfile.write(channels.encode_message(
                {"ok": True, "restarter": {"pid": os.getpid(), "uptime": 30.0, "restarts": 1,
                                           "services": len(SERVICES)},
                 "services": SERVICES}))

    srv = _FakeRestarter(path, H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def _beat(state: str, layer: str, extra: dict[str, Any], age: float = 0.0,
          restarts: int = 0) -> None:
    now = time.monotonic()
    channels.write_heartbeat(state, channels.Heartbeat(
        layer, os.getpid(), now - age, now - 100.0, 5, restarts, extra))


@pytest.fixture
def chain_dirs(tmp_path: Any) -> Iterator[tuple[str, str, Callable[[], None]]]:
    """(state_dir, persist_dir, start_restarter): heartbeats and records written."""
    state = str(tmp_path / "s")
    persist = str(tmp_path / "p")
    os.makedirs(os.path.join(state, channels.HEARTBEAT_DIR))
    os.makedirs(persist)
    _beat(state, "init", {}, age=0.2)
    _beat(state, "restarter", {"lag": 0.01, "critical": {}}, age=0.4, restarts=3)
    _beat(state, "tickler", {"device": "sim:/x/wd.sock", "armed": True, "petting": True,
                             "pets": 42, "timeout": 10, "timeleft": 7,
                             "gate": {"ok": True, "reasons": []}})
    channels.write_json(os.path.join(persist, "last_boot.json"),
                        {"boot_id": "b", "bootstatus": 32, "flags": ["CARDRESET"],
                         "cause": "watchdog reset", "last_gate_failure": None})
    servers: list[_FakeRestarter] = []

    def start() -> None:
        servers.append(_serve_status(os.path.join(state, channels.CONTROL_SOCKET)))

    yield state, persist, start
    for s in servers:
        s.shutdown()
        s.server_close()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} from Prometheus text."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_collector_reports_services_layers_and_watchdog(chain_dirs: Any) -> None:
    state, persist, start = chain_dirs
    start()
    text = generate_latest(metrics.make_registry(state, persist)).decode()
    m = _samples(text)
    assert m[("hachain_restarter_up", ())] == 1
    # one series per state, 1 for the current one
    db_states = {k[1][1][1]: v for k, v in m.items()
                 if k[0] == "hachain_service_state" and k[1][0] == ("service", "db")}
    assert db_states["ready"] == 1 and sum(db_states.values()) == 1
    assert set(db_states) == set(metrics.SERVICE_STATES)
    assert m[("hachain_service_state", (("service", "web"), ("state", "backoff")))] == 1
    assert m[("hachain_service_ready", (("service", "db"),))] == 1
    assert m[("hachain_service_ready", (("service", "web"),))] == 0
    assert m[("hachain_service_ready", (("service", "init-db"),))] == 1  # a done oneshot
    assert m[("hachain_service_restarts_total", (("service", "web"),))] == 7
    assert m[("hachain_service_uptime_seconds", (("service", "db"),))] == 12.5
    assert m[("hachain_service_critical", (("service", "db"),))] == 1
    # layers from the heartbeats
    for layer in channels.LAYERS:
        assert m[("hachain_layer_up", (("layer", layer),))] == 1
    age = m[("hachain_layer_heartbeat_age_seconds", (("layer", "restarter"),))]
    assert 0.4 <= age < 30
    assert m[("hachain_layer_restarts_total", (("layer", "restarter"),))] == 3
    # the tickler's view
    assert m[("hachain_gate_ok", ())] == 1
    assert m[("hachain_watchdog_pets_total", ())] == 42
    assert m[("hachain_watchdog_timeleft_seconds", ())] == 7
    assert m[("hachain_watchdog_timeout_seconds", ())] == 10
    assert m[("hachain_watchdog_petting", ())] == 1
    assert m[("hachain_last_boot_watchdog_reset", ())] == 1
    assert m[("hachain_last_boot_info", (("cause", "watchdog reset"),))] == 1


def test_collector_without_restarter_or_tickler(chain_dirs: Any) -> None:
    state, persist, _start = chain_dirs
    os.unlink(channels.heartbeat_path(state, "tickler"))
    _beat(state, "restarter", {}, age=5.0)
    m = _samples(generate_latest(metrics.make_registry(state, persist)).decode())
    assert m[("hachain_restarter_up", ())] == 0
    assert m[("hachain_layer_up", (("layer", "tickler"),))] == 0
    assert ("hachain_gate_ok", ()) not in m  # unknown without a tickler, not "ok"
    assert not any(k[0] == "hachain_service_state" for k in m)
    assert m[("hachain_layer_heartbeat_age_seconds", (("layer", "restarter"),))] >= 5.0


def test_gate_failure_and_odd_values_do_not_break_a_scrape(chain_dirs: Any) -> None:
    state, persist, _start = chain_dirs
    _beat(state, "tickler", {"device": "/dev/watchdog0", "armed": True, "petting": False,
                             "pets": "many", "timeleft": None, "gate": "broken"})
    m = _samples(generate_latest(metrics.make_registry(state, persist)).decode())
    assert m[("hachain_gate_ok", ())] == 0
    assert m[("hachain_watchdog_pets_total", ())] == 0
    assert ("hachain_watchdog_timeleft_seconds", ()) not in m


def _read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """One stderr line of `proc`, within `timeout`."""
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    buf = b""
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([proc.stderr], [], [], left)[0]:
            raise AssertionError(f"no start-up line within {timeout} s (got {buf!r})")
        chunk = os.read(proc.stderr.fileno(), 1)
        if not chunk:
            raise AssertionError(f"metrics exited: {buf!r}, status {proc.wait(5)}")
        buf += chunk
    return buf.decode()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            reap(proc, "hachain metrics")


def test_http_scrape_on_loopback(chain_dirs: Any) -> None:
    state, persist, start = chain_dirs
    start()
    proc = subprocess.Popen([sys.executable, "-m", "hachain.metrics", "--listen",
                             "127.0.0.1:0", "--state-dir", state, "--persist-dir", persist],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        line = _read_line(proc, 20)
        addr = line.rsplit(" on ", 1)[1].strip()
        with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain")
            body = r.read().decode()
        m = _samples(body)
        assert m[("hachain_service_state", (("service", "db"), ("state", "ready")))] == 1
        assert m[("hachain_gate_ok", ())] == 1
        with pytest.raises(urllib.error.HTTPError) as ei:
            urllib.request.urlopen(f"http://{addr}/nope", timeout=10)
        assert ei.value.code == 404
        # a second scrape sees a change at once: nothing is cached between scrapes
        _beat(state, "tickler", {"device": "sim:/x", "gate": {"ok": False, "reasons": ["x"]}})
        with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as r:
            assert _samples(r.read().decode())[("hachain_gate_ok", ())] == 0
    finally:
        _stop(proc)
    assert proc.returncode == 0


def test_unix_socket_scrape(chain_dirs: Any, tmp_path: Any) -> None:
    state, persist, start = chain_dirs
    start()
    path = str(tmp_path / "m.sock")
    srv = metrics.make_server(metrics.make_registry(state, persist), None, path)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.settimeout(10)
            c.connect(path)
            c.sendall(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            data = b""
            while chunk := c.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200")
        assert _samples(body.decode())[("hachain_restarter_up", ())] == 1
    finally:
        srv.shutdown()
        srv.server_close()


def test_bad_listen_address_is_one_line_exit_1() -> None:
    r = subprocess.run([sys.executable, "-m", "hachain.metrics", "--listen", "nonsense",
                        "--state-dir", "/nonexistent"], capture_output=True, timeout=30,
                       check=False)
    assert r.returncode == 1
    assert r.stderr.decode().count("\n") == 1 and "HOST:PORT" in r.stderr.decode()


def test_against_a_real_restarter(restarter: Callable[..., RestarterRun]) -> None:
    run = restarter(f"[service.a]\ncommand = {svc('sleep')}\ncritical = true\n"
                    f"[service.b]\ncommand = {svc('exit', '1')}\nrestart = \"never\"\n")
    run.wait_state("a", "ready")
    run.wait_state("b", "failed")
    reg = metrics.make_registry(run.state_dir, run.persist_dir)
    m = wait_until(lambda: (s := _samples(generate_latest(reg).decode()))
                   .get(("hachain_layer_up", (("layer", "restarter"),))) == 1 and s,
                   10, "the restarter's heartbeat")
    assert m[("hachain_service_state", (("service", "a"), ("state", "ready")))] == 1
    assert m[("hachain_service_state", (("service", "b"), ("state", "failed")))] == 1
    assert m[("hachain_service_critical", (("service", "a"),))] == 1
    assert m[("hachain_restarter_up", ())] == 1


def test_machine_check_series_from_a_real_restarter(
        restarter: Callable[..., RestarterRun]) -> None:
    run = restarter(f"[service.a]\ncommand = {svc('sleep')}\n"
                    "[check.load]\nkind = \"load\"\nmax_load = 1000000\ninterval = 0.2\n"
                    "[check.broken]\ncommand = [\"/bin/false\"]\ninterval = 0.2\n"
                    "retry_timeout = 0\naction = \"log\"\n")
    run.wait_state("a", "ready")
    reg = metrics.make_registry(run.state_dir, run.persist_dir)
    m = wait_until(lambda: (s := _samples(generate_latest(reg).decode())).get(
        ("hachain_check_state", (("check", "broken"), ("state", "failed")))) == 1 and s,
        30, "the broken check to fail")
    assert m[("hachain_check_state", (("check", "load"), ("state", "ok")))] == 1
    assert m[("hachain_check_state", (("check", "load"), ("state", "failing")))] == 0
    assert m[("hachain_check_gates", (("check", "load"),))] == 1
    assert m[("hachain_check_gates", (("check", "broken"),))] == 0
    assert m[("hachain_check_failing_seconds", (("check", "load"),))] == 0


# --- issue 21.5: series that survive an outage, boots, build info ----------------------------

def _age(m: dict[Any, float]) -> float:
    return m[("hachain_service_info_age_seconds", ())]


def test_service_series_outlive_a_restarter_that_stops_answering(chain_dirs: Any) -> None:
    state, persist, start = chain_dirs
    start()
    reg = metrics.make_registry(state, persist)
    m = _samples(generate_latest(reg).decode())
    assert m[("hachain_restarter_up", ())] == 1 and _age(m) == 0
    os.unlink(os.path.join(state, channels.CONTROL_SOCKET))  # nobody answers any more
    m2 = _samples(generate_latest(reg).decode())
    assert m2[("hachain_restarter_up", ())] == 0
    # the last values, with their age: an alert on them can still fire
    assert m2[("hachain_service_state", (("service", "web"), ("state", "backoff")))] == 1
    assert m2[("hachain_service_restarts_total", (("service", "web"),))] == 7
    assert _age(m2) > 0
    # a fresh collector (the metrics process restarted) finds the last table too: it is
    # the one `hachain status` keeps in the state directory
    m3 = _samples(generate_latest(metrics.make_registry(state, persist)).decode())
    assert m3[("hachain_service_ready", (("service", "db"),))] == 1
    assert _age(m3) >= _age(m2)


def test_last_answer_kept_in_process_when_the_state_dir_is_not_writable(
        chain_dirs: Any) -> None:
    state, persist, _start = chain_dirs
    answers = [{"chain": {}, "services": SERVICES},
               {"chain": {"restarter_error": "timed out", "last_known": None},
                "services": {}}]
    reg = metrics.make_registry(state, persist, gather=lambda _s, _p: answers.pop(0))
    assert _age(_samples(generate_latest(reg).decode())) == 0
    m = _samples(generate_latest(reg).decode())
    assert m[("hachain_service_state", (("service", "db"), ("state", "ready")))] == 1
    assert _age(m) > 0


def test_build_info_and_boot_counts_from_the_boot_record(chain_dirs: Any) -> None:
    from hachain import __version__, bootrecord
    state, persist, _start = chain_dirs
    reg = metrics.make_registry(state, persist)
    m = _samples(generate_latest(reg).decode())
    build = [k for k in m if k[0] == "hachain_build_info"]
    assert len(build) == 1 and ("version", __version__) in build[0][1]
    assert ("hachain_boots_total", ()) not in m  # no boot record yet: nothing to count
    # four earlier boots, ended as the layers record it; the device read CARDRESET in
    # the boot after the gate failure; then this boot
    ends = [("gate-failure", None), ("unknown", 0x20), ("shutdown", None),
            ("unknown", None)]
    for i, (reason, status) in enumerate(ends):
        bootrecord.begin_boot(persist, f"old-{i}", 1000.0 + i, bootstatus=status)
        if reason != "unknown":
            bootrecord.set_reason(persist, f"old-{i}", reason, [], 1000.5 + i)
    bootrecord.begin_boot(persist, bootrecord.current_boot_id(), 2000.0)
    m = _samples(generate_latest(reg).decode())
    assert m[("hachain_boots_total", ())] == 5
    assert m[("hachain_boot_ends", (("cause", "unknown"),))] == 2
    assert m[("hachain_boot_ends", (("cause", "gate-failure"),))] == 1
    assert m[("hachain_boot_ends", (("cause", "shutdown"),))] == 1
    assert m[("hachain_boot_ends", (("cause", "reboot-requested"),))] == 0
    assert m[("hachain_boot_watchdog_resets", ())] == 1
    assert m[("hachain_boot_unclean_in_a_row", ())] == 1  # the boot after the shutdown


@pytest.mark.slow
def test_sigstopped_restarter_keeps_its_service_series_with_a_growing_age(
        restarter: Callable[..., RestarterRun]) -> None:
    """The real restarter, SIGSTOPped: status sees it hung and does not ask it; the
    service series stay, with an age that grows from one scrape to the next."""
    run = restarter(f"[service.a]\ncommand = {svc('sleep')}\ncritical = true\n")
    run.wait_state("a", "ready")
    reg = metrics.make_registry(run.state_dir, run.persist_dir)
    first = wait_until(lambda: (s := _samples(generate_latest(reg).decode()))
                       .get(("hachain_layer_up", (("layer", "restarter"),))) == 1 and s,
                       10, "the restarter's heartbeat")
    assert first[("hachain_service_ready", (("service", "a"),))] == 1 and _age(first) == 0
    assert first[("hachain_boots_total", ())] >= 1  # the restarter opened this boot's entry
    assert run.proc is not None
    os.kill(run.proc.pid, signal.SIGSTOP)
    try:
        def hung() -> dict[Any, float] | None:
            s = _samples(generate_latest(reg).decode())
            return s if s.get(("hachain_layer_stopped", (("layer", "restarter"),))) == 1 \
                else None
        m1 = wait_until(hung, 10, "the restarter seen stopped")
        assert m1[("hachain_restarter_up", ())] == 0
        assert m1[("hachain_layer_state", (("layer", "restarter"), ("state", "hung")))] == 1
        assert m1[("hachain_service_ready", (("service", "a"),))] == 1
        assert m1[("hachain_service_state", (("service", "a"), ("state", "ready")))] == 1
        m2 = wait_until(lambda: (s := _samples(generate_latest(reg).decode()))
                        and _age(s) > _age(m1) and s, 10, "a growing age")
        assert m2[("hachain_service_critical", (("service", "a"),))] == 1
    finally:
        os.kill(run.proc.pid, signal.SIGCONT)
    m3 = wait_until(lambda: (s := _samples(generate_latest(reg).decode()))
                    .get(("hachain_restarter_up", ())) == 1 and s, 10, "the restarter back")
    assert _age(m3) == 0


def test_a_chain_of_another_boot_id_counts_its_newest_boot_as_running(chain_dirs: Any) -> None:
    """A simulated machine seen from its host has its own boot id: while its layers are
    alive, its newest boot is the running one, not one that ended."""
    from hachain import bootrecord
    state, persist, _start = chain_dirs
    for bid in ("machine-boot-1", "machine-boot-2"):
        bootrecord.begin_boot(persist, bid, 1000.0)
    reg = metrics.make_registry(state, persist)
    m = _samples(generate_latest(reg).decode())
    assert m[("hachain_boots_total", ())] == 2
    assert m[("hachain_boot_ends", (("cause", "unknown"),))] == 1
    for layer in channels.LAYERS:  # the chain is gone: every boot in the record ended
        os.unlink(channels.heartbeat_path(state, layer))
    m = _samples(generate_latest(reg).decode())
    assert m[("hachain_boot_ends", (("cause", "unknown"),))] == 2
