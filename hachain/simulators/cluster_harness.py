"""A cluster on one host: a real etcd cluster and network namespaces for the nodes.

Used by `hachain chaos --cluster`, bench/cluster_failover_bench.py and the cluster tests.

- `EtcdCluster`: N members of Debian's etcd-server on free 127.0.0.1 ports (and on
  `extra_hosts`, the host sides of the nodes' veth pairs), data in a temporary directory,
  killed and removed by `stop()`: nothing outlives its user (the members' logs stay with
  `keep_logs`). The binary is `$HACHAIN_ETCD` when set (tests put a failing one there),
  else `etcd` on PATH, else /usr/bin/etcd.
- `Net`: one network namespace per node, joined to the host by a veth pair, in a 10.x
  subnet no route of the host uses; `cut(i)` is `ip link set <host side> down`;
  `teardown()` removes every link and namespace it made. Its `ip` commands run in their
  own session, so a second Ctrl-C to the caller's process group cannot kill one halfway.
- `node_config`: a node's configuration with one stamping singleton service.

What the host fails to do (an `ip` command that fails, an etcd member that cannot start,
exits or is not healthy in time) raises `HarnessError`, whose text is one line naming
what failed and where (the command, the member and its log).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any

ETCD = os.environ.get("HACHAIN_ETCD") or shutil.which("etcd") or "/usr/bin/etcd"
# s for a SIGKILLed process to be reaped: the kernel runs its exit, no timer of ours;
# on a loaded host an uninterruptible wait can hold that back for seconds
KILLED_BOUND = 60.0


class HarnessError(Exception):
    """The host did not do what the harness asked; the text is one line saying what
    failed and where."""


def free_ports(n: int) -> list[int]:
    """n distinct ports that were free a moment ago (bound to port 0, then closed)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Member:
    def __init__(self, name: str, client_port: int, peer_port: int, data: str) -> None:
        self.name = name
        self.client_port = client_port
        self.peer_port = peer_port
        self.data = data
        self.proc: subprocess.Popen[bytes] | None = None
        self.killed = False  # by kill_member: its exit is no failure

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"


class EtcdCluster:
    def __init__(self, dir: str, n: int = 3, extra_hosts: tuple[str, ...] = (),
                 keep_logs: bool = False) -> None:
        self.dir = dir
        self.keep_logs = keep_logs  # stop() removes the data only
        ports = free_ports(2 * n)
        self.members = [Member(f"m{i}", ports[2 * i], ports[2 * i + 1],
                               os.path.join(dir, f"m{i}")) for i in range(n)]
        self.extra_hosts = extra_hosts
        self.token = f"hachain-test-{os.getpid()}-{ports[0]}"

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def start(self, timeout: float = 30.0) -> None:
        initial = ",".join(f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in self.members)
        for m in self.members:
            self.start_member(m, initial)
        self.wait_healthy(timeout)

    def start_member(self, m: Member, initial: str | None = None) -> None:
        if initial is None:
            initial = ",".join(f"{x.name}=http://127.0.0.1:{x.peer_port}"
                               for x in self.members)
        os.makedirs(m.data, exist_ok=True)
        client_urls = ",".join(f"http://{h}:{m.client_port}"
                               for h in ("127.0.0.1", *self.extra_hosts))
        log = open(self.log_path(m), "ab")  # noqa: SIM115
        m.killed = False
        try:
            m.proc = subprocess.Popen(
                [ETCD, "--name", m.name, "--data-dir", m.data,
                 "--listen-client-urls", client_urls,
                 "--advertise-client-urls", f"http://127.0.0.1:{m.client_port}",
                 "--listen-peer-urls", f"http://127.0.0.1:{m.peer_port}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{m.peer_port}",
                 "--initial-cluster", initial, "--initial-cluster-token", self.token,
                 "--initial-cluster-state", "new",
                 "--heartbeat-interval", "50", "--election-timeout", "500",
                 "--logger", "zap", "--log-outputs", "stderr"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        except OSError as e:
            raise HarnessError(f"etcd member {m.name} cannot start: {ETCD}: "
                               f"{e.strerror or e}") from e
        finally:
            log.close()

    def healthy(self, m: Member) -> bool:
        try:
            with urllib.request.urlopen(f"http://{m.endpoint}/health", timeout=1) as r:
                return b'"true"' in r.read()
        except (OSError, ValueError):
            return False

    def wait_healthy(self, timeout: float) -> None:
        """Every member healthy within `timeout`, else HarnessError naming the first
        that is not (or that exited)."""
        deadline = time.monotonic() + timeout
        while True:
            sick = [m for m in self.members if not self.healthy(m)]
            if not sick:
                return
            self.check_running()
            if time.monotonic() > deadline:
                raise HarnessError(f"etcd member {sick[0].name} not healthy within "
                                   f"{timeout:g} s ({self.last_words(sick[0])})")
            time.sleep(0.1)

    def check_running(self) -> None:
        """HarnessError when a member started and not killed by `kill_member` exited."""
        for m in self.members:
            if m.proc is not None and not m.killed and m.proc.poll() is not None:
                rc = m.proc.returncode
                how = f"was killed by {signal.Signals(-rc).name}" if rc < 0 else \
                    f"exited with status {rc}"
                raise HarnessError(f"etcd member {m.name} {how} ({self.last_words(m)})")

    def log_path(self, m: Member) -> str:
        return os.path.join(self.dir, f"{m.name}.log")

    def last_words(self, m: Member) -> str:
        """`log: PATH` and the gist of its last line (etcd logs JSON: its msg and error)."""
        path = self.log_path(m)
        try:
            with open(path, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
                lines = f.read().decode(errors="replace").splitlines()
        except OSError:
            lines = []
        last = next((ln.strip() for ln in reversed(lines) if ln.strip()), "")
        try:
            rec = json.loads(last)
            last = ": ".join(str(rec[k]) for k in ("msg", "error") if rec.get(k))
        except (ValueError, TypeError, AttributeError):
            pass
        last = last if len(last) <= 200 else last[:197] + "..."
        return f"log: {path}" + (f": {last}" if last else "")

    def kill_member(self, m: Member) -> None:
        m.killed = True
        if m.proc is not None and m.proc.poll() is None:
            m.proc.send_signal(signal.SIGKILL)
            m.proc.wait(KILLED_BOUND)

    def stop(self) -> None:
        for m in self.members:
            try:
                self.kill_member(m)
            except subprocess.TimeoutExpired:
                pass  # a stuck kernel: still kill the others and remove the directories
        if not self.keep_logs:
            shutil.rmtree(self.dir, ignore_errors=True)
            return
        for m in self.members:
            shutil.rmtree(m.data, ignore_errors=True)

    def __enter__(self) -> EtcdCluster:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def ip(*args: str) -> str:
    """Run `ip ARGS`; its output. HarnessError naming the command when it fails."""
    # its own session: a Ctrl-C to our process group never cuts a set-up or a tear-down
    # step short (the caller decides when to stop; each `ip` is bounded by the timeout)
    what = "`ip " + " ".join(args) + "`"
    try:
        r = subprocess.run(["ip", *args], timeout=30, capture_output=True, text=True,
                           start_new_session=True)
    except subprocess.TimeoutExpired as e:
        raise HarnessError(f"{what} did not finish within {e.timeout:g} s") from e
    except OSError as e:
        raise HarnessError(f"{what} cannot run: {e.strerror or e}") from e
    if r.returncode != 0:
        err = " ".join(r.stderr.split()) or "no message"
        raise HarnessError(f"{what} failed (exit status {r.returncode}): {err}")
    return r.stdout


def free_subnet() -> int:
    """A second octet b such that no route of the host touches 10.b.0.0/16."""
    routes = ip("-4", "route", "show", "table", "all")
    for b in random.sample(range(100, 250), 150):
        if f"10.{b}." not in routes:
            return b
    raise HarnessError("no free 10.x.0.0/16 subnet for the namespaces: every one has a "
                       "route (ip -4 route show table all)")


class Net:
    """One network namespace per node and a veth pair to the host for each."""

    def __init__(self, n: int) -> None:
        self.tag = f"hc{os.getpid() % 100000}"
        self.b = free_subnet()
        self.names = [f"{self.tag}n{i}" for i in range(n)]
        self.made: list[str] = []

    def host_ip(self, i: int) -> str:
        return f"10.{self.b}.{i}.1"

    def host_if(self, i: int) -> str:
        return f"{self.tag}h{i}"

    def setup(self) -> None:
        for i, ns in enumerate(self.names):
            ip("netns", "add", ns)
            self.made.append(ns)
            ip("link", "add", self.host_if(i), "type", "veth", "peer", "name", "eth0",
               "netns", ns)
            ip("addr", "add", f"{self.host_ip(i)}/24", "dev", self.host_if(i))
            ip("link", "set", self.host_if(i), "up")
            ip("-n", ns, "addr", "add", f"10.{self.b}.{i}.2/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")

    def cut(self, i: int) -> None:
        ip("link", "set", self.host_if(i), "down")

    def heal(self, i: int) -> None:
        ip("link", "set", self.host_if(i), "up")

    def teardown(self) -> None:
        for i, ns in enumerate(self.made):
            subprocess.run(["ip", "link", "del", self.host_if(i)], capture_output=True,
                           timeout=30, start_new_session=True)  # its peer goes with it
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30,
                           start_new_session=True)


def config_text(node: str, endpoints: list[str], stamps: str, prefix: str, svc: str,
                ttl: int = 4, wd: int = 2, margin: float = 0.25, stop: float = 0.5,
                hb: float = 0.1) -> str:
    return f"""\
[chain]
state_dir = "/run/hachain"
persist_dir = "/var/lib/hachain"
heartbeat_interval = {hb}
restart_delay = 0.5

[watchdog]
device = "sim"
timeout = {wd}
pet_interval = 0.25
heartbeat_timeout = 1.0
restart_grace = 4

[cluster]
endpoints = {json.dumps(endpoints)}
node = "{node}"
lease_ttl = {ttl}
margin = {margin}
prefix = "{prefix}"

[service.db]
command = ["{sys.executable}", "{svc}", "{stamps}", "{node}"]
singleton = true
stop_timeout = {stop}
"""
