"""The layering rules, held by tests: what each layer may import."""

from __future__ import annotations

import ast
import os
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


def test_channels_is_stdlib_only():
    bad = {m for m in imports_of(os.path.join(ROOT, "channels.py"))
           if m.split(".")[0] not in sys.stdlib_module_names and m != "__future__"}
    assert bad == set()


def test_init_imports_only_stdlib_and_channels():
    for f in files("init"):
        for m in imports_of(f):
            top = m.split(".")[0]
            assert top in sys.stdlib_module_names or m == "hachain.channels" or \
                m == "__future__", f"{f} imports {m}"


def test_policy_and_states_do_no_io():
    for name in ("policy.py", "states.py", "graph.py"):
        mods = imports_of(os.path.join(ROOT, "restarter", name))
        for forbidden in ("os", "subprocess", "socket", "time", "selectors"):
            assert forbidden not in mods, f"restarter/{name} imports {forbidden}"


def test_restarter_does_not_import_other_layers():
    for f in files("restarter"):
        for m in imports_of(f):
            assert not m.startswith(("hachain.init", "hachain.watchdog", "hachain.simulators")), \
                f"{f} imports {m}"
