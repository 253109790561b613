"""bench/cgroup.py: the CPU quota the stalled-writer figure puts its writer under really throttles a
real busy process, and leaves nothing behind. Needs root and a cgroup v1 cpu controller: without them
it fails under CI=true and is skipped elsewhere."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import cgroup  # noqa: E402


@pytest.fixture
def quota():
    why = cgroup.unavailable()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the CPU quota cannot be tested here: {why}")
        pytest.skip(why)
    q = cgroup.CpuQuota.create(quota_us=2000, period_us=100_000)
    yield q
    q.close()
    assert not os.path.exists(q.path)


def _cpu_ns(pid: int) -> int:
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def test_a_busy_process_in_the_group_gets_about_its_quota_and_goes_home_after(quota):
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        home = cgroup._cpu_group_of(busy.pid)
        quota.add(busy.pid)
        assert cgroup._cpu_group_of(busy.pid) == "/" + os.path.basename(quota.path)
        c0, t0 = _cpu_ns(busy.pid), time.monotonic()
        time.sleep(0.35)
        used, wall = _cpu_ns(busy.pid) - c0, time.monotonic() - t0
        # 2 ms per 100 ms period: at most a period's quota per period started, and a little slack
        assert used <= (wall / 0.1 + 2) * 2e6 * 1.5, f"{used / 1e6:.1f} ms of CPU in {wall * 1e3:.0f} ms"
        assert quota.throttled()[0] >= 1
        quota.release(busy.pid)
        assert cgroup._cpu_group_of(busy.pid) == home
    finally:
        busy.kill()
        busy.wait()


def test_close_moves_what_is_left_out_and_removes_the_group(quota):
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        home = cgroup._cpu_group_of(sleeper.pid)
        quota.add(sleeper.pid)
        quota.close()
        assert not os.path.exists(quota.path)
        assert cgroup._cpu_group_of(sleeper.pid) == home
    finally:
        sleeper.kill()
        sleeper.wait()
