"""Init's stash (hachain/restarter/stash.py): what only the restarter holds outlives it.

A whole chain (`hachain run`: init, the restarter, the tickler). A listen service is
down in its backoff with a client waiting in its socket's backlog when the restarter is
SIGKILLed: the client is answered by the service's next process, which the next
restarter starts on the very socket it took back from init's stash. A service that
stored a descriptor and closed its own copy gets it back after the restarter's death.
And the stash's wire format on its own.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from typing import Any

import pytest

from hachain import client
from hachain.restarter import stash
from tests.conftest import wait_until
from tests.test_chain import chain  # noqa: F401 - the fixture
from tests.test_listen import SVC, free_port

RUN_BOUND = 30.0  # a chain starting and answering; no chain timer involved


def restarter_pid(c: Any) -> int:
    hb = wait_until(lambda: c.hb("restarter"), RUN_BOUND, "the restarter's heartbeat")
    return int(hb.pid)


def kill_restarter(c: Any) -> None:
    pid = restarter_pid(c)
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: (h := c.hb("restarter")) and h.pid != pid, RUN_BOUND,
               "the next restarter")


@pytest.mark.slow
def test_a_client_waiting_through_a_restarter_death_is_answered(chain: Any,  # noqa: F811
                                                                tmp_path: Any) -> None:
    port, out = free_port(), tmp_path / "out"
    c = chain(f'''
[service.web]
command = ["{sys.executable}", "{SVC}", "serve", "{out}", "1"]
listen = ["tcp:127.0.0.1:{port}"]
ready = "notify"
backoff = {{ initial = 60.0, factor = 1.0, max = 60.0 }}
''')
    first = wait_until(lambda: (s := c.status().get("web")) and s["state"] == "ready" and
                       s["pid"], RUN_BOUND, "web ready")
    with socket.create_connection(("127.0.0.1", port), timeout=RUN_BOUND) as a:
        # (it exits 3 after this answer: a backoff of 60 s, a window no host misses)
        assert int(a.makefile().readline()) == first
    wait_until(lambda: c.status().get("web", {}).get("state") == "backoff", RUN_BOUND,
               "its backoff")
    waiting = socket.create_connection(("127.0.0.1", port), timeout=RUN_BOUND)
    try:
        kill_restarter(c)  # the only holder of the socket now
        log = os.path.join(str(tmp_path), "chain.log")
        wait_until(lambda: "took back from init's stash the sockets of 1" in open(log).read(),
                   RUN_BOUND, "the next restarter to take the socket back")
        # its backoff (60 s) goes on in the next restarter: cut short by hand
        assert client.request(c.state_dir, {"op": "restart", "name": "web"})["ok"]
        answer = waiting.makefile().readline()  # (reset, without the stash)
    finally:
        waiting.close()
    assert answer and int(answer) != first


@pytest.mark.slow
def test_a_stored_descriptor_only_the_restarter_held_survives_it(chain: Any,  # noqa: F811
                                                                 tmp_path: Any) -> None:
    out = tmp_path / "out"
    c = chain(f'''
[service.db]
command = ["{sys.executable}", "{SVC}", "fdstore", "{out}", "close"]
ready = "notify"
fd_store_max = 2
backoff = {{ initial = 0.1 }}
''')
    first = wait_until(lambda: (s := c.status().get("db")) and s["state"] == "ready" and
                       s.get("fd_store") == ["state"] and s["pid"], RUN_BOUND, "db stored")
    kill_restarter(c)
    wait_until(lambda: c.status().get("db", {}).get("fd_store") == ["state"], RUN_BOUND,
               "the new restarter to hold it")
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: out.exists() and len(out.read_text().splitlines()) == 2, RUN_BOUND,
               "the next start")
    assert [ln.split()[1:] for ln in out.read_text().splitlines()] == [["new", "1"],
                                                                       ["got", "2"]]


def test_wire_format_round_trip() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    st = stash.Stash(os.dup(a.fileno()), os.dup(b.fileno()))
    a.close()
    b.close()
    r, w = os.pipe()
    try:
        items = [("web", "listen", "tcp:80", r)] + \
            [(f"s{i}", "store", ["n", True], w) for i in range(stash.PER_MESSAGE + 5)]
        assert st.put(items) == ""
        got = st.take()
        assert [(i.service, i.kind, i.meta) for i in got] == [x[:3] for x in items]
        assert all(os.fstat(i.fd).st_ino == os.fstat(x[3]).st_ino
                   for i, x in zip(got, items, strict=True))
        for i in got:
            os.close(i.fd)
        assert st.take() == []  # read out
        st.put(items[:1])
        assert st.put(items[:2]) == "" and len(st.take()) == 2  # the set, not the sum
    finally:
        os.close(r)
        os.close(w)
        st.close()
