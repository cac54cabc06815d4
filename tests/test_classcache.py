"""hachain/classcache.py: the dataclass methods kept compiled change no class, cover every
layer that builds dataclasses, and a broken file is no cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hachain import classcache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable

# what the processes that build dataclasses import: the restarter, the configuration
# (`hachain run`, reload, the tickler's parser child), `hachain check`, `hachain import`
LAYERS = ("hachain.restarter.__main__", "hachain.config", "hachain.hostcheck",
          "hachain.importer")


def _python(code: str, *args: str) -> str:
    """Run `code` in a fresh interpreter started as the layers are (python -S)."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.run([PY, "-S", "-c", code, *args], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("classcache") / "methods.bin")
    p = subprocess.run([PY, "-m", "hachain.classcache", "--output", path], cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "compiled method sets" in p.stdout
    return path


COUNT = """
import sys, importlib
import hachain.classcache as c
got = c.load(sys.argv[1])
c.hits = c.misses = 0
importlib.import_module(sys.argv[2])
print(got, c.hits, c.misses)
"""


@pytest.mark.parametrize("module", LAYERS)
def test_every_layer_builds_its_classes_from_the_cache(built: str, module: str) -> None:
    held, hits, misses = map(int, _python(COUNT, built, module).split())
    assert held > 100
    assert hits > 0, f"{module} built no dataclass through the cache"
    assert misses == 0, f"{module}: {misses} method set(s) compiled at import"


NO_INSPECT = """
import sys, importlib
importlib.import_module(sys.argv[1])
import dataclasses  # (after: the module is the first to import it, as in the layers)
docless = [f"{m.__name__}.{k}" for m in list(sys.modules.values())
           if getattr(m, "__name__", "").startswith("hachain")
           for k, v in vars(m).items()
           if isinstance(v, type) and dataclasses.is_dataclass(v)
           and v.__module__ == m.__name__ and (v.__doc__ or "").startswith(k + "(")]
print(json.dumps([("inspect" in sys.modules), docless]))
"""


@pytest.mark.parametrize("module", ("hachain.restarter.__main__", "hachain.configtypes"))
def test_the_chain_s_processes_never_import_inspect(module: str) -> None:
    """dataclasses imports inspect only to write a docstring for a class that has none
    (classcache._Inspect): the restarter and the configuration's types import neither
    it nor ast, dis and tokenize (6 ms, 1.3 MB), while every class has its own
    docstring (`hachain run`'s cached path: tests/test_parse_cache.py). A class added
    without one is named here."""
    loaded, docless = json.loads(_python("import json\n" + NO_INSPECT, module))
    assert docless == [], f"dataclasses without a docstring: {docless}"
    assert not loaded


def test_a_class_without_a_docstring_still_gets_the_generated_one() -> None:
    out = _python("import hachain.classcache, dataclasses, sys\n"
                  "@dataclasses.dataclass\nclass P:\n    x: int = 1\n"
                  "print(P.__doc__, 'inspect' in sys.modules)\n")
    assert out.split() == ["P(x:", "int", "=", "1)", "True"]


def test_without_a_file_every_class_is_compiled(tmp_path: os.PathLike[str]) -> None:
    held, hits, misses = map(int, _python(COUNT, os.path.join(tmp_path, "none.bin"),
                                          "hachain.restarter.__main__").split())
    assert (held, hits) == (0, 0)
    assert misses > 100


def test_setup_wrote_the_cache_the_chain_loads() -> None:
    """scripts/setup.sh (run by both README commands) writes the file the layers load."""
    assert os.path.exists(classcache.PATH), \
        f"{classcache.PATH} missing: scripts/setup.sh did not build it"
    held, hits, misses = map(int, _python(COUNT, classcache.PATH,
                                          "hachain.restarter.__main__").split())
    assert held > 100 and hits > 0 and misses == 0


# Every generated method of every dataclass of the package, as marshalled code: with and
# without the cache they must be byte for byte the same.
METHODS = """
import sys, importlib, marshal, json, hashlib, re
import hachain.classcache as c
c.load(sys.argv[1])
if sys.argv[2] == "plain":  # the standard library's own exec: what the cache must equal
    import dataclasses
    del dataclasses.exec
out = {}
for name in c.package_modules():
    try:
        mod = importlib.import_module(name)
    except Exception:
        continue
    for attr, cls in sorted(vars(mod).items()):
        if not isinstance(cls, type) or "__dataclass_fields__" not in vars(cls) or \\
                cls.__module__ != name:
            continue
        for meth in ("__init__", "__repr__", "__eq__", "__hash__", "__setattr__",
                     "__delattr__", "__lt__", "__le__", "__gt__", "__ge__"):
            f = vars(cls).get(meth)
            if f is not None and hasattr(f, "__code__"):
                key = f"{name}.{cls.__qualname__}.{meth}"
                made = (marshal.dumps(f.__code__), f.__qualname__,
                        repr(sorted((k, repr(v)) for k, v in f.__annotations__.items())),
                        repr(f.__defaults__), repr(f.__kwdefaults__))
                made = re.sub(r" at 0x[0-9a-f]+", "", repr(made))  # (a sentinel default)
                out[key] = hashlib.sha256(made.encode()).hexdigest()
print(json.dumps([out, c.hits, c.misses]))
"""


def test_cached_methods_are_the_compiled_ones(built: str, tmp_path: os.PathLike[str]) -> None:
    cached, hits, misses = json.loads(_python(METHODS, built, "cached"))
    plain, hits0, misses0 = json.loads(_python(METHODS, built, "plain"))
    assert hits > 200 and (hits0, misses0) == (0, 0)
    assert len(cached) > 200
    assert cached == plain


def test_a_changed_class_misses_and_is_built_as_written() -> None:
    before = classcache.misses

    @dataclass(frozen=True)
    class Unheard:  # a text no cache holds
        a_field_never_seen_before: int
        other: str = "x"

    assert classcache.misses > before
    u = Unheard(1)
    assert u == Unheard(1, "x") and u != Unheard(2)
    assert repr(u) == "test_a_changed_class_misses_and_is_built_as_written.<locals>." \
        "Unheard(a_field_never_seen_before=1, other='x')"
    with pytest.raises(AttributeError):
        u.other = "y"  # type: ignore[misc]


@pytest.mark.parametrize("content", [
    b"", b"garbage", classcache.FORMAT, classcache.FORMAT + b"\0\0\0\0" + b"x",
    classcache.FORMAT + classcache.MAGIC_NUMBER,  # header only
    classcache.FORMAT + classcache.MAGIC_NUMBER + b"\xff\x00",
])
def test_a_broken_file_is_no_cache(tmp_path: os.PathLike[str], content: bytes) -> None:
    path = os.path.join(tmp_path, "broken.bin")
    with open(path, "wb") as f:
        f.write(content)
    held, hits, misses = map(int, _python(COUNT, path, "hachain.restarter.__main__").split())
    assert (held, hits) == (0, 0) and misses > 100


def test_a_table_of_other_values_is_no_cache(tmp_path: os.PathLike[str]) -> None:
    import marshal
    path = os.path.join(tmp_path, "other.bin")
    for table in ({"text": "not code"}, ["a list"], {1: compile("1", "<s>", "exec")}):
        with open(path, "wb") as f:
            f.write(classcache.FORMAT + classcache.MAGIC_NUMBER + marshal.dumps(table))
        saved = dict(classcache._codes)
        try:
            assert classcache.load(path) == 0
            assert classcache._codes == {}
        finally:
            classcache._codes.clear()
            classcache._codes.update(saved)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=512))
def test_no_file_content_raises(tmp_path_factory: pytest.TempPathFactory, tail: bytes) -> None:
    path = str(tmp_path_factory.mktemp("any") / "f.bin")
    saved = dict(classcache._codes)
    try:
        for content in (tail, classcache.FORMAT + classcache.MAGIC_NUMBER + tail):
            with open(path, "wb") as f:
                f.write(content)
            assert classcache.load(path) >= 0
    finally:
        classcache._codes.clear()
        classcache._codes.update(saved)


def test_an_unwritable_output_is_one_line(tmp_path: os.PathLike[str]) -> None:
    blocker = os.path.join(tmp_path, "file")
    with open(blocker, "w") as f:
        f.write("x")
    p = subprocess.run([PY, "-m", "hachain.classcache", "--output",
                        os.path.join(blocker, "sub", "m.bin")], cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hachain.classcache: cannot write ")
