"""env_file with a real restarter: the files are read at each start, their variables win
over `env`, a "-" file may be missing, any other missing file fails the start naming it
(and the next start after it appears succeeds), a bad line is left out with one warning."""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.conftest import wait_until

SHOW = ('command = ["/bin/sh", "-c", "echo \\"A=$A B=$B C=$C\\"; exec sleep 1000"]\n'
        'backoff = { initial = 0.2, factor = 1.0, max = 0.2 }\n'
        'intensity = { action = "ignore" }\n')
LOGGED = 20.0  # a line the service printed reaches its log through the logger


def log_of(r: Any, name: str) -> str:
    try:
        return open(os.path.join(r.persist_dir, "log", name + ".log")).read()
    except FileNotFoundError:
        return ""


@pytest.mark.slow
def test_env_files_replace_env_and_are_read_at_each_start(restarter: Any, tmp_path: Any) -> None:
    first, second = tmp_path / "first.env", tmp_path / "second.env"
    first.write_text("# the defaults\nA=from-first\nB='b one'\nexport X=1\n")
    second.write_text('B="b two"\n')
    r = restarter(f'[service.web]\n{SHOW}env = {{ A = "from-env", C = "c" }}\n'
                  f'env_file = ["{first}", "-{tmp_path}/absent.env", "{second}"]\n')
    r.wait_state("web", "ready")
    wait_until(lambda: "A=from-first B=b two C=c\n" in log_of(r, "web"), LOGGED,
               "web to print the variables of its env files")
    # the left-out line: one warning naming file and line
    log = open(r.log).read()
    assert f"web: warning: env_file {first}: line 4: not NAME=VALUE: 'export X=1': left " \
           "out" in log
    # edited on disk: the next start reads it again (systemd's behaviour)
    first.write_text("A=edited\n")
    assert r.req("restart", "web")["ok"]
    wait_until(lambda: "A=edited B=b two C=c\n" in log_of(r, "web"), LOGGED,
               "the restarted web to see the edited file")


@pytest.mark.slow
def test_a_missing_env_file_fails_the_start_naming_it(restarter: Any, tmp_path: Any) -> None:
    needed = tmp_path / "needed.env"
    r = restarter(f'[service.web]\n{SHOW}env_file = "{needed}"\n')
    st = wait_until(lambda: (s := r.svc("web"))["restarts"] >= 1 and s, 20,
                    "web's start to fail")
    assert st["pid"] is None
    log = open(r.log).read()
    assert f"env_file = {needed}: No such file or directory" in log, log[-2000:]
    needed.write_text("A=at-last\n")  # the policy's next try finds it
    r.wait_state("web", "ready", timeout=20)
    wait_until(lambda: "A=at-last B= C=\n" in log_of(r, "web"), LOGGED, "web to start")


@pytest.mark.slow
def test_a_fifo_as_env_file_is_refused_not_waited_on(restarter: Any, tmp_path: Any) -> None:
    fifo = tmp_path / "fifo.env"
    os.mkfifo(fifo)
    r = restarter(f'[service.web]\n{SHOW}env_file = "-{fifo}"\n')  # "-" is for missing only
    wait_until(lambda: r.svc("web")["restarts"] >= 1, 20, "web's start to fail")
    assert f"env_file = {fifo}: not a regular file (a FIFO)" in open(r.log).read()
    assert r.ping()  # the restarter never waited for a writer


@pytest.mark.slow
def test_an_env_file_too_large_to_be_one_is_refused_unread(restarter: Any,
                                                           tmp_path: Any) -> None:
    big = tmp_path / "big.env"
    with open(big, "wb") as f:
        f.truncate(2 << 20)  # sparse: 2 MiB of nothing
    r = restarter(f'[service.web]\n{SHOW}env_file = "{big}"\n')
    wait_until(lambda: r.svc("web")["restarts"] >= 1, 20, "web's start to fail")
    assert f"env_file = {big}: larger than 1048576 bytes" in open(r.log).read()
