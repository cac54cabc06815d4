"""What `hachain run` does before init starts the restarter (issue 19, start-up): the
durable last-known-good copy of the configuration is written by a child of the run
process, off the path to the first service; init reaps it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hachain import channels, snapshot
from tests.conftest import wait_until

pytestmark = pytest.mark.slow  # a whole chain


def test_run_writes_last_good_from_a_child_that_init_reaps(tmp_path: Path) -> None:
    state, persist = tmp_path / "run", tmp_path / "persist"
    cfg = tmp_path / "chain.toml"
    cfg.write_text(f'[chain]\nstate_dir = "{state}"\npersist_dir = "{persist}"\n'
                   'cgroup_root = "none"\n[watchdog]\ndevice = "none"\n'
                   '[service.a]\ncommand = ["/bin/sleep", "1000"]\n')
    with open(tmp_path / "chain.log", "wb") as log:
        p = subprocess.Popen([sys.executable, "-m", "hachain.cli", "run", "-c", str(cfg)],
                             stdout=log, stderr=log)
    try:
        lkg = wait_until(lambda: snapshot.read_last_good(str(persist)), 30,
                         "the last-known-good snapshot")
        run = snapshot.read_running(str(state))
        assert run is not None and lkg.sha256 == run.sha256 and lkg.text == cfg.read_text()
        assert lkg.chain_id == run.chain_id == channels.chain_id(p.pid)
        wait_until(lambda: channels.read_heartbeat(str(state), "restarter"), 30,
                   "the restarter's heartbeat")
        # init (the run process, exec'd) reaps the writer: no zombie child of it is left
        def no_zombie() -> bool:
            kids = [int(x) for x in os.listdir("/proc") if x.isdigit()
                    and channels.proc_ppid(int(x)) == p.pid]
            return bool(kids) and all(channels.proc_state(k) != "Z" for k in kids)
        wait_until(no_zombie, 10, "init to reap the last-known-good writer")
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0
