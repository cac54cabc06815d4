"""A bug on the spawn path (an exception nobody expected, here a TypeError as a stale
compiled extension raised) fails that one start, through the service's policy, and
leaves the restarter and every other service running: before, it crash-looped the
restarter. The bug is planted with a sitecustomize module in the restarter's process
only, for the service named `bad`."""

from __future__ import annotations

import pytest

from tests.conftest import wait_until

PLANT = '''
import hachain.restarter.spawn as _spawn

_real = _spawn.spawn


def _buggy(cfg, *args, **kw):
    if cfg.name == "bad":
        raise TypeError("function takes exactly 7 arguments (8 given)")
    return _real(cfg, *args, **kw)


_spawn.spawn = _buggy
'''


@pytest.mark.slow
def test_an_unexpected_error_in_spawn_fails_one_start_not_the_restarter(
        restarter, tmp_path, monkeypatch) -> None:
    plant = tmp_path / "plant"
    plant.mkdir()
    (plant / "sitecustomize.py").write_text(PLANT)
    monkeypatch.setenv("PYTHONPATH", str(plant))
    r = restarter("""
[service.bad]
command = ["/bin/sleep", "1000"]
restart = "never"
[service.good]
command = ["/bin/sleep", "1000"]
""")
    good = r.wait_state("good", "ready")
    bad = wait_until(lambda: (s := r.svc("bad"))["state"] == "failed" and s, 15,
                     "bad to fail its start")
    assert "internal error: TypeError: function takes exactly 7 arguments" in bad["reason"]
    assert r.proc is not None and r.proc.poll() is None  # the restarter still runs
    assert r.svc("good")["pid"] == good["pid"]  # and so does everything else
    assert "Traceback" in open(r.log).read()  # the bug is shown for a report
