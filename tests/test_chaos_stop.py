"""How a stop signal (Ctrl-C, a closed terminal, kill) ends a `hachain chaos` campaign:
the handler only records it, and raises only inside the campaign's armed run, so no
moment exists where it loses the report (issue 21.3; a SIGHUP that came just after the
tmpfs mounts once ended a CI run with "no fault judged, no report").

Real signals to this process; the campaign pieces that need no machine run for real.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from hachain.simulators import chaos_runner
from hachain.simulators.chaos_kinds import Fault
from hachain.simulators.chaos_runner import (
    CampaignInterrupted,
    Stop,
    armed,
    run_campaign,
    signals_deferred,
    stop_signals_raise,
)
from tests.test_chaos import PY


@pytest.fixture
def handlers() -> Iterator[None]:
    with stop_signals_raise():
        yield


def test_outside_the_armed_run_a_stop_signal_waits_and_the_next_run_raises_at_once(
        handlers: None) -> None:
    signal.raise_signal(signal.SIGHUP)  # setting up, mounting, between shrink runs
    assert Stop.signame() == "SIGHUP"
    ran = False
    with pytest.raises(CampaignInterrupted) as e:
        with armed():
            ran = True
    assert e.value.signame == "SIGHUP" and not ran


def test_inside_the_armed_run_it_raises_once_and_a_second_one_only_waits(
        handlers: None) -> None:
    with pytest.raises(CampaignInterrupted) as e:
        with armed():
            signal.raise_signal(signal.SIGINT)
            pytest.fail("the armed run went on after SIGINT")
    assert e.value.signame == "SIGINT" and not Stop.armed
    signal.raise_signal(signal.SIGTERM)  # a second Ctrl-C during the clean-up
    assert Stop.signame() == "SIGINT"  # the first one is what the report names


def test_a_deferred_step_is_finished_before_the_signal_raises(handlers: None) -> None:
    steps = []
    with pytest.raises(CampaignInterrupted):
        with armed():
            with signals_deferred():
                with signals_deferred():
                    signal.raise_signal(signal.SIGTERM)
                    steps.append("mounted")
                steps.append("bookkept")  # the inner end does not raise
            steps.append("after")
    assert steps == ["mounted", "bookkept"]


def test_leaving_restores_the_handlers_and_forgets_the_signal() -> None:
    before = {s: signal.getsignal(s) for s in chaos_runner.STOP_SIGNALS}
    with stop_signals_raise():
        signal.raise_signal(signal.SIGHUP)
    assert {s: signal.getsignal(s) for s in chaos_runner.STOP_SIGNALS} == before
    assert Stop.pending is None and not Stop.armed and Stop.depth == 0
    with armed():  # nothing recorded: an armed region outside a campaign never raises
        pass


def test_a_signal_before_the_run_gives_a_partial_report_and_starts_no_machine(
        handlers: None, tmp_path: Any) -> None:
    cfg = tmp_path / "chain.toml"
    cfg.write_text(chaos_runner.campaign_config_text(PY, str(tmp_path / "svc.py")))
    faults = [Fault(0, "kill-service", "svc-a")]
    signal.raise_signal(signal.SIGHUP)  # e.g. just after the mounts, before the run's first line
    rep = run_campaign(str(cfg), str(tmp_path / "c"), 2, faults, ["kill-service"], {},
                       False, None)
    assert rep["interrupted"] == "SIGHUP" and rep["ok"] is False
    assert rep["results"] == [] and rep["boots"] == 0 and rep["faults"] == 1
    assert not os.path.exists(tmp_path / "c" / "m" / "run")
