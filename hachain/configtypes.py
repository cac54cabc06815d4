"""The configuration's types: what a parsed file is, with no parsing in it.

Owns: the frozen dataclasses a configuration becomes (`Config` and its tables) and the
value sets their keys take. Must not: import the schema or parse anything; parsing,
validation and the key reference live in `hachain/config.py`, which re-exports every
name here. Why apart: the layers that start from the parsed running snapshot (the
restarter, the tickler's parser child) need the types to unpickle it, and not the
schema, whose tables and kinds cost the restarter about a quarter of its import time
(bench/import_profile.py). A field added here needs its `Key` in config.py's schema.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from hachain import channels
from hachain.classcache import dataclass, field  # (dataclasses through the hook: classcache)

DEFAULT_PATH = channels.DEFAULT_CONFIG
# a service's PATH unless its env sets one (the restarter passes nothing of its own)
SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

RESTART_POLICIES = ("always", "on-failure", "on-abnormal", "never")
KINDS = ("longrun", "oneshot", "forking")
KILL_MODES = ("cgroup", "mixed", "process")
READY_KINDS = ("none", "notify", "fd", "exec", "tcp")
PROTECT_SYSTEM = ("yes", "full", "strict")
PROTECT_HOME = ("yes", "read-only", "tmpfs")
INTENSITY_ACTIONS = ("maintenance", "restart-group", "reboot", "ignore")
BOOT_LOOP_ACTIONS = ("rescue", "disarm", "ignore")
HEALTH_KINDS = ("exec", "tcp")
# [check.NAME]: what a machine check tests (hachain/checks.py) and what its failure does
CHECK_KINDS = ("command", "load", "memory", "temperature", "file", "pidfile", "interface",
               "ping")
CHECK_ACTIONS = ("reboot", "log")
LOAD_AVERAGES = (1, 5, 15)
RLIMITS = ("as", "core", "cpu", "data", "fsize", "memlock", "nofile", "nproc", "stack")
# Linux's capabilities, by number (linux/capability.h), without their CAP_ prefix
CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID",
    "SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST",
    "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO",
    "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
    "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE",
    "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM",
    "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE")


@dataclass(frozen=True)
class Backoff:
    """The delay before each restart: `initial`, times `factor` per crash, at most `max`."""
    initial: float = 0.1
    factor: float = 2.0
    max: float = 30.0
    reset_after: float = 10.0  # a run this long resets the delay to `initial`


@dataclass(frozen=True)
class Intensity:
    """How many restarts within `window` seconds are allowed before `action` is taken."""
    max_restarts: int = 5
    window: float = 60.0
    action: str = "maintenance"
    decay: float = 0.0  # > 0: a decaying count (1 per crash, -1 per `decay` s up) instead


@dataclass(frozen=True)
class HealthCheck:
    """A readiness or liveness probe of a service: a command, or a TCP connect."""
    kind: str = "exec"
    command: tuple[str, ...] = ()
    port: int = 0
    interval: float = 10.0
    timeout: float = 5.0
    failures: int = 3  # consecutive failures that count as the service being hung


@dataclass(frozen=True)
class StartChecks:
    """A service's `condition` or `assert` table (hachain/conditions.py): arguments with
    systemd's `!` (negate) and `|` (triggering) prefixes, per check."""

    path_exists: tuple[str, ...] = ()
    path_exists_glob: tuple[str, ...] = ()
    path_is_directory: tuple[str, ...] = ()
    path_is_symbolic_link: tuple[str, ...] = ()
    path_is_mount_point: tuple[str, ...] = ()
    path_is_read_write: tuple[str, ...] = ()
    directory_not_empty: tuple[str, ...] = ()
    file_not_empty: tuple[str, ...] = ()
    file_is_executable: tuple[str, ...] = ()
    kernel_command_line: tuple[str, ...] = ()
    capability: tuple[str, ...] = ()
    security: tuple[str, ...] = ()
    virtualization: tuple[str, ...] = ()
    ac_power: tuple[str, ...] = ()


@dataclass(frozen=True)
class ServiceConfig:
    """One `[service.NAME]` table, validated (docs/configuration.md)."""
    name: str
    command: tuple[str, ...]
    kind: str = "longrun"
    restart: str = "always"
    backoff: Backoff = field(default_factory=Backoff)
    intensity: Intensity = field(default_factory=Intensity)
    enabled: bool = True
    requires: tuple[str, ...] = ()
    wants: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()
    # started when it fails for good: it enters failed or maintenance (OnFailure=)
    on_failure: tuple[str, ...] = ()
    restart_dependents: bool = True
    ready: str = "none"
    ready_fd: int = 3
    ready_command: tuple[str, ...] = ()
    ready_port: int = 0
    ready_timeout: float = 30.0
    watchdog_sec: float = 0.0
    health: HealthCheck | None = None
    critical: bool = False
    stop_signal: int = signal.SIGTERM
    # run to ask it to stop (systemd's ExecStop=); stop_signal follows once it has exited
    stop_command: tuple[str, ...] = ()
    stop_timeout: float = 5.0
    # `hachain reload NAME` (hachain/restarter/reloads.py): a command (systemd's
    # ExecReload=) or a signal to the main process; reload_notify: over at READY=1 after
    # RELOADING=1 (systemd's Type=notify-reload)
    reload_command: tuple[str, ...] = ()
    reload_signal: int | None = None
    reload_notify: bool = False
    reload_timeout: float = 30.0
    env: tuple[tuple[str, str], ...] = ()
    cwd: str | None = None
    user: str | None = None
    group: str | None = None
    umask: int | None = None
    rlimits: tuple[tuple[str, int, int], ...] = ()
    log_max_bytes: int = 1024 * 1024
    log_keep: int = 3
    success_exit: tuple[int, ...] = (0,)
    pids_max: int = 0  # cgroup pids.max for the service (0: no limit)
    memory_max: int = 0  # cgroup memory.max in bytes (0: no limit)
    oom_score_adj: int = 0  # /proc/PID/oom_score_adj of its processes (systemd's OOMScoreAdjust=)
    capabilities: tuple[str, ...] = ()  # ambient ones kept for `user` ("CAP_NET_BIND_SERVICE")
    no_new_privileges: bool = False  # PR_SET_NO_NEW_PRIVS (systemd's NoNewPrivileges=)
    # the capabilities it and all it runs may ever have (systemd's CapabilityBoundingSet=);
    # None: the host's bounding set, as the restarter has it
    capability_bounding_set: tuple[str, ...] | None = None
    private_tmp: bool = False  # its own mount namespace, fresh tmpfs /tmp and /var/tmp
    # (hachain/sandbox.py) systemd's ProtectSystem= ("", "yes", "full", "strict"),
    # ProtectHome= ("", "yes", "read-only", "tmpfs") and the path lists ("-": may be missing)
    protect_system: str = ""
    protect_home: str = ""
    read_only_paths: tuple[str, ...] = ()
    read_write_paths: tuple[str, ...] = ()
    inaccessible_paths: tuple[str, ...] = ()
    no_exec_paths: tuple[str, ...] = ()  # nothing below them executable (NoExecPaths=)
    exec_paths: tuple[str, ...] = ()  # ... but below these (ExecPaths=)
    # seccomp filters (hachain/seccomp.py), as systemd's SystemCallFilter= and its kin
    system_call_filter: tuple[str, ...] = ()  # names and @groups; "~": denied
    system_call_error_number: str = ""  # "EPERM": what a filtered call gets ("": SIGSYS)
    system_call_architectures: tuple[str, ...] = ()  # ("native",): others are killed
    restrict_address_families: tuple[str, ...] = ()  # socket() families ("~": denied)
    memory_deny_write_execute: bool = False
    lock_personality: bool = False
    restrict_realtime: bool = False
    restrict_suid_sgid: bool = False
    # true: no namespace of any kind; a tuple: the kinds allowed, or the "~kind" ones not
    restrict_namespaces: bool | tuple[str, ...] = False
    # systemd's ProtectKernelTunables=, ProtectControlGroups=, ProtectKernelModules=,
    # ProtectKernelLogs=, ProtectClock=, ProtectHostname=: read-only or hidden paths
    # (hachain/sandbox.py), refused calls (hachain/seccomp.py), capabilities dropped
    protect_kernel_tunables: bool = False
    protect_control_groups: bool = False
    protect_kernel_modules: bool = False
    protect_kernel_logs: bool = False
    protect_clock: bool = False
    protect_hostname: bool = False
    private_devices: bool = False  # its own /dev, pseudo devices only (PrivateDevices=)
    # the device nodes it may use, held by a cgroup device program (hachain/devices.py):
    # "SPEC [rwm]" items (DeviceAllow=) and the policy (DevicePolicy=)
    device_allow: tuple[str, ...] = ()
    device_policy: str = "auto"
    # the remote addresses it may exchange packets with (hachain/ipfilter.py): prefixes or
    # systemd's words (IPAddressAllow=, IPAddressDeny=)
    ip_address_allow: tuple[str, ...] = ()
    ip_address_deny: tuple[str, ...] = ()
    send_sighup: bool = False  # SIGHUP right after the stop signal (SendSIGHUP=)
    # a terminal as its controlling one and its stdin/stdout/stderr, in a session of its
    # own (TTYPath= with StandardInput=tty), made sane first, hung up first
    tty_path: str | None = None
    tty_reset: bool = False
    tty_vhangup: bool = False
    private_network: bool = False  # its own network namespace, loopback only
    private_mounts: bool = False  # its own mount namespace (PrivateMounts=)
    # its start waits until the fstab file systems these paths are on are mounted
    # (RequiresMountsFor=: hachain/mounts.py)
    requires_mounts_for: tuple[str, ...] = ()
    private_ipc: bool = False  # its own IPC namespace (PrivateIPC=)
    remove_ipc: bool = False  # its user's IPC objects removed once it is down (RemoveIPC=)
    # sockets opened by the restarter and handed over at each start as descriptors 3, ...
    # (systemd's ListenStream= and kin: hachain/listen.py), kept open across restarts
    listen: tuple[str, ...] = ()
    listen_backlog: int = 4096
    socket_mode: int = 0o666  # a unix socket's file (SocketMode=)
    socket_user: str | None = None  # its owner (SocketUser=, SocketGroup=)
    socket_group: str | None = None
    fd_name: str | None = None  # LISTEN_FDNAMES (FileDescriptorName=); None: "<name>.socket"
    socket_options: tuple[str, ...] = ()  # listen.OPTIONS (ReusePort=, KeepAlive=, ...)
    socket_receive_buffer: int = 0  # bytes (ReceiveBuffer=); 0: the kernel's
    socket_send_buffer: int = 0  # bytes (SendBuffer=)
    # descriptors it may hand the restarter to keep for its next start (FDSTORE=1 on the
    # notify socket: systemd's FileDescriptorStoreMax=); kept while it is wanted up, or
    # with fd_store_preserve also while it is stopped (FileDescriptorStorePreserve=yes)
    fd_store_max: int = 0
    fd_store_preserve: bool = False
    ignore_sigpipe: bool = False  # SIGPIPE ignored, as systemd's IgnoreSIGPIPE= default
    # a /proc of its own (systemd's ProtectProc=, ProcSubset=): "" leaves the host's
    protect_proc: str = ""  # "invisible", "noaccess", "ptraceable"
    proc_subset: str = ""  # "pid": only the process directories
    # (name, source): copied for it at each start (hachain/credentials.py), systemd's
    # LoadCredential=; a source with "-" may be missing, a bare name is searched for
    credentials: tuple[tuple[str, str], ...] = ()
    nice: int | None = None  # its nice value (None: 0, the restarter's resets on fork)
    # its scheduling (CPUSchedulingPolicy=, CPUSchedulingPriority=,
    # CPUSchedulingResetOnFork=, IOSchedulingClass=, IOSchedulingPriority=, CPUAffinity=):
    # "" / () left as inherited
    cpu_scheduling_policy: str = ""  # "other", "batch", "idle", "fifo", "rr"
    cpu_scheduling_priority: int = 0  # 1-99 for "fifo" and "rr"
    cpu_scheduling_reset_on_fork: bool = False
    io_scheduling_class: str = ""  # "realtime", "best-effort", "idle"
    io_scheduling_priority: int = 4  # 0 (first) to 7, for "realtime" and "best-effort"
    cpu_affinity: tuple[int, ...] = ()  # the CPUs it may run on
    env_file: tuple[str, ...] = ()  # read at each start; a leading "-": may be missing
    directories: tuple[str, ...] = ()  # made before each start when missing
    directory_mode: int = 0o755  # their mode when made
    # run in turn before `command` (hachain/prestart.py); argv[0] "-..." may fail
    pre_start: tuple[tuple[str, ...], ...] = ()
    # run in turn once it is ready, before it counts as ready (systemd's ExecStartPost=),
    # and after each end of its main process, before any start again (ExecStopPost=);
    # the same form as pre_start
    post_start: tuple[tuple[str, ...], ...] = ()
    post_stop: tuple[tuple[str, ...], ...] = ()
    # asked before each start (hachain/conditions.py): not met, it is skipped / fails
    condition: StartChecks | None = None
    assertion: StartChecks | None = None  # the `assert` table
    pid_file: str | None = None  # kind = "forking": where the daemon writes its main pid
    kill_mode: str = "cgroup"  # who gets stop_signal and SIGKILL: KILL_MODES
    singleton: bool = False  # [cluster]: runs on at most one node (docs/cluster.md)

    # Pickled (the parsed running snapshot, hachain/snapshot.py): only the fields that
    # differ from their defaults. A service sets a handful of its 113 keys, and the
    # restarter and `hachain run` load this for every service on the way to the first
    # one: with 1000 services 20 -> 5 ms and 540 -> 50 kB. A copy pickled whole (by
    # earlier code) loads the same.
    def __getstate__(self) -> dict[str, Any]:
        d = _service_defaults()
        return {k: v for k, v in self.__dict__.items()
                if not (k in d and type(v) is type(d[k]) and v == d[k])}

    def __setstate__(self, state: dict[str, Any]) -> None:
        own = self.__dict__
        own.update(_service_defaults())
        own.update(state)

    @property
    def ready_pipe(self) -> bool:
        """Does a start get the readiness pipe (at descriptor `ready_fd`)? With
        `ready = "fd"` the service writes to it; a `ready = "none"` long-running service
        with pre-start commands has its newline written at the `exec` of `command`
        (hachain/prestart.py)."""
        return self.ready == "fd" or (bool(self.pre_start) and self.ready == "none"
                                      and self.kind == "longrun")

    @property
    def deps(self) -> tuple[str, ...]:
        """Everything this service orders itself after (requires ∪ wants ∪ after)."""
        seen: dict[str, None] = {}
        for n in self.requires + self.wants + self.after:
            seen[n] = None
        return tuple(seen)


_SERVICE_DEFAULTS: dict[str, Any] = {}


def _service_defaults() -> dict[str, Any]:
    """Each ServiceConfig field's default (made once; a default_factory's value only when
    it is hashable, that is immutable, as every one is now: it is shared between the
    services unpickled)."""
    if not _SERVICE_DEFAULTS:
        from dataclasses import MISSING, fields
        for f in fields(ServiceConfig):
            if f.default is not MISSING:
                _SERVICE_DEFAULTS[f.name] = f.default
            elif f.default_factory is not MISSING:
                v = f.default_factory()
                try:
                    hash(v)
                except TypeError:
                    continue
                _SERVICE_DEFAULTS[f.name] = v
    return _SERVICE_DEFAULTS


@dataclass(frozen=True)
class WatchdogConfig:
    """The `[watchdog]` table: the device, its timeout and how often it is petted."""
    device: str = "auto"  # "auto" | "sim" | "none" | a path such as /dev/watchdog0
    timeout: int = 10
    pretimeout: int = 0
    pet_interval: float = 2.0
    nowayout: bool = False
    heartbeat_timeout: float = 5.0  # a live layer whose heartbeat is older is hung
    restart_grace: float = 10.0  # a dead layer may be without heartbeat this long
    max_loop_lag: float = 2.0  # the restarter's event-loop lag bound
    gate_critical: bool = True  # a critical service in maintenance/failed fails the gate
    # automatic restarts per second (averaged over 10 s) above which the restarter is in
    # an unbounded storm; per-service intensity limits keep ordinary crash loops far below
    max_restart_rate: float = 1000.0
    # init gives up on a tickler that died this many times in a row, each within
    # tickler_min_run s of its start, petting the device by its close (0: never)
    tickler_deaths: int = 20
    tickler_min_run: float = 10.0


@dataclass(frozen=True)
class BootLoop:
    """`[chain] boot_loop`: `resets` consecutive unclean boots within `window` s is a loop."""

    resets: int = 3
    window: float = 900.0
    action: str = "rescue"  # "rescue" | "disarm" | "ignore"


@dataclass(frozen=True)
class ChainConfig:
    """The `[chain]` table: where the chain keeps its state, and how its layers run."""
    state_dir: str = channels.DEFAULT_STATE_DIR
    persist_dir: str = channels.DEFAULT_PERSIST_DIR
    cgroup_root: str = "auto"  # "auto" | "none" | an absolute cgroup2 directory
    heartbeat_interval: float = 2.0
    restart_delay: float = 1.0
    restarter_nice: int = -5  # the restarter's own; its children start at 0
    oom_score_adj: int = -900  # the chain's own processes (init, restarter, tickler, logger)
    restarter_standby: bool = True  # restarter/standby.py; read when the chain starts
    log_dir: str = ""  # default: <persist_dir>/log
    log_format: str = "human"  # "human" | "json"
    control_group: str = ""  # members of this group may use the control socket too
    boot_loop: BootLoop = field(default_factory=BootLoop)

    @property
    def service_log_dir(self) -> str:
        return self.log_dir or os.path.join(self.persist_dir, "log")


@dataclass(frozen=True)
class ClusterConfig:
    """The `[cluster]` table: the etcd endpoints and this node's lease."""
    endpoints: tuple[str, ...]  # etcd client endpoints, "host:port"
    node: str  # this node's name, unique in the cluster
    lease_ttl: int = 10  # seconds (etcd counts leases in whole seconds)
    prefix: str = "/hachain/"  # every key of this cluster starts with it
    margin: float = 0.5  # drift margin of the timing rule (hachain/cluster/timing.py)


@dataclass(frozen=True)
class CheckConfig:
    """`[check.NAME]`: a test of the machine rather than of one service (the `watchdog`
    daemon's tests: load, memory, temperature, a file that must keep changing, a pid
    file, an interface that must keep receiving, a host that must answer a ping, a
    command). Failing for `retry_timeout`, then after its `repair` commands, it fails the
    health gate (`action = "reboot"`) or is only reported (`"log"`). docs/checks.md."""

    name: str = ""
    kind: str = "command"
    command: tuple[str, ...] = ()  # command: exit 0 passes
    path: str = ""  # file, pidfile: the file; temperature: the sensor (millidegrees C)
    max_age: float = 0.0  # file: seconds since its content last changed
    max_load: float = 0.0  # load
    average: int = 1  # load: over 1, 5 or 15 minutes
    min_available: int = 0  # memory: bytes of MemAvailable
    max_temperature: float = 0.0  # temperature: degrees Celsius
    interface: str = ""  # interface: its received bytes must grow between two tries
    host: str = ""  # ping: an IPv4 or IPv6 address
    interval: float = 10.0
    timeout: float = 5.0
    retry_timeout: float = 60.0  # failing this long is a failure (then repairs)
    repair: tuple[tuple[str, ...], ...] = ()  # commands, one per repair in turn
    repair_timeout: float = 60.0
    action: str = "reboot"


@dataclass(frozen=True)
class Config:
    """A whole configuration file, validated: what every layer runs from."""
    path: str
    chain: ChainConfig
    watchdog: WatchdogConfig
    services: dict[str, ServiceConfig]
    cluster: ClusterConfig | None = None  # None: a single machine, no etcd at all
    checks: dict[str, CheckConfig] = field(default_factory=dict)  # [check.NAME]
