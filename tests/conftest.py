"""Shared test tools: bounded condition waits and a real restarter run in a temp dir."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from hachain import channels, client
from hachain.cgroupfs import find_cgroup2_mount, remove_cgroup_tree
from hachain.logger import wire

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SVC = os.path.join(ROOT, "tests", "svc.py")
PY = sys.executable


# How long a test waits, unless it says otherwise, for something it expects to happen:
# a liveness bound, not a figure under test (how fast the chain restarts or starts is
# bench/compare.py's to measure). A Python service's restart takes ~0.1 s on a quiet
# host and took over 10 s on one running two suites at once beside QEMU guests (CI,
# 2026-12-04): a passing test must not fail there, and a failing one only fails later.
LIVENESS = 30.0


def wait_until(pred: Callable[[], Any], timeout: float = LIVENESS, what: str = "condition",
               interval: float = 0.02) -> Any:
    """Poll `pred` until it returns a truthy value; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def heartbeat_window(read: Callable[[], Any], seconds: float, what: str) -> None:
    """An observation window for a check that nothing happens, measured by a layer's own
    heartbeats: it ends once the heartbeat `read()` returns (a channels.Heartbeat or None)
    has been rewritten by the same process at least `seconds` after the first one seen.
    The layer must have kept running through the window, and a slow host stretches the
    window instead of letting it pass while the layer is starved."""
    first = wait_until(read, 10 + seconds, f"a heartbeat of {what}")
    wait_until(lambda: (h := read()) is not None and h.pid == first.pid
               and h.mono >= first.mono + seconds, 3 * seconds + 10,
               f"{what} to keep beating for {seconds:g} s")


def svc(*args: str) -> str:
    """A TOML argv list running tests/svc.py with `args`."""
    return "[" + ", ".join(f'"{a}"' for a in (PY, SVC) + args) + "]"


CLI_TIMEOUT = 60.0  # a Python start and a few requests, each answered within one round


def hachain_cli(state_dir: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`hachain ARGS --state-dir STATE_DIR` as a user runs it, from this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([PY, "-m", "hachain.cli", *args, "--state-dir", state_dir],
                          capture_output=True, text=True, timeout=CLI_TIMEOUT, env=env)


def children(pid: int) -> list[int]:
    """The pids of `pid`'s children ([] once it is gone)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


# A process sent SIGKILL is gone once the kernel has run its exit (one sent SIGSTOP shows
# as stopped once it has taken the signal): no timer of ours is involved. On a loaded host
# an uninterruptible wait (a cgroup write queued behind another test's, say) holds that
# back: CI once saw a SIGKILLed restarter still there after 5 s. The bound on a wait for
# the kernel alone is for a kernel that is stuck, not slow.
KILLED_BOUND = 60.0


def _kernel_state(pid: int) -> str:
    """What the kernel says `pid` is doing: its state, wait channel and kernel stack."""
    out = []
    for name in ("stat", "wchan", "stack"):
        try:
            with open(f"/proc/{pid}/{name}") as f:
                text = f.read().strip()
        except OSError as e:
            text = f"({e.strerror})"
        if name == "stat":
            text = " ".join(text.rsplit(")", 1)[-1].split()[:1])
        out.append(f"{name}: {text}")
    return "; ".join(out).replace("\n", " | ")


def reap(proc: subprocess.Popen[Any], what: str, timeout: float = KILLED_BOUND) -> int:
    """Wait for a process this test killed; its status. On a timeout, fail naming what
    the kernel says the process is doing, so that a stuck exit explains itself."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{what} (pid {proc.pid}) still not reaped {timeout:g} s "
                             f"after it was killed: {_kernel_state(proc.pid)}") from None


def descendants(pid: int) -> list[int]:
    """Every process below `pid` now (children, theirs, ...)."""
    out, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        out += kids
        todo += kids
    return out


def stop_chain(chain: subprocess.Popen[Any] | None, seen: set[int]) -> None:
    """End a `hachain run` a test started: SIGTERM (its orderly stop, up to 60 s), then
    SIGKILL of every process of it the test has seen (`seen`, kept up to date with
    `descendants` while it ran) and of what is below it now, and reap it."""
    if chain is None:
        return
    seen.update(descendants(chain.pid))
    if chain.poll() is None:
        chain.send_signal(signal.SIGTERM)
        try:
            chain.wait(60)
        except subprocess.TimeoutExpired:
            pass
    for pid in seen:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if chain.poll() is None:
        chain.kill()
    reap(chain, "the chain's init")


def end_init(init: subprocess.Popen[bytes]) -> None:
    """Kill an init a test started and the layers it started: init is stopped first, so
    that it restarts nothing while its children are killed."""
    if init.poll() is None:
        os.kill(init.pid, signal.SIGSTOP)
        for pid in children(init.pid):
            os.kill(pid, signal.SIGKILL)
    init.kill()
    reap(init, "init")


# The marks of a module whose tests boot simulated machines (hachain.simulators.machine).
SIM_MACHINE = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the simulated machine needs root "
                       "(PID and mount namespaces)"),
    pytest.mark.skipif(shutil.which("unshare") is None,
                       reason="the simulated machine needs unshare(1) from util-linux"),
]


START_TIMEOUT = 60.0  # RestarterRun.start: the restarter's first answer


def sim_machine_head(timeout: float, pet_interval: float, heartbeat_timeout: float,
                     restart_grace: float | None = None, chain_extra: str = "") -> str:
    """The [chain] and [watchdog] tables of a chain.toml for a simulated machine (the
    machine's own paths, its simulated watchdog; `chain_extra`: more [chain] lines);
    the services follow."""
    grace = "" if restart_grace is None else f"restart_grace = {restart_grace}\n"
    return f"""\
[chain]
state_dir = "/run/hachain"
persist_dir = "/var/lib/hachain"
heartbeat_interval = 0.2
restart_delay = 0.5
{chain_extra}

[watchdog]
device = "sim"
timeout = {timeout}
pet_interval = {pet_interval}
heartbeat_timeout = {heartbeat_timeout}
{grace}"""


@pytest.fixture
def short_dir() -> Iterator[str]:
    """A directory with a short path (a unix socket's path must be short)."""
    path = tempfile.mkdtemp(prefix="wd", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


class RestarterRun:
    """One real restarter process on a config written into a temp dir."""

    def __init__(self, tmp: str, body: str, cgroups: bool = True) -> None:
        self.tmp = tmp
        self.state_dir = os.path.join(tmp, "run")
        self.persist_dir = os.path.join(tmp, "persist")
        self.cg_root = None
        mount = find_cgroup2_mount()
        if cgroups and mount and os.access(mount, os.W_OK):
            self.cg_root = os.path.join(mount, f"hachain-test-{os.getpid()}-{id(self)}")
        head = (f'[chain]\nstate_dir = "{self.state_dir}"\npersist_dir = "{self.persist_dir}"\n'
                f'cgroup_root = "{self.cg_root or "none"}"\nheartbeat_interval = 0.2\n'
                '[watchdog]\ndevice = "none"\n')
        self.config = os.path.join(tmp, "chain.toml")
        with open(self.config, "w") as f:
            f.write(head + body)
        self.proc: subprocess.Popen[bytes] | None = None
        self.pids_seen: set[int] = set()
        self.log = os.path.join(tmp, "restarter.log")

    def start(self, notify_fd: int | None = None, wrap: tuple[str, ...] = ()) -> None:
        """`notify_fd`: a notify socket bound at its path, handed down as init does
        (what is sent on it while no restarter runs waits for the next one).
        `wrap`: a command that execs its arguments, the restarter's command line, in the
        same process (`unshare -m`: the restarter in a mount namespace of its own)."""
        logf = open(self.log, "ab")
        env = dict(os.environ)
        if notify_fd is not None:
            env[channels.ENV_NOTIFY_FD] = str(notify_fd)
        self.proc = subprocess.Popen([*wrap, PY, "-m", "hachain.restarter", "-c", self.config],
                                     stdout=logf, stderr=logf, env=env,
                                     pass_fds=() if notify_fd is None else (notify_fd,))
        logf.close()
        # A bound on a Python process's start-up, which nothing configures: generous, so
        # that a host loaded by the slow lane is not taken for a restarter that never
        # answers (CI, 2026-12-03: a restarter starting 280 Python services beside QEMU
        # guests had logged 97 starts and answered no ping within 10 s). Start-up speed
        # is bench/compare.py's to measure.
        wait_until(lambda: self.ping() or self._gone(), START_TIMEOUT,
                   "the restarter's control socket")
        if self._gone():
            raise AssertionError(f"the restarter exited ({self.proc.returncode}) before it "
                                 f"answered: {open(self.log).read()[-2000:]}")

    def _gone(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def ping(self) -> bool:
        try:
            return bool(client.request(self.state_dir, {"op": "ping"}, timeout=1).get("ok"))
        except client.ControlError:
            return False

    def req(self, op: str, name: str | None = None) -> dict[str, Any]:
        r: dict[str, Any] = {"op": op}
        if name is not None:
            r["name"] = name
        return client.request(self.state_dir, r)

    def req_raw(self, req: dict[str, Any]) -> dict[str, Any]:
        """One request exactly as given (a malformed one included)."""
        return client.request(self.state_dir, req)

    def status(self) -> dict[str, Any]:
        st = self.req("status")["services"]
        for s in st.values():
            if s["pid"]:
                self.pids_seen.add(s["pid"])
        return st

    def svc(self, name: str) -> dict[str, Any]:
        return self.status()[name]

    def service_log(self, name: str) -> str:
        """What the logger wrote of service `name` so far ("" before anything)."""
        try:
            return open(os.path.join(self.persist_dir, "log", name + ".log")).read()
        except FileNotFoundError:
            return ""

    def probed(self, name: str, n: int = 1, timeout: float = 30.0) -> dict[str, str]:
        """The KEY=VALUE words service `name` wrote on its log before its `n`-th line
        "probed" (and after the one before), once it has: what one run of a probing
        service found."""
        text = wait_until(lambda: (t := self.service_log(name)).count("probed") >= n and t,
                          timeout, f"{name}'s tries")
        block = text.split("probed")[n - 1]
        return dict(w.split("=", 1) for w in block.split() if "=" in w)

    def needs_cgroups(self, why: str) -> None:
        """Skip (fail in CI) when this run has no cgroup root: `why` needs one."""
        if self.cg_root is None:
            reason = f"no writable cgroup v2 here: {why}"
            if os.environ.get("CI") == "true":
                pytest.fail(reason)
            pytest.skip(reason)

    def wait_state(self, name: str, state: str, timeout: float = LIVENESS) -> dict[str, Any]:
        return wait_until(lambda: (s := self.status().get(name, {})).get("state") == state
                          and s, timeout, f"{name} to be {state}")

    def beats(self, n: int = 3, timeout: float = 10.0) -> None:
        """Wait until this restarter has written `n` more heartbeats (one per pass of its
        loop after its timers ran, every heartbeat_interval = 0.2 s): the observation
        window of a test that checks that nothing happens, counted in the restarter's own
        passes instead of wall-clock seconds, so a slow host widens it instead of
        emptying it."""
        assert self.proc is not None
        pid = self.proc.pid

        def seq() -> int | None:
            hb = channels.read_heartbeat(self.state_dir, "restarter")
            return hb.seq if hb is not None and hb.pid == pid else None
        first = wait_until(seq, timeout, "a heartbeat of the restarter")
        wait_until(lambda: (seq() or 0) >= first + n, timeout, f"{n} restarter heartbeats")

    def logger_pid(self) -> int:
        """The running logger's pid from its lock file (0 before one has written it)."""
        try:
            with open(os.path.join(self.state_dir, wire.LOCK_FILE)) as f:
                text = f.read().strip()
        except FileNotFoundError:
            return 0
        return int(text) if text.isdigit() else 0

    def _kill_logger(self) -> None:
        """The logger outlives a killed restarter by design (it waits for the next one):
        a test that ended with its restarter killed leaves it. SIGKILL it when its lock
        names a process of this run (its command line names this run's files)."""
        pid = self.logger_pid()
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read()
        except OSError:
            return
        if pid and (self.config.encode() in argv or self.state_dir.encode() in argv):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def kill_restarter(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        reap(self.proc, "the restarter")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                reap(self.proc, "the restarter")

    def cleanup(self) -> None:
        self.stop()
        self._kill_logger()
        # Anything a test left behind: services of this run only (their cgroups / pids).
        if self.cg_root:
            remove_cgroup_tree(self.cg_root)
        for pid in self.pids_seen:
            try:
                if channels.pid_alive(pid):
                    os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass


@pytest.fixture(scope="module")
def qemu_available() -> None:
    """Skip (fail under CI=true) when QEMU, a kernel or busybox is missing."""
    from hachain.simulators.qemu.harness import unavailable_reason
    reason = unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def close_vm(cvm: Any) -> None:
    """Close a ChainVM (QEMU killed and reaped) and check QEMU is really gone."""
    pid = cvm.vm.pid
    cvm.close()
    if pid is not None:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.fixture
def chain_vm(qemu_available: None, tmp_path: Any) -> Iterator[Callable[..., Any]]:
    """Makes chain machines (hachain.simulators.qemu.chain.ChainVM) for one test; each is
    closed afterwards (close_vm)."""
    from hachain.simulators.qemu.chain import ChainVM
    made: list[ChainVM] = []

    def make(settings: Any = None) -> ChainVM:
        cvm = ChainVM(tmp_path / f"vm{len(made)}", settings)
        made.append(cvm)
        return cvm

    yield make
    for cvm in made:
        close_vm(cvm)


@pytest.fixture
def restarter(tmp_path: Any) -> Iterator[Callable[..., RestarterRun]]:
    runs: list[RestarterRun] = []

    def make(body: str, cgroups: bool = True, start: bool = True) -> RestarterRun:
        r = RestarterRun(str(tmp_path), body, cgroups)
        runs.append(r)
        if start:
            r.start()
        return r

    yield make
    for r in runs:
        r.cleanup()


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    """The lanes of scripts/test.sh split on the `qemu` and `slow` markers: a test that
    boots a kernel (it asks for `qemu_available`) without the `qemu` marker would run in
    the fast lane, so it is refused here, before anything runs. A `qemu` test must live in
    a tests/test_qemu_*.py file: that is how the slow lane's workers keep them together
    (pytest_xdist_make_scheduler below)."""
    bad = [i.nodeid for i in items
           if "qemu_available" in getattr(i, "fixturenames", ())
           and i.get_closest_marker("qemu") is None]
    if bad:
        raise pytest.UsageError("tests that boot QEMU must be marked @pytest.mark.qemu: "
                                + ", ".join(bad))
    astray = [i.nodeid for i in items
              if i.get_closest_marker("qemu") is not None and not _qemu_file(i.nodeid)]
    if astray:
        raise pytest.UsageError("tests marked qemu must be in a tests/test_qemu_*.py file: "
                                + ", ".join(astray))


def _qemu_file(nodeid: str) -> bool:
    return os.path.basename(nodeid.split("::", 1)[0]).startswith("test_qemu_")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: Any, log: Any) -> Any:
    """The slow lane runs on pytest-xdist workers (scripts/test.sh: `-n N`), which overlap
    its waits. Every test is its own unit of work, except that all of tests/test_qemu_*.py
    is one unit: one worker runs them one after the other in file order, so
    TestSharedMachine's scenarios keep their one guest and two TCG guests never compete
    for the cores; being the largest unit, it starts first. Every other test is isolated
    (its own temp dir, cgroup, namespaces, free ports) and may run beside any other.
    (xdist's own `--dist loadgroup` does not group under pytest 9: it renames
    `item._nodeid`, which pytest 9 no longer reads.)"""
    if config.getvalue("dist") != "load":  # what -n means; another --dist is as asked
        return None
    from xdist.scheduler import LoadScopeScheduling

    class QemuTogether(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return "qemu" if _qemu_file(nodeid) else nodeid

    return QemuTogether(config, log)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: Any, call: Any) -> Iterator[None]:
    """In CI (CI=true) a skipped test is a failure: CI has root, cgroup v2, namespaces and
    QEMU, so a skip there would hide a missing feature behind a green run."""
    outcome = yield
    rep = outcome.get_result()
    if os.environ.get("CI") == "true" and rep.skipped and not hasattr(rep, "wasxfail"):
        rep.outcome = "failed"
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.longrepr = f"skipped in CI, which must run every test: {reason}"


@pytest.fixture
def cgroups(tmp_path):
    """A Cgroups root of this test's own under the cgroup2 mount; removed afterwards
    with everything in it."""
    mount = find_cgroup2_mount()
    if mount is None or not os.access(mount, os.W_OK):
        pytest.skip("needs a writable cgroup v2 hierarchy (run as root)")
    root = os.path.join(mount, f"hachain-test-spawn-{os.getpid()}-{tmp_path.name}")
    from hachain.restarter import spawn
    cg = spawn.Cgroups.from_config(root)
    assert cg.active
    try:
        yield cg
    finally:
        remove_cgroup_tree(root)


@contextlib.contextmanager
def host_turn(what: str) -> Iterator[None]:
    """An exclusive turn at something the whole host shares (a user's IPC objects, the
    privileged ports), between xdist workers and between test runs on one host."""
    with open(f"/tmp/hachain-test-{what}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


@pytest.fixture
def started():
    """Pids spawned by a test: SIGKILLed and reaped at the end, whatever happened."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


# Every way the restarter starts a service: clone3 into the service's cgroup (the
# compiled spawn), the fallback that moves the restarter in and out around subprocess or
# posix_spawn, and the same two without cgroups (cgroup_root = "none").
SPAWN_PATHS = ["clone3", "fallback", "no-cgroup", "no-cgroup-fallback"]


def spawn_path(path: str, cgroups: Any, monkeypatch: Any) -> Any:
    """The Cgroups to spawn with along `path` (one of SPAWN_PATHS); the compiled spawn
    patched off for a fallback, the test skipped where it is not built."""
    from hachain.restarter import spawn
    if path.endswith("fallback"):
        monkeypatch.setattr(spawn, "_direct", False)
    elif not spawn.direct_spawn_available():
        pytest.skip("the clone3 spawn is not built or not usable here")
    return spawn.Cgroups(None) if path.startswith("no-cgroup") else cgroups
