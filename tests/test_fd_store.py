"""The file descriptor store (systemd's FDSTORE=1, FileDescriptorStoreMax=).

A real restarter and a real service (tests/svc.py fdstore): the service stores a memfd
holding a counter; each start after a crash gets it back in LISTEN_FDS, named in
LISTEN_FDNAMES, and counts on; a restarter killed and started again takes it back from
the running service; a service with fd_store_max = 0 has what it sends closed, with a
warning; a stop closes the store, fd_store_preserve keeps it. And the notify socket's
side: descriptors that come with any other message are closed, never leaked.
"""

from __future__ import annotations

import array
import json
import os
import socket
import sys
from typing import Any

import pytest

from hachain import config
from hachain.restarter import fdstore, notify
from tests.conftest import wait_until

RUN_BOUND = 30.0  # a restarter answering and a Python service starting; no chain timer
SVC = os.path.join(os.path.dirname(__file__), "svc.py")


def conf(out: Any, keep: str = "keep", extra: str = "fd_store_max = 4") -> str:
    return f'''
[service.db]
command = ["{sys.executable}", "{SVC}", "fdstore", "{out}", "{keep}"]
ready = "notify"
backoff = {{ initial = 0.1 }}
{extra}
'''


def seen(out: Any, n: int) -> list[list[str]]:
    return wait_until(lambda: len(t := out.read_text().splitlines() if out.exists() else [])
                      >= n and [ln.split()[1:] for ln in t], RUN_BOUND, f"{n} starts")


def stored_and_ready(r: Any) -> list[Any]:
    """The service's record once it names the store and says the service is ready. A
    restarter killed between the FDSTORE=1 and the READY=1 that follows takes the
    READY=1 with it (this bare restarter's notify socket dies with it; under init it
    would wait for the next one), and its successor waits for it for good (CI, under
    load)."""
    def rec() -> list[Any] | None:
        d = json.load(open(os.path.join(r.state_dir, "services", "db.json")))
        return d.get("fd_store") if d.get("state") == "ready" else None
    return list(wait_until(rec, RUN_BOUND, "the record to name the store, db ready"))


def crash(r: Any) -> int:
    pid = r.wait_state("db", "ready", timeout=RUN_BOUND)["pid"]
    os.kill(pid, 9)
    wait_until(lambda: (s := r.svc("db"))["pid"] not in (None, pid) and s["state"] == "ready",
               RUN_BOUND, "the next start to be ready")
    return int(pid)


@pytest.mark.slow
def test_state_survives_crashes(restarter: Any, tmp_path: Any) -> None:
    out = tmp_path / "out"
    r = restarter(conf(out))
    assert seen(out, 1) == [["new", "1"]]
    wait_until(lambda: json.load(open(os.path.join(r.state_dir, "services", "db.json")))
               .get("fd_store"), RUN_BOUND, "the record to name the store")
    assert r.svc("db")["fd_store"] == ["state"]
    crash(r)
    crash(r)
    assert seen(out, 3) == [["new", "1"], ["got", "2"], ["got", "3"]]


@pytest.mark.slow
def test_a_new_restarter_takes_the_store_back(restarter: Any, tmp_path: Any) -> None:
    out = tmp_path / "out"
    r = restarter(conf(out))
    seen(out, 1)
    rec = stored_and_ready(r)
    assert [e[0] for e in rec] == ["state"]
    r.kill_restarter()
    r.start()
    assert "stored descriptor(s) were held by the restarter alone" not in open(r.log).read()
    crash(r)
    assert seen(out, 2) == [["new", "1"], ["got", "2"]]


@pytest.mark.slow
def test_what_only_the_restarter_held_is_lost_with_it_and_said(restarter: Any,
                                                                tmp_path: Any) -> None:
    out = tmp_path / "out"
    r = restarter(conf(out, keep="close"))
    seen(out, 1)
    stored_and_ready(r)
    r.kill_restarter()
    r.start()
    assert "db: warning: 1 of its 1 stored descriptor(s) were held by the restarter alone " \
        "and are gone with it" in open(r.log).read()
    crash(r)
    assert seen(out, 2) == [["new", "1"], ["new", "1"]]


@pytest.mark.slow
def test_no_store_closes_what_is_sent_and_says_so(restarter: Any, tmp_path: Any) -> None:
    out = tmp_path / "out"
    r = restarter(conf(out, extra=""))
    seen(out, 1)
    wait_until(lambda: "warning: db: FDSTORE=1 with 1 descriptor(s), and its fd_store_max "
               "is 0: closed" in open(r.log).read(), RUN_BOUND, "the warning")
    crash(r)
    assert seen(out, 2) == [["new", "1"], ["new", "1"]]
    assert r.proc is not None
    held = [os.readlink(f"/proc/{r.proc.pid}/fd/{n}")
            for n in os.listdir(f"/proc/{r.proc.pid}/fd")]
    assert not any("memfd:state" in h for h in held), held


@pytest.mark.slow
@pytest.mark.parametrize("preserve", [False, True])
def test_a_stop_closes_the_store_unless_preserved(restarter: Any, tmp_path: Any,
                                                  preserve: bool) -> None:
    out = tmp_path / "out"
    extra = "fd_store_max = 4\nfd_store_preserve = true" if preserve else "fd_store_max = 4"
    r = restarter(conf(out, extra=extra))
    seen(out, 1)
    wait_until(lambda: json.load(open(os.path.join(r.state_dir, "services", "db.json")))
               .get("fd_store"), RUN_BOUND, "the record to name the store")
    assert r.req("stop", "db")["ok"]
    r.wait_state("db", "stopped", timeout=RUN_BOUND)
    assert r.req("start", "db")["ok"]
    r.wait_state("db", "ready", timeout=RUN_BOUND)
    assert seen(out, 2)[1] == (["got", "2"] if preserve else ["new", "1"])


def test_descriptors_of_other_messages_are_closed_on_receipt(tmp_path: Any) -> None:
    """The socket reads them (SCM_RIGHTS) and closes at once all but an FDSTORE=1's (a
    BARRIER=1's closed is what answers sd_notify_barrier())."""
    path = str(tmp_path / "n.sock")
    ns = notify.NotifySocket(path)
    r, w = os.pipe()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            for data, fd in ((b"BARRIER=1", w), (b"not an assignment", r)):
                s.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                    array.array("i", [fd]))], 0, path)
        got = ns.receive()
        assert [n.fields for n in got] == [{"BARRIER": "1"}, {}]
        assert got[1].error and got[0].fds == got[1].fds == ()  # closed on receipt
        os.close(w)
        assert os.read(r, 1) == b""  # every write end is closed: the reader sees EOF
    finally:
        ns.close()
        os.close(r)


def test_store_names_limits_and_hang_ups() -> None:
    assert fdstore.name_problem("a:b") and fdstore.name_problem("") and \
        not fdstore.name_problem("state")
    st = fdstore.Store()
    r, w = os.pipe()
    kept, why = st.add((r, w), "pipe", True, 1)
    assert kept == [r] and why == "fd_store_max (1) reached"
    os.close(w)  # the read end hangs up now: POLLHUP
    dup = os.dup(r)
    assert st.add((dup,), "again", True, 4) == ([], "")  # the same open file: not twice
    os.close(dup)
    assert st.drop_hung_up() == ["pipe"] and st.fds() == ()


def test_config_rules() -> None:
    with pytest.raises(config.ConfigError, match=r"service\.a\.fd_store_preserve: keeps "
                       r"stored descriptors, and fd_store_max \(0\) lets the service store "
                       r"none"):
        config.parse('[service.a]\ncommand = ["/bin/x"]\nfd_store_preserve = true\n')
    with pytest.raises(config.ConfigError, match=r"service\.a\.fd_store_max: must be <= 512"):
        config.parse('[service.a]\ncommand = ["/bin/x"]\nfd_store_max = 9999\n')


def test_import_carries_the_store_over(tmp_path: Any) -> None:
    from hachain import importer
    (tmp_path / "a.service").write_text(
        "[Service]\nExecStart=/usr/bin/a\nType=notify\nFileDescriptorStoreMax=4224\n"
        "FileDescriptorStorePreserve=yes\n")
    text, conv = importer.import_files([str(tmp_path / "a.service")])
    svc = config.parse(text).services["a"]
    assert (svc.fd_store_max, svc.fd_store_preserve) == (512, True)
    assert conv.warnings == [f"{tmp_path}/a.service:4: FileDescriptorStoreMax: 4224: hachain "
                             "keeps at most 512; 512 it is"]
