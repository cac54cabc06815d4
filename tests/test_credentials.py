"""credentials (systemd's LoadCredential=): secrets a service gets a copy of at each
start, in $CREDENTIALS_DIRECTORY under state_dir, owned by its user, mode 0400.

A real restarter and services: a service that runs as nobody reads a root-only secret
through its copy; a changed source is read again at the next start; the copies go when
the service stops; a missing required source fails the start naming it, an optional one
and a searched name that no store has are left out; the stop command sees them too.
Then prepare() on its own, the configuration's checks and the import.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from hachain import config, credentials, importer
from hachain.configtypes import ServiceConfig
from tests.conftest import RestarterRun, wait_until

RUN_BOUND = 30.0  # a restarter answering, a /bin/sh; no chain timer involved
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the copies are owned by the "
                                "service's user (chown needs root)")


def log_of(r: RestarterRun, name: str) -> str:
    try:
        return open(os.path.join(r.persist_dir, "log", name + ".log")).read()
    except FileNotFoundError:
        return ""


def secret(tmp_path: Any, text: str) -> str:
    p = tmp_path / "secret"
    p.write_text(text)
    os.chmod(p, 0o600)  # root's alone: nobody cannot read it
    return str(p)


@pytest.fixture
def passable(tmp_path: Any) -> Iterator[None]:
    """tmp_path's directories (pytest makes them 0700) passable by the service's user,
    as a real state_dir under /run is; put back afterwards."""
    dirs, d = [], str(tmp_path)
    while d != "/tmp" and d != "/":
        dirs.append((d, stat.S_IMODE(os.stat(d).st_mode)))
        d = os.path.dirname(d)
    for d, mode in dirs:
        os.chmod(d, mode | 0o011)
    yield
    for d, mode in dirs:
        os.chmod(d, mode)


@needs_root
@pytest.mark.slow
def test_a_service_of_its_own_user_reads_its_copy_and_the_copy_goes_at_stop(
        restarter: Any, tmp_path: Any, passable: None) -> None:
    src = secret(tmp_path, "first")
    r = restarter(f'''
[service.web]
command = ["/bin/sh", "-c", "cat $CREDENTIALS_DIRECTORY/token; echo; ls -ln $CREDENTIALS_DIRECTORY; cat {src} >/dev/null 2>&1 || echo source-refused; exec sleep 600"]
user = "nobody"
credentials = {{ token = "{src}", absent = "-{tmp_path}/nope", stored = "hachain-test-none" }}
''')
    st = r.wait_state("web", "ready")
    d = credentials.directory(r.state_dir, "web")
    wait_until(lambda: "source-refused" in log_of(r, "web"), RUN_BOUND, "web's lines")
    log = log_of(r, "web")
    assert log.startswith("first\n"), log  # its copy, read as nobody
    assert "source-refused" in log  # ... not the source itself
    got = os.stat(os.path.join(d, "token"))
    assert (stat.S_IMODE(got.st_mode), got.st_uid) == (0o400, 65534)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o500
    assert sorted(os.listdir(d)) == ["token"]  # the optional and the searched: left out
    with open(f"/proc/{st['pid']}/environ", "rb") as f:
        assert f"CREDENTIALS_DIRECTORY={d}".encode() in f.read().split(b"\0")
    # a changed source is read again at the next start
    with open(src, "w") as f:
        f.write("second")
    assert r.req("restart", "web")["ok"]
    wait_until(lambda: log_of(r, "web").count("second\n") == 1, RUN_BOUND,
               "the restart's copy")
    assert r.req("stop", "web")["ok"]
    r.wait_state("web", "stopped", timeout=RUN_BOUND)
    assert not os.path.exists(d)


@pytest.mark.slow
def test_a_missing_required_source_fails_the_start_naming_it(restarter: Any,
                                                             tmp_path: Any) -> None:
    r = restarter(f'''
[service.db]
command = ["/bin/sleep", "600"]
credentials = {{ password = "{tmp_path}/gone" }}
restart = "never"
''')
    st = wait_until(lambda: (s := r.svc("db"))["state"] == "failed" and s, RUN_BOUND,
                    "db to fail")
    assert f"credentials.password: {tmp_path}/gone: No such file or directory" in \
        st["reason"], st
    assert not os.path.exists(credentials.directory(r.state_dir, "db"))


@pytest.mark.slow
def test_the_stop_command_sees_them_too(restarter: Any, tmp_path: Any) -> None:
    src = secret(tmp_path, "key")
    r = restarter(f'''
[service.db]
command = ["/bin/sleep", "600"]
credentials = {{ k = "{src}" }}
stop_command = ["/bin/sh", "-c", "echo stop sees $(cat $CREDENTIALS_DIRECTORY/k); kill $MAINPID"]
''')
    r.wait_state("db", "ready")
    assert r.req("stop", "db")["ok"]
    r.wait_state("db", "stopped", timeout=RUN_BOUND)
    wait_until(lambda: "stop sees key" in log_of(r, "db"), RUN_BOUND, "the stop command's line")


@needs_root
def test_check_says_when_the_user_cannot_reach_its_copies(tmp_path: Any, passable: None
                                                         ) -> None:
    shut = tmp_path / "shut"
    shut.mkdir(mode=0o700)
    p = tmp_path / "c.toml"
    p.write_text(f'[chain]\nstate_dir = "{shut}/run"\n[watchdog]\ndevice = "none"\n'
                 '[service.a]\ncommand = ["/bin/true"]\nuser = "nobody"\n'
                 'credentials = { k = "/etc/hostname" }\n')
    r = subprocess.run([sys.executable, "-m", "hachain.cli", "check", "-c", str(p)],
                       capture_output=True, text=True, timeout=60)
    assert f"service a: credentials: user nobody cannot reach its copies under " \
        f"chain.state_dir: {shut} is 0700 root:root" in r.stderr, r.stderr


def test_prepare_searches_the_stores_and_bounds_the_size(tmp_path: Any,
                                                         monkeypatch: Any) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / "api.token").write_text("t")
    (tmp_path / "big").write_bytes(b"x" * (credentials.MAX_BYTES + 1))
    monkeypatch.setattr(credentials, "SEARCH", (str(tmp_path / "none"), str(store)))
    state = tmp_path / "run"
    c = ServiceConfig("a", ("/bin/true",), credentials=(("api.token", "api.token"),))
    d = credentials.prepare(str(state), "a", c, None, None)
    assert open(os.path.join(d, "api.token")).read() == "t"
    big = ServiceConfig("a", ("/bin/true",), credentials=(("b", str(tmp_path / "big")),))
    with pytest.raises(credentials.CredentialError) as e:
        credentials.prepare(str(state), "a", big, None, None)
    assert str(e.value) == f"credentials.b: {tmp_path}/big: larger than 1048576 bytes"
    # the failed start left the earlier copies as they were, and no half-made directory
    assert sorted(os.listdir(state / "credentials")) == ["a"]


@needs_root
def test_a_full_state_dir_is_a_transient_failure_and_leaves_the_last_copies(
        tmp_path: Any) -> None:
    """state_dir on a tmpfs too small for a copy: one line naming it, transient (the
    restart policy tries again), the copies of the last start untouched, nothing half
    made left behind."""
    run = tmp_path / "run"
    run.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(run)], check=True,
                   timeout=30)
    try:
        small, big = tmp_path / "small", tmp_path / "big"
        small.write_text("s")
        big.write_bytes(b"x" * 200_000)
        ok = ServiceConfig("a", ("/bin/true",), credentials=(("k", str(small)),))
        d = credentials.prepare(str(run), "a", ok, None, None)
        full = ServiceConfig("a", ("/bin/true",), credentials=(("k", str(big)),))
        with pytest.raises(credentials.CredentialError) as e:
            credentials.prepare(str(run), "a", full, None, None)
        assert e.value.transient and "No space left on device" in str(e.value), e.value
        assert "\n" not in str(e.value)
        assert open(os.path.join(d, "k")).read() == "s"
        assert sorted(os.listdir(run / "credentials")) == ["a"]
    finally:
        subprocess.run(["umount", str(run)], check=False, timeout=30)


@pytest.mark.parametrize("body, error", [
    ('credentials = { "a/b" = "/x" }', "not a credential name"),
    ('credentials = { k = "etc/x" }', "must be an absolute path"),
    ('credentials = { k = "" }', "must not be empty"),
])
def test_config_refuses_what_cannot_be_a_credential(body: str, error: str) -> None:
    with pytest.raises(config.ConfigError) as e:
        config.parse(f'[service.a]\ncommand = ["/bin/true"]\n{body}\n', "c.toml")
    assert error in str(e.value), e.value.errors


def test_import_carries_load_credential() -> None:
    conv = importer.convert_systemd("[Service]\nExecStart=/bin/x\n"
                                    "LoadCredential=tls.key:/etc/ssl/private/x.key\n"
                                    "LoadCredential=api.token\n"
                                    "LoadCredential=bad:relative/path\n", "x.service")
    s = config.parse(importer.to_toml(conv, ["x.service"]), "i.toml").services["x"]
    assert s.credentials == (("api.token", "api.token"),
                             ("tls.key", "/etc/ssl/private/x.key"))
    assert any("LoadCredential: " in w and "absolute path" in w for w in conv.warnings)
