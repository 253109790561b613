"""The change datagrams of the UDP transport (_cluster): a node's consecutive changes of a scope,
packed into as few datagrams as their sizes allow.

    ["chg", scope, first_seq, [[put, type, key, pid, start, time_ns, meta, reason], ...]]

The n-th change (from 0) carries seq first_seq + n. There is no timer: the changes one journal
drain hands over (one when a lone write woke the manager, thousands in a burst) go out together
at the end of that loop turn. A lone change waits for nothing, and a burst costs one datagram
(one MAC, one wake-up of each receiver) per dozen changes instead of one per change: 100,000
writes on one node kept 6 receivers busy for 20 s when each change was a datagram.
A change too big for a datagram goes as ["big", scope, seq]: its receivers fetch a snapshot.
"""
from __future__ import annotations

import asyncio
from typing import Callable

import msgpack

from ._replication import Change

_PREFIX = b"\x94" + msgpack.packb("chg")  # a 4-element array, then its kind


class Outbox:
    """Local changes on their way out: `add` them in seq order, they are sent by the end of the loop
    turn (or sooner, once a datagram is full) through `send(body)`; `room` is a body's largest size."""

    def __init__(self, send: Callable[[bytes], None], room: int) -> None:
        self._send = send
        self._room = room
        self._open: dict[str, tuple[int, list[bytes], int]] = {}  # scope -> (first seq, packed changes, bytes)
        self._scheduled = False

    def add(self, scope: str, seq: int, change: Change) -> None:
        e = change.entry
        item = msgpack.packb([change.put, e.type, e.key, e.pid, e.start, e.time_ns, e.meta, change.reason])
        head = len(_PREFIX) + len(scope.encode()) + 24  # scope, first seq and array headers, at most
        batch = self._open.get(scope)
        if batch is not None and (seq != batch[0] + len(batch[1]) or head + batch[2] + len(item) > self._room):
            self._flush_scope(scope)  # full, or not the next seq (a resync skipped one)
            batch = None
        if head + len(item) > self._room:  # (any open batch was flushed just above: too full for it)
            self._send(msgpack.packb(["big", scope, seq]))
            return
        if batch is None:
            self._open[scope] = (seq, [item], len(item))
        else:
            batch[1].append(item)
            self._open[scope] = (batch[0], batch[1], batch[2] + len(item))
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Send every change added so far."""
        self._scheduled = False
        for scope in list(self._open):
            self._flush_scope(scope)

    def _flush_scope(self, scope: str) -> None:
        first, items, _ = self._open.pop(scope)
        n = len(items)
        head = bytes([0x90 | n]) if n < 16 else b"\xdc" + n.to_bytes(2, "big")  # msgpack: an array of n
        self._send(_PREFIX + msgpack.packb(scope) + msgpack.packb(first) + head + b"".join(items))
