"""`hachain kill NAME [-s SIGNAL] [--all]`: one signal to a running service, sent by the
restarter (s6-svc -h, sv hup, supervisorctl signal, systemctl kill). Real restarter, real
services that write down every signal they get, real signals; the CLI as a subprocess."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from tests.conftest import RestarterRun, hachain_cli, svc, wait_until

SEEN = 20.0  # a signal sent is handled by a process that is running: the kernel's work


def hachain(r: RestarterRun, *args: str) -> subprocess.CompletedProcess[str]:
    return hachain_cli(r.state_dir, *args)


def lines(path: Any) -> list[list[str]]:
    try:
        return [ln.split() for ln in open(path).read().splitlines()]
    except FileNotFoundError:
        return []


def ready(path: Any) -> dict[str, int]:
    """{"main": pid, "child": pid} once both have set their handlers."""
    got = {w: int(p) for w, p, what in lines(path) if what == "ready"}
    return got if len(got) == 2 else {}


def body(out: Any, extra: str = "") -> str:
    return f'[service.web]\ncommand = {svc("signals", str(out))}\n{extra}'


@pytest.mark.slow
def test_kill_sends_the_signal_to_the_main_process_only(restarter: Any, tmp_path: Any) -> None:
    out = tmp_path / "signals"
    r = restarter(body(out))
    pids = wait_until(lambda: ready(out), SEEN, "both processes of web to set their handlers")
    assert r.svc("web")["pid"] == pids["main"]
    p = hachain(r, "kill", "web", "-s", "hup")
    assert (p.returncode, p.stdout, p.stderr) == (
        0, f"web: SIGHUP sent to main pid {pids['main']}\n", "")
    wait_until(lambda: ["main", str(pids["main"]), "SIGHUP"] in lines(out), SEEN,
               "the main process to get SIGHUP")
    r.beats(3)  # the restarter's passes: the child got nothing, nothing was restarted
    assert [ln for ln in lines(out) if ln[2] != "ready"] == [
        ["main", str(pids["main"]), "SIGHUP"]]
    st = r.svc("web")
    assert (st["state"], st["pid"], st["restarts"]) == ("ready", pids["main"], 0)
    assert f"web: SIGHUP sent to main pid {pids['main']} (hachain kill)" in open(r.log).read()


@pytest.mark.slow
@pytest.mark.parametrize("cgroups", [True, False], ids=["cgroup", "process-group"])
def test_kill_all_reaches_every_process_of_the_service(restarter: Any, tmp_path: Any,
                                                       cgroups: bool) -> None:
    out = tmp_path / "signals"
    r = restarter(body(out), cgroups=cgroups)
    if cgroups and r.cg_root is None:
        pytest.skip("needs a writable cgroup2 mount (root)")
    pids = wait_until(lambda: ready(out), SEEN, "both processes of web to set their handlers")
    p = hachain(r, "kill", "web", "--all", "--signal", "SIGUSR1")
    assert p.returncode == 0 and p.stderr == "", (p.stdout, p.stderr)
    if cgroups:
        both = " ".join(map(str, sorted(pids.values())))
        assert p.stdout == f"web: SIGUSR1 sent to 2 process(es) of its cgroup: {both}\n"
    else:
        assert p.stdout == f"web: SIGUSR1 sent to process group {pids['main']}\n"
    for who, pid in pids.items():
        wait_until(lambda w=who, q=pid: [w, str(q), "SIGUSR1"] in lines(out), SEEN,
                   f"the {who} process to get SIGUSR1")
    assert r.svc("web")["restarts"] == 0


@pytest.mark.slow
def test_a_signal_that_ends_the_service_is_an_exit_the_policy_answers(
        restarter: Any, tmp_path: Any) -> None:
    out = tmp_path / "signals"
    r = restarter(body(out, 'backoff = { initial = 0.0, factor = 1.0, max = 0 }\n'))
    pids = wait_until(lambda: ready(out), SEEN, "web to set its handlers")
    p = hachain(r, "kill", "web")  # SIGTERM by default, as kill(1)
    assert p.stdout == f"web: SIGTERM sent to main pid {pids['main']}\n", p.stderr
    st = wait_until(lambda: (s := r.svc("web"))["restarts"] == 1 and s["state"] == "ready"
                    and s, 20, "web to be restarted after its SIGTERM")
    assert st["pid"] != pids["main"]


@pytest.mark.slow
def test_an_adopted_service_is_signalled_through_its_pidfd(restarter: Any,
                                                          tmp_path: Any) -> None:
    """After the restarter's own crash the service is no child of the new one: it holds
    a pidfd for it, and the signal goes through that."""
    out = tmp_path / "signals"
    r = restarter(body(out))
    pids = wait_until(lambda: ready(out), SEEN, "web to set its handlers")
    r.kill_restarter()
    r.start()
    assert r.wait_state("web", "ready")["pid"] == pids["main"]
    p = hachain(r, "kill", "web", "-s", "12")
    assert p.stdout == f"web: SIGUSR2 sent to main pid {pids['main']}\n", p.stderr
    wait_until(lambda: ["main", str(pids["main"]), "SIGUSR2"] in lines(out), SEEN,
               "the adopted main process to get SIGUSR2")


@pytest.mark.slow
def test_kill_refusals_name_what_is_wrong_and_change_nothing(restarter: Any,
                                                            tmp_path: Any) -> None:
    out = tmp_path / "signals"
    r = restarter(body(out) + f'[service.idle]\ncommand = {svc("sleep")}\nenabled = false\n')
    pids = wait_until(lambda: ready(out), SEEN, "web to set its handlers")
    p = hachain(r, "kill", "wbe", "-s", "HUP")
    assert (p.returncode, p.stdout, p.stderr) == (
        1, "", "hachain: kill wbe: SIGHUP: unknown service 'wbe' (did you mean 'web'?)\n")
    p = hachain(r, "kill", "idle")
    assert (p.returncode, p.stderr) == (
        1, "hachain: kill idle: SIGTERM: no running process to signal (stopped)\n")
    p = hachain(r, "kill", "web", "-s", "HUPP")
    assert p.returncode == 2 and p.stderr.splitlines()[-1] == (
        "hachain kill: error: argument -s/--signal: HUPP: unknown signal (did you mean HUP?)")
    p = hachain(r, "kill", "web", "-s", "0")
    assert p.returncode == 2 and "0: no such signal number (1-64)" in p.stderr
    # the control socket itself, as a script or a stray client would ask it
    for bad, error in (({"signal": 0}, "not a signal number: 0"),
                       ({"signal": "HUP"}, "not a signal number: 'HUP'"),
                       ({"signal": True}, "not a signal number: True"),
                       ({"signal": 999}, "not a signal number: 999"),
                       ({"signal": 1, "whom": "everyone"},
                        "whom must be \"main\" or \"all\", not 'everyone'"),
                       ({"signal": 1, "name": ["web"]}, "request 'kill' has no string 'name'")):
        rep = r.req_raw({"op": "kill", "name": "web", **bad})
        assert rep == {"ok": False, "error": error}, (bad, rep)
    r.beats(3)
    assert [ln for ln in lines(out) if ln[2] != "ready"] == []
    st = r.svc("web")
    assert (st["state"], st["pid"], st["restarts"]) == ("ready", pids["main"], 0)
