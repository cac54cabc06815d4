"""Bad input that the state-readers sweeps (tests/test_state_bad_input.py,
test_state_readers.py, test_state_readers2.py) left: each test fails on the code before
its fix.

What was wrong before:

- the chaos harness read admin.json (the baseline of a campaign, the check after a power
  cut) as any file and took any JSON: a FIFO there held the harness for good, a JSON
  list raised AttributeError in the power-cut check, and a list at the baseline, which
  the booted restarter sets aside, read as a change behind the administrator's back;
- init found its persist dir (to say in the boot record why a boot ends) in its
  configuration file opened as any file: a FIFO there held that thread for good, and
  the boot record never said why;
- `hachain watchdog info` (and the tickler) said of a reply of the watchdog simulator
  it could not take only "Protocol error": not what was wrong with it.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from hachain import bootrecord, channels
from tests.conftest import end_init, wait_until
from tests.test_cli_bad_input import hachain, one_line
from tests.test_state_bad_input import READY, _put
from tests.test_state_readers import DEEP
from tests.test_state_readers2 import READ_TIMEOUT, _answer_once, _bounded

pytestmark = pytest.mark.timeout(120)


# --- the chaos harness's admin.json ------------------------------------------------------------

@pytest.mark.parametrize("what, why", [
    ("fifo", "not a regular file (a FIFO)"),
    ("dir", "not a regular file (a directory)"),
    ("dangling", "a dangling symbolic link"),
    (DEEP, "not JSON (nested too deeply)"),
    (b'{"web": ', "not JSON (Expecting value at byte 8)"),
    (b'[{"web": {"want": "down"}}]', "not a JSON object but list"),
    (b'{"web": "down"}', "entry 'web' is 'down'"),
    (b'{"web": {"want": "sideways"}}', "entry 'web': want is 'sideways'"),
], ids=["fifo", "dir", "dangling", "deep", "torn", "list", "entry", "want"])
def test_chaos_reads_a_bad_admin_json_as_nothing_held_with_one_line(
        tmp_path: Any, what: Any, why: str) -> None:
    """The chaos harness reads admin.json at each baseline (what the administrator holds,
    which no fault may change) and after a power cut (the acknowledged stop or start must
    be there). Both read it as any file: a FIFO there held the campaign for good; and any
    JSON was taken: a list raised AttributeError in the power-cut check. Now both read it
    with converge.read_admin, as a starting restarter does (which sets a bad one aside):
    nothing held, and one line naming the file and what is wrong."""
    from hachain.simulators.converge import read_admin
    persist = str(tmp_path)
    path = os.path.join(persist, channels.ADMIN_STATE)
    _put(path, what)
    admin, line = _bounded(lambda: read_admin(persist), [path])
    assert admin == {}
    assert line == f"{path}: {why}; ignored", line
    assert "\n" not in line


def test_chaos_reads_a_good_admin_json_and_a_missing_one(tmp_path: Any) -> None:
    from hachain.simulators.converge import read_admin
    persist = str(tmp_path)
    assert read_admin(persist) == ({}, "")
    held = {"web": {"want": "down"}, "db": {"want": "up", "maintenance": "too many"}}
    channels.write_json(os.path.join(persist, channels.ADMIN_STATE), held)
    assert read_admin(persist) == (held, "")


# --- init's configuration file -------------------------------------------------------------

@pytest.mark.parametrize("kind", ["fifo", "dangling-symlink"])
def test_init_waits_on_no_fifo_and_names_a_dangling_link_as_its_configuration(
        tmp_path: Any, kind: str) -> None:
    """Given neither --persist-dir nor $HACHAIN_PERSIST_DIR, init reads `[chain]
    persist_dir` from its --config when it writes why a boot ends (here: it gave up on a
    tickler that keeps dying). It opened that file with a plain open(): a FIFO there held
    the thread in open() for good, and nothing was said or written. Now one line, and
    the default persist dir. A symbolic link to a file that does not exist was taken
    for no file at all, without a word: now one line, naming the link's target."""
    default = channels.DEFAULT_PERSIST_DIR
    if os.path.lexists(os.path.join(default, bootrecord.RECORD)):
        pytest.skip(f"{default} holds a boot record: init would write this host's")
    from tests.test_state_readers import init_giving_up_on_the_tickler
    cfg = tmp_path / "chain.toml"
    if kind == "fifo":
        os.mkfifo(cfg)
        why = "not a regular file (a FIFO)"
    else:
        target = tmp_path / "moved" / "chain.toml"
        os.symlink(target, cfg)
        why = f"a symbolic link to {target}, which does not exist"
    init, err = init_giving_up_on_the_tickler(tmp_path, tmp_path / "run", None, config=cfg)
    try:
        wait_until(lambda: f"no boot record in {default}" in err.read_text(errors="replace"),
                   READY, "init to look for the boot record in the default persist dir")
        text = err.read_text(errors="replace")
        assert f"{cfg}: {why}: ignored, the persist dir is {default}" in text, text[-3000:]
        assert "Traceback" not in text
        assert init.poll() is None
    finally:
        end_init(init)


# --- the watchdog simulator's replies ----------------------------------------------------------

@pytest.mark.parametrize("reply, why", [
    (b'[1, 2]\n', "malformed reply from the watchdog simulator: not a JSON object but list"),
    (b'"up"\n', "malformed reply from the watchdog simulator: not a JSON object but str"),
    (b'{"timeout": 10\n', "malformed reply from the watchdog simulator: not JSON "
                          "(Expecting ',' delimiter at byte 15)"),
    (b'\xff\xfe{}\n', "malformed reply from the watchdog simulator: not JSON (not UTF-8 text)"),
    (b'x' * 5000, "malformed reply from the watchdog simulator: more than 4096 bytes"),
    (b'', "no reply from the watchdog simulator: it closed the connection"),
], ids=["list", "string", "torn", "not-utf8", "oversized", "none"])
def test_watchdog_info_says_what_was_wrong_with_the_sims_reply(
        tmp_path: Any, reply: bytes, why: str) -> None:
    """`hachain watchdog info -d sim:PATH` reads the simulated device's attributes (one
    JSON line) from its socket. Whatever was wrong with the reply, the one line said
    only "Protocol error" (EPROTO's strerror): now what was wrong, after the socket."""
    path = str(tmp_path / "wd.sock")
    srv, t = _answer_once(path, reply)
    try:
        p = hachain("watchdog", "info", "-d", f"sim:{path}")
        line = one_line(p, 1)
        assert line == f"hachain watchdog: sim:{path}: read attributes: {why}", line
    finally:
        srv.close()
        t.join(READ_TIMEOUT)


def test_an_oversized_ioctl_reply_of_the_sim_says_its_size(tmp_path: Any) -> None:
    """An open simulated device (the tickler's, `info --open`'s) answers each ioctl with
    a frame: errno, length, payload. A length over 4096 was "Protocol error" too."""
    from hachain.watchdog import device
    path = str(tmp_path / "wd.sock")
    # the open's reply, then one to the ioctl with a length over the bound
    srv, t = _answer_once(path, [device.SIM_OPEN_REPLY.pack(0, 0),
                                 device.SIM_REPLY.pack(0, 5000)])
    try:
        wd = device.open_watchdog(f"sim:{path}")
        try:
            with pytest.raises(device.WatchdogError) as info:
                wd.get_timeout()
        finally:
            wd.close()
        assert str(info.value) == (f"sim:{path}: GETTIMEOUT: malformed reply from the "
                                   "watchdog simulator: a payload of 5000 bytes (at most "
                                   "4096)")
    finally:
        srv.close()
        t.join(READ_TIMEOUT)
