"""Start-up cost (issue 19): the layers start from the running snapshot's parsed copy
(snapshot.PARSED) instead of parsing and validating the text again, and only when that
copy is trustworthy and belongs to the very text they run."""

from __future__ import annotations

import os
from typing import Any

import pytest

from hachain import config, snapshot


def write_config(tmp_path: Any, n: int = 3) -> tuple[str, dict[str, str]]:
    state = str(tmp_path / "run")
    body = [f'[chain]\nstate_dir = "{state}"\npersist_dir = "{tmp_path / "persist"}"\n'
            'cgroup_root = "none"\n[watchdog]\ndevice = "none"\n']
    body += [f'[service.s{i}]\ncommand = ["sleep", "{i + 1}"]\n' for i in range(n)]
    path = str(tmp_path / "chain.toml")
    with open(path, "w") as f:
        f.write("".join(body))
    env = {"HACHAIN_CHAIN_ID": "run-1", "HACHAIN_STATE_DIR": state}
    return path, env


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every text snapshot.parse is asked to parse (the real parser still runs)."""
    seen: list[str] = []
    real = config.parse

    def counting(text: str, source: str) -> config.Config:
        seen.append(source)
        return real(text, source)

    monkeypatch.setattr(config, "parse", counting)
    return seen


def test_a_layer_starts_from_the_parsed_copy(tmp_path: Any, parses: list[str]) -> None:
    path, env = write_config(tmp_path)
    cfg, snap = snapshot.accept(path, chain_id="run-1")
    assert len(parses) == 1
    assert os.path.exists(os.path.join(env["HACHAIN_STATE_DIR"], snapshot.PARSED))
    layer_cfg, layer_snap = snapshot.for_layer(path, environ=env)
    assert len(parses) == 1  # not parsed again
    assert layer_snap.sha256 == snap.sha256
    assert layer_cfg == cfg
    assert sorted(layer_cfg.services) == ["s0", "s1", "s2"]


def test_env_overrides_still_apply_to_the_parsed_copy(tmp_path: Any, parses: list[str]) -> None:
    path, env = write_config(tmp_path)
    snapshot.accept(path, chain_id="run-1")
    other = str(tmp_path / "elsewhere")
    cfg, _ = snapshot.for_layer(path, environ={**env, "HACHAIN_PERSIST_DIR": other})
    assert cfg.chain.persist_dir == other
    assert len(parses) == 1


@pytest.mark.parametrize("spoil", ["group-writable", "damaged", "other text", "other code"])
def test_an_untrusted_or_foreign_copy_is_not_used(tmp_path: Any, parses: list[str],
                                                  spoil: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path, env = write_config(tmp_path)
    cfg, _ = snapshot.accept(path, chain_id="run-1")
    parsed = os.path.join(env["HACHAIN_STATE_DIR"], snapshot.PARSED)
    if spoil == "group-writable":
        os.chmod(parsed, 0o664)
    elif spoil == "damaged":
        with open(parsed, "r+b") as f:
            f.seek(10)
            f.write(b"\xff" * 40)
    elif spoil == "other text":  # the copy of an earlier text of the same file
        keep = open(parsed, "rb").read()
        with open(path, "a") as f:
            f.write('[service.late]\ncommand = ["sleep", "9"]\n')
        snapshot.accept(path, chain_id="run-1")
        with open(parsed, "wb") as f:
            f.write(keep)
        cfg = snapshot.parse(open(path).read(), os.path.abspath(path))
    else:  # config.py changed on disk since the copy was written
        monkeypatch.setattr(snapshot, "_code_tag", lambda: "config:0:0")
    before = len(parses)
    layer_cfg, _ = snapshot.for_layer(path, environ=env)
    assert len(parses) == before + 1  # parsed from the text instead
    assert layer_cfg == cfg
