"""Every declared Python, installed as a user installs: `python -m build` makes the sdist and, from
it, the wheel; each CPython of this machine from the declared minimum up (tests/pythons.py) gets a
fresh venv and runs the smoke (tests/smoke_install.py: manager, registry, a process's death). The
default interpreter installs the wheel; the others build the sdist, as pip does for them.

Where only the default interpreter is found (a machine without pyenv), the smoke runs on it alone and
a warning says which versions were not tried: README, "Tests".
"""
from __future__ import annotations

import glob
import os
import subprocess
import sys
import tempfile
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterator

import psutil
import pytest

from syn_mp._config import segment_name

from conftest import ROOT, SHM_IN_FLIGHT, _syn_mp_segments, unlink_segments_of
from pythons import declared_minimum, find_pythons, pyenv_versions_dir

PYTHONS = find_pythons()


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The sdist and the wheel, built once for the session: {"sdist": path, "wheel": path}."""
    out = tmp_path_factory.mktemp("dist")
    r = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), ROOT], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    sdists, wheels = glob.glob(str(out / "*.tar.gz")), glob.glob(str(out / "*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, os.listdir(out)
    return {"sdist": sdists[0], "wheel": wheels[0]}


def test_dist_is_ready_for_the_index(dist: dict[str, str]) -> None:
    """twine's check of what PyPI would render and accept; the wheel carries py.typed and the C
    extension, the sdist the C sources."""
    r = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", dist["sdist"], dist["wheel"]],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.count("PASSED") == 2, r.stdout + r.stderr
    import tarfile
    import zipfile
    names = zipfile.ZipFile(dist["wheel"]).namelist()
    assert "syn_mp/py.typed" in names and any(n.startswith("syn_mp/_native") and n.endswith(".so") for n in names)
    with tarfile.open(dist["sdist"]) as tf:
        members = {m.split("/", 1)[1] for m in tf.getnames() if "/" in m}
    assert {"csrc/table.c", "syn_mp/py.typed", "setup.py", "pyproject.toml", "README.md"} <= members, members


def test_cibuildwheel_builds_manylinux_wheels_for_every_declared_python() -> None:
    """The release configuration (pyproject.toml, [tool.cibuildwheel]): one manylinux wheel per
    CPython from the declared minimum up. Building them needs docker (`./dev release`); the plan is
    checked here."""
    r = subprocess.run([sys.executable, "-m", "cibuildwheel", "--print-build-identifiers", "--platform", "linux"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    ids = r.stdout.split()
    lo = declared_minimum()[1]
    assert ids and all("manylinux" in i for i in ids), ids
    assert {i.split("-")[0] for i in ids} == {f"cp3{m}" for m in range(lo, lo + len(ids))}, ids
    assert ids[0].startswith(f"cp3{lo}-"), ids


def _kill_managers_of(d: str) -> None:
    """A manager a failed smoke left running in dir `d`: stopped by its pid."""
    for p in psutil.process_iter():
        try:
            if p.pid != os.getpid() and any(d in arg for arg in p.cmdline()):
                p.kill()
        except psutil.Error:
            pass


def fresh_venv(python: str, where: str) -> str:
    """A venv of `python` without pip (the test venv's pip installs into it: quicker than ensurepip)."""
    venv = os.path.join(where, "venv")
    r = subprocess.run([python, "-m", "venv", "--without-pip", venv], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return os.path.join(venv, "bin", "python")


def pip_install(vpython: str, what: str) -> None:
    r = subprocess.run([sys.executable, "-m", "pip", "--python", vpython, "install", "-q",
                        "--disable-pip-version-check", what], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def smoke(vpython: str, where: str) -> str:
    r = subprocess.run([vpython, os.path.join(ROOT, "tests", "smoke_install.py"), os.path.join(where, "rt")],
                       capture_output=True, text=True, timeout=120,
                       # not the checkout: its syn_mp must not be imported, by cwd or PYTHONPATH
                       cwd=where, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert r.returncode == 0 and "smoke ok" in r.stdout, r.stdout + r.stderr
    return r.stdout.strip()


def _install_and_smoke(version: tuple[int, int], dist: dict[str, str], where: str) -> tuple[str, str]:
    """(venv python, smoke output) of one version; the assertions above raise on a failure. The
    smoke's node is stopped and its segments unlinked either way."""
    vpython = fresh_venv(PYTHONS[version], where)
    pip_install(vpython, dist["wheel"] if version == sys.version_info[:2] else dist["sdist"])
    try:
        return vpython, smoke(vpython, where)
    finally:
        _kill_managers_of(where)
        unlink_segments_of(os.path.join(where, "rt"))


@pytest.fixture(scope="session")
def installs(dist: dict[str, str]) -> Iterator[dict[tuple[int, int], tuple[str, "Future[tuple[str, str]]"]]]:
    """Every version installed and smoked at once, each in its own dir (most of the time is the C
    extension's build from the sdist, one compiler per core): {version: (dir, its future)}."""
    dirs = {v: tempfile.mkdtemp(prefix="synmp-", dir="/tmp") for v in PYTHONS}  # AF_UNIX paths < 108 bytes
    prefixes = {segment_name(os.path.join(d, "rt"), "") for d in dirs.values()}
    SHM_IN_FLIGHT.update(prefixes)  # the smokes run beside other tests: each unlinks its own
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1)) as pool:
        yield {v: (d, pool.submit(_install_and_smoke, v, dist, d)) for v, d in dirs.items()}
    for d in dirs.values():
        _kill_managers_of(d)
        subprocess.run(["rm", "-rf", d], check=False)
    SHM_IN_FLIGHT.difference_update(prefixes)
    left = [n for n in _syn_mp_segments() if any(n.startswith(p) for p in prefixes)]
    assert not left, f"the install smokes left segments behind: {left}"


@pytest.mark.parametrize("version", sorted(PYTHONS), ids=lambda v: f"{v[0]}.{v[1]}")
def test_install_and_smoke(version: tuple[int, int], installs: dict) -> None:
    where, done = installs[version]
    vpython, out = done.result(timeout=900)  # re-raises that version's failure here
    print(out)
    if version == sys.version_info[:2]:
        users_checker_sees_the_hints(vpython, where)


def users_checker_sees_the_hints(vpython: str, where: str) -> None:
    """The installed package is typed (py.typed, PEP 561): a user's mypy reads its hints and catches a
    wrong use, where an untyped package would only be reported as 'missing library stubs'."""
    pytest.importorskip("mypy")  # the test extra has it on Python >= 3.10
    user = os.path.join(where, "user.py")
    with open(user, "w") as f:
        f.write("import syn_mp\nn: int = syn_mp.node_name()\n")
    r = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", "--python-executable", vpython, user],
                       capture_output=True, text=True, timeout=300, cwd=where)
    assert 'Incompatible types in assignment (expression has type "str", variable has type "int")' in r.stdout, \
        r.stdout + r.stderr
    assert "py.typed" not in r.stdout, r.stdout


def test_the_declared_pythons_were_found() -> None:
    """Says which declared versions this machine lacks; fails only if the default one is below the minimum."""
    assert sys.version_info[:2] >= declared_minimum()
    missing = [f"3.{m}" for m in range(declared_minimum()[1], sys.version_info[1]) if (3, m) not in PYTHONS]
    if missing:
        warnings.warn(f"the install smoke did not run on Python {', '.join(missing)}: not found in "
                      f"{pyenv_versions_dir()} nor as python3.N on PATH (ran on "
                      f"{', '.join(f'{a}.{b}' for a, b in PYTHONS)})")
