"""env_file's format (hachain/envfile.py, pure): systemd's EnvironmentFile= lines."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hachain import envfile


@pytest.mark.parametrize("text, want", [
    ("A=1\n", {"A": "1"}),
    ("A=1", {"A": "1"}),  # no newline at the end
    ("  A = two words  \n", {"A": "two words"}),
    ("# c\n; c\n\n   \nA=x\n", {"A": "x"}),
    ("A=1\nA=2\n", {"A": "2"}),  # a later one replaces an earlier one
    ('A="q \\"x\\" \\$H \\\\ \\`"\n', {"A": 'q "x" $H \\ `'}),
    ('A="a\\qb"\n', {"A": "a\\qb"}),  # an unknown escape stays as written
    ("A='no $escape \\here'\n", {"A": "no $escape \\here"}),
    ('A="two\nlines"\nB=2\n', {"A": "two\nlines", "B": "2"}),
    ("A=one\\\n two\nB=3\n", {"A": "one two", "B": "3"}),
    ("A=\nB=''\n", {"A": "", "B": ""}),
    ("A=x=y\n", {"A": "x=y"}),
    ("A=1\r\nB=2\r\n", {"A": "1", "B": "2"}),
])
def test_lines_as_systemd_reads_them(text: str, want: dict[str, str]) -> None:
    assert envfile.parse(text) == (want, [])


@pytest.mark.parametrize("text, want, why", [
    ("export A=1\nB=2\n", {"B": "2"}, ["line 1: not NAME=VALUE: 'export A=1'"]),
    ("1A=x\n", {}, ["line 1: not NAME=VALUE: '1A=x'"]),
    ("just words\nB=2\n", {"B": "2"}, ["line 1: not NAME=VALUE: 'just words'"]),
    ('A="open\nB=2\n', {}, ["line 1: A: the quote is not closed"]),
    ('A="x" trailing\nB=2\n', {"B": "2"}, ["line 1: A: text after the closing quote"]),
    ('A="x\ny" z\nB=2\n', {"B": "2"}, ["line 2: A: text after the closing quote"]),
])
def test_lines_left_out_say_where_and_why(text: str, want: dict[str, str],
                                          why: list[str]) -> None:
    assert envfile.parse(text) == (want, why)


@given(st.text(max_size=300))
def test_any_text_gives_variables_or_reasons_never_an_error(text: str) -> None:
    found, skipped = envfile.parse(text)
    assert all(isinstance(k, str) and k and "=" not in k for k in found)
    assert all(s.startswith("line ") for s in skipped)


@given(st.dictionaries(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True),
                       st.text(alphabet=st.characters(blacklist_characters="\r\x00",
                                                      blacklist_categories=("Cs",)),
                               max_size=20), max_size=6))
def test_values_written_in_double_quotes_come_back(env: dict[str, str]) -> None:
    def quoted(v: str) -> str:
        return '"' + "".join("\\" + c if c in '"\\$`' else c for c in v) + '"'
    text = "".join(f"{k}={quoted(v)}\n" for k, v in env.items())
    assert envfile.parse(text) == (env, [])
