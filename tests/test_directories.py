"""`directories`: what systemd's RuntimeDirectory= and friends make, made by the restarter
before each start when missing, owned by the service's user; a path in the way fails the
start naming it. Real restarter, a real service that writes into its directory."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import wait_until


@pytest.fixture
def run_dir() -> Iterator[str]:
    """Stands for /run, a fresh tmpfs at each boot: outside pytest's own 0700 directory,
    so that the service's user can reach it."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the directory is handed to another user")
    run = tempfile.mkdtemp(prefix="hachain-test-run-")
    try:
        os.chmod(run, 0o755)
        yield run
    finally:
        shutil.rmtree(run, ignore_errors=True)


@pytest.mark.slow
def test_directories_are_made_for_the_service_at_each_start(restarter: Any,
                                                            run_dir: str) -> None:
    nobody = pwd.getpwnam("nobody")
    run = run_dir
    d = os.path.join(run, "web", "sockets")
    pid = os.path.join(d, "pid")
    body = (f'[service.web]\ncommand = ["/bin/sh", "-c", "echo up > {pid} && exec '
            f'sleep 1000"]\nuser = "nobody"\ndirectories = ["{d}"]\n')
    r = restarter(body)
    r.wait_state("web", "ready")
    wait_until(lambda: os.path.exists(pid), 20, "web to write into its directory")
    st = os.stat(d)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (
        nobody.pw_uid, nobody.pw_gid, 0o755)
    assert os.stat(os.path.join(run, "web")).st_uid == 0  # a parent made on the way
    # as after a reboot: gone, and made again for the next start
    os.unlink(pid)
    os.rmdir(d)
    assert r.req("restart", "web")["ok"]
    wait_until(lambda: os.path.exists(pid), 20, "the restarted web to find it again")


@pytest.mark.slow
def test_directory_mode_is_what_the_directory_is_made_with(restarter: Any,
                                                          run_dir: str) -> None:
    """redis-server.service's RuntimeDirectoryMode=2755: setgid kept after the chown,
    whatever the restarter's umask."""
    nobody = pwd.getpwnam("nobody")
    d = os.path.join(run_dir, "redis")
    r = restarter(f'[service.redis]\ncommand = ["/bin/sleep", "1000"]\nuser = "nobody"\n'
                  f'directories = ["{d}"]\ndirectory_mode = "2750"\numask = "077"\n')
    r.wait_state("redis", "ready")
    st = os.stat(d)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (nobody.pw_uid, 0o2750)


@pytest.mark.slow
def test_a_file_in_the_way_fails_the_start_naming_it(restarter: Any, tmp_path: Any) -> None:
    f = tmp_path / "notadir"
    f.write_text("precious\n")
    r = restarter(f'[service.web]\ncommand = ["/bin/sleep", "1000"]\ndirectories = "{f}"\n'
                  'backoff = { initial = 0.2, factor = 1.0, max = 0.2 }\n')
    wait_until(lambda: r.svc("web")["restarts"] >= 1, 20, "web's start to fail")
    assert f"directories = {f}: exists and is not a directory" in open(r.log).read()
    assert f.read_text() == "precious\n"
