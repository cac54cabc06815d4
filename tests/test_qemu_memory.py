"""A service that leaks memory, on a real kernel: `memory_max` holds the leak inside the
service's own cgroup (the kernel's OOM killer ends it there), the restarter says `out of
memory` in its exit, and nothing else on the machine notices: no other service restarts,
no layer, no reset.

This host binds the memory controller to cgroup v1 (a hybrid hierarchy), so the limit
can only be proven where cgroup v2 has it: the QEMU guest mounts a pure cgroup2. The
leak is added to a running chain with `hachain reload`, as an operator would add it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from hachain.simulators.qemu.chain import (
    ChainSettings,
    ChainVM,
    chain_config,
)

pytestmark = pytest.mark.qemu

LIMIT = 48 << 20  # above a Python's own start (~10 MB charged), far below the guest's 512 MB
# The leaker grows by 1 MiB every 2 ms and sends nothing: it reaches the limit in well
# under a second once its interpreter runs.
LEAK = ("import time\nheap = []\nwhile True:\n    heap.append(bytearray(1 << 20))\n"
        "    time.sleep(0.002)\n")



def test_a_leak_ends_inside_its_memory_max_and_nothing_else_notices(
        chain_vm: Callable[..., ChainVM], record_property: Callable[[str, object], None]) -> None:
    # The emulated device's timeout is this test's set-up, not what it checks: 20 s, as
    # the QEMU campaign's, for a TCG guest the slow lane's other workers starve (CI: a
    # reset right after the tickler armed the default 10 s, before its first pet)
    cvm = chain_vm(ChainSettings(timeout=20))
    cvm.boot()
    assert "memory" in cvm.read("/sys/fs/cgroup/cgroup.controllers").split(), \
        "the guest kernel's cgroup2 offers no memory controller"
    before = cvm.status()
    base = {n: (s["pid"], s["restarts"]) for n, s in before["services"].items()}
    # (a JSON array of strings is a TOML array: the source's newlines come escaped)
    text = chain_config(cvm.settings, cvm.python) + (
        f'\n[service.leaker]\ncommand = {json.dumps([cvm.python, "-S", "-c", LEAK])}\n'
        f'memory_max = "{LIMIT >> 20}M"\n'
        'backoff = { initial = 1.0, factor = 1.0, max = 1.0 }\n'
        'intensity = { action = "ignore" }\n')
    cvm.vm.put_file("chain.toml", text)
    rc, out = cvm.cli("reload")
    assert rc == 0 and "added ['leaker']" in out, out

    # The restarter's exit of the leaker says out of memory; a bound on what this
    # machine does: the guest's Python start under TCG, the leak, the kill, the status.
    deadline = time.monotonic() + cvm.scaled(120)
    st: dict[str, Any] = {}
    while time.monotonic() < deadline:
        st = cvm.status()
        last = st["services"].get("leaker", {}).get("last_exit") or {}
        if last.get("oom"):
            break
    leak = st["services"]["leaker"]
    assert (leak["last_exit"] or {}).get("oom") is True, (leak, cvm.vm._tail(40))
    assert leak["last_exit"]["text"] == "killed by SIGKILL (out of memory: memory_max reached)"
    assert leak["restarts"] >= 1
    cg = st["chain"]["restarter"]["cgroups"]
    assert cvm.read(f"{cg}/leaker/memory.max") == str(LIMIT)
    assert int(dict(ln.split() for ln in cvm.read(f"{cg}/leaker/memory.events")
                    .splitlines())["oom_kill"]) >= 1
    assert f"leaker: memory.max = {LIMIT}" in cvm.vm.console

    # Nothing else noticed: the same pids, no restart, every layer alive, one boot.
    assert {n: (s["pid"], s["restarts"]) for n, s in st["services"].items()
            if n != "leaker"} == base
    assert {k: v["state"] for k, v in st["chain"]["layers"].items()} == {
        "init": "alive", "restarter": "alive", "tickler": "alive"}
    assert cvm.vm.boot_count == 1

    # A reload that changes the limit writes it again (the leaker restarts with it)
    cvm.vm.put_file("chain.toml", text.replace(f'"{LIMIT >> 20}M"', '"64M"'))
    rc, out = cvm.cli("reload")
    assert rc == 0 and "changed ['leaker']" in out, out
    deadline = time.monotonic() + cvm.scaled(60)
    while cvm.read(f"{cg}/leaker/memory.max") != str(64 << 20):
        assert time.monotonic() < deadline, "memory.max was not written again on reload"
        time.sleep(0.5)

    # `hachain status leaker` says so, and stopping it leaves a healthy chain
    rc, out = cvm.cli("status", "leaker", "-n", "0")
    assert "out of memory: memory_max reached" in out, out
    (mem,) = [ln for ln in out.splitlines() if ln.startswith("  memory:")]
    assert " of memory_max 64.0 MiB, " in mem and mem.endswith(" OOM kill(s)"), out
    rc, out = cvm.cli("stop", "leaker")
    assert rc == 0, out
    record_property("leaker_restarts", leak["restarts"])
