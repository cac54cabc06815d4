"""Dependencies with real processes: oneshots release their dependents only when done
(issue 16.2), and a restart stops dependents first and starts them after (issue 16.3)."""

from __future__ import annotations

import os

from tests.conftest import wait_until


def _lines(path: str) -> list[str]:
    try:
        with open(path) as f:
            return f.read().split()
    except FileNotFoundError:
        return []


def test_dependent_of_oneshot_starts_only_once_it_is_done(restarter, tmp_path):
    """`prepare` works until the test lets it finish, then writes its marker and exits 0.
    `app` (requires) and `tail` (after only) must see the marker when they start, and
    `app` must not be restarted by prepare's clean exit."""
    marker, seen, go = tmp_path / "prepared", tmp_path / "seen", tmp_path / "go"
    probe = (f'if [ -e {marker} ]; then echo $0:yes >> {seen}; else echo $0:no >> {seen}; '
             'fi; exec sleep 1000')
    r = restarter(f"""
[service.prepare]
kind = "oneshot"
command = ["/bin/sh", "-c", "while [ ! -e {go} ]; do sleep 0.05; done; sleep 0.2; touch {marker}"]
[service.app]
command = ["/bin/sh", "-c", "{probe}", "app"]
requires = ["prepare"]
[service.tail]
command = ["/bin/sh", "-c", "{probe}", "tail"]
after = ["prepare"]
""")
    st = wait_until(lambda: (s := r.status())["prepare"]["state"] == "starting" and
                    s["prepare"]["pid"] and s, 10, "prepare running")
    assert st["app"]["state"] == "waiting" and st["tail"]["state"] == "waiting"
    assert st["app"]["reason"] == "waiting for prepare: starting"
    assert not seen.exists()
    go.touch()
    app = r.wait_state("app", "ready")
    tail = r.wait_state("tail", "ready")
    assert r.svc("prepare")["state"] == "done"
    wait_until(lambda: len(_lines(str(seen))) == 2, 10, "both dependents to record")
    assert sorted(_lines(str(seen))) == ["app:yes", "tail:yes"]
    # app was started in the same loop step that made prepare done, so a "went down"
    # restart would already have happened: this status comes after it.
    st = r.status()
    assert st["app"]["pid"] == app["pid"] and st["app"]["restarts"] == 0
    assert st["tail"]["pid"] == tail["pid"]
    assert "went down" not in open(r.log).read()


def test_failed_oneshot_keeps_dependents_down_with_the_reason(restarter, tmp_path):
    go, started = tmp_path / "go", tmp_path / "started"
    r = restarter(f"""
[service.prepare]
kind = "oneshot"
command = ["/bin/sh", "-c", "[ -e {go} ] || exit 3"]
[service.app]
command = ["/bin/sh", "-c", "echo $$ >> {started}; exec sleep 1000"]
requires = ["prepare"]
""")
    r.wait_state("prepare", "failed")
    app = wait_until(lambda: "failed (exit status 3)" in (s := r.svc("app"))["reason"] and s,
                     10, "app's reason to name prepare's failure")
    assert app["state"] == "waiting" and app["pid"] is None
    assert app["reason"] == "waiting for prepare: failed (exit status 3)"
    assert not os.path.exists(started)
    # Fixed and started again by hand: done, and only then app starts.
    go.touch()
    assert r.req("start", "prepare")["ok"]
    r.wait_state("app", "ready")
    assert r.svc("prepare")["state"] == "done" and len(_lines(str(started))) == 1


def test_failing_oneshot_retried_by_policy_holds_dependents_until_done(restarter, tmp_path):
    tries, started = tmp_path / "tries", tmp_path / "started"
    r = restarter(f"""
[service.prepare]
kind = "oneshot"
command = ["/bin/sh", "-c", "echo x >> {tries}; [ $(wc -l < {tries}) -ge 3 ]"]
restart = "on-failure"
backoff = {{ initial = 0.2, factor = 1.0, max = 0.2 }}
intensity = {{ max_restarts = 10, window = 60 }}
[service.app]
command = ["/bin/sh", "-c", "echo $(wc -l < {tries}) >> {started}; exec sleep 1000"]
requires = ["prepare"]
""")
    r.wait_state("app", "ready")
    assert _lines(str(started)) == ["3"]  # started once, after the third (good) run
    assert r.svc("prepare")["state"] == "done"
