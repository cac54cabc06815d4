"""A tiny test service: `svc.py ACTION [ARG]...` (stdlib only, starts fast).

  sleep            run until killed
  exit N           exit with status N at once
  notify [DELAY [TEXT]]  after DELAY s send READY=1 and STATUS=TEXT (default "serving")
                   on $NOTIFY_SOCKET, then run
  fdready N        write a line to fd N and close it, then run
  stubborn         ignore SIGTERM, fork a child that ignores it too, run
  reloadable FILE GO  send READY=1; at each SIGHUP send RELOADING=1, append "hup N" to
                   FILE, then once the file GO exists ("-": at once; "never": never)
                   send READY=1 and append "reloaded N" (systemd's Type=notify-reload)
  record FILE      append "<pid>" to FILE, then run
  stamp NAME FILE  append "<monotonic ns> start NAME" to FILE, send READY=1, run; on
                   SIGTERM append "<monotonic ns> stop NAME" and exit 0
  daemon           fork the real server, send MAINPID=<its pid> and READY=1, exit after
                   0.3 s (a classic forking daemon that reports its main process)
  signals FILE     fork a child; each of the two appends "<main|child> <pid> <SIGNAME>" to
                   FILE for every SIGHUP, SIGUSR1 and SIGUSR2 it gets (after a line
                   "<main|child> <pid> ready" once its handlers are set), then runs
  serve FILE [N]   socket activation: append "<pid> LISTEN_FDS=<n> LISTEN_PID=<ok|bad>
                   LISTEN_FDNAMES=<names> <fd>:<kind> ..." to FILE, send READY=1 when it has
                   a NOTIFY_SOCKET, then answer on every descriptor it was given: each
                   connection (or datagram) gets "<pid>\n"; exit 3 after N of them
  fdstore FILE KEEP  the file descriptor store: with a descriptor named "state" among
                   LISTEN_FDS, add 1 to the number it holds and append "<pid> got <n>"
                   to FILE; without, make one (a memfd holding 1), store it (FDSTORE=1,
                   FDNAME=state) and append "<pid> new 1"; KEEP "close": close its own
                   copy once stored. Then READY=1, and run
  handover GO OUT  send READY=1; once the file GO exists, fork the real server, send
                   MAINPID=<its pid> and exit (lines "launcher PID", "server PID" in OUT)
"""

import os
import signal
import sys
import time

from hachain.sdnotify import notify_fallback


def forever() -> None:
    while True:
        time.sleep(3600)


def notify(msg: str) -> None:
    if not notify_fallback(msg):
        sys.exit(f"svc.py: cannot send {msg!r} on $NOTIFY_SOCKET")


def fdstore_action(path: str, keep: bool) -> None:
    import array
    import socket
    names = os.environ.get("LISTEN_FDNAMES", "").split(":")
    mine = os.environ.get("LISTEN_PID") == str(os.getpid())
    if mine and "state" in names:
        fd = 3 + names.index("state")
        n = int(os.pread(fd, 32, 0)) + 1
        os.pwrite(fd, str(n).encode().ljust(32), 0)
        line = f"{os.getpid()} got {n}"
    else:
        fd = os.memfd_create("state")
        os.pwrite(fd, b"1".ljust(32), 0)
        addr = os.environ["NOTIFY_SOCKET"]
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            # (socket.send_fds of Python 3.11 drops its address argument)
            s.sendmsg([b"FDSTORE=1\nFDNAME=state"],
                      [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))], 0,
                      "\0" + addr[1:] if addr.startswith("@") else addr)
        if not keep:
            os.close(fd)
        line = f"{os.getpid()} new 1"
    with open(path, "a") as f:
        f.write(line + "\n")
    notify("READY=1")
    forever()


def serve(path: str, limit: int) -> None:
    import selectors
    import socket
    n = int(os.environ.get("LISTEN_FDS", "0"))
    mine = os.environ.get("LISTEN_PID") == str(os.getpid())
    socks = [socket.socket(fileno=3 + i) for i in range(n)]
    kinds = " ".join(f"{s.fileno()}:{s.family.name}/{s.type.name}" for s in socks)
    with open(path, "a") as f:
        f.write(f"{os.getpid()} LISTEN_FDS={n} LISTEN_PID={'ok' if mine else 'bad'} "
                f"LISTEN_FDNAMES={os.environ.get('LISTEN_FDNAMES', '')} {kinds}\n")
    if os.environ.get("NOTIFY_SOCKET"):
        notify("READY=1")
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    answered = 0
    reply = f"{os.getpid()}\n".encode()
    while True:
        for key, _ in sel.select():
            s = key.fileobj
            assert isinstance(s, socket.socket)
            try:
                if s.type == socket.SOCK_DGRAM:
                    _, peer = s.recvfrom(4096)
                    if peer:
                        s.sendto(reply, peer)
                else:
                    conn, _ = s.accept()
                    conn.setblocking(True)
                    conn.sendall(reply)
                    conn.close()
            except BlockingIOError:
                continue
            answered += 1
            if limit and answered >= limit:
                sys.exit(3)


def main() -> None:
    action = sys.argv[1]
    args = sys.argv[2:]
    if action == "sleep":
        forever()
    elif action == "exit":
        sys.exit(int(args[0]))
    elif action == "notify":
        time.sleep(float(args[0]) if args else 0)
        notify("READY=1\nSTATUS=" + (args[1] if len(args) > 1 else "serving"))
        forever()
    elif action == "pinger":  # WATCHDOG=1 every 0.1 s while args[0] exists, no READY=1
        while os.path.exists(args[0]):
            notify("WATCHDOG=1")
            time.sleep(0.1)
        forever()
    elif action == "fdready":
        fd = int(args[0])
        os.write(fd, b"ready\n")
        os.close(fd)
        forever()
    elif action == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if os.fork() == 0:
            os.setsid()  # escape the process group: only the cgroup still holds it
            forever()
        forever()
    elif action == "stamp":
        name, path = args

        def note(what: str) -> None:
            with open(path, "a") as f:
                f.write(f"{time.monotonic_ns()} {what} {name}\n")

        def stop(_sig: int, _frame: object) -> None:
            note("stop")
            sys.exit(0)
        signal.signal(signal.SIGTERM, stop)
        note("start")
        notify("READY=1")
        forever()
    elif action == "daemon":
        pid = os.fork()
        if pid == 0:
            forever()
        notify(f"MAINPID={pid}\nREADY=1")
        time.sleep(0.3)
    elif action == "handover":
        go, out = args
        with open(out, "a") as f:
            f.write(f"launcher {os.getpid()}\n")
        notify("READY=1")
        while not os.path.exists(go):
            time.sleep(0.01)
        pid = os.fork()
        if pid == 0:
            with open(out, "a") as f:
                f.write(f"server {os.getpid()}\n")
            forever()
        notify(f"MAINPID={pid}")
    elif action == "signals":
        path = args[0]
        who = "child" if os.fork() == 0 else "main"

        def line(text: str) -> None:
            with open(path, "a") as f:
                f.write(f"{who} {os.getpid()} {text}\n")

        for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(sig, lambda n, _f: line(signal.Signals(n).name))
        line("ready")
        forever()
    elif action == "reloadable":
        # systemd's Type=notify-reload: on SIGHUP, RELOADING=1, then READY=1 once the
        # file GO exists ("-": at once; "never": never)
        path, go = args
        hups: list[int] = []
        signal.signal(signal.SIGHUP, lambda _n, _f: hups.append(1))
        notify("READY=1")
        n = 0
        while True:
            if not hups:
                time.sleep(0.01)
                continue
            hups.pop()
            n += 1
            notify("RELOADING=1")
            with open(path, "a") as f:
                f.write(f"hup {n}\n")
            while go == "never" or (go != "-" and not os.path.exists(go)):
                time.sleep(0.01)
            notify("READY=1")
            with open(path, "a") as f:
                f.write(f"reloaded {n}\n")
    elif action == "fdstore":
        fdstore_action(args[0], args[1] == "keep")
    elif action == "serve":
        serve(args[0], int(args[1]) if len(args) > 1 else 0)
    elif action == "record":
        with open(args[0], "a") as f:
            f.write(f"{os.getpid()}\n")
        forever()
    else:
        sys.exit(f"svc.py: unknown action {action!r}")


if __name__ == "__main__":
    main()
