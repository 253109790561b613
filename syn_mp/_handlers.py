"""Syn's callbacks in the manager (`--event-handler pkg.module:attr`), run off the event loop.

Callbacks run one at a time, in journal order, on a worker thread: one that raises
is logged; one that hangs longer than `hang_timeout` is logged and abandoned, and
a fresh thread takes the next callbacks, so the manager never stalls on them.
"""
from __future__ import annotations

import importlib
import logging
import queue
import threading
import time
from typing import Any

log = logging.getLogger("syn_mp.manager")

CALLBACK_OF_KIND = {
    "registered": "on_process_registered",
    "registry_updated": "on_registry_process_updated",
    "unregistered": "on_process_unregistered",
    "joined": "on_process_joined",
    "group_updated": "on_group_process_updated",
    "left": "on_process_left",
}


class HandlerError(Exception):
    """The --event-handler spec can't be loaded."""


def load_handler(spec: str) -> Any:
    """`pkg.module:attr` -> the object (a class is instantiated without arguments)."""
    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        raise HandlerError(f"--event-handler {spec!r}: expected MODULE:ATTR")
    try:
        obj: Any = importlib.import_module(mod_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise HandlerError(f"--event-handler {spec!r}: {e}") from None
    if isinstance(obj, type):
        obj = obj()
    if not any(hasattr(obj, n) for n in (*CALLBACK_OF_KIND.values(), "resolve_registry_conflict")):
        raise HandlerError(f"--event-handler {spec!r} has none of Syn's callbacks")
    return obj


class CallbackRunner:
    def __init__(self, handler: Any, hang_timeout: float = 5.0) -> None:
        self.handler = handler
        self.hang_timeout = hang_timeout
        self._queue: queue.SimpleQueue[tuple[str, tuple[Any, ...]]] = queue.SimpleQueue()
        self._generation = 0
        self._current: tuple[int, str, float] | None = None
        self.failures = 0
        self.hangs = 0
        self._sync_hung: threading.Thread | None = None
        self._start_thread()

    def _start_thread(self) -> None:
        self._generation += 1
        threading.Thread(target=self._work, args=(self._generation,), name="syn_mp-callbacks", daemon=True).start()

    def submit(self, kind: str, args: tuple[Any, ...]) -> None:
        name = CALLBACK_OF_KIND[kind]
        if getattr(self.handler, name, None) is not None:
            self._queue.put((name, args))

    def _work(self, generation: int) -> None:
        while generation == self._generation:
            name, args = self._queue.get()
            if generation != self._generation:
                self._queue.put((name, args))  # abandoned thread: hand the item back
                return
            self._current = (generation, name, time.monotonic())
            try:
                getattr(self.handler, name)(*args)
            except Exception:
                self.failures += 1
                log.exception("event handler %s%r raised; ignored", name, args[:2])
            finally:
                if self._current and self._current[0] == generation:
                    self._current = None

    def check_hung(self) -> None:
        """Called periodically by the manager: replace a thread stuck in a callback."""
        cur = self._current
        if cur and time.monotonic() - cur[2] > self.hang_timeout:
            self.hangs += 1
            self._current = None
            log.error("event handler %s has run for over %.1fs; abandoning it and going on", cur[1],
                      self.hang_timeout)
            self._start_thread()

    def call_sync(self, name: str, *args: Any, default: Any = None, timeout: float = 1.0) -> Any:
        """For callbacks whose answer the manager needs (resolve_registry_conflict): run on a thread
        and waited for at most `timeout` s. One that raises or hangs gives `default`; while a hung
        call has not returned, later calls give `default` at once (the loop waits once, not per call)."""
        fn = getattr(self.handler, name, None)
        if fn is None:
            return default
        if self._sync_hung is not None and self._sync_hung.is_alive():
            return default
        box: list[Any] = []

        def run() -> None:
            try:
                box.append(fn(*args))
            except Exception:
                self.failures += 1
                log.exception("event handler %s raised; using the default", name)
        th = threading.Thread(target=run, name=f"syn_mp-{name}", daemon=True)
        th.start()
        th.join(timeout)
        if th.is_alive():
            self.hangs += 1
            self._sync_hung = th
            log.error("event handler %s has run for over %.1fs; using the default", name, timeout)
            return default
        return box[0] if box else default
