"""The real chain as PID 1 of a QEMU guest: boot it, wait until it is ready, break it, time it.

This is the scenario layer on top of harness.py (issue 6). `ChainVM` boots
`hachain.init.main` as the guest's PID 1 with a small configuration (three services,
one of them `ready = "notify"`), the real watchdog device (`/dev/watchdog0`, backed by
the emulated i6300esb or by softdog) and the fault-injection hooks enabled. Readiness is
judged inside the guest, through the guest agent, from the same data `hachain status
--json` prints (`hachain.status.gather_status`): every layer alive with a fresh heartbeat,
every service `ready`, the tickler petting with its gate passing.

Faults are injected from inside the guest by a short Python probe (GUEST_PROBE) that is
already started when it sends the signal, so its own start-up never counts: it reads the
victim's pid from the victim's heartbeat, signals it, and (unless the fault reboots the
machine) polls until the chain is ready again, measuring on the guest's monotonic clock.
When the fault resets the machine the measurement is on the host's clock instead: from
just before the fault request is sent to the reply of a probe, on the next boot, that saw
the chain ready.

By hand:

    python -m hachain.simulators.qemu.chain                     # every scenario
    python -m hachain.simulators.qemu.chain --scenario hang-restarter
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hachain
from hachain.simulators.qemu.harness import QemuError, QemuMachine, unavailable_reason

STATE_DIR = "/run/hachain"
PERSIST_DIR = "/var/lib/hachain"
DEVICE = "/dev/watchdog0"
READY_LINE = re.compile(r"^hachain-restarter: (\S+): \S+ -> ready\b", re.MULTILINE)
FAULT_LINE = re.compile(r"^HACHAIN-CHAIN-FAULT pid (\d+) signal (\d+)$", re.MULTILINE)
CARDRESET = 32  # WDIOF_CARDRESET, what bootstatus reads after an i6300esb reset

# The guest has no cgroup2 mount unless someone makes it; init only mounts proc, sysfs,
# devtmpfs and /run. Mounting it in the per-boot setup hook lets the restarter use
# `cgroup_root = "auto"` (one cgroup per service) as on a real appliance. `|| true`: a
# kernel without cgroup2 still boots, the restarter then falls back to process groups.
SETUP = ("mkdir -p /sys/fs/cgroup && "
         "(mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null || true)")

# A service that tells the restarter it is ready (READY=1 on $NOTIFY_SOCKET), then idles.
NOTIFY_SERVICE = ["-m", "hachain.simulators.qemu.guest_service"]


def repo_root() -> Path:
    """The checkout this code runs from (derived from hachain's own file, for any clone)."""
    return Path(hachain.__file__).resolve().parent.parent


def guest_python() -> str:
    """The interpreter the guest runs: the checkout's venv, else the one running us.

    Not resolved through symlinks: a venv's python finds its site-packages (and so the
    editable hachain install) only when started by its venv path.
    """
    venv = repo_root() / ".venv" / "bin" / "python"
    return os.fspath(venv) if venv.exists() else sys.executable


@dataclass(frozen=True)
class ChainSettings:
    """The knobs of one guest chain; defaults are the ones the scenarios use."""

    watchdog: str = "i6300esb"  # or "softdog"
    timeout: int = 10  # [watchdog] timeout, also the module's initial heartbeat
    pet_interval: float = 1.0
    heartbeat_timeout: float = 3.0
    restart_grace: float = 20.0  # generous: Python start-up under TCG is slow
    heartbeat_interval: float = 0.5
    restart_delay: float = 1.0
    fault_hooks: bool = True
    cgroups: bool = True
    # guest CPUs: TCG runs one host thread per vCPU, and with two the chain's four Python
    # start-ups overlap (QEMU start -> services ready ~11 s instead of ~17 s)
    smp: int = 2

    def services(self, python: str) -> dict[str, dict[str, Any]]:
        """name -> [service.NAME] table; every command exists in the guest."""
        return {
            "sleeper": {"command": ["/bin/sleep", "86401"]},
            "notifier": {"command": [python, *NOTIFY_SERVICE], "ready": "notify",
                         "ready_timeout": 60.0},
            "worker": {"command": ["/bin/sleep", "86402"], "requires": ["notifier"]},
        }


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table: intensity = { max_restarts = 1, ... }
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML for {value!r}")


def chain_config(settings: ChainSettings, python: str) -> str:
    """The chain.toml text for the guest."""
    lines = [
        "[chain]",
        f"state_dir = {_toml_value(STATE_DIR)}",
        f"persist_dir = {_toml_value(PERSIST_DIR)}",
        f"cgroup_root = {_toml_value('auto' if settings.cgroups else 'none')}",
        f"heartbeat_interval = {settings.heartbeat_interval!r}",
        f"restart_delay = {settings.restart_delay!r}",
        "",
        "[watchdog]",
        f"device = {_toml_value(DEVICE)}",
        f"timeout = {settings.timeout}",
        f"pet_interval = {settings.pet_interval!r}",
        f"heartbeat_timeout = {settings.heartbeat_timeout!r}",
        f"restart_grace = {settings.restart_grace!r}",
    ]
    for name, table in settings.services(python).items():
        lines += ["", f"[service.{name}]"]
        lines += [f"{key} = {_toml_value(val)}" for key, val in table.items()]
    return "\n".join(lines) + "\n"


def pid1_argv(python: str, config_path: str, settings: ChainSettings) -> list[str]:
    """hachain-init's command line as the guest's PID 1."""
    return [python, "-m", "hachain.init.main", "--state-dir", STATE_DIR,
            "--config", config_path, "--restart-delay", f"{settings.restart_delay:g}",
            "--heartbeat-interval", f"{settings.heartbeat_interval:g}"]


# Runs in the guest: `python -m GUEST_PROBE SPEC_JSON` prints one JSON object (the spec
# and the report are described in guest_probe.py).
GUEST_PROBE = "hachain.simulators.qemu.guest_probe"


@dataclass
class Measurement:
    """One scenario's outcome: the reconvergence time and what was seen on the way."""

    scenario: str
    watchdog: str
    reconverge_s: float | None = None
    boots: int = 0
    notes: dict[str, Any] = field(default_factory=dict)
    status: dict[str, Any] | None = field(default=None, repr=False)  # last status --json
    details: dict[str, Any] = field(default_factory=dict, repr=False)  # for assertions
    # seconds QEMU's most-delayed thread waited for a host CPU from the fault to
    # reconvergence (QemuMachine.host_wait); ChainVM.bound() adds it to a bound
    host_wait: float | None = None

    def line(self) -> str:
        """One human line, e.g. for `pytest -s` or the by-hand entry."""
        took = "-" if self.reconverge_s is None else f"{self.reconverge_s:.1f} s"
        if self.host_wait and self.host_wait >= 0.05:
            took += f" ({self.host_wait:.1f} s of it QEMU waited for a host CPU)"
        extra = ", ".join(f"{k} {v}" for k, v in self.notes.items())
        return (f"hachain-qemu-chain: {self.scenario} ({self.watchdog}): reconverged in "
                f"{took}, boots {self.boots}" + (f"; {extra}" if extra else ""))


class ChainError(QemuError):
    """The chain did not reach (or keep) the state a scenario expected."""


# QEMU start -> every service ready on an idle 2-core host (docs/qemu.md: 13.4-17.6 s).
# A guest that took longer on its first boot runs on a slower (busier) host, and the
# bounds of what happens in it are stretched by the same factor: they come from the
# guest's measured speed, never from how fast a quiet host happened to be.
NOMINAL_BOOT_S = 18.0


def slowness(boot_s: float) -> float:
    """How many times slower than an idle host this guest booted (never below 1)."""
    return max(1.0, boot_s / NOMINAL_BOOT_S)


class ChainVM:
    """One QEMU guest whose PID 1 is hachain-init; closed (QEMU killed) by close()."""

    def __init__(self, workdir: str | os.PathLike[str], settings: ChainSettings | None = None,
                 echo: Callable[[str], object] | None = None) -> None:
        self.settings = settings or ChainSettings()
        self.python = guest_python()
        self.workdir = Path(workdir)
        env = {"PYTHONPATH": os.fspath(repo_root()), "PYTHONDONTWRITEBYTECODE": "1"}
        if self.settings.fault_hooks:
            env["HACHAIN_FAULT_HOOKS"] = "1"
        # The config lives in the control share; its guest path is fixed by the workdir.
        self.vm = QemuMachine(["/bin/true"], env=env, watchdog=self.settings.watchdog,
                              heartbeat=self.settings.timeout, panic=1,
                              smp=self.settings.smp, workdir=self.workdir, setup=SETUP,
                              echo=echo)
        self.config_path = self.vm.put_file(
            "chain.toml", chain_config(self.settings, self.python))
        self.vm.argv = pid1_argv(self.python, self.config_path, self.settings)
        self.ready_at = 0.0
        self.slowness: float | None = None  # set by the first boot (see NOMINAL_BOOT_S)
        self.qmp_retries = 0  # QEMU starts retried because the QMP handshake failed
        self.services = {name: list(table["command"]) for name, table
                         in self.settings.services(self.python).items()}

    # ------------------------------------------------------------ lifetime

    def boot(self, timeout: float = 120.0) -> float:
        """Start QEMU and wait until the chain is ready; seconds from QEMU start to ready."""
        self._start_qemu()
        self.vm.wait_boot(1, timeout=min(60.0, timeout))
        self.wait_ready(timeout=timeout - (time.monotonic() - self.vm.started_at))
        ready = self.services_ready_at(0) or self.ready_at
        took = ready - self.vm.started_at
        if self.slowness is None:
            self.slowness = slowness(took)
        return took

    def scaled(self, seconds: float) -> float:
        """A bound measured on an idle host, stretched by this guest's slowness."""
        return seconds * (self.slowness or 1.0)

    def bound(self, seconds: float, m: Measurement) -> float:
        """A reconvergence bound for `m`: scaled(seconds), plus what the host took from
        QEMU during that very fault (a host busier than at the first boot)."""
        return self.scaled(seconds) + (m.host_wait or 0.0)

    def _start_qemu(self) -> None:
        """QemuMachine.boot(); it starts QEMU again when the QMP handshake fails (see its
        docstring), and `qmp_retries` counts those restarts."""
        try:
            self.vm.boot()
        finally:
            self.qmp_retries = len(self.vm.boot_retries)

    def close(self) -> None:
        """Kill and reap QEMU; safe to call twice."""
        self.vm.close()

    def __enter__(self) -> ChainVM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ guest queries

    def probe(self, timeout: float, fault: dict[str, Any] | None = None,
              wait: bool = True, startup: float = 30.0) -> dict[str, Any]:
        """Run GUEST_PROBE (optionally injecting `fault` first); its JSON report.

        `timeout` bounds the probe's polling in the guest; `startup` is added to the
        host-side bound for its Python start-up (up to ~7 s on a fresh boot under TCG).
        """
        spec = {"state_dir": STATE_DIR, "persist_dir": PERSIST_DIR,
                "services": self.services, "heartbeat_timeout":
                self.settings.heartbeat_timeout, "timeout": timeout,
                "fault": fault, "wait": wait}
        rc, out = self.vm.run([self.python, "-m", GUEST_PROBE, json.dumps(spec)],
                              timeout=timeout + startup)
        try:
            report: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise ChainError(f"the guest probe failed (rc {rc}): {out[-2000:]}") from None
        report["rc"] = rc
        return report

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        """Wait (in the guest) until the chain is ready; sets `ready_at` (host monotonic)."""
        deadline = time.monotonic() + timeout
        self.vm.wait_agent(max(1.0, timeout))
        report = self.probe(max(1.0, deadline - time.monotonic()))
        self.ready_at = time.monotonic()
        if not report.get("ready"):
            raise ChainError(f"chain not ready after {timeout:.0f} s: {report.get('problems')}"
                             f"; console tail:{self.vm._tail(40)}")
        return report

    def cli(self, *args: str, timeout: float = 60.0) -> tuple[int, str]:
        """`hachain ARGS` run in the guest against its chain (`timeout` is scaled):
        (exit status, output)."""
        return self.vm.run([self.python, "-m", "hachain.cli", *args, "--state-dir",
                            STATE_DIR, "--persist-dir", PERSIST_DIR],
                           timeout=self.scaled(timeout))

    def status(self, timeout: float = 30.0) -> dict[str, Any]:
        """`hachain status --json` run in the guest, parsed (`timeout` is scaled)."""
        timeout = self.scaled(timeout)
        rc, out = self.vm.run([self.python, "-m", "hachain.cli", "status", "--json",
                               "--state-dir", STATE_DIR, "--persist-dir", PERSIST_DIR],
                              timeout=timeout)
        try:
            st: dict[str, Any] = json.loads(out[out.index("{"):])
        except ValueError:
            raise ChainError(f"hachain status --json failed (rc {rc}): {out[-2000:]}") from None
        st["rc"] = rc
        return st

    def read(self, path: str) -> str:
        """A guest file's text (stripped)."""
        rc, out = self.vm.run(["/bin/cat", path], timeout=20)
        if rc != 0:
            raise ChainError(f"cat {path}: rc {rc}: {out}")
        return out.strip()

    def services_ready_at(self, since: int) -> float | None:
        """When the last service logged `-> ready` on the console after offset `since`.

        The restarter logs every transition (`hachain-restarter: NAME: starting -> ready
        pid N`); the console reader stamps each line with the host's clock on arrival,
        so this dates the chain's readiness without the probe's own start-up (several
        seconds of Python under TCG on a fresh boot). None when a service is missing.
        """
        text = self.vm.console
        last: dict[str, float] = {}
        for match in READY_LINE.finditer(text, since):
            if match.group(1) in self.services:
                last[match.group(1)] = self.vm.time_at(match.start())
        if set(last) != set(self.services):
            return None
        return max(last.values())

    def service_pids(self, report: dict[str, Any]) -> dict[str, int]:
        """name -> main pid, from a probe report's status."""
        return {n: s["pid"] for n, s in report["status"]["services"].items()}

    # ------------------------------------------------------------ faults

    def fault_no_reboot(self, fault: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
        """Inject `fault` and wait in the same guest process until ready again."""
        mark = self.vm.console_mark()
        report = self.probe(timeout, fault=fault)
        if not report.get("ready"):
            raise ChainError(f"chain not ready {timeout:.0f} s after {fault}: "
                             f"{report.get('problems')}; console tail:{self.vm._tail(40)}")
        marker = FAULT_LINE.search(self.vm.console, mark)
        if marker and report.get("elapsed") is not None:
            t_fault = self.vm.time_at(marker.start())
            report["host_wait"] = self.vm.host_wait(t_fault, t_fault + report["elapsed"])
        return report

    def fault_with_reboot(self, fault: dict[str, Any], boot: int,
                          reset_timeout: float = 60.0,
                          ready_timeout: float = 90.0) -> dict[str, float]:
        """Inject a fault that must reboot the guest; host-clock times of each step.

        Returns {"boot": fault → boot `boot` starts (console marker), "pid1": → its PID 1
        exec'd, "reconverge": → every service logged ready on that boot (the chain then
        confirmed ready by the probe), "confirmed": → the probe's reply, "host_wait": how
        long QEMU waited for a host CPU from the fault to "reconverge" (absent where the
        kernel keeps no schedstat)}.
        """
        events_before = len(self.vm.events)
        mark = self.vm.console_mark()
        failure: list[BaseException] = []

        def inject() -> None:
            # the reply may never come: a panic or reset can beat it
            try:
                report = self.probe(5.0, fault=fault, wait=False, startup=20.0)
                if report.get("rc") != 0:
                    failure.append(ChainError(f"fault {fault} not injected: {report}"))
            except QemuError:
                pass

        thread = threading.Thread(target=inject, name="hachain-qemu-fault", daemon=True)
        thread.start()
        try:
            marker = self.vm.wait_for(FAULT_LINE, timeout=60.0, since=mark)
        except QemuError:
            thread.join(5)
            if failure:
                raise failure[0] from None
            raise
        t_fault = self.vm.time_at(marker.start())
        record = self.vm.wait_boot(boot, timeout=reset_timeout)
        assert record.pid1_at is not None
        self.wait_ready(ready_timeout)
        boot_offset = self.vm.console.find(f"HACHAIN-QEMU-PID1 {boot}")
        ready = self.services_ready_at(max(0, boot_offset)) or self.ready_at
        times = {"boot": record.initramfs_at - t_fault, "pid1": record.pid1_at - t_fault,
                 "reconverge": ready - t_fault, "confirmed": self.ready_at - t_fault}
        waited = self.vm.host_wait(t_fault, ready)
        if waited is not None:
            times["host_wait"] = waited
        for event in self.vm.events[events_before:]:
            key = {"WATCHDOG": "watchdog_fired", "RESET": "reset"}.get(event.name)
            if key and key not in times:
                times[key] = event.at - t_fault
        return {k: round(v, 2) for k, v in times.items()}


# ---------------------------------------------------------------- scenarios

def scenario_boot(cvm: ChainVM, boot_s: float) -> Measurement:
    """The chain is ready and the tickler's pet count of the real device goes up."""
    first = cvm.status()
    time.sleep(2.5 * cvm.settings.pet_interval)
    second = cvm.status()
    wd1, wd2 = first["chain"]["watchdog"], second["chain"]["watchdog"]
    if wd1.get("device") != DEVICE or not (wd2.get("pets") or 0) > (wd1.get("pets") or 0):
        raise ChainError(f"the tickler is not petting {DEVICE}: {wd1} then {wd2}")
    return Measurement("boot", cvm.settings.watchdog, round(boot_s, 2), cvm.vm.boot_count,
                       {"pets": f"{wd1.get('pets')}->{wd2.get('pets')}",
                        "timeout": wd2.get("timeout"), "timeleft": wd2.get("timeleft")},
                       second)


def scenario_kill_restarter(cvm: ChainVM) -> Measurement:
    """SIGKILL the restarter: init restarts it, it re-adopts every service, no reboot."""
    before = cvm.wait_ready(60)
    report = cvm.fault_no_reboot({"layer": "restarter", "signal": "SIGKILL"})
    old_pid = report["fault"]["pid"]
    layers = report["status"]["chain"]["layers"]
    if layers["restarter"]["pid"] == old_pid:
        raise ChainError(f"the restarter pid did not change ({old_pid})")
    if cvm.service_pids(report) != cvm.service_pids(before):
        raise ChainError(f"services not re-adopted: {cvm.service_pids(before)} -> "
                         f"{cvm.service_pids(report)}")
    dups = {n: p for n, p in report["procs"].items() if len(p) != 1}
    if dups:
        raise ChainError(f"service process count is not one: {dups}")
    return Measurement("kill-restarter", cvm.settings.watchdog, report["elapsed"],
                       cvm.vm.boot_count, {"restarter": f"{old_pid}->"
                                           f"{layers['restarter']['pid']}"},
                       report["status"], {"procs": report["procs"],
                                          "pids_before": cvm.service_pids(before),
                                          "pids_after": cvm.service_pids(report),
                                          "restarter_before": old_pid},
                       host_wait=report.get("host_wait"))


def scenario_hang_restarter(cvm: ChainVM) -> Measurement:
    """SIGSTOP the restarter: the gate fails, the watchdog resets the machine, records tell why."""
    cvm.wait_ready(60)
    boot = cvm.vm.boot_count + 1
    times = cvm.fault_with_reboot({"layer": "restarter", "signal": "SIGSTOP"}, boot)
    st = cvm.status()
    bootstatus = cvm.read("/sys/class/watchdog/watchdog0/bootstatus")
    waited = times.pop("host_wait", None)
    return Measurement("hang-restarter", cvm.settings.watchdog, times["reconverge"],
                       cvm.vm.boot_count, {**{f"to_{k}": v for k, v in times.items()
                                              if k != "reconverge"},
                                           "bootstatus": bootstatus,
                                           "last_boot": (st["chain"]["last_boot"] or {})
                                           .get("cause"),
                                           "gate_failure": (st["chain"]["gate_failure"] or {})
                                           .get("reasons")}, st, host_wait=waited)


def scenario_init_exit(cvm: ChainVM) -> Measurement:
    """Init's crash hook (SIGRTMIN+1): PID 1 exits, the kernel panics, panic=1 reboots."""
    cvm.wait_ready(60)
    boot = cvm.vm.boot_count + 1
    mark = cvm.vm.console_mark()
    times = cvm.fault_with_reboot({"pid": 1, "signal": "SIGRTMIN", "plus": 1}, boot)
    panic_at = cvm.vm.console.find("Kernel panic", mark)
    panicked = panic_at >= 0
    fault_at = FAULT_LINE.search(cvm.vm.console, mark)
    if panicked and fault_at:
        times["panic"] = round(cvm.vm.time_at(panic_at) - cvm.vm.time_at(fault_at.start()), 2)
    st = cvm.status()
    bootstatus = cvm.read("/sys/class/watchdog/watchdog0/bootstatus")
    waited = times.pop("host_wait", None)
    return Measurement("init-exit", cvm.settings.watchdog, times["reconverge"],
                       cvm.vm.boot_count, {**{f"to_{k}": v for k, v in times.items()
                                              if k != "reconverge"}, "panic": panicked,
                                           "bootstatus": bootstatus,
                                           "last_boot": (st["chain"]["last_boot"] or {})
                                           .get("cause")}, st, host_wait=waited)


SCENARIOS = ("boot", "kill-restarter", "hang-restarter", "init-exit", "softdog-boot")


def run_scenarios(names: Iterable[str], workdir: Path,
                  echo: Callable[[str], object] | None = None) -> list[Measurement]:
    """Run scenarios by name on as few machines as they allow; their measurements.

    Everything but softdog shares one i6300esb machine, as the tests do.
    """
    names = list(names)
    results: list[Measurement] = []
    shared = [n for n in ("boot", "kill-restarter", "init-exit", "hang-restarter")
              if n in names]
    if shared:
        with ChainVM(workdir / "shared", echo=echo) as cvm:
            boot_s = cvm.boot()
            steps = {"boot": lambda: scenario_boot(cvm, boot_s),
                     "kill-restarter": lambda: scenario_kill_restarter(cvm),
                     "init-exit": lambda: scenario_init_exit(cvm),
                     "hang-restarter": lambda: scenario_hang_restarter(cvm)}
            for name in shared:  # in this order: the hang's records must be its own
                results.append(steps[name]())
    if "softdog-boot" in names:
        with ChainVM(workdir / "softdog", ChainSettings(watchdog="softdog"), echo=echo) as cvm:
            boot_s = cvm.boot()
            m = scenario_boot(cvm, boot_s)
            m.scenario = "softdog-boot"
            results.append(m)
    return results


def main(argv: list[str] | None = None) -> int:
    """By hand: run scenarios and print the measured times."""
    parser = argparse.ArgumentParser(prog="python -m hachain.simulators.qemu.chain",
                                     description="the hachain chain as PID 1 under QEMU")
    parser.add_argument("--scenario", action="append", choices=SCENARIOS,
                        help="run only this one (repeatable); default: all")
    parser.add_argument("--workdir", help="keep the machines' files here (default: temporary)")
    parser.add_argument("--echo", action="store_true", help="copy the guest console to stderr")
    args = parser.parse_args(argv)
    reason = unavailable_reason()
    if reason:
        print(reason, file=sys.stderr)
        return 2
    echo = sys.stderr.write if args.echo else None
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hachain-qemu-chain-") as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        try:
            results = run_scenarios(args.scenario or SCENARIOS, workdir, echo)
        except QemuError as exc:
            print(f"hachain-qemu-chain: FAILED: {exc}", file=sys.stderr)
            return 1
    for m in results:
        print(m.line())
    print(f"hachain-qemu-chain: total {time.monotonic() - started:.1f} s "
          f"({shlex.join(args.scenario or ['all'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
