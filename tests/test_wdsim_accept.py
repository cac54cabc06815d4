"""The simulated watchdog chip keeps its clock through a failed accept.

An accept(2) of the watchdog socket that fails with anything but EAGAIN or EINTR (out of
file descriptors: EMFILE, ENFILE) used to raise out of the server's thread and end it
without a word: from then on the watchdog never fired, and a hung simulated machine was
never reset. Now the client waits in the backlog and is accepted on a later round.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
from typing import Any

import pytest

from hachain.simulators.wdsim import SoftWatchdog, WatchdogServer
from hachain.watchdog.device import open_watchdog

TIMEOUT = 1  # the simulated watchdog's timeout
SLACK = 3.0  # a thread's wake-up on a loaded 2-core machine


class FailingAccepts:
    """The server's listening socket, whose next `n` accepts fail with EMFILE."""

    def __init__(self, sock: socket.socket, n: int) -> None:
        self.sock, self.left = sock, n

    def accept(self) -> tuple[socket.socket, Any]:
        if self.left > 0:
            self.left -= 1
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return self.sock.accept()

    def fileno(self) -> int:  # the server's thread may register it after the swap
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()


@pytest.mark.slow
def test_a_failed_accept_does_not_stop_the_watchdog(short_dir: str) -> None:
    expired = threading.Event()
    srv = WatchdogServer(os.path.join(short_dir, "wd.sock"), SoftWatchdog(timeout=TIMEOUT),
                         expired.set)
    srv.start()
    try:
        assert srv._listener is not None
        srv._listener = FailingAccepts(srv._listener, 3)  # type: ignore[assignment]
        wd = open_watchdog("sim:" + srv.socket_path)  # accepted after three failures
        try:
            assert srv.accept_errors == 3 and srv.watchdog.armed
            wd.keepalive()
            assert expired.wait(TIMEOUT + SLACK), "the watchdog did not fire"
            assert srv.expirations == 1
        finally:
            wd.close()
    finally:
        srv.stop()
