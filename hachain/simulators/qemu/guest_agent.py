"""hachain-qemu guest agent: runs commands the host drops into the control share.

Runs inside the guest, started by the initramfs in the background just before PID 1 is
exec'd, in its own session (so signals aimed at PID 1's process group miss it). Stdlib
only, and it imports nothing from hachain: it must work whatever state the tree is in.

Protocol (a mailbox in the 9p control share, mounted in the guest at /run/hachain-qemu):
- the host writes `agent/req/<id>.json` (write elsewhere, then rename into place):
  {"id": str, "argv": [str, ...] | null, "shell": str | null, "timeout": float,
   "merge_stderr": bool}
- the agent claims a request by deleting it, runs it in a thread, and writes
  `agent/resp/<id>.json` the same way: {"id", "rc", "stdout", "stderr", "boot",
  "timed_out", "error"}. rc is 124 on timeout, 127 when the program cannot be started.
- at start it empties `agent/req/` (a request written just before a reset must not run
  again on the next boot) and then writes `agent/ready` = {"boot": n, "pid": pid}.
- every WATCH_EVERY seconds it writes `agent/procs-<boot>.txt`: every process's state
  and kernel wait channel, and for the chain's Python processes each thread's with its
  kernel stack. The host shows the last one of a boot when a request of that boot goes
  unanswered: a boot that hangs and is then reset by the watchdog leaves it behind.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time


def _write_json(directory: str, name: str, data: dict[str, object]) -> None:
    tmp = os.path.join(directory, f".{name}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, os.path.join(directory, name))


WATCH_EVERY = 5.0


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(4096).decode(errors="replace")
    except OSError:
        return ""


def _task_line(path: str, indent: str = "") -> str:
    stat = _read(f"{path}/stat")
    end = stat.rfind(")")
    comm = stat[stat.find("(") + 1:end]
    fields = stat[end + 2:].split()
    state, ppid = (fields[0], fields[1]) if len(fields) > 1 else ("?", "?")
    return (f"{indent}{os.path.basename(path)} ppid {ppid} {state} {comm!r} "
            f"wchan {_read(f'{path}/wchan') or '-'}")


def procs_snapshot(proc: str = "/proc") -> str:
    """One line per user process (pid, parent, state, name, wait channel); for a process
    running Python (the chain's layers, the services written in it) its command line,
    and one line per thread with the thread's kernel stack."""
    lines = [f"guest CLOCK_MONOTONIC {time.monotonic():.1f}"]
    pids = sorted((int(n) for n in os.listdir(proc) if n.isdigit()))
    for pid in pids:
        path = f"{proc}/{pid}"
        line = _task_line(path)
        if pid == 2 or " ppid 2 " in line or " ppid ? " in line:
            continue  # the kernel's threads, or a process gone meanwhile
        lines.append(line)
        cmdline = _read(f"{path}/cmdline")
        if "python" not in cmdline.split("\0", 1)[0]:
            continue
        lines[-1] += " " + cmdline.replace("\0", " ")[:160]
        try:
            tids = sorted(int(t) for t in os.listdir(f"{path}/task"))
        except OSError:
            continue
        for tid in tids:
            tpath = f"{path}/task/{tid}"
            lines.append(_task_line(tpath, "    thread "))
            stack = _read(f"{tpath}/stack").strip()
            if stack:
                lines.extend("        " + frame for frame in stack.splitlines()[:12])
    return "\n".join(lines) + "\n"


def _watch(base: str, boot: int) -> None:
    """Write the snapshot of this boot's processes every WATCH_EVERY seconds."""
    tmp = os.path.join(base, f".procs-{boot}.tmp")
    while True:
        try:
            with open(tmp, "w") as f:
                f.write(procs_snapshot())
            os.replace(tmp, os.path.join(base, f"procs-{boot}.txt"))
        except OSError:
            pass
        time.sleep(WATCH_EVERY)


def _run(request: dict[str, object], resp_dir: str, boot: int) -> None:
    reply: dict[str, object] = {"id": request["id"], "boot": boot, "rc": None,
                                "stdout": "", "stderr": "", "timed_out": False,
                                "error": None}
    raw_argv = request.get("argv")
    if isinstance(raw_argv, list) and raw_argv:
        argv = [str(word) for word in raw_argv]
    else:
        argv = ["/bin/sh", "-c", str(request.get("shell"))]
    timeout = float(str(request.get("timeout") or 30))
    merge = bool(request.get("merge_stderr"))
    try:
        done = subprocess.run(argv, check=False, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT if merge else subprocess.PIPE,
                              timeout=timeout, start_new_session=True)
        reply["rc"] = done.returncode
        reply["stdout"] = done.stdout.decode(errors="replace")
        reply["stderr"] = (done.stderr or b"").decode(errors="replace")
    except subprocess.TimeoutExpired as exc:
        reply["rc"] = 124
        reply["timed_out"] = True
        reply["stdout"] = (exc.stdout or b"").decode(errors="replace")
    except OSError as exc:
        reply["rc"] = 127
        reply["error"] = f"{argv[0]}: {exc.strerror or exc}"
    _write_json(resp_dir, f"{request['id']}.json", reply)


def serve(ctl: str, boot: int, poll: float = 0.05) -> None:
    """Serve the mailbox forever."""
    base = os.path.join(ctl, "agent")
    req_dir = os.path.join(base, "req")
    resp_dir = os.path.join(base, "resp")
    for directory in (req_dir, resp_dir):
        os.makedirs(directory, exist_ok=True)
    for name in os.listdir(req_dir):
        os.unlink(os.path.join(req_dir, name))
    threading.Thread(target=_watch, args=(base, boot), daemon=True).start()
    _write_json(base, "ready", {"boot": boot, "pid": os.getpid()})
    print(f"hachain-qemu-agent: boot {boot} pid {os.getpid()} serving {base}", flush=True)
    while True:
        try:
            names = sorted(n for n in os.listdir(req_dir) if n.endswith(".json"))
            for name in names:
                path = os.path.join(req_dir, name)
                with open(path) as f:
                    request = json.load(f)
                os.unlink(path)
                threading.Thread(target=_run, args=(request, resp_dir, boot),
                                 daemon=True).start()
        except Exception as exc:  # noqa: BLE001 - keep serving whatever a request does
            print(f"hachain-qemu-agent: {type(exc).__name__}: {exc}", flush=True)
            time.sleep(0.5)
        time.sleep(poll)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hachain-qemu-agent")
    parser.add_argument("--ctl", default="/run/hachain-qemu")
    parser.add_argument("--boot", type=int, default=0)
    args = parser.parse_args(argv)
    serve(args.ctl, args.boot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
