"""Watching local processes for death: pidfd + the event loop, or psutil polling.

Both watchers have one shape: watch(pid, start) -> bool (False: already dead or
not the process that registered), unwatch(pid), and the on_exit callback given at
construction, called once per watched process that dies.
"""
from __future__ import annotations

import asyncio
import logging
import os
from typing import Callable

import psutil

from . import _procinfo

log = logging.getLogger("syn_mp.manager")

OnExit = Callable[[int, int], None]


class PidfdWatcher:
    """pidfd_open(2) per process; the fd turns readable when the process exits (Linux >= 5.3)."""

    kind = "pidfd"

    def __init__(self, loop: asyncio.AbstractEventLoop, on_exit: OnExit) -> None:
        self._loop = loop
        self._on_exit = on_exit
        self._fds: dict[int, tuple[int, int]] = {}  # pid -> (fd, start)

    @staticmethod
    def available() -> bool:
        if not hasattr(os, "pidfd_open"):
            return False
        try:
            os.close(os.pidfd_open(os.getpid()))
            return True
        except OSError:
            return False

    def watching(self, pid: int) -> int | None:
        w = self._fds.get(pid)
        return None if w is None else w[1]

    def watch(self, pid: int, start: int) -> bool:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return False
        # the fd pins this pid: if the start time matches now, it is the registered process
        if _procinfo.start_time(pid) != start:
            os.close(fd)
            return False
        self._fds[pid] = (fd, start)
        self._loop.add_reader(fd, self._fired, pid)
        return True

    def unwatch(self, pid: int) -> None:
        w = self._fds.pop(pid, None)
        if w is not None:
            self._loop.remove_reader(w[0])
            os.close(w[0])

    def _fired(self, pid: int) -> None:
        start = self._fds[pid][1]
        self.unwatch(pid)
        self._on_exit(pid, start)

    def __len__(self) -> int:
        return len(self._fds)

    def close(self) -> None:
        for pid in list(self._fds):
            self.unwatch(pid)


class PsutilWatcher:
    """Polls the watched processes every `interval` seconds: for kernels without pidfd."""

    kind = "psutil"

    def __init__(self, loop: asyncio.AbstractEventLoop, on_exit: OnExit, interval: float = 0.02) -> None:
        self._on_exit = on_exit
        self._procs: dict[int, tuple[psutil.Process, int]] = {}
        self._interval = interval
        self._task = loop.create_task(self._poll())

    @staticmethod
    def _alive(proc: psutil.Process, start: int) -> bool:
        try:
            return proc.status() != psutil.STATUS_ZOMBIE and _procinfo.start_time(proc.pid) == start
        except psutil.Error:
            return False

    def watching(self, pid: int) -> int | None:
        w = self._procs.get(pid)
        return None if w is None else w[1]

    def watch(self, pid: int, start: int) -> bool:
        try:
            proc = psutil.Process(pid)
        except psutil.Error:
            return False
        if not self._alive(proc, start):
            return False
        self._procs[pid] = (proc, start)
        return True

    def unwatch(self, pid: int) -> None:
        self._procs.pop(pid, None)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            for pid, (proc, start) in list(self._procs.items()):
                if not self._alive(proc, start) and self._procs.pop(pid, None) is not None:
                    self._on_exit(pid, start)

    def __len__(self) -> int:
        return len(self._procs)

    def close(self) -> None:
        self._task.cancel()
        self._procs.clear()


def make_watcher(kind: str, loop: asyncio.AbstractEventLoop, on_exit: OnExit) -> PidfdWatcher | PsutilWatcher:
    """kind: "pidfd", "psutil" or "auto" (pidfd where the kernel has it)."""
    if kind == "auto":
        kind = "pidfd" if PidfdWatcher.available() else "psutil"
    if kind == "pidfd":
        return PidfdWatcher(loop, on_exit)
    if kind == "psutil":
        return PsutilWatcher(loop, on_exit)
    raise ValueError(f"unknown watcher {kind!r}: expected auto, pidfd or psutil")
