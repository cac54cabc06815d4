"""What every benchmark script here needs: the stamp service (or another bench/*.c)
compiled, and a process's memory from /proc. (The scripts run from this folder, so
`import benchlib` finds it.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def compile_c(tmp: str, name: str, who: str = "bench", static: bool = False,
              note: str = "") -> tuple[str, str]:
    """Compile bench/<name>.c with cc -O2 into <tmp>/<name>: (path, "static" or "dynamic").
    With static, falls back to a dynamic link when the static C library is missing
    (libc6-dev), saying so on stderr (plus `note`). Exits with a one-line reason without a
    compiler."""
    src = os.path.join(HERE, f"{name}.c")
    out = os.path.join(tmp, name)
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        sys.exit(f"{who}: needs a C compiler (apt-get install gcc) for {src}")
    if static:
        p = subprocess.run([cc, "-O2", "-static", "-o", out, src], capture_output=True,
                           text=True)
        if p.returncode == 0:
            return out, "static"
        why = (p.stderr.strip().splitlines() or ["no reason given"])[-1]
        print(f"{who}: note: cannot link {src} statically ({why}){note}", file=sys.stderr)
    subprocess.run([cc, "-O2", "-o", out, src], check=True)
    return out, "dynamic"


def compile_stamp(tmp: str, who: str = "bench", static: bool = True) -> tuple[str, str]:
    """Compile bench/stamp.c into <tmp>: (path, "static" or "dynamic"). Static unless
    asked otherwise or the static C library is missing (libc6-dev), then dynamic with a
    note on stderr. Exits with a one-line reason without a compiler."""
    return compile_c(tmp, "stamp", who, static,
                     "; the stamp is dynamic and its figures include the dynamic loader")


def byte_compile() -> None:
    """Compile hachain's modules to bytecode, as installing the package does (pip writes
    the .pyc files at install time). In a source checkout run with
    PYTHONDONTWRITEBYTECODE=1 (a CI or sandbox setting) nothing else writes them, and
    every layer of every chain would compile its modules from source at start: about
    0.3 s of CPU per layer, a cost no installed chain pays. Stale files are rewritten."""
    import compileall
    root = os.path.dirname(HERE)
    compileall.compile_dir(os.path.join(root, "hachain"), quiet=1)  # (the simulators too)
    # and the dataclass methods (hachain/classcache.py), in a fresh interpreter: this one
    # has built its classes already
    subprocess.run([sys.executable, "-m", "hachain.classcache"], cwd=root, check=True,
                   stdout=subprocess.DEVNULL, timeout=120)


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
