"""system_call_filter and its kin (systemd's SystemCallFilter=, SystemCallErrorNumber=,
SystemCallArchitectures=, RestrictAddressFamilies=, MemoryDenyWriteExecute=,
LockPersonality=, RestrictRealtime=, RestrictSUIDSGID=, RestrictNamespaces=): seccomp
programs built by libseccomp (hachain/seccomp.py) and installed by the spawn's child
last before its exec.

The set a filter names on its own; then real services on every spawn path (the
compiled clone3 child with and without a cgroup, and the fallback through subprocess),
each trying for real what its filter refuses and, beside it, what it allows, with
/proc/PID/status read back (Seccomp, Seccomp_filters, NoNewPrivs); the restarter's
answer to a service its filter kills and to a filter that cannot be built; the
configuration's checks; and what `hachain import` carries over.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hachain import config, importer, seccomp
from hachain.config import ServiceConfig
from hachain.restarter import spawn
from hachain.syscall_groups import GROUPS
from tests.conftest import PY, SPAWN_PATHS, RestarterRun, spawn_path, wait_until

RUN_BOUND = 30.0  # a Python start; no chain timer involved
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the checks compare with what root "
                                "may do unfiltered (real-time, namespaces, set-user-ID)")


# --- the set a filter names ---------------------------------------------------------------

def test_the_first_items_sign_decides_and_later_ones_add_or_take() -> None:
    allow, names = seccomp.resolve(["@system-service", "~@privileged", "chroot"])
    assert allow and "read" in names and "execve" in names  # @default is always in
    assert "setuid" not in names  # @privileged took @setuid's calls out
    assert "chroot" in names  # ... and an item after it put this one back
    allow, names = seccomp.resolve(["~@mount", "mount"])
    assert not allow and "umount2" in names and "mount" not in names


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.sampled_from(
    ["@clock", "@mount", "@swap", "@reboot", "read", "mount", "swapon", "clock_settime"])),
    min_size=1, max_size=6))
def test_resolve_is_the_plain_rule(items: list[tuple[bool, str]]) -> None:
    """Each call's fate is the sign of the last item that names it (the first item's sign
    for the whole set), as systemd's parser leaves it."""
    text = [("~" if neg else "") + name for neg, name in items]
    allow, names = seccomp.resolve(text)
    assert allow == (not items[0][0])

    def members(name: str) -> set[str]:
        if not name.startswith("@"):
            return {name}
        return set().union(*(members(x) for x in GROUPS[name]))
    for call in set().union(*(members(n) for _, n in items)) - members("@default"):
        last = [neg for neg, n in items if call in members(n)][-1]
        assert (call in names) == (last == items[0][0])


def test_every_group_a_group_names_exists() -> None:
    for name, items in GROUPS.items():
        for it in items:
            assert not it.startswith("@") or it in GROUPS, (name, it)


# --- real services ----------------------------------------------------------------------------

PROBES = r'''
import ctypes, errno, mmap, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
def say(what, fn):
    try:
        fn()
        print(what, "yes", flush=True)
    except OSError as e:
        print(what, "no", errno.errorcode.get(e.errno, e.errno), flush=True)
def personality(p):
    if libc.personality(ctypes.c_ulong(p)) == -1:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
def unshare_net():
    if libc.unshare(0x40000000) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
d = sys.argv[1]
say("mkdir", lambda: os.mkdir(os.path.join(d, "made")))
say("inet", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close())
say("unix", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).close())
say("wx", lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE |
                            mmap.PROT_EXEC).close())
say("persona", lambda: personality(0x0008))
say("fifo", lambda: os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1)))
open(os.path.join(d, "f"), "w").close()
say("suid", lambda: os.chmod(os.path.join(d, "f"), 0o4755))
say("chmod", lambda: os.chmod(os.path.join(d, "f"), 0o755))
say("netns", unshare_net)
print("done", flush=True)
'''


def probe(name: str, tmp_path: Any, **keys: Any) -> ServiceConfig:
    d = tmp_path / name
    d.mkdir()
    os.chmod(d, 0o777)
    return ServiceConfig(name, ("/bin/sh", "-c", f"{PY} -c '{PROBES}' {d}; exec sleep 600"),
                         **keys)


def results(cfg: ServiceConfig, cgroups: Any, tmp_path: Any, started: list[int]
            ) -> tuple[int, dict[str, str]]:
    logs = tmp_path / "logs"
    sp = spawn.spawn(cfg, str(logs), cgroups, None, yield_cpu=False)
    started.append(sp.pid)
    log = logs / f"{cfg.name}.log"
    text = wait_until(lambda: log.exists() and "done" in log.read_text() and
                      log.read_text(), RUN_BOUND, f"{cfg.name}'s results")
    got = {}
    for ln in text.splitlines():
        what, _, rest = ln.partition(" ")
        if rest:
            got[what] = rest
    return sp.pid, got


def probed(script: str, name: str, cgroups: Any, tmp_path: Any, started: list[int],
           *args: str, **keys: Any) -> dict[str, str]:
    """Run the Python `script` (its words then `args`) as service `name` with `keys`:
    what it printed, by first word."""
    cfg = ServiceConfig(name, ("/bin/sh", "-c", f"{PY} -c '{script}' {' '.join(args)}; "
                               "exec sleep 600"), **keys)
    return results(cfg, cgroups, tmp_path, started)[1]


def status(pid: int) -> dict[str, str]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for ln in f:
            k, _, v = ln.partition(":")
            out[k] = v.strip()
    return out


@needs_root
@pytest.mark.parametrize("path", SPAWN_PATHS)
def test_each_restriction_refuses_its_calls_and_nothing_else(
        cgroups: Any, tmp_path: Any, started: list[int], monkeypatch: Any, path: str) -> None:
    cgroups = spawn_path(path, cgroups, monkeypatch)
    # the twin, unfiltered, shows what this host lets root do
    _, free = results(probe("free", tmp_path), cgroups, tmp_path, started)
    assert free["mkdir"] == free["inet"] == free["unix"] == free["wx"] == "yes", free
    assert free["persona"] == free["suid"] == free["netns"] == free["chmod"] == "yes", free
    assert free["fifo"] == "yes", free
    cfg = probe("held", tmp_path, system_call_filter=("~mkdir", "~mkdirat"),
                system_call_error_number="EACCES",
                restrict_address_families=("AF_UNIX",), memory_deny_write_execute=True,
                lock_personality=True, restrict_realtime=True, restrict_suid_sgid=True,
                restrict_namespaces=True, system_call_architectures=("native",))
    pid, held = results(cfg, cgroups, tmp_path, started)
    assert held == {"mkdir": "no EACCES", "inet": "no EAFNOSUPPORT", "unix": "yes",
                    "wx": "no EPERM", "persona": "no EPERM", "fifo": "no EPERM",
                    "suid": "no EPERM", "chmod": "yes", "netns": "no EPERM"}, held
    assert not (tmp_path / "held" / "made").exists()
    # the shell the service's command runs exec'd sleep: the filters stayed (7 programs)
    assert wait_until(lambda: os.readlink(f"/proc/{pid}/exe").endswith("sleep"), RUN_BOUND,
                      "the exec of sleep")
    st_ = status(pid)
    assert (st_["Seccomp"], st_["Seccomp_filters"], st_["NoNewPrivs"]) == ("2", "7", "0")


@needs_root
@pytest.mark.parametrize("path", SPAWN_PATHS)
def test_a_service_of_its_own_user_gets_no_new_privs_with_its_filter(
        cgroups: Any, tmp_path: Any, started: list[int], monkeypatch: Any, path: str) -> None:
    cgroups = spawn_path(path, cgroups, monkeypatch)
    logs = tmp_path / "logs"
    cfg = ServiceConfig("own", ("/bin/sh", "-c", "echo up; exec sleep 600"), user="nobody",
                        system_call_filter=("@system-service",))
    sp = spawn.spawn(cfg, str(logs), cgroups, None, yield_cpu=False)
    started.append(sp.pid)
    wait_until(lambda: (logs / "own.log").exists() and "up" in (logs / "own.log").read_text(),
               RUN_BOUND, "the service to run")
    st_ = status(sp.pid)
    assert (st_["Seccomp"], st_["Seccomp_filters"], st_["NoNewPrivs"]) == ("2", "1", "1")
    assert st_["Uid"].split()[0] == "65534"


KERNEL_PROBES = r'''
import ctypes, errno, os, platform
libc = ctypes.CDLL(None, use_errno=True)
def err(rc):
    return "ok" if rc >= 0 else errno.errorcode.get(ctypes.get_errno(), "?")
# each call is one the host refuses for a harmless reason (a bad descriptor, clock or
# length), unless a filter refuses it first with EPERM: nothing here changes the host
finit = {"x86_64": 313, "aarch64": 273}[platform.machine()]
print("module", err(libc.syscall(finit, -1, None, 0)))
print("syslog", err(libc.klogctl(10, None, 0)))
ts = (ctypes.c_long * 2)(0, 0)
print("clock", err(libc.clock_settime(999, ts)))
print("hostname", err(libc.sethostname(b"x" * 100, 100)))
print("sysctl", "rw" if os.access("/proc/sys/kernel/hostname", os.W_OK) else "ro")
print("cgroupfs", "rw" if os.access("/sys/fs/cgroup", os.W_OK) else "ro")
print("modules", len(os.listdir("/lib/modules")) if os.path.isdir("/lib/modules") else -1)
with open("/proc/self/status") as f:
    bnd = int([ln for ln in f if ln.startswith("CapBnd")][0].split()[1], 16)
print("caps", "".join("1" if bnd >> c & 1 else "0" for c in (16, 34, 25, 35)))
print("done", flush=True)
'''


@needs_root
@pytest.mark.parametrize("path", SPAWN_PATHS)
def test_the_kernel_protections_refuse_and_hide_what_they_name(
        cgroups: Any, tmp_path: Any, started: list[int], monkeypatch: Any, path: str) -> None:
    cgroups = spawn_path(path, cgroups, monkeypatch)

    def run(name: str, **keys: Any) -> dict[str, str]:
        return probed(KERNEL_PROBES, name, cgroups, tmp_path, started, **keys)
    free = run("free")
    # (a kernel without module support says ENOSYS: still not the filter's EPERM)
    assert free["module"] in ("EBADF", "ENOSYS"), free
    assert (free["syslog"], free["clock"], free["hostname"]) == ("ok", "EINVAL", "EINVAL"), free
    assert (free["sysctl"], free["cgroupfs"], free["caps"]) == ("rw", "rw", "1111"), free
    held = run("held", protect_kernel_tunables=True, protect_control_groups=True,
               protect_kernel_modules=True, protect_kernel_logs=True, protect_clock=True,
               protect_hostname=True, protect_system="strict")
    assert (held["module"], held["syslog"], held["clock"], held["hostname"]) == (
        "EPERM", "EPERM", "EPERM", "EPERM"), held
    # read-only even under "strict", which puts /proc and /sys back as they were
    assert (held["sysctl"], held["cgroupfs"], held["caps"]) == ("ro", "ro", "0000"), held
    assert held["modules"] in ("0", "-1") and (free["modules"] != "0" or
                                               held["modules"] == "0"), (free, held)


DEVICE_PROBES = r'''
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
print("dev", ",".join(sorted(os.listdir("/dev"))))
with open("/dev/null", "w") as f:
    f.write("x")
with open("/dev/urandom", "rb") as f:
    print("urandom", len(f.read(16)))
m, s = os.openpty()
print("pty", os.ttyname(s))
print("ioperm", "ok" if libc.ioperm(0x80, 1, 0) == 0 else
      errno.errorcode.get(ctypes.get_errno(), "?"))
with open("/proc/self/status") as f:
    bnd = int([ln for ln in f if ln.startswith("CapBnd")][0].split()[1], 16)
print("caps", "".join("1" if bnd >> c & 1 else "0" for c in (27, 17)))
print("done", flush=True)
'''


@needs_root
@pytest.mark.parametrize("path", SPAWN_PATHS)
def test_private_devices_leaves_the_pseudo_devices_only(
        cgroups: Any, tmp_path: Any, started: list[int], monkeypatch: Any, path: str) -> None:
    cgroups = spawn_path(path, cgroups, monkeypatch)

    def run(name: str, **keys: Any) -> dict[str, str]:
        return probed(DEVICE_PROBES, name, cgroups, tmp_path, started, **keys)
    free = run("free")
    assert free["caps"] == "11" and free["ioperm"] in ("ok", "ENOSYS"), free
    host = set(os.listdir("/dev"))
    want = {n for n in ("null", "zero", "full", "random", "urandom", "tty", "shm", "mqueue",
                        "hugepages") if n in host} | {"pts", "ptmx", "fd", "stdin", "stdout",
                                                      "stderr"}
    assert host - want, "this host's /dev has nothing but pseudo devices: nothing to hide"
    for name, keys in (("held", {}), ("strict", {"protect_system": "strict"})):
        held = run(name, private_devices=True, **keys)
        assert set(held["dev"].split(",")) == want, (held, want)
        assert held["urandom"] == "16" and held["pty"].startswith("/dev/pts/"), held
        assert held["caps"] == "00" and held["ioperm"] in ("EPERM", "ENOSYS"), held


NET_PROBES = r'''
import socket, sys
print("links", ",".join(sorted(n for _, n in socket.if_nameindex())))
c = socket.socket()
c.settimeout(5)
print("host", "reached" if c.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else "refused")
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
c = socket.create_connection(s.getsockname(), timeout=5)
print("own", "reached")
print("done", flush=True)
'''


@needs_root
@pytest.mark.parametrize("path", SPAWN_PATHS)
def test_private_network_has_only_its_own_loopback(
        cgroups: Any, tmp_path: Any, started: list[int], monkeypatch: Any, path: str) -> None:
    import socket
    cgroups = spawn_path(path, cgroups, monkeypatch)
    with socket.socket() as listener:  # on the host's loopback, for the twin to reach
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = str(listener.getsockname()[1])

        def run(name: str, **keys: Any) -> dict[str, str]:
            return probed(NET_PROBES, name, cgroups, tmp_path, started, port, **keys)
        free = run("free")
        assert free["host"] == "reached" and "lo" in free["links"].split(","), free
        held = run("held", private_network=True)
    assert {k: held[k] for k in ("links", "host", "own")} == {
        "links": "lo", "host": "refused", "own": "reached"}, held


@pytest.mark.parametrize("path", SPAWN_PATHS)
def test_an_allow_list_without_prctl_is_installed_after_the_others(
        cgroups: Any, tmp_path: Any, started: list[int], monkeypatch: Any, path: str) -> None:
    """Once an allow list without prctl is in, no other program can be installed: it goes
    last, so the service starts with both."""
    cgroups = spawn_path(path, cgroups, monkeypatch)
    logs = tmp_path / "logs"
    cfg = ServiceConfig("strict", ("/bin/sh", "-c", "echo up; exec sleep 600"),
                        system_call_filter=("@system-service", "~prctl"),
                        lock_personality=True)
    sp = spawn.spawn(cfg, str(logs), cgroups, None, yield_cpu=False)
    started.append(sp.pid)
    log = logs / "strict.log"
    wait_until(lambda: log.exists() and "up" in log.read_text(), RUN_BOUND,
               "the service to run")
    wait_until(lambda: os.readlink(f"/proc/{sp.pid}/exe").endswith("sleep"), RUN_BOUND,
               "the exec of sleep")
    assert status(sp.pid)["Seccomp_filters"] == "2"


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc builds the 32-bit call probe "
                    "(scripts/setup.sh installs it)")
def test_native_only_kills_a_32_bit_call(cgroups: Any, tmp_path: Any, started: list[int]
                                         ) -> None:
    src, exe = tmp_path / "i80.c", tmp_path / "i80"
    src.write_text('#include <stdio.h>\nint main(void) { long r; __asm__ volatile("int $0x80"'
                   ' : "=a"(r) : "a"(20L) : "memory"); printf("ia32 %ld\\n", r); return 0; }\n')
    subprocess.run(["gcc", "-o", str(exe), str(src)], check=True, timeout=60)
    plain = subprocess.run([str(exe)], capture_output=True, text=True, timeout=30)
    if plain.returncode != 0:
        pytest.skip("this kernel runs no 32-bit calls (ia32 emulation off): nothing to refuse")
    logs = tmp_path / "logs"
    for name, arches in (("both", ()), ("native", ("native",))):
        cfg = ServiceConfig(name, ("/bin/sh", "-c", f"{exe}; echo rc=$?; exec sleep 600"),
                            system_call_architectures=arches,
                            system_call_filter=("@system-service",))
        sp = spawn.spawn(cfg, str(logs), cgroups, None, yield_cpu=False)
        started.append(sp.pid)
        log = logs / f"{name}.log"
        wait_until(lambda: log.exists() and "rc=" in log.read_text(), RUN_BOUND,  # noqa: B023
                   f"{name}'s probe")
        text = log.read_text()
        if arches:  # SIGSYS: 128 + 31
            assert "rc=159" in text and "ia32" not in text, text
        else:
            assert "ia32 " in text and "rc=0" in text, text


@pytest.mark.slow
def test_the_restarter_names_a_kill_by_sigsys_and_a_filter_it_cannot_build(
        restarter: Any) -> None:
    r: RestarterRun = restarter(
        f'[service.jailed]\ncommand = ["{PY}", "-c", "import os; print(1, flush=True); '
        'os.chroot(\\"/\\")"]\nsystem_call_filter = ["@system-service"]\n'
        'restart = "never"\n'
        '[service.typo]\ncommand = ["/bin/true"]\nsystem_call_filter = ["frobnicate"]\n'
        'restart = "never"\n')
    st_ = wait_until(lambda: (s := r.svc("jailed"))["state"] == "failed" and s, RUN_BOUND,
                     "jailed to fail")
    assert st_["last_exit"]["text"] == "killed by SIGSYS", st_
    st_ = wait_until(lambda: (s := r.svc("typo"))["state"] == "failed" and s, RUN_BOUND,
                     "typo to fail")
    assert "system_call_filter: unknown system call 'frobnicate'" in st_["reason"], st_


# --- the configuration and the import -------------------------------------------------------

def parse(body: str) -> ServiceConfig:
    return config.parse(f'[service.a]\ncommand = ["/bin/true"]\n{body}\n', "c.toml"
                        ).services["a"]


def test_config_reads_each_key() -> None:
    s = parse('system_call_filter = ["@system-service", "~@privileged"]\n'
              'system_call_error_number = "EPERM"\nsystem_call_architectures = "native"\n'
              'restrict_address_families = ["AF_UNIX", "AF_INET"]\n'
              'memory_deny_write_execute = true\nlock_personality = true\n'
              'restrict_realtime = true\nrestrict_suid_sgid = true\n'
              'restrict_namespaces = true')
    assert s.system_call_filter == ("@system-service", "~@privileged")
    assert (s.system_call_error_number, s.system_call_architectures) == ("EPERM", ("native",))
    assert s.restrict_address_families == ("AF_UNIX", "AF_INET")
    assert seccomp.uses_seccomp(s) and not seccomp.uses_seccomp(parse(""))


@pytest.mark.parametrize("body, error", [
    ('system_call_filter = ["@sytem-service"]', "unknown group '@sytem-service' (did you "
     "mean '@system-service'?)"),
    ('system_call_filter = ["read;"]', "'read;' is neither a system call name nor an @group"),
    ('system_call_filter = ["read"]\nsystem_call_error_number = "EPREM"',
     "'EPREM' is not an errno name"),
    ('system_call_error_number = "EPERM"', "has no effect without system_call_filter"),
    ('restrict_address_families = ["AF_UNIX", "~AF_INET"]', "not both"),
    ('restrict_address_families = ["none", "AF_UNIX"]', '"none" stands alone'),
    ('restrict_address_families = ["AF_UNX"]', "'AF_UNX' is not an address family"),
    ('system_call_architectures = ["sparc"]', "unknown architecture 'sparc'"),
    ('private_network = true\nready = "tcp"\nready_port = 80',
     "service.a.ready: a tcp check connects from the host's network"),
    ('private_network = true\nhealth = { kind = "tcp", port = 80 }',
     "service.a.health: a tcp check connects from the host's network"),
])
def test_config_refuses_what_cannot_be_meant(body: str, error: str) -> None:
    with pytest.raises(config.ConfigError) as e:
        parse(body)
    assert error in str(e.value), e.value.errors


def test_import_carries_the_keys_over() -> None:
    unit = ("[Service]\nExecStart=/usr/bin/x\nSystemCallFilter=@system-service\n"
            "SystemCallFilter=~ @privileged @resources\nSystemCallErrorNumber=EPERM\n"
            "SystemCallArchitectures=native\nRestrictAddressFamilies=AF_UNIX AF_NETLINK\n"
            "MemoryDenyWriteExecute=yes\nLockPersonality=yes\nRestrictRealtime=true\n"
            "RestrictSUIDSGID=yes\nRestrictNamespaces=yes\nProtectKernelTunables=yes\n"
            "ProtectControlGroups=yes\nProtectKernelModules=yes\nProtectKernelLogs=yes\n"
            "ProtectClock=yes\nProtectHostname=yes\nPrivateDevices=yes\n"
            "PrivateNetwork=yes\nProtectProc=invisible\nProcSubset=pid\n")
    conv = importer.convert_systemd(unit, "x.service")
    assert conv.warnings == []
    s = config.parse(importer.to_toml(conv, ["x.service"]), "i.toml").services["x"]
    assert s.system_call_filter == ("@system-service", "~@privileged", "~@resources")
    assert (s.system_call_error_number, s.system_call_architectures) == ("EPERM", ("native",))
    assert s.restrict_address_families == ("AF_UNIX", "AF_NETLINK")
    assert s.memory_deny_write_execute and s.lock_personality and s.restrict_realtime
    assert s.restrict_suid_sgid and s.restrict_namespaces
    assert s.protect_kernel_tunables and s.protect_control_groups and s.protect_clock
    assert s.protect_kernel_modules and s.protect_kernel_logs and s.protect_hostname
    assert s.private_devices and s.private_network
    assert (s.protect_proc, s.proc_subset) == ("invisible", "pid")
    conv = importer.convert_systemd("[Service]\nExecStart=/usr/bin/x\n"
                                    "RestrictNamespaces=net mnt\nSystemCallFilter=read:EPERM\n"
                                    "RestrictAddressFamilies=~AF_PACKET\n", "x.service")
    assert not any("RestrictNamespaces" in w for w in conv.warnings)  # the list form too
    assert any("SystemCallFilter: " in w and "':EPERM'" in w for w in conv.warnings)
    s = config.parse(importer.to_toml(conv, ["x.service"]), "i.toml").services["x"]
    assert s.restrict_address_families == ("~AF_PACKET",)
    assert s.restrict_namespaces == ("net", "mnt")
    conv = importer.convert_systemd("[Service]\nExecStart=/usr/bin/x\n"
                                    "RestrictNamespaces=~user net\n", "y.service")
    assert conv.services["y"]["restrict_namespaces"] == ["~user", "~net"]


def test_namespace_kinds_as_systemd_lists_them() -> None:
    flags = seccomp.NAMESPACE_KINDS
    assert seccomp.forbidden_namespaces(parse("restrict_namespaces = true")) == \
        tuple(flags.values())
    assert seccomp.forbidden_namespaces(parse("")) == ()
    assert set(seccomp.forbidden_namespaces(parse('restrict_namespaces = ["net", "mnt"]'))) \
        == {f for k, f in flags.items() if k not in ("net", "mnt")}
    assert seccomp.forbidden_namespaces(parse('restrict_namespaces = ["~user"]')) == \
        (flags["user"],)
    for body, what in (('["netw"]', "'netw' is not a namespace kind"),
                       ('["net", "~user"]', 'either the kinds allowed or the "~" kinds'),
                       ("[]", "a non-empty list of namespace kinds")):
        with pytest.raises(config.ConfigError, match=what):
            parse(f"restrict_namespaces = {body}")


@needs_root
@pytest.mark.parametrize("kinds, netns", [(("~net",), "no EPERM"), (("net",), "yes"),
                                          (("~user",), "yes"), (("user",), "no EPERM")])
def test_a_list_refuses_only_its_kinds(cgroups: Any, tmp_path: Any, started: list[int],
                                       kinds: tuple[str, ...], netns: str) -> None:
    """The probe's netns check (unshare of a network namespace) against each list form."""
    _, held = results(probe(f"ns{len(kinds)}{kinds[:1]}".replace("~", "not-").replace(
        "'", "").replace("(", "").replace(")", "").replace(",", ""), tmp_path,
        restrict_namespaces=kinds), cgroups, tmp_path, started)
    assert held["netns"] == netns, held


def test_the_cli_runs_under_the_filters_it_builds(tmp_path: Any) -> None:
    """`hachain check` builds every service's programs: a call libseccomp does not know
    is named before any start."""
    p = tmp_path / "c.toml"
    p.write_text('[watchdog]\ndevice = "none"\n[service.a]\ncommand = ["/bin/true"]\n'
                 'system_call_filter = ["@system-service", "frobnicate"]\n')
    r = subprocess.run([sys.executable, "-m", "hachain.cli", "check", "-c", str(p)],
                       capture_output=True, text=True, timeout=60)
    assert "service a: system_call_filter: unknown system call 'frobnicate'" in r.stderr, \
        r.stderr


def test_each_set_of_protections_gets_its_own_programs() -> None:
    """The programs are built once per set of the settings they come from, the protect_*
    keys included: a service with protect_hostname alone, started first, must not give
    one with protect_kernel_modules its program (seen in CI's order of tests)."""
    first = spawn.seccomp_programs(ServiceConfig("a", ("x",), protect_hostname=True))
    second = spawn.seccomp_programs(ServiceConfig("b", ("x",), protect_hostname=True,
                                                  protect_kernel_modules=True))
    assert first != second
    assert spawn.seccomp_programs(ServiceConfig("c", ("x",), protect_hostname=True)) is first
