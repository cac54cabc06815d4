"""The `hachain` command: one entry point, one subcommand per job.

Exit codes: 0 success, 1 a failed check or operation, 2 bad usage or bad configuration.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from hachain import bootrecord, channels, client, cmdline

if TYPE_CHECKING:
    from hachain import config

_err = cmdline.err
_load = cmdline.load
dirs = cmdline.dirs


# --- check / run ----------------------------------------------------------------------------

def cmd_check(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    n = len(cfg.services)
    crit = sum(1 for s in cfg.services.values() if s.critical)
    gating = sum(1 for c in cfg.checks.values() if c.action == "reboot")
    checks = f", {len(cfg.checks)} machine check(s) ({gating} gating)" if cfg.checks else ""
    print(f"{args.config}: OK: {n} service(s), {crit} critical{checks}, watchdog device "
          f"{cfg.watchdog.device!r} (timeout {cfg.watchdog.timeout} s, pet every "
          f"{cfg.watchdog.pet_interval:g} s)")
    if cfg.cluster is not None:
        import importlib.util
        if importlib.util.find_spec("aetcd") is None:
            _err(f"{args.config}: [cluster] needs the etcd client: pip install "
                 "'hachain[cluster]' (aetcd); without it the node runs no singleton")
            return 1
        from hachain.cluster import timing
        cl, w = cfg.cluster, cfg.watchdog.timeout
        print(f"cluster: node {cl.node!r}, lease TTL {cl.lease_ttl} s: it fences itself "
              f"{cl.lease_ttl / 2:g} s after its last renewal; a new owner waits "
              f"{timing.takeover_wait(cl.lease_ttl, w, cl.margin):g} s after the lease "
              f"expires; failover within "
              f"{timing.failover_bound(cl.lease_ttl, w, cl.margin, cfg.chain.heartbeat_interval):g}"
              " s plus the service's start")
    # A configuration may be checked on a build host where its users do not exist yet:
    # a warning each, not an error (the restarter fails the service's start instead).
    for line in _unknown_accounts(cfg):
        _err(f"{args.config}: warning: {line}")
    # the same for a program this host does not have, or the service's user cannot run:
    # each such service would fail at every start
    from hachain import hostcheck
    for line in hostcheck.problems(cfg):
        _err(f"{args.config}: warning: {line}")
    if cfg.watchdog.device == "auto":
        from hachain.watchdog.discover import discover
        if not discover():
            _err(f"{args.config}: warning: watchdog.device = \"auto\" but this machine has no "
                 "watchdog device: the tickler will exit and init will retry until one "
                 "appears (load softdog, or set device = \"none\" to run without one)")
    elif cfg.watchdog.device.startswith("/") and not os.path.exists(cfg.watchdog.device):
        _err(f"{args.config}: warning: watchdog.device {cfg.watchdog.device} does not exist "
             "here")
    if cfg.chain.cgroup_root not in ("auto", "none"):
        from hachain.cgroupfs import cgroup2_problem
        if (why := cgroup2_problem(cfg.chain.cgroup_root)) is not None:
            _err(f"{args.config}: warning: chain.cgroup_root {cfg.chain.cgroup_root}: {why}: "
                 "the restarter will run without cgroups here (process groups)")
    return 0


def _unknown_accounts(cfg: config.Config) -> list[str]:
    """One line per service `user` or `group` this host's passwd/group does not know."""
    import grp
    import pwd
    out = []
    for name, svc in cfg.services.items():
        for kind, value, lookup in (("user", svc.user, pwd.getpwnam),
                                    ("group", svc.group, grp.getgrnam)):
            if value is None:
                continue
            try:
                lookup(value)
            except KeyError:
                out.append(f"service {name}: {kind} {value} does not exist on this host")
    return out


def _dir_problem(path: str) -> tuple[str, int]:
    """Why `path` cannot be made a directory ("" when it is one), and the exit code: 2 when
    a file is in the way (the configuration names the wrong place), 1 when the host
    refused (read-only, full, no permission)."""
    try:
        os.makedirs(path, exist_ok=True)
    except FileExistsError:
        return "exists and is not a directory", 2
    except NotADirectoryError:
        return "cannot create the directory: a part of the path is not a directory", 2
    except OSError as e:
        return f"cannot create the directory: {e.strerror or e}", 1
    return "", 0


PERSIST_DIR_TIMEOUT = 5.0  # s for `hachain run` to see persist_dir made (as the tickler)


class _Refused(Exception):
    """`hachain run` will not start the chain: one line, and the exit code."""

    def __init__(self, line: str, code: int) -> None:
        super().__init__(line)
        self.code = code


def cmd_run(args: argparse.Namespace) -> int:
    from hachain import snapshot
    # Validate once and keep what was accepted: the layers run this snapshot (init, which
    # this process becomes, has the same pid and so the same chain id), and a broken
    # file falls back to the last-known-good snapshot, said in one line.
    said: list[str] = []
    lock: list[int] = []

    def claim(cfg: config.Config) -> None:
        # Before anything is written there: the state directory, which the restarter cannot
        # start without (init would restart a restarter that cannot start for ever), and
        # the chain's own claim on it, so that a second `hachain run` of a running chain
        # (by mistake, or a unit started twice) is refused whole instead of rebinding its
        # sockets, overwriting its snapshot and waiting for its restarter's lock.
        state = cfg.chain.state_dir
        problem, code = _dir_problem(state)
        if problem:
            raise _Refused(f"{cfg.path}: chain.state_dir {state}: {problem}; nothing "
                           "started", code)
        try:
            lock.append(channels.take_init_lock(state))
        except channels.ChainRunning as e:
            raise _Refused(f"{cfg.path}: a chain already runs on {state} (its init is pid "
                           f"{e.holder}); nothing started: stop that one first", 1) from None
        except OSError as e:
            raise _Refused(f"{cfg.path}: chain.state_dir: cannot take "
                           f"{e.strerror or e}; nothing started", 1) from None
    try:
        cfg, snap = snapshot.accept(args.config, chain_id=channels.chain_id(os.getpid()),
                                    log=said.append, last_good=False, kept=True,
                                    claim=claim)
    except _Refused as e:
        for line in said:
            _err(line)
        _err(str(e))
        return e.code
    # persist_dir is looked at by a child with a deadline (a hung NFS or FUSE mount, a disk
    # in error recovery, block a lookup for good, and the chain must still start: its
    # tickler arms the watchdog). The same child then writes the durable last-known-good
    # copy (an fsync, 6-15 ms here), off the path to the first service; init, which this
    # process becomes, reaps it.
    for line in said:
        _err(line)
    sys.stdout.flush()
    sys.stderr.flush()
    persist = cfg.chain.persist_dir
    looked: list[str] = []  # in the child: the problem it answered

    def look() -> bytes:
        os.close(lock[0])  # (the child's copy: the lock stays with init, not with it)
        problem, code = _dir_problem(persist)
        looked.append(problem)
        return f"{code} {problem}".encode()

    def save() -> None:
        if not looked[0]:
            snapshot.save_last_good(cfg, snap, log=_err)
    try:
        answer = snapshot.in_child(look, PERSIST_DIR_TIMEOUT, then=save)
    except TimeoutError:
        _err(f"{cfg.path}: warning: chain.persist_dir {persist}: no answer within "
             f"{PERSIST_DIR_TIMEOUT:g} s (a hung mount or a failing disk?); starting the chain "
             f"anyway: the tickler arms the watchdog, and a restarter that cannot read its "
             f"state there fails the health gate")
    except OSError as e:  # no process or pipe to be had: look here, without a deadline
        _err(f"{cfg.path}: warning: chain.persist_dir {persist} looked at without a "
             f"deadline: {e.strerror or e}")
        problem, code = _dir_problem(persist)
        if problem:
            _err(f"{cfg.path}: chain.persist_dir {persist}: {problem}; nothing started")
            return code
        snapshot.save_last_good(cfg, snap, log=_err)
    else:
        code_text, _, problem = answer.decode().partition(" ")
        if problem:
            _err(f"{cfg.path}: chain.persist_dir {persist}: {problem}; nothing started")
            return int(code_text)
    argv, env = channels.lean_python(sys.executable, "hachain.init.main")
    argv += ["--state-dir", cfg.chain.state_dir, "--config", os.path.abspath(args.config),
             "--restart-delay", str(cfg.chain.restart_delay),
             "--heartbeat-interval", str(cfg.chain.heartbeat_interval),
             "--oom-score-adj", str(cfg.chain.oom_score_adj)]
    if cfg.watchdog.device == "none" and args.no_tickler:
        argv.append("--no-tickler")
    # a tickler that cannot run is given up on only where a device can expire
    argv += ["--tickler-deaths", "0" if cfg.watchdog.device == "none"
             else str(cfg.watchdog.tickler_deaths),
             "--tickler-min-run", str(cfg.watchdog.tickler_min_run),
             "--tickler-pause", str(channels.tickler_pause(cfg.watchdog.timeout)),
             "--persist-dir", cfg.chain.persist_dir]
    if cfg.cluster is not None:
        argv.append("--cluster")
    if not cfg.chain.restarter_standby:
        argv.append("--no-restarter-standby")
    env[channels.ENV_LOG_FORMAT] = cfg.chain.log_format  # init and its children
    os.set_inheritable(lock[0], True)  # init is this process: it keeps the lock
    env[channels.ENV_INIT_LOCK_FD] = str(lock[0])
    sys.stdout.flush()
    os.execve(sys.executable, argv, env)
    return 1  # not reached


# --- status ---------------------------------------------------------------------------------
# The work is in hachain/status.py (imported by cmd_status).


def cmd_status(args: argparse.Namespace) -> int:
    """Exit 0 only when the chain is healthy, 1 when degraded or resetting (like
    `systemctl is-system-running`) or when the state directory is not there, 2 on bad
    usage or configuration."""
    from hachain import status
    if getattr(args, "cluster", False):
        return cmd_status_cluster(args)
    state_dir, persist_dir = dirs(args)
    if not os.path.isdir(state_dir):
        # Not a chain's (a typo, a file, no chain here): say so, not "init dead" from
        # the heartbeats that cannot be there.
        why = "missing" if not os.path.lexists(state_dir) else "not a directory"
        msg = f"status: {state_dir}: not a chain's state directory ({why})"
        if args.json:
            print(json.dumps({"error": msg, "state_dir": state_dir}, sort_keys=True))
        else:
            _err(msg)
        return 1
    names = list(dict.fromkeys(getattr(args, "names", None) or ()))
    for name in names:
        if (problem := channels.service_name_problem(name)):
            _err(f"status: {problem}")
            return 2
    st = status.gather_status(state_dir, persist_dir, config_path=args.config,
                              persist_timeout=status.PERSIST_TIMEOUT)
    if names:
        return _status_of(st, names, args)
    sys.stdout.write(status.text(st, args.json, sys.stdout.isatty()))
    return status.exit_code(st)


def _status_of(st: dict[str, Any], names: list[str], args: argparse.Namespace) -> int:
    """`hachain status NAME...`: each service's block (or its JSON); exit 0 when every one
    is as wanted (up and ready or done, or down and stopped), 1 when one is not or the
    restarter cannot say, 2 for a name no service has."""
    from hachain import status
    from hachain.errors import closest
    known = st["services"] or (st["chain"].get("last_known") or {}).get("services") or {}
    if not known:
        _err(f"status: the restarter does not answer "
             f"({st['chain'].get('restarter_error', 'no reply')}) and left no table")
        return 1
    for name in names:
        if name not in known:
            near = closest(name, known)
            _err(f"status: unknown service {name!r}" + (f" (did you mean {near!r}?)"
                                                       if near else ""))
            return 2
    log_dir = (st["chain"].get("restarter") or {}).get("log_dir")
    if not log_dir:  # the restarter did not answer: where `hachain logs` would look
        from hachain import logs
        try:
            log_dir = logs.log_dir_for(args)[0]
        except Exception:  # noqa: BLE001 - a configuration that does not load: no log
            log_dir = None
    details = status.service_details(st, names, args.lines, log_dir,
                                     log_timeout=status.PERSIST_TIMEOUT)
    if args.json:
        sys.stdout.write(json.dumps({"services": details, "verdict": st["verdict"]},
                                    sort_keys=True, default=str) + "\n")
    else:
        sys.stdout.write("\n".join(status.render_details(details, sys.stdout.isatty()))
                         + "\n")
    live = bool(st["services"])
    return 0 if live and all(status.as_wanted(d) for d in details.values()) else 1


def cmd_status_cluster(args: argparse.Namespace) -> int:
    """Every node and singleton as etcd knows them; 1 when no member answers."""
    cfg = _load(args.config or channels.DEFAULT_CONFIG)
    if cfg.cluster is None:
        _err(f"{cfg.path}: no [cluster] table: this chain is a single machine")
        return 2
    from hachain.cluster import view
    v = view.gather(cfg.cluster)
    if args.json:
        print(json.dumps(v, indent=2, sort_keys=True))
    elif "error" in v:
        _err(f"cannot read the cluster from etcd: {v['error']}")
    else:
        view.print_view(v, [n for n, s in cfg.services.items() if s.singleton])
    return 1 if "error" in v else 0


def cmd_move(args: argparse.Namespace) -> int:
    """Hand a singleton to another node: its owner stops it first, then releases it."""
    problem = channels.service_name_problem(args.name)
    if problem:
        _err(f"move: {problem}")
        return 2
    cfg = _load(args.config or channels.DEFAULT_CONFIG)
    svc = cfg.services.get(args.name)
    if cfg.cluster is None or svc is None or not svc.singleton:
        _err(f"{cfg.path}: {args.name!r} is not a singleton service of a [cluster]")
        return 2
    from hachain.cluster import view
    code, msg = view.move(cfg.cluster, args.name, args.node, args.timeout)
    (print if code == 0 else _err)(msg)
    return code


def cmd_reload(args: argparse.Namespace) -> int:
    if args.names:
        return cmd_reload_services(args)
    state_dir, _ = dirs(args)
    try:
        rep = client.request(state_dir, {"op": "reload"}, timeout=30)
    except client.ControlError as e:
        _err(str(e))
        return 1
    if not rep.get("ok"):
        for line in str(rep.get("error")).splitlines():
            _err(line)
        return 2
    print(f"reloaded: added {rep['added'] or '-'}, changed {rep['changed'] or '-'}, "
          f"removed {rep['removed'] or '-'}")
    return 0


def cmd_reload_services(args: argparse.Namespace) -> int:
    """`hachain reload NAME...`: each running service reads its configuration again (its
    reload_command or reload_signal); waits for each outcome (unless --no-wait) and says
    it, exit 1 when any failed."""
    for name in args.names:
        if problem := channels.service_name_problem(name):
            _err(f"reload: {problem}")
            return 2
    state_dir, _ = dirs(args)
    pending: dict[str, str] = {}
    rc = 0
    try:
        for name in dict.fromkeys(args.names):
            rep = client.request(state_dir, {"op": "reload-service", "name": name})
            if not rep.get("ok"):
                _err(f"reload {name}: {rep.get('error')}")
                rc = 1
            elif args.no_wait:
                print(f"{name}: reload " + ("queued" if rep.get("queued") else "begun"))
            else:
                pending[name] = str(rep.get("id"))
        pause = 0.01
        while pending:
            time.sleep(pause)
            pause = min(pause * 2, 0.2)
            for name, ident in list(pending.items()):
                rep = client.request(state_dir, {"op": "reload-result", "id": ident})
                if not rep.get("ok"):
                    _err(f"reload {name}: {rep.get('error')}")
                    rc = 1
                elif not rep.get("done"):
                    continue
                elif rep.get("reloaded"):
                    print(f"{name}: reloaded")
                else:
                    _err(f"reload {name}: failed: {rep.get('why')}")
                    rc = 1
                del pending[name]
    except client.ControlError as e:
        _err(f"reload: {e}")
        return 1
    return rc


def cmd_clear_boot_loop(args: argparse.Namespace) -> int:
    """`hachain clear --boot-loop`: leave rescue (the record first, then each held service)."""
    state_dir, persist_dir = dirs(args)
    try:
        held = bootrecord.clear_loop(persist_dir, time.time(), log=_err)
    except OSError as e:
        _err(f"clear --boot-loop: cannot write the boot record in {persist_dir}: {e}")
        return 1
    print("boot loop cleared: the boots before this one no longer count"
          + (f"; releasing {', '.join(held)}" if held else ""))
    rc = 0
    for name in held:
        try:
            rep = client.request(state_dir, {"op": "clear", "name": name})
        except client.ControlError as e:
            _err(f"clear {name}: {e} (it is released when the restarter starts)")
            return 1
        if not rep.get("ok"):
            _err(f"clear {name}: {rep.get('error')}")
            rc = 1
    return rc


def cmd_control(args: argparse.Namespace) -> int:
    if getattr(args, "boot_loop", False):
        if args.name is not None:
            _err("clear: give a service name or --boot-loop, not both")
            return 2
        return cmd_clear_boot_loop(args)
    if args.name is None:
        _err(f"{args.cmd}: a service name is required")
        return 2
    problem = channels.clear_name_problem(args.name) if args.cmd == "clear" else \
        channels.service_name_problem(args.name)
    if problem:
        _err(f"{args.cmd}: {problem}")
        return 2
    state_dir, _ = dirs(args)
    try:
        rep = client.request(state_dir, {"op": args.cmd, "name": args.name})
    except client.ControlError as e:
        _err(str(e))
        return 1
    if not rep.get("ok"):
        _err(f"{args.cmd} {args.name}: {rep.get('error')}")
        return 1
    print(f"{args.name}: {rep.get('state')}")
    return 0


def _signal_arg(text: str) -> int:
    """A signal for `hachain kill -s`: a name with or without SIG, in any case (HUP,
    sighup, SIGHUP), or a number the kernel knows (1-64: the real-time ones by number)."""
    import signal
    if text.isdigit():
        if int(text) in signal.valid_signals() and int(text) != 0:
            return int(text)
        raise argparse.ArgumentTypeError(f"{text}: no such signal number (1-{signal.NSIG - 1})")
    name = text.upper() if text.upper().startswith("SIG") else "SIG" + text.upper()
    if name in signal.Signals.__members__:
        return int(signal.Signals[name])
    from hachain.errors import closest
    near = closest(name, signal.Signals.__members__)
    raise argparse.ArgumentTypeError(f"{text}: unknown signal" + (
        f" (did you mean {near[3:]}?)" if near else " (a name such as HUP, or a number)"))


def cmd_kill(args: argparse.Namespace) -> int:
    """`hachain kill NAME [-s SIG] [--all]`: one signal to the service's main process (or
    every process of its cgroup); the restarter sends it and the restart policy answers
    whatever follows."""
    import signal
    problem = channels.service_name_problem(args.name)
    if problem:
        _err(f"kill: {problem}")
        return 2
    state_dir, _ = dirs(args)
    whom = "all" if args.all else "main"
    try:
        rep = client.request(state_dir, {"op": "kill", "name": args.name,
                                         "signal": args.signal, "whom": whom})
    except client.ControlError as e:
        _err(str(e))
        return 1
    signame = signal.Signals(args.signal).name if args.signal in set(signal.Signals) \
        else str(args.signal)
    if not rep.get("ok"):
        _err(f"kill {args.name}: {signame}: {rep.get('error')}")
        return 1
    pids = [int(p) for p in rep.get("pids") or ()]
    what = (f"process group {pids[0]}" if rep.get("group") else
            f"main pid {pids[0]}" if whom == "main" else
            f"{len(pids)} process(es) of its cgroup: {' '.join(map(str, pids))}")
    print(f"{args.name}: {signame} sent to {what}")
    return 0


# --- the parser -----------------------------------------------------------------------------

def _seconds_arg(text: str) -> float:
    """A number of seconds >= 0 and finite (`nan` passed every comparison: waited for ever)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text!r}")
    return value


def _log_lines_arg(text: str) -> int | None:
    """-n: a count >= 0, or "all" (None)."""
    if text == "all":
        return None
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a number >= 0 or 'all', got {text!r}")
    return int(text)


def _add_dirs(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", help="configuration file (to find state_dir)")
    p.add_argument("--state-dir", help="the chain's runtime directory")
    p.add_argument("--persist-dir", help="the chain's persistent directory")


CORE_COMMANDS = ("check", "run", "status", "start", "stop", "restart", "clear", "reload",
                 "kill")


def build_parser(plugins: bool = True, only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with `plugins` False only the core commands (the other
    subcommands' modules take ~100 ms to import: `hachain status` must stay fast), and
    with `only` just that core command (each sub-parser costs argparse ~0.5 ms)."""

    def want(name: str) -> bool:
        return only is None or only == name

    p = argparse.ArgumentParser(prog="hachain", description="a hardware-watchdog-backed "
                                "high-availability supervision chain")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    if want("check"):
        c = sub.add_parser("check", help="validate a configuration file")
        c.add_argument("-c", "--config", default=channels.DEFAULT_CONFIG)
        c.set_defaults(func=cmd_check)

    if want("run"):
        r = sub.add_parser("run", help="the whole chain in the foreground (init as "
                           "subreaper)")
        r.add_argument("-c", "--config", default=channels.DEFAULT_CONFIG)
        r.add_argument("--no-tickler", action="store_true",
                       help="with device = \"none\": do not start the tickler")
        r.set_defaults(func=cmd_run)

    if want("status"):
        s = sub.add_parser("status", help="chain layers and every service; with NAME, "
                           "that service in detail with the end of its log")
        s.add_argument("names", nargs="*", metavar="NAME",
                       help="show these services only, each with its processes and the "
                       "last lines of its log")
        s.add_argument("-n", "--lines", type=_log_lines_arg, default=10, metavar="N",
                       help="with NAME: how many log lines (default 10; 0 none; 'all')")
        _add_dirs(s)
        s.add_argument("--json", action="store_true",
                       help="one JSON object (stable for scripts)")
        s.add_argument("--cluster", action="store_true", help="every node and singleton, "
                       "from etcd ([cluster])")
        s.set_defaults(func=cmd_status)

    if want("move"):
        mv = sub.add_parser("move", help="hand a singleton over to another node ([cluster])")
        mv.add_argument("name")
        mv.add_argument("node")
        mv.add_argument("-c", "--config", help="configuration file")
        mv.add_argument("--timeout", type=_seconds_arg, default=30.0,
                        help="seconds (default 30)")
        mv.set_defaults(func=cmd_move)

    for name, hlp in (("start", "start a service (want up)"), ("stop", "stop a service "
                      "(want down, persisted)"), ("restart", "stop and start a service"),
                      ("clear", "release a service from maintenance or failed")):
        if not want(name):
            continue
        x = sub.add_parser(name, help=hlp)
        x.add_argument("name", nargs="?" if name == "clear" else None)
        if name == "clear":
            x.add_argument("--boot-loop", action="store_true",
                           help="leave rescue: release what the boot-loop breaker holds")
        _add_dirs(x)
        x.set_defaults(func=cmd_control, cmd=name)

    if want("kill"):
        k = sub.add_parser("kill", help="send a signal to a service (its main process; "
                           "--all: every process of its cgroup)")
        k.add_argument("name")
        k.add_argument("-s", "--signal", type=_signal_arg, default=15, metavar="SIGNAL",
                       help="a name (HUP, SIGUSR1) or a number; default TERM")
        k.add_argument("--all", action="store_true",
                       help="every process of the service's cgroup (its process group "
                       "without cgroups), not only the main process")
        _add_dirs(k)
        k.set_defaults(func=cmd_kill)

    if want("reload"):
        rl = sub.add_parser("reload", help="apply the changed configuration file "
                            "(validated first); with NAME, have that running service read "
                            "its own configuration again (reload_command or reload_signal)")
        rl.add_argument("names", nargs="*", metavar="NAME",
                        help="services to reload (none: the chain's configuration file)")
        rl.add_argument("--no-wait", action="store_true",
                        help="with NAME: return once the reload has begun")
        _add_dirs(rl)
        rl.set_defaults(func=cmd_reload)

    for mod in ("hachain.importer", "hachain.logs", "hachain.metrics", "hachain.watchdog.cli",
                "hachain.simulators.machine", "hachain.simulators.chaos",
                "hachain.simulators.verify") if plugins else ():
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name == mod or (e.name and mod.startswith(e.name + ".")) or \
                    e.name in ("prometheus_client",):
                continue  # an optional part that is not installed
            raise
        add = getattr(m, "add_parser", None)
        if add is not None:
            add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    words = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")]
    core = bool(words) and words[0] in CORE_COMMANDS
    # a core command builds its own sub-parser alone (`hachain status` runs often);
    # `hachain -h` and the rest build everything
    p = build_parser(plugins=not core, only=words[0] if core else None)
    return cmdline.run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
