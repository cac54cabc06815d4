"""The layering rules, held by tests: what each layer may import."""

from __future__ import annotations

import ast
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "hachain")


def imports_of(path: str) -> set[str]:
    tree = ast.parse(open(path).read())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "hachain":  # from hachain import channels
                out |= {f"hachain.{a.name}" for a in node.names}
            else:
                out.add(node.module)
    return out


def files(sub: str) -> list[str]:
    d = os.path.join(ROOT, sub)
    return [os.path.join(d, f) for f in os.listdir(d) if f.endswith(".py")]


# standard modules of another CPython than this one, imported where this one's is missing:
# CPython 3.12 renamed the built-in SHA-256 module `_sha256` to `_sha2`
OTHER_PYTHONS = {"_sha2"}


def test_channels_is_stdlib_only():
    bad = {m for m in imports_of(os.path.join(ROOT, "channels.py"))
           if m.split(".")[0] not in sys.stdlib_module_names | OTHER_PYTHONS
           and m != "__future__"}
    assert bad == set()


def test_classcache_is_stdlib_only():
    """Every process that builds dataclasses imports it first (hachain/classcache.py)."""
    bad = {m for m in imports_of(os.path.join(ROOT, "classcache.py"))
           if m.split(".")[0] not in sys.stdlib_module_names
           and m not in ("__future__", "hachain.classcache")}
    assert bad == set()


def test_init_imports_only_stdlib_and_channels():
    """init uses the standard library and hachain.channels, and hachain.bootrecord on the
    thread that writes the reason when it gives up on the tickler (imported there only)."""
    for f in files("init"):
        for m in imports_of(f):
            top = m.split(".")[0]
            assert top in sys.stdlib_module_names or m in (
                "hachain.channels", "hachain.bootrecord", "__future__"), f"{f} imports {m}"


def test_bootrecord_imports_only_stdlib_and_channels():
    """So that init may import it."""
    for m in imports_of(os.path.join(ROOT, "bootrecord.py")):
        assert m.split(".")[0] in sys.stdlib_module_names or m in (
            "hachain.channels", "__future__"), f"bootrecord.py imports {m}"


def test_policy_and_states_do_no_io():
    for name in ("policy.py", "states.py", "graph.py", "core.py"):
        mods = imports_of(os.path.join(ROOT, "restarter", name))
        for forbidden in ("os", "subprocess", "socket", "time", "selectors"):
            assert forbidden not in mods, f"restarter/{name} imports {forbidden}"


def test_machine_check_verdicts_do_no_io():
    """hachain/checks.py judges what the restarter's machine module read: pure."""
    mods = imports_of(os.path.join(ROOT, "checks.py"))
    for forbidden in ("os", "subprocess", "socket", "time", "selectors", "threading"):
        assert forbidden not in mods, f"checks.py imports {forbidden}"


def test_restarter_does_not_import_other_layers():
    for f in files("restarter"):
        for m in imports_of(f):
            assert not m.startswith(("hachain.init", "hachain.watchdog", "hachain.simulators")), \
                f"{f} imports {m}"


def _names_outside_channels() -> list[str]:
    """Every string constant in hachain/ (all sub-packages) outside channels.py that is an
    environment variable name of the chain (HACHAIN_*, alone or as `NAME=`) or the bare
    name of a file the chain keeps in state_dir / persist_dir: those live in channels.py.
    The simulators are not held to it: they look at a chain from outside, as a user's
    harness would, and spell what they look for."""
    env = re.compile(r"^\$?HACHAIN_[A-Z0-9_]+=?$")
    fname = re.compile(r"^[\w.-]+\.(sock|lock|json|jsonl)$")
    out = []
    for d, _, fs in os.walk(ROOT):
        if os.path.relpath(d, ROOT).split(os.sep)[0] == "simulators":
            continue
        for f in fs:
            path = os.path.join(d, f)
            if not f.endswith(".py") or path == os.path.join(ROOT, "channels.py"):
                continue
            for node in ast.walk(ast.parse(open(path).read())):
                if isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)):
                    v = node.value.decode("latin-1") if isinstance(node.value, bytes) \
                        else node.value
                    if env.match(v) or fname.match(v):
                        out.append(f"{os.path.relpath(path, ROOT)}:{node.lineno}: {v!r}")
    return out


def test_channel_and_environment_names_live_in_channels():
    assert _names_outside_channels() == []


def test_the_names_check_sees_a_stray_name(tmp_path, monkeypatch):
    (tmp_path / "watchdog").mkdir()
    (tmp_path / "channels.py").write_text('ENV_X = "HACHAIN_X"\n')
    (tmp_path / "watchdog" / "t.py").write_text('A = "HACHAIN_X"\nB = "x.lock"\n'
                                                'C = "see $HACHAIN_X in the docs"\n')
    monkeypatch.setattr(sys.modules[__name__], "ROOT", str(tmp_path))
    assert _names_outside_channels() == ["watchdog/t.py:1: 'HACHAIN_X'",
                                         "watchdog/t.py:2: 'x.lock'"]


def test_nothing_imports_the_cli():
    """hachain.cli imports the sub-command modules to build its parser; none of them (nor
    the simulators) imports it back: what they share is in hachain.cmdline and
    hachain.status. (hachain/entry.py, the console scripts' entry point, is what starts
    it.)"""
    paths = [os.path.join(d, f) for d, _, fs in os.walk(ROOT)  # (hachain/simulators too)
             for f in fs if f.endswith(".py")]
    assert len(paths) > 20
    bad = [p for p in paths if p not in (os.path.join(ROOT, "cli.py"),
                                         os.path.join(ROOT, "entry.py"))
           and "hachain.cli" in imports_of(p)]
    assert bad == []


def test_watchdog_layer_imports_no_other_layer():
    """The tickler and the device code stand apart from the restarter, init, the logger, the
    simulators and the CLI: the tickler must keep petting (or stop) whatever they do."""
    for f in files("watchdog"):
        for m in imports_of(f):
            assert not m.startswith(("hachain.restarter", "hachain.init", "hachain.logger",
                                     "hachain.simulators", "hachain.cli")), \
                f"{f} imports {m}"


def test_the_health_gate_is_pure():
    """watchdog/health.py decides the gate from heartbeats it is given (verify drives it)."""
    mods = imports_of(os.path.join(ROOT, "watchdog", "health.py"))
    for forbidden in ("os", "subprocess", "socket", "selectors"):
        assert forbidden not in mods, f"watchdog/health.py imports {forbidden}"
