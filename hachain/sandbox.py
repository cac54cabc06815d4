"""The file system a service sees: its mount namespace, as a list of mount steps.

Owns: turning a service's `private_tmp`, `protect_system`, `protect_home`,
`read_only_paths`, `read_write_paths` and `inaccessible_paths` (systemd's
`PrivateTmp=`, `ProtectSystem=`, `ProtectHome=`, `ReadOnlyPaths=`, `ReadWritePaths=`,
`InaccessiblePaths=`), and the file system side of `protect_kernel_tunables`,
`protect_control_groups` and `protect_kernel_modules`, into the steps the new process
takes in a mount namespace of its own, before its exec: which path, what is done to it,
whether it may be missing, and which setting asked for it (for the error of a failed
start). Pure: no I/O. The steps are carried out by the compiled spawn (`_clone3.c`) or
by the fallback's child (`spawn._mount_steps`), each the same way.

The rule where settings overlap is systemd's: the more specific path wins. Steps are
ordered by the depth of their path, so a path under a read-only one that is listed in
`read_write_paths` is writable, and one under a writable one listed in
`read_only_paths` is not. Under `protect_system = "strict"` the API file systems (/dev,
/proc, /sys) stay as they were, with what is mounted below them (a copy of each is taken
before the other steps and put back after them: none of them becomes more writable than
it was), and the service's own `directories` (its `RuntimeDirectory=` and kin) are
writable, as in systemd. A fresh /tmp of `private_tmp` is made after
the rest, so it is writable whatever else is asked.
"""

from __future__ import annotations

from typing import NamedTuple

from hachain.configtypes import ServiceConfig

# what a step does to its path (the numbers are _clone3.c's)
TMPFS = 1  # a fresh, empty, writable tmpfs (mode 1777): private_tmp
READ_ONLY = 2  # bind the path onto itself, read-only, with everything mounted below it
READ_WRITE = 3  # bind the path onto itself, writable again, below it too
HIDE = 4  # an empty, read-only tmpfs of mode 000: nothing of it can be seen
EMPTY = 5  # an empty, read-only tmpfs of mode 0755: protect_home = "tmpfs"
KEEP = 6  # as it was before the other steps, with what is mounted below (cloned, put back)
DEVICES = 7  # a private /dev: a tmpfs with the host's pseudo devices bound in (below)
PROC = 8  # a procfs of its own on the path, its options in `data` (protect_proc)
NO_EXEC = 9  # bind the path onto itself, nothing below it executable
EXEC = 10  # bind the path onto itself, executable again below it
LATE = 16  # added to a kind: taken after the KEEP paths are back (the kernel's files in
# /proc and /sys that protect_kernel_tunables and protect_control_groups make read-only)

KINDS = {TMPFS: "a fresh tmpfs", READ_ONLY: "read-only", READ_WRITE: "writable",
         HIDE: "inaccessible", EMPTY: "an empty read-only tmpfs", KEEP: "kept as it was",
         DEVICES: "a private /dev", PROC: "a procfs of its own", NO_EXEC: "not executable",
         EXEC: "executable"}
# private_devices: the nodes and directories of the host's /dev bound into the private
# one (a missing one is left out), its own devpts instance, and the usual links
DEVICE_NODES = ("null", "zero", "full", "random", "urandom", "tty")
DEVICE_DIRS = ("shm", "mqueue", "hugepages")

SYSTEM = {"yes": ("/usr", "/boot", "/efi"), "full": ("/usr", "/boot", "/efi", "/etc"),
          "strict": ("/",)}
API = ("/dev", "/proc", "/sys")  # as they were under "strict"
HOMES = ("/home", "/root", "/run/user")
# protect_kernel_tunables: what of /proc and /sys tunes the kernel (systemd's list)
TUNABLES = ("/proc/acpi", "/proc/apm", "/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq",
            "/proc/latency_stats", "/proc/mtrr", "/proc/scsi", "/proc/sys",
            "/proc/sysrq-trigger", "/proc/timer_stats", "/sys")
MODULES = ("/lib/modules", "/usr/lib/modules")  # protect_kernel_modules: hidden
OPTIONAL = "-"  # a path with this prefix may be missing


class Step(NamedTuple):
    kind: int
    path: str
    optional: bool  # a missing path is skipped, not a failed start
    setting: str  # what asked for it: 'protect_system = "strict"', 'read_only_paths'
    data: str = ""  # PROC: the mount's options


def _depth(path: str) -> int:
    return 0 if path == "/" else path.rstrip("/").count("/")


def _listed(paths: tuple[str, ...], kind: int, setting: str) -> list[Step]:
    return [Step(kind, p.removeprefix(OPTIONAL).rstrip("/") or "/", p.startswith(OPTIONAL),
                 setting) for p in paths]


def needs_namespace(c: ServiceConfig) -> bool:
    """Does a start of `c` take a mount namespace of its own? (Cheap: asked per spawn.)"""
    return bool(c.private_tmp or c.protect_system or c.protect_home or c.read_only_paths
                or c.read_write_paths or c.inaccessible_paths or c.protect_kernel_tunables
                or c.protect_control_groups or c.protect_kernel_modules
                or c.private_devices or bool(c.protect_proc) or bool(c.proc_subset)
                or bool(c.no_exec_paths) or bool(c.exec_paths) or c.private_mounts)


def plan(c: ServiceConfig) -> tuple[Step, ...]:
    """The steps, in the order they are taken."""
    steps: list[Step] = []
    if c.protect_system:
        what = f'protect_system = "{c.protect_system}"'
        steps += [Step(READ_ONLY, p, p != "/usr" and p != "/", what)
                  for p in SYSTEM[c.protect_system]]
        if c.protect_system == "strict":
            steps += [Step(KEEP, p, True, what) for p in API
                      if not (p == "/dev" and c.private_devices)]
            steps += [Step(READ_WRITE, d.rstrip("/") or "/", True, "directories")
                      for d in c.directories]
    if c.protect_home:
        what = f'protect_home = "{c.protect_home}"'
        kind = {"yes": HIDE, "read-only": READ_ONLY, "tmpfs": EMPTY}[c.protect_home]
        steps += [Step(kind, p, True, what) for p in HOMES]
    steps += _listed(c.read_only_paths, READ_ONLY, "read_only_paths")
    steps += _listed(c.read_write_paths, READ_WRITE, "read_write_paths")
    steps += _listed(c.no_exec_paths, NO_EXEC, "no_exec_paths")
    steps += _listed(c.exec_paths, EXEC, "exec_paths")
    steps += _listed(c.inaccessible_paths, HIDE, "inaccessible_paths")
    if c.protect_kernel_modules:
        steps += [Step(HIDE, p, True, "protect_kernel_modules = true") for p in MODULES]
    if c.private_devices:
        steps.append(Step(DEVICES, "/dev", False, "private_devices = true"))
    # deeper paths last (the more specific wins); for one path, in the order of the
    # lines above (stable sort): inaccessible over writable over read-only
    steps.sort(key=lambda s: _depth(s.path))
    if c.private_tmp:
        steps += [Step(TMPFS, "/tmp", False, "private_tmp = true"),
                  Step(TMPFS, "/var/tmp", True, "private_tmp = true")]
    if c.protect_proc or c.proc_subset:  # (before the read-only steps of /proc below)
        opts = ",".join(([f"hidepid={c.protect_proc}"] if c.protect_proc else []) +
                        ([f"subset={c.proc_subset}"] if c.proc_subset else []))
        steps.append(Step(PROC | LATE, "/proc", False, "protect_proc / proc_subset", opts))
    if c.protect_kernel_tunables:
        steps += [Step(READ_ONLY | LATE, p, True, "protect_kernel_tunables = true")
                  for p in TUNABLES]
    if c.protect_control_groups:
        steps.append(Step(READ_ONLY | LATE, "/sys/fs/cgroup", True,
                          "protect_control_groups = true"))
    return tuple(steps)


def describe(step: Step) -> str:
    """How a failed start names the step: `read_only_paths: /srv/data (read-only)`."""
    return f"{step.setting}: {step.path} ({KINDS[step.kind & ~LATE]})"
