"""Scopes across nodes (Syn's gen_scope): discovery, snapshots, change broadcasts, node up/down,
registry conflicts, and relaying messages to other nodes. Runs inside the manager's loop.

Each node is the authority for its own processes. It broadcasts every local change
with a per-scope sequence number and a heartbeat carrying those numbers; a receiver
that sees a gap, a new node or a new incarnation of one fetches that node's snapshot
of the scope over TCP. A snapshot is authoritative for its node's entries: what it
lacks is removed, so no stale entry outlives its owner (the zombie race of SYN_NOTES).
"""
from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgpack

from . import _tcp, _wire
from ._incarnation import next_incarnation
from ._table import (BY_NODE, EFULL, ETAKEN, F_FORCE, F_MATCH_PID, R_CONFLICT, R_MANAGER_RESTART, R_NODE_DOWN, R_NODE_UP,
                     R_NORMAL, R_PROCESS_EXIT, PG, REG, WITH_KEY, WITH_META, Table, TableError)
from ._types import Pid
from .codec import decode

if TYPE_CHECKING:
    from ._manager import Manager

log = logging.getLogger("syn_mp.cluster")

_PUT_KINDS = {"registered", "registry_updated", "joined", "group_updated"}
_TYPE_OF_KIND = {"registered": REG, "registry_updated": REG, "unregistered": REG,
                 "joined": PG, "group_updated": PG, "left": PG}
_FETCH_TIMEOUT = 30.0  # seconds for a whole snapshot exchange
_PROBE_EVERY = 1.0     # seconds between two restart probes of one node
_RESOLVER_TIMEOUT = 1.0  # seconds a custom resolve_registry_conflict may take (then: the default rule)
_FETCH_PATIENCE = 0.5  # seconds a snapshot answer may take to begin before a heartbeat asks again
_BUFFER_MAX = 65536    # changes buffered per peer and scope while its snapshot is fetched
_GONE_KEPT = 4096      # per scope: recent removals whose reason a snapshot still tells
# the reasons an owner's removal travels with (the others are each node's own: node up/down)
_OWNER_REASONS = {R_NORMAL, R_PROCESS_EXIT, R_MANAGER_RESTART, R_CONFLICT}


@dataclass
class ClusterOptions:
    secret: bytes
    interface: str = "0.0.0.0"
    port: int = 0
    group: str | None = None                       # multicast group, or None for --peers
    peers: list[tuple[str, int]] = field(default_factory=list)
    heartbeat_ms: int = 100
    node_timeout_ms: int = 1000
    conflict_signal: int = signal.SIGTERM
    drop_rate: float = 0.0                          # test-only: SYN_MP_TEST_DROP_RATE


@dataclass
class Peer:
    name: str
    incarnation: int
    addr: tuple[str, int]
    tcp_port: int
    last_seen: float
    scopes: dict[str, int] = field(default_factory=dict)      # scope -> its seq in the last heartbeat
    applied: dict[str, int] = field(default_factory=dict)     # scope -> last seq applied here
    gaps: dict[str, int] = field(default_factory=dict)        # scope -> heartbeats a gap has persisted
    fetching: set[str] = field(default_factory=set)
    synced: set[str] = field(default_factory=set)             # scopes that had their first snapshot
    refetch: set[str] = field(default_factory=set)            # fetch again once the one in flight is done
    # while a snapshot is fetched: the changes that arrive meanwhile (scope -> seq -> message), replayed
    # over it once it is in (those newer than the seq it is consistent with), so none is lost
    buffered: dict[str, dict[int, list]] = field(default_factory=dict)
    fetch: dict[str, tuple[asyncio.Task, float, list]] = field(default_factory=dict)  # task, start, answering?


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, cluster: "Cluster") -> None:
        self.cluster = cluster

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.cluster._on_datagram(data, addr)


class Cluster:
    def __init__(self, manager: "Manager", opts: ClusterOptions) -> None:
        self.m = manager
        self.o = opts
        self.node = manager.opts.node
        self.incarnation = next_incarnation(manager.opts.rdir)  # never the clock: see _incarnation
        self._seq = 0                            # datagram seq (replay protection)
        self.scope_seq: dict[str, int] = {}      # our changes broadcast per scope
        self.peers: dict[str, Peer] = {}
        self.guard = _wire.ReplayGuard()
        self.stats = {"sent": 0, "received": 0, "forged": 0, "replayed": 0, "malformed": 0, "dropped_test": 0,
                      "snapshots_fetched": 0, "snapshots_served": 0, "conflicts": 0, "relayed": 0,
                      "other_incarnation": 0, "fetches_superseded": 0, "probes": 0, "restarts_verified": 0, "tcp_refused": 0, "tcp_timeouts": 0}
        self._probed: dict[str, float] = {}      # node -> when its lower incarnation was last checked
        self._gone: dict[str, dict[tuple, int]] = {}   # scope -> (type, key, pid) -> reason of its removal
        self._decisions: dict[tuple, int | None] = {}  # conflicts decided (the same answer if met again)
        self._conflict_won: dict[tuple, float] = {}    # (scope, key, node, pid) that beat an entry of ours
        self._tasks: list[asyncio.Task] = []
        self._transports: list[Any] = []

    # ------------------------------------------------------------------ sockets

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        o = self.o
        uc = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        uc.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        uc.bind((o.interface, o.port))
        if o.group:
            uc.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)  # never beyond this link
            uc.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(o.interface))
            uc.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
            mc = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            mc.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            mc.bind((o.group, o.port))
            mreq = socket.inet_aton(o.group) + socket.inet_aton(o.interface)
            mc.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
            t, _ = await loop.create_datagram_endpoint(lambda: _Datagrams(self), sock=mc)
            self._transports.append(t)
        self._uc, _ = await loop.create_datagram_endpoint(lambda: _Datagrams(self), sock=uc)
        self._transports.append(self._uc)
        self.port = uc.getsockname()[1]
        self._server = _tcp.Server(o.secret, self._on_request, self.stats)
        self._tcp = await asyncio.start_server(self._server.serve, o.interface, self.port)
        self._tasks = [loop.create_task(self._heartbeats()), loop.create_task(self._timeouts()),
                       loop.create_task(self._forget_silent_nodes())]
        log.info("cluster: node %r on %s:%d (%s)", self.node, o.interface, self.port,
                 f"multicast {o.group}" if o.group else f"peers {o.peers}")

    def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._transports:
            t.close()
        self._tcp.close()

    def _send(self, body: bytes, addr: tuple[str, int] | None = None) -> None:
        """One datagram to addr, or to everyone (the group, or every peer)."""
        self._seq += 1
        data = _wire.seal(self.o.secret, self.node, self.incarnation, self._seq, body)
        targets = [addr] if addr else ([(self.o.group, self.o.port)] if self.o.group else self.o.peers)
        for a in targets:
            if self.o.drop_rate and random.random() < self.o.drop_rate:
                self.stats["dropped_test"] += 1
                continue
            self._uc.sendto(data, a)
            self.stats["sent"] += 1

    def _on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.o.drop_rate and random.random() < self.o.drop_rate:
            self.stats["dropped_test"] += 1
            return
        d = _wire.open_datagram(self.o.secret, data)
        if d is None:
            self.stats["forged" if data.startswith(_wire.MAGIC) else "malformed"] += 1
            return
        if d.node == self.node:
            return  # our own multicast, looped back
        if not self.guard.accept(d.node, d.incarnation, d.seq):
            if self.guard.newest(d.node) == d.incarnation:
                self.stats["replayed"] += 1
            else:
                self.stats["other_incarnation"] += 1
                self._maybe_probe(d, addr)
            return
        self.stats["received"] += 1
        try:
            msg = msgpack.unpackb(d.body, raw=False, strict_map_key=False)
            self._dispatch(d, addr, msg)
        except Exception:  # an authentic but unexpected body must not stop the manager
            self.stats["malformed"] += 1
            log.exception("cluster: bad datagram from %s", d.node)

    def _maybe_probe(self, d: _wire.Datagram, addr: tuple[str, int]) -> None:
        """A heartbeat of another incarnation than the node's current one: it restarted (a higher
        one; a lower one if its runtime dir lost the counter, e.g. on tmpfs after a reboot), or an
        older life of it is replayed. Ask the node itself, over TCP with our own nonce, at most
        once a second per node (_PROBE_EVERY; a restart's first probe is at once)."""
        try:
            msg = msgpack.unpackb(d.body, raw=False)
            if msg[0] != "hb" or type(msg[2]) is not int or not 0 < msg[2] < 65536:
                return
        except Exception:
            return
        now = time.monotonic()
        if now - self._probed.get(d.node, -1e9) < _PROBE_EVERY:
            return
        self._probed[d.node] = now
        self.stats["probes"] += 1
        asyncio.get_running_loop().create_task(self._probe(d.node, d.incarnation, addr[0], msg[2]))

    async def _probe(self, node: str, incarnation: int, host: str, port: int) -> None:
        try:
            out = await _tcp.request(host, port, self.o.secret, msgpack.packb(["who"]), answer=True, timeout=2)
            if out is None:
                return
            kind, name, inc = msgpack.unpackb(out, raw=False)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, TypeError):
            return
        if kind == "me" and name == node and inc == incarnation and self.guard.newest(node) != inc:
            (log.warning if inc < (self.guard.newest(node) or 0) else log.info)(
                "cluster: node %r is now incarnation %d (confirmed by the node)", node, inc)
            self.guard.reset(node, inc)
            self.stats["restarts_verified"] += 1

    # ---------------------------------------------------------------- protocol

    def _dispatch(self, d: _wire.Datagram, addr: tuple[str, int], msg: list) -> None:
        kind = msg[0]
        if kind == "hb":
            scopes, tcp_port = msg[1], msg[2]
            if not (isinstance(scopes, dict) and all(type(s) is str and type(q) is int for s, q in scopes.items())
                    and type(tcp_port) is int and 0 < tcp_port < 65536):
                raise ValueError("malformed heartbeat")  # before it touches any state: counted malformed
            self._on_heartbeat(d, addr, scopes, tcp_port)
            return
        peer = self.peers.get(d.node)
        if peer is None or peer.incarnation != d.incarnation:
            return  # not (yet) known: its heartbeat will bring a snapshot
        if kind == "chg":
            self._on_change(peer, msg)
        elif kind == "big":
            self._need_snapshot(peer, msg[1])
        elif kind == "msg" and msg[1] == self.node:
            self._deliver(msg[2], msg[3])

    async def _heartbeats(self) -> None:
        while True:
            scopes = {s: self.scope_seq.get(s, 0) for s in self.m.tables}
            self._send(msgpack.packb(["hb", scopes, self.port]))
            await asyncio.sleep(self.o.heartbeat_ms / 1000)

    def _on_heartbeat(self, d: _wire.Datagram, addr: tuple[str, int], scopes: dict[str, int], tcp_port: int) -> None:
        now = time.monotonic()
        peer = self.peers.get(d.node)
        if peer is not None and d.incarnation != peer.incarnation:
            log.info("cluster: node %r restarted", d.node)
            self._node_down(peer)
            peer = None
        if peer is None:
            peer = self.peers[d.node] = Peer(d.node, d.incarnation, addr, tcp_port, now)
            log.info("cluster: node %r up at %s", d.node, addr[0])
        peer.last_seen = now
        peer.addr = addr
        peer.tcp_port = tcp_port
        peer.scopes = scopes
        for scope, seq in scopes.items():
            if scope not in self.m.tables:
                continue
            if scope in peer.fetching:
                self._supersede_waiting_fetch(peer, scope)
            elif scope not in peer.synced:
                self._need_snapshot(peer, scope)
            elif seq > peer.applied.get(scope, 0):
                # a change may still be in flight: a gap that outlives a heartbeat is real
                peer.gaps[scope] = peer.gaps.get(scope, 0) + 1
                if peer.gaps[scope] >= 2:
                    self._need_snapshot(peer, scope)
            else:
                peer.gaps.pop(scope, None)

    async def _timeouts(self) -> None:
        while True:
            await asyncio.sleep(self.o.heartbeat_ms / 1000)
            now = time.monotonic()
            for peer in list(self.peers.values()):
                if now - peer.last_seen > self.o.node_timeout_ms / 1000:
                    log.warning("cluster: node %r down (no heartbeat for %d ms)", peer.name, self.o.node_timeout_ms)
                    self._node_down(peer)

    async def _forget_silent_nodes(self) -> None:
        """Entries of other nodes left in the tables from before this manager started: a node
        that has not spoken within the node timeout is down."""
        await asyncio.sleep(self.o.node_timeout_ms / 1000)
        for t in self.m.tables.values():
            for nid in range(1, t.nnodes()):
                name = t.node_name(nid)
                if name not in self.peers and t.count(BY_NODE, REG, node=nid) + t.count(BY_NODE, PG, node=nid):
                    t.purge_node(nid, R_NODE_DOWN, nid)
            self._reclaim_node_ids(t)

    def _reclaim_node_ids(self, t: Table) -> None:
        """Retire the ids of nodes that are not up and hold nothing here: a segment has 255 ids for
        other nodes, and pods get a new name at every restart (retired ids go to new names)."""
        for nid in range(1, t.nnodes()):
            if t.node_name(nid) not in self.peers:
                t.retire_node(nid)  # refused (False) while it holds entries

    def _node_id(self, t: Table, name: str) -> int:
        """The id of a peer's name, reclaiming retired ids once the node table is full."""
        try:
            return t.add_node(name)
        except TableError:
            self._reclaim_node_ids(t)
            return t.add_node(name)  # still full: every id belongs to a node up or holding entries

    def _node_down(self, peer: Peer) -> None:
        self.peers.pop(peer.name, None)
        for t in self.m.tables.values():
            nid = t.node_id(peer.name)
            if nid is not None and nid != 0:
                t.purge_node(nid, R_NODE_DOWN, nid)
                t.retire_node(nid)  # its name stays readable until the id goes to another node

    # ---------------------------------------------------------- local changes

    def on_local_record(self, scope: str, r: Any) -> None:
        """A change of a local process (from the journal): broadcast it, with the reason this node
        saw (every node's callbacks and events() carry the owner's reason, as in Syn)."""
        seq = self.scope_seq[scope] = self.scope_seq.get(scope, 0) + 1
        put = r.kind in _PUT_KINDS
        if not put:  # remembered a while, for a snapshot that has to tell a peer why an entry went
            gone = self._gone.setdefault(scope, {})
            gone[(_TYPE_OF_KIND[r.kind], r.key, r.pid)] = r.reason
            while len(gone) > _GONE_KEPT:
                del gone[next(iter(gone))]
        body = msgpack.packb(["chg", scope, seq, put, _TYPE_OF_KIND[r.kind], r.key, r.pid, r.start, r.time_ns,
                              r.meta if put else b"", r.reason])
        if len(body) > _wire.MAX_DATAGRAM - 100:
            body = msgpack.packb(["big", scope, seq])  # too big for a datagram: receivers fetch a snapshot
        self._send(body)

    def resync(self, scope: str) -> None:
        """Local changes were missed (journal overrun): skip a seq, so every peer sees a gap in
        our heartbeats and fetches our snapshot."""
        self.scope_seq[scope] = self.scope_seq.get(scope, 0) + 2

    # --------------------------------------------------------- remote changes

    def _on_change(self, peer: Peer, msg: list) -> None:
        scope, seq = msg[1], msg[2]
        t = self.m.tables.get(scope)
        if t is None:
            return
        if scope in peer.fetching:
            buf = peer.buffered.setdefault(scope, {})
            if len(buf) < _BUFFER_MAX:
                buf[seq] = msg
            return
        if scope not in peer.synced:
            return
        applied = peer.applied.get(scope, 0)
        if seq <= applied:
            return  # seen already (or covered by a snapshot)
        if seq != applied + 1:
            self._need_snapshot(peer, scope)
            return
        self._apply_change(peer, t, msg)

    def _apply_change(self, peer: Peer, t: Table, msg: list) -> None:
        _, scope, seq, put, type_, key, pid, start, time_ns, meta, *rest = msg
        reason = rest[0] if rest and rest[0] in _OWNER_REASONS else R_NORMAL
        peer.applied[scope] = seq
        nid = self._node_id(t, peer.name)
        if put:
            self._apply_put(t, scope, nid, type_, key, pid, start, time_ns, meta, R_NORMAL)
        else:  # MATCH_PID: only that process's
            t.delete(type_, key, nid, pid, flags=F_MATCH_PID, reason=reason, reason_node=nid)

    def _apply_put(self, t: Table, scope: str, nid: int, type_: int, key: bytes, pid: int, start: int,
                   time_ns: int, meta: bytes, reason: int) -> None:
        won = self._conflict_won.pop((scope, key, t.node_name(nid), pid), None)
        if won is not None and type_ == REG:
            reason = R_CONFLICT  # it won a conflict that removed ours: that is how it arrives here
        rc, info = t.put(type_, key, nid, pid, start, time_ns, meta, reason=reason, reason_node=nid)
        if rc != ETAKEN:
            if rc == EFULL:
                log.error("scope %r is full: an entry of node %s was not stored", scope, t.node_name(nid))
            return
        if info.node == nid:  # the authority moved its own name to another of its processes
            t.put(type_, key, nid, pid, start, time_ns, meta, flags=F_FORCE, reason=reason, reason_node=nid)
            return
        held = t.get(REG, key)
        if held is None:
            return
        self._resolve(t, scope, key, (held.node, held.pid, held.start, held.time_ns, held.meta),
                      (nid, pid, start, time_ns, meta))

    def _decide(self, t: Table, scope: str, key: bytes, a: tuple, b: tuple) -> int | None:
        """Which of two registrations of one name is kept: 0 (a), 1 (b) or None (neither). One
        deterministic function of the two entries, evaluated alike on every node that sees the
        conflict: the candidates are passed in a canonical order (by Pid), whichever node holds
        which; a custom resolver must be the same on every node (and is bounded: one that hangs
        or raises gives the default rule, newest wins, ties to the higher Pid)."""
        pa, pb = Pid(t.node_name(a[0]), a[1]), Pid(t.node_name(b[0]), b[1])
        memo = (scope, key, pa, a[3], pb, b[3])
        if memo in self._decisions:
            return self._decisions[memo]
        default = 0 if (a[3], pa) > (b[3], pb) else 1
        cb = self.m.callbacks
        if cb is not None and getattr(cb.handler, "resolve_registry_conflict", None) is not None:
            from .codec import decode_name
            first, second = sorted([(pa, decode(a[4]), a[3]), (pb, decode(b[4]), b[3])], key=lambda c: c[0])
            fallback = first[0] if (first[2], first[0]) > (second[2], second[0]) else second[0]
            winner = cb.call_sync("resolve_registry_conflict", scope, decode_name(key), first, second,
                                  default=fallback, timeout=_RESOLVER_TIMEOUT)
            which = 0 if winner == pa else 1 if winner == pb else None
        else:
            which = default
        self._decisions[memo] = which
        while len(self._decisions) > _GONE_KEPT:
            del self._decisions[next(iter(self._decisions))]
        return which

    def _resolve(self, t: Table, scope: str, key: bytes, held: tuple, incoming: tuple,
                 notified: bool = False) -> None:
        """Two nodes hold one name: every node that sees it decides alike (_decide) and ends with the
        same winner. A losing entry of ours is removed (reason conflict_resolution, broadcast as
        such); the owner of a losing entry of another node is told, since it may not see the winner
        itself (a partial netsplit).

        `notified`: `incoming` comes from such a notice (it may be gone by now): we may drop ours,
        never store it (its own node sends it if alive)."""
        self.stats["conflicts"] += 1
        h_node, h_pid, h_start, h_time, h_meta = held
        i_node, i_pid, i_start, i_time, i_meta = incoming
        which = self._decide(t, scope, key, held, incoming)
        custom = self.m.callbacks is not None and \
            getattr(self.m.callbacks.handler, "resolve_registry_conflict", None) is not None
        if which != 0:  # the held entry loses
            if h_node == 0:
                if not custom:
                    self._signal_loser(h_pid, h_start)
                t.delete(REG, key, 0, h_pid, flags=F_MATCH_PID, reason=R_CONFLICT)  # journaled: broadcast
            elif which is None or notified:
                t.delete(REG, key, h_node, h_pid, flags=F_MATCH_PID, reason=R_CONFLICT, reason_node=h_node)
        if which == 1:
            if notified:
                if h_node == 0:  # when it arrives from its node, it arrives as the winner of a conflict
                    self._conflict_won[(scope, key, t.node_name(i_node), i_pid)] = time.monotonic()
                    while len(self._conflict_won) > _GONE_KEPT:
                        del self._conflict_won[next(iter(self._conflict_won))]
            else:
                # Syn: where ours lost, the winner comes as conflict_resolution; on a third node the
                # newer simply replaces the older (normal)
                t.put(REG, key, i_node, i_pid, i_start, i_time, i_meta, flags=F_FORCE,
                      reason=R_CONFLICT if h_node == 0 else R_NORMAL, reason_node=i_node)
        if notified:
            return
        if which != 1 and i_node != 0:  # the incoming entry loses: tell its node what it met
            self._notify(t, scope, key, i_node, held)
        if which != 0 and h_node != 0:
            self._notify(t, scope, key, h_node, incoming)

    def _notify(self, t: Table, scope: str, key: bytes, loser_node: int, other: tuple) -> None:
        """Tell the node that owns a losing entry about its rival in the conflict: it decides alike
        and removes its own."""
        peer = self.peers.get(t.node_name(loser_node))
        if peer is None:
            return
        node, pid, start, time_ns, meta = other
        body = msgpack.packb(["cfl", scope, key, t.node_name(node), pid, start, time_ns, meta])
        asyncio.get_running_loop().create_task(self._push_tcp(peer, body))

    def _on_conflict_notice(self, msg: list) -> None:
        """A node met a conflict with one of ours: decide here too (alike), drop ours if it loses."""
        _, scope, key, owner, pid, start, time_ns, meta = msg
        t = self.m.tables.get(scope)
        held = None if t is None else t.get(REG, key)
        if t is None or held is None or held.node != 0 or owner == self.node:
            return  # (the owner may not be a known peer yet: the notice is authenticated all the same)
        nid = self._node_id(t, owner)
        self._resolve(t, scope, key, (0, held.pid, held.start, held.time_ns, held.meta),
                      (nid, pid, start, time_ns, meta), notified=True)
        if t.get(REG, key) is None:
            # ours gave way: what the owner holds now comes from its snapshot, in order with its changes
            # (an unknown owner's discovery snapshot is still to come)
            peer = self.peers.get(owner)
            if peer is not None and scope in peer.fetching:
                peer.refetch.add(scope)  # the one in flight may predate the owner's decision
            elif peer is not None:
                self._need_snapshot(peer, scope)

    def _signal_loser(self, pid: int, start: int) -> None:
        from ._procinfo import start_time
        if start_time(pid) == start:  # still that process: never signal a reused pid
            try:
                os.kill(pid, self.o.conflict_signal)
            except ProcessLookupError:
                pass

    # -------------------------------------------------------------- snapshots

    def _need_snapshot(self, peer: Peer, scope: str) -> None:
        if scope in peer.fetching or scope not in self.m.tables:
            return
        peer.fetching.add(scope)
        answering: list = []
        task = asyncio.get_running_loop().create_task(self._fetch_snapshot(peer, scope, answering))
        peer.fetch[scope] = (task, time.monotonic(), answering)

    def _supersede_waiting_fetch(self, peer: Peer, scope: str) -> None:
        """A fetch whose answer has not begun after _FETCH_PATIENCE (a request or answer lost, now in
        TCP's retransmission backoff) is given up for a new one: its answer would be old anyway."""
        f = peer.fetch.get(scope)
        if f is not None and not f[2] and time.monotonic() - f[1] > _FETCH_PATIENCE:
            log.info("cluster: snapshot of %r from %s unanswered for %.1fs: asking again", scope, peer.name,
                     time.monotonic() - f[1])
            self.stats["fetches_superseded"] += 1
            peer.refetch.add(scope)
            f[0].cancel()

    async def _fetch_snapshot(self, peer: Peer, scope: str, answering: list) -> None:
        try:
            body = await _tcp.request(peer.addr[0], peer.tcp_port, self.o.secret, msgpack.packb(["snap", scope]),
                                      answer=True, timeout=_FETCH_TIMEOUT, started=lambda: answering.append(1))
            if body is None:
                log.warning("cluster: unauthenticated snapshot answer from %s", peer.name)
                return
            _, node, incarnation, seq, entries, gone = msgpack.unpackb(body, raw=False)
            if (node, incarnation) != (peer.name, peer.incarnation):
                log.warning("cluster: snapshot of %r at %s came from %r incarnation %d, not %r incarnation %d",
                            scope, peer.addr[0], node, incarnation, peer.name, peer.incarnation)
                return
            if self.peers.get(peer.name) is not peer:
                return  # it went down meanwhile
            first = scope not in peer.synced
            self._apply_snapshot(peer, scope, entries, gone, R_NODE_UP if first else R_NORMAL)
            peer.applied[scope] = seq
            peer.synced.add(scope)
            peer.gaps.pop(scope, None)
            self.stats["snapshots_fetched"] += 1
            # the changes that came meanwhile, newer than the snapshot, in order (a hole: the
            # heartbeats' gap check fetches again)
            t = self.m.tables[scope]
            for q, msg in sorted(peer.buffered.pop(scope, {}).items()):
                if q <= peer.applied[scope]:
                    continue
                if q != peer.applied[scope] + 1:
                    break
                self._apply_change(peer, t, msg)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
            log.info("cluster: snapshot of %r from %s failed (%s); will retry", scope, peer.name, e)
        except TableError as e:  # e.g. no node id left: logged, retried at the next heartbeat's gap
            log.error("cluster: snapshot of %r from %s not applied: %s", scope, peer.name, e)
        finally:
            peer.fetching.discard(scope)
            peer.buffered.pop(scope, None)
            if peer.fetch.get(scope, (None,))[0] is asyncio.current_task():
                del peer.fetch[scope]
            if scope in peer.refetch and self.peers.get(peer.name) is peer:
                peer.refetch.discard(scope)
                self._need_snapshot(peer, scope)

    def _apply_snapshot(self, peer: Peer, scope: str, entries: list, gone: list, reason: int) -> None:
        t = self.m.tables[scope]
        nid = self._node_id(t, peer.name)
        present = {(e[0], e[1], e[2]) for e in entries}
        why = {(g[0], g[1], g[2]): g[3] for g in gone if g[3] in _OWNER_REASONS}
        for item in t.collect(BY_NODE, 0, node=nid, flags=WITH_KEY):
            k = (item.type, item.key, item.pid)
            if k not in present:  # authoritative: gone on its node, for the reason it saw there
                t.delete(item.type, item.key, nid, item.pid, flags=F_MATCH_PID, reason=why.get(k, R_NORMAL),
                         reason_node=nid)
        for type_, key, pid, start, time_ns, meta in entries:
            self._apply_put(t, scope, nid, type_, key, pid, start, time_ns, meta, reason)

    async def _on_request(self, body: bytes) -> bytes | None:
        """An authenticated TCP request (see _tcp); the answer, if it has one."""
        msg = msgpack.unpackb(body, raw=False)
        if msg[0] == "snap":
            scope = msg[1]
            t = self.m.tables.get(scope)
            if t is not None:
                self.m._drain()  # our broadcasts catch up first: the seq below covers them
            entries = [] if t is None else [
                (i.type, i.key, i.pid, i.start, i.time_ns, i.meta)
                for i in t.collect(BY_NODE, 0, node=0, flags=WITH_KEY | WITH_META)]
            self.stats["snapshots_served"] += 1
            gone = [(*k, r) for k, r in self._gone.get(scope, {}).items() if r != R_NORMAL]
            return msgpack.packb(["snapr", self.node, self.incarnation, self.scope_seq.get(scope, 0), entries, gone])
        if msg[0] == "who":
            return msgpack.packb(["me", self.node, self.incarnation])
        if msg[0] == "msg":
            self._deliver(msg[1], msg[2])
        elif msg[0] == "cfl":
            self._on_conflict_notice(msg)
        return None

    # ---------------------------------------------------------------- messages

    def relay(self, dest: str, target: list, data: bytes) -> None:
        """Carry a mailbox datagram to a process on node `dest`."""
        peer = self.peers.get(dest)
        if peer is None:
            return  # unknown or down: like a send to a dead process
        self.stats["relayed"] += 1
        body = msgpack.packb(["msg", dest, target, data])
        if len(body) <= _wire.MAX_DATAGRAM - 100:
            self._send(body, peer.addr)
        else:
            asyncio.get_running_loop().create_task(self._push_tcp(peer, msgpack.packb(["msg", target, data])))

    async def _push_tcp(self, peer: Peer, body: bytes) -> None:
        """One authenticated frame to a peer over TCP (reliable, any size); best effort."""
        try:
            await _tcp.request(peer.addr[0], peer.tcp_port, self.o.secret, body, answer=False, timeout=5)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            log.info("cluster: could not reach %s over TCP", peer.name)

    def _deliver(self, target: list, data: bytes) -> None:
        from .mailbox import _address, _send_raw, reply_path
        if target[0] == "pid":
            address: str | None = _address(self.m.opts.rdir, int(target[1]), int(target[2]))
        elif target[0] == "addr":
            address = reply_path(self.m.opts.rdir, target[1])  # only a reply socket in our dir
        else:
            return
        if address is not None:
            _send_raw(address, data)

    def nodes(self, scope: str) -> list[str]:
        return sorted(p.name for p in self.peers.values() if scope in p.scopes and scope in p.synced)

