"""What the manager survived: errors counted by kind and logged once, and loops that restart.

A failure that repeats (a full fd table, a bug on one record) must neither end a loop nor flood the
log: each kind is logged the first time, then at most once per REMIND seconds with a count, and
`syn-mp status` shows every kind with its count and latest message.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Coroutine

REMIND = 600.0  # seconds between two log lines of one kind of incident
BACKOFF_MIN, BACKOFF_MAX = 0.05, 5.0  # seconds before a crashed loop is started again


class Incidents:
    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._kinds: dict[str, dict[str, Any]] = {}

    def report(self, kind: str, err: BaseException | str, level: int = logging.ERROR) -> None:
        text = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
        now = time.monotonic()
        rec = self._kinds.get(kind)
        if rec is None:
            self._kinds[kind] = {"count": 1, "last": text, "logged": now, "unlogged": 0}
            trace = err if isinstance(err, BaseException) and level >= logging.ERROR else None
            self._log.log(level, "%s: %s (logged once; repeats are counted in `syn-mp status`)", kind, text,
                          exc_info=trace)
            return
        rec["count"] += 1
        rec["last"] = text
        rec["unlogged"] += 1
        if now - rec["logged"] >= REMIND:
            self._log.log(level, "%s: %d more since the last log line, latest: %s", kind, rec["unlogged"], text)
            rec["logged"], rec["unlogged"] = now, 0

    def summary(self) -> dict[str, dict[str, Any]]:
        return {k: {"count": r["count"], "last": r["last"]} for k, r in sorted(self._kinds.items())}


class Supervised:
    """A task that must run as long as the manager: when it ends (an exception, or a return), the
    incident is reported and the task started again after a backoff. `failing` holds from a crash
    until the loop calls ok() after a clean round."""

    def __init__(self, name: str, factory: Callable[[], Coroutine[Any, Any, None]], incidents: Incidents) -> None:
        self.name = name
        self.restarts = 0
        self.failing = False
        self._factory = factory
        self._incidents = incidents
        self._streak = 0
        self._task: asyncio.Task[None] | None = None
        self._later: asyncio.TimerHandle | None = None
        self._closed = False

    def start(self) -> None:
        self._later = None
        if self._closed:
            return
        self._task = asyncio.get_running_loop().create_task(self._factory())
        self._task.add_done_callback(self._ended)

    def ok(self) -> None:
        self.failing = False
        self._streak = 0

    def _ended(self, task: asyncio.Task[None]) -> None:
        if self._closed or task.cancelled():
            return
        err = task.exception() or RuntimeError("the loop returned")
        self.failing = True
        self.restarts += 1
        self._incidents.report(f"{self.name} loop stopped and restarted", err)
        delay = min(BACKOFF_MAX, BACKOFF_MIN * 2 ** min(self._streak, 10))
        self._streak += 1
        self._later = asyncio.get_running_loop().call_later(delay, self.start)

    def close(self) -> None:
        self._closed = True
        if self._later is not None:
            self._later.cancel()
        if self._task is not None:
            self._task.cancel()
