"""`hachain chaos`: the command line of a fault-injection campaign on the simulated machine.

Owns: the `hachain chaos` arguments, choosing the kinds that can run here and the
schedule, running the campaign (hachain/simulators/chaos_runner.py), shrinking a failure to a
short reproduction, writing the reports (hachain/simulators/chaos_report.py), the printed verdict
and the exit status; `--qemu` and `--cluster` hand over to their own campaigns. Must not:
inject, wait or judge (the runner, the fault table in hachain/simulators/chaos_kinds.py and the
predicate in hachain/simulators/converge.py do).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
from collections.abc import Iterable
from typing import Any

from hachain import config
from hachain.simulators import chaos_report, chaos_svc
from hachain.simulators.chaos_kinds import (
    KINDS,
    SERVICE_FILE,
    Fault,
    capabilities,
    schedule,
)
from hachain.simulators.chaos_report import Progress, failure_lines, verdict_line
from hachain.simulators.chaos_runner import (
    CampaignError,
    Stop,
    campaign_config_text,
    can_mount_tmpfs,
    run_campaign,
    stop_signals_raise,
)


def add_parser(subparsers: Any) -> None:
    """Register `hachain chaos` on the `hachain` command's subparsers."""
    p = subparsers.add_parser(
        "chaos", help="a fault-injection campaign on the simulated machine, with a report",
        description="Inject N faults (drawn from the fault model by SEED) into the chain "
                    "running on the simulated machine; after each, wait for convergence and "
                    "check the invariants. Writes DIR/report.json and DIR/report.html.")
    p.add_argument("-c", "--config", default=None,
                   help="configuration (default: the built-in campaign configuration)")
    p.add_argument("--faults", type=int, default=20, help="how many faults (default 20)")
    p.add_argument("--seed", type=int, default=None, help="schedule seed (default: random)")
    p.add_argument("--report", default=None, metavar="DIR",
                   help="report directory (required unless --list-kinds)")
    p.add_argument("--kinds", default=None,
                   help="comma-separated fault kinds (default: all; see docs/chaos.md)")
    p.add_argument("--only", default=None, metavar="I,J,...",
                   help="run only these indexes of the schedule (a reproduction)")
    p.add_argument("--no-shrink", action="store_true",
                   help="on a failure, do not search for a shorter reproduction")
    p.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    p.add_argument("--list-kinds", action="store_true", help="print the fault model, exit")
    p.add_argument("--qemu", action="store_true",
                   help="run on a real kernel under QEMU (an emulated i6300esb) instead of the "
                   "simulated machine; see docs/chaos.md")
    p.add_argument("--cluster", action="store_true",
                   help="three simulated machines, a singleton and etcd: the cluster kinds "
                   "(docs/cluster.md)")
    p.set_defaults(func=cmd_chaos)


def kind_list(arg: str | None, known: Iterable[str], what: str = "fault kind") -> list[str]:
    """The --kinds list (default: every known kind), sorted and without repeats;
    ValueError naming the unknown ones."""
    known = sorted(known)
    if not arg:
        return known
    kinds = sorted({k.strip() for k in arg.split(",") if k.strip()})
    bad = [k for k in kinds if k not in known]
    if bad:
        raise ValueError(f"unknown {what}(s) {', '.join(bad)}; known: " + ", ".join(known))
    return kinds


def _campaign_setup(args: argparse.Namespace, work: str) -> tuple[str, config.Config]:
    """The configuration path (the built-in one written into `work`) and its parse."""
    svc = os.path.join(work, SERVICE_FILE)
    shutil.copyfile(chaos_svc.__file__, svc)
    if args.config:
        return os.path.abspath(args.config), config.load(args.config)
    path = os.path.join(work, "chain.toml")
    with open(path, "w") as f:
        f.write(campaign_config_text(sys.executable, svc))
    return path, config.load(path)


def shrink(cfg_path: str, base: str, seed: int, sched: list[Fault], failing: Fault,
           kinds: list[str], tmpfs: bool, budget: int = 6) -> tuple[list[int], str]:
    """The shortest run (indexes) found that breaks an invariant again at `failing`:
    the fault alone, then growing suffixes of the prefix before it."""
    prior = [f for f in sched if f.index < failing.index]
    tries: list[list[Fault]] = [[]]
    k = 1
    while k < len(prior) and len(tries) < budget - 1:
        tries.append(prior[-k:])
        k *= 2
    if prior:
        tries.append(prior)
    for n, pre in enumerate(tries):
        run = pre + [failing]
        work = os.path.join(base, f"s{n}")
        os.makedirs(work, exist_ok=True)
        try:
            rep = run_campaign(cfg_path, work, seed, run, kinds, {}, tmpfs, None)
        except CampaignError as e:
            print(f"chaos: shrink run {n} could not run: {e}", file=sys.stderr)
            continue
        if rep.get("interrupted"):
            return [f.index for f in sched if f.index <= failing.index], \
                f"not shrunk (interrupted by {rep['interrupted']})"
        last = rep["results"][-1] if rep["results"] else None
        if last and last["index"] == failing.index and not last["ok"]:
            return [f.index for f in run], "reproduced"
        if any(not r["ok"] for r in rep["results"]):
            bad = [r["index"] for r in rep["results"] if not r["ok"]]
            return [f.index for f in run], f"reproduced a failure at {bad}"
    return [f.index for f in sched if f.index <= failing.index], "not reproduced by a shorter run"


def cmd_chaos(args: argparse.Namespace) -> int:
    """`hachain chaos`: run the campaign, write the reports, exit 1 on a broken invariant."""
    if getattr(args, "cluster", False):
        from hachain.simulators import cluster_chaos
        return cluster_chaos.cmd(args)
    if args.list_kinds:
        for k in sorted(KINDS):
            d = KINDS[k]
            print(f"{k:<20} {d.target:<10} reboot={d.reboot or '-':<9} {d.summary}")
        return 0
    if not args.report:
        print("hachain chaos: --report DIR is required", file=sys.stderr)
        return 2
    if (problem := chaos_report.report_dir_problem(args.report)) is not None:
        print(f"hachain chaos: {problem}", file=sys.stderr)
        return 2
    if args.dir:
        try:
            os.makedirs(args.dir, exist_ok=True)
        except OSError as e:
            print(f"hachain chaos: --dir {args.dir}: cannot create the directory: "
                  f"{e.strerror or e}", file=sys.stderr)
            return 2
    if args.faults < 0:
        print("hachain chaos: --faults must be >= 0", file=sys.stderr)
        return 2
    if args.qemu:
        from hachain.simulators.qemu import campaign  # imports this module: no cycle at load
        return campaign.cmd_chaos_qemu(args)
    try:
        kinds = kind_list(args.kinds, KINDS)
    except ValueError as e:
        print(f"hachain chaos: --kinds: {e}", file=sys.stderr)
        return 2
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        print("hachain chaos: needs root and unshare(1) (the simulated machine)",
              file=sys.stderr)
        return 1
    with stop_signals_raise():  # from here on a stop signal ends with a partial report
        return _campaign(args, kinds)


def _campaign(args: argparse.Namespace, kinds: list[str]) -> int:
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    work = os.path.abspath(args.dir) if args.dir else tempfile.mkdtemp(prefix="hachain-chaos-")
    os.makedirs(work, exist_ok=True)
    cfg_path, cfg = _campaign_setup(args, work)
    tmpfs, tmpfs_reason = can_mount_tmpfs(work)
    runnable, skipped = capabilities(kinds, cfg, tmpfs, tmpfs_reason)
    longrun = sorted(n for n, s in cfg.services.items() if s.kind == "longrun" and s.enabled)
    live = [n for n in longrun if cfg.services[n].watchdog_sec or cfg.services[n].health]
    if not runnable:
        print("hachain chaos: no fault kind can run here: "
              + "; ".join(f"{k}: {v}" for k, v in skipped.items()), file=sys.stderr)
        return 1
    sched = schedule(seed, args.faults, runnable, longrun, live)
    chosen = sched
    if args.only:
        try:
            only = {int(x) for x in args.only.split(",") if x.strip()}
        except ValueError:
            print("hachain chaos: --only takes comma-separated indexes", file=sys.stderr)
            return 2
        chosen = [f for f in sched if f.index in only]
    for k, why in skipped.items():
        print(f"chaos: skipping {k}: {why}", file=sys.stderr)
    print(f"chaos: seed {seed}, {len(chosen)} fault(s), kinds {','.join(runnable)}; "
          f"work dir {work}", file=sys.stderr)
    progress = Progress()
    try:
        rep = run_campaign(cfg_path, os.path.join(work, "c"), seed, chosen, runnable,
                           skipped, tmpfs, progress, note=progress.note)
    except CampaignError as e:
        _say(f"hachain chaos: {e} (seed {seed})", sys.stderr)
        return 1
    if rep.get("interrupted"):
        progress.interrupted()
    return _finish(args, rep, seed, work, cfg_path, chosen, runnable, tmpfs)


def write_reports(rep: dict[str, Any], directory: str) -> tuple[str, str | None]:
    """Write report.json and report.html whole and print the summary table. (The HTML
    report's path for the verdict line, None), or ("not written (see above)", why)
    after that line on stderr, when a file could not be written."""
    unwritten = chaos_report.save_reports(rep, directory)
    if unwritten:
        _say(f"hachain chaos: {unwritten}", sys.stderr)
    _say(chaos_report.table_text(rep["summary"]))
    if unwritten:
        return "not written (see above)", unwritten
    return os.path.join(directory, "report.html"), None


def _say(text: str, stream: Any = None) -> None:
    """print(), except that a terminal gone away (SIGHUP, EIO) does not stop the end."""
    try:
        print(text, file=stream or sys.stdout, flush=True)
    except (OSError, ValueError):
        pass


def repro_report_dir(report: str) -> str:
    """Where the reproduction command writes its report: next to, never over, the
    evidence of the run being reproduced."""
    return os.path.normpath(report) + "-repro"


def _finish(args: argparse.Namespace, rep: dict[str, Any], seed: int, work: str,
            cfg_path: str, chosen: list[Fault], runnable: list[str], tmpfs: bool) -> int:
    """Shrink a failure, write the reports, print the table and the one verdict line."""
    rep["config"] = args.config or "built-in campaign configuration"

    def command(faults: int, only: list[int] | None) -> str:
        return (f"hachain chaos{' -c ' + args.config if args.config else ''} --faults {faults} "
                f"--seed {seed} --kinds {','.join(runnable)} "
                f"--report {repro_report_dir(args.report)}"
                + ("" if only is None else " --only " + ",".join(map(str, only))))
    fails = [r for r in rep["results"] if not r["ok"]]
    if fails:
        first = next(f for f in chosen if f.index == fails[0]["index"])
        late = Stop.signame()  # a stop signal after the last fault was judged
        if args.no_shrink or rep.get("interrupted") or late:
            idx = [f.index for f in chosen if f.index <= first.index]
            note = "not shrunk" + (f" (interrupted by {late})" if late else "")
        else:
            _say("chaos: looking for a shorter reproduction...", sys.stderr)
            # Ctrl-C ends the search (its run reports "interrupted"); the report is written
            idx, note = shrink(cfg_path, work, seed, chosen, first, runnable, tmpfs)
        rep["repro"] = {"command": command(args.faults, idx), "indexes": idx, "note": note}
    elif rep["baseline_problems"]:
        rep["repro"] = {"command": command(0, None), "indexes": [],
                        "note": "the machine never converged after power-on, before any fault"}
    # (not armed: a stop signal now only waits, and the report is written whole)
    html_path, unwritten = write_reports(rep, args.report)
    if rep["baseline_problems"] and not rep["results"]:
        _say(f"chaos: seed {seed}: the machine never converged before the first fault: "
             + "; ".join(rep["baseline_problems"]), sys.stderr)
    elif rep["baseline_problems"]:
        _say(f"chaos: seed {seed}: " + "; ".join(rep["baseline_problems"]), sys.stderr)
    for r in fails:
        for line in failure_lines(r):
            _say(f"chaos: seed {seed}: {line}", sys.stderr)
    if rep.get("repro"):
        _say(f"chaos: reproduce ({rep['repro']['note']}): {rep['repro']['command']}",
             sys.stderr)
    _say(verdict_line(rep, html_path))
    return 0 if rep["ok"] and not unwritten else 1
