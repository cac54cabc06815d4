"""scripts/setup.sh as the demo runs it, on a machine that has never run the tests.

The demo's set-up installs hachain alone. On a fresh machine it once installed the `test`
extra too, whose systemd-python builds against libsystemd-dev, a package only
`setup.sh --test` installs: `bash scripts/demo.sh`, the first README command, failed
there. These tests build a copy of the project with pkg-config unable to find libsystemd
and pip's wheel cache off, as on that machine, and run the set-up for real.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _copy_project(dst: Path) -> None:
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, dst / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "_front", "*.egg-info")
    for d in ("hachain", "scripts"):
        shutil.copytree(ROOT / d, dst / d, ignore=ignore)


def _setup(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    # pkg-config finds no .pc file at all, so systemd-python cannot build; no built wheel
    # from an earlier install of the test extra may stand in for it either
    env.update(PKG_CONFIG_LIBDIR="/nonexistent", PKG_CONFIG_PATH="", PIP_NO_CACHE_DIR="1")
    return subprocess.run(["bash", "scripts/setup.sh", *args], cwd=project, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.timeout(900)
def test_the_demo_set_up_needs_no_test_extra(tmp_path: Any) -> None:
    if shutil.which("dpkg-query") is None:
        pytest.skip("not a Debian machine: setup.sh checks its packages with dpkg-query")
    project = tmp_path / "p"
    project.mkdir()
    _copy_project(project)
    # the venv from the interpreter running the tests, as the README's python3 would be
    subprocess.run([sys.executable, "-m", "venv", str(project / ".venv")], check=True,
                   timeout=120)
    r = _setup(project)
    assert r.returncode == 0, f"setup.sh failed:\n{r.stdout}\n{r.stderr[-3000:]}"
    assert "installing hachain into .venv" in r.stdout
    py = project / ".venv" / "bin" / "python"
    # hachain is importable and the demo's command answers
    out = subprocess.run([str(project / ".venv" / "bin" / "hachain-py"), "sim", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "sim" in out.stdout
    # the test extra was not installed: systemd-python (module `systemd`) is absent
    probe = subprocess.run([str(py), "-c", "import systemd"], capture_output=True,
                           text=True, timeout=60)
    assert probe.returncode != 0
    # a second run installs nothing new
    again = _setup(project)
    assert again.returncode == 0, again.stderr
    assert "installing" not in again.stdout
    # Stamps older than pyproject.toml (as after a change to it): it installs again, and
    # says so in the plain install's stamp only: the test tools' stamp (an up-to-date
    # one covers the plain install) stays old, so `setup.sh --test` installs again too.
    plain, test = project / ".venv/.hachain-installed", project / ".venv/.hachain-installed-test"
    test.touch()
    os.utime(test, (1, 1))
    os.utime(plain, (1, 1))
    assert _setup(project).stdout.count("installing hachain into .venv") == 1
    assert plain.stat().st_mtime > 1 and test.stat().st_mtime == 1
    # an up-to-date test install covers the plain one
    os.utime(plain, (1, 1))
    test.touch()
    covered = _setup(project)
    assert covered.returncode == 0 and "installing" not in covered.stdout, covered.stdout
