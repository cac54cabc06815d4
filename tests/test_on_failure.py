"""on_failure (systemd's OnFailure=): services started when one fails for good.

A real restarter: a service whose restart policy gives up (failed) or whose restart
intensity is exceeded (maintenance) starts its on_failure services, which are told what
failed (MONITOR_*, as systemd tells its OnFailure= units); a stop by hand starts
nothing. And the configuration's and the importer's side.
"""

from __future__ import annotations

from typing import Any

import pytest

from hachain import config, importer
from tests.conftest import wait_until

RUN_BOUND = 30.0  # a restarter answering, a few /bin/sh processes; no chain timer involved


def alert(out: Any) -> str:
    return f'''
[service.alert]
kind = "oneshot"
enabled = false
command = ["/bin/sh", "-c", "echo $MONITOR_SERVICE $MONITOR_SERVICE_RESULT $MONITOR_EXIT_CODE $MONITOR_EXIT_STATUS >> {out}"]
'''


@pytest.mark.slow
def test_a_service_that_failed_for_good_starts_its_on_failure(restarter: Any,
                                                              tmp_path: Any) -> None:
    out = tmp_path / "out"
    r = restarter('''
[service.db]
command = ["/bin/sh", "-c", "exit 3"]
restart = "never"
on_failure = ["alert"]
''' + alert(out))
    r.wait_state("db", "failed", timeout=RUN_BOUND)
    wait_until(lambda: out.exists() and out.read_text(), RUN_BOUND, "the alert to run")
    assert out.read_text() == "db exit-code exited 3\n"
    assert r.wait_state("alert", "done")["want"] == "up"
    assert "db: failed; starting its on_failure: alert" in open(r.log).read()


@pytest.mark.slow
def test_maintenance_starts_it_and_a_stop_by_hand_does_not(restarter: Any,
                                                          tmp_path: Any) -> None:
    out = tmp_path / "out"
    r = restarter('''
[service.db]
command = ["/bin/sh", "-c", "kill -9 $$"]
intensity = { max_restarts = 0, window = 60, action = "maintenance" }
on_failure = ["alert"]
[service.web]
command = ["/bin/sleep", "1000"]
on_failure = ["alert"]
''' + alert(out))
    r.wait_state("web", "ready")
    assert r.req("stop", "web")["ok"]
    r.wait_state("web", "stopped", timeout=RUN_BOUND)
    r.wait_state("db", "maintenance", timeout=RUN_BOUND)
    wait_until(lambda: out.exists() and out.read_text(), RUN_BOUND, "the alert to run")
    r.beats(5)  # (web's stop, earlier, started nothing: one line only, db's)
    assert out.read_text() == "db signal killed KILL\n"


def test_config_checks_the_names() -> None:
    with pytest.raises(config.ConfigError, match=r'service\.a\.on_failure: unknown service '
                       r'"alrt" \(did you mean "alert"\?\)'):
        config.parse('[service.a]\ncommand = ["/bin/x"]\non_failure = ["alrt"]\n'
                     '[service.alert]\ncommand = ["/bin/y"]\n')


def test_import_carries_on_failure_and_keeps_its_target_from_boot(tmp_path: Any) -> None:
    scrub = tmp_path / "scrub.service"
    scrub.write_text("[Unit]\nOnFailure=scrub-fail.service\n[Service]\nType=oneshot\n"
                     "ExecStart=/bin/scrub\n[Install]\nWantedBy=multi-user.target\n")
    fail = tmp_path / "scrub-fail.service"
    fail.write_text("[Service]\nType=oneshot\nExecStart=/bin/mail-admin\n")
    text, conv = importer.import_files([str(scrub), str(fail)])
    c = config.parse(text, "imported.toml")
    assert c.services["scrub"].on_failure == ("scrub-fail",)
    assert c.services["scrub"].enabled and not c.services["scrub-fail"].enabled
    assert conv.warnings == []
    text, conv = importer.import_files([str(scrub)])  # its target not imported with it
    assert '# on_failure = ["scrub-fail"]  (not imported)' in text
