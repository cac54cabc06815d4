"""Boot a PID-1 program on a real kernel under QEMU, by hand.

    python -m hachain.simulators.qemu --check
    python -m hachain.simulators.qemu --heartbeat 2 --duration 40
    python -m hachain.simulators.qemu --watchdog none --run 'cat /proc/1/cmdline' -- \\
        /work/main/.venv/bin/python -m hachain.init.main --state-dir /run/hachain

Without a command after `--` the guest runs guest_petter.py (pets the watchdog a few
times, then stops, so the watchdog resets the machine). The console is echoed to stdout;
at the end a summary gives boot times and QMP events. Exit status: 0 done, 1 QEMU missing
or a wait failed, 2 bad usage.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from hachain.simulators.qemu.harness import (
    PETTER_SCRIPT,
    QemuError,
    QemuMachine,
    QemuUnavailable,
    find_tools,
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hachain.simulators.qemu",
                                description="Boot a PID-1 program under QEMU with an emulated "
                                            "hardware watchdog.")
    p.add_argument("argv", nargs="*", help="PID 1's command line (after --)")
    p.add_argument("--check", action="store_true",
                   help="only say whether QEMU, a kernel and busybox are present")
    p.add_argument("--watchdog", choices=("i6300esb", "softdog", "none"), default="i6300esb")
    p.add_argument("--heartbeat", type=int, default=2,
                   help="i6300esb heartbeat / softdog soft_margin, seconds (default 2)")
    p.add_argument("--panic", type=int, default=1, help="kernel panic=N (default 1)")
    p.add_argument("--no-panic-reboot", action="store_true",
                   help="leave panic= off: a panic keeps the machine down")
    p.add_argument("--no-reboot", action="store_true", help="QEMU exits on any reset")
    p.add_argument("--persist", metavar="DIR", help="host directory for the persistent share")
    p.add_argument("--persist-path", default="/var/lib/hachain",
                   help="where the persistent share is mounted in the guest")
    p.add_argument("--env", action="append", default=[], metavar="K=V",
                   help="environment for PID 1 (repeatable)")
    p.add_argument("--workdir", help="keep the console log and control share here")
    p.add_argument("--run", action="append", default=[], metavar="CMD",
                   help="after boot, run CMD in the guest via the agent and print the "
                        "result (repeatable); then stop unless --duration is given")
    p.add_argument("--duration", type=float,
                   help="stop after this many seconds (default: when QEMU exits)")
    p.add_argument("--boot-timeout", type=float, default=90.0)
    p.add_argument("--verbose-kernel", action="store_true", help="drop 'quiet'")
    return p


def _summary(vm: QemuMachine) -> None:
    print("\n--- hachain-qemu summary", flush=True)
    for boot in vm.boots:
        pid1 = f"{boot.pid1_at - vm.started_at:.2f}s" if boot.pid1_at else "-"
        print(f"boot {boot.number}: initramfs at {boot.initramfs_at - vm.started_at:.2f}s, "
              f"PID 1 at {pid1} (since QEMU start)")
    for event in vm.events:
        print(f"qmp {event.name} at {event.at - vm.started_at:.2f}s {event.data}")
    if not vm._own_workdir:
        print(f"console log: {vm.log_path}")


def main(args: list[str] | None = None) -> int:
    parser = _parser()
    opts = parser.parse_args(args)
    if opts.check:
        try:
            tools = find_tools()
        except QemuUnavailable as exc:
            print(exc, file=sys.stderr)
            return 1
        print(f"qemu {tools.qemu}\nkernel {tools.kernel.image} ({tools.kernel.version})\n"
              f"busybox {tools.busybox}")
        return 0
    env = {}
    for item in opts.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--env {item!r}: expected K=V")
        env[key] = value
    argv = opts.argv or [os.path.realpath(sys.executable), os.fspath(PETTER_SCRIPT),
                         "--pets", "5", "--interval", "1"]
    vm = QemuMachine(argv, env=env, watchdog=None if opts.watchdog == "none" else opts.watchdog,
                     heartbeat=opts.heartbeat,
                     panic=None if opts.no_panic_reboot else opts.panic,
                     no_reboot=opts.no_reboot, persist_dir=opts.persist,
                     persist_path=opts.persist_path, workdir=opts.workdir,
                     quiet=not opts.verbose_kernel,
                     echo=lambda text: (sys.stdout.write(text), sys.stdout.flush()))
    try:
        with vm:
            vm.boot()
            vm.wait_boot(1, opts.boot_timeout)
            for command in opts.run:
                result = vm.run_result(command, timeout=opts.boot_timeout, merge_stderr=True)
                print(f"\n--- guest$ {command}\n{result.stdout}--- rc {result.rc}", flush=True)
            if opts.duration is not None:
                deadline = time.monotonic() + opts.duration
                while time.monotonic() < deadline and vm.returncode is None:
                    time.sleep(0.2)
            elif not opts.run:
                vm.wait_exit(timeout=10**9)
            _summary(vm)
    except QemuUnavailable as exc:
        print(exc, file=sys.stderr)
        return 1
    except QemuError as exc:
        print(f"hachain-qemu: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nhachain-qemu: interrupted; QEMU stopped", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
