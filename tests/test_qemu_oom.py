"""The machine runs out of memory, on a real kernel: the chain's own processes run at
`[chain] oom_score_adj` (-900 by default), each service at its own, and the kernel's
OOM killer takes what ranks highest (a service set to go first, the one that ate the
memory), never a layer: no layer restarts, no other service notices, no reset.

The guest is where this can be proven: its root has CAP_SYS_RESOURCE, which lowering a
value needs and this host's container withholds (tests/test_oom_score.py covers every
spawn path here with values it may set).
"""

from __future__ import annotations

import json
import re
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

# Runs in the guest: every process's command line, oom_score_adj and oom_score.
PROCS = """\
import json, os
out = {}
for e in os.listdir("/proc"):
    if not e.isdigit():
        continue
    try:
        with open(f"/proc/{e}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\\0", b" ").decode(errors="replace").strip()
        with open(f"/proc/{e}/oom_score_adj") as f:
            adj = int(f.read())
        with open(f"/proc/{e}/oom_score") as f:
            score = int(f.read())
    except OSError:
        continue
    if cmd:
        out[e] = [cmd, adj, score]
print(json.dumps(out))
"""
LAYERS = ("hachain.init.main", "hachain.restarter", "hachain.watchdog.tickler",
          "hachain.logger")
# 4 MiB every 2 ms, no limit of its own: the guest's 512 MB are gone in well under a
# second once the interpreter runs
HOG = ("import time\nheap = []\nwhile True:\n    heap.append(bytearray(4 << 20))\n"
       "    time.sleep(0.002)\n")



def _procs(cvm: ChainVM) -> dict[int, tuple[str, int, int]]:
    rc, out = cvm.vm.run([cvm.python, "-S", "-c", PROCS], timeout=cvm.scaled(60))
    assert rc == 0, out
    return {int(k): (v[0], v[1], v[2]) for k, v in json.loads(out[out.index("{"):]).items()}


def _layers(procs: dict[int, tuple[str, int, int]]) -> dict[int, tuple[str, int, int]]:
    return {p: v for p, v in procs.items() if any(f"-m {m}" in v[0] for m in LAYERS)}


def test_the_machine_out_of_memory_loses_the_hog_never_a_layer(
        chain_vm: Callable[..., ChainVM], record_property: Callable[[str, object], None]) -> None:
    # The emulated device's timeout is this test's set-up, not what it checks: 20 s, as
    # the QEMU campaign's, for a TCG guest the slow lane's other workers starve (CI: a
    # reset right after the tickler armed the default 10 s, before its first pet)
    cvm = chain_vm(ChainSettings(timeout=20))
    cvm.boot()
    text = chain_config(cvm.settings, cvm.python) + (
        '\n[service.batch]\ncommand = ["/bin/sleep", "86403"]\noom_score_adj = 800\n'
        '\n[service.db]\ncommand = ["/bin/sleep", "86404"]\noom_score_adj = -500\n')
    cvm.vm.put_file("chain.toml", text)
    rc, out = cvm.cli("reload")
    assert rc == 0 and "added ['batch', 'db']" in out, out
    deadline = time.monotonic() + cvm.scaled(60)
    st = cvm.status()
    while not all(st["services"].get(n, {}).get("state") == "ready" for n in ("batch", "db")):
        assert time.monotonic() < deadline, st["services"]
        st = cvm.status()
    pids = {n: s["pid"] for n, s in st["services"].items()}

    procs = _procs(cvm)
    layers = _layers(procs)
    # init (PID 1), the restarter (and its standby), the tickler, the logger
    assert 1 in layers and len(layers) >= 4, layers
    assert all(adj == -900 for _cmd, adj, _score in layers.values()), layers
    want = {"sleeper": 0, "notifier": 0, "worker": 0, "batch": 800, "db": -500}
    assert {n: procs[pids[n]][1] for n in want} == want
    # what that means to the OOM killer: every layer ranks below every service at 0 or more
    worst_layer = max(score for _c, _a, score in layers.values())
    least_service = min(procs[pids[n]][2] for n, adj in want.items() if adj >= 0)
    assert worst_layer < least_service, (layers, {n: procs[pids[n]] for n in want})
    record_property("layer_oom_scores", sorted(s for _c, _a, s in layers.values()))
    print(f"oom_score: layers {sorted(s for _c, _a, s in layers.values())}, services "
          f"{ {n: procs[pids[n]][2] for n in want} }")

    # A service with no memory_max eats the machine's memory.
    before = {n: (s["pid"], s["restarts"]) for n, s in st["services"].items()}
    cvm.vm.put_file("chain.toml", text + (
        f'\n[service.hog]\ncommand = {json.dumps([cvm.python, "-S", "-c", HOG])}\n'
        'restart = "never"\n'))
    rc, out = cvm.cli("reload")
    assert rc == 0 and "added ['hog']" in out, out
    deadline = time.monotonic() + cvm.scaled(120)
    hog: dict[str, Any] = {}
    while time.monotonic() < deadline:
        hog = cvm.status()["services"].get("hog", {})
        if (hog.get("last_exit") or {}).get("kind") == "killed":
            break
    # its cgroup counted the kill (memory.events oom_kill): the exit says whose it was
    assert (hog.get("last_exit") or {}).get("text") == \
        "killed by SIGKILL (out of memory: the machine's OOM killer)", hog
    assert hog["last_exit"]["oom"] is True
    console = cvm.vm.console
    killed = re.findall(r"Out of memory: Killed process (\d+) \(([^)]*)\)", console)
    assert killed, cvm.vm._tail(60)
    victims = {int(p) for p, _comm in killed}
    assert not victims & set(layers), (killed, layers)  # never a layer
    # the kernel takes what ranks highest: batch (oom_score_adj 800) before even the hog,
    # as configured, then the hog (python); never db, nor the services at 0
    assert victims - {pids["batch"]}, killed  # the hog itself went
    assert all(comm == "python" for p, comm in killed if int(p) != pids["batch"]), killed
    assert not victims & {pids[n] for n in ("db", "sleeper", "notifier", "worker")}, killed

    st = cvm.status()
    assert {n: (s["pid"], s["restarts"]) for n, s in st["services"].items()
            if n not in ("hog", "batch")} == {n: v for n, v in before.items() if n != "batch"}
    if pids["batch"] in victims:  # its policy (restart = "always") brought it back
        deadline = time.monotonic() + cvm.scaled(60)
        while st["services"]["batch"]["state"] != "ready" or \
                st["services"]["batch"]["pid"] == pids["batch"]:
            assert time.monotonic() < deadline, st["services"]["batch"]
            st = cvm.status()
        assert st["services"]["batch"]["last_exit"]["text"] == \
            "killed by SIGKILL (out of memory: the machine's OOM killer)"
    assert {k: v["state"] for k, v in st["chain"]["layers"].items()} == {
        "init": "alive", "restarter": "alive", "tickler": "alive"}
    assert set(_layers(_procs(cvm))) == set(layers)  # the very same processes
    assert cvm.vm.boot_count == 1
    record_property("oom_victims", sorted(victims))
