"""`hachain chaos --qemu`: a seeded fault campaign against the real chain on a real kernel.

Owns: the guest fault model (`QKINDS`), its weighted schedule, injecting each fault from
inside one long-lived QEMU guest (`ChainVM`, i6300esb, two vCPUs), waiting for the chain
to converge again and checking the invariants after every fault. Must not: change the
chain, the harness or `ChainVM`; tables, report.json and report.html come from
`chaos_report`, as do the per-fault record and the progress line.

How a fault is run (details in docs/chaos.md, "On a real kernel (--qemu)"):

- Faults that must not reboot: one guest process (`CAMPAIGN_PROBE`, started before the
  fault so its Python start-up never counts) notes the target's pid, writes a console
  marker, sends the signal, then polls `gather_status` and the guest's /proc until the
  target has a new pid (the *detection*) and every invariant holds in two samples
  `SETTLE` seconds apart. Times are on the guest's monotonic clock.
- Faults that must reboot: the same probe injects and returns at once; the host waits
  for the next boot on the console, for the chain to be ready, then runs the probe
  without a fault to check the invariants on the new boot. Times are on the host's
  clock (console lines are stamped on arrival): from the marker line to the last
  service's `-> ready` line of the new boot.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hachain.simulators import chaos_report
from hachain.simulators.chaos import _say, kind_list, write_reports
from hachain.simulators.chaos_kinds import Fault
from hachain.simulators.chaos_report import Progress, Result, verdict_line
from hachain.simulators.chaos_runner import (
    CampaignInterrupted,
    armed,
    signals_deferred,
    stop_signals_raise,
)
from hachain.simulators.qemu.chain import (
    CARDRESET,
    PERSIST_DIR,
    STATE_DIR,
    ChainError,
    ChainSettings,
    ChainVM,
)
from hachain.simulators.qemu.harness import QemuError, unavailable_reason

BOOTSTATUS = "/sys/class/watchdog/watchdog0/bootstatus"
MARKER = "HACHAIN-CAMPAIGN-FAULT"
SETTLE = 0.5  # every invariant must hold in two samples this far apart
POLL = 0.2  # guest polling period (a /proc scan in TCG Python is not free)

# Budgets for an emulated (TCG) guest, far slower than the simulated machine: a Python
# start-up over 9p takes 1-8 s, a boot to every service ready 13-20 s (docs/qemu.md).
START_BUDGET = 10.0
BOOT_BUDGET = 35.0
PANIC_BUDGET = 5.0  # panic=1 plus the emulated serial port printing the panic dump
# a cold Python filling the guest's 512 MB one MiB at a time under TCG, and the kernel's
# reclaim before its OOM killer acts
OOM_BUDGET = 15.0
RESET_MARGIN = 3.0  # a tick and TCG scheduling on top of the tickler's reset bound

# The campaign's "notifier": ready by READY=1, then WATCHDOG=1 twice a second, so its
# hang (SIGSTOP) is visible to the restarter's service watchdog. Send errors are
# ignored: the pings simply resume once the socket answers again.
PINGER_SERVICE = ["-m", "hachain.simulators.qemu.guest_service", "--ping", "0.5"]

# Dotted TOML keys (chain_config writes `key = value` verbatim): a quick backoff, and an
# intensity limit no 20-fault campaign can reach by itself (the default, 5 restarts a
# minute, would put a service into maintenance after a few kills of it or of what it
# requires; that is policy working, not what this campaign measures).
POLICY: dict[str, Any] = {"backoff.initial": 0.1, "backoff.max": 1.0,
                          "intensity.max_restarts": 100, "intensity.window": 60.0}


@dataclass(frozen=True)
class CampaignSettings(ChainSettings):
    """ChainSettings whose notifier has a service watchdog (3 s) and a quick stop, and
    whose watchdog timeout leaves a killed tickler room to come back.

    `kill-tickler` expects no reset, which holds while `timeout` exceeds the restart
    delay plus the tickler's start-up (docs/init.md). In the TCG guest that start-up, a
    cold Python over 9p, is about 3 s on a quiet 2-core host and went past the 10 s of
    ChainVM's default on a host busy with the test suite (CI, seed 67: no open before
    the expiry, a false reset). 20 s keeps that margin at about 6x; it lengthens each
    watchdog reset of a hang by 10 s."""

    timeout: int = 20
    watchdog_sec: float = 3.0
    stop_timeout: float = 2.0

    def services(self, python: str) -> dict[str, dict[str, Any]]:
        """The three scenario services; notifier pings its watchdog; a lenient policy."""
        return {
            "sleeper": {"command": ["/bin/sleep", "86401"], **POLICY},
            "notifier": {"command": [python, *PINGER_SERVICE], "ready": "notify",
                         "ready_timeout": 60.0, "watchdog_sec": self.watchdog_sec,
                         "stop_timeout": self.stop_timeout, "memory_max": LEAK_LIMIT,
                         **POLICY},
            "worker": {"command": ["/bin/sh", "-c", hog_script(python)],
                       "requires": ["notifier"], **POLICY},
        }


def hog_script(python: str) -> str:
    """The campaign's worker: a shell that idles until SIGUSR1, then becomes a Python that
    allocates 1 MiB after another without a limit of its own (the `oom-machine` fault).
    Its sleep is killed first: nothing of it is left to outlive the shell."""
    leak = "import itertools; heap = [bytearray(1 << 20) for _ in itertools.count()]"
    return (f"trap 'kill $! 2>/dev/null; exec {python} -S -c \"{leak}\"' USR1; "
            "while :; do sleep 86402 & wait $!; done")


def reset_bound(s: ChainSettings) -> float:
    """Latest watchdog reset after a hang: heartbeat age + staleness + last pet + timeout."""
    return s.heartbeat_interval + s.heartbeat_timeout + s.pet_interval + s.timeout + RESET_MARGIN


BACKOFF = float(POLICY["backoff.max"])
SIGUSR1, SIGKILL, SIGSTOP, SIGRTMIN_1 = 10, 9, 19, 35  # the guest's (x86_64; glibc's SIGRTMIN+1)
# The notifier's memory_max: a cold Python with the sd_notify client takes ~15 MB of it.
LEAK_LIMIT = "64M"


def send(sig: int) -> Callable[[Fault], dict[str, Any]]:
    """The probe sends `sig` to the target's pid."""
    return lambda _f: {"signal": sig}


@dataclass(frozen=True)
class QKind:
    """One guest fault kind, a row of the guest fault model. `reboot`: None (a reboot is
    a failure), "watchdog", "panic". `weight`: relative draw weight (reboots cost 15-35 s
    each, other faults 3-10 s). `how(fault)`: what the guest probe does to the target
    (`signal`, `sysrq` or `clock_step`, see campaign_probe.py); `bound(settings)`: the
    convergence bound under the campaign's settings."""

    name: str
    targets: tuple[str, ...]
    reboot: str | None
    weight: int
    summary: str
    how: Callable[[Fault], dict[str, Any]]
    bound: Callable[[CampaignSettings], float]


SERVICES = ("notifier", "sleeper", "worker")
QKINDS: dict[str, QKind] = {k.name: k for k in (
    QKind("kill-service", SERVICES, None, 3, "SIGKILL the service's main process",
          send(SIGKILL), lambda s: BACKOFF + 2 * START_BUDGET),
    QKind("hang-service", ("notifier",), None, 3,
          "SIGSTOP a service with watchdog_sec: the restarter sees it hung and restarts it",
          send(SIGSTOP),
          lambda s: s.watchdog_sec + s.stop_timeout + BACKOFF + 2 * START_BUDGET),
    QKind("leak-service", ("notifier",), None, 2,
          "SIGUSR1: the notifier allocates without end; its memory_max ends it inside its "
          "cgroup (out of memory), the restart policy restarts it",
          send(SIGUSR1), lambda s: BACKOFF + 2 * START_BUDGET),
    QKind("oom-machine", ("worker",), None, 2,
          "SIGUSR1: the worker allocates without a limit of its own until the machine is out "
          "of memory; the kernel's OOM killer takes it, never a layer (they run at "
          "oom_score_adj -900), and the restart policy restarts it",
          send(SIGUSR1), lambda s: BACKOFF + 2 * START_BUDGET + OOM_BUDGET),
    QKind("kill-restarter", ("restarter",), None, 3,
          "SIGKILL the restarter: init restarts it, it re-adopts the services",
          send(SIGKILL), lambda s: s.restart_delay + 2 * START_BUDGET),
    QKind("kill-tickler", ("tickler",), None, 3,
          "SIGKILL the tickler: the device stays armed, init restarts it in time",
          send(SIGKILL), lambda s: s.restart_delay + 2 * START_BUDGET),
    QKind("hang-restarter", ("restarter",), "watchdog", 2,
          "SIGSTOP the restarter: gate fails, i6300esb resets, bootstatus 32",
          send(SIGSTOP), lambda s: reset_bound(s) + BOOT_BUDGET),
    QKind("init-crash", ("init",), "panic", 2,
          "init's fault hook (SIGRTMIN+1 to PID 1): PID 1 exits, panic=1 reboots",
          send(SIGRTMIN_1), lambda _s: PANIC_BUDGET + BOOT_BUDGET),
    QKind("kernel-crash", ("kernel",), "panic", 2,
          "echo c > /proc/sysrq-trigger: kernel panic, panic=1 reboots",
          lambda _f: {"sysrq": "c"}, lambda _s: PANIC_BUDGET + BOOT_BUDGET),
    QKind("clock-step", ("clock",), None, 2,
          "step the guest's wall clock by +/- 1 h: timing is monotonic, nothing happens",
          lambda f: {"clock_step": 3600 if f.index % 2 == 0 else -3600},
          lambda _s: 2 * START_BUDGET),
)}


def schedule(seed: int, n: int, kinds: list[str]) -> list[Fault]:
    """N faults drawn by `random.Random(seed)`, kind by weight, target uniformly.

    Pure: same seed, count and kinds give the same list, and the first k faults of a
    longer schedule are those of a shorter one.
    """
    rng = random.Random(seed)
    names = sorted(kinds)
    weights = [QKINDS[k].weight for k in names]
    out = []
    for i in range(n):
        kind = rng.choices(names, weights)[0]
        out.append(Fault(i, kind, rng.choice(QKINDS[kind].targets)))
    return out


def convergence_bound(kind: str, s: CampaignSettings) -> float:
    """How long a fault of `kind` may take, fault to every invariant holding again."""
    return QKINDS[kind].bound(s)


# Runs in the guest: `python -m CAMPAIGN_PROBE SPEC_JSON` prints one JSON object (the spec
# and the report are described in campaign_probe.py).
CAMPAIGN_PROBE = "hachain.simulators.qemu.campaign_probe"


def _first_line(exc: BaseException) -> str:
    """The first line of a QEMU error, for the fault's problem; the whole of it (the
    console tail with its times, the guest's processes) goes to stderr at once, since
    the work directory with the console log may not outlive the run (a test's)."""
    text = str(exc)
    first, _, rest = text.partition("\n")
    if rest.strip():
        print(f"chaos: {first}\n{rest}", file=sys.stderr, flush=True)
    return first


class CampaignAbort(Exception):
    """The guest could not be brought back to a clean state; later faults cannot run."""


class QemuCampaign:
    """One guest, a list of faults, one `chaos_report.Result` per fault; `run()` → report dict."""

    def __init__(self, workdir: Path, seed: int, faults: list[Fault], kinds: list[str],
                 settings: CampaignSettings | None = None,
                 progress: Callable[..., None] | None = None,
                 echo: Callable[[str], object] | None = None) -> None:
        self.settings = settings or CampaignSettings()
        self.workdir = workdir
        self.seed, self.faults, self.kinds = seed, faults, kinds
        self.progress = progress
        self.echo = echo
        self.results: list[Result] = []
        self.baseline_problems: list[str] = []
        self.recoveries = 0
        self.boot_s: float | None = None
        self.t0 = time.monotonic()
        self.cvm: ChainVM | None = None
        self.interrupted: str | None = None  # the stop signal that ended the campaign

    # ------------------------------------------------------------ guest probe

    def _probe(self, timeout: float, fault: dict[str, Any] | None = None,
               wait: bool = True, startup: float = 30.0) -> dict[str, Any]:
        """Run CAMPAIGN_PROBE in the guest; its JSON report (plus "rc")."""
        assert self.cvm is not None
        spec = {"state_dir": STATE_DIR, "persist_dir": PERSIST_DIR,
                "services": sorted(self.cvm.services), "heartbeat_timeout":
                self.settings.heartbeat_timeout, "timeout": timeout, "settle": SETTLE,
                "poll": POLL, "wait": wait, "fault": fault, "marker": MARKER}
        rc, out = self.cvm.vm.run([self.cvm.python, "-m", CAMPAIGN_PROBE, json.dumps(spec)],
                                  timeout=timeout + startup)
        try:
            report: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise ChainError(f"campaign probe failed (rc {rc}): {out[-1500:]}") from None
        report["rc"] = rc
        return report

    @staticmethod
    def _fault_spec(f: Fault) -> dict[str, Any]:
        """What the probe injects for fault `f` (its kind's `how`)."""
        return {"index": f.index, "kind": f.kind, "target": f.target, **QKINDS[f.kind].how(f)}

    def _marker_re(self, f: Fault) -> re.Pattern[str]:
        return re.compile(rf"^{MARKER} {f.index} {re.escape(f.kind)} \S+ pid (\d+)$",
                          re.MULTILINE)

    # ------------------------------------------------------------ faults

    def _no_reboot(self, f: Fault, res: Result) -> None:
        """Inject a fault that must not reboot; wait for convergence in the same probe."""
        assert self.cvm is not None
        vm = self.cvm.vm
        boots, events = vm.boot_count, len(vm.events)
        mark = vm.console_mark()
        # the probe waits past the bound: a host busier than at the first boot adds its
        # run-queue wait to the bound (_judge_time), and only then is the fault judged
        timeout = 2 * res.bound + 10.0
        try:
            rep = self._probe(timeout, fault=self._fault_spec(f))
        except QemuError as exc:
            rep = {"ready": False, "problems": [f"probe: {_first_line(exc)}"]}
        m = self._marker_re(f).search(vm.console, mark)
        t_fault = vm.time_at(m.start()) if m else time.monotonic()
        res.t_fault = round(t_fault - self.t0, 3)
        res.detect, res.converge = rep.get("detect"), rep.get("converge")
        if res.detect is not None:
            res.t_detect = round(res.t_fault + res.detect, 3)
        if res.converge is not None:
            res.t_recover = round(res.t_fault + res.converge, 3)
        if not rep.get("ready"):
            res.problems += rep.get("problems") or [f"probe rc {rep.get('rc')}: {rep}"]
        if rep.get("error"):
            res.problems.append(rep["error"])
        if vm.boot_count != boots:
            res.problems.append(f"false reboot: boot {boots} -> {vm.boot_count}")
            res.reboot = "unexpected"
        new = [e.name for e in vm.events[events:] if e.name in ("WATCHDOG", "RESET")]
        if new:
            res.problems.append(f"false reset: QMP events {new}")
        if res.converge is not None:
            self._judge_time(res, t_fault)

    def _reboot(self, f: Fault, res: Result) -> None:
        """Inject a fault that must reboot; wait for the next boot and a converged chain."""
        assert self.cvm is not None
        cvm, vm = self.cvm, self.cvm.vm
        boots, events = vm.boot_count, len(vm.events)
        mark = vm.console_mark()
        failed: list[str] = []

        def inject() -> None:
            try:  # the reply may never come: the panic or the reset can beat it
                rep = self._probe(5.0, fault=self._fault_spec(f), wait=False, startup=25.0)
                if rep.get("rc") != 0:
                    failed.append(f"not injected: {rep}")
            except QemuError:
                pass

        thread = threading.Thread(target=inject, name="hachain-campaign-fault", daemon=True)
        thread.start()
        try:
            m = vm.wait_for(self._marker_re(f), timeout=60.0, since=mark)
        except QemuError as exc:
            thread.join(5)
            res.problems += failed or [f"no fault marker: {_first_line(exc)}"]
            return
        t_fault = vm.time_at(m.start())
        res.t_fault = round(t_fault - self.t0, 3)
        try:
            record = vm.wait_boot(boots + 1,
                                  timeout=self.cvm.scaled(reset_bound(self.settings)) + 30.0)
        except QemuError as exc:
            res.problems.append(f"no reboot: {_first_line(exc)}")
            return
        finally:
            thread.join(5)
        res.reboot = "watchdog" if any(e.name == "WATCHDOG" for e in vm.events[events:]) \
            else "panic"
        res.reboot_after = round(record.initramfs_at - t_fault, 3)
        res.t_detect = round(record.initramfs_at - self.t0, 3)
        res.detect = res.reboot_after
        try:
            cvm.wait_ready(BOOT_BUDGET + 60.0)
            rep = self._probe(30.0)
        except QemuError as exc:
            res.problems.append(f"not ready after the reboot: {_first_line(exc)}")
            return
        pid1 = vm.console.find(f"HACHAIN-QEMU-PID1 {boots + 1}")
        ready = cvm.services_ready_at(max(0, pid1)) or cvm.ready_at
        res.converge = round(ready - t_fault, 3)
        res.t_recover = round(ready - self.t0, 3)
        if not rep.get("ready"):
            res.problems += rep.get("problems") or [f"probe rc {rep.get('rc')}"]
        if vm.boot_count != boots + 1:
            res.problems.append(f"{vm.boot_count - boots} reboots (expected exactly one)")
        want = QKINDS[f.kind].reboot
        try:
            bootstatus = cvm.read(BOOTSTATUS)
        except QemuError as exc:
            bootstatus = f"unreadable ({exc})"
        cause = (rep.get("last_boot") or {}).get("cause")
        res.problems += _reboot_problems(want, res.reboot, bootstatus, cause,
                                         "Kernel panic" in vm.console[mark:])
        self._judge_time(res, t_fault)
        if failed:
            res.problems += failed

    def _judge_time(self, res: Result, t_fault: float) -> None:
        """Converged within the bound plus what the host took away meanwhile?

        `res.bound` is the kind's budget stretched by the first boot's slowness; the time
        QEMU's threads then sat runnable without a host CPU (`QemuMachine.host_wait`,
        from t_fault to convergence) is added to it: a host that got busier after the
        first boot (CI: the other test workers) slows everything in the guest by that
        much, and that is not the chain's doing."""
        assert self.cvm is not None and res.converge is not None
        waited = self.cvm.vm.host_wait(t_fault, t_fault + res.converge)
        res.host_wait = None if waited is None else round(waited, 2)
        limit = res.bound + (res.host_wait or 0.0)
        if res.converge > limit:
            extra = f" + {res.host_wait:.2f} s QEMU waited for a CPU" if res.host_wait else ""
            res.problems.append(f"converged in {res.converge:.2f} s > bound "
                                f"{res.bound:.2f} s{extra}")

    def _recover(self) -> None:
        """After a failed fault: reset the guest and wait for a ready chain, or abort."""
        assert self.cvm is not None
        vm = self.cvm.vm
        self.recoveries += 1
        boots = vm.boot_count
        try:
            vm.qmp("system_reset")
            vm.wait_boot(boots + 1, timeout=60.0)
            self.cvm.wait_ready(BOOT_BUDGET + 60.0)
        except QemuError as exc:
            raise CampaignAbort(f"the guest did not come back after a reset: "
                                f"{_first_line(exc)}") from None

    def run_fault(self, f: Fault) -> Result:
        """Inject fault `f`, wait, judge; the Result (times relative to the campaign)."""
        assert self.cvm is not None
        kind = QKINDS[f.kind]
        component = {"kernel": "machine"}.get(f.target, f.target)
        res = Result(f.index, f.kind, f.target, component,
                     bound=round(self.cvm.scaled(convergence_bound(f.kind, self.settings)), 2))
        if kind.reboot:
            self._reboot(f, res)
        else:
            self._no_reboot(f, res)
        res.ok = not res.problems
        res.t_end = round(time.monotonic() - self.t0, 3)
        return res

    # ------------------------------------------------------------ the campaign

    def run(self) -> dict[str, Any]:
        """Boot, check the baseline, run every fault; the report. The guest is closed.
        A stop signal (inside chaos_runner.stop_signals_raise) ends it with a partial
        report: the fault under way is not judged."""
        self.t0 = time.monotonic()
        self.cvm = ChainVM(self.workdir, self.settings, echo=self.echo)
        try:
            with armed():  # a stop signal that came before raises here
                self._run()
        except CampaignInterrupted as e:
            self.interrupted = e.signame
        finally:
            with signals_deferred():  # not armed: a second Ctrl-C only waits
                self.cvm.close()
        return self.report()

    def _run(self) -> None:
        assert self.cvm is not None
        try:
            self.boot_s = round(self.cvm.boot(timeout=150.0), 2)
            base = self._probe(30.0)
            if not base.get("ready"):
                self.baseline_problems = list(base.get("problems") or ["not ready"])
        except QemuError as exc:
            self.baseline_problems = [f"boot: {_first_line(exc)}"]
        if self.baseline_problems:
            return
        n = len(self.faults)
        for i, f in enumerate(self.faults, 1):
            if self.progress:
                self.progress(i - 1, n, None, f"#{f.index} {f.kind} {f.target}...")
            res = self.run_fault(f)
            self.results.append(res)
            if self.progress:
                self.progress(i, n, res, "")
            if not res.ok:
                try:
                    self._recover()
                except CampaignAbort as exc:
                    self.baseline_problems = [f"after fault #{f.index}: {exc}"]
                    break

    def report(self) -> dict[str, Any]:
        """Everything report.json and report.html show (chaos_report's shape)."""
        results = [asdict(r) for r in self.results]
        fails = [r for r in results if not r["ok"]]
        boots = self.cvm.vm.boots if self.cvm else []
        return {
            "machine": "qemu", "watchdog": self.settings.watchdog, "smp": self.settings.smp,
            "seed": self.seed, "faults": len(self.faults), "kinds": self.kinds,
            "skipped": {}, "weights": {k: QKINDS[k].weight for k in self.kinds},
            "bounds": {k: convergence_bound(k, self.settings) for k in self.kinds},
            "reboot_bound": reset_bound(self.settings),
            "boot_to_ready": self.boot_s,
            "slowness": None if self.cvm is None else self.cvm.slowness,
            "baseline_problems": self.baseline_problems,
            "ok": not fails and not self.baseline_problems and not self.interrupted
            and len(self.results) == len(self.faults),
            "interrupted": self.interrupted,
            "failures": len(fails), "results": results,
            "summary": chaos_report.summarize(results),
            "boot_times": [round(b.initramfs_at - self.t0, 3) for b in boots],
            "boots": len(boots), "machine_resets": self.recoveries,
            "duration": round(time.monotonic() - self.t0, 3),
        }


def _reboot_problems(want: str | None, seen: str | None, bootstatus: str,
                     cause: str | None, panicked: bool) -> list[str]:
    """Was the reboot caused by what the fault kind says? Problems, empty when so."""
    out = []
    if want == "watchdog":
        if seen != "watchdog":
            out.append("reboot without a QMP WATCHDOG event (expected a watchdog reset)")
        if bootstatus != str(CARDRESET):
            out.append(f"bootstatus {bootstatus} (expected {CARDRESET})")
        if cause != "watchdog reset":
            out.append(f"last_boot cause {cause!r} (expected 'watchdog reset')")
    elif want == "panic":
        if not panicked:
            out.append("no 'Kernel panic' on the console")
        if seen == "watchdog":
            out.append("the watchdog fired (expected panic=1 to reboot first)")
        if bootstatus == str(CARDRESET):
            out.append(f"bootstatus {bootstatus} after a panic reboot (expected 0)")
    return out


# ---------------------------------------------------------------- command line

def cmd_chaos_qemu(args: argparse.Namespace) -> int:
    """`hachain chaos --qemu`: exit 0 all held, 1 an invariant broke or no QEMU, 2 usage."""
    if args.config:
        print("hachain chaos: --qemu boots its own configuration; -c is not supported",
              file=sys.stderr)
        return 2
    try:
        kinds = kind_list(args.kinds, QKINDS, "--qemu fault kind")
    except ValueError as e:
        print(f"hachain chaos: --kinds: {e}", file=sys.stderr)
        return 2
    only: set[int] | None = None
    if args.only:
        try:
            only = {int(x) for x in args.only.split(",") if x.strip()}
        except ValueError:
            print("hachain chaos: --only takes comma-separated indexes", file=sys.stderr)
            return 2
    reason = unavailable_reason()
    if reason:
        print(f"hachain chaos: --qemu cannot run here: {reason}", file=sys.stderr)
        return 1
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    sched = schedule(seed, args.faults, kinds)
    chosen = [f for f in sched if only is None or f.index in only]
    work = Path(os.path.abspath(args.dir) if args.dir
                else tempfile.mkdtemp(prefix="hachain-chaos-qemu-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"chaos: --qemu seed {seed}, {len(chosen)} fault(s), kinds {','.join(kinds)}; "
          f"work dir {work}", file=sys.stderr)
    progress = Progress()
    with stop_signals_raise():  # Ctrl-C, SIGHUP, SIGTERM: a partial report, no QEMU left
        rep = QemuCampaign(work / "vm", seed, chosen, kinds, progress=progress).run()
        if rep["interrupted"]:
            progress.interrupted()
        return _finish_qemu(args, rep, seed, chosen, kinds)


def _finish_qemu(args: argparse.Namespace, rep: dict[str, Any], seed: int,
                 chosen: list[Fault], kinds: list[str]) -> int:
    """The reports, the table, the verdict (not armed: a stop signal now only waits)."""
    rep["config"] = "built-in --qemu campaign configuration (hachain/simulators/qemu/campaign.py)"
    fails = [r for r in rep["results"] if not r["ok"]]

    def command(indexes: list[int] | None) -> str:
        return (f"hachain chaos --qemu --faults {args.faults} --seed {seed} "
                f"--kinds {','.join(kinds)} --report {args.report}"
                + ("" if indexes is None else " --only " + ",".join(map(str, indexes))))

    if fails:
        first = fails[0]["index"]
        idx = [f.index for f in chosen if f.index <= first]
        rep["repro"] = {"command": command(idx), "indexes": idx,
                        "note": "not shrunk (a --qemu run costs minutes); the failing "
                                f"fault alone: {command([first])}"}
    elif rep["baseline_problems"]:
        rep["repro"] = {"command": command(None), "indexes": [],
                        "note": "the guest did not converge outside any fault"}
    html_path, unwritten = write_reports(rep, args.report)
    if not rep["interrupted"]:
        _say(f"chaos: report {html_path}; {rep['boots']} boot(s), {rep['duration']:.0f} s")
    if rep["ok"]:
        _say(f"chaos: --qemu seed {seed}: all invariants held over "
             f"{len(rep['results'])} fault(s)" + ("; the report was not written" if unwritten
                                                   else ""))
        return 1 if unwritten else 0
    for p in rep["baseline_problems"]:
        _say(f"chaos: --qemu seed {seed}: {p}", sys.stderr)
    for r in fails:
        _say(f"chaos: --qemu seed {seed}: fault #{r['index']} {r['kind']} {r['target']}: "
             + "; ".join(r["problems"]), sys.stderr)
    if rep.get("repro"):
        _say(f"chaos: reproduce ({rep['repro']['note']}): {rep['repro']['command']}",
             sys.stderr)
    if rep["interrupted"]:
        _say(verdict_line(rep, html_path))
    return 1
