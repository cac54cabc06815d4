"""Bad input that the state-readers sweeps (tests/test_state_bad_input.py,
test_state_readers.py, test_state_readers2.py) left: each test fails on the code before
its fix.

What was wrong before:

- the chaos harness read admin.json (the baseline of a campaign, the check after a power
  cut) as any file and took any JSON: a FIFO there held the harness for good, a JSON
  list raised AttributeError in the power-cut check, and a list at the baseline, which
  the booted restarter sets aside, read as a change behind the administrator's back;
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from hachain import channels
from tests.test_state_bad_input import _put
from tests.test_state_readers import DEEP
from tests.test_state_readers2 import _bounded

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
    from simulators.converge import read_admin
    persist = str(tmp_path)
    path = os.path.join(persist, channels.ADMIN_STATE)
    _put(path, what)
    admin, line = _bounded(lambda: read_admin(persist), [path])
    assert admin == {}
    assert line == f"{path}: {why}; ignored", line
    assert "\n" not in line


def test_chaos_reads_a_good_admin_json_and_a_missing_one(tmp_path: Any) -> None:
    from simulators.converge import read_admin
    persist = str(tmp_path)
    assert read_admin(persist) == ({}, "")
    held = {"web": {"want": "down"}, "db": {"want": "up", "maintenance": "too many"}}
    channels.write_json(os.path.join(persist, channels.ADMIN_STATE), held)
    assert read_admin(persist) == (held, "")

