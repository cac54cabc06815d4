"""A name service that does not answer (an LDAP, sssd or NIS server gone, a hung NFS
/etc) does not stop the restarter: `user` and `group` are looked up by a thread of their
own (spawn.Resolver), a start waits NSS_WAIT for it at most, and the health gate never
sees the loop stall.

Before, every start of a service with `user =` looked the user up in the loop: with the
name service hung, the restarter hung with it, its heartbeat went stale and the watchdog
reset the box (os.getgrouplist even held the GIL, so no other thread ran either). The
hang here is real: in a mount namespace of the test's own, a FIFO is bind-mounted over
/etc/passwd and /etc/group, so the `files` service blocks in open() for good.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from hachain import channels
from hachain.simulators.wdsim import SoftWatchdog, WatchdogServer
from tests.conftest import descendants, stop_chain, wait_until

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare")
                       or not shutil.which("nsenter"),
                       reason="needs root, unshare and nsenter (a mount namespace)"),
]


def test_the_resolver_answers_from_what_it_knows_while_the_name_service_hangs(
        tmp_path: Path) -> None:
    fifo = tmp_path / "hung-passwd"
    os.mkfifo(fifo)
    script = textwrap.dedent(f"""
        import subprocess, sys
        from hachain.restarter import spawn
        r = spawn.Resolver()
        before = r.resolve("nobody", None)
        for f in ("/etc/passwd", "/etc/group"):
            subprocess.run(["mount", "--bind", {str(fifo)!r}, f], check=True)
        again = r.resolve("nobody", None)  # the lookup hangs: what it said last
        assert again == before, (again, before)
        assert len(r.notes) == 1 and "has not answered" in r.notes[0], r.notes
        try:
            r.resolve("daemon", None)  # never resolved here: put off, not waited on
        except spawn.SpawnError as e:
            assert e.transient and "did not answer within" in str(e), str(e)
        else:
            raise AssertionError("a user never resolved was not put off")
        print("ok", flush=True)
    """)
    got = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c",
                          script], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert got.returncode == 0 and got.stdout == "ok\n", got.stdout + got.stderr



@pytest.mark.slow
def test_a_hung_name_service_resets_nothing(tmp_path: Path) -> None:
    run, fifo = tmp_path / "run", tmp_path / "hung-passwd"
    os.mkfifo(fifo)
    sock = str(tmp_path / "wd.sock")
    fired = threading.Event()
    wd = SoftWatchdog(timeout=6)
    server = WatchdogServer(sock, wd, fired.set)
    cfg = tmp_path / "chain.toml"
    # u runs as nobody and exits every 0.3 s: each restart looks nobody up
    cfg.write_text(f'[chain]\nstate_dir = "{run}"\npersist_dir = "{tmp_path / "persist"}"\n'
                   'heartbeat_interval = 0.5\ncgroup_root = "none"\n'
                   f'[watchdog]\ndevice = "sim:{sock}"\ntimeout = 6\npet_interval = 1\n'
                   '[service.u]\ncommand = ["sh", "-c", "sleep 0.3"]\nuser = "nobody"\n'
                   'restart = "always"\nbackoff = { initial = 0.1, factor = 1.0, max = 0.1 }\n'
                   'intensity = { max_restarts = 100000, window = 1, action = "ignore" }\n')
    log = tmp_path / "chain.log"
    server.start()
    seen: set[int] = set()
    chain = None

    def text() -> str:
        return log.read_text(errors="replace")

    def restarts() -> int:
        try:
            return int(channels.read_json(str(run / "services" / "u.json")).get("restarts")
                       or 0)
        except (OSError, ValueError, AttributeError):
            return 0

    def pets() -> int:
        hb = channels.read_heartbeat(str(run), "tickler")
        return int(hb.extra.get("pets") or 0) if hb is not None else 0
    try:
        with open(log, "wb") as logf:
            chain = subprocess.Popen(["unshare", "-m", "--propagation", "private",
                                      sys.executable, "-m", "hachain.cli", "run", "-c",
                                      str(cfg)], stdout=logf, stderr=logf)
        wait_until(lambda: seen.update(descendants(chain.pid)) or
                   (restarts() >= 2 and pets() >= 2), 60, "u restarting, the device petted")
        for f in ("/etc/passwd", "/etc/group"):  # in the chain's mount namespace only
            subprocess.run(["nsenter", "-t", str(chain.pid), "-m", "mount", "--bind",
                            str(fifo), f], check=True, timeout=30)
        before, start = restarts(), pets()
        # u goes on restarting (as nobody resolved last) and the device goes on being
        # petted past its timeout: the loop never stalled on the name service
        wait_until(lambda: fired.is_set() or (restarts() >= before + 5 and
                                              pets() >= start + 6 + 2), 60,
                   "restarts and pets past the device's timeout\n" + text()[-2000:])
        assert not fired.is_set(), "the watchdog fired:\n" + text()[-3000:]
        assert 'user = "nobody": the name service has not answered for' in text(), \
            text()[-3000:]
        assert "health gate FAILED" not in text(), text()[-3000:]
    finally:
        stop_chain(chain, seen)
        server.stop()

