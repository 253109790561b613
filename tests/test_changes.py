"""The change datagrams (syn_mp._changes.Outbox): a node's consecutive changes of a scope packed
into as few datagrams as fit, sent by the end of the loop turn without a timer, in seq order."""
from __future__ import annotations

import asyncio

import msgpack

from syn_mp import _wire
from syn_mp._changes import Outbox
from syn_mp._replication import Change, Entry
from syn_mp._table import REG

ROOM = _wire.body_room("n1")


def change(i: int, meta: bytes = b"\xc0") -> Change:
    return Change(True, Entry(REG, b"name-%d" % i, 1000 + i, 7, 10**18 + i, meta), 0)


def run(steps) -> list:
    """The bodies the outbox sends while `steps(outbox)` runs, and by the end of that loop turn."""
    sent: list[bytes] = []

    async def main() -> None:
        steps(Outbox(sent.append, ROOM))
        await asyncio.sleep(0)  # the end of this loop turn
    asyncio.run(main())
    for body in sent:
        assert len(body) <= ROOM
    return [msgpack.unpackb(b, raw=False) for b in sent]


def test_a_lone_change_goes_out_by_the_end_of_the_loop_turn():
    assert run(lambda o: o.add("s", 1, change(1))) == [
        ["chg", "s", 1, [[True, REG, b"name-1", 1001, 7, 10**18 + 1, b"\xc0", 0]]]]


def test_a_burst_fills_datagrams_in_seq_order_and_the_seqs_follow_from_the_first():
    msgs = run(lambda o: [o.add("s", i, change(i)) for i in range(1, 1001)])
    assert len(msgs) < 100  # dozens of changes to a datagram, not a thousand datagrams
    seqs = [m[2] + k for m in msgs for k in range(len(m[3]))]
    assert seqs == list(range(1, 1001))
    assert [c[2] for m in msgs for c in m[3]] == [b"name-%d" % i for i in range(1, 1001)]


def test_scopes_go_apart_and_a_skipped_seq_starts_another_datagram():
    def steps(o: Outbox) -> None:
        o.add("a", 1, change(1))
        o.add("b", 1, change(2))
        o.add("a", 2, change(3))
        o.add("a", 5, change(4))  # a resync skipped seqs: receivers must see the gap
    msgs = run(steps)
    assert sorted((m[1], m[2], len(m[3])) for m in msgs) == [("a", 1, 2), ("a", 5, 1), ("b", 1, 1)]


def test_a_change_too_big_for_a_datagram_goes_as_big_after_those_before_it():
    def steps(o: Outbox) -> None:
        o.add("s", 1, change(1))
        o.add("s", 2, change(2, meta=b"x" * 2000))
        o.add("s", 3, change(3))
    msgs = run(steps)
    assert [(m[0], m[2]) for m in msgs] == [("chg", 1), ("big", 2), ("chg", 3)]
