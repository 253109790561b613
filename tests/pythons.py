"""The CPythons of this machine that syn_mp declares support for (setup.py's python_requires and up),
for the install smoke of tests/test_install.py.

Looked for: pyenv's versions ($PYENV_ROOT/versions, else ~/.pyenv/versions: directories named
3.N.M, so no PyPy, conda or -dev builds), `python3.N` on PATH, and the interpreter running the tests.
The newest patch release of each minor version is kept.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def declared_minimum() -> tuple[int, int]:
    with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as f:
        m = re.search(r'python_requires\s*=\s*">=\s*(\d+)\.(\d+)"', f.read())
    assert m, "setup.py has no python_requires='>=X.Y'"
    return int(m.group(1)), int(m.group(2))


def pyenv_versions_dir() -> str:
    root = os.environ.get("PYENV_ROOT") or os.path.join(os.path.expanduser("~"), ".pyenv")
    return os.path.join(root, "versions")


def _version(exe: str) -> tuple[int, int, int] | None:
    try:
        out = subprocess.run([exe, "-c", "import sys, platform; print(platform.python_implementation(), "
                              "*sys.version_info[:3])"], capture_output=True, text=True, timeout=30).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        return None
    if len(out) != 4 or out[0] != "CPython":
        return None
    return int(out[1]), int(out[2]), int(out[3])


def default_python() -> str:
    """The interpreter the test venv was made from (not the venv's own python: a venv of a venv would
    not be fresh)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def find_pythons() -> dict[tuple[int, int], str]:
    """(major, minor) -> interpreter, from the declared minimum up, the default one always included."""
    found: dict[tuple[int, int], tuple[tuple[int, int, int], str]] = {}

    def consider(exe: str) -> None:
        v = _version(exe)
        if v is None or v[:2] < declared_minimum():
            return
        if v[:2] not in found or v > found[v[:2]][0]:
            found[v[:2]] = (v, exe)

    for d in glob.glob(os.path.join(pyenv_versions_dir(), "3.*")):
        exe = os.path.join(d, "bin", "python3")
        if re.fullmatch(r"3\.\d+\.\d+", os.path.basename(d)) and os.access(exe, os.X_OK):
            consider(exe)
    for minor in range(declared_minimum()[1], 30):
        exe = shutil.which(f"python3.{minor}")
        if exe and (3, minor) not in found:
            consider(exe)
    default = default_python()
    v = sys.version_info[:2]
    found[v] = (tuple(sys.version_info[:3]), default)  # type: ignore[assignment]
    return {k: found[k][1] for k in sorted(found)}
