"""What the long-lived layers keep in memory (issue 19): the tickler parses the
configuration in a short-lived child and never imports the configuration code itself."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from hachain import config
from hachain.watchdog import tickler

HEAVY = ("hachain.config", "hachain.schema", "hachain.snapshot", "tomllib", "dataclasses",
         "inspect", "hashlib")


def test_the_tickler_module_imports_no_configuration_code() -> None:
    out = subprocess.run(
        [sys.executable, "-S", "-c", "import json, sys; import hachain.watchdog.tickler; "
         "print(json.dumps(sorted(sys.modules)))"],
        capture_output=True, text=True, timeout=60, check=True)
    mods = set(json.loads(out.stdout))
    assert "hachain.watchdog.tickler" in mods
    assert not mods & set(HEAVY), sorted(mods & set(HEAVY))


def test_load_config_gives_the_tickler_the_same_tables(tmp_path: Any) -> None:
    path = tmp_path / "chain.toml"
    path.write_text(f'[chain]\nstate_dir = "{tmp_path / "run"}"\n'
                    f'persist_dir = "{tmp_path / "persist"}"\ncgroup_root = "none"\n'
                    'heartbeat_interval = 0.7\nboot_loop = { resets = 4, window = 99 }\n'
                    '[watchdog]\ndevice = "none"\npet_interval = 1.5\ntimeout = 17\n'
                    '[service.a]\ncommand = ["sleep", "1"]\n')
    want = config.load(str(path))
    got = tickler.load_config(str(path))
    assert got.path == want.path
    assert got.services == {}
    assert got.cluster is None
    assert vars(got.chain) | {"boot_loop": None} == \
        vars(want.chain) | {"boot_loop": None}
    assert vars(got.chain.boot_loop) == vars(want.chain.boot_loop)
    assert got.chain.boot_loop.resets == 4
    assert vars(got.watchdog) == vars(want.watchdog)
    assert got.watchdog.pet_interval == 1.5 and got.watchdog.timeout == 17


def test_the_restarter_starts_without_the_toml_parser() -> None:
    """The restarter starts from the parsed snapshot: tomllib is imported only when a
    text is parsed (a reload, or no snapshot yet)."""
    out = subprocess.run(
        [sys.executable, "-S", "-c", "import json, sys; import hachain.restarter.__main__; "
         "print(json.dumps(sorted(sys.modules)))"],
        capture_output=True, text=True, timeout=60, check=True)
    mods = set(json.loads(out.stdout))
    assert "hachain.restarter.loop" in mods
    assert "tomllib" not in mods


# what a layer must not load for its command line or its small hashes: shutil brings the
# bz2 and lzma libraries, hashlib OpenSSL (about 2 MB of PSS in each of the chain's layers)
NOT_FOR_A_LINE = ("shutil", "bz2", "lzma", "hashlib", "_hashlib")


def test_the_layers_parse_their_command_line_without_shutil_or_openssl() -> None:
    for module in ("hachain.init.main", "hachain.restarter", "hachain.watchdog.tickler"):
        code = ("import contextlib, io, json, runpy, sys\n"
                f"sys.argv = [{module!r}, '--help']\n"
                "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
                "    try:\n"
                f"        runpy.run_module({module!r}, run_name='__main__')\n"
                "    except SystemExit:\n"
                "        pass\n"
                "assert 'usage:' in out.getvalue(), out.getvalue()\n"
                "from hachain import channels, snapshot\n"
                "name = channels.cgroup_name('/run/hachain')\n"
                "print(json.dumps([name, snapshot.digest('x'), sorted(sys.modules)]))")
        out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, (module, out.stderr)
        name, digest, mods = json.loads(out.stdout)
        assert not set(mods) & set(NOT_FOR_A_LINE), (module, sorted(set(mods) & set(NOT_FOR_A_LINE)))
        # the same hashes as hashlib's
        import hashlib
        import os
        real = os.path.realpath("/run/hachain")
        assert name.endswith("-" + hashlib.sha256(real.encode()).hexdigest()[:8])
        assert digest == hashlib.sha256(b"x").hexdigest()
