"""Bad input to the `hachain` command: each case runs the real command as a subprocess and
checks the exact one-line error, the exit status (2 bad usage or configuration, 1 a failed
operation) and that nothing was lost (a file named by mistake is unchanged)."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from tests.conftest import ROOT

# A bound on a Python process's start and a one-line refusal; nothing here waits on the
# chain. Generous: a loaded CI host must not make a refusal look like a hang.
CLI_TIMEOUT = 60.0


def hachain(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    for var in ("HACHAIN_STATE_DIR", "HACHAIN_PERSIST_DIR", "HACHAIN_SIM_WATCHDOG"):
        env.pop(var, None)
    return subprocess.run([sys.executable, "-m", "hachain.cli", *args], capture_output=True,
                          text=True, timeout=CLI_TIMEOUT, env=env, cwd=cwd)


def one_line(p: subprocess.CompletedProcess[str], code: int) -> str:
    """The one line on stderr of a command that exited with `code` (and no traceback)."""
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr
    return lines[0]


# --- watchdog: a path that is no device is never opened -------------------------------------

def test_watchdog_regular_file_is_not_opened_nor_written(tmp_path: Any) -> None:
    f = tmp_path / "notes.txt"
    f.write_bytes(b"precious\n")
    for args in (("info",), ("info", "--open"), ("info", "--json"),
                 ("set-timeout", "5"), ("set-timeout", "5", "--open")):
        p = hachain("watchdog", *args, "-d", str(f))
        assert one_line(p, 1) == (
            f"hachain watchdog: {f}: open: not a character device (a watchdog is a device "
            "node such as /dev/watchdog0); left untouched")
        assert p.stdout == ""
    assert f.read_bytes() == b"precious\n"  # was b"Vrecious\n": the magic close wrote 'V'
