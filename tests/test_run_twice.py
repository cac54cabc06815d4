"""`hachain run` of a chain that already runs (by mistake, a unit started twice) is
refused whole, and the running chain loses nothing.

Before, the second run overwrote the running snapshot, its init rebound the running
chain's control and notify sockets (unlinked and bound again at the same paths: `hachain
status` and sd_notify then reached a chain that was not running them), its tickler found
the device busy and was restarted every second for ever, and its restarter waited for
the running one's lock, ready to run every service a second time the moment that one
died. Now `hachain run` takes the state directory's init lock before it writes anything
(channels.take_init_lock) and hands it to init across its exec.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hachain import channels
from tests.conftest import children, stop_chain, wait_until

pytestmark = pytest.mark.timeout(120)


def test_the_init_lock_names_its_holder(tmp_path: Path) -> None:
    fd = channels.take_init_lock(str(tmp_path))
    try:
        with pytest.raises(channels.ChainRunning) as got:
            channels.take_init_lock(str(tmp_path))  # another description: refused
        assert got.value.holder == str(os.getpid())
    finally:
        os.close(fd)
    os.close(channels.take_init_lock(str(tmp_path)))  # free again once closed


def test_the_init_lock_is_no_fifo(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / channels.INIT_LOCK)
    with pytest.raises(OSError, match="not a regular file \\(a FIFO\\)"):
        channels.take_init_lock(str(tmp_path))


def _ids(paths: list[Path]) -> list[tuple[int, int]]:
    return [(os.stat(p).st_ino, os.stat(p).st_mtime_ns) for p in paths]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the chain makes cgroups")
def test_a_second_run_of_a_running_chain_is_refused_and_changes_nothing(
        tmp_path: Path) -> None:
    run, persist = tmp_path / "run", tmp_path / "persist"
    cfg = tmp_path / "chain.toml"
    cfg.write_text(f'[chain]\nstate_dir = "{run}"\npersist_dir = "{persist}"\n'
                   'heartbeat_interval = 0.5\n[watchdog]\ndevice = "none"\n'
                   '[service.a]\ncommand = ["sleep", "600"]\n')
    log = tmp_path / "chain.log"
    with open(log, "wb") as logf:
        chain = subprocess.Popen([sys.executable, "-m", "hachain.cli", "run", "-c",
                                  str(cfg)], stdout=logf, stderr=logf)
    seen: set[int] = set()
    try:
        def started() -> bool:
            seen.update(children(chain.pid))
            rec = run / channels.SERVICE_RECORD_DIR / "a.json"
            return rec.exists() and bool(channels.read_json(str(rec)).get("pid"))
        wait_until(started, 60, "service a running")
        kept = [run / channels.RUNNING_CONFIG, run / channels.CONTROL_SOCKET,
                run / channels.NOTIFY_SOCKET]
        before = _ids(kept)
        second = subprocess.run([sys.executable, "-m", "hachain.cli", "run", "-c", str(cfg)],
                                capture_output=True, text=True, timeout=60)  # (it never
        # returned: its init restarted a tickler that found the device busy, for ever)
        assert second.returncode == 1, second.stdout + second.stderr
        assert second.stderr.strip().splitlines() == [
            f"hachain: {cfg}: a chain already runs on {run} (its init is pid {chain.pid}); "
            "nothing started: stop that one first"], second.stderr
        assert _ids(kept) == before  # its snapshot and sockets untouched
        assert chain.poll() is None
        st = subprocess.run([sys.executable, "-m", "hachain.cli", "status", "-c", str(cfg)],
                            capture_output=True, text=True, timeout=60)
        assert st.stdout.startswith("healthy"), st.stdout + st.stderr
    finally:
        stop_chain(chain, seen)
    # once it has stopped, the state directory is free again
    os.close(channels.take_init_lock(str(run)))
