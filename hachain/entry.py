"""The console scripts' entry point (`hachain-py`, and `hachain` where no native front is
installed).

A ^C while a command runs ends it with exit 130 and no traceback (cmdline.run). This
module gives the same answer to a ^C that comes earlier, while the CLI's modules are
still importing or its arguments are being parsed: it imports nothing of its own before
it has the handler in place.
"""

from __future__ import annotations


def main() -> int:
    try:
        from hachain.cli import main as cli_main
        return cli_main()
    except KeyboardInterrupt:
        return 130
