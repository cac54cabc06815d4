"""`hachain run` of a file that already ran (issue 19, start-up): the configuration it
parsed and validated then is kept next to the last-known-good snapshot, and the next
accept of the very same text, file and code starts from it, without importing the
schema or validating again. Anything else is parsed as before."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hachain import channels, config, snapshot
from tests.test_tickler_robust import hung_mount

TEXT = """
[chain]
state_dir = "{d}/run{boot}"
persist_dir = "{d}/persist"
cgroup_root = "none"
[watchdog]
device = "none"
[service.a]
command = ["/bin/sleep", "1000"]
restart = "always"
"""

# a later boot: /run is empty, only persist_dir is left; the accept in a fresh process
ACCEPT = """
import json, sys
from hachain import snapshot
cfg, snap = snapshot.accept(sys.argv[1], chain_id="c2", last_good=False, kept=True)
print(json.dumps({"schema": "hachain.schema" in sys.modules,
                  "config": "hachain.config" in sys.modules,
                  "tomllib": "tomllib" in sys.modules, "inspect": "inspect" in sys.modules,
                  "services": sorted(cfg.services), "state_dir": cfg.chain.state_dir,
                  "restart": cfg.services["a"].restart}))
"""


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("HACHAIN_")}


def _accept_in_a_fresh_process(path: Path, env: dict[str, str] | None = None,
                               kept: bool = True) -> dict:
    code = ACCEPT if kept else ACCEPT.replace(", kept=True", "")
    out = subprocess.run([sys.executable, "-S", "-c", code, str(path)], capture_output=True,
                         text=True, timeout=60, env=env or _env(),
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_the_next_run_of_the_same_file_does_not_parse_it_again(tmp_path: Path) -> None:
    f = tmp_path / "chain.toml"
    f.write_text(TEXT.format(d=tmp_path, boot=1))
    cfg, _ = snapshot.accept(str(f), chain_id="c1", environ=_env())
    kept = tmp_path / "persist" / channels.LAST_GOOD_PARSED
    assert kept.is_file()
    got = _accept_in_a_fresh_process(f)
    assert got == {"schema": False, "config": False, "tomllib": False, "inspect": False,
                   "services": ["a"],
                   "state_dir": str(tmp_path / "run1"), "restart": "always"}
    # what it starts from is what parsing gives
    assert snapshot.cached_parse(f.read_text(), str(f), snapshot.digest(f.read_text()),
                                 _env()) == config.parse(f.read_text(), str(f))
    assert cfg.services["a"].restart == "always"
    # the running copy the layers load is the kept one, byte for byte (not pickled again)
    running = tmp_path / "run1" / channels.RUNNING_PARSED
    assert running.read_bytes() == kept.read_bytes()
    snap = snapshot.read_running(str(tmp_path / "run1"))
    assert snap is not None
    assert snapshot._load_parsed(str(tmp_path / "run1"), snap) == \
        config.parse(f.read_text(), str(f))


def test_an_edited_file_is_parsed_and_validated_again(tmp_path: Path) -> None:
    f = tmp_path / "chain.toml"
    f.write_text(TEXT.format(d=tmp_path, boot=1))
    snapshot.accept(str(f), chain_id="c1", environ=_env())
    f.write_text(TEXT.format(d=tmp_path, boot=2).replace('"always"', '"on-failure"'))
    got = _accept_in_a_fresh_process(f)
    assert got["config"] and got["restart"] == "on-failure"
    # without `kept` (every caller but `hachain run`) the file is parsed anyway
    assert _accept_in_a_fresh_process(f, kept=False)["config"]
    assert got["state_dir"] == str(tmp_path / "run2")
    # and an edit that breaks it is an error, not the copy of what ran before
    f.write_text(TEXT.format(d=tmp_path, boot=1).replace('"always"', '"alwayz"'))
    out = subprocess.run([sys.executable, "-S", "-c", ACCEPT.replace(
        'last_good=False', 'last_good=False, fallback=False'), str(f)],
        capture_output=True, text=True, timeout=60, env=_env())
    assert out.returncode != 0 and "alwayz" in out.stderr


def test_a_copy_of_another_file_or_code_or_one_anybody_may_write_is_not_taken(
        tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "chain.toml"
    text = TEXT.format(d=tmp_path, boot=1)
    f.write_text(text)
    snapshot.accept(str(f), chain_id="c1", environ=_env())
    sha = snapshot.digest(text)
    assert snapshot.cached_parse(text, str(f), sha, _env()) is not None
    # the same text in another file
    assert snapshot.cached_parse(text, str(tmp_path / "other.toml"), sha, _env()) is None
    # other code (an upgrade, an edit of the package)
    monkeypatch.setattr(snapshot, "_code_tag", lambda: "another build")
    assert snapshot.cached_parse(text, str(f), sha, _env()) is None
    monkeypatch.undo()
    # a copy others may write: never unpickled
    kept = tmp_path / "persist" / channels.LAST_GOOD_PARSED
    os.chmod(kept, 0o666)
    assert snapshot.cached_parse(text, str(f), sha, _env()) is None
    os.chmod(kept, 0o600)
    # a damaged copy (a crash while writing it): parsed as before
    kept.write_bytes(kept.read_bytes()[:40])
    assert snapshot.cached_parse(text, str(f), sha, _env()) is None
    cfg, _ = snapshot.accept(str(f), chain_id="c3", environ=_env())
    assert list(cfg.services) == ["a"]


def test_the_persist_dir_override_is_where_the_copy_is_looked_for(tmp_path: Path) -> None:
    f = tmp_path / "chain.toml"
    text = TEXT.format(d=tmp_path, boot=1)
    f.write_text(text)
    other = tmp_path / "elsewhere"
    env = _env() | {channels.ENV_PERSIST_DIR: str(other)}
    snapshot.accept(str(f), chain_id="c1", environ=env)
    assert (other / channels.LAST_GOOD_PARSED).is_file()
    assert not (tmp_path / "persist" / channels.LAST_GOOD_PARSED).exists()
    sha = snapshot.digest(text)
    assert snapshot.cached_parse(text, str(f), sha, env) is not None
    assert snapshot.cached_parse(text, str(f), sha, _env()) is None


@pytest.mark.slow
def test_a_persist_dir_that_does_not_answer_costs_the_deadline_not_a_hang(
        tmp_path: Path) -> None:
    """persist_dir on a FUSE mount whose server never answers (a hung NFS mount, a disk in
    error recovery): the kept copy is looked for by a child given KEPT_READ_TIMEOUT, and
    `hachain run` goes on parsing the file, instead of waiting for good on its way to
    init (and to the watchdog being armed)."""
    mnt = tmp_path / "hung"
    with hung_mount(mnt):
        f = tmp_path / "chain.toml"
        text = TEXT.format(d=tmp_path, boot=1).replace(f'"{tmp_path}/persist"',
                                                        f'"{mnt}/persist"')
        f.write_text(text)
        t0 = time.monotonic()
        got = snapshot.cached_parse(text, str(f), snapshot.digest(text), _env(), timeout=0.5)
        took = time.monotonic() - t0
        assert got is None
        assert 0.5 <= took < 0.5 + 5, took  # the deadline, then no wait for the child
        cfg, _ = snapshot.accept(str(f), chain_id="c1", environ=_env(), last_good=False,
                                 kept=True)
        assert list(cfg.services) == ["a"]


def test_no_descriptor_to_read_the_copy_with_means_parsing(tmp_path: Path) -> None:
    """A process out of descriptors (the pipe to the reading child: EMFILE), as on a host
    out of processes (fork: EAGAIN): the file is parsed, no traceback on the way to init."""
    f = tmp_path / "chain.toml"
    text = TEXT.format(d=tmp_path, boot=1)
    f.write_text(text)
    snapshot.accept(str(f), chain_id="c1", environ=_env())
    code = f"""
import os, resource, sys
from hachain import snapshot
text = open({str(f)!r}).read()
sha = snapshot.digest(text)
import io, pickle, select, signal, tomllib  # what the lookup imports, before the fds go
from hachain import configtypes
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
held = []
try:
    while True:
        held.append(os.open("/dev/null", os.O_RDONLY))
except OSError:
    pass
got = snapshot.cached_parse(text, {str(f)!r}, sha)
for fd in held[:8]:
    os.close(fd)
print("none" if got is None else "copy")
"""
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                         timeout=60, env=_env(),
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "none"


# --- the pickled form of a service: only what differs from the defaults ---------------------

def _confusable(v: object) -> list[object]:
    """Values of another type that compare equal to `v` (what a pickle that left out
    "defaults" by equality alone would bring back wrong)."""
    if v is False or v is True:
        return [int(v), float(v)]
    if type(v) is int:
        return [float(v)] + ([bool(v)] if v in (0, 1) else [])
    if type(v) is float and v == int(v):
        return [int(v)]
    if v == ():
        return [frozenset()]  # () != frozenset(), kept anyway: no harm in trying
    return []


def test_a_service_pickles_what_differs_and_loads_every_field_as_it_was() -> None:
    import dataclasses
    import pickle

    from hachain import configtypes
    base = configtypes.ServiceConfig(name="s", command=("/bin/true",))
    plain = pickle.loads(pickle.dumps(base, pickle.HIGHEST_PROTOCOL))
    assert plain == base and vars(plain) == vars(base)
    whole = len(pickle.dumps(vars(base), pickle.HIGHEST_PROTOCOL))
    assert len(pickle.dumps(base, pickle.HIGHEST_PROTOCOL)) < whole / 4
    tried = 0
    for f in dataclasses.fields(configtypes.ServiceConfig):
        for other in _confusable(getattr(base, f.name)):
            # a value of another type in a field (the frozen class does not check types)
            svc = dataclasses.replace(base, **{f.name: other})
            back = pickle.loads(pickle.dumps(svc, pickle.HIGHEST_PROTOCOL))
            assert type(getattr(back, f.name)) is type(other), f.name
            assert vars(back) == vars(svc)
            tried += 1
    assert tried > 30
    # a service that sets many keys
    many = config.parse(
        '[service.x]\ncommand = ["/bin/sleep", "1"]\nrestart = "on-failure"\n'
        'kind = "oneshot"\nenv = { A = "1" }\nrequires = ["y"]\nnice = 5\n'
        'backoff = { initial = 0.5, factor = 3.0, max = 9.0 }\n'
        '[service.y]\ncommand = ["/bin/true"]\n', "t.toml").services["x"]
    back = pickle.loads(pickle.dumps(many, pickle.HIGHEST_PROTOCOL))
    assert back == many and vars(back) == vars(many)


def test_a_service_pickled_whole_by_earlier_code_loads_the_same() -> None:
    import copyreg
    import io
    import pickle

    from hachain import configtypes
    svc = configtypes.ServiceConfig(name="old", command=("/bin/true",), nice=3)

    class Whole(pickle.Pickler):  # the form before __getstate__: every field
        def reducer_override(self, obj: object) -> object:
            if type(obj) is configtypes.ServiceConfig:
                return copyreg.__newobj__, (type(obj),), dict(vars(obj))
            return NotImplemented

    buf = io.BytesIO()
    Whole(buf, pickle.HIGHEST_PROTOCOL).dump(svc)
    back = pickle.loads(buf.getvalue())
    assert back == svc and vars(back) == vars(svc)


KEY = st.sampled_from(["persist_dir", "state_dir", '"persist_dir"', "persist_dir.x",
                       "chain.persist_dir", "name"])
VALUE = st.sampled_from(['"/p"', '"/a b/c"', '"/x\\\\y"', "'/lit'", '"""/m"""', "3",
                         '"rel"', '"/p" # note', '"/p" x', '""'])
LINE = st.builds(lambda k, v, lead: f"{lead}{k} = {v}", KEY, VALUE,
                 st.sampled_from(["", " ", "\t"])) | st.sampled_from(
    ["[chain]", "[ chain ]", "[chain] # c", "[service.a]", "[chain.sub]", "# persist_dir",
     "", 'command = ["/bin/true"]', 'x = "persist_dir"', 'state_dir = """', '"""',
     "x = '''", "'''"])


@settings(max_examples=400, deadline=None)
@given(st.lists(LINE, max_size=8))
@example(["[chain]", 'state_dir = """', 'persist_dir = "/p"', '"""'])
@example(["[chain]", "x = '''", 'persist_dir = "/p"', "'''"])
@example(["[chain]", ' persist_dir = "/a b/c" # note', "[service.a]"])
def test_where_the_parsed_copy_is_looked_for_is_what_toml_says(lines: list[str]) -> None:
    """Without tomllib, the persist_dir of a text is named only when it is the one TOML
    gives: the default when the word is missing, the value of its one plain line in
    the `[chain]` section; anything else is left to chain_table (None)."""
    text = "\n".join(lines) + "\n"
    got = snapshot._persist_dir_named(text)
    if got is None:
        return
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return  # (no copy of a text that does not load was ever kept)
    chain = doc.get("chain", {})
    assert got == chain.get("persist_dir", channels.DEFAULT_PERSIST_DIR), text
    table = snapshot.chain_table(text)
    if table is not None:
        assert got == table.get("persist_dir", channels.DEFAULT_PERSIST_DIR), text
