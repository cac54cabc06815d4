"""Real Debian daemons under a real restarter: what tests/test_daemons.py and
bench/daemons_bench.py share.

Each daemon runs the way its Debian package runs it under systemd (the same binary,
user, readiness protocol and stop signal), but on a free port on 127.0.0.1 and with all
its files in a temporary directory. The directory is world-traversable (0755): the
daemons run as their own users (postgres, redis) and must reach the restarter's notify
socket in it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from hachain import importer
from tests.conftest import ROOT as ROOT_DIR
from tests.conftest import RestarterRun, wait_until

__all__ = ["ROOT_DIR", "RestarterRun"]

PG_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1:] or ["/usr/lib/postgresql/15/bin"]
POSTGRES = os.path.join(PG_BIN[0], "postgres")
INITDB = os.path.join(PG_BIN[0], "initdb")
REDIS = "/usr/bin/redis-server"
NGINX = "/usr/sbin/nginx"
NGINX_UNIT = "/lib/systemd/system/nginx.service"
SSHD = "/usr/sbin/sshd"
NEEDED = {"postgresql": POSTGRES, "redis-server": REDIS, "nginx-light": NGINX,
          "nginx-light (its unit)": NGINX_UNIT, "openssh-server": SSHD}


def missing() -> str:
    """Why the daemons cannot run here, or ''."""
    gone = [pkg for pkg, path in NEEDED.items() if not os.path.exists(path)]
    if gone:
        return f"not installed: {', '.join(gone)}; run `bash scripts/setup.sh --test`"
    if os.geteuid() != 0:
        return "the daemon tests run their daemons as their own users: needs root"
    return ""


def free_port() -> int:
    """A port on 127.0.0.1 nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(port: int, timeout: float = 2.0) -> str:
    """The status line of GET / on 127.0.0.1:port ('' when it does not answer)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
            return s.recv(4096).decode(errors="replace").split("\r\n", 1)[0]
    except OSError:
        return ""


def http_body(port: int, timeout: float = 2.0) -> str:
    """The body of GET / on 127.0.0.1:port ('' when it does not answer)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
            got = b""
            while chunk := s.recv(4096):
                got += chunk
            return got.decode(errors="replace").partition("\r\n\r\n")[2]
    except OSError:
        return ""


@contextlib.contextmanager
def daemon_dir() -> Iterator[str]:
    """A temporary directory the daemons' users can traverse; removed afterwards."""
    d = tempfile.mkdtemp(prefix="hachain-daemons-", dir="/tmp")
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def restarter(tmp: str, body: str) -> Iterator[RestarterRun]:
    """A started restarter on `body`; on the way out its services are stopped and its
    cgroup tree removed (so nothing it started is left running)."""
    r = RestarterRun(tmp, body)
    try:
        r.start()
        yield r
    finally:
        r.cleanup()


def _own(path: str, user: str) -> None:
    import pwd
    pw = pwd.getpwnam(user)
    os.makedirs(path, exist_ok=True)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    os.chmod(path, 0o700)


@dataclass
class Daemon:
    name: str
    body: str  # the [service.NAME] table
    port: int
    check: Callable[[], bool]  # does it answer?


def postgres(tmp: str) -> Daemon:
    """PostgreSQL as postgresql@.service runs it: as postgres, notify readiness, SIGINT is
    its "fast shutdown". initdb into tmp/pg (trust auth, no fsync at init)."""
    port = free_port()
    data, sock = os.path.join(tmp, "pg", "data"), os.path.join(tmp, "pg", "sock")
    _own(os.path.dirname(data), "postgres")
    _own(sock, "postgres")
    subprocess.run([INITDB, "-D", data, "-A", "trust", "-U", "postgres", "--no-sync",
                    "--no-instructions", "-E", "UTF8", "--locale", "C"], user="postgres",
                   cwd="/", check=True, capture_output=True, timeout=60)
    body = f"""
[service.pg]
command = ["{POSTGRES}", "-D", "{data}", "-p", "{port}", "-k", "{sock}",
           "-c", "listen_addresses=127.0.0.1", "-c", "shared_buffers=16MB"]
user = "postgres"
group = "postgres"
ready = "notify"
ready_timeout = 30
stop_signal = "SIGINT"
stop_timeout = 30
backoff = {{ initial = 0.1, factor = 1 }}
intensity = {{ max_restarts = 20, window = 60 }}
"""
    return Daemon("pg", body, port, lambda: psql(port, "select 1") == "1")


def psql(port: int, sql: str) -> str | None:
    """One statement through psql over TCP; its unaligned output, or None on failure."""
    r = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d",
                        "postgres", "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql],
                       capture_output=True, text=True, timeout=20, check=False)
    return r.stdout.strip() if r.returncode == 0 else None


def redis(tmp: str) -> Daemon:
    """redis-server as redis-server.service runs it: as redis, --supervised systemd
    (notify), no persistence to disk here."""
    port = free_port()
    d = os.path.join(tmp, "redis")
    _own(d, "redis")
    body = f"""
[service.redis]
command = ["{REDIS}", "--port", "{port}", "--bind", "127.0.0.1", "--dir", "{d}",
           "--save", "", "--appendonly", "no", "--supervised", "systemd",
           "--daemonize", "no", "--logfile", ""]
user = "redis"
group = "redis"
ready = "notify"
ready_timeout = 30
stop_timeout = "infinity"
backoff = {{ initial = 0.1, factor = 1 }}
intensity = {{ max_restarts = 20, window = 60 }}
"""
    return Daemon("redis", body, port, lambda: redis_cli(port, "ping") == "PONG")


REDIS_UNIT = "/lib/systemd/system/redis-server.service"


def redis_imported(tmp: str) -> tuple[Daemon, list[str]]:
    """redis-server under Debian's own hardened unit through `hachain import`: its seccomp
    keys (SystemCallFilter= and its kin), ProtectSystem=strict, ProtectHome=, the empty
    CapabilityBoundingSet=, NoNewPrivileges= as imported (not its PrivateTmp=, below); only
    the command is this test's (port, files in tmp, which is made writable as its
    ReadWritePaths= makes /var/lib/redis), and the unit's RuntimeDirectory= left out (it
    would make /run/redis on this host). Also returns the import's warnings."""
    port = free_port()
    d = os.path.join(tmp, "redis")
    _own(d, "redis")
    _, conv = importer.import_files([REDIS_UNIT])
    svc = dict(conv.services["redis-server"])
    svc["command"] = [REDIS, "--port", str(port), "--bind", "127.0.0.1", "--dir", d,
                      "--save", "", "--appendonly", "no", "--supervised", "systemd",
                      "--daemonize", "no", "--logfile", ""]
    svc.pop("directories", None)
    svc.pop("directory_mode", None)
    # the unit's LimitNOFILE=65535 is above the hard limit a root without
    # CAP_SYS_RESOURCE (this sandbox's) may raise to: `hachain check` says so
    svc.pop("rlimits", None)
    # its files are under /tmp here, which PrivateTmp= would hide (tests/test_sandbox.py
    # and tests/test_private_tmp_nice.py try private_tmp on its own)
    svc.pop("private_tmp", None)
    svc["read_write_paths"] = svc.get("read_write_paths", []) + [d]
    svc["stop_timeout"] = "infinity"
    svc["backoff"] = {"initial": 0.1, "factor": 1}
    svc["intensity"] = {"max_restarts": 20, "window": 60}
    body = importer.to_toml(importer.Conversion(services={"redis": svc}), [REDIS_UNIT])
    return Daemon("redis", body, port, lambda: redis_cli(port, "ping") == "PONG"), \
        conv.warnings


def redis_cli(port: int, *args: str) -> str | None:
    r = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args],
                       capture_output=True, text=True, timeout=10, check=False)
    return r.stdout.strip() if r.returncode == 0 else None


def nginx_conf(tmp: str, port: int, pid_file: str) -> str:
    """An nginx.conf that listens on 127.0.0.1:port and keeps its files in tmp."""
    d = os.path.join(tmp, "nginx")
    os.makedirs(d, exist_ok=True)
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""
worker_processes 2;
pid {pid_file};
error_log stderr notice;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 "hachain\\n"; }}
    }}
}}
""")
    return conf


def nginx_foreground(tmp: str, sandboxed: bool = False) -> Daemon:
    """nginx in the foreground (daemon off), ready when its port accepts. `sandboxed`:
    the whole file system read-only but tmp, the homes hidden (protect_system =
    "strict", protect_home, read_write_paths), as hardened units run it."""
    port = free_port()
    conf = nginx_conf(tmp, port, os.path.join(tmp, "nginx", "fg.pid"))
    extra = f'protect_system = "strict"\nprotect_home = true\nread_write_paths = ["{tmp}"]' \
        if sandboxed else ""
    body = f"""
[service.nginx]
{extra}
command = ["{NGINX}", "-c", "{conf}", "-e", "stderr", "-g", "daemon off;"]
ready = "tcp"
ready_port = {port}
ready_timeout = 30
stop_signal = "SIGQUIT"
backoff = {{ initial = 0.1, factor = 1 }}
intensity = {{ max_restarts = 20, window = 60 }}
"""
    return Daemon("nginx", body, port, lambda: http_get(port).endswith("200 OK"))


def nginx_forking(tmp: str) -> tuple[Daemon, list[str]]:
    """nginx from Debian's own nginx.service through `hachain import` (Type=forking,
    PIDFile=, its ExecStartPre= config test as pre_start): the imported service with only
    the configuration file and its pid file pointed into tmp, and restart = "always" (the unit says Restart=no) with the same
    fixed 0.1 s restart delay as the others (systemd's RestartSec default). Also returns
    the import's warnings."""
    port = free_port()
    _, conv = importer.import_files([NGINX_UNIT])
    svc = dict(conv.services["nginx"])
    pid_file = os.path.join(tmp, "nginx", "forking.pid")
    conf = nginx_conf(tmp, port, pid_file)
    svc["command"] = svc["command"] + ["-c", conf, "-e", "stderr"]
    # the unit's ExecStartPre=, its config test (`nginx -t`), on the same file
    svc["pre_start"] = [argv + ["-c", conf, "-e", "stderr"] for argv in svc["pre_start"]]
    svc["pid_file"] = pid_file
    # the unit's ExecStop= (a graceful QUIT by start-stop-daemon), on the same pid file
    svc["stop_command"] = [pid_file if a == "/run/nginx.pid" else a
                           for a in svc["stop_command"]]
    # the unit's ExecReload= (`nginx -s reload`), on the same file
    svc["reload_command"] = svc["reload_command"] + ["-c", conf, "-e", "stderr"]
    svc["restart"] = "always"
    svc["backoff"] = {"initial": 0.1, "factor": 1}
    svc["intensity"] = {"max_restarts": 20, "window": 60}
    body = importer.to_toml(importer.Conversion(services={"nginx": svc}), [NGINX_UNIT])
    return Daemon("nginx", body, port, lambda: http_get(port).endswith("200 OK")), \
        conv.warnings


def sshd(tmp: str, kill_mode: str = "process") -> tuple[Daemon, str]:
    """sshd as Debian's ssh.service runs it (`sshd -D`, notify readiness, KillMode=process)
    on a free port, with its own host key, a client key root may log in with, and
    everything in tmp/ssh. Returns the daemon and the client's key file."""
    d = os.path.join(tmp, "ssh")
    os.makedirs(d, mode=0o700)
    host, client = os.path.join(d, "host_ed25519"), os.path.join(d, "client_ed25519")
    for key in (host, client):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key],
                       check=True, capture_output=True, timeout=30)
    shutil.copy(client + ".pub", os.path.join(d, "authorized_keys"))
    port = free_port()
    conf = os.path.join(d, "sshd_config")
    with open(conf, "w") as f:
        f.write(f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\n"
                f"AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\n"
                "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
                f"StrictModes no\nPidFile {d}/sshd.pid\nLogLevel ERROR\n")
    body = f"""
[service.sshd]
command = ["{SSHD}", "-D", "-e", "-f", "{conf}"]
ready = "notify"
ready_timeout = 30
kill_mode = "{kill_mode}"
directories = ["/run/sshd"]  # its privilege-separation dir (ssh.service: RuntimeDirectory=)
backoff = {{ initial = 0.1, factor = 1 }}
"""
    return Daemon("sshd", body, port, lambda: _ssh_banner(port)), client


def _ssh_banner(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            return s.recv(64).startswith(b"SSH-2.0-")
    except OSError:
        return False


def ssh_session(port: int, key: str, command: str) -> subprocess.Popen[bytes]:
    """An open ssh session to root@127.0.0.1:port running `command` (the caller ends it)."""
    return subprocess.Popen(
        ["ssh", "-i", key, "-p", str(port), "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
         "root@127.0.0.1", command],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_ready(r: RestarterRun, d: Daemon, old_pid: int | None = None,
               timeout: float = 30.0) -> dict:
    """Wait until `d` is ready (with a pid other than old_pid) and answers."""
    st = wait_until(lambda: (s := r.status().get(d.name, {})).get("state") == "ready"
                    and s.get("pid") not in (None, old_pid) and s, timeout,
                    f"{d.name} ready" + (f" with a pid other than {old_pid}" if old_pid else ""))
    wait_until(d.check, timeout, f"{d.name} answering on 127.0.0.1:{d.port}")
    return st


def kill_and_time(r: RestarterRun, d: Daemon) -> tuple[float, int]:
    """SIGKILL the main process; seconds until the service is ready again, new pid."""
    pid = r.svc(d.name)["pid"]
    t0 = time.monotonic()
    os.kill(pid, 9)
    st = wait_until(lambda: (s := r.status().get(d.name, {})).get("state") == "ready"
                    and s.get("pid") not in (None, pid) and s, 30,
                    f"{d.name} ready again after SIGKILL", interval=0.005)
    return time.monotonic() - t0, st["pid"]
