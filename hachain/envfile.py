"""Environment files (`env_file`, systemd's `EnvironmentFile=`): what a line means.

Owns: turning the text of one such file into variables, and saying which lines it left
out and why. Must not: read files or know about services (the restarter reads the files
at each start, as systemd does, and logs the lines that were left out).

The format is the one systemd reads, which is also what most /etc/default files are:

- one `NAME=VALUE` per line; blanks around the name and the value are dropped;
- empty lines and lines starting with `#` or `;` are comments;
- a value in double quotes may hold `\\"`, `\\\\`, `\\$` and `` \\` `` escapes and
  newlines; one in single quotes is taken as written; an unquoted value ends at the end
  of the line, where a trailing backslash joins the next line;
- NAME is a shell variable name (letters, digits, `_`, not a digit first). Anything else,
  `export NAME=...` included, is left out, with its line number.
"""

from __future__ import annotations

import re

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ESCAPED = {'"': '"', "\\": "\\", "$": "$", "`": "`", "\n": ""}


def parse(text: str) -> tuple[dict[str, str], list[str]]:
    """(variables in the order of the file, a later one replacing an earlier one;
    "line N: why" for every line left out)."""
    out: dict[str, str] = {}
    skipped: list[str] = []
    i, n, line = 0, len(text), 1
    while i < n:
        start_line = line
        end = text.find("\n", i)
        end = n if end < 0 else end
        raw = text[i:end]
        stripped = raw.strip()
        if not stripped or stripped[0] in "#;":
            i, line = end + 1, line + 1
            continue
        name, eq, rest = stripped.partition("=")
        name = name.strip()
        if not eq or not _NAME.fullmatch(name):
            skipped.append(f"line {start_line}: not NAME=VALUE: {stripped[:60]!r}")
            i, line = end + 1, line + 1
            continue
        # where the value starts in the text (after the '=' and blanks)
        v = i + raw.index("=") + 1
        while v < end and text[v] in " \t":
            v += 1
        if v < n and text[v] in "\"'":
            value, j, lines, closed = _quoted(text, v)
            if not closed:
                skipped.append(f"line {start_line}: {name}: the quote is not closed")
                break
            tail = text.find("\n", j)
            tail = n if tail < 0 else tail
            if text[j:tail].strip():
                skipped.append(f"line {start_line + lines}: {name}: text after the closing "
                               "quote")
            else:
                out[name] = value
            i, line = tail + 1, line + lines + 1
            continue
        value, i, lines = _unquoted(text, v)
        out[name] = value
        line += lines + 1
    return out, skipped


def _quoted(text: str, at: int) -> tuple[str, int, int, bool]:
    """(the value, the index after the closing quote, newlines inside, closed?)."""
    quote, j, lines = text[at], at + 1, 0
    parts: list[str] = []
    while j < len(text):
        ch = text[j]
        if ch == quote:
            return "".join(parts), j + 1, lines, True
        if ch == "\\" and quote == '"' and j + 1 < len(text) and text[j + 1] in _ESCAPED:
            nxt = text[j + 1]
            parts.append(_ESCAPED[nxt])
            lines += nxt == "\n"
            j += 2
            continue
        lines += ch == "\n"
        parts.append(ch)
        j += 1
    return "".join(parts), j, lines, False


def _unquoted(text: str, at: int) -> tuple[str, int, int]:
    """(the value, the index after its line, newlines joined by a trailing backslash)."""
    parts: list[str] = []
    lines = 0
    while True:
        end = text.find("\n", at)
        end = len(text) if end < 0 else end
        piece = text[at:end].rstrip(" \t\r")
        if piece.endswith("\\") and end < len(text):
            parts.append(piece[:-1])
            at, lines = end + 1, lines + 1
            continue
        parts.append(piece)
        return "".join(parts), end + 1, lines
