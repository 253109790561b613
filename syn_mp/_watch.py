"""Watching local processes for death: pidfd + the event loop, or psutil polling.

A process is watched by identity, (pid, start time): whatever order identities arrive in, the one
that matches the pid's current start time is the live one, and only an identity that provably is
not alive (no such pid, a zombie, or the pid now names a process with another start) is reported
dead. "Can't tell" (hidepid, EACCES, no fd left) is never taken for dead: such an identity is kept
and looked at again on the next poll.

Both watchers have one shape: watch(pid, start) -> bool (False: provably dead, not watched; the
caller purges it), has(pid, start), stats(), close(), and the on_exit(pid, start) callback given at
construction, called once for each watched identity that dies.
"""
from __future__ import annotations

import asyncio
import enum
import errno
import logging
import os
import resource
from typing import Callable

import psutil

from . import _procinfo
from ._health import Incidents, Supervised

OnExit = Callable[[int, int], None]

POLL_MIN = 0.02        # seconds between two looks at the polled identities
POLL_PER_ID = 2e-5     # ... growing with their number, so that polling costs bounded CPU
FD_RESERVE = (32, 256)  # fds kept free of pidfds (min, max): /proc reads, clients, the cluster


CANT_TELL = "can't tell whether a process lives (kept, looked at again)"


class Liveness(enum.Enum):
    ALIVE = "alive"
    DEAD = "dead"
    UNKNOWN = "unknown"


def liveness(pid: int, start: int) -> Liveness:
    """Whether the process (pid, start) lives, from /proc (and kill(pid, 0) when /proc won't say)."""
    try:
        now = _procinfo.live_start(pid)
    except _procinfo.CantTell:
        return Liveness.UNKNOWN
    return Liveness.ALIVE if now == start else Liveness.DEAD


def classify_psutil_error(err: BaseException, pid: int) -> Liveness:
    """What an exception from a psutil call on `pid` says. A zombie has exited: dead. NoSuchProcess
    is dead only if the kernel agrees (under hidepid=2 psutil reports another user's living process
    as gone). AccessDenied (hidepid=1, a private /proc) and anything else: can't tell."""
    if isinstance(err, psutil.ZombieProcess):
        return Liveness.DEAD
    if isinstance(err, psutil.NoSuchProcess) and 0 < pid < (1 << 31):
        # not psutil.pid_exists: on Linux it also trusts the /proc listing that hidepid filters
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return Liveness.DEAD
        except Exception:
            pass  # EPERM: it exists, another user's
    return Liveness.UNKNOWN


def fd_budget() -> int:
    """How many pidfds the manager may hold: the soft fd limit less a reserve, so that watching
    many processes never leaves it without an fd for a client, a /proc read or a socket."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(0, soft - min(FD_RESERVE[1], max(FD_RESERVE[0], soft // 8)))


class _PollingWatcher:
    """Identities looked at on a timer: all of them (psutil), or those without a pidfd (pidfd)."""

    kind = "?"

    def __init__(self, on_exit: OnExit, incidents: Incidents) -> None:
        self._on_exit = on_exit
        self._incidents = incidents
        self._polled: dict[int, dict[int, Liveness]] = {}  # pid -> {start: the last answer}
        self._npolled = 0
        self._kick = asyncio.Event()
        self.poller = Supervised(f"{self.kind} poll", self._poll_loop, incidents)
        self.poller.start()

    def _probe(self, pid: int, start: int) -> Liveness:
        try:
            now = _procinfo.live_start(pid)
        except _procinfo.CantTell as e:
            self._incidents.report(CANT_TELL, e, level=logging.WARNING)
            return Liveness.UNKNOWN
        return Liveness.ALIVE if now == start else Liveness.DEAD

    def has(self, pid: int, start: int) -> bool:
        return start in self._polled.get(pid, ())

    def watch(self, pid: int, start: int) -> bool:
        if self.has(pid, start):
            return True
        state = self._probe(pid, start)
        if state is Liveness.DEAD:
            return False
        if state is Liveness.ALIVE:
            self._supersede(pid, start)
            if self._watch_alive(pid, start):
                return True
        self._poll(pid, start, state)
        return True

    def _watch_alive(self, pid: int, start: int) -> bool:
        """Watch a verified identity by other means than polling; False: poll it."""
        return False

    def _supersede(self, pid: int, start: int) -> None:
        """The pid now names the process `start`: every other identity of it is dead."""
        for other in [s for s in self._polled.get(pid, ()) if s != start]:
            self._unpoll(pid, other)
            self._died(pid, other)

    def _poll(self, pid: int, start: int, state: Liveness) -> None:
        starts = self._polled.setdefault(pid, {})
        if start not in starts:
            self._npolled += 1
        starts[start] = state
        self._kick.set()

    def _unpoll(self, pid: int, start: int) -> None:
        starts = self._polled.get(pid)
        if starts is not None and starts.pop(start, None) is not None:
            self._npolled -= 1
            if not starts:
                del self._polled[pid]

    def _died(self, pid: int, start: int) -> None:
        try:
            self._on_exit(pid, start)
        except Exception as e:  # the callback isolates its own errors; this is the last guard
            self._incidents.report("exit callback", e)

    async def _poll_loop(self) -> None:
        while True:
            if not self._polled:
                self._kick.clear()
                self.poller.ok()
                await self._kick.wait()
            await asyncio.sleep(max(POLL_MIN, POLL_PER_ID * self._npolled))
            self.poll_once()
            self.poller.ok()

    def poll_once(self) -> None:
        promote = True  # until a pidfd can't be had this round
        for pid, starts in list(self._polled.items()):
            for start in list(starts):
                if start not in self._polled.get(pid, ()):
                    continue  # superseded earlier in this round
                try:
                    state = self._probe(pid, start)
                    if state is Liveness.DEAD:
                        self._unpoll(pid, start)
                        self._died(pid, start)
                    elif state is Liveness.ALIVE:
                        self._supersede(pid, start)
                        starts[start] = state
                        if promote:
                            promote = self._promote(pid, start)
                    else:
                        starts[start] = state
                except Exception as e:  # one identity's error must not stop the others' watch
                    self._incidents.report("poll", e)

    def _promote(self, pid: int, start: int) -> bool:
        """Move a polled live identity to a better watch; False when no more can be moved now."""
        return False

    def stats(self) -> dict[str, int]:
        unknown = sum(1 for starts in self._polled.values() for st in starts.values() if st is Liveness.UNKNOWN)
        return {"polled": self._npolled, "unknown": unknown}

    def __len__(self) -> int:
        return self._npolled

    def close(self) -> None:
        self.poller.close()
        self._polled.clear()
        self._npolled = 0


class PidfdWatcher(_PollingWatcher):
    """pidfd_open(2) per process; the fd turns readable when the process exits (Linux >= 5.3). Past
    the fd budget, or when pidfd_open fails (EMFILE, ENFILE, ...), the identity is polled, and moved
    back to a pidfd as soon as one can be had: a manager short of fds degrades, then recovers."""

    kind = "pidfd"

    def __init__(self, loop: asyncio.AbstractEventLoop, on_exit: OnExit, incidents: Incidents) -> None:
        self._loop = loop
        self._fds: dict[int, tuple[int, int]] = {}  # pid -> (fd, start)
        super().__init__(on_exit, incidents)

    @staticmethod
    def available() -> bool:
        if not hasattr(os, "pidfd_open"):
            return False
        try:
            os.close(os.pidfd_open(os.getpid()))
            return True
        except OSError:
            return False

    def has(self, pid: int, start: int) -> bool:
        w = self._fds.get(pid)
        return (w is not None and w[1] == start) or super().has(pid, start)

    def _supersede(self, pid: int, start: int) -> None:
        w = self._fds.get(pid)
        if w is not None and w[1] != start:
            self._close(pid)
            self._died(pid, w[1])
        super()._supersede(pid, start)

    def watch(self, pid: int, start: int) -> bool:
        """As the base class, with one /proc read: the pidfd first, then the start time it pins."""
        if self.has(pid, start):
            return True
        fd = self._pidfd(pid)
        try:
            state = self._probe(pid, start)
            if state is Liveness.ALIVE:
                self._supersede(pid, start)
                if fd is not None:
                    self._add(pid, start, fd)
                    return True
        except Exception:
            if fd is not None:
                os.close(fd)
            raise
        if fd is not None:
            os.close(fd)
        if state is Liveness.DEAD:
            return False
        self._poll(pid, start, state)  # no pidfd to be had, or can't tell: polled
        return True

    def _pidfd(self, pid: int) -> int | None:
        """A pidfd for pid; None past the fd budget, for no such pid, or when pidfd_open fails."""
        if not 0 < pid < (1 << 31) or len(self._fds) >= fd_budget():
            return None  # no such pid (the probe says dead), or no fd to spare
        try:
            return os.pidfd_open(pid)
        except ProcessLookupError:
            return None
        except OSError as e:
            name = errno.errorcode.get(e.errno or 0, "OSError")
            self._incidents.report(f"pidfd_open {name}: polling instead", e, level=logging.WARNING)
            return None

    def _add(self, pid: int, start: int, fd: int) -> None:
        self._loop.add_reader(fd, self._fired, pid)
        self._fds[pid] = (fd, start)

    def _watch_alive(self, pid: int, start: int) -> bool:
        fd = self._pidfd(pid)
        if fd is None:
            return False
        try:
            # the fd pins the process that had the pid: if its start matches now, it is this one
            # (the identity existed before the fd was opened, and one pid names one process at a time)
            if self._probe(pid, start) is not Liveness.ALIVE:
                os.close(fd)
                return False
            self._add(pid, start, fd)
        except Exception as e:
            os.close(fd)
            self._incidents.report("pidfd watch", e)
            return False
        return True

    def _promote(self, pid: int, start: int) -> bool:
        if pid in self._fds:
            return True  # held by a pidfd already (cannot happen: watch() checks has())
        if not self._watch_alive(pid, start):
            return False
        self._unpoll(pid, start)
        return True

    def _close(self, pid: int) -> None:
        w = self._fds.pop(pid, None)
        if w is not None:
            try:
                self._loop.remove_reader(w[0])
            finally:
                os.close(w[0])

    def _fired(self, pid: int) -> None:
        w = self._fds.get(pid)
        if w is None:
            return
        try:
            self._close(pid)
        except Exception as e:
            self._incidents.report("pidfd close", e)
        self._died(pid, w[1])

    def stats(self) -> dict[str, int]:
        return {"pidfd": len(self._fds), **super().stats()}

    def __len__(self) -> int:
        return len(self._fds) + super().__len__()

    def close(self) -> None:
        for pid in list(self._fds):
            self._close(pid)
        super().close()


class PsutilWatcher(_PollingWatcher):
    """Polls every watched identity through psutil: for kernels without pidfd."""

    kind = "psutil"

    def __init__(self, loop: asyncio.AbstractEventLoop, on_exit: OnExit, incidents: Incidents) -> None:
        super().__init__(on_exit, incidents)

    def _probe(self, pid: int, start: int) -> Liveness:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return Liveness.DEAD
        except Exception as e:
            if classify_psutil_error(e, pid) is Liveness.DEAD:
                return Liveness.DEAD
            # psutil can't tell (AccessDenied, no fd for its read, ...): /proc, then kill(pid, 0), may
        return super()._probe(pid, start)


def make_watcher(kind: str, loop: asyncio.AbstractEventLoop, on_exit: OnExit,
                 incidents: Incidents) -> PidfdWatcher | PsutilWatcher:
    """kind: "pidfd", "psutil" or "auto" (pidfd where the kernel has it)."""
    if kind == "auto":
        kind = "pidfd" if PidfdWatcher.available() else "psutil"
    if kind == "pidfd":
        return PidfdWatcher(loop, on_exit, incidents)
    if kind == "psutil":
        return PsutilWatcher(loop, on_exit, incidents)
    raise ValueError(f"unknown watcher {kind!r}: expected auto, pidfd or psutil")
