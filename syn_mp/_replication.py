"""Replication: the narrow interface between a node's tables and a transport.

A transport carries each node's own entries to the other nodes: the UDP/TCP cluster
(_cluster.Cluster) is one; a backend on a distributed store is another. The manager
knows a transport only through `Transport`; a transport knows the node only through
`Replica`. Neither imports the other's module (nor _manager).

The contract
------------
Each node is the authority for its own entries (node id 0 in its tables: its local
processes'). A transport has two jobs:

1. Carry out.  `Transport.on_local_change(scope, change)` is called for every change of a
   local entry, in journal order, with the reason the owner saw (`Change.reason`). Before it
   reads the node's state for a full copy, a transport calls `Replica.flush_local()`: every
   local change written so far has then reached `on_local_change`, so a position the
   transport counts in those calls is the one `Replica.local_entries()` is consistent with.
   `Transport.resync(scope)` says local changes were missed (a journal overrun): the
   transport must make every other node re-read this node's entries of the scope.
   A transport may gather the changes of one drain into fewer messages: it sends them by the
   end of the loop turn, and if it has a `flush()` method, that is called at the end of each
   drain (`Replica.local_batch_done`) to send them at once.

2. Bring in.  For every other node N the transport calls, for each scope:
   - `Replica.replace(scope, N, entries, gone, first)`: N's complete entries of the scope (a
     snapshot, authoritative: what it lacks is removed, with the reason in `gone` when N
     told one). `first` for the first copy of N after N came up (reason node_up).
     `Replica.replace_rows(...)` is the same for a copy made by N's `local_rows()` (all its
     entries in one byte string), done a slice at a time: a generator the transport iterates,
     serving its loop between slices, and drops when N goes down (100,000 entries would hold
     the loop for most of a second in one go, past a node timeout).
   - `Replica.apply(scope, N, change)`: one change of N, applied in N's order and never older
     than a `replace` already applied (the transport orders them: buffered, sequenced, ...).
   - `Replica.node_down(N)`: N is gone (timeout, restart under a new incarnation): its
     entries are purged (reason node_down) and its node id retired.
   - `Replica.forget_others(up)`: once, when the transport knows which nodes are up: entries
     left from before this manager started, of nodes not in `up`, are purged.
   Node names are the only identity a transport uses; node ids are this node's business.

Conflicts (two nodes hold one name) are resolved here, by `decide()`: one deterministic
function of the two registrations, the same on every node and for every transport, so every
node that sees a conflict ends with the same winner. A local loser is removed (reason
conflict_resolution, carried out like any local change). A remote loser's owner may not see
the winner itself (a partial netsplit): the replica then calls
`Transport.notify_conflict(scope, key, loser_node, rival)`; a transport that shows every node
every entry may ignore it. The owner's transport hands such a notice to
`Replica.conflict_notice()`, which decides alike and drops the local entry if it loses.

Messages to processes of other nodes: `Transport.relay(dest, target, data)` carries one,
at most once; the receiving transport calls `Replica.deliver(target, data)`.

Everything runs on the manager's asyncio loop; no method blocks (a custom resolver is bounded
by RESOLVER_TIMEOUT). What grows with a scope's size is one C call (local_rows) or sliced
(replace_rows); local_entries() and replace() handle an entry at a time in Python, for a
transport whose copies are small or come in pieces (etcd's).
"""
from __future__ import annotations

import bisect
import logging
import os
import signal
import time
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Protocol

from ._table import (BY_NODE, EBADPID, EFULL, ETAKEN, F_FORCE, F_MATCH_PID, R_CONFLICT, R_MANAGER_RESTART,
                     R_NODE_DOWN, R_NODE_UP, R_NORMAL, R_PROCESS_EXIT, PG, REG, WITH_KEY, WITH_META, Table,
                     TableError, parse_row, parse_rows, rows_check, rows_missing)
from ._types import Pid
from .codec import decode, decode_name

log = logging.getLogger("syn_mp.replication")

RESOLVER_TIMEOUT = 1.0  # seconds a custom resolve_registry_conflict may take (then: the default rule)
GONE_KEPT = 4096        # per scope: recent local removals whose reason a snapshot still tells
SLICE_ROWS = 4096       # rows of a snapshot applied per slice (a few ms: see replace_rows)
# the reasons an owner's removal travels with (the others are each node's own: node up/down)
OWNER_REASONS = frozenset({R_NORMAL, R_PROCESS_EXIT, R_MANAGER_RESTART, R_CONFLICT})
PUT_KINDS = frozenset({"registered", "registry_updated", "joined", "group_updated"})
TYPE_OF_KIND = {"registered": REG, "registry_updated": REG, "unregistered": REG,
                "joined": PG, "group_updated": PG, "left": PG}


# what apply(), replace() and conflict_notice() raise when a table can't take another node (no node
# id left: every id belongs to a node up or holding entries); the transport logs it and tries later
ReplicationError = TableError
_tuple = tuple.__new__


class Entry(NamedTuple):
    """One entry of a node, as it travels: type REG or PG, the encoded key and meta."""
    type: int
    key: bytes
    pid: int
    start: int
    time_ns: int
    meta: bytes


class Change(NamedTuple):
    """A put (register/update/join) or a removal of one entry, with the reason its owner saw."""
    put: bool
    entry: Entry
    reason: int = R_NORMAL


class Transport(Protocol):
    """What the manager drives (see the module docstring)."""

    async def start(self) -> None: ...
    def close(self) -> None: ...
    def on_local_change(self, scope: str, change: Change) -> None: ...
    def flush(self) -> None: ...  # the end of a journal drain: send what was gathered
    def resync(self, scope: str) -> None: ...
    def notify_conflict(self, scope: str, key: bytes, loser_node: str, rival_node: str, rival: Entry) -> None: ...
    def relay(self, dest: str, target: list, data: bytes) -> None: ...
    def nodes(self, scope: str) -> list[str]: ...
    def status(self) -> dict[str, Any]: ...


class TransportOptions(Protocol):
    """A transport's configuration (from the CLI): makes the transport for a replica."""
    conflict_signal: int

    def make(self, replica: "Replica") -> Transport: ...


def decide(scope: str, name: Any, a: tuple[Pid, Any, int], b: tuple[Pid, Any, int],
           resolver: Callable[[str, Any, tuple, tuple], Any] | None) -> int | None:
    """Which of two registrations (pid, meta, time_ns) of one name is kept: 0 (a), 1 (b) or None
    (neither). A function of the two alone, whichever node holds which: a custom resolver (Syn's
    resolve_registry_conflict) sees them in a canonical order (by Pid) and must be the same on
    every node; it answers the winner's Pid (anything else: neither is kept). Without one the
    newest wins, ties to the higher Pid."""
    default = 0 if (a[2], a[0]) > (b[2], b[0]) else 1
    if resolver is None:
        return default
    first, second = sorted([a, b], key=lambda c: c[0])
    winner = resolver(scope, name, first, second)
    return 0 if winner == a[0] else 1 if winner == b[0] else None


class LagHistogram:
    """How long remote changes took to land here: from the owner's write (the entry's time_ns,
    its CLOCK_REALTIME) to this node applying it. Across hosts it assumes clocks kept in step
    (NTP); a negative lag (a clock ahead) counts as 0. For the metrics' histogram."""

    BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

    def __init__(self) -> None:
        self.counts = [0] * (len(self.BUCKETS) + 1)  # the last: above every bucket
        self.total = 0.0

    def observe(self, time_ns: int) -> None:
        lag = max(0.0, (time.time_ns() - time_ns) / 1e9)
        self.total += lag
        self.counts[bisect.bisect_left(self.BUCKETS, lag)] += 1  # the first bound >= lag (past all: the last)

    def status(self) -> dict[str, Any]:
        """Cumulative counts per upper bound (Prometheus' shape; None: +Inf, JSON has no infinity),
        the sum and the count."""
        cum, buckets = 0, []
        les: tuple[float | None, ...] = (*self.BUCKETS, None)
        for le, n in zip(les, self.counts):
            cum += n
            buckets.append([le, cum])
        return {"buckets": buckets, "sum": self.total, "count": cum}


class Replica:
    """The node's tables as replicas of every node's own entries (what a transport gets)."""

    def __init__(self, node: str, rdir: str, tables: Mapping[str, Table], flush: Callable[[], Any],
                 callbacks: Any = None, conflict_signal: int = signal.SIGTERM) -> None:
        self.node = node
        self.rdir = rdir
        self.tables = tables              # the manager's (it adds and rebuilds scopes in place)
        self._flush = flush
        self._callbacks = callbacks
        self.conflict_signal = conflict_signal
        self.transport: Transport | None = None
        self.stats = {"conflicts": 0}
        self.lag = LagHistogram()  # of the changes applied one by one (not snapshots)
        self._gone: dict[str, dict[tuple, int]] = {}   # scope -> (type, key, pid) -> reason of its removal
        self._decisions: dict[tuple, int | None] = {}  # conflicts decided (the same answer if met again)
        self._conflict_won: dict[tuple, float] = {}    # (scope, key, node, pid) that beat an entry of ours
        self._live: set[str] = set()  # nodes the transport brought in and has not declared down
        self._nids: dict[Table, dict[str, int]] = {}  # per table: node name -> id (see _node_id)

    # ------------------------------------------------------------ carry out

    def flush_local(self) -> None:
        """Every local change written so far reaches Transport.on_local_change before this returns."""
        self._flush()

    def on_local_record(self, scope: str, r: Any) -> None:
        """(manager) A journal record of a local entry: remembered for snapshots, handed out."""
        put = r.kind in PUT_KINDS
        type_ = TYPE_OF_KIND[r.kind]
        if not put:  # a snapshot still tells a peer why an entry went
            gone = self._gone.setdefault(scope, {})
            gone[(type_, r.key, r.pid)] = r.reason
            while len(gone) > GONE_KEPT:
                del gone[next(iter(gone))]
        if self.transport is not None:  # tuple.__new__: no Python-level NamedTuple __new__ (on every change's path)
            e = _tuple(Entry, (type_, r.key, r.pid, r.start, r.time_ns, r.meta if put else b""))
            self.transport.on_local_change(scope, _tuple(Change, (put, e, r.reason)))

    def local_batch_done(self) -> None:
        """(manager) The end of a journal drain: a transport that gathers local changes into fewer
        messages sends what it holds now, not a loop turn later."""
        if self.transport is not None:
            self.transport.flush()

    def local_entries(self, scope: str) -> tuple[list[Entry], list[tuple[int, bytes, int, int]]]:
        """The node's own entries of the scope, and recent removals whose reason was not `normal`
        ((type, key, pid, reason)). Call flush_local() first for a consistent position."""
        t = self.tables.get(scope)
        if t is None:
            return [], []
        entries = [Entry(i.type, i.key, i.pid, i.start, i.time_ns, i.meta)
                   for i in t.collect(BY_NODE, 0, node=0, flags=WITH_KEY | WITH_META)]
        return entries, self._gone_list(scope)

    def local_rows(self, scope: str) -> tuple[bytes, list[tuple[int, bytes, int, int]]]:
        """local_entries() with the entries as rows (_table.rows_check: one byte string, copied out
        of the table in one C call, no Python object per entry): what replace_rows() takes."""
        t = self.tables.get(scope)
        if t is None:
            return b"", []
        rows, _ = t.collect_rows(BY_NODE, 0, node=0, flags=WITH_KEY | WITH_META)
        return rows, self._gone_list(scope)

    def _gone_list(self, scope: str) -> list[tuple[int, bytes, int, int]]:
        return [(*k, r) for k, r in self._gone.get(scope, {}).items() if r != R_NORMAL]

    # ------------------------------------------------------------ bring in

    def has_scope(self, scope: str) -> bool:
        return scope in self.tables

    def scopes(self) -> list[str]:
        return list(self.tables)

    def apply(self, scope: str, node: str, change: Change) -> None:
        """One change of `node` (in its order)."""
        t = self.tables.get(scope)
        if t is None or node == self.node:
            return
        self._live.add(node)
        nid = self._node_id(t, node)
        e = change.entry
        if change.put:
            self._apply_put(t, scope, nid, e, R_NORMAL)
            self.lag.observe(e.time_ns)  # once it is in the table: what readers see
        else:  # MATCH_PID: only that process's
            reason = change.reason if change.reason in OWNER_REASONS else R_NORMAL
            t.delete(e.type, e.key, nid, e.pid, flags=F_MATCH_PID, reason=reason, reason_node=nid)

    def replace(self, scope: str, node: str, entries: list[Entry], gone: list, first: bool) -> None:
        """`node`'s complete entries of the scope: what it lacks is removed (for the reason `gone`
        gives, else normal); `first`: the first copy since it came up (reason node_up)."""
        for _ in self._replace_steps(scope, node, entries, gone, first):
            pass

    def _replace_steps(self, scope: str, node: str, entries: list[Entry], gone: list, first: bool) -> Iterator[None]:
        """replace(), yielding every SLICE_ROWS entries (see replace_rows)."""
        t = self.tables.get(scope)
        if t is None or node == self.node:
            return
        self._live.add(node)
        nid = self._node_id(t, node)
        present = {(e[0], e[1], e[2]) for e in entries}
        why = {(g[0], g[1], g[2]): g[3] for g in gone if g[3] in OWNER_REASONS}
        for item in t.collect(BY_NODE, 0, node=nid, flags=WITH_KEY):
            k = (item.type, item.key, item.pid)
            if k not in present:
                t.delete(item.type, item.key, nid, item.pid, flags=F_MATCH_PID, reason=why.get(k, R_NORMAL),
                         reason_node=nid)
        reason = R_NODE_UP if first else R_NORMAL
        for i, e in enumerate(entries, 1):
            self._apply_put(t, scope, nid, Entry(*e), reason)
            if i % SLICE_ROWS == 0:
                yield
                t = self.tables.get(scope)  # rebuilt meanwhile: the new segment holds what was applied
                if t is None:
                    return
                nid = self._node_id(t, node)

    def replace_rows(self, scope: str, node: str, rows: bytes, gone: list, first: bool) -> Iterator[None]:
        """replace() for `node`'s local_rows(), a slice at a time: yields after each slice (at most
        SLICE_ROWS rows, one C call), so the caller's loop serves heartbeats and other peers in
        between. The caller iterates to the end, or stops when `node` went down (node_down()
        purges what was applied). ReplicationError before anything is applied when a row is
        malformed; the other node's changes must wait (be buffered) until the end, as for replace().
        The local journal is followed after each slice (flush_local): a snapshot's records would
        otherwise pile up until the manager's next tick, and overrun its ring."""
        rows_check(rows)
        t = self.tables.get(scope)
        if t is None or node == self.node:
            return
        self._live.add(node)
        nid = self._node_id(t, node)
        if any(k[0] == scope and k[2] == node for k in self._conflict_won):
            # an entry of the node won a conflict against ours: it must arrive with that reason
            # (_apply_put), so these rows go one by one (rare: just after such a conflict)
            entries = [Entry(i.type, i.key, i.pid, i.start, i.time_ns, i.meta) for i in parse_rows(rows)]
            for _ in self._replace_steps(scope, node, entries, gone, first):
                self._flush()
                yield
            self._flush()
            return
        if t.count(BY_NODE, REG, node=nid) + t.count(BY_NODE, PG, node=nid):
            have, _ = t.collect_rows(BY_NODE, 0, node=nid, flags=WITH_KEY)
            why = {(g[0], g[1], g[2]): g[3] for g in gone if g[3] in OWNER_REASONS}
            for i, item in enumerate(rows_missing(have, rows), 1):
                k = (item.type, item.key, item.pid)
                t.delete(item.type, item.key, nid, item.pid, flags=F_MATCH_PID, reason=why.get(k, R_NORMAL),
                         reason_node=nid)
                if i % SLICE_ROWS == 0:
                    self._flush()
                    yield
                    t = self.tables.get(scope)  # rebuilt meanwhile: go on in the new segment
                    if t is None:
                        return
                    nid = self._node_id(t, node)
        reason = R_NODE_UP if first else R_NORMAL
        pos = 0
        while pos < len(rows):
            t = self.tables.get(scope)  # rebuilt meanwhile: the new segment holds what was applied
            if t is None:
                return
            nid = self._node_id(t, node)
            pos, failed = t.put_rows(rows, pos, SLICE_ROWS, nid, reason, nid)
            for off in failed:  # a conflict (or no room): the way of a single change
                row = parse_row(rows, off)
                self._apply_put(t, scope, nid, Entry(row.type, row.key, row.pid, row.start, row.time_ns, row.meta),
                                reason)
            self._flush()
            yield

    def node_down(self, node: str) -> None:
        self._live.discard(node)
        self._nids.clear()  # ids are retired below
        for t in self.tables.values():
            nid = t.node_id(node)
            if nid is not None and nid != 0:
                t.purge_node(nid, R_NODE_DOWN, nid)
                t.retire_node(nid)  # its name stays readable until the id goes to another node

    def forget_others(self, up: set[str]) -> None:
        """Entries of nodes not in `up`, left from before this manager started, are purged."""
        self._live |= up
        for t in self.tables.values():
            for nid in range(1, t.nnodes()):
                if t.node_name(nid) not in up and t.count(BY_NODE, REG, node=nid) + t.count(BY_NODE, PG, node=nid):
                    t.purge_node(nid, R_NODE_DOWN, nid)
            self._reclaim_node_ids(t, up)

    def deliver(self, target: list, data: bytes) -> None:
        """A message relayed from another node to a local process (or reply socket)."""
        from .mailbox import _address, _send_raw, reply_path
        if target[0] == "pid":
            address: str | None = _address(self.rdir, int(target[1]), int(target[2]))
        elif target[0] == "addr":
            address = reply_path(self.rdir, target[1])  # only a reply socket in our dir
        else:
            return
        if address is not None:
            _send_raw(address, data)

    # ------------------------------------------------------------ node ids

    def _reclaim_node_ids(self, t: Table, up: set[str]) -> None:
        """Retire the ids of nodes that are not up and hold nothing here: a segment has 255 ids for
        other nodes, and pods get a new name at every restart (retired ids go to new names)."""
        self._nids.clear()
        for nid in range(1, t.nnodes()):
            if t.node_name(nid) not in up:
                t.retire_node(nid)  # refused (False) while it holds entries

    def _node_id(self, t: Table, name: str) -> int:
        """The id of a node's name, reclaiming retired ids once the node table is full. Remembered:
        it is looked up for every change (three calls down to C, some 15 us on a cold cache); only
        this replica adds and retires other nodes' ids, and it forgets them all on a retire."""
        ids = self._nids.get(t)
        if ids is None:
            for old in [k for k in self._nids if k not in self.tables.values()]:
                del self._nids[old]  # a table since rebuilt
            ids = self._nids[t] = {}
        nid = ids.get(name)
        if nid is None:
            try:
                nid = t.add_node(name)
            except TableError:
                self._reclaim_node_ids(t, self._live)
                ids = self._nids[t] = {}
                nid = t.add_node(name)  # still full: every id belongs to a node up or holding entries
            ids[name] = nid
        return nid

    # ------------------------------------------------------------ conflicts

    def _apply_put(self, t: Table, scope: str, nid: int, e: Entry, reason: int) -> None:
        won = self._conflict_won.pop((scope, e.key, t.node_name(nid), e.pid), None) if self._conflict_won else None
        if won is not None and e.type == REG:
            reason = R_CONFLICT  # it won a conflict that removed ours: that is how it arrives here
        rc = t.put_rc(e.type, e.key, nid, e.pid, e.start, e.time_ns, e.meta, reason, nid)
        if rc != ETAKEN:
            if rc == EFULL:
                log.error("scope %r is full: an entry of node %s was not stored", scope, t.node_name(nid))
            elif rc == EBADPID:
                log.warning("scope %r: node %s sent pid %d, which no OS process has: not stored",
                            scope, t.node_name(nid), e.pid)
            return
        held = t.get(REG, e.key)
        if held is None:
            return
        if held.node == nid:  # the authority moved its own name to another of its processes
            t.put(e.type, e.key, nid, e.pid, e.start, e.time_ns, e.meta, flags=F_FORCE, reason=reason,
                  reason_node=nid)
            return
        self._resolve(t, scope, e.key, (held.node, held.pid, held.start, held.time_ns, held.meta),
                      (nid, e.pid, e.start, e.time_ns, e.meta))

    def _custom(self) -> bool:
        cb = self._callbacks
        return cb is not None and getattr(cb.handler, "resolve_registry_conflict", None) is not None

    def _decide(self, t: Table, scope: str, key: bytes, a: tuple, b: tuple) -> int | None:
        """decide() on two table entries (node id, pid, start, time_ns, meta), memoized: the same
        conflict met again gets the same answer (a custom resolver need not be pure over time)."""
        pa, pb = Pid(t.node_name(a[0]), a[1]), Pid(t.node_name(b[0]), b[1])
        memo = (scope, key, pa, a[3], pb, b[3])
        if memo in self._decisions:
            return self._decisions[memo]
        if self._custom():
            cb = self._callbacks
            fallback = max((a[3], pa), (b[3], pb))[1]  # the default rule's winner: a resolver that fails

            def resolver(scope_: str, name: Any, first: tuple, second: tuple) -> Any:
                return cb.call_sync("resolve_registry_conflict", scope_, name, first, second,
                                    default=fallback, timeout=RESOLVER_TIMEOUT)
            which = decide(scope, decode_name(key), (pa, decode(a[4]), a[3]), (pb, decode(b[4]), b[3]), resolver)
        else:
            which = decide(scope, key, (pa, None, a[3]), (pb, None, b[3]), None)
        self._decisions[memo] = which
        while len(self._decisions) > GONE_KEPT:
            del self._decisions[next(iter(self._decisions))]
        return which

    def _resolve(self, t: Table, scope: str, key: bytes, held: tuple, incoming: tuple,
                 notified: bool = False) -> None:
        """Two nodes hold one name: every node that sees it decides alike (decide) and ends with the
        same winner. A losing entry of ours is removed (reason conflict_resolution, carried out as
        such); the owner of a losing entry of another node is told, since it may not see the winner
        itself (a partial netsplit).

        `notified`: `incoming` comes from such a notice (it may be gone by now): we may drop ours,
        never store it (its own node sends it if alive)."""
        self.stats["conflicts"] += 1
        h_node, h_pid, h_start, h_time, h_meta = held
        i_node, i_pid, i_start, i_time, i_meta = incoming
        which = self._decide(t, scope, key, held, incoming)
        if which != 0:  # the held entry loses
            if h_node == 0:
                if not self._custom():
                    self._signal_loser(h_pid, h_start)
                t.delete(REG, key, 0, h_pid, flags=F_MATCH_PID, reason=R_CONFLICT)  # journaled: carried out
            elif which is None or notified:
                t.delete(REG, key, h_node, h_pid, flags=F_MATCH_PID, reason=R_CONFLICT, reason_node=h_node)
        if which == 1:
            if notified:
                if h_node == 0:  # when it arrives from its node, it arrives as the winner of a conflict
                    self._conflict_won[(scope, key, t.node_name(i_node), i_pid)] = time.monotonic()
                    while len(self._conflict_won) > GONE_KEPT:
                        del self._conflict_won[next(iter(self._conflict_won))]
            else:
                # Syn: where ours lost, the winner comes as conflict_resolution; on a third node the
                # newer simply replaces the older (normal)
                t.put(REG, key, i_node, i_pid, i_start, i_time, i_meta, flags=F_FORCE,
                      reason=R_CONFLICT if h_node == 0 else R_NORMAL, reason_node=i_node)
        if notified or self.transport is None:
            return
        if which != 1 and i_node != 0:  # the incoming entry loses: tell its node what it met
            self.transport.notify_conflict(scope, key, t.node_name(i_node), t.node_name(h_node) if h_node else self.node,
                                           Entry(REG, key, h_pid, h_start, h_time, h_meta))
        if which != 0 and h_node != 0:
            self.transport.notify_conflict(scope, key, t.node_name(h_node), t.node_name(i_node) if i_node else self.node,
                                           Entry(REG, key, i_pid, i_start, i_time, i_meta))

    # ------------------------------------------------------------ for a transport that decides itself
    # (etcd orders the registrations: it decides who holds a name, then carries it out with these)

    def custom_resolver(self) -> Callable[[str, Any, tuple, tuple, Pid], Any] | None:
        """The event handler's resolve_registry_conflict, as resolver(scope, name, first, second,
        default) -> the winner's Pid (default if it fails or hangs past RESOLVER_TIMEOUT); None
        without one (then the transport's own rule decides, and losers are signalled)."""
        if not self._custom():
            return None
        cb = self._callbacks

        def resolver(scope: str, name: Any, first: tuple, second: tuple, default: Pid) -> Any:
            return cb.call_sync("resolve_registry_conflict", scope, name, first, second,
                                default=default, timeout=RESOLVER_TIMEOUT)
        return resolver

    def local_holder(self, scope: str, key: bytes) -> tuple[int, int] | None:
        """(pid, start) of the local process that holds the name in our tables, else None (a remote
        holder, or nobody)."""
        t = self.tables.get(scope)
        held = None if t is None else t.get(REG, key)
        return None if held is None or held.node != 0 else (held.pid, held.start)

    def remove_local_loser(self, scope: str, key: bytes, pid: int, start: int, winner: tuple[str, int] | None,
                           signal_it: bool) -> bool:
        """A local registration lost the name: removed (reason conflict_resolution, journaled, so the
        transport carries the removal out), its process sent the conflict signal if `signal_it`, and
        `winner` (node, pid), when another node's, arrives here as the winner of a conflict. False if
        that process no longer holds the name."""
        t = self.tables.get(scope)
        if t is None or self.local_holder(scope, key) != (pid, start):
            return False
        if signal_it:
            self.signal_loser(pid, start)
        if winner is not None and winner[0] != self.node:
            self._conflict_won[(scope, key, winner[0], winner[1])] = time.monotonic()
            while len(self._conflict_won) > GONE_KEPT:
                del self._conflict_won[next(iter(self._conflict_won))]
        t.delete(REG, key, 0, pid, flags=F_MATCH_PID, reason=R_CONFLICT)
        self.flush_local()
        return True

    def signal_loser(self, pid: int, start: int) -> None:
        """Send the conflict signal to a local process that lost a name (never to a reused pid)."""
        self._signal_loser(pid, start)

    def conflict_notice(self, scope: str, rival_node: str, rival: Entry) -> bool:
        """Another node met a conflict between one of our entries and `rival`: decide alike, drop
        ours if it loses. True when ours gave way (the winner's own copy is then to be fetched in
        order with its node's changes)."""
        t = self.tables.get(scope)
        held = None if t is None else t.get(REG, rival.key)
        if t is None or held is None or held.node != 0 or rival_node == self.node:
            return False
        nid = self._node_id(t, rival_node)
        self._resolve(t, scope, rival.key, (0, held.pid, held.start, held.time_ns, held.meta),
                      (nid, rival.pid, rival.start, rival.time_ns, rival.meta), notified=True)
        return t.get(REG, rival.key) is None

    def _signal_loser(self, pid: int, start: int) -> None:
        from ._procinfo import start_time
        if start_time(pid) == start:  # still that process: never signal a reused pid
            try:
                os.kill(pid, self.conflict_signal)
            except ProcessLookupError:
                pass
