"""The chain scenarios' probe, run inside the guest:
`python -m hachain.simulators.qemu.guest_probe SPEC_JSON`; prints one JSON object.

spec: state_dir, persist_dir, services {name: argv}, heartbeat_timeout, timeout,
      fault (optional): {"layer": L | "pid": N, "signal": "SIGSTOP", "plus": 0},
      wait (bool): poll until ready (else return right after the fault).

The guest's root is the host's, read-only, so the guest's Python (the checkout's venv)
imports this module and hachain from the checkout. It imports nothing of the harness.
Exit status: 0 ready (or no wait), 1 not ready in time, 3 no process to fault.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

from hachain import channels
from hachain.simulators import converge
from hachain.status import gather_status


def procs(argv: list[str]) -> list[int]:
    """Pids whose command line is exactly `argv`."""
    want = "\0".join(argv)
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read().decode(errors="replace").rstrip("\0")
        except OSError:
            continue
        if cmd == want:
            found.append(int(name))
    return sorted(found)


def console_line(text: str) -> None:
    """A line on the console: it dates the fault on the host's clock (survives a reset).
    Returns once the line has left the serial port (tcdrain): a fault sent while it was
    still queued in the tty could panic the kernel, whose messages go out first and cut
    the line in two (seen under load: "HACHAIN-CHAIN-FA" ... panic ... "ULT pid 1")."""
    try:
        fd = os.open("/dev/console", os.O_WRONLY | os.O_NOCTTY)
    except OSError:
        return
    try:
        os.write(fd, text.encode())
        import termios
        try:
            termios.tcdrain(fd)
        except termios.error:
            pass  # not a terminal: written is all there is
    except OSError:
        pass
    finally:
        os.close(fd)


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    sd, pd = spec["state_dir"], spec["persist_dir"]
    out: dict[str, Any] = {"fault": None}
    fault = spec.get("fault")
    start = time.monotonic()
    if fault:
        pid: int | None
        if fault.get("layer"):
            hb = channels.read_heartbeat(sd, fault["layer"])
            pid = hb.pid if hb else None
        else:
            pid = int(fault["pid"])
        sig = int(getattr(signal, fault["signal"])) + int(fault.get("plus", 0))
        out["fault"] = {"pid": pid, "signal": sig}
        if pid is None:
            out["error"] = f"no heartbeat for {fault['layer']}"
            print(json.dumps(out))
            return 3
        sys.stdout.flush()
        console_line(f"\nHACHAIN-CHAIN-FAULT pid {pid} signal {sig}\n")
        start = time.monotonic()
        os.kill(pid, sig)
    if not spec.get("wait", True):
        print(json.dumps(out))
        return 0
    deadline = start + spec["timeout"]
    polls = 0
    # ready: converged, by the one predicate of chaos, the QEMU campaign and verify
    want = converge.Want({n: converge.ServiceWant() for n in spec["services"]},
                         spec["heartbeat_timeout"])
    while True:
        began = time.monotonic()
        st = gather_status(sd, pd)
        polls += 1
        why = converge.problems(converge.seen_of_status(st, converge.machine_procs(None)), want)
        now = time.monotonic()
        if not why or now > deadline:
            break
        # at most a third of the guest's one CPU: a poll costs tens of ms under TCG, and
        # polling every 0.1 s took half of it from the chain it waits for (a start after
        # a crash, every layer's Python start-up at once)
        time.sleep(max(0.1, 2 * (now - began)))
    out.update(ready=not why, problems=why, elapsed=round(now - start, 3), polls=polls,
               status=st, procs={n: procs(a) for n, a in spec["services"].items()},
               guest_mono=now)
    print(json.dumps(out))
    return 0 if not why else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
