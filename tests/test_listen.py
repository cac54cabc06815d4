"""Socket activation (`listen`, systemd's ListenStream= and kin, sd_listen_fds).

Real sockets on the loopback and in the file system, a real service (tests/svc.py
serve), a real restarter: the service gets its sockets as 3, 4, ... with LISTEN_FDS,
LISTEN_PID and LISTEN_FDNAMES on every spawn path; a client that connects while it is
down is answered by the next process instead of being refused; a restarter killed and
started again takes the sockets back from the running service instead of binding them
twice; a stop closes them; an address in use fails the start naming it, and the start
is retried. And the configuration's side.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from typing import Any

import pytest

from hachain import config, importer, listen
from hachain.config import ServiceConfig
from hachain.restarter import spawn
from tests.conftest import SPAWN_PATHS, spawn_path, wait_until

RUN_BOUND = 30.0  # a restarter answering and a Python service starting; no chain timer
SVC = os.path.join(os.path.dirname(__file__), "svc.py")


def free_port() -> int:
    """A loopback TCP and UDP port nothing holds right now."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            try:
                u.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


def ask_tcp(port: int, timeout: float = RUN_BOUND) -> int:
    """Connect and read the answering process's pid (refused: ConnectionRefusedError)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as c:
        return int(c.makefile().readline())


def ask_unix(path: str, timeout: float = RUN_BOUND) -> int:
    with socket.socket(socket.AF_UNIX) as c:
        c.settimeout(timeout)
        c.connect(path)
        return int(c.makefile().readline())


def lines(out: Any) -> list[list[str]]:
    return [ln.split() for ln in out.read_text().splitlines()] if out.exists() else []


# --- the spawn, on every path ----------------------------------------------------------------

@pytest.mark.parametrize("path", SPAWN_PATHS)
def test_every_spawn_path_hands_the_sockets_over(cgroups: Any, tmp_path: Any,
                                                 started: list[int], monkeypatch: Any,
                                                 path: str, short_dir: str) -> None:
    cgroups = spawn_path(path, cgroups, monkeypatch)
    port = free_port()
    sock_path = os.path.join(short_dir, "web.sock")
    specs = (f"tcp:127.0.0.1:{port}", f"unix:{sock_path}", f"udp:127.0.0.1:{port}")
    socks = listen.open_all(specs)
    out = tmp_path / "out"
    try:
        cfg = ServiceConfig(name="web", command=(sys.executable, SVC, "serve", str(out)),
                            listen=specs, fd_name="http", ready_fd=7, ready="fd")
        sp = spawn.spawn(cfg, str(tmp_path / "logs"), cgroups, None,
                         listen_fds=tuple(s.fileno() for s in socks))
        started.append(sp.pid)
        assert ask_tcp(port) == sp.pid
        assert ask_unix(sock_path) == sp.pid
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.settimeout(RUN_BOUND)
            u.sendto(b"hi", ("127.0.0.1", port))
            assert int(u.recv(100)) == sp.pid
        assert lines(out) == [[str(sp.pid), "LISTEN_FDS=3", "LISTEN_PID=ok",
                               "LISTEN_FDNAMES=http:http:http", "3:AF_INET/SOCK_STREAM",
                               "4:AF_UNIX/SOCK_STREAM", "5:AF_INET/SOCK_DGRAM"]]
        # its descriptors 3-5 are the restarter's sockets themselves, and nothing else
        # of the restarter's reached it (its ready fd 7 aside)
        fds = {int(n): os.readlink(f"/proc/{sp.pid}/fd/{n}")
               for n in os.listdir(f"/proc/{sp.pid}/fd")}
        for i, s in enumerate(socks):
            assert fds[3 + i] == f"socket:[{os.fstat(s.fileno()).st_ino}]"
        assert {n: f for n, f in fds.items() if n not in (0, 1, 2, 3, 4, 5, 7)
                and f != "anon_inode:[eventpoll]"} == {}, fds  # (its own selector's)
        # the restarter's own copies stay close-on-exec and non-blocking
        assert all(not os.get_inheritable(s.fileno()) and not s.getblocking()
                   for s in socks)
    finally:
        listen.close_all(socks)


def test_a_commands_environment_is_left_alone(cgroups: Any, tmp_path: Any,
                                              started: list[int]) -> None:
    """A user's LISTEN_* in env is replaced by the chain's; without sockets none is set."""
    out = tmp_path / "env"
    cfg = ServiceConfig(name="e", command=("/bin/sh", "-c", f"env > {out}; sleep 100"),
                        env=(("LISTEN_FDS", "9"),))
    port = free_port()
    socks = listen.open_all((f"tcp:127.0.0.1:{port}",))
    try:
        sp = spawn.spawn(cfg, str(tmp_path / "logs"), cgroups, None,
                         listen_fds=tuple(s.fileno() for s in socks))
        started.append(sp.pid)
        text = wait_until(
            lambda: out.exists() and "LISTEN_PID" in (t := out.read_text()) and t,
            RUN_BOUND, "its environment")
        env = dict(ln.split("=", 1) for ln in text.splitlines() if "=" in ln)
        assert (env["LISTEN_FDS"], env["LISTEN_PID"], env["LISTEN_FDNAMES"]) == \
            ("1", str(sp.pid), "e.socket")
    finally:
        listen.close_all(socks)


def test_open_names_the_socket_that_fails(tmp_path: Any) -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        with pytest.raises(listen.ListenError, match=rf"listen 'tcp:127.0.0.1:{port}': bind: "
                           r"Address already in use \(errno EADDRINUSE\)") as e:
            listen.open_all((f"unix:{tmp_path}/a.sock", f"tcp:127.0.0.1:{port}"))
        assert e.value.transient
    (tmp_path / "file").write_text("data")
    with pytest.raises(listen.ListenError, match=r"stale socket: exists and is not a socket"):
        listen.open_all((f"unix:{tmp_path}/file",))
    assert (tmp_path / "file").read_text() == "data"  # never removed


def test_a_stale_socket_file_is_replaced_and_the_mode_set(tmp_path: Any) -> None:
    path = str(tmp_path / "sub" / "x.sock")
    first = listen.open_all((f"unix:{path}",), mode=0o600)
    first[0].close()  # what a crashed chain leaves: the file, nobody listening
    again = listen.open_all((f"unix:{path}",), mode=0o660)
    try:
        assert oct(os.stat(path).st_mode & 0o777) == "0o660"
        assert ask_unix_accepting(path, again[0])
    finally:
        listen.close_all(again)


def ask_unix_accepting(path: str, server: socket.socket) -> bool:
    with socket.socket(socket.AF_UNIX) as c:
        c.connect(path)
        server.setblocking(True)
        conn, _ = server.accept()
        conn.close()
        return True


# --- a real restarter ------------------------------------------------------------------------

def conf(out: Any, port: int, sock: str, extra: str = "", limit: int = 0) -> str:
    """A service on a TCP port and a unix socket; with `limit`, it exits 3 after that
    many answers."""
    return f'''
[service.web]
command = ["{sys.executable}", "{SVC}", "serve", "{out}", "{limit}"]
listen = ["tcp:127.0.0.1:{port}", "unix:{sock}"]
ready = "notify"
backoff = {{ initial = 1.0 }}
{extra}'''


@pytest.mark.slow
def test_a_client_of_a_crashed_service_waits_for_the_next_one(restarter: Any,
                                                              tmp_path: Any,
                                                              short_dir: str) -> None:
    """The service answers one connection and exits 3; the next client connects while it
    is down (restart backoff 1 s) and is answered by the replacement, never refused."""
    out, port, sock = tmp_path / "out", free_port(), os.path.join(short_dir, "w.sock")
    r = restarter(conf(out, port, sock, limit=1))
    first = r.wait_state("web", "ready", timeout=RUN_BOUND)["pid"]
    assert ask_tcp(port) == first
    wait_until(lambda: r.svc("web")["pid"] != first, RUN_BOUND, "its exit to be seen")
    st = r.svc("web")
    second = ask_tcp(port)  # connects at once (the backlog); answered once it is back
    assert second != first
    assert st["state"] == "backoff" or st["pid"] == second, st
    third = ask_unix(sock)
    assert third not in (first, second)
    assert [ln[2] for ln in lines(out)] == ["LISTEN_PID=ok"] * 3


@pytest.mark.slow
def test_a_new_restarter_takes_the_sockets_back(restarter: Any, tmp_path: Any,
                                               short_dir: str) -> None:
    out, port, sock = tmp_path / "out", free_port(), os.path.join(short_dir, "w.sock")
    r = restarter(conf(out, port, sock))
    first = r.wait_state("web", "ready", timeout=RUN_BOUND)["pid"]
    rec = wait_until(lambda: json.load(open(os.path.join(r.state_dir, "services",
                                                         "web.json"))).get("sockets"),
                     RUN_BOUND, "the record to name the sockets")
    served = [os.readlink(f"/proc/{first}/fd/{n}") for n in (3, 4)]
    assert served == [f"socket:[{i}]" for i in rec]
    r.kill_restarter()
    # while no restarter runs, the service still answers on them
    assert ask_tcp(port) == first
    r.start()
    assert "listen sockets were not found" not in open(r.log).read()
    assert r.proc is not None
    held = {os.readlink(f"/proc/{r.proc.pid}/fd/{n}") for n in os.listdir(
        f"/proc/{r.proc.pid}/fd")}
    assert set(served) <= held  # the very sockets, not new ones bound beside them
    os.kill(first, 9)
    second = ask_tcp(port)  # the next process is given them again
    assert second != first
    nxt = r.wait_state("web", "ready", timeout=RUN_BOUND)["pid"]
    assert nxt == second
    assert [os.readlink(f"/proc/{second}/fd/{n}") for n in (3, 4)] == served


@pytest.mark.slow
def test_a_stop_closes_them_and_a_start_opens_them(restarter: Any, tmp_path: Any,
                                                  short_dir: str) -> None:
    out, port, sock = tmp_path / "out", free_port(), os.path.join(short_dir, "w.sock")
    r = restarter(conf(out, port, sock))
    r.wait_state("web", "ready", timeout=RUN_BOUND)
    shown = subprocess.run([sys.executable, "-m", "hachain.cli", "status", "-c", r.config,
                            "web"], capture_output=True, text=True, timeout=30).stdout
    assert f"listen:    held open: tcp:127.0.0.1:{port}, unix:{sock}" in shown, shown
    assert r.req("stop", "web")["ok"]
    st = r.wait_state("web", "stopped", timeout=RUN_BOUND)
    assert st["listen"] == []
    with pytest.raises(ConnectionRefusedError):
        ask_tcp(port)
    rec = json.load(open(os.path.join(r.state_dir, "services", "web.json")))
    assert "sockets" not in rec
    assert r.req("start", "web")["ok"]
    pid = r.wait_state("web", "ready", timeout=RUN_BOUND)["pid"]
    assert ask_tcp(port) == pid == ask_unix(sock)


@pytest.mark.slow
def test_an_address_in_use_fails_the_start_naming_it_and_is_retried(restarter: Any,
                                                                   tmp_path: Any,
                                                                   short_dir: str) -> None:
    out, port, sock = tmp_path / "out", free_port(), os.path.join(short_dir, "w.sock")
    taken = socket.socket()
    try:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        r = restarter(conf(out, port, sock))
        line = f"listen 'tcp:127.0.0.1:{port}': bind: Address already in use (errno EADDRINUSE)"
        wait_until(lambda: line in open(r.log).read(), RUN_BOUND, "the failed start's line")
        assert r.svc("web")["pid"] is None
        assert not os.path.exists(sock)  # the one before it in the list was closed again
    finally:
        taken.close()
    pid = r.wait_state("web", "ready", timeout=RUN_BOUND)["pid"]
    assert ask_tcp(port) == pid


@pytest.mark.slow
def test_a_service_in_a_network_of_its_own_serves_on_the_hosts_socket(
        restarter: Any, tmp_path: Any, short_dir: str) -> None:
    """systemd's pattern: PrivateNetwork= with a socket opened outside it."""
    if os.geteuid() != 0:
        pytest.skip("private_network needs root (CAP_SYS_ADMIN)")
    out, port, sock = tmp_path / "out", free_port(), os.path.join(short_dir, "w.sock")
    r = restarter(conf(out, port, sock, "private_network = true"))
    pid = r.wait_state("web", "ready", timeout=RUN_BOUND)["pid"]
    assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
    assert ask_tcp(port) == pid


# --- the configuration -----------------------------------------------------------------------

@pytest.mark.parametrize("spec,why", [
    ("tcp:0", "needs a port from 1 to 65535"),
    ("tcp:localhost:80", "'localhost' is not an IPv4 address"),
    ("tcp:[::1:80", "'[::1' is not an IPv4 address (an IPv6 one is written in [brackets]"),
    ("sctp:80", "must start with tcp:, udp:, unix:, unix-dgram:, unix-seqpacket:"),
    ("unix:run/x.sock", "a unix socket needs an absolute path or @name"),
    ("unix:/" + "x" * 120, "path longer than 107 bytes"),
])
def test_a_bad_address_is_named(spec: str, why: str) -> None:
    with pytest.raises(config.ConfigError, match=r"chain\.toml:3: service\.a\.listen: "
                       + re.escape(why)):
        config.parse(f'[service.a]\ncommand = ["/bin/x"]\nlisten = ["{spec}"]\n')


def test_forms_parse() -> None:
    assert listen.parse("tcp:8080").address == ("::", 8080)
    assert listen.parse("tcp:8080").any_host
    assert listen.parse("udp:[::1]:53")[1:4] == (socket.AF_INET6, socket.SOCK_DGRAM,
                                                  ("::1", 53))
    assert listen.parse("unix:@bus").address == b"\0bus"
    assert listen.parse("unix-seqpacket:/run/s").type == socket.SOCK_SEQPACKET


@pytest.mark.parametrize("extra,key,why", [
    ('ready = "fd"\nready_fd = 4', "ready_fd", "4 is one of the listen sockets' descriptors "
     "(3-4): give it 5 or more"),
    ('socket_user = "root"\nlisten = ["tcp:80"]', "socket_user",
     "applies to a listen unix socket's file, and listen has none"),
    ('listen = ["tcp:80", "tcp:80"]', "listen", "names a socket twice: tcp:80"),
    ('listen = ["tcp:127.0.0.1:80"]\nready = "tcp"\nready_port = 80', "ready_port",
     "a tcp check of port 80, which listen holds open, always connects"),
    ('listen = ["tcp:80"]\nhealth = { kind = "tcp", port = 80 }', "health",
     "a tcp check of port 80, which listen holds open, always connects"),
])
def test_config_rules(extra: str, key: str, why: str) -> None:
    text = '[service.a]\ncommand = ["/bin/x"]\n' + \
        ('listen = ["tcp:80", "unix:/run/a"]\n' if "listen" not in extra else "") + extra
    with pytest.raises(config.ConfigError, match=rf"service\.a\.{key}: "
                       + re.escape(why)):
        config.parse(text)


def test_the_listen_env_names_are_the_ones_sd_listen_fds_reads() -> None:
    assert listen.env(("web.socket", "web.socket")) == (
        ("LISTEN_FDS", "2"), ("LISTEN_FDNAMES", "web.socket:web.socket"))
    assert listen.FIRST_FD == 3


@pytest.mark.parametrize("b,clash", [
    ("tcp:80", True),  # every address: 127.0.0.1 too
    ("tcp:127.0.0.1:80", True),
    ("tcp:127.0.0.2:80", False),
    ("udp:80", False),  # another protocol
    ("unix:/run/a", True),
])
def test_two_services_on_one_address(b: str, clash: bool) -> None:
    text = ('[service.a]\ncommand = ["/bin/x"]\nlisten = ["tcp:127.0.0.1:80", "unix:/run/a"]\n'
            f'[service.b]\ncommand = ["/bin/y"]\nlisten = ["{b}"]\n')
    if not clash:
        config.parse(text)
        return
    with pytest.raises(config.ConfigError, match=rf'chain\.toml:6: service\.b\.listen: "{b}" '
                       r"is taken by service a \("):
        config.parse(text)
    config.parse(text + 'conflicts = ["a"]\n')  # never both running: allowed


def test_check_names_a_socket_owner_this_host_lacks() -> None:
    from hachain import hostcheck
    cfg = config.parse('[service.a]\ncommand = ["/bin/sleep", "1"]\n'
                       'listen = ["unix:/run/a.sock"]\nsocket_user = "nosuchuser9"\n'
                       'socket_group = "root"\n')
    assert 'service a: socket_user = "nosuchuser9": no such user here: every start would ' \
        'fail' in hostcheck.problems(cfg)
    assert not any("socket_group" in p for p in hostcheck.problems(cfg))


# --- a real daemon, imported from its units ------------------------------------------------

DBUS_DAEMON, DBUS_SEND = "/usr/bin/dbus-daemon", "/usr/bin/dbus-send"


def bus_id(sock: str) -> str:
    """org.freedesktop.DBus.GetId over the bus at `sock` (waits up to RUN_BOUND)."""
    out = subprocess.run([DBUS_SEND, f"--bus=unix:path={sock}", "--print-reply",
                          f"--reply-timeout={int(RUN_BOUND * 1000)}",
                          "--dest=org.freedesktop.DBus", "/", "org.freedesktop.DBus.GetId"],
                         capture_output=True, text=True, timeout=RUN_BOUND + 5)
    assert out.returncode == 0, out.stderr
    return out.stdout.split('"')[1]


@pytest.mark.slow
def test_dbus_daemon_from_its_units_keeps_its_clients_through_a_crash(
        restarter: Any, tmp_path: Any, short_dir: str) -> None:
    """A bus as Debian's dbus.service and dbus.socket run the system bus: a .service that
    Requires= its .socket, `--address=systemd:` (the daemon takes its socket from
    LISTEN_FDS), Type=notify. Imported, run, SIGKILLed: a client that calls while it is
    down is answered by the next daemon on the same socket."""
    for prog in (DBUS_DAEMON, DBUS_SEND):
        if not os.path.exists(prog):
            pytest.skip(f"{prog} is not installed; run `bash scripts/setup.sh --test`")
    sock = os.path.join(short_dir, "bus")
    (tmp_path / "bus.socket").write_text(
        f"[Unit]\nDescription=a test bus's socket\n[Socket]\nListenStream={sock}\n"
        "SocketMode=0600\n[Install]\nWantedBy=sockets.target\n")
    (tmp_path / "bus.service").write_text(
        "[Unit]\nDescription=a test bus\nRequires=bus.socket\n[Service]\nType=notify\n"
        f"ExecStart={DBUS_DAEMON} --session --address=systemd: --nofork --nopidfile\n"
        "Restart=always\nRestartSec=1\n")
    text, conv = importer.import_files([str(tmp_path / "bus.service")])
    assert conv.warnings == [] and conv.errors == []
    assert f'listen = ["unix:{sock}"]' in text and 'socket_mode = "600"' in text
    r = restarter(text)
    first = r.wait_state("bus", "ready", timeout=RUN_BOUND)["pid"]
    assert oct(os.stat(sock).st_mode & 0o777) == "0o600"
    before = bus_id(sock)
    os.kill(first, 9)
    after = bus_id(sock)  # sent while it is down: answered by the next daemon
    assert after != before  # (each daemon makes a new bus id)
    st = r.wait_state("bus", "ready", timeout=RUN_BOUND)
    assert st["pid"] != first and st["restarts"] == 1


def test_import_carries_a_socket_unit_over(tmp_path: Any) -> None:
    (tmp_path / "web-http.socket").write_text(
        "[Socket]\nListenStream=8080\nListenStream=[::1]:8443\nListenDatagram=127.0.0.1:53\n"
        "ListenSequentialPacket=/run/web/ctl\nListenFIFO=/run/web/fifo\nAccept=yes\n"
        "SocketUser=www-data\nSocketGroup=www-data\nSocketMode=0660\nBacklog=128\n"
        "ReusePort=yes\n[Install]\nWantedBy=sockets.target\n")
    (tmp_path / "web.service").write_text(
        "[Unit]\nAfter=web-http.socket\n[Service]\nExecStart=/usr/bin/web\n"
        "Sockets=web-http.socket\n")
    text, conv = importer.import_files([str(tmp_path / "web.service")])
    svc = config.parse(text).services["web"]
    assert svc.listen == ("tcp:8080", "tcp:[::1]:8443", "udp:127.0.0.1:53",
                          "unix-seqpacket:/run/web/ctl")
    assert (svc.socket_user, svc.socket_group, svc.socket_mode, svc.listen_backlog,
            svc.fd_name) == ("www-data", "www-data", 0o660, 128, "web-http.socket")
    assert svc.enabled  # its socket is started at boot: so is it
    sock = str(tmp_path / "web-http.socket")
    assert sorted(conv.warnings) == sorted([
        f"{sock}:7: Accept: yes (a service instance per connection, inetd's way) is not "
        "supported: hachain hands the service its listening socket; dropped",
        f"{sock}:6: ListenFIFO: not supported by hachain (it listens on stream, datagram "
        "and sequential-packet sockets); dropped"])
    assert svc.socket_options == ("reuse_port",)
    assert not any("After" in w for w in conv.warnings)  # its own socket: no dependency


def test_import_leaves_a_socket_unit_the_service_does_not_name(tmp_path: Any) -> None:
    """ssh.socket beside ssh.service: systemd uses it only when it is enabled."""
    (tmp_path / "sshd.socket").write_text("[Socket]\nListenStream=22\n")
    (tmp_path / "sshd.service").write_text("[Service]\nExecStart=/usr/sbin/sshd -D\n")
    text, conv = importer.import_files([str(tmp_path / "sshd.service")])
    assert "listen" not in text
    assert any("sshd.socket beside it is not carried over" in w for w in conv.warnings)


def test_import_takes_the_sockets_a_template_instance_and_its_service_name(
        tmp_path: Any) -> None:
    """journald's namespace units: Sockets=j@%i.socket, made from the template j@.socket;
    j-varlink@%i.socket, named in Requires=, whose Service= is this instance. One mode
    for all: the stricter, said."""
    (tmp_path / "j@.socket").write_text("[Socket]\nService=j@%i.service\n"
                                         "ListenStream=/run/j.%i/stdout\n")
    (tmp_path / "j-varlink@.socket").write_text("[Socket]\nService=j@%i.service\n"
                                                "ListenStream=/run/j.%i/varlink\n"
                                                "SocketMode=0600\n")
    (tmp_path / "other.socket").write_text("[Socket]\nListenStream=/run/other\n")
    (tmp_path / "j@.service").write_text(
        "[Unit]\nRequires=j-varlink@%i.socket other.socket\nAfter=j-varlink@%i.socket\n"
        "[Service]\nExecStart=/bin/j %i\nSockets=j@%i.socket\n")
    text, conv = importer.import_files([str(tmp_path / "j@ns.service")])
    svc = config.parse(text).services["j@ns"]
    assert svc.listen == ("unix:/run/j.ns/varlink", "unix:/run/j.ns/stdout")
    assert svc.socket_mode == 0o600
    assert any("(unset: 0666) hachain gives all of a service's unix sockets one mode, and "
               "another of its socket units says 600: 600 it is" in w for w in conv.warnings)
    assert any("other.socket: only services can be dependencies" in w
               for w in conv.warnings)  # not its own: its Service= is not this unit


def test_check_names_an_address_in_use(tmp_path: Any, short_dir: str) -> None:
    from hachain import hostcheck
    port = free_port()
    sock_path = os.path.join(short_dir, "busy.sock")
    cfg = config.parse(f'[service.a]\ncommand = ["/bin/sleep", "1"]\nlisten = '
                       f'["tcp:127.0.0.1:{port}", "unix:{sock_path}", "tcp:192.0.2.1:80"]\n')
    assert [p for p in hostcheck.problems(cfg) if "listen" in p] == [
        "service a: listen 'tcp:192.0.2.1:80': this host has no such address now: every "
        "start would wait for it"]
    with socket.socket() as t, socket.socket(socket.AF_UNIX) as u:
        t.bind(("127.0.0.1", port))
        t.listen()
        u.bind(sock_path)
        u.listen()
        got = [p for p in hostcheck.problems(cfg) if "listen" in p]
    assert got[0].startswith(f"service a: listen 'tcp:127.0.0.1:{port}': the address is in "
                             "use on this host now")
    assert got[1].startswith(f"service a: listen 'unix:{sock_path}': something listens on "
                             "it now")


@pytest.mark.slow
def test_pre_start_runs_before_and_the_command_gets_the_sockets(restarter: Any,
                                                               tmp_path: Any,
                                                               short_dir: str) -> None:
    """The pipe that says when `command` is exec'd after pre_start is put above the
    sockets (it sat on 3, the first of them, and the command found no socket there)."""
    out, port, sock = tmp_path / "out", free_port(), os.path.join(short_dir, "w.sock")
    r = restarter(conf(out, port, sock).replace('ready = "notify"\n', "") +
                  f'pre_start = [["/bin/sh", "-c", "echo pre $LISTEN_FDS >> {out}"]]\n')
    pid = r.wait_state("web", "ready", timeout=RUN_BOUND)["pid"]
    assert ask_tcp(port) == pid == ask_unix(sock)
    got = lines(out)
    assert got[0] == ["pre", "2"]  # (it sees them too, and LISTEN_PID is not its own)
    assert got[1][:3] == [str(pid), "LISTEN_FDS=2", "LISTEN_PID=ok"]


def test_import_of_a_socket_unit_imports_the_service_it_starts(tmp_path: Any) -> None:
    """`hachain import x.socket`: the socket is enabled, so its service gets it, named or
    not (ssh.socket beside ssh.service); its Service= is followed; Accept=yes is refused."""
    (tmp_path / "sshd.socket").write_text("[Socket]\nListenStream=2222\n")
    (tmp_path / "sshd.service").write_text("[Service]\nExecStart=/usr/sbin/sshd -D\n")
    (tmp_path / "front.socket").write_text("[Socket]\nListenStream=8080\nService=web.service\n")
    (tmp_path / "web.service").write_text("[Service]\nExecStart=/bin/web\n")
    (tmp_path / "inetd.socket").write_text("[Socket]\nListenStream=7\nAccept=yes\n")
    (tmp_path / "lone.socket").write_text("[Socket]\nListenStream=9\n")
    text, conv = importer.import_files([str(tmp_path / n) for n in (
        "sshd.socket", "front.socket", "inetd.socket", "lone.socket")])
    c = config.parse(text)
    assert c.services["sshd"].listen == ("tcp:2222",)
    assert (c.services["web"].listen, c.services["web"].fd_name) == (("tcp:8080",),
                                                                     "front.socket")
    assert conv.errors == [
        f"{tmp_path}/inetd.socket: Accept=yes (a service instance per connection, inetd's "
        "way) is not supported: hachain hands one service its listening sockets",
        f"{tmp_path}/lone.socket: the service it starts, lone.service, is not beside it; "
        "import that service with it"]
    assert not any("beside it is not carried over" in w for w in conv.warnings)


def test_socket_options_are_set_where_they_apply(tmp_path: Any) -> None:
    port = free_port()
    specs = (f"tcp:127.0.0.1:{port}", f"unix:{tmp_path}/u.sock", f"tcp:{port + 0}")
    socks = listen.open_all(specs[:2], options=("reuse_port", "keep_alive", "no_delay",
                                                "pass_credentials"),
                            buffers=(1 << 20, 1 << 19))
    try:
        t, u = socks

        def opt(s: socket.socket, level: int, name: int) -> int:
            return s.getsockopt(level, name)
        assert opt(t, socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        assert opt(t, socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert opt(t, socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert opt(u, socket.SOL_SOCKET, socket.SO_PASSCRED) == 1
        assert opt(u, socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0  # (a TCP option)
        # the kernel doubles what it is asked for (its bookkeeping)
        assert opt(t, socket.SOL_SOCKET, socket.SO_RCVBUF) >= 1 << 20
        assert opt(u, socket.SOL_SOCKET, socket.SO_SNDBUF) >= 1 << 19
    finally:
        listen.close_all(socks)
    (v6,) = listen.open_all((f"tcp:{free_port()}",), options=("ipv6_only",))
    try:
        assert v6.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    finally:
        v6.close()


def test_import_carries_socket_options(tmp_path: Any) -> None:
    (tmp_path / "j.socket").write_text(
        "[Socket]\nListenDatagram=/run/j/socket\nPassCredentials=yes\nReceiveBuffer=8M\n"
        "ReusePort=yes\nBindIPv6Only=ipv6-only\nNoDelay=no\n")
    (tmp_path / "j.service").write_text("[Unit]\nRequires=j.socket\n[Service]\n"
                                        "ExecStart=/bin/j\n")
    text, conv = importer.import_files([str(tmp_path / "j.service")])
    svc = config.parse(text).services["j"]
    assert svc.socket_options == ("pass_credentials", "reuse_port", "ipv6_only")
    assert svc.socket_receive_buffer == 8 << 20 and conv.warnings == []


@pytest.mark.slow
def test_a_reload_that_changes_the_sockets_opens_them_afresh(restarter: Any, tmp_path: Any,
                                                            short_dir: str) -> None:
    out, port, sock = tmp_path / "out", free_port(), os.path.join(short_dir, "w.sock")
    r = restarter(conf(out, port, sock))
    first = r.wait_state("web", "ready", timeout=RUN_BOUND)["pid"]
    assert oct(os.stat(sock).st_mode & 0o777) == "0o666"
    with open(r.config, "a") as f:
        f.write('socket_mode = "0600"\n')
    rep = r.req("reload")
    assert rep["ok"] and rep["changed"] == ["web"], rep
    pid = wait_until(lambda: (s := r.svc("web"))["state"] == "ready" and s["pid"] != first
                     and s["pid"], RUN_BOUND, "web restarted")
    assert oct(os.stat(sock).st_mode & 0o777) == "0o600"
    assert ask_unix(sock) == pid == ask_tcp(port)


def test_import_of_units_that_would_share_an_address_keeps_the_first(tmp_path: Any) -> None:
    """A template's socket imported as the template and again through its socket unit
    file maps to one service; two services on one address keep the first's listen."""
    (tmp_path / "t@.socket").write_text("[Socket]\nListenStream=/run/t.%i/s\n"
                                        "Service=t@%i.service\n")
    (tmp_path / "t@.service").write_text("[Service]\nExecStart=/bin/t %i\n"
                                         "Sockets=t@%i.socket\n")
    for n in ("a", "b"):
        (tmp_path / f"{n}.service").write_text(f"[Unit]\nRequires={n}.socket\n[Service]\n"
                                               f"ExecStart=/bin/{n}\n")
        (tmp_path / f"{n}.socket").write_text("[Socket]\nListenStream=8080\n")
    text, conv = importer.import_files([str(tmp_path / n) for n in (
        "t@.service", "t@.socket", "a.service", "b.service")])
    c = config.parse(text)
    assert sorted(c.services) == ["a", "b", "t@"]
    assert c.services["a"].listen == ("tcp:8080",) and c.services["b"].listen == ()
    assert "service b: listen 'tcp:8080' is also service a's: its listen dropped (both " \
        "would bind it)" in conv.warnings


@pytest.mark.slow
def test_an_unknown_socket_owner_fails_the_start_naming_it(restarter: Any, tmp_path: Any,
                                                           short_dir: str) -> None:
    out, port, sock = tmp_path / "out", free_port(), os.path.join(short_dir, "w.sock")
    r = restarter(conf(out, port, sock, 'socket_group = "nosuchgroup9"'))
    line = 'socket_group = "nosuchgroup9": no such group'
    wait_until(lambda: line in open(r.log).read(), RUN_BOUND, "the failed start's line")
    assert r.svc("web")["pid"] is None
