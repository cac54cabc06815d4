"""A small client for QEMU's machine protocol (QMP) on a unix socket.

Owns: the handshake, one command at a time, and recording asynchronous events (WATCHDOG,
RESET, SHUTDOWN, ...) with their arrival time, which is how the host learns exactly when
the emulated watchdog fired. Must not start or kill QEMU.
"""

from __future__ import annotations

import json
import queue
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any


class QmpError(Exception):
    """QMP failed: no connection, an error reply, or no reply in time."""


@dataclass(frozen=True)
class QmpEvent:
    """One asynchronous QMP event, stamped with the host's time.monotonic()."""

    name: str
    data: dict[str, Any]
    at: float


class QmpClient:
    """Connects to a QMP server socket and keeps its events."""

    def __init__(self, path: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        while True:
            try:
                self._sock.connect(path)
                break
            except OSError as exc:
                if time.monotonic() > deadline:
                    self._sock.close()
                    raise QmpError(f"qmp {path}: cannot connect: {exc}") from exc
                time.sleep(0.05)
        self._file = self._sock.makefile("rb")
        self._replies: queue.Queue[dict[str, Any]] = queue.Queue()
        self._lock = threading.Lock()
        self.events: list[QmpEvent] = []
        self.changed = threading.Condition()
        # QEMU may send an event (e.g. RESUME) before its greeting: skip those
        greeting = b""
        try:
            for _ in range(32):
                self._sock.settimeout(max(0.1, deadline - time.monotonic()))
                greeting = self._file.readline()
                if b"QMP" in greeting or not greeting.lstrip().startswith(b'{"event"'):
                    break
        except OSError as exc:  # TimeoutError among them: QEMU took the connection only
            self.close()
            raise QmpError(f"qmp {path}: no greeting within {timeout}s ({exc!r})") from exc
        if b"QMP" not in greeting:
            self.close()
            raise QmpError(f"qmp {path}: unexpected greeting {greeting[:80]!r}")
        self._sock.settimeout(None)
        self._pump_thread = threading.Thread(target=self._pump, name="qemu-qmp", daemon=True)
        self._pump_thread.start()
        self.command("qmp_capabilities", timeout=timeout)

    def _pump(self) -> None:
        try:
            self._read_messages()
        except (OSError, ValueError):
            pass
        with self.changed:
            self.changed.notify_all()

    def _read_messages(self) -> None:
        for line in self._file:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if "event" in message:
                with self.changed:
                    self.events.append(QmpEvent(message["event"], message.get("data", {}),
                                                time.monotonic()))
                    self.changed.notify_all()
            else:
                self._replies.put(message)

    def drain(self, timeout: float) -> bool:
        """Once QEMU has exited: wait (bounded) until every event it sent is in `events`,
        i.e. the reader reached the end of the socket. True when it did."""
        self._pump_thread.join(timeout)
        return not self._pump_thread.is_alive()

    def command(self, name: str, arguments: dict[str, Any] | None = None,
                timeout: float = 10.0) -> Any:
        """Run one QMP command and return its "return" value."""
        request: dict[str, Any] = {"execute": name}
        if arguments:
            request["arguments"] = arguments
        with self._lock:
            try:
                self._sock.sendall(json.dumps(request).encode() + b"\n")
                reply = self._replies.get(timeout=timeout)
            except (OSError, queue.Empty) as exc:
                raise QmpError(f"qmp {name}: no reply within {timeout}s ({exc!r})") from exc
        if "error" in reply:
            raise QmpError(f"qmp {name}: {reply['error'].get('desc', reply['error'])}")
        return reply.get("return")

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
