"""The demo appliance's services: `python -m hachain.simulators.demo_services ROLE [ARG]`.

Small stdlib-only programs that behave like the parts of a real appliance, so the
simulated machine has something to supervise:

  db                 a "database": STATUS= while starting, READY=1 on $NOTIFY_SOCKET after
                     a short warm-up, then a STATUS= line every few seconds (and WATCHDOG=1
                     when $WATCHDOG_USEC asks for it)
  web PORT [FD]      a "web server" on 127.0.0.1:PORT answering every request with "ok";
                     once listening it writes a line to fd FD (default 3) and closes it
                     (s6 notification-fd readiness), when that fd is open
  migrate            a one-shot "schema migration": works a second, exits 0
  worker [SECONDS]   a "job runner" that crashes (exit 1) after SECONDS (default 20), to
                     show restarts and backoff

Each prints one line per thing it does (captured by the restarter's service logs) and
exits 0 on SIGTERM.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time

from hachain import sdnotify


def say(role: str, msg: str) -> None:
    """One line on stdout, flushed, so the service log shows it at once."""
    print(f"{role}[{os.getpid()}]: {msg}", flush=True)


def sd_notify(msg: str) -> bool:
    """Send one datagram on $NOTIFY_SOCKET (sd_notify protocol); False when not set up."""
    return sdnotify.notify_fallback(msg)


def exit_on_term(role: str) -> None:
    """SIGTERM: say so and exit 0 (a clean stop, not a failure)."""
    def handler(_sig: int, _frame: object) -> None:
        say(role, "SIGTERM: stopping")
        sys.exit(0)
    signal.signal(signal.SIGTERM, handler)


def run_db() -> int:
    """Warm up, report READY=1, then report progress forever."""
    exit_on_term("db")
    sd_notify("STATUS=recovering journal")
    say("db", "recovering journal")
    time.sleep(0.5)
    sd_notify("READY=1\nSTATUS=accepting queries")
    say("db", "ready")
    wd_usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
    period = min(5.0, wd_usec / 2e6) if wd_usec else 5.0
    served = 0
    last_status = time.monotonic()
    while True:
        time.sleep(period)
        served += 1
        if wd_usec:
            sd_notify("WATCHDOG=1")
        if time.monotonic() - last_status >= 5.0:
            sd_notify(f"STATUS=accepting queries ({served} ticks)")
            last_status = time.monotonic()


def notify_fd(fd: int) -> bool:
    """s6 readiness: write one line to `fd` and close it; False when it is not open."""
    try:
        os.write(fd, b"ready\n")
        os.close(fd)
    except OSError:
        return False
    return True


def run_web(port: int, ready_fd: int = 3) -> int:
    """Serve "ok" to every connection on 127.0.0.1:PORT; readiness on `ready_fd`."""
    exit_on_term("web")
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(16)
    say("web", f"listening on 127.0.0.1:{port}")
    notify_fd(ready_fd)
    while True:
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(1.0)
            try:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
            except OSError:
                pass


def run_migrate() -> int:
    """Pretend to migrate a schema; done after a second."""
    say("migrate", "migrating schema")
    time.sleep(1.0)
    say("migrate", "schema up to date")
    return 0


def run_worker(crash_after: float) -> int:
    """Work, then crash with status 1 after `crash_after` seconds."""
    exit_on_term("worker")
    say("worker", f"processing jobs (will crash in {crash_after:g} s)")
    deadline = time.monotonic() + crash_after
    while time.monotonic() < deadline:
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    say("worker", "crashing on purpose (exit 1)")
    return 1


def main(argv: list[str] | None = None) -> int:
    """Dispatch on the role; exit 2 on bad usage."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(__doc__, file=sys.stderr)
        return 2
    role, rest = args[0], args[1:]
    try:
        if role == "db":
            return run_db()
        if role == "web" and len(rest) in (1, 2):
            return run_web(*(int(x) for x in rest))
        if role == "migrate":
            return run_migrate()
        if role == "worker":
            return run_worker(float(rest[0]) if rest else 20.0)
    except ValueError as e:
        print(f"demo_services {role}: bad argument: {e}", file=sys.stderr)
        return 2
    print(f"demo_services: unknown role or arguments: {' '.join(args)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
