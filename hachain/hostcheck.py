"""`hachain check` on this host: can each service's programs be run here, by its user?

Owns: finding a service's programs (its command's and each pre_start command's
program, looked up in the service's PATH as the restarter looks them up) and saying, in
one line each, why one cannot be run: missing, not a regular file, no execute bit for
the service's user, or a directory on the way that its user cannot search. A mistake of
this kind fails the service at every start; `hachain check` says so before anything
runs. The same for each machine check's command and repairs, and a sensor or an
interface a check names that this host does not have. Also a setting this host would
refuse: an oom_score_adj below 0 without
CAP_SYS_RESOURCE (not applied: the service runs all the same), a capability outside
this host's bounding set (every start fails); and a `condition` that does not hold now
(the service would be skipped) or an `assert` (its start would fail). (The chain's own
oom_score_adj is not reported: each layer says so as it starts.) Reads file metadata
only. Must not: start, signal or change anything.

Permission bits are checked the way the kernel checks them for the user's uid, primary
group and supplementary groups (access control lists are not read: a file an ACL opens
may be reported, one it closes is not).
"""

from __future__ import annotations

import grp
import os
import pwd
import resource
import stat

from hachain import bpf, cgroupfs, conditions, listen, mounts, seccomp
from hachain.configtypes import (
    CAPABILITIES,
    SERVICE_PATH,
    CheckConfig,
    Config,
    ServiceConfig,
)


def _who(svc: ServiceConfig) -> tuple[int, set[int], str] | None:
    """(uid, gids, how to name it) of the service's user; None when it runs as this
    process does, or its user or group is unknown here (reported elsewhere)."""
    if svc.user is None and svc.group is None:
        return None
    try:
        uid, gid = os.getuid(), os.getgid()
        label = []
        if svc.user is not None:
            pw = pwd.getpwnam(svc.user)
            uid, gid = pw.pw_uid, pw.pw_gid
            label.append(f"user {svc.user}")
        if svc.group is not None:
            gid = grp.getgrnam(svc.group).gr_gid
            label.append(f"group {svc.group}")
        gids = {gid}
        if svc.user is not None:
            gids |= set(os.getgrouplist(svc.user, gid))
    except (KeyError, OSError):
        return None
    return uid, gids, " and ".join(label)


def _allows(st: os.stat_result, uid: int, gids: set[int], bit: int) -> bool:
    """Do the mode bits give `uid`/`gids` the permission `bit` (1: execute or search)?"""
    if uid == 0:
        # root: search always; execute when anyone may
        return not stat.S_ISREG(st.st_mode) or bool(st.st_mode & 0o111)
    if st.st_uid == uid:
        return bool(st.st_mode & (bit << 6))
    if st.st_gid in gids:
        return bool(st.st_mode & (bit << 3))
    return bool(st.st_mode & bit)


def _mode(st: os.stat_result) -> str:
    """'0700 root:root'."""
    try:
        user = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        user = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"{stat.S_IMODE(st.st_mode):04o} {user}:{group}"


def _find(program: str, path_var: str) -> str | None:
    if "/" in program:
        return program
    for d in path_var.split(":"):
        candidate = os.path.join(d or ".", program)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _unreachable(path: str, uid: int, gids: set[int]) -> str | None:
    """The first directory from / down to `path` that uid/gids cannot pass through
    ("/x is 0700 root:root"), or None."""
    parts = []
    d = path
    while True:
        parts.append(d)
        if d == "/":
            break
        d = os.path.dirname(d)
    for d in reversed(parts):
        try:
            dst = os.stat(d)
        except OSError:
            continue
        if not _allows(dst, uid, gids, 1):
            return f"{d} is {_mode(dst)}"
    return None


def program_problem(program: str, svc: ServiceConfig) -> str | None:
    """Why `program` cannot be run as `svc` runs (one clause), or None."""
    path_var = dict(svc.env).get("PATH", SERVICE_PATH)
    found = _find(program, path_var)
    if found is None:
        return f"not found in PATH ({path_var})"
    if "/" in program and not program.startswith("/"):
        return None  # relative to the service's cwd: looked for when it starts
    try:
        st = os.stat(found)
    except OSError as e:
        return f"{e.strerror or e}"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    who = _who(svc)
    if who is None:
        return None if st.st_mode & 0o111 else f"not executable ({_mode(st)})"
    uid, gids, label = who
    real = os.path.realpath(found)
    if (blocked := _unreachable(os.path.dirname(real), uid, gids)) is not None:
        return f"{label} cannot reach it: {blocked}"
    if not _allows(st, uid, gids, 1):
        return f"{label} cannot run it: {real} is {_mode(st)}"
    return None


def _capability_sets() -> tuple[int, int]:
    """(effective, bounding) capability sets of this process."""
    sets = {"CapEff:": 0, "CapBnd:": 0}
    try:
        with open("/proc/self/status") as f:
            for ln in f:
                key = ln.split(None, 1)[0] if ln.strip() else ""
                if key in sets:
                    sets[key] = int(ln.split()[1], 16)
    except (OSError, ValueError):
        return ~0, ~0  # cannot tell: nothing is reported
    return sets["CapEff:"], sets["CapBnd:"]


def _cgroup_programs_problem(cfg: Config, svc: ServiceConfig) -> str | None:
    """Why the cgroup programs of `svc` (device_allow / device_policy, ip_address_*)
    cannot be held here: no cgroups for the chain, or a program the kernel refuses (it
    is loaded, not attached). None when it has none, or they can be."""
    from hachain import devices, ipfilter
    dev = devices.policy_rules(svc)
    if dev is None and not ipfilter.used(svc):
        return None
    keys = "device_allow / device_policy" if dev is not None else \
        "ip_address_allow / ip_address_deny"
    root = cfg.chain.cgroup_root
    if root == "none" or (root == "auto" and not (
            (m := cgroupfs.find_cgroup2_mount()) and os.access(m, os.W_OK))):
        return f"{keys} need the chain's cgroups, which it has none of here " \
               f"(chain.cgroup_root = {root!r})"
    try:
        if dev is not None:
            os.close(bpf.load(devices.program(devices.resolve(dev)[0]),
                              bpf.PROG_TYPE_CGROUP_DEVICE))
        if ipfilter.used(svc):
            for code in ipfilter.programs(svc):
                os.close(bpf.load(code, bpf.PROG_TYPE_CGROUP_SKB))
    except OSError as e:
        return f"{keys}: the kernel refuses its program here: {e.strerror or e}"
    return None


def _listen_problem(spec: str) -> str | None:
    """Why the restarter could not open `spec` on this host now, or None: an address
    another process holds (or this chain's restarter, when it runs), or one the host
    does not have. Bound and closed at once; a unix path is only looked at."""
    import errno
    import socket
    a = listen.parse(spec)
    if isinstance(a.address, str):  # a path: someone answering on it holds it
        if not os.path.exists(a.address):
            return None
        with socket.socket(socket.AF_UNIX, a.type) as s:
            try:
                s.connect(a.address)
            except OSError:
                return None
        return ("something listens on it now (another process, or this chain's restarter "
                "if it runs: `hachain status NAME` shows what it holds)")
    if isinstance(a.address, bytes):
        return None
    try:
        s = socket.socket(a.family, a.type)
    except OSError:
        return None
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if a.family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if a.any_host else 1)
        s.bind(a.address)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            return ("the address is in use on this host now (by another process, or by "
                    "this chain's restarter if it runs: `hachain status NAME` shows what it "
                    "holds): every start would wait for it")
        if e.errno == errno.EADDRNOTAVAIL:
            return "this host has no such address now: every start would wait for it"
        return None
    finally:
        s.close()
    return None


def problems(cfg: Config) -> list[str]:
    """One line per program of a service that cannot be run here as the service runs,
    per setting this host would refuse (a capability it does not have), and per
    `condition` or `assert` that does not hold here now, and per seccomp filter that
    cannot be built here."""
    out = []
    eff, bounding = _capability_sets()
    can_lower = bool(eff >> CAPABILITIES.index("SYS_RESOURCE") & 1)
    for name, svc in cfg.services.items():
        if svc.oom_score_adj < 0 and not can_lower:
            out.append(f"service {name}: oom_score_adj = {svc.oom_score_adj} will not be "
                       "applied here (no CAP_SYS_RESOURCE): it runs at the restarter's "
                       "value")
        if not can_lower:  # no CAP_SYS_RESOURCE: a hard limit cannot be raised here
            for res, _soft, hard in svc.rlimits:
                have = resource.getrlimit(getattr(resource, "RLIMIT_" + res.upper()))[1]
                if have != resource.RLIM_INFINITY and (hard < 0 or hard > have):
                    out.append(f"service {name}: rlimits.{res} hard limit "
                               f"{'unlimited' if hard < 0 else hard} is above this host's "
                               f"{have} and raising it needs CAP_SYS_RESOURCE, which the "
                               "restarter does not have here: every start would fail")
        lacking = [c for c in svc.capabilities
                   if not bounding >> CAPABILITIES.index(c.removeprefix("CAP_")) & 1]
        if lacking:
            out.append(f"service {name}: capabilities: {', '.join(lacking)} not in this "
                       "host's bounding set: every start would fail")
        for table, kind, then in ((svc.condition, "condition", "it would be skipped"),
                                  (svc.assertion, "assert", "its start would fail")):
            failed = conditions.verdict(table, kind) if table is not None else ""
            if failed:
                out.append(f"service {name}: {failed} on this host now: {then}")
        if svc.credentials and (who := _who(svc)) is not None and \
                (blocked := _unreachable(os.path.realpath(cfg.chain.state_dir),
                                         who[0], who[1])) is not None:
            out.append(f"service {name}: credentials: {who[2]} cannot reach its copies "
                       f"under chain.state_dir: {blocked}")
        if seccomp.uses_seccomp(svc):
            try:
                seccomp.programs(svc)  # libseccomp here, and every call it names known
            except seccomp.FilterError as e:
                out.append(f"service {name}: {e}: every start would fail")
        for spec in svc.listen:
            if (taken := _listen_problem(spec)) is not None:
                out.append(f"service {name}: listen {spec!r}: {taken}")
        if svc.requires_mounts_for and (waits := mounts.check(svc.requires_mounts_for)):
            out.append(f"service {name}: {waits.removesuffix('; waiting for it')} here now: "
                       "its start would wait")
        if svc.cpu_affinity and not set(svc.cpu_affinity) & os.sched_getaffinity(0):
            out.append(f"service {name}: cpu_affinity = {list(svc.cpu_affinity)}: no CPU of "
                       "it is one this host lets the chain use: every start would fail")
        for key, lookup in (("socket_user", pwd.getpwnam), ("socket_group", grp.getgrnam)):
            if (who_name := getattr(svc, key)) is not None:
                try:
                    lookup(who_name)
                except KeyError:
                    out.append(f"service {name}: {key} = \"{who_name}\": no such "
                               f"{key[7:]} here: every start would fail")
        if (why := _cgroup_programs_problem(cfg, svc)) is not None:
            out.append(f"service {name}: {why}: every start would fail")
        programs = [("command[0]", svc.command[0])]
        programs += [(f"{key}[{i}]", argv[0].removeprefix("-"))
                     for key in ("pre_start", "post_start", "post_stop")
                     for i, argv in enumerate(getattr(svc, key))]
        for what, program in programs:
            why = program_problem(program, svc)
            if why is not None:
                out.append(f"service {name}: {what} = {program}: {why}")
    for name, chk in cfg.checks.items():
        out += [f"check {name}: {line}" for line in check_problems(chk)]
    return out


def _programs_of(argv: tuple[str, ...]) -> list[str]:
    """The programs a command runs: argv[0], and the one a shell wrapper execs as its
    `$0` (`sh -c 'exec "$0" ...' PROG ...`, what `hachain import` writes for the
    `watchdog` daemon's repair-binary)."""
    progs = [argv[0]]
    if len(argv) >= 4 and os.path.basename(argv[0]) in ("sh", "bash", "dash") and \
            argv[1] == "-c" and argv[2].startswith('exec "$0"'):
        progs.append(argv[3])
    return progs


def check_problems(c: CheckConfig) -> list[str]:
    """What a machine check ([check.NAME]) would fail on here, whatever the machine's
    health: a program that cannot run, a sensor or an interface this host does not have.
    (A pid file or a liveness file may appear later: not reported.)"""
    out = []
    root = ServiceConfig(name="", command=("/bin/true",))  # checks run as root, PATH only
    argvs = [("command[0]", c.command)] if c.kind == "command" else []
    argvs += [(f"repair[{i}]", argv) for i, argv in enumerate(c.repair)]
    said: set[str] = set()  # (a repair list may run one program several times)
    for what, argv in argvs:
        for prog in _programs_of(argv):
            if prog not in said and (why := program_problem(prog, root)) is not None:
                said.add(prog)
                out.append(f"{what} = {prog}: {why}")
    if c.kind == "temperature" and not os.path.exists(c.path):
        out.append(f"path = {c.path}: no such sensor file here: every try would fail")
    if c.kind == "interface" and not os.path.exists(f"/sys/class/net/{c.interface}"):
        out.append(f"interface = {c.interface}: no such interface here: every try would "
                   "fail")
    return out
