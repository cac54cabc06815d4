"""The one compiled part of hachain: hachain.restarter._clone3 (clone3 CLONE_INTO_CGROUP,
see hachain/restarter/_clone3.c). Optional: without a C compiler, or on an architecture it
does not support, hachain installs without it and the restarter uses its fallback.
Everything else about the package is in pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("hachain.restarter._clone3", ["hachain/restarter/_clone3.c"],
                             optional=True)])
