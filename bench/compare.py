"""hachain next to s6, runit and supervisord on the same workloads; prints one table.

    .venv/bin/python bench/compare.py [--quick] [--smoke] [--sizes 1,100,1000] [--runs R]
                                      [--restarts N] [--idle SECONDS] [--peers LIST]

Every supervisor runs the same service, bench/stamp.c compiled once (statically linked, so
its stamp is taken right after execve; --dynamic-stamp links it dynamically): first thing in
main() it sends "<pid> <CLOCK_MONOTONIC ns>" to a datagram socket, then pauses forever.
s6 and runit exec ./run (a symlink to the binary), so the socket path reaches them through
$STAMP_SOCK; hachain and supervisord pass it as argv[1] and the service name as argv[2].

More peers, not run unless named in --peers: "floor" and "floor-nocg", bench/floor.c
(compiled per run), a bare C loop that restarts a dead service at once (signalfd + epoll,
waitpid, then clone3 with CLONE_INTO_CGROUP into the service's own cgroup, or fork() for
floor-nocg, and execve). It is the least any supervisor could do on this machine: the floor
under every restart figure. It cannot recover from its own death, so the recovery workload
(4.) skips it. And "pyfloor", bench/pyfloor.py: three Python processes in a row, started as
hachain's layers are (the venv's Python reads the file and execs `python -S` init, which
starts a `python -S` restarter), that import only what every layer needs and start the
services with hachain's compiled spawn: the least a chain of Python layers can take to
start its services, the floor under hachain's start-up rows. Recovery skips it too.

Workloads, for each supervisor in its fastest supported setting (see docs/benchmarks.md):
1. restart after idle (the headline): a service is SIGKILLed after at least 1 s in which
   nothing happened (no kill, no restart, on any supervisor), at a random phase within a
   further second; latency is the replacement's own exec stamp minus the moment of the
   kill. p50 / p95. This is how crashes come in production: to a chain that was idle.
   Restart back to back: services killed one after the other, 20 ms apart (each up more
   than 1 s), with the supervisor and the kernel warm. p50 / p95 / max.
2. idle cost: CPU seconds and context switches of every supervisor process over a quiet
   window, and their summed PSS and RSS.
3. start-up: launching the supervisor with N services until N stamps arrived (hachain also
   with ready = "notify", until its control socket reports all N ready).
4. recovery: SIGKILL of the top supervisor process (hachain's restarter, s6-svscan,
   runsvdir, supervisord) while N services run, plus one service killed at the same moment;
   time until everything is supervised again, duplicate service processes, lost services.

The script becomes a child subreaper, so every process it starts (and every orphan of
those) stays in its process tree; all of them are SIGKILLed at the end, even on failure.
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import json
import os
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import benchlib  # noqa: E402

from hachain import channels, client  # noqa: E402
from hachain.cgroupfs import find_cgroup2_mount, remove_cgroup_tree  # noqa: E402

PEERS = ("hachain", "s6", "runit", "supervisord")
PR_SET_CHILD_SUBREAPER = 36
UP_BEFORE_KILL = 1.05  # s6-supervise and runsv hold a restart back 1 s after a short run
QUIET_BEFORE_KILL = 1.0  # restart after idle: nothing happened for this long before a kill
PHASE = 1.0  # ... plus a random part of up to this, so kills land at any phase of a timer
NAN = float("nan")


# --- processes -------------------------------------------------------------------------

def become_subreaper() -> None:
    """Orphans of our subtree reparent to us, so nothing escapes the final cleanup."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def reap() -> None:
    """Collect every exited child (we are a subreaper: orphans come back here)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def proc_table() -> dict[int, tuple[int, str, str]]:
    """pid -> (ppid, comm, state) for every process on the machine."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
        except OSError:
            continue
        comm = s[s.index("(") + 1:s.rindex(")")]
        rest = s[s.rindex(")") + 2:].split()
        out[int(d)] = (int(rest[1]), comm, rest[0])
    return out


def descendants(root: int, table: dict[int, tuple[int, str, str]] | None = None) -> list[int]:
    """Every live (non-zombie) process below root."""
    table = table if table is not None else proc_table()
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        kids.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        for c in kids.get(todo.pop(), []):
            if table[c][2] != "Z":
                out.append(c)
            todo.append(c)
    return out


def kill_all_descendants() -> None:
    """SIGKILL everything below this process, repeatedly until nothing is left."""
    for _ in range(50):
        pids = descendants(os.getpid())
        if not pids:
            break
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.05)
        reap()
    reap()


def cpu_ctx(pid: int) -> tuple[float, int]:
    """(CPU seconds, voluntary+involuntary context switches) of one process, all threads.
    CPU time comes from /proc/PID/task/TID/schedstat (nanoseconds), not from the
    clock-tick counts in /proc/PID/stat, whose 10 ms steps are 0.1 % of a core over a 10 s
    window. Both are per thread (/proc/PID/schedstat and the switch counts of
    /proc/PID/status cover only the main thread), so every thread is summed: the
    tickler's heartbeat reader is a thread of its own."""
    cpu, ctx = 0.0, 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0, 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                cpu += int(f.read().split()[0]) / 1e9
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if "ctxt_switches" in line:
                        ctx += int(line.split()[1])
        except OSError:
            continue  # a thread that ended meanwhile
    return cpu, ctx


def pss_rss_kb(pid: int) -> tuple[int, int]:
    """(Pss, Rss) in kB from /proc/PID/smaps_rollup."""
    pss = rss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                elif line.startswith("Rss:"):
                    rss = int(line.split()[1])
    except OSError:
        pass
    return pss, rss


class Stamps:
    """The receiving end of every stamp: one datagram socket per supervisor instance."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.bind(path)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE (root)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)

    def recv(self, timeout: float) -> tuple[int, int] | None:
        """One (pid, monotonic ns) stamp, or None after timeout seconds."""
        self.sock.settimeout(max(timeout, 1e-4))
        try:
            data = self.sock.recv(128).split()
        except TimeoutError:
            return None
        return int(data[0]), int(data[1])

    def drain(self) -> list[tuple[int, int]]:
        """Every stamp already queued."""
        got = []
        while (s := self.recv(1e-4)) is not None:
            got.append(s)
        return got

    def close(self) -> None:
        self.sock.close()


def owned_by(pid: int, key: bytes) -> bool:
    """Does the process mention key (a peer's directory) in its argv, environment or cwd?"""
    try:
        for what in ("cmdline", "environ"):
            with open(f"/proc/{pid}/{what}", "rb") as f:
                if key in f.read():
                    return True
        return key in os.readlink(f"/proc/{pid}/cwd").encode()
    except OSError:
        return False


def stamp_processes(exe: str, pids: list[int]) -> dict[str, list[int]]:
    """service name -> those of pids that run the stamp binary. The name is argv[2] when
    given (hachain, supervisord), else the service directory the process runs in (s6 passes
    the name as argv[1], runit nothing)."""
    out: dict[str, list[int]] = {}
    for pid in pids:
        try:
            if os.readlink(f"/proc/{pid}/exe") != exe:
                continue
        except OSError:
            continue
        if (name := service_name(pid)):
            out.setdefault(name, []).append(pid)
    return out


def service_name(pid: int) -> str:
    """Which service a stamp process is: argv[2], else its directory's name; '' if gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        if len(argv) > 2 and argv[2]:
            return argv[2].decode()
        return os.path.basename(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return ""


def wait_for(cond: Callable[[], Any], timeout: float, step: float = 0.02) -> Any:
    """cond()'s first truthy value within timeout seconds (reaping meanwhile), else None."""
    end = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > end:
            return None
        reap()
        time.sleep(step)


def child_env(**extra: str) -> dict[str, str]:
    """Our environment minus anything that would tie a child to our own supervisor."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS")}
    env.update(extra)
    return env


# --- the supervisors -----------------------------------------------------------------------

class Peer:
    """One supervisor instance with n services, in its own temporary directory."""

    name = ""
    top_name = ""  # the process the recovery workload kills
    restarted_by = ""  # who brings the top process back on a real system
    recovers = True  # False: the recovery workload (killing the top process) is skipped
    comms: tuple[str, ...] = ()  # process names counted as "the supervisor"

    def __init__(self, bench: Bench, n: int, notify: bool = False) -> None:
        self.bench = bench
        self.n = n
        self.notify = notify
        self.dir = tempfile.mkdtemp(prefix=f"{self.name}-{n}-", dir=bench.state_root)
        self.stamps = Stamps(os.path.join(self.dir, "stamps.sock"))
        self.log = open(os.path.join(self.dir, "supervisor.log"), "ab")
        self.proc: subprocess.Popen[bytes] | None = None
        self.setup()

    def setup(self) -> None:
        """Write the configuration / service directories."""

    def argv(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return child_env(STAMP_SOCK=self.stamps.path)

    def launch(self) -> None:
        """Start the top supervisor process (also used to restart it after a kill)."""
        self.proc = subprocess.Popen(self.argv(), cwd=self.dir, env=self.env(),
                                     stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=self.log, start_new_session=True)

    def top_pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def members(self) -> list[int]:
        """Every live process of this instance: supervisor processes and services, also
        orphans (they came back to us, the subreaper). Several instances run at once."""
        key = self.dir.encode()
        return [p for p in descendants(os.getpid()) if owned_by(p, key)]

    def supervisor_pids(self) -> list[int]:
        """Every process of the supervisor itself (not the services)."""
        table = proc_table()
        return [p for p in self.members() if p in table and table[p][1] in self.comms]

    def all_ready(self) -> bool:
        """Does the supervisor itself report every service ready? (hachain only)"""
        return True

    def recovered(self) -> bool:
        """After the top process was killed (and restarted): supervised again?"""
        return True

    def kill_members(self) -> None:
        """SIGKILL every process of this instance until none is left."""
        for _ in range(50):
            pids = self.members()
            if not pids:
                break
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.05)
            reap()

    def stop(self) -> None:
        self.kill_members()

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self.kill_members()
            self.stamps.close()
            self.log.close()


class Hachain(Peer):
    name = "hachain"
    top_name = "restarter"
    restarted_by = "hachain-init (automatic)"

    def setup(self) -> None:
        self.state = os.path.join(self.dir, "state")  # in the bench's tmpfs (Bench)
        os.mkdir(self.state)
        mount = find_cgroup2_mount()
        self.cg = None
        if mount and os.access(mount, os.W_OK) and not self.bench.args.no_cgroups:
            self.cg = os.path.join(mount, f"hachain-compare-{os.getpid()}-"
                                   f"{os.path.basename(self.dir)}")
        ready = 'ready = "notify"\n' if self.notify else ""
        # persist_dir on the disk, as on a real system (it survives a reboot)
        persist = tempfile.mkdtemp(prefix="persist-", dir=self.bench.tmp)
        body = [f'[chain]\nstate_dir = "{self.state}"\npersist_dir = "{persist}"\n'
                f'cgroup_root = "{self.cg or "none"}"\nrestart_delay = 0\n'
                '[watchdog]\ndevice = "none"\n']
        for i in range(self.n):
            body.append(f'[service.s{i}]\ncommand = ["{self.bench.exe}", "{self.stamps.path}", '
                        f'"s{i}"]\n{ready}restart = "{self.bench.args.restart}"\n'
                        'backoff = { initial = 0.0, factor = 1.0, max = 0 }\n'
                        'intensity = { max_restarts = 1000000, window = 1, action = "ignore" }\n')
        self.cfg = os.path.join(self.dir, "chain.toml")
        with open(self.cfg, "w") as f:
            f.write("".join(body))
        self.killed_restarter = 0
        if not self.bench.args.first_run:
            self.ran_before()

    def ran_before(self) -> None:
        """Accept the configuration once, as an earlier boot would have (every boot of an
        appliance but its first): its parsed copy is then kept with the last-known-good
        snapshot, and `hachain run` starts from it (docs/configuration.md). In a child,
        with the state directory pointed elsewhere: the chain measured starts with an
        empty one, as at boot. `--first-run` measures the first run of a new file."""
        warm = os.path.join(self.dir, "earlier-boot")
        code = ("import sys; from hachain import snapshot; "
                "snapshot.accept(sys.argv[1], chain_id='earlier-boot')")
        subprocess.run([sys.executable, "-c", code, self.cfg], cwd=ROOT, check=True,
                       env=child_env(PYTHONPATH=ROOT, **{channels.ENV_STATE_DIR: warm}),
                       timeout=120, stdout=subprocess.DEVNULL)
        shutil.rmtree(warm, ignore_errors=True)

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "hachain.cli", "run", "-c", self.cfg]

    def env(self) -> dict[str, str]:
        # STAMP_SOCK only marks the chain's own processes as this instance's (members());
        # services get a clean environment from the restarter and the path in argv
        return child_env(PYTHONPATH=ROOT, STAMP_SOCK=self.stamps.path)

    def launch(self) -> None:
        self.proc = subprocess.Popen(self.argv(), cwd=ROOT, env=self.env(),
                                     stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=self.log, start_new_session=True)

    def layer_pid(self, layer: str) -> int:
        hb = channels.read_heartbeat(self.state, layer)
        return hb.pid if hb else 0

    def top_pid(self) -> int:
        pid = wait_for(lambda: self.layer_pid("restarter"), 10)
        self.killed_restarter = pid or 0
        return pid or 0

    def supervisor_pids(self) -> list[int]:
        assert self.proc is not None
        pids = [self.proc.pid]
        for layer in ("restarter", "tickler"):
            if (p := wait_for(lambda lay=layer: self.layer_pid(lay), 10)):
                pids.append(p)
                # the restarter's standby, its parent (hachain/restarter/standby.py)
                if layer == "restarter" and (pp := channels.proc_ppid(p)) and \
                        pp != self.proc.pid:
                    pids.append(pp)
        try:  # the logger (docs/logs.md) names itself in its lock file
            with open(os.path.join(self.state, "logger.lock")) as f:
                pids.append(int(f.read().split()[0]))
        except (OSError, ValueError, IndexError):
            pass
        return pids

    def all_ready(self) -> bool:
        try:
            st = client.request(self.state, {"op": "status"}, timeout=5).get("services", {})
        except client.ControlError:
            return False
        return len(st) == self.n and all(s.get("state") == "ready" for s in st.values())

    def recovered(self) -> bool:
        pid = self.layer_pid("restarter")
        return bool(pid) and pid != self.killed_restarter and self.all_ready()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            wait_for(lambda: self.proc.poll() is not None, 30)  # type: ignore[union-attr]
        self.kill_members()
        if self.cg and os.path.isdir(self.cg):
            for d in [self.cg] + [os.path.join(self.cg, x) for x in os.listdir(self.cg)]:
                try:
                    with open(os.path.join(d, "cgroup.kill"), "w") as f:
                        f.write("1")
                except OSError:
                    pass
            time.sleep(0.1)
            for d in os.listdir(self.cg):
                try:
                    os.rmdir(os.path.join(self.cg, d))
                except OSError:
                    pass
            try:
                os.rmdir(self.cg)
            except OSError:
                pass
        shutil.rmtree(self.state, ignore_errors=True)


class ServiceDirs(Peer):
    """s6 and runit: a scan directory of service directories whose ./run is the stamp."""

    def setup(self) -> None:
        self.scan = os.path.join(self.dir, "scan")
        os.mkdir(self.scan)
        for i in range(self.n):
            d = os.path.join(self.scan, f"s{i}")
            os.mkdir(d)
            os.symlink(self.bench.exe, os.path.join(d, "run"))


class S6(ServiceDirs):
    name = "s6"
    top_name = "s6-svscan"
    restarted_by = "nothing (s6-svscan is meant to be PID 1); bench restarts it"
    comms = ("s6-svscan", "s6-supervise")

    def setup(self) -> None:
        super().setup()
        for i in range(self.n):
            with open(os.path.join(self.scan, f"s{i}", "notification-fd"), "w") as f:
                f.write("3\n")

    def env(self) -> dict[str, str]:
        # readiness on fd 3: without it s6-supervise waits 1 s before every restart
        return child_env(STAMP_SOCK=self.stamps.path, STAMP_READY_FD="3")

    def argv(self) -> list[str]:
        # -t0: no periodic rescan (the quietest setting); -c: room for every service
        return ["s6-svscan", "-t0", "-c", str(max(1000, 2 * self.n)), self.scan]


class Runit(ServiceDirs):
    name = "runit"
    top_name = "runsvdir"
    restarted_by = "runit stage 2 when runit is init; bench restarts it"
    comms = ("runsvdir", "runsv")

    def argv(self) -> list[str]:
        return ["runsvdir", self.scan]


class Supervisord(Peer):
    name = "supervisord"
    top_name = "supervisord"
    restarted_by = "nothing (usually a systemd unit); bench restarts it"
    comms = ("supervisord",)

    def setup(self) -> None:
        self.conf = os.path.join(self.dir, "supervisord.conf")
        body = [f"[supervisord]\nnodaemon=true\nlogfile={self.dir}/supervisord.log\n"
                f"pidfile={self.dir}/supervisord.pid\nloglevel=error\nminfds={4 * self.n + 1024}\n"
                f"childlogdir={self.dir}\n"]
        for i in range(self.n):
            body.append(f"[program:s{i}]\ncommand={self.bench.exe} {self.stamps.path} s{i}\n"
                        "startsecs=0\nautorestart=true\nstartretries=1000000\n"
                        "stdout_logfile=NONE\nstderr_logfile=NONE\nstopsignal=KILL\n"
                        "stopwaitsecs=1\n")
        with open(self.conf, "w") as f:
            f.write("".join(body))

    def argv(self) -> list[str]:
        return ["supervisord", "-n", "-c", self.conf]

    def supervisor_pids(self) -> list[int]:
        return [self.top_pid()]


class Floor(Peer):
    """bench/floor.c: the least a supervisor can do; each service in a cgroup of its own
    (when the cgroup2 mount is writable and not --no-cgroups)."""

    name = "floor"
    top_name = "floor"
    restarted_by = ("nothing; not measured: a restarted floor would start every service "
                    "again beside the orphans, it adopts nothing")
    recovers = False
    comms = ("floor",)
    cgroups = True

    def setup(self) -> None:
        mount = find_cgroup2_mount()
        self.cg = None
        if self.cgroups and mount and os.access(mount, os.W_OK) and \
                not self.bench.args.no_cgroups:
            self.cg = os.path.join(mount, f"floor-compare-{os.getpid()}-"
                                   f"{os.path.basename(self.dir)}")
        elif self.cgroups and not self.bench.args.no_cgroups:
            print(f"compare: note: no writable cgroup2 mount; {self.name} runs without "
                  "cgroups", file=sys.stderr)

    def argv(self) -> list[str]:
        assert self.bench.floor_exe, "bench/floor.c was not compiled"
        return [self.bench.floor_exe, self.bench.exe, self.stamps.path, str(self.n),
                *([self.cg] if self.cg else [])]

    def stop(self) -> None:
        # SIGTERM: the floor kills and reaps its services and removes its cgroups
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            wait_for(lambda: self.proc.poll() is not None, 10)  # type: ignore[union-attr]
        self.kill_members()
        if self.cg:  # left behind when the floor itself was SIGKILLed
            remove_cgroup_tree(self.cg)


class FloorNoCgroup(Floor):
    """bench/floor.c with plain fork(): no cgroups at all."""

    name = "floor-nocg"
    cgroups = False


class PyFloor(Floor):
    """bench/pyfloor.py: three Python processes in a row, as hachain starts (the venv's
    Python reading the file, then init and the restarter with -S), that do nothing but
    start the services with hachain's compiled spawn (and start a dead one again)."""

    name = "pyfloor"
    top_name = "pyfloor init"
    comms = ("python", "python3")

    def argv(self) -> list[str]:
        cfg = os.path.join(self.dir, "pyfloor.toml")
        with open(cfg, "w") as f:
            f.write(f"stamp = {json.dumps(self.bench.exe)}\nsocket = "
                    f"{json.dumps(self.stamps.path)}\nservices = {self.n}\n"
                    + (f"cgroup_root = {json.dumps(self.cg)}\n" if self.cg else ""))
        return [sys.executable, os.path.join(HERE, "pyfloor.py"), "run", cfg]


PEER_CLASSES: dict[str, type[Peer]] = {"hachain": Hachain, "s6": S6, "runit": Runit,
                                       "supervisord": Supervisord, "floor": Floor,
                                       "floor-nocg": FloorNoCgroup, "pyfloor": PyFloor}
PACKAGES = {"s6": ("s6-svscan", "s6"), "runit": ("runsvdir", "runit"),
            "supervisord": ("supervisord", "supervisor")}


def ensure_peers(wanted: list[str]) -> dict[str, str]:
    """Install missing peers from the distribution (one line of output). Returns
    peer -> reason for every peer that still cannot run."""
    missing = [p for p in wanted if p in PACKAGES and shutil.which(PACKAGES[p][0]) is None]
    skipped: dict[str, str] = {}
    if not missing:
        return skipped
    pkgs = [PACKAGES[p][1] for p in missing]
    apt = shutil.which("apt-get")
    print(f"compare: installing {' '.join(pkgs)} with apt-get (missing: {', '.join(missing)})",
          file=sys.stderr, flush=True)
    if apt and os.geteuid() == 0:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        q = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        if subprocess.run([apt, "install", "-y", *pkgs], **q).returncode != 0:  # type: ignore[call-overload]
            subprocess.run([apt, "update"], **q)  # type: ignore[call-overload]
            subprocess.run([apt, "install", "-y", *pkgs], **q)  # type: ignore[call-overload]
    for p in missing:
        if shutil.which(PACKAGES[p][0]) is None:
            skipped[p] = (f"Debian package {PACKAGES[p][1]!r} could not be installed"
                          + ("" if apt and os.geteuid() == 0 else " (needs root and apt-get)"))
    return skipped


# --- workloads -----------------------------------------------------------------------------

def pct(xs: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of xs."""
    if not xs:
        return NAN
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def collect(peer: Peer, count: int, timeout: float) -> dict[int, int]:
    """pid -> stamp for the next `count` stamps; raises when they do not all arrive."""
    got: dict[int, int] = {}
    end = time.monotonic() + timeout
    while len(got) < count:
        s = peer.stamps.recv(min(0.2, max(end - time.monotonic(), 1e-3)))
        if s:
            got[s[0]] = s[1]
        elif time.monotonic() > end:
            raise RuntimeError(f"{peer.name}: {len(got)} of {count} stamps within {timeout:g} s")
        reap()
    return got


def restart_latency(peer: Peer, slots: list[tuple[int, int]], rounds: int,
                    budget: float = 0.0) -> list[float]:
    """Kill services in turn (each up > 1 s), latency kill -> replacement's exec (ms).
    With a time budget (--quick), stop early once it is spent and 10 kills are done."""
    lat: list[float] = []
    peer.stamps.drain()
    end = time.monotonic() + budget
    for i in range(rounds):
        if budget and i >= min(rounds, 10) and time.monotonic() > end:
            break
        k = i % len(slots)
        pid, born = slots[k]
        wait = born / 1e9 + UP_BEFORE_KILL - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        t0 = time.monotonic_ns()
        os.kill(pid, signal.SIGKILL)
        s = peer.stamps.recv(10)
        if s is None:
            raise RuntimeError(f"{peer.name}: no replacement within 10 s of killing {pid}")
        lat.append((s[1] - t0) / 1e6)
        slots[k] = s
        reap()
        time.sleep(0.02)
    return lat


def restart_after_idle(peers: list[Peer], slots: dict[str, list[tuple[int, int]]], kills: int,
                       rng: random.Random) -> dict[str, list[float]]:
    """Kill one service at a time, each kill after QUIET_BEFORE_KILL s in which nothing
    happened on the machine that the benchmark controls (the last replacement stamped that
    long ago, on any supervisor), plus a random phase of up to PHASE s, with the victim (a
    random service) up for more than UP_BEFORE_KILL s. The supervisors take turns, so each
    one's kills come after the others' restarts have long settled. name -> latencies (ms)."""
    lat: dict[str, list[float]] = {p.name: [] for p in peers}
    for p in peers:
        p.stamps.drain()
    last = time.monotonic()
    for i in range(kills * len(peers)):
        peer = peers[i % len(peers)]
        sl = slots[peer.name]
        k = rng.randrange(len(sl))
        pid, born = sl[k]
        at = max(last + QUIET_BEFORE_KILL, born / 1e9 + UP_BEFORE_KILL) + rng.uniform(0, PHASE)
        while (wait := at - time.monotonic()) > 0:
            time.sleep(wait)
        t0 = time.monotonic_ns()
        os.kill(pid, signal.SIGKILL)
        s = peer.stamps.recv(10)
        if s is None:
            raise RuntimeError(f"{peer.name}: no replacement within 10 s of killing {pid}")
        lat[peer.name].append((s[1] - t0) / 1e6)
        sl[k] = s
        reap()
        last = time.monotonic()
    return lat


def idle_costs(live: dict[str, Peer], seconds: float) -> dict[str, dict[str, float]]:
    """CPU, context switches and memory of each peer's supervisor processes over one quiet
    window shared by all of them."""
    pids = {p: peer.supervisor_pids() for p, peer in live.items()}
    before = {p: [cpu_ctx(x) for x in ps] for p, ps in pids.items()}
    t0 = time.monotonic()
    time.sleep(seconds)
    after = {p: [cpu_ctx(x) for x in ps] for p, ps in pids.items()}
    dt = time.monotonic() - t0
    out = {}
    for p, ps in pids.items():
        cpu = sum(a[0] - b[0] for a, b in zip(after[p], before[p], strict=True))
        ctx = sum(a[1] - b[1] for a, b in zip(after[p], before[p], strict=True))
        mem = [pss_rss_kb(x) for x in ps]
        out[p] = {"idle_cpu_pct": 100 * cpu / dt, "idle_ctx_s": ctx / dt, "procs": len(ps),
                  "pss_mb": sum(m[0] for m in mem) / 1024,
                  "rss_mb": sum(m[1] for m in mem) / 1024}
    return out


def recovery(peer: Peer, slots: list[tuple[int, int]], timeout: float) -> dict[str, Any]:
    """SIGKILL the top supervisor process and, at the same moment, one service; restart the
    top process at once if nothing in the peer does; time until supervised again."""
    top = peer.top_pid()
    victim = slots[-1][0]
    victim_name = service_name(victim)
    peer.stamps.drain()
    t0 = time.monotonic()
    os.kill(top, signal.SIGKILL)
    os.kill(victim, signal.SIGKILL)
    if not isinstance(peer, Hachain):
        wait_for(lambda: not os.path.exists(f"/proc/{top}") or
                 proc_table().get(top, (0, "", "Z"))[2] == "Z", 5, 0.001)
        reap()
        peer.launch()  # what its parent would do, with no delay (hachain's init: delay 0)
    # the victim's replacement, and for supervisord (which starts every service afresh)
    # all n of them
    want = peer.n if isinstance(peer, Supervisord) else 1
    got: dict[int, int] = {}
    t_stamps = t_victim = NAN
    end = t0 + timeout
    while len(got) < want and time.monotonic() < end:
        if (s := peer.stamps.recv(0.05)):
            got[s[0]] = s[1]
            if t_victim != t_victim and service_name(s[0]) == victim_name:
                t_victim = s[1] / 1e9 - t0
        reap()
    back = len(got)
    if len(got) >= want:
        t_stamps = max(got.values()) / 1e9 - t0
    done = wait_for(peer.recovered, max(0.0, end - time.monotonic()), 0.05)
    t_done = time.monotonic() - t0 if done else NAN
    time.sleep(peer.bench.settle_s * 1.5)  # let any second copy show itself
    reap()
    procs = stamp_processes(peer.bench.exe, peer.members())
    names = [f"s{i}" for i in range(peer.n)]
    dups = sum(max(0, len(procs.get(n, [])) - 1) for n in names)
    lost = sum(1 for n in names if not procs.get(n))
    return {"rec_victim_ms": t_victim * 1000,
            "rec_all_s": max(t_done, t_stamps) if back >= want else NAN,
            "rec_dups": dups, "rec_lost": lost,
            "rec_back": back, "rec_want": want, "rec_timeout": timeout}


def bench_size(bench: Bench, names: list[str], n: int, sizes: list[int],
               log: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """Every workload for every supervisor with n services; peer -> metric -> value.

    The supervisors are started one after the other (start-up is timed alone), then all of
    them stay up for one shared idle window (idle processes do not compete, and this keeps
    --quick short), then each one's restarts and supervisor kill run alone in turn."""
    res: dict[str, dict[str, Any]] = {p: {} for p in names}
    live: dict[str, Peer] = {}
    slots: dict[str, list[tuple[int, int]]] = {}
    try:
        for p in names:
            peer = live[p] = PEER_CLASSES[p](bench, n)
            t0 = time.monotonic()
            peer.launch()
            stamps = collect(peer, n, 120)
            res[p][f"start_s@{n}"] = max(stamps.values()) / 1e9 - t0
            res[p][f"first_s@{n}"] = min(stamps.values()) / 1e9 - t0
            slots[p] = sorted(stamps.items(), key=lambda x: x[1])
            log(f"{p}: {n} services started in {res[p][f'start_s@{n}']:.2f} s")
        if n in (min(sizes), max(sizes)):
            time.sleep(bench.settle_s)  # past start-up work (first heartbeats, state writes)
            for p, cost in idle_costs(live, bench.idle_s).items():
                res[p].update({f"{k}@{n}": v for k, v in cost.items()})
        if n in bench.idle_sizes(sizes):
            got = restart_after_idle([live[p] for p in names], slots, bench.idle_kills,
                                     random.Random(bench.seed + n))
            for p, lat in got.items():
                res[p].update({f"ip50@{n}": statistics.median(lat), f"ip95@{n}": pct(lat, 95),
                               f"ikills@{n}": len(lat)})
                log(f"{p}: {len(lat)} restarts after idle with {n} services, p50 "
                    f"{res[p][f'ip50@{n}']:.2f} ms")
        for p in names:
            lat = restart_latency(live[p], slots[p], bench.rounds(n), bench.kill_budget)
            res[p].update({f"p50@{n}": statistics.median(lat), f"p95@{n}": pct(lat, 95),
                           f"max@{n}": max(lat), f"kills@{n}": len(lat)})
            log(f"{p}: {len(lat)} restarts with {n} services, p50 {res[p][f'p50@{n}']:.2f} ms")
        if n == max(sizes):
            for p in names:
                if not live[p].recovers:
                    continue
                res[p].update(recovery(live[p], slots[p], bench.recovery_timeout))
                log(f"{p}: supervisor kill with {n} services done")
    finally:
        for peer in live.values():
            peer.close()
    if "hachain" in names and n == max(sizes):
        peer = Hachain(bench, n, notify=True)
        try:
            t0 = time.monotonic()
            peer.launch()
            stamps = collect(peer, n, 120)
            res["hachain"][f"notify_exec_s@{n}"] = max(stamps.values()) / 1e9 - t0
            ok = wait_for(peer.all_ready, 120, 0.05)
            res["hachain"][f"notify_ready_s@{n}"] = time.monotonic() - t0 if ok else NAN
        finally:
            peer.close()
    return res


class Bench:
    """Run-wide state: arguments, the temporary directory, the compiled stamp binary."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = tempfile.mkdtemp(prefix="hachain-compare-")
        # Every supervisor keeps its state (s6's and runit's supervise/ files, hachain's
        # state_dir) in a tmpfs, as on a real system (/run); a disk would charge each
        # status write a journalled rename. The binaries stay in self.tmp (a tmpfs may
        # be noexec).
        self.state_root = self.tmp
        if tmpfs_dir() is not None:
            self.state_root = tempfile.mkdtemp(prefix="hachain-compare-", dir=tmpfs_dir())
        benchlib.byte_compile()  # as installed: no layer compiles its modules at start
        self.exe, self.linkage = benchlib.compile_stamp(self.tmp, "compare",
                                                        static=not args.dynamic_stamp)
        self.exe = os.path.realpath(self.exe)
        self.floor_exe = ""  # bench/floor.c, only when a floor peer runs
        if any(p.startswith("floor") for p in args.peers.split(",")):
            self.floor_exe = benchlib.compile_c(self.tmp, "floor", "compare")[0]
        self.idle_s = args.idle or (0.5 if args.smoke else 10.0 if args.quick else 30.0)
        self.settle_s = 0.3 if args.smoke else 1.0
        # --quick: supervisord needs about a second per restart; cap each peer's kill loop
        self.kill_budget = 8.0 if args.quick else 0.0
        # --quick: a restarted supervisord takes half a minute to start 1000 programs again
        self.recovery_timeout = 15.0 if args.quick else 120.0
        # restart after idle: kills per supervisor and size (each takes 1-2 s of quiet)
        self.idle_kills = args.idle_kills or (2 if args.smoke else 10 if args.quick else 20)
        self.seed = args.seed

    def idle_sizes(self, sizes: list[int]) -> list[int]:
        """The sizes the restart after idle is measured with: 1 and 100 where run, else the
        smallest."""
        return [n for n in sizes if n in (1, 100)] or [min(sizes)]

    def rounds(self, n: int) -> int:
        """Restarts per size: a single service can only be killed once per second or so."""
        base = self.args.restarts or (3 if self.args.smoke else 50 if self.args.quick else 100)
        if n == 1:
            return max(1, min(base, 2 if self.args.smoke else 6 if self.args.quick else 50))
        return base

    def cleanup(self) -> None:
        kill_all_descendants()
        shutil.rmtree(self.tmp, ignore_errors=True)
        shutil.rmtree(self.state_root, ignore_errors=True)


# --- report --------------------------------------------------------------------------------

def tmpfs_dir() -> str | None:
    """A writable tmpfs for the supervisors' state: /dev/shm (or /run), else None."""
    for d in ("/dev/shm", "/run"):
        try:
            with open("/proc/mounts") as f:
                if any(line.split()[1:3] == [d, "tmpfs"] for line in f) and \
                        os.access(d, os.W_OK):
                    return d
        except OSError:
            return None
    return None


def version(cmd: list[str]) -> str:
    """First line a command prints, or '?'."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (p.stdout or p.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


def deb_version(pkg: str) -> str:
    return version(["dpkg-query", "-W", "-f", "${Version}", pkg])


def machine() -> str:
    """Cores, CPU model, kernel and the version of everything compared."""
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f
                          if ln.startswith("model name")), "?")
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    hv = "?"
    try:
        from importlib.metadata import version as pv
        hv = pv("hachain")
    except Exception:  # noqa: BLE001 - a missing dist is fine here
        pass
    return (f"machine: {os.cpu_count()} cores ({model}), {mem:.1f} GiB, kernel "
            f"{os.uname().release}\nversions: hachain {hv} on Python {sys.version.split()[0]}; "
            f"s6 {deb_version('s6')}; runit {deb_version('runit')}; supervisord "
            f"{deb_version('supervisor')} on {version(['python3', '--version'])}")


def med(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else NAN


def fmt(v: Any, spec: str) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    return format(v, spec)


def report(results: list[dict[str, dict[str, Any]]], peers: list[str], sizes: list[int],
           bench: Bench, skipped: dict[str, str]) -> list[str]:
    """The table as lines: one row per metric, one column per supervisor, then
    hachain/peer ratios (the median of per-run ratios)."""
    big, small = max(sizes), min(sizes)
    rows: list[tuple[str, str, str]] = []  # label, key, format
    for n in bench.idle_sizes(sizes):
        for q in ("p50", "p95"):
            rows.append((f"restart after idle {q} ms, {n} svc ({bench.idle_kills} kills)",
                         f"i{q}@{n}", ".2f"))
    for n in sizes:
        for q in ("p50", "p95", "max"):
            rows.append((f"restart back-to-back {q} ms, {n} svc ({bench.rounds(n)} kills)",
                         f"{q}@{n}", ".2f"))
    for n in sorted({small, big}):
        rows += [(f"idle CPU % of a core, {n} svc", f"idle_cpu_pct@{n}", ".3f"),
                 (f"idle ctx switches/s, {n} svc", f"idle_ctx_s@{n}", ".1f"),
                 (f"supervisor processes, {n} svc", f"procs@{n}", ".0f"),
                 (f"PSS MB (sum), {n} svc", f"pss_mb@{n}", ".1f"),
                 (f"RSS MB (sum), {n} svc", f"rss_mb@{n}", ".1f")]
    for n in sizes:
        rows += [(f"start-up s, {n} svc: first exec'd", f"first_s@{n}", ".3f"),
                 (f"start-up s, {n} svc: all exec'd", f"start_s@{n}", ".3f")]
    rows += [(f"start-up s, {big} svc exec'd (notify)", f"notify_exec_s@{big}", ".3f"),
             (f"start-up s, {big} svc all ready (notify)", f"notify_ready_s@{big}", ".3f"),
             (f"top killed, {big} svc: victim back ms", "rec_victim_ms", ".1f"),
             (f"top killed, {big} svc: all supervised s", "rec_all_s", ".3f"),
             ("top killed: duplicate services", "rec_dups", ".0f"),
             ("top killed: lost services", "rec_lost", ".0f")]
    others = [p for p in peers if p != "hachain"]
    head = f"{'metric':<44}" + "".join(f"{p:>12}" for p in peers)
    if "hachain" in peers:
        head += "".join(f"{'h/' + p:>14}" for p in others)
    out = [head, "-" * len(head)]
    for label, key, spec in rows:
        vals = {p: med([r.get(p, {}).get(key, NAN) for r in results]) for p in peers}
        if all(v != v for v in vals.values()):
            continue
        line = f"{label:<44}" + "".join(f"{fmt(vals[p], spec):>12}" for p in peers)
        if "hachain" in peers and not key.startswith(("rec_dups", "rec_lost", "procs")):
            for p in others:
                ratios = []
                for r in results:
                    h, o = r.get("hachain", {}).get(key, NAN), r.get(p, {}).get(key, NAN)
                    if h == h and o == o and o > 0:
                        ratios.append(h / o)
                line += f"{fmt(med(ratios), '.2f'):>14}"
        out.append(line)
    out.append("")
    for p in peers:
        cls = PEER_CLASSES[p]
        out.append(f"{p:<12} top process killed: {cls.top_name}; brought back by: "
                   f"{cls.restarted_by}" + ("" if cls.recovers else " (workload skipped)"))
    for p, why in skipped.items():
        out.append(f"{p:<12} SKIPPED: {why}")
    for p in peers:
        part = [r[p] for r in results
                if p in r and r[p].get("rec_back", 0) < r[p].get("rec_want", 0)]
        if part:
            x = part[0]
            out.append(f"{p:<12} after the kill only {x['rec_back']} of {x['rec_want']} services "
                       f"were started again within {x['rec_timeout']:g} s; duplicates counted then")
    for n in sizes:
        for p in peers:
            k = min((r.get(p, {}).get(f"kills@{n}", 0) for r in results), default=0)
            if 0 < k < bench.rounds(n):
                out.append(f"{p:<12} only {k} kills with {n} services (--quick time budget: "
                           "each restart takes about a second)")
    return out


def targets(results: list[dict[str, dict[str, Any]]], sizes: list[int]) -> list[str]:
    """The issue's targets, each PASS / MISS with the numbers behind it."""
    big = max(sizes)
    h = {k: med([r.get("hachain", {}).get(k, NAN) for r in results])
         for k in results[0].get("hachain", {})} if results and "hachain" in results[0] else {}
    if not h:
        return []
    c_peers = [p for p in ("s6", "runit") if p in results[0]]
    best = min((med([r[p].get(f"p50@{big}", NAN) for r in results]) for p in c_peers),
               default=NAN)
    s6cpu = med([r["s6"].get(f"idle_cpu_pct@{big}", NAN) for r in results]) if "s6" in results[0] \
        else NAN
    p50 = h.get(f"p50@{big}", NAN)
    cpu = h.get(f"idle_cpu_pct@{big}", NAN)
    rss = h.get(f"rss_mb@{big}", NAN)

    def mark(ok: bool) -> str:
        return "PASS" if ok else "MISS"

    def at_most(x: float, bound: float) -> str:
        """x <= bound: PASS / MISS, or "n/a " when either was not measured in this run
        (a peer not in --peers, a workload skipped: NaN)."""
        return "n/a " if x != x or bound != bound else mark(x <= bound)

    def peer_med(p: str, key: str) -> float:
        return med([r[p].get(key, NAN) for r in results]) if p in results[0] else NAN

    lines = [f"targets (hachain, {big} services unless said):"]
    for n in sorted({k.split("@")[1] for k in h if k.startswith("ip50@")}, key=int):
        ip50, runit = h.get(f"ip50@{n}", NAN), peer_med("runit", f"ip50@{n}")
        lines.append(f"  {at_most(ip50, runit)} restart after idle p50 {ip50:.2f} ms <= runit's "
                     f"{runit:.2f} ms ({n} svc)")
    vic, rec_all = h.get("rec_victim_ms", NAN), h.get("rec_all_s", NAN)
    lines += [f"  {at_most(p50, 1.5 * best)} restart back-to-back p50 {p50:.2f} ms <= 1.5 x "
              f"fastest C peer ({best:.2f} ms -> {1.5 * best:.2f} ms)",
              f"  {at_most(p50, 2.0)} restart back-to-back p50 {p50:.2f} ms <= 2 ms",
              f"  {at_most(cpu, s6cpu + 0.1)} idle CPU {cpu:.3f} % <= s6 {s6cpu:.3f} % + 0.1 %",
              f"  {at_most(rss, 60)} RSS of the chain {rss:.1f} MB <= 60 MB "
              f"(PSS {h.get(f'pss_mb@{big}', NAN):.1f} MB)",
              f"  {at_most(vic, 50)} restarter SIGKILL: the service killed with it back in "
              f"{vic:.1f} ms <= 50 ms",
              f"  {at_most(rec_all, 0.25)} restarter SIGKILL: all supervised again in "
              f"{rec_all:.3f} s <= 0.25 s",
              f"  {mark(h.get('rec_dups', 1) == 0 and h.get('rec_lost', 1) == 0)} restarter "
              f"SIGKILL: {h.get('rec_dups', NAN):.0f} duplicates, "
              f"{h.get('rec_lost', NAN):.0f} lost"]
    small = min(sizes)
    for n in sizes:
        if n >= 100:
            up, s6up = h.get(f"start_s@{n}", NAN), peer_med("s6", f"start_s@{n}")
            lines.append(f"  {at_most(up, s6up)} start-up of {n} services, all exec'd, "
                         f"{up:.3f} s <= s6's {s6up:.3f} s")
    lines += [f"  {at_most(cpu, 0.03)} idle CPU {cpu:.3f} % <= 0.03 % of a core",
              f"  {at_most(h.get(f'pss_mb@{small}', NAN), 20)} PSS of the chain with {small} "
              f"service(s) {h.get(f'pss_mb@{small}', NAN):.1f} MB <= 20 MB"]
    if "pyfloor" in results[0]:
        # what bounds the three rows above in Python: bench/pyfloor.py, same run
        lines.append("bounds (pyfloor: three Python layers that only start services and beat):")
        for n in sizes:
            if n >= 100:
                lines.append(f"  start-up of {n}, all exec'd: pyfloor "
                             f"{peer_med('pyfloor', f'start_s@{n}'):.3f} s, first "
                             f"{peer_med('pyfloor', f'first_s@{n}'):.3f} s (hachain first "
                             f"{h.get(f'first_s@{n}', NAN):.3f} s)")
        lines += [f"  idle CPU: pyfloor {peer_med('pyfloor', f'idle_cpu_pct@{big}'):.3f} % at "
                  f"{peer_med('pyfloor', f'idle_ctx_s@{big}'):.1f} wake-ups/s (hachain "
                  f"{h.get(f'idle_ctx_s@{big}', NAN):.1f}/s)",
                  f"  PSS with {small}: pyfloor {peer_med('pyfloor', f'pss_mb@{small}'):.1f} MB "
                  f"in {peer_med('pyfloor', f'procs@{small}'):.0f} processes (hachain "
                  f"{h.get(f'procs@{small}', NAN):.0f})"]
    return lines


# --- main ----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 run, 10 s idle windows (~6 min)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, for the test suite")
    ap.add_argument("--sizes", default="", help="service counts (default 1,100,1000)")
    ap.add_argument("--runs", type=int, default=0, help="runs to take medians over (default 3)")
    ap.add_argument("--restarts", type=int, default=0, help="kills per size")
    ap.add_argument("--idle", type=float, default=0, help="idle window, seconds")
    ap.add_argument("--idle-kills", type=int, default=0,
                    help="restart after idle: kills per supervisor and size (default 20)")
    ap.add_argument("--seed", type=int, default=19, help="random phases and victims")
    ap.add_argument("--peers", default=",".join(PEERS),
                    help="comma list of " + ",".join(PEERS) + " (default); also floor, "
                    "floor-nocg: bench/floor.c, a minimal C supervisor with and without "
                    "per-service cgroups; pyfloor: bench/pyfloor.py, three Python layers "
                    "in a row as hachain's that only start the services")
    ap.add_argument("--no-cgroups", action="store_true",
                    help="hachain: process groups only; floor, pyfloor: no cgroups either")
    ap.add_argument("--first-run", action="store_true",
                    help="hachain: start a configuration that never ran before (no parsed "
                    "copy kept from an earlier boot: the file is validated at start)")
    ap.add_argument("--restart", default="always",
                    choices=("always", "on-failure", "on-abnormal"),
                    help="hachain: the services' restart policy (a SIGKILL restarts under "
                    "each; the C peers always restart)")
    ap.add_argument("--dynamic-stamp", action="store_true",
                    help="link the service dynamically (its stamp then includes ld.so)")
    args = ap.parse_args(argv)
    dflt = "4" if args.smoke else "1,100,1000"
    sizes = [int(x) for x in (args.sizes or dflt).split(",")]
    runs = args.runs or (1 if args.quick or args.smoke else 3)
    wanted = [p for p in args.peers.split(",") if p]
    for p in wanted:
        if p not in PEER_CLASSES:
            ap.error(f"unknown peer {p!r}")

    become_subreaper()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    skipped = ensure_peers(wanted)
    peers = [p for p in wanted if p not in skipped]
    bench = Bench(args)
    atexit.register(bench.cleanup)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t_start = time.monotonic()
    print(machine(), flush=True)
    if args.restart != "always":
        print(f"hachain's services: restart = \"{args.restart}\"", flush=True)
    print(f"service: bench/stamp.c, {bench.linkage}ally linked (the restart stamp is taken "
          f"{'right after execve' if bench.linkage == 'static' else 'after ld.so'})", flush=True)
    print(f"state of every supervisor in {bench.state_root}"
          + (" (a tmpfs, as /run on a real system)" if bench.state_root != bench.tmp else
             " (no writable tmpfs found: on the disk)"), flush=True)
    results: list[dict[str, dict[str, Any]]] = []
    try:
        for run in range(runs):
            res: dict[str, dict[str, Any]] = {p: {} for p in peers}
            for n in sizes:
                def log(msg: str, run: int = run) -> None:
                    print(f"  [{time.monotonic() - t_start:5.0f} s] run {run + 1}/{runs}: {msg}",
                          file=sys.stderr, flush=True)
                for p, r in bench_size(bench, peers, n, sizes, log).items():
                    res[p].update(r)
            results.append(res)
    finally:
        bench.cleanup()
    cg = [p for p in peers if p in ("hachain", "floor", "pyfloor")]
    cg_note = f"{' and '.join(cg)} cgroups {'off' if args.no_cgroups else 'on'}; " if cg else ""
    print(f"\n{runs} run(s), medians; restart delay 0 everywhere it can be set; idle window "
          f"{bench.idle_s:g} s; {cg_note}total {time.monotonic() - t_start:.0f} s\n")
    for line in report(results, peers, sizes, bench, skipped):
        print(line)
    print()
    for line in targets(results, sizes):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
