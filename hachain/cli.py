"""The `hachain` command: one entry point, one subcommand per job.

Exit codes: 0 success, 1 a failed check or operation, 2 bad usage or bad configuration.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from typing import Any

from hachain import channels, client, config


def _err(msg: str) -> None:
    sys.stderr.write(f"hachain: {msg}\n")


def _load(path: str) -> config.Config:
    return config.with_env_overrides(config.load(path))


def dirs(args: argparse.Namespace) -> tuple[str, str]:
    """(state_dir, persist_dir) from --state-dir / -c / environment / defaults."""
    state = getattr(args, "state_dir", None)
    persist = getattr(args, "persist_dir", None)
    cpath = getattr(args, "config", None)
    if cpath or (not state and os.path.exists(config.DEFAULT_PATH)):
        path = cpath or config.DEFAULT_PATH
        try:
            cfg = _load(path)
        except config.ConfigError as e:
            # a broken file must not silence status or reload: the chain runs a snapshot,
            # so find it through the last-known-good copy of this same file
            # (its [chain] table, else the last-known-good copy of this same file)
            from hachain import snapshot
            salvaged = snapshot.salvage_chain(path)
            lkg = snapshot.find_last_good(os.path.abspath(path))
            if lkg is not None:
                cfg = config.with_env_overrides(config.parse(lkg.text, lkg.source))
                salvaged = {"state_dir": cfg.chain.state_dir,
                            "persist_dir": cfg.chain.persist_dir, **salvaged}
            if "state_dir" not in salvaged and not state:
                raise
            _err(f"warning: {e.errors[0]} (the chain's directories come from "
                 + ("its [chain] table)" if lkg is None else "its last-known-good copy)"))
            return (state or salvaged["state_dir"],
                    persist or salvaged.get("persist_dir") or config.ChainConfig().persist_dir)
        return state or cfg.chain.state_dir, persist or cfg.chain.persist_dir
    state = state or os.environ.get("HACHAIN_STATE_DIR") or config.ChainConfig().state_dir
    persist = persist or os.environ.get("HACHAIN_PERSIST_DIR") or config.ChainConfig().persist_dir
    return state, persist


# --- check / run ----------------------------------------------------------------------------

def cmd_check(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    n = len(cfg.services)
    crit = sum(1 for s in cfg.services.values() if s.critical)
    print(f"{args.config}: OK: {n} service(s), {crit} critical, watchdog device "
          f"{cfg.watchdog.device!r} (timeout {cfg.watchdog.timeout} s, pet every "
          f"{cfg.watchdog.pet_interval:g} s)")
    if cfg.watchdog.device == "auto":
        from hachain.watchdog.discover import discover
        if not discover():
            _err(f"{args.config}: warning: watchdog.device = \"auto\" but this machine has no "
                 "watchdog device: the tickler will exit and init will retry until one "
                 "appears (load softdog, or set device = \"none\" to run without one)")
    elif cfg.watchdog.device.startswith("/") and not os.path.exists(cfg.watchdog.device):
        _err(f"{args.config}: warning: watchdog.device {cfg.watchdog.device} does not exist "
             "here")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from hachain import snapshot
    # Validate once and keep what was accepted: the layers run this snapshot (init, which
    # this process becomes, has the same pid and so the same chain id), and a broken
    # file falls back to the last-known-good snapshot, said in one line.
    cfg, snap = snapshot.accept(args.config, chain_id=channels.chain_id(os.getpid()),
                                log=_err)
    argv, env = channels.lean_python(sys.executable, "hachain.init.main")
    argv += ["--state-dir", cfg.chain.state_dir, "--config", os.path.abspath(args.config),
             "--restart-delay", str(cfg.chain.restart_delay),
             "--heartbeat-interval", str(cfg.chain.heartbeat_interval)]
    if cfg.watchdog.device == "none" and args.no_tickler:
        argv.append("--no-tickler")
    env[channels.ENV_LOG_FORMAT] = cfg.chain.log_format  # init and its children
    sys.stdout.flush()
    os.execve(sys.executable, argv, env)
    return 1  # not reached


# --- status ---------------------------------------------------------------------------------

def gather_status(state_dir: str, persist_dir: str) -> dict[str, Any]:
    """Everything `hachain status` shows, as one JSON-able object."""
    now = time.monotonic()
    layers: dict[str, Any] = {}
    for layer in channels.LAYERS:
        hb = channels.read_heartbeat(state_dir, layer)
        if hb is None:
            layers[layer] = {"state": "missing"}
            continue
        alive = channels.pid_alive(hb.pid)
        pstate = channels.proc_state(hb.pid)
        layers[layer] = {
            "pid": hb.pid, "alive": alive, "stopped": pstate == "T",
            "uptime": round(hb.mono - hb.started_mono, 3), "restarts": hb.restarts,
            "heartbeat_age": round(hb.age(now), 3), "extra": hb.extra,
        }
    services: dict[str, Any] = {}
    restarter: dict[str, Any] = {}
    error = None
    try:
        rep = client.request(state_dir, {"op": "status"}, timeout=3.0)
        if rep.get("ok"):
            services = rep.get("services", {})
            restarter = rep.get("restarter", {})
        else:
            error = rep.get("error", "error")
    except client.ControlError as e:
        error = str(e)
    out: dict[str, Any] = {"chain": {"state_dir": state_dir, "layers": layers,
                                     "restarter": restarter},
                           "services": services}
    from hachain import snapshot
    out["chain"]["config"] = snapshot.describe(state_dir)
    if error:
        out["chain"]["restarter_error"] = error
    for key, fname in (("last_boot", channels.LAST_BOOT), ("gate_failure", channels.GATE_RECORD)):
        try:
            out["chain"][key] = channels.read_json(os.path.join(persist_dir, fname))
        except (ValueError, OSError):
            out["chain"][key] = None
    tk = layers.get("tickler", {}).get("extra") or {}
    out["chain"]["watchdog"] = {k: tk.get(k) for k in ("device", "armed", "petting", "timeout",
                                                       "timeleft", "pets", "gate")}
    return out


def chain_problems(st: dict[str, Any], heartbeat_timeout: float,
                   services: list[str] | None = None) -> list[str]:
    """Why a `gather_status` snapshot is not a converged chain ([] when it is): every
    layer alive with a fresh heartbeat, the restarter answering, the tickler petting,
    and each of `services` (default: all) ready."""
    why = []
    ch = st["chain"]
    for layer, d in ch["layers"].items():
        if d.get("state") == "missing":
            why.append(f"{layer}: no heartbeat")
        elif not d["alive"] or d["stopped"]:
            why.append(f"{layer}: pid {d['pid']} alive={d['alive']} stopped={d['stopped']}")
        elif d["heartbeat_age"] > heartbeat_timeout:
            why.append(f"{layer}: heartbeat {d['heartbeat_age']:.1f} s old")
    if ch.get("restarter_error"):
        why.append(f"restarter: {ch['restarter_error']}")
    wd = ch.get("watchdog") or {}
    if not wd.get("petting"):
        why.append(f"tickler not petting (gate {wd.get('gate')})")
    svcs = st["services"]
    for name in (services if services is not None else sorted(svcs)):
        state = svcs.get(name, {}).get("state", "unknown")
        if state != "ready":
            why.append(f"{name}: {state} (expected ready)")
    return why


def _fmt_age(v: Any) -> str:
    return "-" if v is None else f"{v:.1f}s"


def print_status(st: dict[str, Any]) -> None:
    tty = sys.stdout.isatty()

    def color(text: str, good: bool | None) -> str:
        if not tty or good is None:
            return text
        return f"\033[{'32' if good else '31'}m{text}\033[0m"

    ch = st["chain"]
    print("LAYER       PID      UP         RESTARTS  HEARTBEAT  STATE")
    for layer, d in ch["layers"].items():
        if d.get("state") == "missing":
            print(f"{layer:<11} {'-':<8} {'-':<10} {'-':<9} {'-':<10} " + color("missing", False))
            continue
        state = "alive" if d["alive"] else "dead"
        if d["stopped"]:
            state = "stopped (SIGSTOP)"
        print(f"{layer:<11} {d['pid']:<8} {_fmt_age(d['uptime']):<10} {d['restarts']:<9} "
              f"{_fmt_age(d['heartbeat_age']):<10} "
              + color(state, d["alive"] and not d["stopped"]))
    wd = ch.get("watchdog") or {}
    if wd.get("device"):
        gate = wd.get("gate") or {}
        parts = [f"watchdog: {wd['device']}"]
        if wd.get("timeout") is not None:
            parts.append(f"timeout {wd['timeout']}s")
        if wd.get("timeleft") is not None:
            parts.append(f"time left {wd['timeleft']}s")
        parts.append(f"pets {wd.get('pets') or 0}")
        verdict = "pass" if gate.get("ok") else "FAIL: " + "; ".join(gate.get("reasons", []))
        print(" ".join(parts) + " gate " + color(verdict, bool(gate.get("ok"))))
    conf = ch.get("config") or {}
    if conf.get("source"):
        ok = not conf.get("last_known_good") and conf.get("disk") == "same"
        print("config: " + color(conf["summary"], True if ok else False))
    lb = ch.get("last_boot")
    if lb:
        print(f"last boot: {lb.get('cause') or lb}")
    gf = ch.get("gate_failure")
    if gf:
        print(f"last gate failure: {'; '.join(gf.get('reasons', []))}")
    if ch.get("restarter_error"):
        print(color(f"restarter: {ch['restarter_error']}", False))
    for u in (ch.get("restarter") or {}).get("unwritten") or []:
        print(color(f"unwritten: {u['file']} since {u['since']:.0f} s: {u['error']}", False))
    if st["services"]:
        print()
        print(f"{'SERVICE':<20} {'STATE':<12} {'PID':<8} {'UPTIME':<9} {'RESTARTS':<8} "
              f"{'LAST EXIT':<18} {'READY':<7} {'HEALTH':<8} WHY")
        for name, s in sorted(st["services"].items()):
            good = s["state"] in ("ready", "done") if s["want"] == "up" else None
            why = s.get("reason") or ""
            if s.get("status_text"):
                why = (why + " " if why else "") + f"[{s['status_text']}]"
            crit = "*" if s.get("critical") else " "
            last = (s.get("last_exit") or {}).get("text", "-")
            h = s.get("health")
            health = "-" if not h else ("ok" if not h["failures"] else f"{h['failures']} fail")
            print(f"{name + crit:<20} " + color(f"{s['state']:<12}", good) +
                  f" {s['pid'] or '-'!s:<8} {_fmt_age(s['uptime']):<9} {s['restarts']:<8} "
                  f"{last[:18]:<18} {s.get('ready', '-'):<7} {health:<8} {why}")
        if any(s.get("critical") for s in st["services"].values()):
            print("(* critical: part of the health gate)")


def cmd_status(args: argparse.Namespace) -> int:
    state_dir, persist_dir = dirs(args)
    st = gather_status(state_dir, persist_dir)
    if args.json:
        print(json.dumps(st, indent=2, sort_keys=True))
    else:
        print_status(st)
    return 0 if "restarter_error" not in st["chain"] else 1


def cmd_reload(args: argparse.Namespace) -> int:
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


def cmd_control(args: argparse.Namespace) -> int:
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


# --- the parser -----------------------------------------------------------------------------

def _add_dirs(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", help="configuration file (to find state_dir)")
    p.add_argument("--state-dir", help="the chain's runtime directory")
    p.add_argument("--persist-dir", help="the chain's persistent directory")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hachain", description="a hardware-watchdog-backed "
                                "high-availability supervision chain")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    c = sub.add_parser("check", help="validate a configuration file")
    c.add_argument("-c", "--config", default=config.DEFAULT_PATH)
    c.set_defaults(func=cmd_check)

    r = sub.add_parser("run", help="the whole chain in the foreground (init as subreaper)")
    r.add_argument("-c", "--config", default=config.DEFAULT_PATH)
    r.add_argument("--no-tickler", action="store_true",
                   help="with device = \"none\": do not start the tickler")
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("status", help="chain layers and every service")
    _add_dirs(s)
    s.add_argument("--json", action="store_true", help="one JSON object (stable for scripts)")
    s.set_defaults(func=cmd_status)

    for name, hlp in (("start", "start a service (want up)"), ("stop", "stop a service "
                      "(want down, persisted)"), ("restart", "stop and start a service"),
                      ("clear", "release a service from maintenance or failed")):
        x = sub.add_parser(name, help=hlp)
        x.add_argument("name")
        _add_dirs(x)
        x.set_defaults(func=cmd_control, cmd=name)

    rl = sub.add_parser("reload", help="apply the changed configuration file (validated first)")
    _add_dirs(rl)
    rl.set_defaults(func=cmd_reload)

    for mod in ("hachain.importer", "hachain.logs", "hachain.metrics", "hachain.watchdog.cli",
                "hachain.simulators.machine", "hachain.simulators.chaos",
                "hachain.simulators.verify"):
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
    p = build_parser()
    args = p.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except config.ConfigError as e:
        for line in e.errors:
            _err(line)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
