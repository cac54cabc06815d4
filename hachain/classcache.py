"""Compiled dataclass methods kept on disk: what building the classes costs at start.

Owns: the cache of the code `dataclasses` generates for each class (`__init__`,
`__repr__`, `__eq__`, `__hash__`, a frozen class's `__setattr__` and `__delattr__`), and
the hook that makes `dataclasses` take it. Must not: change what any class is. Why: for
every dataclass, CPython writes the source of its methods as text and compiles it with
`exec`; the restarter's 44 classes cost 55-60 ms of its ~115 ms import that way, on the
way to the first service (docs/benchmarks.md, issue 19, twenty-seventh session). The text
is the same at every start, so its compiled code can be kept, as `.pyc` files keep a
module's.

How: importing this module loads `__pycache__/dataclass-methods.<tag>.bin` (a marshal of
text -> code object, written by `python -m hachain.classcache`, which scripts/setup.sh
runs after byte-compiling) and sets `dataclasses.exec` to a function that looks the text
up and runs the kept code; a text it does not hold is compiled as before. The key is the
whole text, so a kept code object is exactly what compiling that text gives: a class
that changed simply misses. Compiled as `exec` does it from `dataclasses` (no inherited
`__future__` flags, file name `<string>`). A file that is missing, of another Python or
unreadable is no cache: every class is then compiled, as without this module.

Import it before the first `@dataclass` of a process (hachain/configtypes.py does, and
every layer that builds dataclasses imports that first); a long-lived process calls
`release()` once its imports are done (the restarter does). Standard library only.
"""

from __future__ import annotations

import builtins
import marshal
import os
import sys
import types
from importlib._bootstrap_external import MAGIC_NUMBER  # (importlib.util imports more)
from types import CodeType
from typing import Any


class _Inspect(types.ModuleType):
    """What `dataclasses` holds as `inspect` until it first uses it; the real module is
    imported then. It uses it for one thing, the docstring of a class written without
    one (inspect.signature), and importing inspect costs 6 ms and 1.3 MB (ast, dis,
    tokenize) in every process that builds dataclasses. hachain's classes have
    docstrings (tests/test_classcache.py), so its layers never import it."""

    def __getattr__(self, name: str) -> Any:
        import inspect
        dataclasses.inspect = inspect  # type: ignore[attr-defined]
        return getattr(inspect, name)


if "dataclasses" not in sys.modules and "inspect" not in sys.modules:
    sys.modules["inspect"] = _Inspect("inspect")
    try:
        import dataclasses
    finally:
        del sys.modules["inspect"]  # (any other importer gets the real one)
else:
    import dataclasses
# for a module that builds the first classes of a process (configtypes): dataclasses
# taken through here, so that it comes after the hook above
from dataclasses import dataclass as dataclass  # noqa: E402
from dataclasses import field as field  # noqa: E402

FORMAT = b"hachain-dataclass-methods 1\n"
PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "__pycache__",
                    f"dataclass-methods.{sys.implementation.cache_tag}.bin")

_codes: dict[str, CodeType] = {}
_seen: dict[str, CodeType] | None = None  # while building: every text compiled or run
hits = 0
misses = 0


def _compile(text: str) -> CodeType:
    # as exec(text) from dataclasses.py compiles it: no __future__ flags of ours
    return compile(text, "<string>", "exec", dont_inherit=True)


def _exec(source: Any, globals: Any = None, locals: Any = None) -> None:
    """`exec` as dataclasses calls it, with the code of a known text taken from the cache."""
    global hits, misses
    if type(source) is str:
        code = _codes.get(source)
        if code is None:
            misses += 1
            code = _compile(source)
        else:
            hits += 1
        if _seen is not None:
            _seen[source] = code
        source = code
    builtins.exec(source, globals, locals)


def load(path: str = PATH) -> int:
    """Take the cache file at `path` in place of the one held; the number of texts it
    holds (0: none usable, and no cache is held)."""
    _codes.clear()
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return 0
    head = FORMAT + MAGIC_NUMBER
    if not data.startswith(head):
        return 0
    try:
        got = marshal.loads(data[len(head):])
    except (EOFError, ValueError, TypeError):
        return 0
    if not isinstance(got, dict) or not all(
            type(k) is str and type(v) is CodeType for k, v in got.items()):
        return 0
    _codes.update(got)
    return len(got)


def release() -> None:
    """Drop the table once a process has built its classes (a module imported later just
    compiles its own): its ~0.2 MB then goes to what the process allocates next."""
    _codes.clear()


def install() -> None:
    """Make dataclasses compile through the cache (idempotent)."""
    dataclasses.exec = _exec  # type: ignore[attr-defined]


def write(path: str, codes: dict[str, CodeType]) -> None:
    """Write `codes` to `path` atomically (a reader never sees half a file)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(FORMAT + MAGIC_NUMBER + marshal.dumps(codes))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def build(modules: list[str]) -> dict[str, CodeType]:
    """Import `modules` (in this fresh process) and return every text their classes
    compiled. A module that cannot be imported here (an optional dependency missing) is
    skipped."""
    import importlib
    global _seen
    _seen = {}
    _codes.clear()  # every text compiled afresh, none taken from an earlier file
    try:
        for name in modules:
            try:
                importlib.import_module(name)
            except (Exception, SystemExit):  # noqa: BLE001 - an optional extra missing
                continue  # (or a module that runs at import): its classes just miss
        return dict(_seen)
    finally:
        _seen = None


def package_modules() -> list[str]:
    """Every module of the hachain package but the `__main__` ones (a layer's starts it:
    what they build comes from the modules they import) and the simulators (tools no
    layer imports: their classes would only make every layer's load of the file longer)."""
    import pkgutil
    root = os.path.dirname(os.path.abspath(__file__))
    return [m.name for m in pkgutil.walk_packages([root], "hachain.", onerror=lambda _: None)
            if not m.name.endswith(".__main__") and m.name != "hachain.simulators"
            and not m.name.startswith("hachain.simulators.")]


def main(argv: list[str] | None = None) -> int:
    import argparse
    p = argparse.ArgumentParser(
        prog="python -m hachain.classcache",
        description="write the compiled dataclass methods of every hachain module")
    p.add_argument("-o", "--output", default=PATH, help=f"the cache file (default {PATH})")
    args = p.parse_args(argv)
    codes = build(package_modules())
    try:
        write(args.output, codes)
    except OSError as e:
        print(f"hachain.classcache: cannot write {args.output}: {e.strerror or e}",
              file=sys.stderr)
        return 1
    print(f"{args.output}: {len(codes)} compiled method sets")
    return 0


load()
install()

if __name__ == "__main__":
    # the hook dataclasses calls is the one of the module the package imports
    from hachain import classcache
    sys.exit(classcache.main())
