"""What every benchmark script here needs: the stamp service compiled, and a process's
memory from /proc. (The scripts run from this folder, so `import benchlib` finds it.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def compile_c(source: str, tmp: str, who: str = "bench") -> str:
    """Compile bench/<source> into <tmp>; exit with a one-line reason without a compiler."""
    out = os.path.join(tmp, os.path.splitext(os.path.basename(source))[0])
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        sys.exit(f"{who}: needs a C compiler (apt-get install gcc) for bench/{source}")
    subprocess.run([cc, "-O2", "-o", out, os.path.join(HERE, source)], check=True)
    return out


def status_mb(pid: int, field: str = "VmRSS") -> float:
    """A memory field of /proc/PID/status (VmRSS, VmHWM, ...) in MiB; 0 when gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0
