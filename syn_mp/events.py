"""events(): follow what happens in a scope on this node, by tailing its journal read-only."""
from __future__ import annotations

import time
from typing import Any, Iterator

from ._table import (R_CONFLICT, R_MANAGER_RESTART, R_NODE_DOWN, R_NODE_UP, R_NORMAL, R_PROCESS_EXIT,
                     JournalRecord, Table)
from ._types import Event, Pid
from .codec import decode, decode_name
from ._client import table_of as _table

_POLL_MIN, _POLL_MAX = 0.0005, 0.01  # an idle subscriber backs off to 10 ms between looks
_SIMPLE_REASONS = {R_NORMAL: "normal", R_PROCESS_EXIT: "process_exit", R_MANAGER_RESTART: "manager_restart",
                   R_CONFLICT: "conflict_resolution"}


def reason_of(t: Table, code: int, reason_node: int) -> Any:
    """The API's reason for a journal code: a string, or ("remote_node_up" | "remote_node_down", node)."""
    if code == R_NODE_UP:
        return ("remote_node_up", t.node_name(reason_node))
    if code == R_NODE_DOWN:
        return ("remote_node_down", t.node_name(reason_node))
    return _SIMPLE_REASONS.get(code, "normal")


def to_event(scope: str, t: Table, r: JournalRecord) -> Event:
    return Event(r.kind, scope, decode_name(r.key), Pid(t.node_name(r.node), r.pid), decode(r.meta),
                 reason_of(t, r.reason, r.reason_node))


def events(scope: str, timeout: float | None = None) -> Iterator[Event]:
    """Yield each change of `scope` on this node from now on; end when `timeout` s pass without one.

    A subscriber that falls more than the journal ring behind skips what was overwritten.
    """
    t = _table(scope)
    reader = t.journal()
    return _follow(scope, t, reader, timeout)


def events_since_creation(scope: str, timeout: float | None = None) -> Iterator[Event]:
    """As events(), from the scope's first change on (its journal's start) while the ring still holds
    it, else from now: for `syn-mp watch` started before the scope existed."""
    t = _table(scope)  # raises here, not at the first next(), for a scope that is not there
    reader = t.journal(0)
    first = reader.read()
    if first is None:  # the ring has moved past its start: from now
        reader, first = t.journal(), []

    def stream() -> Iterator[Event]:
        for r in first:
            yield to_event(scope, t, r)
        yield from _follow(scope, t, reader, timeout)
    return stream()


def _follow(scope: str, t: Table, reader: Any, timeout: float | None) -> Iterator[Event]:
    idle_since = time.monotonic()
    pause = _POLL_MIN
    while True:
        recs = reader.read()
        if recs:
            for r in recs:
                yield to_event(scope, t, r)
            idle_since = time.monotonic()
            pause = _POLL_MIN
            continue
        if timeout is not None and time.monotonic() - idle_since >= timeout:
            return
        time.sleep(pause if timeout is None else min(pause, max(0.0, idle_since + timeout - time.monotonic())))
        pause = min(pause * 2, _POLL_MAX)
