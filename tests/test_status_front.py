"""The native `hachain` front (hachain/_front.c): `hachain status` answered without a
Python interpreter, everything else the Python CLI's.

Its one promise is that what it prints is what `hachain-py` (the Python CLI) prints:
the restarter renders the output with hachain/status.py, and whatever the front is not
sure of goes to the CLI by exec. So the tests are comparisons and observations:

- which directory it asks, against `cmdline.dirs` (the CLI's own resolution), on
  plain and hypothesis-made configuration files, with fake control sockets that record
  the request (`status-doc` from the front; `status` from the CLI after a hand-over);
- a real chain: the same verdict, layers and services as the CLI, STATUS= text escaped,
  a stopped restarter handed over to the CLI (which judges it hung), no chain at all;
- every other command and option: the CLI's output and exit code, byte for byte.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hachain import channels, client, cmdline
from hachain.errors import ConfigError
from tests.conftest import KILLED_BOUND, SVC, wait_until
from tests.test_chain import Chain

BIN = os.path.dirname(sys.executable)
FRONT = os.path.join(BIN, "hachain")
CLI = os.path.join(BIN, "hachain-py")
PY = sys.executable
INJECT = "\x1b[2J\rfake"
ASK_TIMEOUT = 1.0  # hachain/_front.c ASK_TIMEOUT_MS


def _front_built() -> bool:
    try:
        with open(FRONT, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


# CI builds the front (scripts/setup.sh; gcc is there): there a missing front fails.
pytestmark = pytest.mark.skipif(
    not _front_built() and os.environ.get("CI") != "true",
    reason=f"{FRONT} is not the native front (no C compiler when setup.sh ran?)")


def test_the_front_is_installed() -> None:
    assert _front_built(), f"{FRONT} is not the native front: scripts/setup.sh installs it"
    assert os.access(CLI, os.X_OK), f"{CLI} (the Python CLI) is missing"


def run(exe: str, *args: str, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=env)


# --- everything else is the CLI's -------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["--help"], ["status", "--help"], ["status", "--bogus"], ["status", "--state-dir"],
    ["nonsense"], ["check", "-c", "/nonexistent/chain.toml"], ["status", "--cluster", "-c",
                                                               "/nonexistent/chain.toml"],
])
def test_other_commands_and_options_are_the_clis(args: list[str]) -> None:
    front, cli = run(FRONT, *args), run(CLI, *args)
    assert (front.returncode, front.stdout, front.stderr) == \
        (cli.returncode, cli.stdout, cli.stderr)


def test_no_chain_is_handed_over(tmp_path: Any) -> None:
    """No control socket: the CLI judges (every layer dead, exit 1), the front says the same."""
    args = ("status", "--state-dir", str(tmp_path / "run"), "--persist-dir",
            str(tmp_path / "persist"))
    (tmp_path / "run").mkdir()  # the chain's directory, with no chain running in it
    for extra in ((), ("--json",)):
        front, cli = run(FRONT, *args, *extra), run(CLI, *args, *extra)
        assert front.returncode == cli.returncode == 1
        assert front.stdout.splitlines()[0] == cli.stdout.splitlines()[0]
    assert json.loads(front.stdout)["chain"]["restarter_error"].endswith(
        "no control socket (is the restarter running?)")


# --- which directories: the same as the CLI's -----------------------------------------------

class FakeRestarter:
    """A control socket in `state_dir` that records each request and answers `status-doc`
    with a body naming this directory, and `status` with an empty table."""

    def __init__(self, state_dir: str) -> None:
        os.makedirs(state_dir, exist_ok=True)
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, channels.CONTROL_SOCKET)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.requests: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                buf = b""
                while not buf.endswith(b"\n"):
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    buf += chunk
                req = json.loads(buf)
                self.requests.append(req)
                if req["op"] == "status-doc":
                    body = f"served from {self.state_dir}\n".encode()
                    conn.sendall(channels.encode_message({"ok": True, "exit": 0,
                                                          "bytes": len(body)}) + body)
                else:
                    conn.sendall(channels.encode_message({"ok": True, "restarter": {},
                                                          "services": {}}))

    def ops(self) -> list[str]:
        return [r["op"] for r in self.requests]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture(scope="module")
def fakes(tmp_path_factory: Any) -> Iterator[dict[str, FakeRestarter]]:
    base = tmp_path_factory.mktemp("front")
    made = {k: FakeRestarter(str(base / k)) for k in ("a", "b", "env")}
    yield made
    for f in made.values():
        f.close()


def _cli_dirs(config: str | None, env: dict[str, str], **flags: str) -> tuple[str, str] | None:
    """The CLI's (state_dir, persist_dir), or None when it refuses the file."""
    old = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        return cmdline.dirs(argparse.Namespace(config=config, state_dir=flags.get("state"),
                                               persist_dir=flags.get("persist")))
    except ConfigError:
        return None
    finally:
        os.environ.clear()
        os.environ.update(old)


def _ask_front(fakes: dict[str, FakeRestarter], args: list[str],
               env: dict[str, str]) -> tuple[str | None, dict[str, Any] | None]:
    """(the directory the front asked with `status-doc`, its request), or (None, None)
    when it handed over (the CLI asked `status` instead)."""
    for f in fakes.values():
        f.requests.clear()
    r = run(FRONT, "status", *args, env=env)
    asked = [(k, f.requests[0]) for k, f in fakes.items() if f.ops() == ["status-doc"]]
    if asked:
        assert len(asked) == 1 and r.returncode == 0
        k, req = asked[0]
        assert r.stdout == f"served from {fakes[k].state_dir}\n"
        return fakes[k].state_dir, req
    return None, None


PLAIN = [
    ('[chain]\nstate_dir = "{a}"\npersist_dir = "{p}"\n', "a"),
    ("# a comment\n[ chain ]  # the chain\nstate_dir='{a}'   # here\nheartbeat_interval = 0.2\n"
     "restart_delay = 1_0\ncgroup_root = \"none\"\n\n[watchdog]\ndevice = \"none\"\n", "a"),
    ('[watchdog]\ntimeout = 10\n[chain]\nstate_dir = "{b}"\n[service.x]\ncommand = ["a"]\n',
     "b"),
    # one-line inline tables and arrays, strings with escapes and brackets in them
    ('[chain]\nboot_loop = {{ resets = 3, window = 900, action = "x]}}\\"" }}  # c\n'
     'state_dir = "{a}"\nx = [[1, 2], {{ y = \'[\' }}]\n', "a"),
]
UNSURE = [
    'chain.state_dir = "{a}"\n',                       # dotted keys
    '[chain]\nstate_dir = "{a}\\u0000"\n',              # an escape
    '[chain]\nstate_dir = "{a}"\nstate_dir = "{b}"\n',  # twice (the CLI refuses it)
    '[chain]\nstate_dir = "{a}"\n[chain]\nx = 1\n',     # the table twice
    '[chain]\nstate_dir = "{a}"\nx = """\n[chain]\n"""\n',  # a multi-line string
    '[chain]\nstate_dir = "{a}"\nname = "ünïcode"\n',   # not plain ASCII
    '[chain]\nstate_dir = "{a}"\nlist = [1,\n  2]\n',   # a value over two lines
    '[chain]\nstate_dir = "{a}"\nt = {{ a = "}}\n',      # a string not closed
    '[chain]\nstate_dir = "{a}"\nt = bare\n',            # not a TOML value
    '[chain]\nstate_dir = "{a}"\nt =\n',                 # no value
    '[chain]\nstate_dir = "relative/dir"\n',            # not absolute
    '[chain]\nstate_dir = "{a}"\n# state_dir = "{b}" was here\n',  # named elsewhere
    '[chain]\nstate_dir = "{a}\n',                     # not TOML at all
    '[chain]\nstate_dir = "{a}"\nx = 1\nx = 2\n',        # another key twice
    '[chain]\nstate_dir = "{a}"\nx = tru\n',            # values tomllib refuses ...
    '[chain]\nstate_dir = "{a}"\nx = 1 2\n',
    '[chain]\nstate_dir = "{a}"\nx = 01\n',
    '[chain]\nstate_dir = "{a}"\nx = 1__0\n',
    '[chain]\nstate_dir = "{a}"\nx = [1 2]\n',
    '[chain]\nstate_dir = "{a}"\nx = {{ a = 1, a = 2 }}\n',
    '[chain]\nstate_dir = "{a}"\nx = {{ a = 1, }}\n',
    '[chain]\nstate_dir = "{a}"\nx = "\\q"\n',
    '[chain]\nstate_dir = "{a}"\nx = 1979-05-27\n',    # ... or that it is not sure of
    '[chain]\nstate_dir = "{a}"\nx = 0x1f\n',
]


@pytest.mark.parametrize(("text", "want"), PLAIN)
def test_a_plain_chain_table_is_read_as_the_cli_reads_it(
        fakes: dict[str, FakeRestarter], tmp_path: Any, text: str, want: str) -> None:
    path = tmp_path / "chain.toml"
    persist = str(tmp_path / "persist")
    path.write_text(text.format(a=fakes["a"].state_dir, b=fakes["b"].state_dir, p=persist))
    env = {"PATH": os.environ["PATH"]}
    asked, req = _ask_front(fakes, ["-c", str(path)], env)
    assert asked == fakes[want].state_dir
    assert req is not None and req["json"] is False
    assert req["pidns"] == os.readlink("/proc/self/ns/pid")
    assert (asked, req["persist_dir"]) == _cli_dirs(str(path), env)
    # the environment names a state_dir: it wins over the file's, as in the CLI
    env2 = {**env, channels.ENV_STATE_DIR: fakes["env"].state_dir}
    asked, req = _ask_front(fakes, ["--json", f"--config={path}"], env2)
    assert asked == fakes["env"].state_dir and req is not None and req["json"] is True
    assert (asked, req["persist_dir"]) == _cli_dirs(str(path), env2)
    # and --state-dir wins over both
    asked, _ = _ask_front(fakes, ["-c", str(path), "--state-dir", fakes["b"].state_dir], env2)
    assert asked == fakes["b"].state_dir


@pytest.mark.parametrize("text", UNSURE)
def test_anything_else_in_the_file_is_handed_to_the_cli(
        fakes: dict[str, FakeRestarter], tmp_path: Any, text: str) -> None:
    path = tmp_path / "chain.toml"
    path.write_text(text.format(a=fakes["a"].state_dir, b=fakes["b"].state_dir))
    asked, _ = _ask_front(fakes, ["-c", str(path)], {"PATH": os.environ["PATH"]})
    assert asked is None


_value = st.one_of(
    st.sampled_from(['"{a}"', "'{a}'", '"{b}"', '"rel"', '"{a}\\t"', "1", "true", "1.5e3",
                     "[1, 2]", "{{ x = 1 }}", '"""{a}"""', '"é"', "tru", "1 2", "01", "[1 2]",
                     "[1, [2, {{ y = 'z' }}], ]", "{{ x = 1, x = 2 }}", "-inf", "1e", "0.5_1",
                     '"\\x"']))
_key = st.sampled_from(["state_dir", "persist_dir", "heartbeat_interval", "cgroup_root",
                        "chain.state_dir", "x-y"])
_line = st.one_of(
    st.tuples(_key, _value).map(lambda kv: f"{kv[0]} = {kv[1]}"),
    st.sampled_from(["[chain]", "[ chain ]", "[watchdog]", "[service.s]", "[chain.sub]",
                     "[[chain]]", "# state_dir", "", "command = [\"x\"]", "   ", "= 1"]))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(_line, max_size=8))
def test_the_front_never_asks_another_directory_than_the_cli(
        fakes: dict[str, FakeRestarter], tmp_path: Any, lines: list[str]) -> None:
    """On any file: the front either hands over, or asks exactly where the CLI would."""
    path = tmp_path / "chain.toml"
    path.write_text("\n".join(lines).format(a=fakes["a"].state_dir, b=fakes["b"].state_dir)
                    + "\n")
    env = {"PATH": os.environ["PATH"]}
    asked, req = _ask_front(fakes, ["-c", str(path)], env)
    if asked is not None:
        assert req is not None
        assert (asked, req["persist_dir"]) == _cli_dirs(str(path), env)


# --- a real chain -----------------------------------------------------------------------------

def _critical_state(args: tuple[str, ...]) -> Any:
    doc = json.loads(run(CLI, *args, "--json").stdout)
    return doc["chain"]["layers"]["restarter"]["extra"]["critical"]["db"]["state"]


def _shape(v: Any) -> Any:
    """`v` with every number blanked (ages and counters move between two calls)."""
    if isinstance(v, dict):
        return {k: _shape(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_shape(x) for x in v]
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return 0
    return v


@pytest.fixture
def chain(tmp_path: Any) -> Iterator[Chain]:
    c = Chain(str(tmp_path), f"""
[service.db]
command = {json.dumps([PY, SVC, "notify", "0", INJECT])}
ready = "notify"
critical = true

[service.worker]
command = {json.dumps([PY, SVC, "sleep"])}
""", restart_delay=3.0)
    try:
        yield c
    finally:
        c.close()


@pytest.mark.slow
def test_the_front_prints_what_the_cli_prints(chain: Chain) -> None:
    c = chain
    wait_until(lambda: c.all_ready(2), 30, "both services ready")
    args = ("status", "-c", c.config)
    wait_until(lambda: run(CLI, *args).returncode == 0, 15, "a healthy verdict")
    # the restarter's heartbeat (its critical table) is written once per beat: wait until a
    # beat has seen db ready, or the first call may read the beat before it and the second
    # the one after
    wait_until(lambda: _critical_state(args) == "ready", 15, "a beat that saw db ready")
    front, cli = run(FRONT, *args, "--json"), run(CLI, *args, "--json")
    a, b = json.loads(front.stdout), json.loads(cli.stdout)
    assert front.returncode == cli.returncode == 0
    assert a["verdict"] == b["verdict"] and a["verdict"]["state"] == "healthy"
    # the same document, up to the numbers that move between two calls; the layers' pids
    # are the same processes
    assert _shape(a) == _shape(b)
    assert {k: d["pid"] for k, d in a["chain"]["layers"].items()} == \
        {k: d["pid"] for k, d in b["chain"]["layers"].items()}
    assert a["services"]["db"]["status_text"] == INJECT
    # text: the same verdict and rows; the STATUS= text escaped
    front, cli = run(FRONT, *args), run(CLI, *args)
    assert front.returncode == cli.returncode == 0
    assert front.stdout.splitlines()[0] == "healthy" == cli.stdout.splitlines()[0]
    rows = [ln.split()[:2] for ln in front.stdout.splitlines() if ln.startswith(("db", "work"))]
    assert rows == [ln.split()[:2] for ln in cli.stdout.splitlines()
                    if ln.startswith(("db", "work"))] == [["db*", "ready"], ["worker", "ready"]]
    assert "\x1b" not in front.stdout and "[\\x1b[2J\\rfake]" in front.stdout
    # the restarter served it: the CLI wrote the last-known table, so did the restarter
    last = os.path.join(c.state_dir, channels.STATUS_LAST_TABLE)
    os.unlink(last)
    assert run(FRONT, *args).returncode == 0 and os.path.exists(last)


@pytest.mark.slow
def test_a_stopped_restarter_is_judged_by_the_cli(chain: Chain) -> None:
    """The front waits ASK_TIMEOUT for an answer, then hands over: the CLI sees the
    process stopped and says hung, with the last known table."""
    c = chain
    wait_until(lambda: c.all_ready(2), 30, "both services ready")
    args = ("status", "-c", c.config)
    # healthy once the tickler pets too; the restarter keeps the last known table
    wait_until(lambda: run(FRONT, *args).returncode == 0, 15, "a healthy verdict")
    hb = c.hb("restarter")
    assert hb is not None
    pid = hb.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_until(lambda: channels.proc_state(pid) in ("T", "t"), KILLED_BOUND, "stopped")
        t0 = time.monotonic()
        r = run(FRONT, *args)
        took = time.monotonic() - t0
        assert r.returncode == 1, r.stdout + r.stderr
        assert r.stdout.startswith(f"degraded: restarter hung (pid {pid} stopped"), r.stdout
        assert "last known services," in r.stdout
        assert took >= ASK_TIMEOUT  # it did wait for the answer before handing over
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_until(lambda: run(FRONT, *args).returncode == 0, 15, "healthy again")


@pytest.mark.slow
def test_status_doc_refuses_other_namespaces_and_directories(chain: Chain) -> None:
    c = chain
    wait_until(lambda: c.all_ready(2), 30, "both services ready")
    ours = os.readlink("/proc/self/ns/pid")
    for req, why in (({"pidns": "pid:[1]", "persist_dir": c.persist_dir},
                      "asked from another PID namespace"),
                     ({"persist_dir": c.persist_dir}, "asked from another PID namespace"),
                     ({"pidns": ours, "persist_dir": "/elsewhere"},
                      "another persist_dir than this chain's"),
                     ({"pidns": ours, "persist_dir": 7}, "another persist_dir than this chain's")):
        rep = client.request(c.state_dir, {"op": "status-doc", **req}, timeout=10)
        assert rep == {"ok": False, "error": why}
    # the same request, right: a reply line with the length, then the document
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(os.path.join(c.state_dir, channels.CONTROL_SOCKET))
    s.sendall(channels.encode_message({"op": "status-doc", "json": True, "pidns": ours,
                                       "persist_dir": c.persist_dir}))
    data = b""
    while chunk := s.recv(1 << 16):
        data += chunk
    s.close()
    head, _, body = data.partition(b"\n")
    rep = json.loads(head)
    assert rep["ok"] is True and rep["bytes"] == len(body) and rep["exit"] in (0, 1)
    assert set(json.loads(body)["services"]) == {"db", "worker"}


def test_the_shipped_example_configuration_is_read_by_the_front(
        fakes: dict[str, FakeRestarter], tmp_path: Any) -> None:
    """deploy/chain.toml.example, what users start from, takes the fast path."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "deploy", "chain.toml.example")) as f:
        text = f.read()
    assert 'state_dir = "/run/hachain"' in text
    path = tmp_path / "chain.toml"
    path.write_text(text.replace('state_dir = "/run/hachain"',
                                 f'state_dir = "{fakes["a"].state_dir}"'))
    env = {"PATH": os.environ["PATH"]}
    asked, req = _ask_front(fakes, ["-c", str(path)], env)
    assert asked == fakes["a"].state_dir
    assert req is not None and (asked, req["persist_dir"]) == _cli_dirs(str(path), env)
