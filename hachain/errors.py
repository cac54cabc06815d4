"""Errors shared by the configuration reader and the modules that only read its results.

Apart from hachain.config so that a reader of snapshots and state (`hachain status`)
can catch a configuration error without importing the configuration schema."""

from __future__ import annotations


class ConfigError(Exception):
    """One or more configuration errors; str() gives one line per error."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors
