"""The test kit itself: the bounded wait, the lane split of scripts/test.sh, the marker rule."""

from __future__ import annotations

import os
import re
import time
from typing import Any

import pytest

from tests import conftest
from tests.conftest import ROOT, wait_until


def test_wait_until_returns_the_value_and_names_what_timed_out() -> None:
    seen = []
    assert wait_until(lambda: seen.append(1) or (len(seen) >= 3 and "ok"), 5, "three") == "ok"
    t0 = time.monotonic()
    with pytest.raises(AssertionError, match="timed out after 0.2 s waiting for never"):
        wait_until(lambda: False, 0.2, "never")
    assert time.monotonic() - t0 >= 0.2


def test_the_two_lanes_are_complements_and_run_in_order() -> None:
    text = open(os.path.join(ROOT, "scripts", "test.sh")).read()
    fast = re.search(r'^FAST="([^"]+)"$', text, re.M)
    assert fast is not None and fast.group(1) == "not qemu and not slow"
    plain = text[text.rindex("\nlint\n"):]  # the run CI makes: after the other forms
    first = plain.index('lane "fast lane" -m "$FAST"')
    assert plain.index('lane "slow lane" -m "not ($FAST)"') > first
    # no test collected (pytest's exit 5) is a failure
    assert re.search(r'if \[ \$rc -eq 5 \]; then\n[^\n]*\n\s*exit 1\n', text)
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert "exec bash scripts/test.sh\n" in ci


class _Item:
    def __init__(self, nodeid: str, fixtures: tuple[str, ...], marker: Any) -> None:
        self.nodeid = nodeid
        self.fixturenames = fixtures
        self._marker = marker

    def get_closest_marker(self, name: str) -> Any:
        return self._marker if name == "qemu" else None


def test_a_qemu_test_without_the_qemu_marker_is_refused() -> None:
    ok = _Item("t.py::a", ("qemu_available", "tmp_path"), object())
    plain = _Item("t.py::b", ("tmp_path",), None)
    conftest.pytest_collection_modifyitems(None, [ok, plain])
    bad = _Item("t.py::c", ("qemu_available",), None)
    with pytest.raises(pytest.UsageError, match="t.py::c"):
        conftest.pytest_collection_modifyitems(None, [ok, bad])
