"""The UDP/TCP transport of replication (see _replication): discovery, heartbeats, change
broadcasts, snapshots over TCP, node up/down, conflict notices, and relaying messages to other
nodes. Runs inside the manager's loop and knows the node only through its Replica.

Each node is the authority for its own processes. It broadcasts every local change
with a per-scope sequence number and a heartbeat carrying those numbers; a receiver
that sees a gap, a new node or a new incarnation of one fetches that node's snapshot
of the scope over TCP. A snapshot is authoritative for its node's entries: what it
lacks is removed, so no stale entry outlives its owner (the zombie race of SYN_NOTES).

Large scopes: a snapshot answer is the scope's rows copied out of the table in one C call,
encoded once per (scope, seq) and shared by every peer that asks until a local change moves
the seq; the fetcher applies it a slice at a time (Replica.replace_rows), so neither loop
stops serving heartbeats.

Liveness: a node is down after the node timeout without an authentic datagram from it (any:
during a burst its changes say it lives as well as its heartbeats). Only time we could hear
counts: time this loop could not run (a long callback, the process not scheduled) is credited
to every peer, and while datagrams wait unread in our sockets a silence is not yet a verdict
(up to twice the timeout), since the peer's heartbeat may be among them.
"""
from __future__ import annotations

import asyncio
import fcntl
import logging
import random
import signal
import socket
import struct
import termios
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack

from . import _tcp, _wire
from ._changes import Outbox
from ._incarnation import next_incarnation
from ._replication import Change, Entry, Replica, ReplicationError

log = logging.getLogger("syn_mp.cluster")

_FETCH_TIMEOUT = 30.0  # seconds for a whole snapshot exchange
_PROBE_EVERY = 1.0     # seconds between two restart probes of one node
_FETCH_PATIENCE = 0.5  # seconds a snapshot answer may take to begin before a heartbeat asks again
_BUFFER_MAX = 65536    # changes buffered per peer and scope while its snapshot is fetched
_tuple = tuple.__new__


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

    def make(self, replica: Replica) -> "Cluster":
        return Cluster(replica, self)


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
    # while a snapshot is fetched: the changes that arrive meanwhile (scope -> seq -> change), replayed
    # over it once it is in (those newer than the seq it is consistent with), so none is lost
    buffered: dict[str, dict[int, list]] = field(default_factory=dict)
    fetch: dict[str, tuple[asyncio.Task, float, list]] = field(default_factory=dict)  # task, start, answering?


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, cluster: "Cluster") -> None:
        self.cluster = cluster

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.cluster._on_datagram(data, addr)


class Cluster:
    """A replication Transport (see _replication) over UDP datagrams and TCP exchanges."""

    def __init__(self, replica: Replica, opts: ClusterOptions) -> None:
        self.r = replica
        replica.transport = self
        self.o = opts
        self.node = replica.node
        self.incarnation = next_incarnation(replica.rdir)  # never the clock: see _incarnation
        self._seq = 0                            # datagram seq (replay protection)
        self.scope_seq: dict[str, int] = {}      # our changes broadcast per scope
        self.peers: dict[str, Peer] = {}
        self.guard = _wire.ReplayGuard()
        self.stats = {"sent": 0, "received": 0, "forged": 0, "replayed": 0, "malformed": 0, "dropped_test": 0,
                      "snapshots_fetched": 0, "snapshots_served": 0, "relayed": 0,
                      "other_incarnation": 0, "fetches_superseded": 0, "probes": 0, "restarts_verified": 0, "tcp_refused": 0, "tcp_timeouts": 0,
                      "tcp_accept_paused": 0, "snapshots_shared": 0, "loop_stalls": 0}
        self._probed: dict[str, float] = {}      # node -> when its lower incarnation was last checked
        # scope -> (seq, encoded snapshot answer): shared by the fetches of one position (see _snapshot)
        self._answers: dict[str, tuple[int, bytes]] = {}
        self._key = _wire.datagram_key(opts.secret)
        self._outbox = Outbox(self._send, _wire.body_room(self.node))
        # how our own datagrams begin: the multicast looped back to us is dropped before its MAC
        self._own = _wire.MAGIC + bytes([_wire.VERSION, len(self.node.encode())]) + self.node.encode()
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
        self._server.listen(o.interface, self.port)
        self._tasks = [loop.create_task(self._heartbeats()), loop.create_task(self._timeouts()),
                       loop.create_task(self._forget_silent_nodes())]
        log.info("cluster: node %r on %s:%d (%s)", self.node, o.interface, self.port,
                 f"multicast {o.group}" if o.group else f"peers {o.peers}")

    def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._transports:
            t.close()
        self._server.close()

    def _send(self, body: bytes, addr: tuple[str, int] | None = None) -> None:
        """One datagram to addr, or to everyone (the group, or every peer)."""
        self._seq += 1
        data = _wire.seal_keyed(self._key, self.node, self.incarnation, self._seq, body)
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
        if data.startswith(self._own):
            return  # our own multicast, looped back (a forgery in our name is dropped all the same)
        d = _wire.open_keyed(self._key, data)
        if d is None:
            self.stats["forged" if data.startswith(_wire.MAGIC) else "malformed"] += 1
            return
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
        peer.last_seen = time.monotonic()  # authentic and new: it lives, heartbeat or not (a burst's changes)
        if kind == "chg":
            self._on_changes(peer, msg)
        elif kind == "big":
            self._need_snapshot(peer, msg[1])
        elif kind == "msg" and msg[1] == self.node and msg[2] == self.incarnation:
            # for this manager's life only: a recording replayed after we restarted (our replay guard
            # is new then) names an older incarnation and is refused, so delivery stays at most once
            self.r.deliver(msg[3], msg[4])

    async def _heartbeats(self) -> None:
        while True:
            scopes = {s: self.scope_seq.get(s, 0) for s in self.r.scopes()}
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
            if not self.r.has_scope(scope):
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
        period = self.o.heartbeat_ms / 1000
        last = time.monotonic()
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            late, last = now - last - period, now
            if late > period:
                # this loop could not run (a long callback, the process not scheduled): the heartbeats
                # that came meanwhile wait unread in the socket, read one per loop turn from now on.
                # That time is not the peers' silence: it is not counted against their node timeout
                self.stats["loop_stalls"] += 1
                for peer in self.peers.values():
                    peer.last_seen = min(now, peer.last_seen + late)
            timeout, behind = self.o.node_timeout_ms / 1000, None
            for peer in list(self.peers.values()):
                silent = now - peer.last_seen
                if silent <= timeout:
                    continue
                if behind is None:
                    behind = self._unread()
                if behind and silent <= 2 * timeout:
                    continue  # datagrams wait unread here: its heartbeat may be among them (bounded: 2x)
                log.warning("cluster: node %r down (no heartbeat for %d ms)", peer.name, self.o.node_timeout_ms)
                self._node_down(peer)

    def _unread(self) -> bool:
        """Whether datagrams wait in our sockets (we are behind: a burst's changes, a stalled loop)."""
        for t in self._transports:
            try:
                if struct.unpack("i", fcntl.ioctl(t.get_extra_info("socket").fileno(), termios.FIONREAD,
                                                  b"\0\0\0\0"))[0] > 0:
                    return True
            except (OSError, AttributeError):
                pass
        return False

    async def _forget_silent_nodes(self) -> None:
        """Entries of other nodes left in the tables from before this manager started: a node
        that has not spoken within the node timeout is down."""
        await asyncio.sleep(self.o.node_timeout_ms / 1000)
        self.r.forget_others(set(self.peers))

    def _node_down(self, peer: Peer) -> None:
        self.peers.pop(peer.name, None)
        self.r.node_down(peer.name)

    # ---------------------------------------------------------- local changes

    def on_local_change(self, scope: str, change: Change) -> None:
        """A change of a local entry: broadcast it, with the reason this node saw (every node's
        callbacks and events() carry the owner's reason, as in Syn)."""
        seq = self.scope_seq[scope] = self.scope_seq.get(scope, 0) + 1
        self._answers.pop(scope, None)  # of the seq before: no peer will ask for it again
        self._outbox.add(scope, seq, change)  # sent by the end of this loop turn, with the others of the drain

    def flush(self) -> None:
        """The end of a journal drain (Replica.local_batch_done): the changes gathered go out now."""
        self._outbox.flush()

    def resync(self, scope: str) -> None:
        """Local changes were missed (journal overrun): skip a seq, so every peer sees a gap in
        our heartbeats and fetches our snapshot."""
        self.scope_seq[scope] = self.scope_seq.get(scope, 0) + 2
        self._answers.pop(scope, None)

    # --------------------------------------------------------- remote changes

    def _on_changes(self, peer: Peer, msg: list) -> None:
        """Consecutive changes of one scope (see _changes): applied in order, or buffered while a
        snapshot is fetched; a gap fetches one."""
        _, scope, first, changes = msg
        if not self.r.has_scope(scope) or type(first) is not int or type(changes) is not list:
            return
        for seq, change in enumerate(changes, first):
            if scope not in peer.fetching:
                if scope not in peer.synced:
                    return  # its first snapshot covers them
                applied = peer.applied.get(scope, 0)
                if seq <= applied:
                    continue  # seen already (or covered by a snapshot)
                if seq == applied + 1:
                    self._apply_change(peer, scope, seq, change)
                    continue
                self._need_snapshot(peer, scope)  # a gap: this change and the next wait for the snapshot
            buf = peer.buffered.setdefault(scope, {})
            if len(buf) < _BUFFER_MAX:
                buf[seq] = change

    def _apply_change(self, peer: Peer, scope: str, seq: int, change: list) -> None:
        put, type_, key, pid, start, time_ns, meta, reason = change
        peer.applied[scope] = seq
        # tuple.__new__: the NamedTuples without their Python-level __new__ (every node, every change)
        self.r.apply(scope, peer.name, _tuple(Change, (bool(put), _tuple(Entry, (type_, key, pid, start, time_ns, meta)),
                                                       reason)))

    # -------------------------------------------------------------- conflicts

    def notify_conflict(self, scope: str, key: bytes, loser_node: str, rival_node: str, rival: Entry) -> None:
        """Tell the node that owns a losing entry about its rival in the conflict: it decides alike
        and removes its own (it may not see the rival itself: a partial netsplit)."""
        peer = self.peers.get(loser_node)
        if peer is None:
            return
        body = msgpack.packb(["cfl", scope, key, rival_node, rival.pid, rival.start, rival.time_ns, rival.meta])
        asyncio.get_running_loop().create_task(self._push_tcp(peer, body))

    def _on_conflict_notice(self, msg: list) -> None:
        """A node met a conflict with one of ours: decide here too (alike), drop ours if it loses."""
        _, scope, key, owner, pid, start, time_ns, meta = msg
        if self.r.conflict_notice(scope, owner, Entry(0, key, pid, start, time_ns, meta)):
            # ours gave way: what the owner holds now comes from its snapshot, in order with its changes
            # (an unknown owner's discovery snapshot is still to come)
            peer = self.peers.get(owner)
            if peer is not None and scope in peer.fetching:
                peer.refetch.add(scope)  # the one in flight may predate the owner's decision
            elif peer is not None:
                self._need_snapshot(peer, scope)

    # -------------------------------------------------------------- snapshots

    def _need_snapshot(self, peer: Peer, scope: str) -> None:
        if scope in peer.fetching or not self.r.has_scope(scope):
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
            _, node, incarnation, seq, rows, gone = msgpack.unpackb(body, raw=False)
            if (node, incarnation) != (peer.name, peer.incarnation):
                log.warning("cluster: snapshot of %r at %s came from %r incarnation %d, not %r incarnation %d",
                            scope, peer.addr[0], node, incarnation, peer.name, peer.incarnation)
                return
            if type(rows) is not bytes or type(seq) is not int:
                raise ValueError("malformed snapshot answer")
            del body
            if self.peers.get(peer.name) is not peer:
                return  # it went down meanwhile
            for _ in self.r.replace_rows(scope, peer.name, rows, gone, first=scope not in peer.synced):
                await asyncio.sleep(0)  # a slice done: heartbeats and the other peers are served
                if self.peers.get(peer.name) is not peer:
                    return  # it went down meanwhile (what was applied is purged)
            peer.applied[scope] = seq
            peer.synced.add(scope)
            peer.gaps.pop(scope, None)
            self.stats["snapshots_fetched"] += 1
            # the changes that came meanwhile, newer than the snapshot, in order (a hole: the
            # heartbeats' gap check fetches again)
            for q, change in sorted(peer.buffered.pop(scope, {}).items()):
                if q <= peer.applied[scope]:
                    continue
                if q != peer.applied[scope] + 1:
                    break
                self._apply_change(peer, scope, q, change)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
            log.info("cluster: snapshot of %r from %s failed (%s); will retry", scope, peer.name, e)
        except ReplicationError as e:  # e.g. no node id left: logged, retried at the next heartbeat's gap
            log.error("cluster: snapshot of %r from %s not applied: %s", scope, peer.name, e)
        finally:
            peer.fetching.discard(scope)
            peer.buffered.pop(scope, None)
            if peer.fetch.get(scope, (None,))[0] is asyncio.current_task():
                del peer.fetch[scope]
            if scope in peer.refetch and self.peers.get(peer.name) is peer:
                peer.refetch.discard(scope)
                self._need_snapshot(peer, scope)

    async def _on_request(self, body: bytes) -> bytes | None:
        """An authenticated TCP request (see _tcp); the answer, if it has one."""
        msg = msgpack.unpackb(body, raw=False)
        if msg[0] == "snap":
            return self._snapshot(msg[1])
        if msg[0] == "who":
            return msgpack.packb(["me", self.node, self.incarnation])
        if msg[0] == "msg":
            self.r.deliver(msg[1], msg[2])
        elif msg[0] == "cfl":
            self._on_conflict_notice(msg)
        return None

    def _snapshot(self, scope: str) -> bytes:
        """The answer to a snapshot request: our entries of the scope as rows (one C call), with the
        seq of our changes they are consistent with. Made once per seq: the peers that ask at one
        position (every node fetches a node that comes up) share it, each under its own MAC."""
        self.r.flush_local()  # our broadcasts catch up first: the seq below covers them
        seq = self.scope_seq.get(scope, 0)
        self.stats["snapshots_served"] += 1
        cached = self._answers.get(scope)
        if cached is not None and cached[0] == seq:
            self.stats["snapshots_shared"] += 1
            return cached[1]
        rows, gone = self.r.local_rows(scope)
        body = msgpack.packb(["snapr", self.node, self.incarnation, seq, rows, gone])
        self._answers[scope] = (seq, body)
        return body

    # ---------------------------------------------------------------- messages

    def relay(self, dest: str, target: list, data: bytes) -> None:
        """Carry a mailbox datagram to a process on node `dest`."""
        peer = self.peers.get(dest)
        if peer is None:
            return  # unknown or down: like a send to a dead process
        self.stats["relayed"] += 1
        body = msgpack.packb(["msg", dest, peer.incarnation, target, data])
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

    def nodes(self, scope: str) -> list[str]:
        return sorted(p.name for p in self.peers.values() if scope in p.scopes and scope in p.synced)

    def status(self) -> dict[str, Any]:
        return {"nodes": sorted(self.peers), "incarnation": self.incarnation, **self.stats, **self.r.stats}
