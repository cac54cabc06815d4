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
    ok = _Item("tests/test_qemu_x.py::a", ("qemu_available", "tmp_path"), object())
    plain = _Item("t.py::b", ("tmp_path",), None)
    conftest.pytest_collection_modifyitems(None, [ok, plain])
    bad = _Item("t.py::c", ("qemu_available",), None)
    with pytest.raises(pytest.UsageError, match="t.py::c"):
        conftest.pytest_collection_modifyitems(None, [ok, bad])


def test_a_qemu_test_outside_a_qemu_file_is_refused() -> None:
    """The slow lane's workers keep tests/test_qemu_*.py together on one worker: a qemu
    test elsewhere would boot its guest beside another."""
    astray = _Item("tests/test_x.py::a", ("qemu_available",), object())
    with pytest.raises(pytest.UsageError, match="test_qemu_"):
        conftest.pytest_collection_modifyitems(None, [astray])


def _fake_tree(tmp: Any, codes: dict[str, int]) -> tuple[str, str]:
    """A copy of scripts/test.sh beside a set-up that does nothing and a .venv whose ruff,
    mypy and python only log their arguments; python exits with codes[marker expression]."""
    import shutil
    import stat
    (tmp / "scripts").mkdir()
    shutil.copy(os.path.join(ROOT, "scripts", "test.sh"), tmp / "scripts" / "test.sh")
    (tmp / "scripts" / "setup.sh").write_text("exit 0\n")
    log = tmp / "calls"
    bin_ = tmp / ".venv" / "bin"
    bin_.mkdir(parents=True)
    cases = "".join(f'    *"-m {m}"*) exit {rc};;\n' for m, rc in codes.items())
    for name in ("ruff", "mypy", "python"):
        p = bin_ / name
        p.write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\ncase "$*" in\n{cases}'
                     "    *) exit 0;;\nesac\n")
        p.chmod(p.stat().st_mode | stat.S_IEXEC)
    return str(tmp / "scripts" / "test.sh"), str(log)


def _run(script: str, *args: str) -> tuple[int, str]:
    import subprocess
    p = subprocess.run(["bash", script, *args], capture_output=True, text=True, timeout=30)
    return p.returncode, p.stderr


FAST = "not qemu and not slow"
REST = "not (not qemu and not slow)"


def test_the_plain_run_lints_then_runs_the_fast_lane_then_the_rest(tmp_path: Any) -> None:
    script, log = _fake_tree(tmp_path, {})
    assert _run(script)[0] == 0
    assert open(log).read().splitlines() == [
        "ruff check hachain tests bench", "mypy hachain",
        f"python -m pytest -m {FAST} -n 3", f"python -m pytest -m {REST} -n 3 --durations=15"]


def test_a_failing_fast_lane_stops_the_run(tmp_path: Any) -> None:
    script, log = _fake_tree(tmp_path, {FAST: 1})
    rc, err = _run(script)
    assert rc == 1 and "fast lane failed" in err
    assert open(log).read().splitlines()[-1] == f"python -m pytest -m {FAST} -n 3"


def test_no_test_collected_is_a_failure_in_either_lane(tmp_path: Any) -> None:
    script, log = _fake_tree(tmp_path, {REST: 5})
    rc, err = _run(script)
    assert rc == 1 and "slow lane: pytest collected no tests" in err


def test_fast_runs_only_the_fast_lane_with_the_arguments(tmp_path: Any) -> None:
    script, log = _fake_tree(tmp_path, {})
    assert _run(script, "--fast", "-x")[0] == 0
    assert open(log).read().splitlines()[-1] == f"python -m pytest -m {FAST} -n 3 -x"
    assert not any(REST in line for line in open(log))
