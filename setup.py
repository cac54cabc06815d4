"""The compiled parts of hachain, all optional: without a C compiler (or on an
architecture they do not support) hachain installs without them and works the slower way.

- hachain.restarter._clone3: clone3 CLONE_INTO_CGROUP (hachain/restarter/_clone3.c); the
  restarter falls back to moving each new service into its cgroup.
- hachain.watchdog._tick: the tickler's compiled tick (hachain/watchdog/_tick.c); without
  it every tick is Python's.
- hachain/_front: the native front of the `hachain` command (hachain/_front.c), which
  answers `hachain status` without starting an interpreter; scripts/setup.sh installs it
  as bin/hachain, with the Python CLI as bin/hachain-py.

Everything else about the package is in pyproject.toml."""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

FRONT = "hachain/_front.c"


class BuildWithFront(build_ext):
    """build_ext, then the front: an executable, which setuptools has no kind for."""

    def run(self) -> None:
        super().run()
        out = "hachain" if self.inplace else os.path.join(self.build_lib, "hachain")
        try:
            os.makedirs(out, exist_ok=True)
            objs = self.compiler.compile([FRONT], output_dir=self.build_temp,
                                         extra_postargs=["-O2"])
            self.compiler.link_executable(objs, "_front", output_dir=out)
        except Exception as e:  # CompileError, LinkError, no compiler at all
            print(f"hachain: the native front was not built ({e}); `hachain` stays the "
                  "Python CLI", file=sys.stderr)


# both write heartbeat records through hachain/_record.h
RECORD = ["hachain/_record.h"]
setup(ext_modules=[Extension("hachain.restarter._clone3", ["hachain/restarter/_clone3.c"],
                             depends=RECORD, optional=True),
                   Extension("hachain.watchdog._tick", ["hachain/watchdog/_tick.c"],
                             depends=RECORD, optional=True)],
      cmdclass={"build_ext": BuildWithFront})
