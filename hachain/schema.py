"""The configuration schema's building blocks: value kinds, keys, tables, error lines.

Owns: turning a parsed TOML value into a checked Python value, or into one error line
`FILE:LINE: dotted.key: rule, got VALUE`. Knows no key of hachain's own (those are in
`hachain/config.py`, each described once with its kind, default and doc text). Must not:
open, start or signal anything.

Rules every kind keeps, so that no key can forget them:
- a string never holds NUL (no kernel interface takes one: argv, env, paths, names);
- a number is finite (no nan, no inf) and has an explicit lower and upper bound;
- a bool is never taken for a number, nor a number for a bool;
- a table is a table: a scalar where a table belongs is an error, not ignored;
- every error is one line: keys and values are shown escaped, never raw.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from hachain.errors import closest

Path = tuple[str, ...]


class Bad(Exception):
    """A value breaks its kind's rule; str() is the rule, e.g. 'must be >= 1'."""


class _Invalid:
    def __repr__(self) -> str:
        return "INVALID"


INVALID: Any = _Invalid()  # what a kind returns after it has reported an error


# --- one-line rendering of keys and values ------------------------------------------------

_BARE = re.compile(r"[A-Za-z0-9_-]+")


def _escape(s: str) -> str:
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        else:
            o = ord(ch)
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000
                       else f"\\U{o:08x}")
    return "".join(out)


def plain(s: str) -> str:
    """`s` with what is not printable escaped (\\n, \\x1b...): safe inside one line."""
    return s if s.isprintable() else "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape", "backslashreplace").decode()
        for ch in s)


def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[:n - 3] + "..."


def key_text(path: Sequence[str]) -> str:
    """A dotted key as TOML would write it: service.web.env or service."a b".env."""
    return ".".join(p if _BARE.fullmatch(p) and len(p) <= 64 else
                    '"' + _clip(_escape(p), 64) + '"' for p in path)


def show(v: Any) -> str:
    """A value as it appears after 'got': TOML-ish, escaped, at most one short line."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + _clip(_escape(v), 60) + '"'
    if isinstance(v, dict):
        return "a table"
    if isinstance(v, list):
        return _clip("[" + ", ".join(show(x) for x in v[:8]) + ("]" if len(v) <= 8 else ", ...]"),
                     80)
    return _clip(repr(v), 40)


def _did_you_mean(name: str, names: Iterable[str]) -> str:
    """"; did you mean 'command'?" for a misspelt key, else "" (a typo in a key is the
    commonest mistake in a hand-written file)."""
    close = closest(name, names)
    return f"; did you mean '{close}'?" if close else ""



def fmt(n: float) -> str:
    """A bound in a message or a doc: 60, 0.05, 1048576."""
    return str(int(n)) if float(n).is_integer() and abs(n) < 1e16 else f"{n:g}"


# --- finding the line of a key in the TOML text -------------------------------------------

_PART = r'(?:[A-Za-z0-9_-]+|"(?:[^"\\\n]|\\.)*"|\'[^\'\n]*\')'
_DOTTED = rf"{_PART}(?:[ \t]*\.[ \t]*{_PART})*"
_HEADER = re.compile(rf"^\s*\[\[?\s*({_DOTTED})\s*\]\]?")
_KEYLINE = re.compile(rf"^\s*({_DOTTED})\s*=")


def _split(dotted: str) -> Path | None:
    """('a', 'b') for the TOML key text `a."b"`, using tomllib's own key rules."""
    import tomllib  # here: a layer that loads a parsed configuration never needs it
    try:
        d: Any = tomllib.loads(dotted + " = 0")
    except tomllib.TOMLDecodeError:
        return None
    path: list[str] = []
    while isinstance(d, dict) and len(d) == 1:
        k, d = next(iter(d.items()))
        path.append(k)
    return tuple(path)


def _paths(d: Any, at: Path) -> list[Path]:
    out = [at]
    if isinstance(d, dict):
        for k, v in d.items():
            out += _paths(v, at + (k,))
    return out


def _open_multiline(ln: str, in_ml: str | None) -> str | None:
    """The quote of the multi-line string still open at the end of line `ln` (None: none),
    given the one open at its start. Strings, escapes and comments are followed, so a
    quote inside a string (`command = ["'''"]`) opens nothing."""
    i, n = 0, len(ln)
    while i < n:
        if in_ml:
            j = ln.find(in_ml, i)
            while j > 0 and in_ml == '"""' and _escaped(ln, j):
                j = ln.find(in_ml, j + 1)
            if j < 0:
                return in_ml
            i = j + 3
            while i < n and ln[i] == in_ml[0]:  # up to two more quotes end the text
                i += 1
            in_ml = None
            continue
        c = ln[i]
        if c == "#":
            return None
        if ln.startswith('"""', i) or ln.startswith("'''", i):
            in_ml, i = ln[i:i + 3], i + 3
            continue
        if c in "\"'":
            j = i + 1
            while j < n and (ln[j] != c or (c == '"' and _escaped(ln, j))):
                j += 1
            i = j + 1
            continue
        i += 1
    return in_ml


def _escaped(ln: str, j: int) -> bool:
    """The character at `j` follows an odd number of backslashes."""
    k = j
    while k > 0 and ln[k - 1] == "\\":
        k -= 1
    return (j - k) % 2 == 1


class Locator:
    """The line where each key path is defined (headers, dotted keys, inline tables)."""

    def __init__(self, text: str) -> None:
        self.where: list[tuple[Path, int]] = []
        table: Path = ()
        in_ml: str | None = None  # the quote of a multi-line string we are inside
        # TOML ends lines at \n only (str.splitlines would also split at \x1c, \u2028...)
        for n, ln in enumerate(text.split("\n"), 1):
            if in_ml:
                in_ml = _open_multiline(ln, in_ml)
                continue
            m = _HEADER.match(ln)
            if m:
                p = _split(m.group(1))
                if p is not None:
                    table = p
                    self.where.append((table, n))
                continue
            m = _KEYLINE.match(ln)
            if m:
                p = _split(m.group(1))
                if p is not None:
                    import tomllib
                    try:
                        inner = _paths(tomllib.loads(ln.strip()), ())
                    except tomllib.TOMLDecodeError:
                        inner = [p]
                    self.where += [(table + q, n) for q in inner if q]
            in_ml = _open_multiline(ln, None)

        self.first: dict[Path, int] = {}  # each path and each of its prefixes: first line
        for p, n in self.where:
            for i in range(1, len(p) + 1):
                self.first.setdefault(p[:i], n)

    def line_of(self, path: Path, exact: bool = False) -> int | None:
        """The line of `path` (or of a key inside it); unless `exact`, else the line of
        the longest part of it that is in the text."""
        for i in range(len(path), 0 if exact else -1, -1):
            if i == len(path) or not exact:
                n = self.first.get(path[:i]) if i else None
                if n:
                    return n
        return None


class Report:
    """Collects error lines for one file."""

    def __init__(self, fname: str, text: str) -> None:
        self.fname = plain(fname)
        self.text = text
        self._loc: Locator | None = None  # built at the first error: a good file needs none
        self.errors: list[str] = []

    @property
    def loc(self) -> Locator:
        if self._loc is None:
            self._loc = Locator(self.text)
        return self._loc

    def err(self, path: Sequence[str], msg: str, also: Sequence[Sequence[str]] = ()) -> None:
        """Record `FILE:LINE: key: msg`; the line is that of `path`, else of an `also`."""
        tries = [tuple(p) for p in (path, *also)]
        line = next(filter(None, (self.loc.line_of(p, exact=True) for p in tries)), None)
        line = line or next(filter(None, (self.loc.line_of(p) for p in tries)), None)
        where = f"{self.fname}:{line}" if line else self.fname
        self.errors.append(f"{where}: {key_text(path)}: {' '.join(msg.splitlines())}")


# --- kinds of values ----------------------------------------------------------------------

class Kind:
    """A kind of value. `parse` returns the checked value, or INVALID after reporting."""

    rule = ""  # the rule in words, for the reference table ("0.05 to 60.")

    def parse(self, v: Any, at: Path, r: Report) -> Any:
        try:
            return self.one(v)
        except Bad as e:
            r.err(at, f"{e}, got {show(v)}")
            return INVALID

    def one(self, v: Any) -> Any:
        raise NotImplementedError


@dataclass(frozen=True)
class Number(Kind):
    lo: float
    hi: float
    integer: bool = False
    lo_open: bool = False  # lo itself is not allowed

    def one(self, v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            raise Bad("must be a finite number")
        if isinstance(v, bool) or not isinstance(v, int if self.integer else (int, float)):
            raise Bad("must be an integer" if self.integer else "must be a number")
        if v < self.lo or (self.lo_open and v == self.lo):
            raise Bad(f"must be {'>' if self.lo_open else '>='} {fmt(self.lo)}")
        if v > self.hi:
            raise Bad(f"must be <= {fmt(self.hi)}")
        return int(v) if self.integer else float(v)

    @property
    def rule(self) -> str:  # type: ignore[override]
        kind = "Integer, " if self.integer else ""
        if self.lo_open:
            return f"{kind or 'A number '}greater than {fmt(self.lo)}, at most {fmt(self.hi)}."
        return f"{kind}{fmt(self.lo)} to {fmt(self.hi)}."


class Bool(Kind):
    rule = ""

    def one(self, v: Any) -> bool:
        if not isinstance(v, bool):
            raise Bad("must be true or false")
        return v


@dataclass(frozen=True)
class Text(Kind):
    """A string without NUL. `line`: printable, one line; `pattern`: must match it fully."""

    nonempty: bool = False
    line: bool = True
    pattern: str = ""
    what: str = ""  # the pattern in words, for messages
    max_len: int = 4095  # bytes in UTF-8 (PATH_MAX less the NUL)

    def one(self, v: Any) -> str:
        if not isinstance(v, str):
            raise Bad("must be a string")
        if "\0" in v:
            raise Bad("must not contain NUL")
        if self.nonempty and not v.strip():
            raise Bad("must not be empty")
        if self.line and not v.isprintable():
            raise Bad("must be one line of printable characters")
        if len(v) > self.max_len // 4 and len(v.encode(errors="surrogatepass")) > self.max_len:
            raise Bad(f"must be at most {self.max_len} bytes")
        if self.pattern and not re.fullmatch(self.pattern, v):
            raise Bad(f"must be {self.what or 'of the form ' + self.pattern}")
        return v


@dataclass(frozen=True)
class Choice(Kind):
    choices: tuple[str, ...]

    def one(self, v: Any) -> str:
        if v not in self.choices or not isinstance(v, str):
            near = closest(v, self.choices) if isinstance(v, str) else None
            raise Bad("must be one of " + ", ".join(f'"{c}"' for c in self.choices)
                      + (f' (did you mean "{near}"?)' if near else ""))
        return str(v)

    @property
    def rule(self) -> str:  # type: ignore[override]
        return ""


@dataclass(frozen=True)
class PathText(Text):
    """An absolute path, or one of `special` words."""

    special: tuple[str, ...] = ()

    def one(self, v: Any) -> str:
        s = super().one(v)
        if s in self.special or s.startswith("/"):
            return s
        words = ", ".join(f'"{w}"' for w in self.special)
        raise Bad(f"must be {words + ' or ' if words else ''}an absolute path")


MAX_ARG = 131071  # execve(2) refuses one argument or "NAME=value" longer (MAX_ARG_STRLEN)


@dataclass(frozen=True)
class Argv(Kind):
    """A command: a non-empty list of strings whose first is not blank; or, with
    `string_ok`, a non-blank string (for shell = true)."""

    string_ok: bool = False

    def one(self, v: Any) -> Any:
        if isinstance(v, str) and self.string_ok:
            Text(nonempty=True, line=False, max_len=MAX_ARG).one(v)
            return v
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise Bad("must be an argv list of strings such as [\"/usr/bin/x\", \"--flag\"]")
        if not v or not v[0].strip():
            raise Bad("must not be empty (the first element names the program)")
        for x in v:
            Text(line=False, max_len=MAX_ARG).one(x)
        return tuple(v)


@dataclass(frozen=True)
class ListOf(Kind):
    """A list of `item`; with `one_ok`, a single item alone stands for a list of one."""

    item: Kind
    one_ok: bool = False
    max_items: int = 1024
    min_items: int = 0

    def parse(self, v: Any, at: Path, r: Report) -> Any:
        if self.one_ok and not isinstance(v, list):
            v = [v]
        if not isinstance(v, list):
            r.err(at, f"must be a list, got {show(v)}")
            return INVALID
        if len(v) > self.max_items:
            r.err(at, f"must have at most {self.max_items} items, got {len(v)}")
            return INVALID
        if len(v) < self.min_items:
            r.err(at, f"must have at least {self.min_items} item(s), got {show(v)}")
            return INVALID
        out = [self.item.parse(x, at, r) for x in v]
        return INVALID if any(x is INVALID for x in out) else tuple(out)


@dataclass(frozen=True)
class MapOf(Kind):
    """A table of `value`s under free keys; each key obeys `key`."""

    key: Kind
    value: Kind
    label: str = "the name"  # what a key is, for messages: "a service name"
    to: Callable[[dict[str, Any]], Any] | None = None  # converts the checked table

    def parse(self, v: Any, at: Path, r: Report) -> Any:
        if not isinstance(v, dict):
            r.err(at, f"must be a table, got {show(v)}")
            return INVALID
        out = {}
        for k, x in v.items():
            try:
                self.key.one(k)
            except Bad as e:
                r.err(at + (k,), f"{self.label} {e}")
                continue
            got = self.value.parse(x, at + (k,), r)
            if got is not INVALID:
                out[k] = got
        if len(out) < len(v):
            return INVALID
        return self.to(out) if self.to else out


@dataclass(frozen=True)
class Custom(Kind):
    """A kind given by one function (raises Bad) and its rule in words."""

    fn: Callable[[Any], Any]
    words: str = ""
    examples: tuple[Any, ...] = ()  # good values, for generated tests

    def one(self, v: Any) -> Any:
        return self.fn(v)

    @property
    def rule(self) -> str:  # type: ignore[override]
        return self.words


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
FROM_CLASS: Any = object()  # the default is the dataclass field's


@dataclass(frozen=True)
class Key:
    """One key: its kind, its default and what it means (the docs' text)."""

    name: str
    kind: Kind
    doc: str
    default: Any = FROM_CLASS
    shown: str = ""  # the default as the docs show it, when not the value itself
    group: str = ""  # which table of docs/configuration.md lists it


@dataclass(frozen=True)
class Table(Kind):
    """A table with a fixed set of keys, built into `cls` by `build`.

    `build(values, given, at, r)` returns the object (default: cls(**values)); `checks`
    run on the built object and report rules across keys."""

    cls: Any
    keys: tuple[Key, ...]
    build: Callable[[dict[str, Any], set[str], Path, Report], Any] | None = None
    checks: tuple[Callable[[Any, Path, Report], None], ...] = ()
    what: str = "a table"

    @functools.cached_property
    def _fields(self) -> dict[str, Any]:
        return {f.name: f for f in dataclasses.fields(self.cls)}

    def default_of(self, k: Key) -> Any:
        if k.default is not FROM_CLASS:
            return k.default
        f = self._fields[k.name]
        if f.default_factory is not dataclasses.MISSING:
            return f.default_factory()
        return REQUIRED if f.default is dataclasses.MISSING else f.default

    @functools.cached_property
    def _plan(self) -> tuple[tuple[Key, Any, Callable[[], Any] | None], ...]:
        """Each key with its default, or the factory that makes it (called only when the
        default is used): worked out once, not for every table parsed (with 100
        services, 35 keys each, that was a third of parse())."""
        out = []
        for k in self.keys:
            f = self._fields.get(k.name) if k.default is FROM_CLASS else None
            if f is not None and f.default_factory is not dataclasses.MISSING:
                out.append((k, None, f.default_factory))
            else:
                out.append((k, self.default_of(k), None))
        return tuple(out)

    @functools.cached_property
    def names(self) -> frozenset[str]:
        return frozenset(k.name for k in self.keys)

    def parse(self, v: Any, at: Path, r: Report) -> Any:
        if not isinstance(v, dict):
            r.err(at, f"must be {self.what}, got {show(v)}")
            return INVALID
        n0 = len(r.errors)
        names = self.names
        for name, x in v.items():
            if name not in names:
                what = "table" if isinstance(x, dict) else "key"
                allowed = ", ".join(sorted(names))
                r.err(at + (name,), f"unknown {what}{_did_you_mean(name, names)} "
                      f"(expected one of: {allowed})")
        vals: dict[str, Any] = {}
        for k, dflt, factory in self._plan:
            if k.name not in v:
                if dflt is REQUIRED:
                    r.err(at + (k.name,), "is required")
                vals[k.name] = factory() if factory is not None else dflt
                continue
            got = k.kind.parse(v[k.name], at + (k.name,), r)
            if got is INVALID:
                got = factory() if factory is not None else dflt
            vals[k.name] = got
        if len(r.errors) > n0:
            return INVALID  # rules across keys only once every key is right
        obj = self.build(vals, set(v), at, r) if self.build else self.cls(**vals)
        if obj is not INVALID and len(r.errors) == n0:
            for check in self.checks:
                check(obj, at, r)
        return obj


# --- the reference tables of the docs -----------------------------------------------------

def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + _escape(v) + '"'
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{}" if not v else "{ ... }"
    return repr(v)


def doc_rows(table: Table, prefix: str = "", group: str | None = None) -> list[str]:
    """Markdown rows `| key | default | meaning |` for the keys of `table` in `group`."""
    rows: list[str] = []
    for k in table.keys:
        if group is not None and k.group != group:
            continue
        dflt = table.default_of(k)
        shown = k.shown or ("(required)" if dflt is REQUIRED else
                            "(unset)" if dflt is None else f"`{toml_value(dflt)}`")
        sub = k.kind if isinstance(k.kind, Table) else None
        rule = "" if sub else k.kind.rule
        text = " ".join(x for x in (k.doc, rule) if x)
        rows.append(f"| `{prefix}{k.name}` | {shown} | {text} |")
        if sub:
            rows += doc_rows(sub, f"{prefix}{k.name}.")
    return rows


__all__ = ["Argv", "Bad", "Bool", "Choice", "Custom", "FROM_CLASS", "INVALID", "Key",
           "Kind", "ListOf", "Locator", "MapOf", "Number", "PathText", "REQUIRED", "Report",
           "Table", "Text", "doc_rows", "key_text", "show"]
