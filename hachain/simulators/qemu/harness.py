"""Boot any PID-1 program on a real Linux kernel under QEMU and drive it from the host.

This module owns one QEMU process per `QemuMachine`: its command line, its lifetime (it
is always killed and reaped, by pid, when the machine is closed or a `with` block ends),
the per-machine control share, and the host side of the guest agent's mailbox. The
initramfs lives in initramfs.py, the console reader in console.py, QMP in qmp.py; the
guest programs (guest_agent.py, guest_petter.py) import nothing from here.

What the guest looks like (see docs/qemu.md):
- the root is the host's own root, read-only over 9p, with a tmpfs overlay on top (so
  any path can be created, and nothing written survives a reset); /run, /tmp, /dev/shm
  are tmpfs; host files under /tmp and /run are therefore *not* visible in the guest;
- the control share (host: `vm.ctl_dir`) is at /run/hachain-qemu, the persistent share
  (host: `vm.persist_dir`) at `persist_path` (default /var/lib/hachain): both writable,
  both survive a reset;
- the caller's argv runs as PID 1 with only the given environment (plus PATH, HOME,
  TERM and HACHAIN_QEMU_BOOT=<n>); the guest agent is already running, in its own
  session, as PID 1's child: PID 1 must reap it (any real init does);
- every boot prints `HACHAIN-QEMU-BOOT <n>` and, just before PID 1, `HACHAIN-QEMU-PID1
  <n>`; n counts boots of this machine from 1 (kept in the control share).

Every wait takes a timeout and raises `QemuTimeout` (with the console tail) when it
passes, or `QemuExited` when QEMU is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Self

from hachain.simulators.qemu.console import BootRecord, Console
from hachain.simulators.qemu.cpuwait import CpuWaitRecorder
from hachain.simulators.qemu.initramfs import InitramfsError, build_initramfs, find_busybox
from hachain.simulators.qemu.kernel import KernelInfo, find_kernel, pvh_kernel
from hachain.simulators.qemu.qmp import QmpClient, QmpError, QmpEvent

APT_HINT = "apt-get install -y qemu-system-x86 linux-image-amd64 busybox-static"
GUEST_CTL = "/run/hachain-qemu"
PR_SET_PDEATHSIG = 1
WATCHDOG_KINDS = ("i6300esb", "softdog", None)
HERE = Path(__file__).resolve().parent
AGENT_SCRIPT = HERE / "guest_agent.py"
PETTER_SCRIPT = HERE / "guest_petter.py"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_HIDDEN_IN_GUEST = ("/tmp", "/run", "/dev", "/proc", "/sys")
# s for a SIGKILLed process to be reaped: the kernel runs its exit, no timer of ours;
# on a loaded host an uninterruptible wait can hold that back for seconds
KILLED_BOUND = 60.0

__all__ = [
    "AGENT_SCRIPT",
    "APT_HINT",
    "PETTER_SCRIPT",
    "BootRecord",
    "CommandResult",
    "QemuError",
    "QemuExited",
    "QemuMachine",
    "QemuTimeout",
    "QemuUnavailable",
    "QmpEvent",
    "Tools",
    "find_tools",
    "unavailable_reason",
]


class QemuError(Exception):
    """Base class of the harness's errors."""


class QemuUnavailable(QemuError):
    """QEMU, a kernel or busybox is missing; the message is one line and says how to fix."""


class QemuTimeout(QemuError):
    """A wait ran out of time."""


class QemuExited(QemuError):
    """QEMU exited while something was being waited for."""


@dataclass(frozen=True)
class Tools:
    """The host programs and files a boot needs."""

    qemu: Path
    kernel: KernelInfo
    busybox: Path


@dataclass(frozen=True)
class CommandResult:
    """What a command run by the guest agent returned."""

    rc: int
    stdout: str
    stderr: str
    boot: int
    timed_out: bool = False


def find_tools(qemu: str | os.PathLike[str] | None = None,
               kernel: str | os.PathLike[str] | None = None,
               busybox: str | os.PathLike[str] | None = None) -> Tools:
    """Locate QEMU, the kernel and busybox, or raise QemuUnavailable naming what is missing."""
    missing = []
    qemu_name = os.fspath(qemu) if qemu else "qemu-system-x86_64"
    qemu_path = shutil.which(qemu_name)
    if qemu_path is None:
        missing.append(f"{qemu_name} (QEMU)")
    info = find_kernel(kernel)
    if info is None:
        missing.append("a kernel (/boot/vmlinuz-* with /lib/modules/<version>/modules.dep)")
    elif not os.access(info.image, os.R_OK):
        missing.append(f"a readable kernel image ({info.image})")
    elif not (info.modules_dir / "modules.dep").exists():
        missing.append(f"kernel modules ({info.modules_dir}/modules.dep)")
    busybox_path = find_busybox(busybox)
    if busybox_path is None:
        missing.append(f"busybox ({busybox or '/bin/busybox'})")
    if missing:
        raise QemuUnavailable(f"hachain-qemu: missing {'; '.join(missing)}; "
                              f"install with: {APT_HINT}")
    assert qemu_path is not None and info is not None and busybox_path is not None
    return Tools(Path(qemu_path), info, busybox_path)


def unavailable_reason(**kwargs: Any) -> str | None:
    """None when a boot is possible, else the one-line QemuUnavailable message."""
    try:
        find_tools(**kwargs)
    except QemuUnavailable as exc:
        return str(exc)
    return None


def default_cache_dir() -> Path:
    """Where built initramfs images are kept: $HACHAIN_QEMU_CACHE or the XDG cache."""
    if os.environ.get("HACHAIN_QEMU_CACHE"):
        return Path(os.environ["HACHAIN_QEMU_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "hachain-qemu"


try:
    _PRCTL: Any = ctypes.CDLL(None, use_errno=True).prctl  # resolved before any fork
except (OSError, AttributeError):
    _PRCTL = None


def _die_with_parent() -> None:
    """In the QEMU child: get SIGKILL if the thread that started it dies, so a test run
    killed outright (e.g. pytest-timeout's thread method) leaves no QEMU behind. Only a
    pre-resolved prctl(2) call runs between fork and exec."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def hidden_host_paths() -> list[str]:
    """Host directories the guest needs that its tmpfs /tmp and /run would hide: this
    checkout, the virtual environment and the interpreter, wherever they live (a clean
    clone under /tmp, say). The initramfs binds them back from the host root."""
    import hachain
    wanted = {Path(hachain.__file__).resolve().parents[1], Path(sys.prefix),
              Path(sys.executable).resolve().parents[1]}
    out: set[str] = set()
    for p in wanted:
        s = os.fspath(p)
        for hidden in ("/tmp", "/run"):
            if s == hidden or s.startswith(hidden + "/"):
                out.add(s)
    return sorted(out)


def _virtfs_path(path: Path) -> str:
    return os.fspath(path).replace(",", ",,")


class QemuMachine:
    """One guest: configure in the constructor, `boot()`, drive, `close()` (or `with`).

    `argv` is PID 1's command line as the guest sees it (the host root is the guest
    root, so host paths work, except under /tmp and /run). `watchdog` is "i6300esb" (the
    emulated Intel 6300ESB; `heartbeat` is its module parameter, and the reset comes
    about 2 x heartbeat after the last pet), "softdog" (`heartbeat` is soft_margin) or
    None. `panic` is the kernel's panic=N (None: a panic leaves the machine down).
    `no_reboot` makes any reset, watchdog resets included, end QEMU instead. `setup` is
    shell text run (busybox sh -e, as root, in the guest root) after the mounts and before
    the agent and PID 1, on every boot; if it fails, the boot fails.
    """

    def __init__(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                 watchdog: str | None = "i6300esb", heartbeat: int = 30,
                 nowayout: bool = False, panic: int | None = 1, no_reboot: bool = False,
                 persist_dir: str | os.PathLike[str] | None = None,
                 persist_path: str | None = "/var/lib/hachain",
                 workdir: str | os.PathLike[str] | None = None, memory_mb: int = 512,
                 smp: int = 1, machine: str = "pc", accel: str = "tcg",
                 qemu: str | os.PathLike[str] | None = None,
                 kernel: str | os.PathLike[str] | None = None,
                 busybox: str | os.PathLike[str] | None = None,
                 cache_dir: str | os.PathLike[str] | None = None, agent: bool = True,
                 agent_python: str | None = None, root_cache: str = "loose",
                 quiet: bool = True, append: Sequence[str] = (),
                 qemu_args: Sequence[str] = (), echo: Callable[[str], object] | None = None,
                 hostname: str = "hachain-guest", pvh: bool = True,
                 setup: str | None = None) -> None:
        if watchdog not in WATCHDOG_KINDS:
            raise ValueError(f"watchdog must be one of {WATCHDOG_KINDS}, got {watchdog!r}")
        if heartbeat < 1:
            raise ValueError(f"heartbeat must be >= 1 second, got {heartbeat}")
        if persist_path is not None and not persist_path.startswith("/"):
            raise ValueError(f"persist_path must be absolute, got {persist_path!r}")
        if not argv:
            raise ValueError("argv must name PID 1's program")
        self.argv = list(argv)
        self.env = dict(env or {})
        self.watchdog, self.heartbeat, self.nowayout = watchdog, heartbeat, nowayout
        self.panic, self.no_reboot = panic, no_reboot
        self.memory_mb, self.smp, self.machine, self.accel = memory_mb, smp, machine, accel
        self.agent, self.root_cache, self.quiet = agent, root_cache, quiet
        self.agent_python = agent_python or os.path.realpath(sys.executable)
        self.append, self.qemu_args = list(append), list(qemu_args)
        self.hostname, self._echo, self.pvh, self.setup = hostname, echo, pvh, setup
        self._tool_args = {"qemu": qemu, "kernel": kernel, "busybox": busybox}
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="hachain-qemu-")).resolve()
        self.ctl_dir = self.workdir / "ctl"
        self.log_path = self.workdir / "console.log"
        self.persist_path = persist_path
        self.expose = hidden_host_paths()
        self.persist_dir: Path | None = None
        if persist_path is not None:
            self.persist_dir = Path(persist_dir or self.workdir / "persist").resolve()
        self._proc: subprocess.Popen[bytes] | None = None
        self._console: Console | None = None
        self._qmp: QmpClient | None = None
        self._log: IO[bytes] | None = None
        self._qmp_dir: str | None = None
        self._cpuwait: CpuWaitRecorder | None = None
        self.started_at = 0.0
        self.command: list[str] = []
        self.kernel_path: Path | None = None
        self.boot_retries: list[str] = []  # why a start was retried (see boot())

    # ----------------------------------------------------------------- lifetime

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def boot(self, timeout: float = 15.0, attempts: int = 3) -> None:
        """Build (or reuse) the initramfs and start QEMU; returns once QMP answers.

        A QEMU whose QMP handshake does not finish within `timeout` is killed and started
        again, up to `attempts` times in all: QEMU 7.2 now and then fumbles a client that
        connects while it is still starting (an event before the greeting; once in CI, a
        greeting and then no reply to `qmp_capabilities` for 15 s, with the guest
        printing nothing). Each retry's reason, with what QEMU's threads were doing, is
        kept in `boot_retries`."""
        if self._proc is not None:
            raise QemuError("boot(): this machine was already booted; use a new one")
        tools = find_tools(**self._tool_args)  # type: ignore[arg-type]
        try:
            initrd = build_initramfs(tools.kernel, tools.busybox, self.cache_dir)
            elf = pvh_kernel(tools.kernel, self.cache_dir) if self.pvh else None
        except (InitramfsError, OSError) as exc:
            raise QemuError(f"hachain-qemu: cannot build initramfs: {exc}") from exc
        self.kernel_path = elf or tools.kernel.image
        for attempt in range(1, attempts + 1):
            try:
                self._start(tools, initrd, timeout)
                return
            except QmpError as exc:
                why = f"{exc}; qemu: {self._threads()}"
                tail = self._tail()
                self._stop()
                if attempt == attempts:
                    self._drop_workdir()
                    raise QemuError(f"{why}; console: {tail} (attempt {attempt} of "
                                    f"{attempts}; earlier: {self.boot_retries})") from exc
                self.boot_retries.append(why)

    def _start(self, tools: Tools, initrd: Path, timeout: float) -> None:
        assert self.kernel_path is not None
        self._prepare_shares(tools.busybox)
        qmp_socket = self._qmp_socket_path()
        with contextlib.suppress(FileNotFoundError):  # a killed start's: connect() to it
            os.unlink(qmp_socket)                    # would be refused until QEMU binds
        self.command = self._command_line(tools, self.kernel_path, initrd, qmp_socket)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed by _stop()
        self.started_at = time.monotonic()
        self._proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      start_new_session=True,
                                      preexec_fn=_die_with_parent)  # noqa: PLW1509 - prctl only
        assert self._proc.stdout is not None
        self._console = Console(self._proc.stdout.fileno(), self._log, self._echo)
        self._console.start()
        self._cpuwait = CpuWaitRecorder(self._proc.pid).start()
        self._qmp = QmpClient(qmp_socket, timeout)

    def _threads(self) -> str:
        """What QEMU's threads are doing (state and wait channel), or how it ended."""
        proc = self._proc
        if proc is None:
            return "not started"
        if proc.poll() is not None:
            return f"exited with status {proc.returncode}"
        out = []
        try:
            for tid in sorted(os.listdir(f"/proc/{proc.pid}/task"), key=int):
                try:
                    with open(f"/proc/{proc.pid}/task/{tid}/stat") as f:
                        stat = f.read()
                    with open(f"/proc/{proc.pid}/task/{tid}/wchan") as f:
                        wchan = f.read().strip() or "-"
                except OSError:
                    continue
                name = stat[stat.index("(") + 1:stat.rindex(")")]
                state = stat[stat.rindex(")") + 2:].split()[0]
                out.append(f"{name} {state} {wchan}")
        except OSError as exc:
            return f"pid {proc.pid}: {exc}"
        return f"pid {proc.pid} threads: " + ", ".join(out)

    def close(self) -> None:
        """Kill and reap QEMU (by pid), stop the readers, drop a temporary workdir."""
        self._stop()
        self._drop_workdir()

    def _stop(self) -> None:
        """Kill and reap QEMU and stop its readers; the workdir stays (a retry uses it)."""
        proc, self._proc = self._proc, None
        if self._cpuwait is not None:
            self._cpuwait.stop()  # kept: host_wait() still answers for the run that ended
        if self._qmp is not None:
            self._qmp.close()
            self._qmp = None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    try:
                        proc.wait(KILLED_BOUND)
                    except subprocess.TimeoutExpired:
                        pass  # a stuck kernel: still stop the readers, drop the workdir
            self._returncode = proc.returncode
            if self._console is not None:
                self._console.join(5)
            if proc.stdout is not None:
                proc.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._qmp_dir is not None:
            shutil.rmtree(self._qmp_dir, ignore_errors=True)
            self._qmp_dir = None

    def _drop_workdir(self) -> None:
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def host_wait(self, t1: float, t2: float) -> float | None:
        """Seconds QEMU's most-delayed thread sat runnable without a host CPU between
        t1 and t2 (time.monotonic()): what other load on the host added to anything the
        guest did then (hachain/simulators/qemu/cpuwait.py). None before boot() or where the
        kernel keeps no schedstat."""
        return None if self._cpuwait is None else self._cpuwait.between(t1, t2)

    @property
    def pid(self) -> int | None:
        """QEMU's pid while it runs."""
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        if self._proc is not None:
            return self._proc.poll()
        return getattr(self, "_returncode", None)

    def _prepare_shares(self, busybox: Path) -> None:
        self.ctl_dir.mkdir(parents=True, exist_ok=True)
        for stale in ("boots", "agent/ready"):
            (self.ctl_dir / stale).unlink(missing_ok=True)
        for sub in ("agent/req", "agent/resp"):
            shutil.rmtree(self.ctl_dir / sub, ignore_errors=True)
            (self.ctl_dir / sub).mkdir(parents=True)
        if self.persist_dir is not None:
            self.persist_dir.mkdir(parents=True, exist_ok=True)
        (self.ctl_dir / "boot.sh").write_text(self._boot_script(busybox))

    def _qmp_socket_path(self) -> str:
        path = self.workdir / "qmp.sock"
        if len(os.fsencode(path)) < 100:
            return os.fspath(path)
        self._qmp_dir = tempfile.mkdtemp(prefix="hq-")
        return os.path.join(self._qmp_dir, "qmp.sock")

    def _boot_script(self, busybox_path: Path) -> str:
        q = shlex.quote
        module, params = "", ""
        if self.watchdog == "i6300esb":
            module = "i6300esb"
            params = f"heartbeat={self.heartbeat} nowayout={int(self.nowayout)}"
        elif self.watchdog == "softdog":
            module = "softdog"
            params = f"soft_margin={self.heartbeat} nowayout={int(self.nowayout)}"
        env = {"PATH": DEFAULT_PATH, "HOME": "/root", "TERM": "linux", **self.env}
        env_words = " ".join(q(f"{k}={v}") for k, v in env.items())
        agent = ":"
        if self.agent:
            # chroot runs in the foreground, so the agent is inside the new root before
            # switch_root empties the initramfs; the shell it runs backgrounds the agent.
            busybox = q(os.fspath(busybox_path))
            inner = (f"{busybox} setsid {q(self.agent_python)} -S "
                     f"{q(os.fspath(AGENT_SCRIPT))} --ctl {GUEST_CTL} --boot $n "
                     f"</dev/null >>{GUEST_CTL}/agent.log 2>&1 &")
            agent = (f"/bin/chroot /newroot {busybox} env -i PATH={q(DEFAULT_PATH)} "
                     f"{busybox} sh -c \"{inner}\"")
        argv_words = " ".join(q(a) for a in self.argv)
        return "\n".join([
            "# written by hachain.simulators.qemu.harness for one machine; sourced by /init",
            f"WATCHDOG_MODULE={q(module)}",
            f"WATCHDOG_PARAMS={q(params)}",
            f"ROOT_CACHE={q(self.root_cache)}",
            f"PERSIST_PATH={q(self.persist_path or '')}",
            f"EXPOSE_PATHS={q(' '.join(self.expose))}",
            f"GUEST_HOSTNAME={q(self.hostname)}",
            "run_setup() {",
            (f"    /bin/chroot /newroot {q(os.fspath(busybox_path))} sh -ec {q(self.setup)}"
             if self.setup else "    :"),
            "}",
            "start_agent() {",
            f"    {agent}",
            "}",
            "run_pid1() {",
            (f"    exec /bin/env -i {env_words} \"HACHAIN_QEMU_BOOT=$n\" "
             f"/bin/switch_root /newroot {argv_words}"),
            "}",
            "",
        ])

    def _command_line(self, tools: Tools, kernel: Path, initrd: Path,
                      qmp_socket: str) -> list[str]:
        # cryptomgr.notests: no self-test of every crypto algorithm at boot. Under TCG on a
        # loaded host one of them held the guest's CPU for 52 s (a soft lockup in
        # cryptomgr_test) and the first boot missed its 60 s; the chain uses no crypto.
        append = ["console=ttyS0", "rdinit=/init", "cryptomgr.notests=1"]
        if self.panic is not None:
            append.append(f"panic={self.panic}")
        if self.quiet:
            append.append("quiet")
        append += self.append
        accel = self.accel
        if accel == "auto":
            accel = "kvm" if os.access("/dev/kvm", os.R_OK | os.W_OK) else "tcg"
        cmd = [
            os.fspath(tools.qemu), "-machine", f"{self.machine},accel={accel}",
            "-m", str(self.memory_mb), "-smp", str(self.smp),
            "-nographic", "-nodefaults", "-no-user-config",
            "-serial", "stdio", "-monitor", "none",
            "-qmp", f"unix:{qmp_socket},server=on,wait=off",
            "-kernel", os.fspath(kernel), "-initrd", os.fspath(initrd),
            "-append", " ".join(append),
            "-virtfs", ("local,path=/,mount_tag=host,security_model=none,readonly=on,"
                        "multidevs=remap"),
            "-virtfs", (f"local,path={_virtfs_path(self.ctl_dir)},mount_tag=ctl,"
                        "security_model=none"),
        ]
        if self.persist_dir is not None:
            cmd += ["-virtfs", (f"local,path={_virtfs_path(self.persist_dir)},"
                                "mount_tag=persist,security_model=none")]
        if self.watchdog == "i6300esb":
            cmd += ["-device", "i6300esb", "-watchdog-action", "reset"]
        if self.no_reboot:
            cmd.append("-no-reboot")
        return cmd + self.qemu_args

    # ----------------------------------------------------------------- console

    @property
    def console(self) -> str:
        """Everything the guest wrote to its serial console so far ("\\r" removed)."""
        return self._console.text if self._console is not None else ""

    def console_mark(self) -> int:
        """The current end of the console text, for `wait_for(..., since=mark)`."""
        return len(self.console)

    def time_at(self, offset: int) -> float:
        """When console text at `offset` arrived on the host (time.monotonic())."""
        return self._need_console().time_at(offset)

    @property
    def boots(self) -> list[BootRecord]:
        """Boots seen so far, oldest first."""
        return list(self._console.boots) if self._console is not None else []

    @property
    def boot_count(self) -> int:
        boots = self.boots
        return boots[-1].number if boots else 0

    def _need_console(self) -> Console:
        if self._console is None:
            raise QemuError("the machine has not been booted")
        return self._console

    def _tail(self, lines: int = 25) -> str:
        """The console's last `lines` lines, each with when it reached the host, in
        seconds before now (a boot that went quiet shows as a jump in those times)."""
        if self._console is None:
            return "(no console output)"
        now = time.monotonic()
        text = self._console.text.rstrip("\n")
        if not text:
            return "(no console output)"
        out: list[str] = []
        end = len(text)
        while len(out) < lines and end >= 0:
            start = text.rfind("\n", 0, end) + 1
            at = self._console.time_at(start)
            out.append(f"{at - now:7.1f}s | {text[start:end]}")
            end = start - 1
        return "\n    " + "\n    ".join(reversed(out))

    def _procs_of(self, boot: int) -> str:
        """The guest agent's last snapshot of the processes of `boot` (guest_agent.py),
        for a failure's message: what each layer was waiting on when that boot hung."""
        path = self.ctl_dir / "agent" / f"procs-{boot}.txt"
        try:
            text = path.read_text(errors="replace")
            age = time.time() - path.stat().st_mtime
        except OSError:
            return ""
        return (f"\n    guest processes of boot {boot} ({age:.0f} s before this, on the "
                "host's clock):\n      " + "\n      ".join(text.rstrip("\n").splitlines()))

    def _wait(self, what: str, timeout: float, check: Callable[[], Any],
              poll: float = 0.5) -> Any:
        """Wait on console changes until check() is truthy; bounded by timeout."""
        console = self._need_console()
        deadline = time.monotonic() + timeout
        with console.changed:
            while True:
                result = check()
                if result:
                    return result
                if console.closed:
                    raise QemuExited(f"QEMU exited (rc {self.returncode}) while waiting "
                                     f"for {what}; console tail:{self._tail()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise QemuTimeout(f"timed out after {timeout:g}s waiting for {what}; "
                                      f"console tail:{self._tail()}")
                console.changed.wait(min(left, poll))

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float,
                 since: int = 0) -> re.Match[str]:
        r"""The first match of `pattern` in the console at or after offset `since`.

        Only complete lines are searched (text up to the last newline), so a pattern never
        matches half of a word or number that is still arriving.
        """
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        console = self._need_console()

        def search() -> re.Match[str] | None:
            text = console._text
            return regex.search(text, since, text.rfind("\n") + 1)

        return self._wait(f"{regex.pattern!r}", timeout, search)  # type: ignore[no-any-return]

    def wait_boot(self, n: int, timeout: float, pid1: bool = True) -> BootRecord:
        """Wait until boot number `n` (1 = first) has started (and exec'd PID 1)."""
        def reached() -> BootRecord | None:
            for record in self._need_console().boots:
                if record.number >= n and (record.pid1_at is not None or not pid1):
                    return record
            return None
        return self._wait(f"boot {n}", timeout, reached)  # type: ignore[no-any-return]

    def wait_exit(self, timeout: float) -> int:
        """Wait for QEMU to exit on its own (e.g. with no_reboot) and return its status."""
        if self._proc is None:
            raise QemuError("the machine is not running")
        deadline = time.monotonic() + timeout
        try:
            rc = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise QemuTimeout(f"QEMU still running after {timeout:g}s; "
                              f"console tail:{self._tail()}") from None
        # QEMU's last events (SHUTDOWN) may still be in the socket: read them first
        if self._qmp is not None:
            self._qmp.drain(max(1.0, deadline - time.monotonic()))
        return rc

    # ----------------------------------------------------------------- QMP

    @property
    def events(self) -> list[QmpEvent]:
        """QMP events so far (WATCHDOG, RESET, SHUTDOWN, ...), oldest first."""
        return list(self._qmp.events) if self._qmp is not None else []

    def wait_event(self, name: str, timeout: float, since: int = 0) -> QmpEvent:
        """The first QMP event called `name` at index >= `since` in `events`."""
        if self._qmp is None:
            raise QemuError("the machine is not running")
        qmp = self._qmp
        deadline = time.monotonic() + timeout
        with qmp.changed:
            while True:
                for event in qmp.events[since:]:
                    if event.name == name:
                        return event
                if self._proc is None or self._proc.poll() is not None:
                    raise QemuExited(f"QEMU exited while waiting for QMP event {name}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise QemuTimeout(f"timed out after {timeout:g}s waiting for QMP event "
                                      f"{name}; console tail:{self._tail()}")
                qmp.changed.wait(min(left, 0.5))

    def qmp(self, command: str, timeout: float = 10.0, **arguments: Any) -> Any:
        """Run a QMP command (e.g. "system_reset", "query-status") and return its result."""
        if self._qmp is None:
            raise QemuError("the machine is not running")
        return self._qmp.command(command, arguments or None, timeout)

    # ----------------------------------------------------------------- guest agent

    def wait_agent(self, timeout: float) -> int:
        """Wait until the guest agent of the latest boot is serving; returns that boot."""
        ready = self.ctl_dir / "agent" / "ready"

        def serving() -> int | None:
            boot = self.boot_count
            try:
                data = json.loads(ready.read_text())
            except (OSError, ValueError):
                return None
            return boot if boot and data.get("boot") == boot else None

        return self._wait("the guest agent", timeout, serving,  # type: ignore[no-any-return]
                          poll=0.05)

    def run(self, command: str | Sequence[str], timeout: float = 20.0) -> tuple[int, str]:
        """Run a command in the guest (a string goes to /bin/sh -c); (rc, stdout+stderr)."""
        result = self.run_result(command, timeout, merge_stderr=True)
        return result.rc, result.stdout

    def run_result(self, command: str | Sequence[str], timeout: float = 20.0,
                   merge_stderr: bool = False) -> CommandResult:
        """Run a command in the guest through the agent; the whole call is bounded."""
        if not self.agent:
            raise QemuError("this machine was built with agent=False")
        deadline = time.monotonic() + timeout
        boot = self.wait_agent(timeout)
        request_id = uuid.uuid4().hex
        shell = command if isinstance(command, str) else None
        argv = None if isinstance(command, str) else list(command)
        request = {"id": request_id, "argv": argv, "shell": shell,
                   "timeout": max(0.3, 0.8 * (deadline - time.monotonic()) - 0.2),
                   "merge_stderr": merge_stderr}
        base = self.ctl_dir / "agent"
        tmp = base / f".{request_id}.req"
        tmp.write_text(json.dumps(request))
        os.replace(tmp, base / "req" / f"{request_id}.json")
        reply_path = base / "resp" / f"{request_id}.json"
        console = self._need_console()
        while True:
            try:
                reply = json.loads(reply_path.read_text())
                reply_path.unlink()
                break
            except (OSError, ValueError):
                pass
            if console.closed:
                raise QemuExited(f"QEMU exited while running {command!r} in the guest; "
                                 f"console tail:{self._tail()}")
            if time.monotonic() > deadline:
                raise QemuTimeout(f"no reply within {timeout:g}s to {command!r} (boot "
                                  f"{boot}, now {self.boot_count}); console tail:"
                                  f"{self._tail()}{self._procs_of(boot)}")
            time.sleep(0.05)
        if reply.get("error"):
            return CommandResult(int(reply["rc"]), "", reply["error"], boot)
        return CommandResult(int(reply["rc"]), reply["stdout"], reply["stderr"], boot,
                             bool(reply.get("timed_out")))

    # ----------------------------------------------------------------- files

    def guest_path(self, host_path: str | os.PathLike[str]) -> str:
        """Where a host file appears in the guest (ValueError if it does not)."""
        path = Path(host_path).resolve()
        shares = [(self.ctl_dir, GUEST_CTL)]
        if self.persist_dir is not None and self.persist_path is not None:
            shares.append((self.persist_dir, self.persist_path))
        for host, guest in shares:
            if path == host:
                return guest
            if host in path.parents:
                return os.path.join(guest, os.fspath(path.relative_to(host)))
        for hidden in _HIDDEN_IN_GUEST:
            if path == Path(hidden) or Path(hidden) in path.parents:
                raise ValueError(f"{path}: not visible in the guest ({hidden} is a guest "
                                 "mount); put it in vm.ctl_dir or vm.persist_dir")
        return os.fspath(path)

    def put_file(self, name: str, data: str | bytes, mode: int = 0o644) -> str:
        """Write a file into the control share; returns its path in the guest."""
        target = self.ctl_dir / "files" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data.encode() if isinstance(data, str) else data)
        target.chmod(mode)
        return self.guest_path(target)

