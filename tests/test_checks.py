"""Machine checks ([check.NAME], docs/checks.md): the verdicts and the streak (pure), the
restarter's runner with real files, threads, processes and sockets, and the gate's rule."""

from __future__ import annotations

import ctypes
import errno
import json
import math
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hachain import checks, config
from hachain.checks import Seen, Streak, Verdict
from hachain.configtypes import CheckConfig, WatchdogConfig
from hachain.restarter import machine, spawn
from hachain.restarter.machine import MachineChecks
from hachain.watchdog import health
from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(120)


def check(**kw: Any) -> CheckConfig:
    """A check as the file would give it (parsed, so the schema's rules hold)."""
    name = kw.pop("name", "c")
    lines = [f"[check.{name}]"] + [f"{k} = {json.dumps(v)}" for k, v in kw.items()]
    return config.parse("\n".join(lines) + "\n", "x.toml").checks[name]


# --- the verdicts -----------------------------------------------------------------------

def test_load_reads_the_chosen_average() -> None:
    text = "0.52 3.58 7.59 1/389 12345\n"
    assert checks.load_verdict(text, check(kind="load", max_load=1)).ok
    v = checks.load_verdict(text, check(kind="load", max_load=3, average=5))
    assert not v.ok and v.detail == "load average (5 min) 3.58 > 3"
    assert v.code == checks.EMAXLOAD == 253  # the watchdog daemon's number
    assert checks.load_verdict(text, check(kind="load", max_load=8, average=15)).ok
    assert checks.load_verdict("garbage", check(kind="load", max_load=8)) == \
        Verdict(False, "/proc/loadavg unreadable: 'garbage'", checks.ENOLOAD)
    with open("/proc/loadavg") as f:  # this machine's, as the runner reads it
        assert checks.load_verdict(f.read(), check(kind="load", max_load=1e6)).ok


def test_memory_compares_memavailable() -> None:
    text = "MemTotal:  1000000 kB\nMemFree:  1000 kB\nMemAvailable:   51200 kB\n"
    assert checks.memory_verdict(text, check(kind="memory", min_available="50M")).ok
    v = checks.memory_verdict(text, check(kind="memory", min_available="64M"))
    assert not v.ok and v.detail == "50 MiB available < 64 MiB" and v.code == errno.ENOMEM
    assert not checks.memory_verdict("MemTotal: 1 kB\n", check(kind="memory",
                                                               min_available=1)).ok
    with open("/proc/meminfo") as f:
        assert checks.memory_verdict(f.read(), check(kind="memory", min_available=1)).ok


def test_temperature_is_read_in_millidegrees() -> None:
    c = check(kind="temperature", path="/sys/x/temp", max_temperature=80)
    assert checks.temperature_verdict("79500\n", c).ok
    v = checks.temperature_verdict("85250\n", c)
    assert not v.ok and v.detail == "/sys/x/temp: 85.25 °C > 80 °C"
    assert v.code == checks.ETOOHOT == 252
    assert not checks.temperature_verdict("N/A", c).ok


def test_pid_files() -> None:
    assert checks.pid_in("1234\n") == 1234
    for bad in ("", "abc", "-5", "0", "99999999"):
        assert isinstance(checks.pid_in(bad), str), bad


def test_file_age_is_timed_by_the_monotonic_clock_after_the_first_look() -> None:
    c = check(kind="file", path="/x", max_age=10)
    wall = 1_000_000 * 10**9
    v, seen = checks.file_verdict(wall - 4 * 10**9, wall, None, 100.0, c)  # 4 s old
    assert v.ok and seen == Seen(wall - 4 * 10**9, 96.0)
    # the wall clock steps a day ahead: the unchanged file is not older for it
    v, seen = checks.file_verdict(wall - 4 * 10**9, wall + 86400 * 10**9, seen, 105.0, c)
    assert v.ok
    v, seen = checks.file_verdict(wall - 4 * 10**9, wall, seen, 107.0, c)
    assert not v.ok and v.detail == "/x: unchanged for 11 s > 10 s"
    assert v.code == checks.ENOCHANGE == 250
    v, seen = checks.file_verdict(wall + 1, wall, seen, 108.0, c)  # touched
    assert v.ok and seen.changed == 108.0


def test_an_interface_must_keep_receiving() -> None:
    c = check(kind="interface", interface="eth0")
    v, seen = checks.interface_verdict(100, None, 1.0, c)
    assert v.ok
    v, seen = checks.interface_verdict(100, seen, 11.0, c)
    assert not v.ok and v.detail == "eth0: nothing received for 10 s (100 bytes)"
    v, seen = checks.interface_verdict(150, seen, 12.0, c)
    assert v.ok and seen == Seen(150, 12.0)


# --- the streak ----------------------------------------------------------------------------

BAD, GOOD = Verdict(False, "bad"), Verdict(True, "good")


def test_a_failure_counts_after_retry_timeout_then_each_repair_then_fails() -> None:
    c = check(command=["/bin/true"], retry_timeout=30, repair=[["/r1"], ["/r2"]])
    st = Streak()
    st, act = checks.observe(st, GOOD, 0.0, c)
    assert (st.state, act) == (checks.OK, None)
    st, act = checks.observe(st, BAD, 10.0, c)
    assert (st.state, act, st.since) == (checks.FAILING, None, 10.0)
    st, act = checks.observe(st, BAD, 39.0, c)
    assert (st.state, act) == (checks.FAILING, None)
    st, act = checks.observe(st, BAD, 40.0, c)  # 30 s of failing: the first repair
    assert (st.state, act, st.repairs) == (checks.REPAIRING, checks.REPAIR, 1)
    st = checks.repaired(st, Verdict(True, "exit status 0"), 45.0)
    assert (st.state, st.since) == (checks.FAILING, 45.0)  # 30 s again from the repair
    st, act = checks.observe(st, BAD, 74.0, c)
    assert act is None
    st, act = checks.observe(st, BAD, 75.0, c)
    assert (act, st.repairs) == (checks.REPAIR, 2)
    st = checks.repaired(st, Verdict(False, "exit status 1"), 76.0)
    st, act = checks.observe(st, BAD, 106.0, c)
    assert (st.state, act) == (checks.FAILED, checks.FAIL)
    rep = checks.report(st, c, False, 106.0)
    assert rep["ok"] is False and rep["failing_for"] == 96.0  # since its first failing try
    st, act = checks.observe(st, BAD, 116.0, c)  # said once
    assert (st.state, act) == (checks.FAILED, None)
    st, act = checks.observe(st, GOOD, 120.0, c)
    assert (st.state, act, st.repairs, st.since) == (checks.OK, checks.RECOVER, 0, None)
    assert checks.report(st, c, False, 120.0)["ok"] is True


def test_a_log_check_or_a_held_one_never_fails_the_gate() -> None:
    st = Streak(state=checks.FAILED, since=0.0)
    assert checks.report(st, check(command=["/x"], action="log"), False, 5.0)["ok"] is True
    rep = checks.report(st, check(command=["/x"]), True, 5.0)
    assert rep["ok"] is True and rep["state"] == checks.HELD


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.floats(0, 50)), max_size=40),
       st.floats(0, 100), st.integers(0, 3))
def test_a_streak_fails_only_after_retry_timeout_and_every_repair(
        tries: list[tuple[bool, float]], retry: float, repairs: int) -> None:
    c = check(command=["/bin/true"], retry_timeout=retry,
              repair=[["/r"]] * repairs if repairs else [])
    st, now, began, ran = Streak(), 0.0, None, 0
    for ok, gap in tries:
        now += gap
        st, act = checks.observe(st, Verdict(ok, ""), now, c)
        if ok:
            assert st.state == checks.OK and st.since is None and st.repairs == 0
            began, ran = None, 0
            continue
        began = began if began is not None else now
        assert st.since is not None and now - st.since <= now - began
        if act == checks.REPAIR:
            ran += 1
            assert ran <= repairs and st.since is not None and now - st.since >= retry
            st = checks.repaired(st, Verdict(True, ""), now)
        if act == checks.FAIL or st.state == checks.FAILED:
            assert ran == repairs and now - began >= retry


# --- the gate -----------------------------------------------------------------------------

def test_the_gate_fails_on_a_check_reported_not_ok() -> None:
    assert health.check_reasons(None, []) == []
    assert health.check_reasons({"net": {"ok": True, "state": "failing"}}, []) == []
    assert health.check_reasons({"net": {"ok": False, "detail": "10.0.0.1: no echo reply "
                                         "within 5 s"}}, []) == \
        ["check net failed: 10.0.0.1: no echo reply within 5 s"]
    sink: list[str] = []
    assert health.check_reasons("x", sink) == [] and "malformed" in sink[0]
    r = health.restarter_reasons({"checks": {"m": {"ok": False, "detail": "d"}}},
                                 WatchdogConfig(gate_critical=False))
    assert r == ["check m failed: d"]  # (a check's own action says; not gate_critical)


# --- the runner: real files, threads, processes -------------------------------------------

class Runner:
    """A MachineChecks driven as the restarter's loop drives it."""

    def __init__(self, conf: dict[str, CheckConfig], grid: float = 0.05) -> None:
        self.sel = selectors.DefaultSelector()
        self.lines: list[str] = []
        self.m = MachineChecks(conf, grid, self.sel, self.lines.append)
        self.groups: set[int] = set()  # process groups of the commands seen running

    def run_until(self, cond: Any, within: float, what: str) -> Any:
        end = time.monotonic() + within
        while time.monotonic() < end:
            now = time.monotonic()
            t = self.m.next_event()
            if t is not None and t <= now:
                self.m.tick(now)
                continue
            wait = 0.05 if t is None else min(0.05, max(0.0, t - now))
            for key, _ in self.sel.select(wait):
                self.m.on_event(key.data[1], time.monotonic())
            while (got := spawn.exited_child()) is not None:  # as the loop's SIGCHLD path
                spawn.keep_for_later(*got)
                spawn.release(got[0])
            self.groups |= self._commands()
            if (got := cond()):
                return got
        raise AssertionError(f"not within {within} s: {what}; log: {self.lines}")

    def state(self, name: str) -> str:
        return self.m.streaks[name].state

    def _commands(self) -> set[int]:
        """The process groups of the commands running, which are our children (a repair
        the last restarter left has no pid in its probe: 0 would be our own group)."""
        return {t.probe.pid for t in self.m.running.values() if t.probe and t.probe.pid}

    def close(self) -> None:
        """Kill what runs, then reap every process of the commands' groups (their
        children too: this test process is a subreaper), so no test leaves a child."""
        self.groups |= self._commands()
        self.m.close()
        self.sel.close()
        end = time.monotonic() + 30
        for pgid in self.groups:
            while time.monotonic() < end:
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                try:
                    if os.waitpid(-pgid, os.WNOHANG)[0] == 0:
                        time.sleep(0.01)
                except ChildProcessError:
                    break


@pytest.fixture
def runner() -> Iterator[list[Runner]]:
    made: list[Runner] = []
    yield made
    for r in made:
        r.close()


def test_inline_and_threaded_kinds_pass_on_a_healthy_machine(
        tmp_path: Path, runner: list[Runner]) -> None:
    alive = tmp_path / "alive"
    alive.write_text("x")
    pidfile = tmp_path / "pid"
    pidfile.write_text(f"{os.getpid()}\n")
    sensor = tmp_path / "temp"
    sensor.write_text("42000\n")
    conf = {
        "load": check(name="load", kind="load", max_load=1e6, interval=0.1),
        "mem": check(name="mem", kind="memory", min_available=1, interval=0.1),
        "lo": check(name="lo", kind="interface", interface="lo", interval=0.5),  # (pinged)
        "file": check(name="file", kind="file", path=str(alive), max_age=60, interval=0.1),
        "pid": check(name="pid", kind="pidfile", path=str(pidfile), interval=0.1),
        "temp": check(name="temp", kind="temperature", path=str(sensor),
                      max_temperature=70, interval=0.1),
        "ping": check(name="ping", kind="ping", host="127.0.0.1", interval=0.2),
        "cmd": check(name="cmd", command=["/bin/true"], interval=0.2),
    }
    r = Runner(conf)
    runner.append(r)
    r.run_until(lambda: all(r.m.streaks[n].tries >= 2 for n in conf) and
                r.state("lo") == checks.OK, 30, "two tries each")
    assert {n: r.state(n) for n in conf} == dict.fromkeys(conf, checks.OK), r.lines
    rep = r.m.report(time.monotonic())
    assert all(x["ok"] for x in rep.values())
    assert rep["ping"]["detail"].startswith("127.0.0.1: echo reply in ")
    assert rep["temp"]["detail"] == "42 °C" and rep["cmd"]["detail"] == "exit status 0"
    assert r.m.standing() is None  # nothing failed: no checks.json to write


def test_a_read_that_hangs_fails_by_its_timeout_and_blocks_nothing(
        tmp_path: Path, runner: list[Runner]) -> None:
    """A FIFO nobody writes in place of the sensor: open() waits for good, as a read of a
    hung mount does. The try fails at its timeout; the other checks go on; the stuck
    thread starts no second try; a write releases it."""
    fifo = tmp_path / "temp"
    os.mkfifo(fifo)
    conf = {"temp": check(name="temp", kind="temperature", path=str(fifo),
                          max_temperature=70, interval=0.3, timeout=0.2,
                          retry_timeout=0.5),
            "load": check(name="load", kind="load", max_load=1e6, interval=30)}
    t0 = time.monotonic()
    r = Runner(conf)
    runner.append(r)
    r.run_until(lambda: r.m.streaks["temp"].failures >= 1, 30, "the first failure")
    assert time.monotonic() - t0 >= 0.2
    assert r.m.streaks["temp"].detail == "no answer within 0.2 s"
    r.run_until(lambda: r.state("temp") == checks.FAILED, 30, "failed for good")
    assert "the last try has not returned for" in r.m.streaks["temp"].detail
    # load: tried at once, then at each point of its 30 s grid of CLOCK_MONOTONIC that
    # passed (one in ~20 runs crosses one), never at temp's pace, never held by its thread
    period = r.m.period(conf["load"])
    crossed = int(time.monotonic() // period) - int(t0 // period)
    assert r.m.streaks["load"].tries in (max(1, crossed), 1 + crossed), crossed
    assert r.state("load") == checks.OK
    threads = [t for t in __import__("threading").enumerate() if t.name == "check-temp"]
    assert len(threads) == 1  # one stuck try, not one per interval
    # the mount answers again: the stuck read gets its value, and later tries a file
    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    (tmp_path / "real").write_text("40000\n")
    os.replace(tmp_path / "real", fifo)
    os.write(fd, b"40000\n")
    os.close(fd)
    r.run_until(lambda: r.state("temp") == checks.OK, 30, "the check to pass again")
    assert any(line.startswith("check temp: passes again") for line in r.lines), r.lines


def test_a_command_that_runs_past_its_timeout_is_killed(
        tmp_path: Path, runner: list[Runner]) -> None:
    mark = tmp_path / "pids"
    cmd = ["/bin/sh", "-c", f"echo $$ >> {mark}; sleep 600 & echo $! >> {mark}; wait"]
    r = Runner({"cmd": check(name="cmd", command=cmd, interval=0.5, timeout=0.3)})
    runner.append(r)
    r.run_until(lambda: r.m.streaks["cmd"].failures >= 1, 30, "the command to time out")
    assert r.m.streaks["cmd"].detail == "no answer within 0.3 s"
    pids = [int(x) for x in mark.read_text().split()[:2]]  # the first try's (more follow)
    r.run_until(lambda: not any(os.path.exists(f"/proc/{p}") for p in pids), 30,
                "the command and its child killed and reaped")


def test_repairs_run_in_turn_then_the_check_fails(tmp_path: Path,
                                                    runner: list[Runner]) -> None:
    mark = tmp_path / "repairs"
    c = check(name="cmd", command=["/bin/false"], interval=0.1, retry_timeout=0.2,
              repair=[["/bin/sh", "-c", f"echo one >> {mark}"],
                      ["/bin/sh", "-c", f"echo two >> {mark}; exit 3"]])
    r = Runner({"cmd": c})
    runner.append(r)
    r.run_until(lambda: r.state("cmd") == checks.FAILED, 30, "failed after both repairs")
    assert mark.read_text().split() == ["one", "two"]
    joined = "\n".join(r.lines)
    assert "repair 1 of 2: /bin/sh -c echo one" in joined
    assert "repair 2 ended (exit status 3)" in joined
    assert "check cmd: FAILED after 2 repair(s)" in joined
    assert r.m.report(time.monotonic())["cmd"]["ok"] is False


def test_a_repair_that_fixes_it(tmp_path: Path, runner: list[Runner]) -> None:
    flag = tmp_path / "fixed"
    c = check(name="cmd", command=["/bin/test", "-e", str(flag)], interval=0.1,
              retry_timeout=0.1, repair=[["/bin/touch", str(flag)]])
    r = Runner({"cmd": c})
    runner.append(r)
    r.run_until(lambda: r.m.streaks["cmd"].repairs == 1, 30, "the repair")
    r.run_until(lambda: r.state("cmd") == checks.OK, 30, "the check to pass after it")
    assert r.m.streaks["cmd"].repairs == 0 and "check cmd: passes again" in "\n".join(r.lines)


def test_a_repair_is_told_which_check_failed_how_and_the_error_number(
        tmp_path: Path, runner: list[Runner]) -> None:
    """As the watchdog daemon passes its repair-binary the error number: a command
    check's exit status, a file's ENOCHANGE (250), a timed-out try's ETOOLONG (247)."""
    out = tmp_path / "env"
    dump = ["/bin/sh", "-c", f'env | grep ^HACHAIN_CHECK | sort > {out}.$HACHAIN_CHECK']
    old = tmp_path / "old"
    old.write_text("x")
    os.utime(old, (1, 1))  # 1970: older than any max_age
    # (the tries that must answer get 2 s, their timeout being at most their interval: a
    # shell that exits took more than 0.1 s on a loaded host, CI 2026-12-06)
    conf = {
        "cmd": check(name="cmd", command=["/bin/sh", "-c", "exit 42"], interval=2.0,
                     retry_timeout=0.1, repair=[dump, dump]),
        "file": check(name="file", kind="file", path=str(old), max_age=5, interval=2.0,
                      retry_timeout=0.1, repair=[dump]),
        "slow": check(name="slow", command=["/bin/sleep", "60"], interval=0.3, timeout=0.1,
                      retry_timeout=0.1, repair=[dump]),
    }
    r = Runner(conf)
    runner.append(r)
    r.run_until(lambda: all(r.state(n) == checks.FAILED for n in conf), 30, "all failed")

    def env(name: str) -> dict[str, str]:
        return dict(line.split("=", 1) for line in
                    (tmp_path / f"env.{name}").read_text().splitlines())
    assert env("cmd") == {"HACHAIN_CHECK": "cmd", "HACHAIN_CHECK_KIND": "command",
                          "HACHAIN_CHECK_ERROR": "42", "HACHAIN_CHECK_REPAIR": "2",
                          "HACHAIN_CHECK_REPAIRS": "2",
                          "HACHAIN_CHECK_DETAIL": "exit status 42"}  # (the second's)
    assert env("file")["HACHAIN_CHECK_ERROR"] == "250"
    assert env("file")["HACHAIN_CHECK_DETAIL"].startswith(f"{old}: unchanged for ")
    assert (env("slow")["HACHAIN_CHECK_ERROR"], env("slow")["HACHAIN_CHECK_DETAIL"]) == \
        ("247", "no answer within 0.1 s")
    st = r.m.status(time.monotonic())
    assert (st["cmd"]["error"], st["file"]["error"], st["slow"]["error"]) == (42, 250, 247)


def test_reload_keeps_unchanged_checks_and_drops_removed_ones(runner: list[Runner]) -> None:
    a = check(name="a", kind="load", max_load=1e6, interval=0.1)
    b = check(name="b", command=["/bin/sleep", "600"], interval=1, timeout=1)
    r = Runner({"a": a, "b": b})
    runner.append(r)
    r.run_until(lambda: "b" in r.m.running and r.m.streaks["a"].tries >= 2, 30, "both")
    pid = r.m.running["b"].probe.pid  # type: ignore[union-attr]
    tries = r.m.streaks["a"].tries
    r.m.update({"a": a}, time.monotonic())
    assert set(r.m.conf) == {"a"} and r.m.streaks["a"].tries == tries
    r.run_until(lambda: not os.path.exists(f"/proc/{pid}"), 30, "b's command killed")


def _in_a_netns_without_loopback() -> None:
    """(Child) a network namespace of its own, its lo down: nothing answers there."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x40000000) != 0:  # CLONE_NEWNET
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
    c = check(kind="ping", host="127.0.0.1", timeout=0.3)
    v = machine.ping(c.host, c.timeout)
    print(f"{v.ok} {v.detail}")


@pytest.mark.skipif(os.geteuid() != 0, reason="a network namespace needs root")
def test_ping_fails_where_nothing_answers() -> None:
    code = ("import sys; sys.path.insert(0, %r); from tests.test_checks import "
            "_in_a_netns_without_loopback as f; f()" % os.getcwd())
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() in ("False 127.0.0.1: Network is unreachable",
                                "False 127.0.0.1: no echo reply within 0.3 s"), p.stdout


def test_the_runner_wakes_only_on_the_heartbeat_grid(runner: list[Runner]) -> None:
    """Tries land on the restarter's heartbeat grid: an interval is rounded up to a
    multiple of it, and every try is due at a multiple of the grid."""
    c = check(name="a", kind="load", max_load=1e6, interval=1.3)
    r = Runner({"a": c}, grid=0.5)
    runner.append(r)
    assert r.m.period(c) == 1.5
    for _ in range(3):
        t = r.m.next_event()
        assert t is not None and abs(t / 0.5 - round(t / 0.5)) < 1e-6
        r.run_until(lambda t=t: r.m.next_event() != t, 30, "the try")


def test_a_command_that_ignores_sigterm_is_killed_all_the_same(tmp_path: Path, runner: list[Runner]) -> None:
    """A command that ignores SIGTERM is still gone at its timeout (SIGKILL to its group)."""
    cmd = ["/bin/sh", "-c", "trap '' TERM; sleep 600"]
    r = Runner({"c": check(name="c", command=cmd, interval=0.5, timeout=0.2)})
    runner.append(r)
    r.run_until(lambda: "c" in r.m.running, 30, "the command to start")
    pid = r.m.running["c"].probe.pid  # type: ignore[union-attr]
    r.run_until(lambda: r.m.streaks["c"].failures >= 1, 30, "the timeout")

    def group_gone() -> bool:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        return False
    r.run_until(group_gone, 30, "its process group to be gone")


def test_hachain_check_says_what_a_check_cannot_do_on_this_host(tmp_path: Path) -> None:
    cfg = tmp_path / "chain.toml"
    cfg.write_text('[service.a]\ncommand = ["/bin/true"]\n'
                   '[check.t]\nkind = "temperature"\npath = "/sys/class/hwmon/none/temp1"\n'
                   'max_temperature = 80\n'
                   '[check.i]\nkind = "interface"\ninterface = "nosuch0"\n'
                   '[check.c]\ncommand = ["no-such-program"]\nrepair = [["/bin/true"], '
                   '["/no/such/repair"], ["/bin/sh", "-c", \'exec "$0" "$@" '
                   '"$HACHAIN_CHECK_ERROR"\', "/no/such/wrapped"]]\naction = "log"\n'
                   '[check.ok]\nkind = "interface"\ninterface = "lo"\n')
    p = subprocess.run([sys.executable, "-m", "hachain.cli", "check", "-c", str(cfg)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "1 service(s), 0 critical, 4 machine check(s) (3 gating)" in p.stdout
    lines = [x.split("warning: ", 1)[1] for x in p.stderr.splitlines() if "warning: check" in x]
    assert lines == [
        "check t: path = /sys/class/hwmon/none/temp1: no such sensor file here: every try "
        "would fail",
        "check i: interface = nosuch0: no such interface here: every try would fail",
        "check c: command[0] = no-such-program: not found in PATH "
        "(/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)",
        "check c: repair[1] = /no/such/repair: No such file or directory",
        # (the program `hachain import` wraps for the watchdog daemon's arguments)
        "check c: repair[2] = /no/such/wrapped: No such file or directory"], p.stderr


def test_a_real_restarter_reports_its_checks_and_reload_changes_them(
        restarter: Any) -> None:
    """Through the control socket and the heartbeat the tickler reads: a check added by
    `reload` starts pending and passes, an unchanged one keeps its standing, a removed
    one is gone; `hachain clear check:NAME` of a check no rescue holds says so."""
    from hachain import channels, client
    run = restarter('[service.a]\ncommand = ["/bin/sleep", "600"]\n'
                    '[check.load]\nkind = "load"\nmax_load = 1000000\ninterval = 0.2\n'
                    '[check.gone]\ncommand = ["/bin/true"]\ninterval = 0.2\n')
    run.wait_state("a", "ready")

    def checks() -> dict[str, Any]:
        return client.request(run.state_dir, {"op": "status"})["checks"]
    wait_until(lambda: checks().get("load", {}).get("tries", 0) >= 2, 30, "two tries")
    hb = wait_until(lambda: (h := channels.read_heartbeat(run.state_dir, "restarter"))
                    and "load" in (h.extra.get("checks") or {}) and h, 30, "the heartbeat")
    assert hb.extra["checks"]["load"]["ok"] is True
    tries = checks()["load"]["tries"]
    with open(run.config, "a") as f:
        f.write('[check.new]\nkind = "memory"\nmin_available = 1\ninterval = 0.2\n')
    text = open(run.config).read().replace(
        '[check.gone]\ncommand = ["/bin/true"]\ninterval = 0.2\n', "")
    with open(run.config, "w") as f:
        f.write(text)
    assert run.req("reload")["ok"]
    got = wait_until(lambda: (c := checks()).get("new", {}).get("state") == "ok" and c, 30,
                     "the new check to pass")
    assert set(got) == {"load", "new"} and got["load"]["tries"] >= tries
    rep = client.request(run.state_dir, {"op": "clear", "name": "check:load"})
    assert rep == {"ok": False, "error": "check load: not held by a rescue boot"}
    bad = client.request(run.state_dir, {"op": "clear", "name": "check:no/such"})
    assert bad["ok"] is False and "not a check name" in bad["error"], bad


def test_what_a_check_leaves_behind_goes_with_it_but_a_repair_may_start_things(
        tmp_path: Path, runner: list[Runner]) -> None:
    """A check that forks (a test that starts a helper and exits 0) would leave one more
    process at every try: its process group is killed when it exits. A repair that starts
    something (a DHCP client) keeps it."""
    left = tmp_path / "left"
    kept = tmp_path / "kept"
    c = check(name="c", command=["/bin/sh", "-c", f"sleep 600 & echo $! > {left}"],
              interval=0.2)
    fix = check(name="fix", command=["/bin/false"], interval=0.2, retry_timeout=0,
                repair=[["/bin/sh", "-c", f"sleep 600 & echo $! > {kept}"]],
                action="log")
    r = Runner({"c": c, "fix": fix})
    runner.append(r)
    r.run_until(lambda: left.exists() and left.read_text().strip()
                and r.m.streaks["c"].tries >= 1, 30, "a try of c")
    orphan = int(left.read_text())
    r.run_until(lambda: not os.path.exists(f"/proc/{orphan}") or
                open(f"/proc/{orphan}/stat").read().split()[2] == "Z", 30,
                "what the check left to be killed")
    r.run_until(lambda: kept.exists() and kept.read_text().strip(), 30, "the repair")
    helper = int(kept.read_text())
    try:
        r.run_until(lambda: r.m.streaks["fix"].state == checks.FAILED, 30, "failed")
        assert open(f"/proc/{helper}/stat").read().split()[2] != "Z"  # still running
    finally:
        os.kill(helper, signal.SIGKILL)


def test_what_checks_and_repairs_print_is_in_their_log(restarter: Any) -> None:
    """A real restarter and logger: the command's and the repair's stdout and stderr end
    in `check:NAME`'s log, which `hachain logs check:NAME` prints; a check that prints
    nothing has no log; an unknown check is named."""
    run = restarter('[service.a]\ncommand = ["/bin/sleep", "600"]\n'
                    '[check.net]\ncommand = ["/bin/sh", "-c", "echo probing; '
                    'echo no carrier >&2; exit 7"]\ninterval = 0.2\nretry_timeout = 0.2\n'
                    'repair = [["/bin/sh", "-c", "echo fixing $HACHAIN_CHECK error '
                    '$HACHAIN_CHECK_ERROR"]]\naction = "log"\n'
                    '[check.quiet]\ncommand = ["/bin/true"]\ninterval = 0.2\n')
    run.wait_state("a", "ready")
    log_dir = os.path.join(run.persist_dir, "log")
    path = os.path.join(log_dir, "check:net.log")

    def logged() -> str:
        try:
            return open(path).read()
        except FileNotFoundError:
            return ""
    wait_until(lambda: "fixing net error 7" in logged() and logged().count("probing") >= 2,
               30, f"the repair's line in {path}")
    assert "no carrier" in logged()
    cli = [sys.executable, "-m", "hachain.cli", "logs", "-c", run.config]
    p = subprocess.run([*cli, "-n", "all", "check:net"], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0 and "fixing net error 7" in p.stdout, p.stderr
    assert not os.path.exists(os.path.join(log_dir, "check:quiet.log"))
    p = subprocess.run([*cli, "check:nosuch"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "check:nosuch: no such check (configured: a, check:net, " \
        "check:quiet)" in p.stderr, p.stderr
    p = subprocess.run([*cli, "check:../../etc/x"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "check:../../etc/x: not a check name" in p.stderr, p.stderr


# --- the standing carried over to the next restarter ----------------------------------

def test_a_failing_streak_is_saved_and_taken_back() -> None:
    c = check(command=["/bin/false"], retry_timeout=30, repair=[["/r1"], ["/r2"]])
    st = Streak()
    assert checks.saved(st, None, "k") is None  # nothing to carry while not failing
    st, _ = checks.observe(st, Verdict(False, "bad", 7), 10.0, c)
    st, act = checks.observe(st, Verdict(False, "bad", 7), 40.0, c)
    assert (st.state, act) == (checks.REPAIRING, checks.REPAIR)
    d = json.loads(json.dumps(checks.saved(st, Seen(5, 3.0), "k")))  # through the file
    back = checks.restored(d, "k", 50.0, c.repair_timeout)
    assert not isinstance(back, str) and back is not None
    # a repair in flight that the last restarter could not name: taken as ended now
    assert back == (replace(st, state=checks.FAILING, since=50.0), Seen(5, 3.0), None)
    assert back.streak.began == 10.0 and back.streak.repairs == 1 and back.streak.code == 7
    st, act = checks.observe(back.streak, Verdict(False, "bad", 7), 80.0, c)
    assert (act, st.repairs) == (checks.REPAIR, 2)  # the next one, not the first again
    failed = replace(st, state=checks.FAILED)
    assert checks.restored(checks.saved(failed, None, "k"), "k", 90.0, 60.0) == \
        (failed, None, None)
    assert checks.restored(d, "other", 50.0, 60.0) is None  # the configuration changed


def test_a_repair_in_flight_is_saved_and_taken_back_in_flight() -> None:
    """The repair running when the standing was written comes back with its pid, start
    time and deadline, the streak still `repairing`; only a repairing streak carries one,
    and a deadline further than repair_timeout from now is not this boot's."""
    c = check(command=["/bin/false"], retry_timeout=30, repair_timeout=20,
              repair=[["/r1"], ["/r2"]])
    st, _ = checks.observe(Streak(), Verdict(False, "bad", 7), 10.0, c)
    st, act = checks.observe(st, Verdict(False, "bad", 7), 40.0, c)
    assert (st.state, act) == (checks.REPAIRING, checks.REPAIR)
    fly = checks.InFlight(4321, 987654, 60.0)
    d = json.loads(json.dumps(checks.saved(st, None, "k", fly)))  # through the file
    assert d["repair"] == {"pid": 4321, "start_time": 987654, "deadline": 60.0}
    back = checks.restored(d, "k", 45.0, c.repair_timeout)
    assert back == checks.Restored(st, None, fly)  # not ended: still repairing
    assert checks.taken_as_ended(st, 46.0) == replace(st, state=checks.FAILING, since=46.0)
    # the repair ended: nothing in flight is saved any more
    ended = checks.repaired(st, Verdict(False, "status unknown"), 50.0)
    assert "repair" not in (checks.saved(ended, None, "k", fly) or {})
    for bad, why in (({**d, "state": checks.FAILING}, "a repair under way in state"),
                     ({**d, "repair": [4321, 987654, 60.0]}, "not a table"),
                     ({**d, "repair": {**d["repair"], "pid": 1}}, "repair pid is 1"),
                     ({**d, "repair": {**d["repair"], "pid": True}}, "repair pid is True"),
                     ({**d, "repair": {**d["repair"], "start_time": -1}}, "start_time"),
                     ({**d, "repair": {**d["repair"], "deadline": 66.0}}, "deadline"),
                     ({**d, "repair": {**d["repair"], "deadline": math.nan}}, "deadline")):
        got = checks.restored(bad, "k", 45.0, c.repair_timeout)
        assert isinstance(got, str) and why in got, (bad, got)


def _nested(inner: Any) -> Any:
    return st.lists(inner) | st.dictionaries(st.text(), inner)


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                    _nested, max_leaves=12),
       st.sampled_from(["state", "since", "began", "repairs", "code", "seen", "detail",
                        "repair", "repair.pid", "repair.start_time", "repair.deadline"]))
@settings(max_examples=300, deadline=None)
def test_any_saved_standing_is_taken_back_or_named(junk: Any, field: str) -> None:
    """Whatever a file holds: a streak, None, or one line; never an exception, never a
    time after now or not a number, never a repair in flight past repair_timeout from
    now or beside a streak that is not repairing."""
    good = checks.saved(Streak(state=checks.REPAIRING, since=1.0, began=1.0, detail="x",
                               code=3, repairs=1), Seen(1, 1.0), "k",
                        checks.InFlight(1234, 5678, 90.0))
    assert good is not None and "repair" in good
    outer, _, inner = field.partition(".")
    changed = {**good, outer: {**good[outer], inner: junk} if inner else junk}
    for d in (junk, changed):
        got = checks.restored(d, "k", 100.0, 20.0)
        if isinstance(got, tuple):
            s, seen, fly = got
            for t in (s.since, s.began, s.last_try):
                assert t is None or (math.isfinite(t) and t <= 100.0)
            assert seen is None or seen.changed <= 100.0
            assert fly is None or (s.state == checks.REPAIRING and 1 < fly.pid
                                   and fly.start_time >= 0
                                   and math.isfinite(fly.deadline)
                                   and fly.deadline <= 120.0)
            assert fly is not None or s.state != checks.REPAIRING
        else:
            assert got is None or (isinstance(got, str) and "\n" not in got)


def test_a_restarter_killed_mid_failure_hands_the_failure_on(restarter: Any) -> None:
    """A restarter SIGKILLed while a check fails, then a new one: the failure goes on
    (its first failing try, its repairs run) instead of starting afresh; the check then
    fails after its last repair, as if no restarter had died. A changed check is not
    taken back."""
    from hachain import client
    run = restarter('[service.a]\ncommand = ["/bin/sleep", "600"]\n'
                    '[check.net]\ncommand = ["/bin/false"]\ninterval = 0.2\n'
                    'retry_timeout = 1.5\nrepair = [["/bin/true"], ["/bin/true"]]\n'
                    'action = "log"\n')
    run.wait_state("a", "ready")

    def net() -> dict[str, Any]:
        return client.request(run.state_dir, {"op": "status"})["checks"]["net"]
    first = wait_until(lambda: (c := net())["repairs"] >= 1 and c["state"] == "failing"
                       and c, 30, "the first repair to have run")
    path = os.path.join(run.state_dir, "checks.json")
    saved = wait_until(lambda: os.path.exists(path) and json.load(open(path)), 10,
                       "the standing written")
    assert saved["checks"]["net"]["repairs"] >= 1, saved
    assert run.proc is not None
    run.proc.kill()
    run.proc.wait(timeout=30)
    run.start()
    again = net()
    assert again["state"] in ("failing", "repairing", "failed"), again
    assert again["repairs"] >= first["repairs"]  # not 0: the repairs are not run again
    assert again["failing_for"] >= first["failing_for"]  # counted from its first failure
    log = open(run.log).read()
    assert "check net: failing for " in log and "carried over from the last restarter" in log
    done = wait_until(lambda: (c := net())["state"] == "failed" and c, 30, "failed")
    assert done["repairs"] == 2  # two repairs in all, across both restarters
    # a changed check starts afresh
    run.proc.kill()
    run.proc.wait(timeout=30)
    text = open(run.config).read().replace("retry_timeout = 1.5", "retry_timeout = 60")
    with open(run.config, "w") as f:
        f.write(text)
    run.start()
    assert net()["repairs"] == 0
    assert "its configuration changed: the last restarter's standing is not taken back" \
        in open(run.log).read()


def _group_runs(pgid: int) -> list[int]:
    """The processes of group `pgid` that have not exited (zombies are not counted)."""
    from hachain import channels
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit() and (f := channels.proc_fields(int(d))) is not None \
                and f[2] == str(pgid).encode() and f[0] not in (b"Z", b"X"):
            out.append(int(d))
    return out


def test_a_repair_left_running_is_taken_back_only_as_that_same_process(
        runner: list[Runner]) -> None:
    """The last restarter's repair, named by pid and start time: a process with that pid
    but another start time (a pid reused), or one that exited (a zombie init has not
    reaped yet), is taken as ended; the same process is watched and its group killed at
    the saved deadline, then the check has retry_timeout again."""
    from hachain import channels
    c = check(name="net", command=["/bin/false"], retry_timeout=60, repair_timeout=30,
              repair=[["/bin/true"], ["/bin/true"]], action="log")
    key = MachineChecks.key(c)
    now = time.monotonic()
    st, _ = checks.observe(Streak(), Verdict(False, "bad", 1), now - 70, c)
    st, act = checks.observe(st, Verdict(False, "bad", 1), now - 5, c)
    assert act == checks.REPAIR
    procs = [subprocess.Popen(["/bin/sh", "-c", "sleep 600 & wait"], process_group=0)
             for _ in range(2)]
    try:
        live, dead = procs
        os.killpg(dead.pid, signal.SIGKILL)  # a zombie until it is reaped (Popen.wait)
        wait_until(lambda: channels.proc_state(dead.pid) == "Z", 30, "a zombie")
        start = channels.proc_start_time(live.pid)
        assert start is not None

        def left(pid: int, start_time: int, deadline: float) -> dict[str, Any]:
            d = checks.saved(st, None, key, checks.InFlight(pid, start_time, deadline))
            assert d is not None
            return {"net": d}
        for pid, start_time, why in ((live.pid, start + 1, "another process's now"),
                                     (dead.pid, channels.proc_start_time(dead.pid) or 0,
                                      "is gone")):
            r = Runner({"net": c})
            runner.append(r)
            r.m.close()
            m = MachineChecks({"net": c}, 0.05, r.sel, r.lines.append,
                              restored=left(pid, start_time, now + 25))
            assert m.streaks["net"].state == checks.FAILING and not m.running
            assert m.streaks["net"].repairs == 1 and why in r.lines[-1], r.lines
            assert channels.pid_alive(live.pid)  # not ours to kill: only taken as ended
            m.close()
        r = Runner({"net": c})
        runner.append(r)
        r.m.close()
        deadline = time.monotonic() + 1.0
        r.m = MachineChecks({"net": c}, 0.05, r.sel, r.lines.append,
                            restored=left(live.pid, start, deadline))
        assert r.state("net") == checks.REPAIRING and "still runs" in r.lines[-1]
        assert r.m.standing() == left(live.pid, start, deadline)  # handed on as it was
        r.run_until(lambda: r.state("net") == checks.FAILING, 30, "killed at its deadline")
        assert time.monotonic() >= deadline
        assert wait_until(lambda: not _group_runs(live.pid), 30, "its whole group gone")
        assert r.lines[-1] == "check net: repair 1 ended (no answer within 30 s)"
        assert r.m.streaks["net"].since is not None and r.m.streaks["net"].since >= deadline
        assert "repair" not in (r.m.standing() or {}).get("net", {})
    finally:
        for p in procs:
            if _group_runs(p.pid):  # (its leader may be reaped already: see run_until)
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=30)


def test_a_repair_left_running_ends_with_the_status_the_kernel_kept(
        runner: list[Runner]) -> None:
    """Its reaper (init in the chain; this test here) takes its exit status; Linux >= 6.15
    keeps it for the pidfd, and the end is logged with it (older kernels: unknown)."""
    from hachain import channels
    c = check(name="net", command=["/bin/false"], retry_timeout=60, repair_timeout=30,
              repair=[["/bin/true"], ["/bin/true"]], action="log")
    now = time.monotonic()
    st, _ = checks.observe(Streak(), Verdict(False, "bad", 1), now - 70, c)
    st, _ = checks.observe(st, Verdict(False, "bad", 1), now - 5, c)
    p = subprocess.Popen(["/bin/sh", "-c", "read x; exit 3"], stdin=subprocess.PIPE,
                         process_group=0)
    try:
        start = channels.proc_start_time(p.pid)
        assert start is not None
        d = checks.saved(st, None, MachineChecks.key(c), checks.InFlight(p.pid, start, now + 25))
        r = Runner({"net": c})
        runner.append(r)
        r.m.close()
        r.m = MachineChecks({"net": c}, 0.05, r.sel, r.lines.append, restored={"net": d})
        assert r.state("net") == checks.REPAIRING and "still runs" in r.lines[-1]
        assert p.stdin is not None
        p.stdin.close()
        assert p.wait(timeout=30) == 3  # reaped here, as init reaps it in the chain
        r.run_until(lambda: r.state("net") == checks.FAILING, 30, "the repair's end")
        how = "exit status 3;" if spawn.kernel_keeps_exit_status() else "status unknown:"
        assert r.lines[-1] == f"check net: repair 1 ended ({how} it outlived the " \
            "restarter that started it)", r.lines
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=30)


# A repair that records its start and its end in the file $1, with its pid and the
# monotonic time: "start N PID T", then "end N PID T". `wait`: it ends once the file $3
# exists; `hang`: it starts `sleep 600` in its process group ("child N PID T") and waits
# for it, so it ends only when its group is killed. $4: the Python that reads the clock.
RECORDING_REPAIR = """#!/bin/sh
rec=$1 mode=$2 go=$3 py=$4
mono() { "$py" -c 'import time; print(f"{time.monotonic():.3f}")'; }
echo "start $HACHAIN_CHECK_REPAIR $$ $(mono)" >> "$rec"
if [ "$mode" = hang ]; then
    sleep 600 &
    echo "child $HACHAIN_CHECK_REPAIR $! $(mono)" >> "$rec"
    wait
else
    while [ ! -e "$go" ]; do sleep 0.05; done
fi
echo "end $HACHAIN_CHECK_REPAIR $$ $(mono)" >> "$rec"
"""


def _recorded(path: Path) -> list[tuple[str, int, int, float]]:
    """The complete lines of a recording repair's file: (what, repair, pid, time)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines(keepends=True):
        w = line.split()
        if line.endswith("\n") and len(w) == 4:
            out.append((w[0], int(w[1]), int(w[2]), float(w[3])))
    return out


def test_a_repair_under_way_outlives_its_restarter_and_is_waited_for(
        restarter: Any, tmp_path: Path) -> None:
    """A restarter SIGKILLed while two repairs run: the next one takes both back in
    flight. Check `slow`'s second repair starts only after its first one's end (which
    the new restarter sees through a pidfd, status unknown), and retry_timeout after it;
    check `hung`'s repair, which never ends, is killed with what it started at the
    deadline the first restarter gave it (started + repair_timeout), not earlier."""
    from hachain import channels, client
    from tests.conftest import LIVENESS, heartbeat_window
    script = tmp_path / "repair.sh"
    script.write_text(RECORDING_REPAIR)
    go = tmp_path / "go"
    slow_rec, hung_rec = tmp_path / "slow.rec", tmp_path / "hung.rec"
    retry, hung_timeout = 0.5, 15.0

    def repair(rec: Path, mode: str) -> list[str]:
        return ["/bin/sh", str(script), str(rec), mode, str(go), sys.executable]
    run = restarter(
        '[service.a]\ncommand = ["/bin/sleep", "600"]\n'
        f'[check.slow]\ncommand = ["/bin/false"]\ninterval = 0.2\nretry_timeout = {retry}\n'
        f'repair = {json.dumps([repair(slow_rec, "wait")] * 2)}\n'
        'repair_timeout = 3600\naction = "log"\n'
        f'[check.hung]\ncommand = ["/bin/false"]\ninterval = 0.2\nretry_timeout = {retry}\n'
        f'repair = {json.dumps([repair(hung_rec, "hang")])}\n'
        f'repair_timeout = {hung_timeout}\naction = "log"\n')
    started: dict[int, int | None] = {}  # every pid the repairs recorded: its start time

    def note(rec: Path) -> list[tuple[str, int, int, float]]:
        lines = _recorded(rec)
        for _, _, pid, _ in lines:
            if pid not in started:
                started[pid] = channels.proc_start_time(pid)
        return lines

    def gone(pid: int) -> bool:
        return not channels.pid_alive(pid) or channels.proc_start_time(pid) != started[pid]

    def checks_now() -> dict[str, Any]:
        return client.request(run.state_dir, {"op": "status"})["checks"]

    path = os.path.join(run.state_dir, "checks.json")

    def in_flight() -> dict[str, Any] | None:
        try:
            d = json.load(open(path))["checks"]
        except (OSError, ValueError):
            return None
        return d if all("repair" in d.get(n, {}) for n in ("slow", "hung")) else None
    try:
        run.wait_state("a", "ready")
        wait_until(lambda: any(w[0] == "start" for w in note(slow_rec)) and any(
            w[0] == "child" for w in note(hung_rec)), LIVENESS, "both first repairs")
        saved = wait_until(in_flight, LIVENESS, "both repairs named in checks.json")
        hung = saved["hung"]["repair"]
        slow_pid = next(w[2] for w in note(slow_rec) if w[0] == "start")
        assert saved["slow"]["repair"]["pid"] == slow_pid
        assert hung["pid"] == next(w[2] for w in note(hung_rec) if w[0] == "start")
        assert hung["start_time"] == started[hung["pid"]]
        old_file = os.stat(path).st_ino
        run.kill_restarter()
        run.start()
        log = open(run.log).read()
        for name, pid in (("slow", slow_pid), ("hung", hung["pid"])):
            assert f"check {name}: repairing for " in log, log
            assert f"repair 1 (pid {pid}) still runs" in log, log
        # the new restarter's first write names them as the last one did
        wait_until(lambda: os.stat(path).st_ino != old_file, LIVENESS, "checks.json rewritten")
        back = in_flight()
        assert back is not None and back["hung"]["repair"] == hung, back
        # no second repair of `slow` beside the first: well past retry_timeout, by the
        # new restarter's own clock, it still waits for it
        heartbeat_window(lambda: (h := channels.read_heartbeat(run.state_dir, "restarter"))
                         and h.pid == run.proc.pid and h, 4 * retry, "the new restarter")
        assert [w[0] for w in note(slow_rec)] == ["start"]
        assert checks_now()["slow"]["state"] == "repairing"
        go.touch()
        wait_until(lambda: [w[0] for w in note(slow_rec)] == ["start", "end", "start", "end"],
                   LIVENESS, "slow's first repair to end, then its second to run")
        (_, n1, _, t_start1), (_, _, _, t_end1), (_, n2, _, t_start2), _ = note(slow_rec)
        assert (n1, n2) == (1, 2)
        # seen ended, then retry_timeout again (less the rounding of the two stamps)
        assert t_start2 >= t_end1 + retry - 0.001
        # init reaped it; Linux >= 6.15 keeps its status for the pidfd (the script exits 0)
        # (its status: kept by Linux >= 6.15 once its reaper took it, and this test's
        # orphans have none that reaps at once: test_a_repair_left_running_ends_with_...)
        assert re.search(r"check slow: repair 1 ended \((exit status 0;|status unknown:) it "
                         r"outlived the restarter that started it\)", open(run.log).read())
        # `hung` and what it started: killed at its deadline, which the restart did not
        # move; the test's clock and the restarter's are the same CLOCK_MONOTONIC
        child = next(w[2] for w in note(hung_rec) if w[0] == "child")
        wait_until(lambda: gone(hung["pid"]) and gone(child),
                   max(0.0, hung["deadline"] - time.monotonic()) + LIVENESS,
                   "the hung repair killed at its deadline")
        assert time.monotonic() >= hung["deadline"]
        assert [w[0] for w in note(hung_rec)] == ["start", "child"]  # killed: no end
        # (said in the round that killed it: the line may reach the log a moment after)
        line = f"check hung: repair 1 ended (no answer within {hung_timeout:g} s)"
        wait_until(lambda: line in open(run.log).read(), LIVENESS, "the hung repair's end")
        done = wait_until(lambda: (c := checks_now())["slow"]["state"] == "failed" and c,
                          LIVENESS, "slow failed after its two repairs")
        assert done["slow"]["repairs"] == 2
    finally:  # whatever of the repairs still runs (a repair's group is its pid)
        leaders = {w[2] for r in (slow_rec, hung_rec) for w in _recorded(r)
                   if w[0] == "start"}
        for pid, start in started.items():
            if start is None or channels.proc_start_time(pid) != start:
                continue
            try:
                if pid in leaders:
                    os.killpg(pid, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def test_a_standing_not_taken_back_is_written_over(runner: list[Runner]) -> None:
    """An entry the new restarter does not take (its check changed meanwhile) is dropped
    from the file at its first write: a later restarter, with the check as it was, must
    not take a failure that long ended back."""
    old = check(name="net", command=["/bin/false"], retry_timeout=60)
    st, _ = checks.observe(Streak(), Verdict(False, "bad", 1), time.monotonic() - 5, old)
    saved = {"net": checks.saved(st, None, MachineChecks.key(old))}
    new = check(name="net", command=["/bin/false"], retry_timeout=30)
    r = Runner({"net": new})
    runner.append(r)
    r.m.close()
    m = MachineChecks({"net": new}, 0.05, r.sel, r.lines.append, restored=saved)
    assert m.streaks["net"] == Streak() and m.standing() == {}  # written: nothing fails
    assert "its configuration changed" in "\n".join(r.lines)
    assert m.standing() is None  # and not again until something changes
    m.close()
    back = MachineChecks({"net": old}, 0.05, r.sel, r.lines.append, restored=saved)
    assert back.streaks["net"].state == checks.FAILING  # the same check takes it back
    assert back.standing() == saved
    back.close()
