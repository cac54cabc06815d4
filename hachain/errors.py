"""Errors shared by the configuration reader and the modules that only read its results.

Apart from hachain.config so that a reader of snapshots and state (`hachain status`)
can catch a configuration error without importing the configuration schema."""

from __future__ import annotations

from collections.abc import Iterable


class ConfigError(Exception):
    """One or more configuration errors; str() gives one line per error."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def closest(word: str, words: Iterable[str]) -> str | None:
    """The one of `words` that `word` is most likely a typo of, if any is close enough
    (for "did you mean" in an error: a misspelt key, choice or service name)."""
    import difflib
    close = difflib.get_close_matches(word, sorted(words), n=1, cutoff=0.6)
    return close[0] if close else None
