"""`hachain verify` with a service whose `condition` may stop holding.

The host may switch svc0's condition off at any moment (once, not a fault); the next
start of svc0 (after a crash, a restarter restart, a boot) then goes through the table's
`condition_failed` cell to `skipped`, and what requires it must go on. The model checks
the real table; a table in which `skipped` kept its dependents waiting is caught.
"""

from __future__ import annotations

import pytest

from hachain import config
from hachain.restarter import states
from hachain.restarter.states import Ev, State
from hachain.simulators import verify
from hachain.simulators.verify import Options, explore

pytestmark = pytest.mark.timeout(120)


def test_a_service_whose_condition_stops_holding_is_skipped_and_the_chain_converges() -> None:
    rep = explore(Options(faults=1, services=2, conditional=(0,)))
    assert rep.ok, rep.violation
    assert (State.STARTING.value, Ev.CONDITION_FAILED.value) in rep.cells, rep.cells


def test_a_table_where_skipped_blocks_its_dependents_is_caught(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The mutation: `skipped` no longer satisfies what requires it. svc1 then waits for
    ever behind a skipped svc0, which the model reports as no convergence."""
    real = states.satisfies_dependents
    monkeypatch.setattr(states, "satisfies_dependents",
                        lambda s: s.state is not State.SKIPPED and real(s))
    rep = explore(Options(faults=1, services=2, conditional=(0,)))
    assert not rep.ok and rep.violation is not None
    assert rep.violation["kind"] == "no_convergence", rep.violation
    assert any("svc0 starting->skipped" in step for step in rep.violation["trace"]), \
        rep.violation


def test_a_configs_conditions_enter_the_model() -> None:
    cfg = config.parse('[watchdog]\ndevice = "none"\n'
                       '[service.ssh]\ncommand = ["/bin/true"]\n'
                       'condition = { path_exists = "!/etc/ssh/sshd_not_to_be_run" }\n'
                       '[service.web]\ncommand = ["/bin/true"]\nrequires = ["ssh"]\n'
                       'assert = { path_exists = "/etc/web.conf" }\n', "c.toml")
    opts, notes = verify.options_from_config(cfg, 1, 200)
    assert opts.conditional == (0,) and opts.legend == ("ssh", "web")
    assert "ssh: its condition may stop holding at any moment (once per run); a start " \
           "after that skips it" in notes
    assert any(n.startswith("web: assert modelled as holding") for n in notes), notes
