"""The control socket, client side (used by the `hachain` command and by tests)."""

from __future__ import annotations

import os
import socket
from typing import Any

from hachain import channels


class ControlError(Exception):
    pass


def request(state_dir: str, req: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """Send one request and return the reply. ControlError with a one-line reason when the
    restarter cannot be reached."""
    import json
    path = os.path.join(state_dir, channels.CONTROL_SOCKET)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    s.settimeout(timeout)
    try:
        try:
            s.connect(path)
        except FileNotFoundError:
            raise ControlError(f"{path}: no control socket (is the restarter running?)") from None
        except OSError as e:
            raise ControlError(f"{path}: cannot connect: {e.strerror or e}") from None
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
        rep = json.loads(bytes(buf))
    except ValueError:
        raise ControlError(f"{path}: malformed reply") from None
    if not isinstance(rep, dict):
        raise ControlError(f"{path}: malformed reply")
    return rep
