"""A CPU quota for one process of the bench: a cgroup v1 `cpu` group of its own.

  q = CpuQuota.create(quota_us=2000, period_us=100_000)   # /sys/fs/cgroup/cpu/synbench-<pid>
  q.add(pid); ...; q.release(pid); q.close()               # close() removes the group

The bench's runs are root here; where the controller is missing or not writable,
`unavailable()` says why and the figure reports its rows as not run.
"""
from __future__ import annotations

import os

CPU_ROOT = "/sys/fs/cgroup/cpu"


def unavailable() -> str | None:
    """Why no cpu quota can be set here, or None when it can."""
    if not os.path.exists(os.path.join(CPU_ROOT, "cpu.cfs_quota_us")):
        return f"no cgroup v1 cpu controller at {CPU_ROOT}"
    if not os.access(CPU_ROOT, os.W_OK):
        return f"{CPU_ROOT} is not writable (needs root)"
    return None


def _cpu_group_of(pid: int) -> str:
    """The cpu cgroup a process is in, as a path under CPU_ROOT ("/" for the root group)."""
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if "cpu" in controllers.split(","):
                return path
    return "/"


def _write(path: str, value: object) -> None:
    with open(path, "w") as f:
        f.write(f"{value}\n")


class CpuQuota:
    def __init__(self, path: str) -> None:
        self.path = path
        self.home: dict[int, str] = {}  # pid -> the group it came from

    @classmethod
    def create(cls, quota_us: int, period_us: int) -> "CpuQuota":
        path = os.path.join(CPU_ROOT, f"synbench-{os.getpid()}")
        os.mkdir(path)
        q = cls(path)
        try:
            _write(os.path.join(path, "cpu.cfs_period_us"), period_us)  # the period first: quota <= period
            _write(os.path.join(path, "cpu.cfs_quota_us"), quota_us)
        except OSError:
            q.close()
            raise
        return q

    def add(self, pid: int) -> None:
        """Move the process (all its threads) into the group."""
        self.home[pid] = _cpu_group_of(pid)
        _write(os.path.join(self.path, "cgroup.procs"), pid)

    def release(self, pid: int) -> None:
        """Move the process back to the group it came from."""
        home = self.home.pop(pid, "/")
        try:
            _write(os.path.join(CPU_ROOT + home.rstrip("/"), "cgroup.procs"), pid)
        except ProcessLookupError:
            pass  # it exited meanwhile

    def throttled(self) -> tuple[int, int]:
        """(periods in which the group was throttled, ns it spent throttled) so far: cpu.stat."""
        got = {}
        with open(os.path.join(self.path, "cpu.stat")) as f:
            for line in f:
                k, v = line.split()
                got[k] = int(v)
        return got.get("nr_throttled", 0), got.get("throttled_time", 0)

    def close(self) -> None:
        """Move anything left back to its group and remove the group (rmdir of an empty cgroup)."""
        for pid in list(self.home):
            self.release(pid)
        try:
            with open(os.path.join(self.path, "cgroup.procs")) as f:
                left = [int(x) for x in f.read().split()]
        except FileNotFoundError:
            return
        for pid in left:  # not ours to know where they came from: the root group
            try:
                _write(os.path.join(CPU_ROOT, "cgroup.procs"), pid)
            except ProcessLookupError:
                pass
        os.rmdir(self.path)
