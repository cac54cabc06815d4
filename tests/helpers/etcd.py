"""A real etcd cluster for tests: N members of Debian's etcd-server on free ports.

Members listen on 127.0.0.1 (and on `extra_hosts`, for nodes in network namespaces),
keep their data in a temporary directory, and are killed and removed by `stop()`, which
the tests call in a `finally` (or through the fixture): nothing outlives a test.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from typing import Any

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


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

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"


class EtcdCluster:
    def __init__(self, dir: str, n: int = 3, extra_hosts: tuple[str, ...] = ()) -> None:
        self.dir = dir
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
        log = open(os.path.join(self.dir, f"{m.name}.log"), "ab")  # noqa: SIM115
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
        finally:
            log.close()

    def healthy(self, m: Member) -> bool:
        try:
            with urllib.request.urlopen(f"http://{m.endpoint}/health", timeout=1) as r:
                return b'"true"' in r.read()
        except (OSError, ValueError):
            return False

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not all(self.healthy(m) for m in self.members):
            for m in self.members:
                if m.proc is not None and m.proc.poll() is not None:
                    raise RuntimeError(f"etcd member {m.name} exited: "
                                       + self.log_tail(m))
            if time.monotonic() > deadline:
                raise TimeoutError(f"etcd cluster not healthy within {timeout:g} s: "
                                   + self.log_tail(self.members[0]))
            time.sleep(0.1)

    def log_tail(self, m: Member) -> str:
        try:
            with open(os.path.join(self.dir, f"{m.name}.log"), "rb") as f:
                return f.read()[-1500:].decode(errors="replace")
        except OSError:
            return ""

    def kill_member(self, m: Member) -> None:
        if m.proc is not None and m.proc.poll() is None:
            m.proc.send_signal(signal.SIGKILL)
            m.proc.wait(10)

    def stop(self) -> None:
        for m in self.members:
            self.kill_member(m)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> EtcdCluster:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
