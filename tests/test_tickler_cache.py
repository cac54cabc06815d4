"""A tickler restarted in the same run of the chain takes the tables the one before it
parsed (`<state_dir>/config/tickler.json`), without a parser process and without
importing the configuration code: a killed tickler must be back at the device within
the watchdog's timeout, and on an emulated machine that parse took seconds. The copy is
used only for the running snapshot, overrides and code it was made from.

Real init, the real tickler, the watchdog simulator; the restarter is a `sleep`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from hachain import channels, snapshot
from hachain.watchdog import tickler
from tests.conftest import wait_until
from tests.test_tickler_loop import START, kill_after_open, looping_chain, restarter_pid

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]
LONG_TIMEOUT = 200  # a watchdog that must not fire while a test runs


def cache_file(state_dir: Path) -> Path:
    return state_dir / tickler.TABLES_CACHE


def petting_lines(err: Path) -> list[str]:
    return [ln for ln in err.read_text(errors="replace").splitlines()
            if "while the gate passes" in ln]


def restart_tickler(init: Any, err: Path, wd: Any, restarter: int, opens: int) -> str:
    """Kill the tickler that made open number `opens`; the next one's 'armed' line."""
    before = len(petting_lines(err))
    kill_after_open(init, wd, restarter, opens)
    wait_until(lambda: wd.opens > opens, START, "the restarted tickler to open the device")
    lines = wait_until(lambda: (p := petting_lines(err)) and len(p) > before and p, START,
                       "the restarted tickler's armed line")
    return str(lines[-1])


def cached_chain(tmp_path: Path) -> Any:
    """A chain whose first tickler accepts the file itself (a run started by init alone
    has no running snapshot before it) and keeps the tables of the snapshot it made."""
    return looping_chain(tmp_path, 0, START, LONG_TIMEOUT)


def test_a_restarted_tickler_takes_the_tables_of_the_one_before(tmp_path: Path) -> None:
    with cached_chain(tmp_path) as (init, err, wd, fired, state_dir):
        restarter = restarter_pid(state_dir)
        wait_until(lambda: wd.opens >= 1, START, "the first open")
        cache = wait_until(lambda: cache_file(state_dir).exists() and cache_file(state_dir),
                           10, "the cache of the parsed tables")
        d = json.loads(cache.read_text())
        running = channels.read_json(str(state_dir / channels.RUNNING_CONFIG))
        assert d["key"]["sha256"] == running["sha256"]
        assert d["key"]["chain_id"] == running["chain_id"]
        assert d["tables"]["watchdog"]["timeout"] == LONG_TIMEOUT
        # Only the cache says 0.7: a tickler that petted every 0.7 s read it, not the file
        # (0.5). A test's edit, kept readable as the tickler requires.
        d["tables"]["watchdog"]["pet_interval"] = 0.7
        channels.write_json(str(cache), d)
        line = restart_tickler(init, err, wd, restarter, 1)
        assert "petting every 0.7 s" in line, line
        assert not fired.is_set()


def test_a_new_running_snapshot_is_parsed_again(tmp_path: Path) -> None:
    """`hachain reload` writes a new running snapshot: its SHA-256 is not the cache's, so
    the next tickler parses the new one (and keeps that)."""
    with cached_chain(tmp_path) as (init, err, wd, fired, state_dir):
        restarter = restarter_pid(state_dir)
        restart_tickler(init, err, wd, restarter, 1)
        wait_until(lambda: cache_file(state_dir).exists(), 10, "the cache")
        old = json.loads(cache_file(state_dir).read_text())["key"]["sha256"]
        running = channels.read_json(str(state_dir / channels.RUNNING_CONFIG))
        cfg = Path(running["source"])
        cfg.write_text(cfg.read_text().replace("pet_interval = 0.5", "pet_interval = 0.8"))
        # as a reload does: the edited file accepted as this run's running snapshot
        env = dict(os.environ, **{channels.ENV_STATE_DIR: str(state_dir)})
        snapshot.accept(str(cfg), chain_id=running["chain_id"], environ=env)
        line = restart_tickler(init, err, wd, restarter, 2)
        assert "petting every 0.8 s" in line, line
        new = wait_until(lambda: (k := json.loads(cache_file(state_dir).read_text())["key"])
                         and k["sha256"] != old and k, 10, "the cache of the new snapshot")
        assert new["sha256"] == channels.read_json(
            str(state_dir / channels.RUNNING_CONFIG))["sha256"]


@pytest.mark.parametrize("damage", ["garbage", "writable", "other-key"])
def test_a_cache_that_cannot_be_trusted_is_not_used(tmp_path: Path, damage: str) -> None:
    """Garbage, a copy others may write, a copy made for another chain run: the tickler
    parses the snapshot as before, opens the device and pets with the file's values."""
    with cached_chain(tmp_path) as (init, err, wd, fired, state_dir):
        restarter = restarter_pid(state_dir)
        restart_tickler(init, err, wd, restarter, 1)
        cache = wait_until(lambda: cache_file(state_dir).exists() and cache_file(state_dir),
                           10, "the cache")
        d = json.loads(cache.read_text())
        d["tables"]["watchdog"]["pet_interval"] = 0.7
        if damage == "garbage":
            cache.write_bytes(b"\x00{not json")
        elif damage == "writable":
            channels.write_json(str(cache), d)
            os.chmod(cache, 0o666)
        else:
            d["key"]["chain_id"] = "another-run"
            channels.write_json(str(cache), d)
        line = restart_tickler(init, err, wd, restarter, 2)
        assert "petting every 0.5 s" in line, line
        assert not fired.is_set()
        # the parse's own copy replaced the damaged one
        wait_until(lambda: (t := cache.read_bytes()) and t.startswith(b"{") and
                   json.loads(t)["tables"]["watchdog"]["pet_interval"] == 0.5
                   and not os.stat(cache).st_mode & 0o022, 10, "a good cache again")


def test_without_a_running_snapshot_nothing_is_cached(tmp_path: Path) -> None:
    """A tickler started by hand (no chain run: no HACHAIN_CHAIN_ID) parses the file and
    keeps nothing."""
    state, persist = tmp_path / "run", tmp_path / "persist"
    cfg = tmp_path / "chain.toml"
    cfg.write_text(f'[chain]\nstate_dir = "{state}"\npersist_dir = "{persist}"\n'
                   '[watchdog]\ndevice = "none"\n')
    env_before = {k: os.environ.pop(k, None) for k in (channels.ENV_CHAIN_ID,
                                                       channels.ENV_STATE_DIR)}
    try:
        got = tickler.load_config(str(cfg))
    finally:
        for k, v in env_before.items():
            if v is not None:
                os.environ[k] = v
    assert got.watchdog.device == "none"
    assert not (state / tickler.TABLES_CACHE).exists()  # load_config writes it at once
