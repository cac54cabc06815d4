"""Configuration: good files parse, bad ones name file, line, key and what was expected."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hachain import config

GOOD = """\
[chain]
state_dir = "/run/hachain"

[watchdog]
device = "sim"
timeout = 10
pet_interval = 2

[service.db]
command = ["/usr/bin/mydb", "--foreground"]
ready = "notify"
critical = true

[service.web]
command = ["/usr/bin/web"]
requires = ["db"]
restart = "always"
backoff = { initial = 0.1, factor = 2.0, max = 30 }
intensity = { max_restarts = 5, window = 60, action = "maintenance" }
"""


def test_design_example_parses():
    c = config.parse(GOOD, "chain.toml")
    assert c.services["web"].requires == ("db",)
    assert c.services["db"].critical and c.services["db"].ready == "notify"
    assert c.watchdog.device == "sim"


@pytest.mark.parametrize("patch,expected", [
    (("factor = 2.0", "factor = 0.5"),
     "chain.toml:18: service.web.backoff.factor: must be >= 1, got 0.5"),
    (('ready = "notify"', 'ready = "notfy"'),
     "chain.toml:11: service.db.ready: must be one of"),
    (('requires = ["db"]', 'requires = ["dbb"]'),
     "chain.toml:16: service.web.requires: unknown service \"dbb\" (did you mean \"db\"?)"),
    (("timeout = 10", "timeout = 0"), "chain.toml:6: watchdog.timeout: must be >= 1, got 0"),
    (("critical = true", "critical = 1"), "chain.toml:12: service.db.critical: must be true or false"),
    (('command = ["/usr/bin/web"]', 'command = "/usr/bin/web"'),
     "chain.toml:15: service.web.command: must be an argv list"),
    (("restart = \"always\"", "restar = \"always\""),
     "chain.toml:17: service.web.restar: unknown key"),
])
def test_errors_name_file_line_key(patch, expected):
    with pytest.raises(config.ConfigError) as ei:
        config.parse(GOOD.replace(*patch), "chain.toml")
    assert any(e.startswith(expected) for e in ei.value.errors), ei.value.errors


def test_cycle_is_spelled_out():
    bad = GOOD.replace('ready = "notify"', 'ready = "notify"\nrequires = ["web"]')
    with pytest.raises(config.ConfigError) as ei:
        config.parse(bad, "chain.toml")
    assert any("dependency cycle: db -> web -> db" in e for e in ei.value.errors)


def test_invalid_toml_has_line():
    with pytest.raises(config.ConfigError) as ei:
        config.parse(GOOD + "\n[service.x\n", "chain.toml")
    assert ei.value.errors[0].startswith("chain.toml:21: invalid TOML")


def test_check_command_exit_codes(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text(GOOD)
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace("factor = 2.0", "factor = 0.5"))
    r = subprocess.run([sys.executable, "-m", "hachain.cli", "check", "-c", str(good)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "OK" in r.stdout
    r = subprocess.run([sys.executable, "-m", "hachain.cli", "check", "-c", str(bad)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert "bad.toml:18: service.web.backoff.factor: must be >= 1, got 0.5" in r.stderr
    r = subprocess.run([sys.executable, "-m", "hachain.cli", "check", "-c",
                        str(tmp_path / "missing.toml")], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2 and "cannot read configuration" in r.stderr


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_random_text_never_crashes_the_parser(text):
    try:
        config.parse(text, "x.toml")
    except config.ConfigError as e:
        assert all(line.startswith("x.toml") for line in e.errors)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(config._SVC_KEYS)),
                       st.one_of(st.integers(-5, 5), st.text(max_size=5), st.booleans(),
                                 st.lists(st.text(max_size=3), max_size=3)), max_size=6))
def test_random_service_tables_give_errors_not_crashes(table):
    import json
    body = "\n".join(f"{k} = {json.dumps(v)}" for k, v in table.items())
    try:
        config.parse("[service.a]\n" + body + "\n", "x.toml")
    except config.ConfigError as e:
        assert all(line.startswith("x.toml") for line in e.errors)


def test_success_exit_codes_are_kept():
    c = config.parse(GOOD + "success_exit = [0, 3]\n", "chain.toml")
    assert c.services["web"].success_exit == (0, 3)
    with pytest.raises(config.ConfigError) as ei:
        config.parse(GOOD + "success_exit = [0, 300]\n", "chain.toml")
    assert "service.web.success_exit: must be <= 255, got 300" in str(ei.value)


@pytest.mark.parametrize("value, size", [
    ('"512M"', 512 << 20), ('"1g"', 1 << 30), ('"64K"', 64 << 10), ("1048576", 1 << 20),
    ('"2T"', 2 << 40), ('"infinity"', 0), ("0", 0), ('"4096"', 4096),
])
def test_memory_max_reads_sizes_as_systemd_writes_them(value, size):
    c = config.parse(GOOD + f"memory_max = {value}\n", "chain.toml")
    assert c.services["web"].memory_max == size


@pytest.mark.parametrize("value", ['"50%"', '"1.5G"', '"12Q"', "-1", "true", '""', '"M"',
                                   '"2000T"'])
def test_memory_max_refuses_what_is_no_size(value):
    with pytest.raises(config.ConfigError) as ei:
        config.parse(GOOD + f"memory_max = {value}\n", "chain.toml")
    (line,) = ei.value.errors
    assert line.startswith("chain.toml:20: service.web.memory_max: must be a size: bytes as "
                           "an integer, or a string with K, M, G or T"), line


def test_state_dir_too_long_for_a_socket_is_a_config_error():
    long_dir = "/run/" + "x" * 100
    with pytest.raises(config.ConfigError) as ei:
        config.parse(GOOD.replace('state_dir = "/run/hachain"', f'state_dir = "{long_dir}"'),
                     "chain.toml")
    assert "chain.toml:2: chain.state_dir: too long for the chain's Unix sockets" in str(ei.value)
    c = config.parse(GOOD, "chain.toml")
    with pytest.raises(config.ConfigError) as ei:
        config.with_env_overrides(c, {"HACHAIN_STATE_DIR": long_dir})
    assert "HACHAIN_STATE_DIR: too long" in str(ei.value)
