"""ignore_sigpipe (systemd's IgnoreSIGPIPE=, on there by default): the service starts with
SIGPIPE ignored, on every spawn path, the plain posix_spawn one included; without it,
at its default, as s6 and runit start a service. Read back from /proc/PID/status
(SigIgn) and tried for real: a writer to a closed pipe gets EPIPE or dies by SIGPIPE."""

from __future__ import annotations

import signal
from typing import Any

import pytest

from hachain.configtypes import ServiceConfig
from hachain.restarter import spawn
from tests.conftest import SPAWN_PATHS, spawn_path, wait_until

RUN_BOUND = 30.0  # a /bin/sh and coreutils; no chain timer involved
PIPE_BIT = 1 << (signal.SIGPIPE - 1)

# sh (its SIGPIPE as it was given) runs a writer into a pipe whose reader has gone
PROBE = ("grep SigIgn /proc/self/status; (sleep 0.2; yes; echo writer=$? >&2) | true; "
         "exec sleep 600")


def _log(logs: Any, name: str) -> str:
    log = logs / f"{name}.log"
    text = log.read_text() if log.exists() else ""
    return text if "writer=" in text else ""


@pytest.mark.parametrize("path", SPAWN_PATHS)
@pytest.mark.parametrize("plain", [True, False], ids=["plain", "set-up"])
def test_sigpipe_is_ignored_only_when_asked(cgroups: Any, tmp_path: Any, started: list[int],
                                            monkeypatch: Any, path: str, plain: bool) -> None:
    """`plain`: nothing but the command (the fallbacks take posix_spawn); else a umask
    too (the fallbacks take subprocess with a preexec function)."""
    cgroups = spawn_path(path, cgroups, monkeypatch)
    logs = tmp_path / "logs"
    for name, ignore in (("dfl", False), ("ign", True)):
        cfg = ServiceConfig(name, ("/bin/sh", "-c", PROBE), ignore_sigpipe=ignore,
                            umask=None if plain else 0o022)
        sp = spawn.spawn(cfg, str(logs), cgroups, None, yield_cpu=False)
        started.append(sp.pid)
        text = wait_until(lambda n=name: _log(logs, n), RUN_BOUND, f"{name}'s lines")
        mask = int(text.split("SigIgn:")[1].split()[0], 16)
        assert bool(mask & PIPE_BIT) == ignore, text
        # yes: ends with EPIPE (status 1) when SIGPIPE is ignored, by SIGPIPE (141) if not
        assert f"writer={1 if ignore else 128 + signal.SIGPIPE}" in text, text
