"""The control socket, client side (used by the `hachain` command and by tests)."""

from __future__ import annotations

import os
import socket
import struct
from typing import Any

from hachain import channels


class ControlError(Exception):
    pass


def request(state_dir: str, req: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """Send one request and return the reply. ControlError with a one-line reason when the
    restarter cannot be reached."""
    path = os.path.join(state_dir, channels.CONTROL_SOCKET)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        # A full listen backlog (a busy restarter, or one flooded with idle connections)
        # makes connect() fail with EAGAIN at once on a socket with a Python timeout
        # (non-blocking underneath); a blocking one waits for room, up to SO_SNDTIMEO.
        sec = max(timeout, 0.001)  # (0 would mean no limit)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                     struct.pack("ll", int(sec), int(sec % 1 * 1e6)))
        try:
            s.connect(path)
        except FileNotFoundError:
            raise ControlError(f"{path}: no control socket (is the restarter running?)") from None
        except BlockingIOError:
            raise ControlError(f"{path}: no room for a connection within {timeout:g} s "
                               "(the restarter accepts none)") from None
        except OSError as e:
            raise ControlError(f"{path}: cannot connect: {e.strerror or e}") from None
        s.settimeout(timeout)
        try:
            s.sendall(channels.encode_message(req))
            buf = bytearray()
            while not buf.endswith(b"\n"):
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                buf += chunk
        except TimeoutError:
            raise ControlError(f"{path}: no reply within {timeout:g} s") from None
        except OSError as e:
            raise ControlError(f"{path}: {e.strerror or e}") from None
    finally:
        s.close()
    try:
        rep = channels.loads(bytes(buf))
    except ValueError as e:  # (nested too deeply included: was RecursionError)
        raise ControlError(f"{path}: malformed reply: {channels.json_problem(e)}") from None
    if not isinstance(rep, dict):
        raise ControlError(f"{path}: malformed reply")
    return rep
