"""The embedded demo appliance: the configuration `hachain sim` boots when given no -c.

A small, realistic box: a critical database that reports readiness over the notify
socket, a web front end that requires it and is ready when its loopback port accepts, a one-shot
migration, and a worker that crashes every 20 s to show restarts with backoff. The
services are `hachain.simulators.demo_services` run by the given Python.
"""

from __future__ import annotations

import json
import socket


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (for the web service)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo_config_text(python: str, web_port: int | None = None) -> str:
    """The demo appliance's chain.toml, running services with `python`.

    `web_port` defaults to a currently free loopback port (the simulated machine shares
    the host's network, so two demos must not pick the same one).
    """
    port = web_port if web_port is not None else free_port()

    def cmd(*args: str) -> str:
        return json.dumps([python, "-m", "hachain.simulators.demo_services", *args])

    return f"""\
# hachain demo appliance (written by `hachain sim`). The simulated machine overrides
# state_dir, persist_dir, cgroup_root and the watchdog device through HACHAIN_* variables.

[chain]
state_dir = "/run/hachain"
persist_dir = "/var/lib/hachain"
heartbeat_interval = 0.5
restart_delay = 1.0

[watchdog]
device = "sim"
timeout = 10
pet_interval = 1
heartbeat_timeout = 3
restart_grace = 10

[service.db]
command = {cmd("db")}
ready = "notify"
ready_timeout = 10
critical = true
restart = "always"
backoff = {{ initial = 0.5, factor = 2.0, max = 5 }}

[service.migrate]
command = {cmd("migrate")}
kind = "oneshot"
requires = ["db"]
restart = "on-failure"

[service.web]
command = {cmd("web", str(port))}
requires = ["db"]
after = ["migrate"]
ready = "tcp"         # ready once 127.0.0.1:{port} accepts a connection
ready_port = {port}
ready_timeout = 10
restart = "always"

[service.worker]
command = {cmd("worker", "20")}
requires = ["db"]
restart = "on-failure"
backoff = {{ initial = 1, factor = 2.0, max = 10, reset_after = 30 }}
intensity = {{ max_restarts = 10, window = 300, action = "maintenance" }}

# machine checks, as the `watchdog` daemon's tests (docs/checks.md): failing for
# retry_timeout (then after their repairs) they fail the health gate
[check.memory]
kind = "memory"
min_available = "16M"
retry_timeout = 30

[check.loopback]
kind = "ping"
host = "127.0.0.1"
timeout = 1
action = "log"        # reported only: a host may allow no ping socket (CAP_NET_RAW)
"""
