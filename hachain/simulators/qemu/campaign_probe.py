"""The QEMU chaos campaign's probe, run inside the guest:
`python -m hachain.simulators.qemu.campaign_probe SPEC_JSON`; prints one JSON object.

spec: state_dir, persist_dir, services [names], heartbeat_timeout, timeout, settle, poll,
      wait (bool), marker, fault (optional): {index, kind, target, signal (number) |
      sysrq (letter) | clock_step (seconds)}.

It injects the fault (after a console line that dates it on the host's clock), waits
until the victim has a new pid, then until the chain holds every invariant for `settle`
seconds. Like guest_probe.py it runs from the checkout that the guest sees read-only.
Exit status: 0 converged (or no wait), 1 not converged in time, 3 no process to fault.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from hachain.simulators import converge
from hachain.simulators.qemu.guest_probe import console_line
from hachain.status import gather_status


def problems(spec: dict[str, Any], st: dict[str, Any], procs: list[converge.Proc]) -> list[str]:
    """Every invariant the guest breaks, by the one predicate (hachain/simulators/converge.py):
    the layers, the gate, every service ready with exactly one main process, the one
    the restarter reports, and no process of a service nobody configured."""
    want = converge.Want({n: converge.ServiceWant() for n in spec["services"]},
                         spec["heartbeat_timeout"], strangers=True)
    return converge.problems(converge.seen_of_status(st, procs), want)


def target_pid(st: dict[str, Any], target: str) -> int | None:
    if target in ("init", "kernel", "clock"):
        return 1
    if target in st["chain"]["layers"]:
        pid: int | None = st["chain"]["layers"][target].get("pid")
        return pid
    pid = st["services"].get(target, {}).get("pid")
    return pid


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    out: dict[str, Any] = {"fault": None}
    fault = spec.get("fault")
    old = None
    if fault:
        st0 = gather_status(spec["state_dir"], spec["persist_dir"])
        old = target_pid(st0, fault["target"])
        out["fault"] = {"pid": old}
        if old is None:
            out["error"] = f"{fault['target']}: no pid to signal"
            print(json.dumps(out))
            return 3
        line = (f"\n{spec['marker']} {fault['index']} {fault['kind']} {fault['target']} "
                f"pid {old}\n")
        sys.stdout.flush()
        # dates the fault on the host's clock; it survives a reset. Drained before the
        # fault: a sysrq crash's printk cut a queued marker in two in CI
        # ("HACHAIN-CAMPAIGN[ 56.52] sysrq: Trigger a crash") and the host never saw it
        console_line(line)
        start = time.monotonic()
        if fault.get("sysrq"):
            with open("/proc/sysrq-trigger", "w") as f:
                f.write(fault["sysrq"])
        elif fault.get("clock_step"):
            # the guest's own wall clock (the host's is never touched)
            time.clock_settime(time.CLOCK_REALTIME, time.time() + float(fault["clock_step"]))
        else:
            os.kill(old, int(fault["signal"]))
    else:
        start = time.monotonic()
    if not spec.get("wait", True):
        print(json.dumps(out))
        return 0
    # a clock step has no victim
    detect = 0.0 if not fault or fault.get("clock_step") else None
    first_ok = None
    converged = None
    why = ["not sampled"]
    polls = 0
    while True:
        st = gather_status(spec["state_dir"], spec["persist_dir"])
        procs = converge.machine_procs(None)
        mains: dict[str, list[int]] = {n: [] for n in spec["services"]} | \
            converge.mains(procs)
        now = time.monotonic()
        polls += 1
        if detect is None:
            pid = target_pid(st, fault["target"])
            if pid is not None and pid != old:
                detect = now - start
            why = [f"{fault['target']}: still pid {old}"]
        if detect is not None:
            why = problems(spec, st, procs)
            if why:
                first_ok = None
            elif first_ok is None:
                first_ok = now
            elif now - first_ok >= spec["settle"]:
                converged = first_ok - start
                break
        if now - start > spec["timeout"]:
            break
        time.sleep(spec["poll"])
    out.update(ready=converged is not None, problems=[] if converged is not None else why,
               detect=None if detect is None else round(detect, 3),
               converge=None if converged is None else round(converged, 3), polls=polls,
               mains=mains, layers={k: v.get("pid") for k, v in st["chain"]["layers"].items()},
               last_boot=st["chain"].get("last_boot"),
               restarts={n: s.get("restarts") for n, s in st["services"].items()})
    print(json.dumps(out))
    return 0 if converged is not None else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
