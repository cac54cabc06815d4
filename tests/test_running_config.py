"""The running configuration (issue 15.1, 15.2): the chain runs what it accepted, a file
broken on disk never stops a layer's restart, reload is the only way from file to
snapshot, and a boot with a broken file runs the last-known-good snapshot."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hachain import channels, config, snapshot
from tests.conftest import svc, wait_until
from tests.test_chain import Chain, chain  # noqa: F401 - the fixture

GOOD = """
[chain]
state_dir = "{d}/run"
persist_dir = "{d}/persist"
[watchdog]
device = "none"
[service.a]
command = ["/bin/sleep", "1000"]
"""


def _env(tmp_path: Path, **kw: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HACHAIN_")}
    env.update(kw)
    return env


def test_accept_writes_running_and_last_good_snapshots(tmp_path: Path) -> None:
    f = tmp_path / "chain.toml"
    f.write_text(GOOD.format(d=tmp_path))
    cfg, snap = snapshot.accept(str(f), chain_id="c1", environ=_env(tmp_path))
    assert list(cfg.services) == ["a"] and not snap.fallback
    running = snapshot.read_running(str(tmp_path / "run"))
    lkg = snapshot.read_last_good(str(tmp_path / "persist"))
    assert running == snap and lkg is not None and lkg.text == f.read_text()
    assert running.chain_id == "c1"


def test_broken_file_falls_back_to_last_known_good(tmp_path: Path) -> None:
    f = tmp_path / "chain.toml"
    f.write_text(GOOD.format(d=tmp_path))
    snapshot.accept(str(f), environ=_env(tmp_path))
    f.write_text(GOOD.format(d=tmp_path) + "[service.typo\n")
    env = _env(tmp_path, HACHAIN_PERSIST_DIR=str(tmp_path / "persist"))
    cfg, snap = snapshot.accept(str(f), chain_id="c2", environ=env)
    assert list(cfg.services) == ["a"]
    assert snap.fallback.startswith("chain.toml:9: invalid TOML"), snap.fallback
    d = snapshot.describe(str(tmp_path / "run"))
    assert d["last_known_good"] and d["disk"] == "broken"
    assert d["summary"].startswith("running the last-known-good configuration of ")
    assert "because chain.toml:9: invalid TOML" in d["summary"]
    # reload semantics: no fallback, the error itself, and nothing replaced
    with pytest.raises(config.ConfigError) as e:
        snapshot.accept(str(f), fallback=False, environ=env)
    assert e.value.errors[0].startswith("chain.toml:9:")
    assert snapshot.read_running(str(tmp_path / "run")) == snap


def test_broken_file_without_any_snapshot_is_one_line(tmp_path: Path) -> None:
    f = tmp_path / "chain.toml"
    f.write_text("[service.typo\n")
    env = _env(tmp_path)
    with pytest.raises(config.ConfigError) as e:
        snapshot.accept(str(f), environ=env)
    assert len(e.value.errors) == 1
    assert e.value.errors[0].startswith("chain.toml:1: invalid TOML")
    assert "no last-known-good configuration of" in e.value.errors[0]


def test_damaged_snapshot_is_never_run(tmp_path: Path) -> None:
    """A snapshot whose text does not match its hash (torn, edited) is ignored."""
    f = tmp_path / "chain.toml"
    f.write_text(GOOD.format(d=tmp_path))
    snapshot.accept(str(f), environ=_env(tmp_path))
    lkg_path = tmp_path / "persist" / snapshot.LAST_GOOD
    d = json.loads(lkg_path.read_text())
    d["text"] = d["text"].replace("sleep", "rm")
    lkg_path.write_text(json.dumps(d))
    assert snapshot.read_last_good(str(tmp_path / "persist")) is None


def test_layer_uses_its_runs_snapshot_not_the_file(tmp_path: Path) -> None:
    f = tmp_path / "chain.toml"
    f.write_text(GOOD.format(d=tmp_path))
    env = _env(tmp_path, HACHAIN_CHAIN_ID="run-1", HACHAIN_STATE_DIR=str(tmp_path / "run"))
    snapshot.for_layer(str(f), environ=env)
    f.write_text(GOOD.format(d=tmp_path).replace("[service.a]", "[service.b]"))
    cfg, _ = snapshot.for_layer(str(f), environ=env)
    assert list(cfg.services) == ["a"]  # the same run: the snapshot, not the edit
    assert snapshot.describe(str(tmp_path / "run"))["disk"] == "changed"
    cfg, _ = snapshot.for_layer(str(f), environ=dict(env, HACHAIN_CHAIN_ID="run-2"))
    assert list(cfg.services) == ["b"]  # a new chain run accepts the file anew


def _status(c: Chain) -> dict:
    p = subprocess.run([sys.executable, "-m", "hachain.cli", "status", "--json",
                        "--state-dir", c.state_dir, "--persist-dir", c.persist_dir],
                       capture_output=True, text=True, timeout=30)
    return json.loads(p.stdout)


@pytest.mark.slow
def test_typo_on_disk_then_layer_kills_keep_supervising(chain, tmp_path: Path) -> None:  # noqa: F811
    """The issue's first case: a typo written into the running chain's file, no reload,
    then SIGKILL the restarter and the tickler: both come back from the snapshot, the
    services are re-adopted (same pids), status names the broken file and line, reload
    is refused, and a fixed file reloads."""
    rec = tmp_path / "starts"
    c = chain(f'[service.a]\ncommand = {svc("record", str(rec))}\n'
              f'[service.b]\ncommand = {svc("record", str(rec))}\n')
    before = wait_until(lambda: c.all_ready(2), 30, "a and b ready")
    pids = {n: s["pid"] for n, s in before.items()}
    # "ready" is the spawn (no readiness protocol); each records its start once running
    wait_until(lambda: rec.exists() and len(rec.read_text().split()) == 2, 30,
               "a and b to record their starts")
    good_text = Path(c.config).read_text()
    with open(c.config, "a") as f:
        f.write("[service.typo\n")
    bad_line = good_text.count("\n") + 1
    for layer in ("restarter", "tickler"):
        hb = wait_until(lambda layer=layer: c.hb(layer), 20, f"{layer} heartbeat")
        os.kill(hb.pid, signal.SIGKILL)
        wait_until(lambda layer=layer, old=hb.pid: (h := c.hb(layer)) and h.pid != old
                   and channels.pid_alive(h.pid) and h.restarts >= 1, 20,
                   f"init to restart the {layer}")
    after = wait_until(lambda: c.all_ready(2), 20, "a and b ready again")
    assert {n: s["pid"] for n, s in after.items()} == pids  # re-adopted, never restarted
    assert len(rec.read_text().split()) == 2
    st = _status(c)
    conf = st["chain"]["config"]
    assert conf["disk"] == "broken" and not conf["last_known_good"]
    assert conf["disk_error"].startswith(f"chain.toml:{bad_line}: invalid TOML")
    r = subprocess.run([sys.executable, "-m", "hachain.cli", "reload", "-c", c.config],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and f"chain.toml:{bad_line}" in r.stderr, r.stderr
    assert c.all_ready(2)
    Path(c.config).write_text(good_text + f'[service.c]\ncommand = {svc("record", str(rec))}\n')
    r = subprocess.run([sys.executable, "-m", "hachain.cli", "reload", "-c", c.config],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    wait_until(lambda: c.all_ready(3), 20, "c added by the reload")
    assert _status(c)["chain"]["config"]["disk"] == "same"


@pytest.mark.slow
def test_boot_with_broken_file_runs_last_known_good(chain, tmp_path: Path) -> None:  # noqa: F811
    """The issue's item 2: stop the chain, break its file, start it again: it runs the
    last-known-good snapshot, says so in one line, and status says why."""
    rec = tmp_path / "starts"
    c = chain(f'[service.a]\ncommand = {svc("record", str(rec))}\n')
    wait_until(lambda: c.all_ready(1), 30, "a ready")
    c.close()
    with open(c.config, "a") as f:
        f.write("[service.typo\n")
    env = _env(tmp_path)  # no hint: the file's own [chain] table says where to look
    log = tmp_path / "second.log"
    with open(log, "wb") as out:
        c.proc = subprocess.Popen([sys.executable, "-m", "hachain.cli", "run", "-c", c.config],
                                  stdout=out, stderr=out, env=env)
    c.log = open(tmp_path / "unused.log", "wb")
    wait_until(lambda: c.all_ready(1), 30, "a ready from the last-known-good snapshot")
    lines = [ln for ln in log.read_text().splitlines() if "invalid TOML" in ln]
    assert len(lines) == 1 and "invalid TOML" in lines[0], log.read_text()
    conf = _status(c)["chain"]["config"]
    assert conf["last_known_good"] and "invalid TOML" in conf["because"]
    assert conf["summary"].startswith("running the last-known-good configuration of")


def test_run_with_broken_file_and_no_snapshot_exits_2(tmp_path: Path) -> None:
    f = tmp_path / "chain.toml"
    f.write_text(GOOD.format(d=tmp_path) + "[service.typo\n")
    env = _env(tmp_path, HACHAIN_PERSIST_DIR=str(tmp_path / "persist"))
    p = subprocess.run([sys.executable, "-m", "hachain.cli", "run", "-c", str(f)],
                       capture_output=True, text=True, timeout=30, env=env)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "chain.toml:9: invalid TOML" in lines[0], p.stderr
    assert not (tmp_path / "run" / "hb").exists()  # nothing was started


def test_an_edit_is_judged_once_per_content(tmp_path: Path) -> None:
    """status asks describe() often; a large edited file is validated once per content
    (the verdict is kept by hash), and a new edit is judged afresh."""
    f = tmp_path / "chain.toml"
    f.write_text(GOOD.format(d=tmp_path))
    env = _env(tmp_path, HACHAIN_CHAIN_ID="r", HACHAIN_STATE_DIR=str(tmp_path / "run"))
    snapshot.for_layer(str(f), environ=env)
    run = str(tmp_path / "run")
    f.write_text(GOOD.format(d=tmp_path) + "[service.typo\n")
    assert snapshot.describe(run)["disk"] == "broken"
    cache = tmp_path / "run" / snapshot.DISK_VERDICT
    d = json.loads(cache.read_text())
    d["error"] = "chain.toml:9: from the cache"
    cache.write_text(json.dumps(d))
    assert snapshot.describe(run)["disk_error"] == "chain.toml:9: from the cache"
    f.write_text(GOOD.format(d=tmp_path) + "[service.b]\ncommand = [\"/bin/true\"]\n")
    again = snapshot.describe(run)
    assert again["disk"] == "changed" and again["disk_error"] is None
