"""The cluster on etcd: a replication transport (see _replication) over an etcd v3 cluster.

Keys, under the prefix P (`--etcd-prefix`, default /syn_mp/):

    P n/<hex node>                         the node: [host, port, ready, scopes]     (its lease)
    P e/<scope>/<r|g>/<hex key>/<hex node>/<pid>
                                           one entry: [start, time_ns, meta] or, once removed,
                                           a tombstone [reason], deleted at the next write  (its lease)
    P relay-key                            32 random bytes authenticating node-to-node messages
                                           (created once; protected by etcd's auth and TLS)

A node is alive while its lease is (`--node-timeout-ms` is the TTL, rounded up to seconds):
when the lease expires, etcd deletes every key of the node at once, and every watcher sees a
bare delete of a live entry (ours always tombstone first): the node is down. A node publishes
its own entries under its lease and mirrors the others' from one watch of P, resumed from the
last revision it applied after a disconnection; a compacted revision means a full read.

Conflicts are decided once, by etcd's order: of the live registrations of a name, the one
created first (lowest create_revision) holds it, on every node alike (a custom
resolve_registry_conflict folds over them in that order). A losing local entry is removed
(reason conflict_resolution) and its process signalled, unless its caller waits for etcd's
decision (`register(..., confirm=seconds)`), which then raises TakenError instead.
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import msgpack

from . import _tcp
from ._replication import Change, Entry, Replica
from ._table import PG, R_CONFLICT, R_NORMAL, REG
from ._types import Pid

log = logging.getLogger("syn_mp.etcd")

_BATCH = 64            # operations per etcd transaction (etcd allows 128)
_CALL_TIMEOUT = 3      # seconds for one etcd call
_RETRY = 0.2           # seconds between two tries while etcd is unreachable
_RETRY_REFUSED = 2.0   # ... while it refuses us (each try is a TLS handshake, and a login: a raft write)


@dataclass
class EtcdOptions:
    endpoints: list[str]
    prefix: str = "/syn_mp/"
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    user: str | None = None
    password: str | None = None
    interface: str | None = None           # the address advertised to peers (else the one that reaches etcd)
    node_timeout_ms: int = 1000
    conflict_signal: int = signal.SIGTERM
    relay_port: int = 0

    def make(self, replica: Replica) -> "EtcdTransport":
        return EtcdTransport(replica, self)


def _hostport(url: str) -> tuple[str, int, bool]:
    u = urlsplit(url if "://" in url else "http://" + url)
    return u.hostname or "127.0.0.1", u.port or 2379, u.scheme == "https"


_CLIENT: Any = None


def _client_class() -> Any:
    """aetcd's Client over a gRPC channel of ours: TLS when given credentials. aetcd 1.0 builds only
    plain channels, inside connect(); connect() is redone here the same but for the channel (swapping
    the module's insecure_channel for the call instead would reach any other client connecting
    meanwhile, across connect()'s await)."""
    global _CLIENT
    if _CLIENT is not None:
        return _CLIENT
    import aetcd
    import grpc
    from aetcd import exceptions, rpc, watcher

    class Client(aetcd.Client):
        def __init__(self, *a: Any, credentials: Any = None, **kw: Any) -> None:
            super().__init__(*a, **kw)
            self._credentials = credentials
            self._closed = False

        async def connect(self) -> None:
            if self._connected.is_set():
                return
            if self._closed:  # a task still holding a client we dropped: it fails, it does not reconnect
                raise exceptions.ConnectionFailedError("client closed")
            target = f"{self._host}:{self._port}"
            options = list(self._options.items())
            channel = (grpc.aio.secure_channel(target, self._credentials, options) if self._credentials is not None
                       else grpc.aio.insecure_channel(target, options))
            metadata = None
            try:
                if self._username is not None:
                    resp = await rpc.AuthStub(channel).Authenticate(
                        rpc.AuthenticateRequest(name=self._username, password=self._password), timeout=self._timeout)
                    metadata = (("token", resp.token),)
            except rpc.AioRpcError as e:
                # etcd with its authentication off: go on without a token, as etcd's own Go client does
                if not (e.code() == grpc.StatusCode.FAILED_PRECONDITION and "not enabled" in (e.details() or "")):
                    await channel.close()
                    raise exceptions.ClientError(e.details()) from e
            except BaseException:
                await channel.close()
                raise
            self.channel, self.metadata = channel, metadata
            self.auth_stub = rpc.AuthStub(channel)
            self.kvstub = rpc.KVStub(channel)
            self.clusterstub = rpc.ClusterStub(channel)
            self.leasestub = rpc.LeaseStub(channel)
            self.maintenancestub = rpc.MaintenanceStub(channel)
            self._watcher = watcher.Watcher(rpc.WatchStub(channel), timeout=self._timeout, metadata=metadata)
            self._connected.set()

        async def close(self) -> None:
            self._closed = True
            await super().close()
    _CLIENT = Client
    return Client


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()


class EtcdRefused(Exception):
    """etcd turns this node away for a reason a retry will not mend (TLS, the user, its role): at the
    start, the daemon says so in one line and exits (cli); later, it is an error in the log."""


def _status_code(e: BaseException) -> str:
    """The gRPC status code's name of a failed call ("" if it is not one); aetcd's errors wrap gRPC's."""
    rpc_error = e.__cause__ if e.__cause__ is not None else e
    code_of = getattr(rpc_error, "code", None)
    return getattr(code_of(), "name", "") if callable(code_of) else ""


def _token_expired(e: BaseException) -> bool:
    return _status_code(e) == "UNAUTHENTICATED"


def _refusal(e: BaseException, o: EtcdOptions, endpoint: str) -> str | None:
    """etcd's refusal in one line for the operator; None for a failure a retry may mend (unreachable)."""
    where = f"etcd at {endpoint}"
    if isinstance(e, OSError) and e.filename is not None:  # --etcd-ca/-cert/-key, read at each connection
        return f"{where}: {e}"
    code = _status_code(e)
    text = str(e)
    if code == "PERMISSION_DENIED":
        who = (f"the user {o.user!r}" if o.user else
               "this client (without --etcd-user, etcd takes the client certificate's CommonName for the user)")
        return (f"{where}: permission denied: {who} needs read and write on the prefix {o.prefix} "
                f"(etcdctl role grant-permission ROLE readwrite {o.prefix} --prefix)")
    if code == "INVALID_ARGUMENT" and "authentication failed" in text:
        return f"{where}: authentication failed: wrong user {o.user!r} or password (--etcd-user, --etcd-password-file)"
    if code == "INVALID_ARGUMENT" and "user name is empty" in text:
        return f"{where}: etcd's authentication is on: give --etcd-user and --etcd-password-file"
    if code == "UNAVAILABLE" and (_hostport(endpoint)[2] or o.ca or o.cert):
        if "handshake" in text.lower():
            why = re.search(r"OPENSSL_internal:([^:]+(?::[^:]+)?)", text)
            return (f"{where}: TLS handshake failed ({why.group(1).strip() if why else text}): is etcd's "
                    f"certificate signed by --etcd-ca, and does it name the host of the URL?")
        if "TSI_DATA_CORRUPTED" in text:  # the server's alert after the handshake: our certificate
            return (f"{where}: etcd closed the TLS connection: it wants a client certificate signed by a CA "
                    f"of its --trusted-ca-file (--etcd-cert, --etcd-key)")
    return None


@dataclass
class _Node:
    host: str = ""
    port: int = 0
    ready: bool = False
    scopes: list = field(default_factory=list)


class EtcdTransport:
    def __init__(self, replica: Replica, opts: EtcdOptions) -> None:
        self.r = replica
        replica.transport = self
        self.o = opts
        self.node = replica.node
        self.p = opts.prefix.encode()
        self.ttl = max(1, math.ceil(opts.node_timeout_ms / 1000))
        self.stats = {"puts": 0, "txns": 0, "etcd_errors": 0, "etcd_refused": 0, "logins": 0, "resyncs": 0,
                      "compacted": 0, "leases": 0, "conflicts": 0, "relayed": 0, "watch_events": 0}
        self._ep = 0
        self._gen = 0
        self._client: Any = None
        self.lease: int | None = None
        self.rev = 0                          # last revision applied from etcd
        self.nodes_: dict[str, _Node] = {}     # other nodes, as etcd shows them
        # every other node's live entries: scope -> node -> (type, key, pid) -> (create_rev, Entry)
        self.cache: dict[str, dict[str, dict[tuple, tuple[int, Entry]]]] = {}
        self.claims: dict[tuple[str, bytes], dict[tuple[str, int], tuple[int, Entry]]] = {}  # every node's names
        self.holder: dict[tuple[str, bytes], tuple[str, int]] = {}  # remote holder put into our tables
        self.pending: dict[bytes, tuple[bytes, bool]] = {}    # our writes: etcd key -> (value, tombstone?)
        self.to_delete: set[bytes] = set()                   # tombstones written: delete next
        self.waiting: dict[tuple[str, bytes, int], asyncio.Future] = {}  # register(confirm=...) callers
        self._kick = asyncio.Event()
        self._scopes: list[str] = []
        self._tasks: list[asyncio.Task] = []
        self._up = asyncio.Event()         # published and watching
        self._detached = False
        self._last_ok = 0.0                # the last time etcd renewed our lease
        self.relay_key = b""
        self.incarnation = 0
        self._connecting = asyncio.Lock()
        self._refused: str | None = None   # etcd's last refusal, logged once

    # ------------------------------------------------------------ connection

    def _endpoint(self) -> str:
        return self.o.endpoints[self._ep % len(self.o.endpoints)]

    def _new_client(self, endpoint: str) -> Any:
        import grpc
        host, port, https = _hostport(endpoint)
        creds = None
        if https or self.o.ca or self.o.cert:
            # read at every connection: certificates renewed on disk are taken without a restart
            creds = grpc.ssl_channel_credentials(_read(self.o.ca), _read(self.o.key), _read(self.o.cert))
        return _client_class()(host=host, port=port, username=self.o.user, password=self.o.password,
                               timeout=_CALL_TIMEOUT, credentials=creds)

    async def _c(self) -> Any:
        # one connection at a time: the tasks that find none wait for the one being made (with a
        # user, each connection is a login, a write in etcd's raft log)
        async with self._connecting:
            if self._client is None:
                c = self._new_client(self._endpoint())
                await c.connect()  # closes what it opened when it fails
                self._client = c
                if self.o.user is not None:
                    self.stats["logins"] += 1
            return self._client

    async def _failed(self, gen: int, e: BaseException) -> float:
        """An etcd call failed: the next one goes to the next endpoint (once per failure), or, when
        our login token expired, to the same one with a new login. Returns the pause before the next
        try: longer when etcd refused us than when it did not answer."""
        self.stats["etcd_errors"] += 1
        refusal = _refusal(e, self.o, self._endpoint())
        if refusal is not None:
            self.stats["etcd_refused"] += 1
        pause = _RETRY if refusal is None else _RETRY_REFUSED
        if gen != self._gen:
            return pause
        self._gen += 1
        if _token_expired(e):
            # a JWT past its TTL, or a simple token etcd forgot (it keeps them in memory only)
            log.info("etcd: %s: our login token is no longer valid; logging in again", self._endpoint())
        else:
            if refusal is None:
                log.info("etcd: %s unreachable (%s: %s); trying the next endpoint", self._endpoint(),
                         type(e).__name__, e)
            elif refusal != self._refused:  # said once, not at every try
                log.error("%s; retrying every %gs", refusal, _RETRY_REFUSED)
                self._refused = refusal
            self._ep += 1
        c, self._client = self._client, None
        if c is not None:
            await _close(c)
        return pause

    async def _with_client(self, fn: Any) -> Any:
        # connecting is inside the caller's time bound: an endpoint in a black hole (a partition)
        # never answers the connection either
        return await fn(await self._c())

    async def _call(self, fn: Any) -> Any:
        """fn(client) until it succeeds, rotating endpoints on failure."""
        while True:
            gen = self._gen
            try:
                return await _bounded(self._with_client(fn), _CALL_TIMEOUT + 1)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if _is_compacted(e):
                    raise
                await asyncio.sleep(await self._failed(gen, e))

    # ------------------------------------------------------------ keys

    def _node_key(self, node: str) -> bytes:
        return self.p + b"n/" + node.encode().hex().encode()

    def _entry_key(self, scope: str, e: Entry, node: str | None = None) -> bytes:
        return b"%se/%s/%s/%s/%s/%d" % (self.p, scope.encode(), b"r" if e.type == REG else b"g", e.key.hex().encode(),
                                        (node or self.node).encode().hex().encode(), e.pid)

    def _parse_entry_key(self, k: bytes) -> tuple[str, int, bytes, str, int] | None:
        try:
            scope, t, hkey, hnode, pid = k[len(self.p) + 2:].split(b"/")
            return scope.decode(), REG if t == b"r" else PG, bytes.fromhex(hkey.decode()), \
                bytes.fromhex(hnode.decode()).decode(), int(pid)
        except ValueError:
            return None

    # ------------------------------------------------------------ start / stop

    async def start(self) -> None:
        await self._probe()
        self.relay_server = _tcp.Server(b"", self._on_request, self.stats)
        host = self.o.interface or _reaching_address(self.o.endpoints[0])
        self.host = host
        self._tcp = await asyncio.start_server(self._serve_relay, host, self.o.relay_port)
        self.port = self._tcp.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._run())]
        log.info("etcd cluster: node %r, endpoints %s, prefix %s, lease TTL %ds, relay on %s:%d",
                 self.node, ",".join(self.o.endpoints), self.o.prefix, self.ttl, host, self.port)

    async def _probe(self) -> None:
        """Before the node serves: does etcd take us at all? Every endpoint is tried at once with what
        the node will do first (log in, create or read the relay key under the prefix), within one
        call's time. None accepting and one refusing (TLS, the user, its role): EtcdRefused, the start
        fails in one line. None answering: the node starts alone and keeps trying (etcd may come later)."""
        async def one(i: int) -> int:
            c = self._new_client(self.o.endpoints[i])
            try:
                await c.connect()
                await self._relay_key(c)
            finally:
                await _close(c)
            return i
        loop = asyncio.get_running_loop()
        tasks = {loop.create_task(_bounded(one(i), _CALL_TIMEOUT)): i for i in range(len(self.o.endpoints))}
        refusals: list[str] = []
        failures: list[str] = []
        try:
            pending = set(tasks)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    ep = self.o.endpoints[tasks[t]]
                    e = t.exception()
                    if e is None:
                        self._ep = t.result()  # the first to accept us: attach there
                        return
                    why = _refusal(e, self.o, ep)
                    if why is not None:
                        refusals.append(why)
                    else:
                        plain = not (_hostport(ep)[2] or self.o.ca or self.o.cert)
                        hint = " (closed at once: does etcd want TLS, https:// URLs?)" \
                            if plain and "Socket closed" in str(e) else ""
                        failures.append(f"{ep}: {type(e).__name__} {e}{hint}")
        finally:
            for t in tasks:
                t.cancel()
        if refusals:
            raise EtcdRefused(refusals[0])
        log.warning("etcd: no endpoint answered (%s): this node serves its own tables and keeps trying",
                    "; ".join(failures))

    async def _relay_key(self, c: Any) -> bytes:
        """The key authenticating node-to-node messages: made by the first node, read by the others."""
        key = self.p + b"relay-key"
        await c.transaction(compare=[c.transactions.create(key) == 0],
                            success=[c.transactions.put(key, os.urandom(32))], failure=[])
        return (await c.get(key)).value

    def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        self._tcp.close()
        c = self._client
        if c is not None and self.lease is not None:
            # a clean stop: revoke the lease (others see us down at once), bounded
            async def bye() -> None:
                try:
                    await _bounded(c.revoke_lease(self.lease), 1)
                except Exception:
                    pass
            try:
                asyncio.get_running_loop().create_task(bye())
            except RuntimeError:
                pass

    async def _run(self) -> None:
        """Attach (lease, publish, read everything), then follow; again after losing etcd."""
        while True:
            try:
                await self._attach()
                loop = asyncio.get_running_loop()
                tasks = [loop.create_task(c) for c in (self._keepalive(), self._lease_clock(), self._watch(),
                                                         self._writer())]
                try:
                    # each task loops for ever: one that ends, by an error or by a cancellation that
                    # was not ours, ends the attach rather than leaving the node without that loop
                    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for t in tasks:
                        t.cancel()
                for t in done:
                    if not t.cancelled():
                        t.result()  # raises what ended it
                # only cancelled ones: a gRPC call raises CancelledError in its caller when the
                # channel it was on is closed (a failover does that); we were not cancelled: again
                raise _Detached()
            except asyncio.CancelledError:
                raise
            except _Detached:
                continue
            except Exception:
                log.exception("etcd: transport failed; attaching again")
                await asyncio.sleep(_RETRY)

    async def _attach(self) -> None:
        self._up.clear()
        self.stats["leases"] += 1
        lease = await self._call(lambda c: c.lease(self.ttl))
        self.lease = lease.id
        self.incarnation = lease.id
        self.relay_key = await self._call(self._relay_key)
        self.relay_server.secret = self.relay_key
        self._scopes = sorted(self.r.scopes())
        await self._put_node(False)
        # our entries, all of them, under this lease (what a previous life left is overwritten)
        self.r.flush_local()
        self.pending.clear()
        ops: list[tuple[bytes, bytes]] = []
        for scope in self._scopes:
            entries, _ = self.r.local_entries(scope)
            ops += [(self._entry_key(scope, e), msgpack.packb([e.start, e.time_ns, e.meta])) for e in entries]
        for i in range(0, len(ops), _BATCH):
            chunk = ops[i:i + _BATCH]
            await self._call(lambda c, chunk=chunk: c.transaction(
                compare=[], success=[c.transactions.put(k, v, lease=self.lease) for k, v in chunk], failure=[]))
        await self._full_read(first=True)
        await self._put_node(True)
        if self._refused is not None:
            log.warning("etcd: %s accepts this node again", self._endpoint())
            self._refused = None
        self._up.set()
        self._detached = False
        self._kick.set()

    async def _put_node(self, ready: bool) -> None:
        value = msgpack.packb([self.host, self.port, ready, self._scopes])
        await self._call(lambda c: c.put(self._node_key(self.node), value, lease=self.lease))

    async def _lease_clock(self) -> None:
        """Cut off from etcd longer than our lease: the others have dropped us; we drop them and
        attach again. A clock of its own: the keepalive's call may hang in a partition."""
        while True:
            await asyncio.sleep(self.ttl / 3)
            if time.monotonic() - self._last_ok > self.ttl:
                log.warning("etcd: unreachable for %ds: the other nodes are down for us", self.ttl)
                for n in list(self.nodes_):
                    self._node_down(n)
                raise _Detached()

    async def _keepalive(self) -> None:
        last_ok = self._last_ok = time.monotonic()
        while True:
            await asyncio.sleep(self.ttl / 3)
            scopes = sorted(self.r.scopes())
            try:
                reply = await _bounded(self._with_client(lambda c: c.refresh_lease(self.lease)), _CALL_TIMEOUT)
                if reply is None or reply.TTL <= 0:
                    log.warning("etcd: our lease expired (the others saw this node down): publishing again")
                    raise _Detached()
                last_ok = self._last_ok = time.monotonic()
                if scopes != self._scopes:  # a scope was added: its remote entries, and say we have it
                    new = [s for s in scopes if s not in self._scopes]
                    self._scopes = scopes
                    for s in new:
                        self._replace_scope(s)
                    await self._put_node(True)
            except (_Detached, asyncio.CancelledError):
                raise
            except Exception as e:
                await self._failed(self._gen, e)
                if time.monotonic() - last_ok > self.ttl:
                    # cut off from etcd longer than our lease: the others have dropped us; we drop them
                    log.warning("etcd: unreachable for %ds: the other nodes are down for us", self.ttl)
                    for n in list(self.nodes_):
                        self._node_down(n)
                    raise _Detached()

    # ------------------------------------------------------------ carry out

    def on_local_change(self, scope: str, change: Change) -> None:
        e = change.entry
        k = self._entry_key(scope, e)
        if change.put:
            self.pending[k] = (msgpack.packb([e.start, e.time_ns, e.meta]), False)
        else:
            self.pending[k] = (msgpack.packb([change.reason]), True)
        self._kick.set()

    def flush(self) -> None:
        """Nothing gathered here: the writer task sends the pending changes as soon as it is kicked."""

    def resync(self, scope: str) -> None:
        """Local changes were missed: publish every local entry of the scope again, and tombstone
        ours that are gone (the others compare with what they mirror)."""
        self.r.flush_local()
        entries, _ = self.r.local_entries(scope)
        want = {self._entry_key(scope, e): e for e in entries}
        for (s, key), claims in self.claims.items():
            for (node, pid), (_, e) in claims.items():
                if s == scope and node == self.node and self._entry_key(scope, e) not in want:
                    self.pending[self._entry_key(scope, e)] = (msgpack.packb([R_NORMAL]), True)
        for k, e in want.items():
            self.pending[k] = (msgpack.packb([e.start, e.time_ns, e.meta]), False)
        self._kick.set()

    async def _writer(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            while self.pending or self.to_delete:
                batch = list(self.pending.items())[:_BATCH]
                dels = [k for k in self.to_delete if k not in self.pending][:_BATCH - len(batch)]
                lease = self.lease

                def ops(c: Any) -> list:
                    return [c.transactions.put(k, v, lease=lease) for k, (v, _) in batch] + \
                        [c.transactions.delete(k) for k in dels]
                gen = self._gen
                try:
                    c = await self._c()
                    await _bounded(c.transaction(compare=[], success=ops(c), failure=[]), _CALL_TIMEOUT)
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    await asyncio.sleep(await self._failed(gen, e))
                    continue
                self.stats["txns"] += 1
                self.stats["puts"] += len(batch)
                for k, (v, tomb) in batch:
                    if self.pending.get(k) == (v, tomb):
                        del self.pending[k]
                    if tomb:
                        self.to_delete.add(k)
                    else:
                        self.to_delete.discard(k)
                self.to_delete.difference_update(dels)

    # ------------------------------------------------------------ bring in

    async def _full_read(self, first: bool = False) -> None:
        """Everything under the prefix at one revision: the mirror becomes exactly that."""
        self.stats["resyncs"] += 1
        end = self.p[:-1] + bytes([self.p[-1] + 1])
        got = await self._call(lambda c: c.get_range(self.p, end))
        rev = got.header.revision
        nodes: dict[str, _Node] = {}
        cache: dict[str, dict[str, dict[tuple, tuple[int, Entry]]]] = {}
        claims: dict[tuple[str, bytes], dict[tuple[str, int], tuple[int, Entry]]] = {}
        for kv in got:
            k = kv.key
            if k.startswith(self.p + b"n/"):
                node = bytes.fromhex(k[len(self.p) + 2:].decode()).decode()
                if node != self.node:
                    nodes[node] = _Node(*msgpack.unpackb(kv.value, raw=False))
            elif k.startswith(self.p + b"e/"):
                parsed = self._parse_entry_key(k)
                v = msgpack.unpackb(kv.value, raw=False)
                if parsed is None or len(v) != 3:
                    continue  # a tombstone
                scope, type_, key, node, pid = parsed
                e = Entry(type_, key, pid, v[0], v[1], v[2])
                if type_ == REG:
                    claims.setdefault((scope, key), {})[(node, pid)] = (kv.create_revision, e)
                if node != self.node:
                    cache.setdefault(scope, {}).setdefault(node, {})[(type_, key, pid)] = (kv.create_revision, e)
        for node in list(self.nodes_):
            if node not in nodes:
                self._node_down(node)
        was = self.nodes_
        self.nodes_, self.cache, self.claims, self.holder = nodes, cache, claims, {}
        for scope in self.r.scopes():
            self._replace_scope(scope, fresh={n for n in nodes if n not in was})
        if first:
            self.r.forget_others(set(nodes))
        self.rev = rev

    def _replace_scope(self, scope: str, fresh: set[str] | None = None) -> None:
        """Our tables' copy of every ready node's entries of the scope, from the mirror."""
        if not self.r.has_scope(scope):
            return
        for (s, key) in [k for k in self.claims if k[0] == scope]:
            self._decide_local(s, key)
        for node, info in self.nodes_.items():
            if not info.ready:
                continue
            entries = [e for _, e in self.cache.get(scope, {}).get(node, {}).values() if self._kept(scope, node, e)]
            self.r.replace(scope, node, entries, [], fresh is None or node in fresh)
            for e in entries:
                if e.type == REG:
                    self.holder[(scope, e.key)] = (node, e.pid)

    def _kept(self, scope: str, node: str, e: Entry) -> bool:
        return e.type != REG or (self._winner(scope, e.key) == (node, e.pid) and not self._unordered_local(scope, e.key))

    def _unordered_local(self, scope: str, key: bytes) -> bool:
        """Our tables hold the name for a local process whose claim etcd has not shown us yet: a
        remote holder must not be put in beside it (the table would decide by its own rule, by time,
        and signal ours); once our claim is back from etcd, _sync_name decides by etcd's order."""
        held = self.r.local_holder(scope, key)
        return held is not None and (self.node, held[0]) not in self.claims.get((scope, key), {})

    def _winner(self, scope: str, key: bytes) -> tuple[str, int] | None:
        """Who holds the name, decided by etcd's order alike on every node: the live registration
        created first; with a custom resolver, a fold over them in that order."""
        claims = self.claims.get((scope, key))
        if not claims:
            return None
        order = sorted(claims.items(), key=lambda kv: kv[1][0])
        win: tuple[str, int] | None = order[0][0]
        resolver = self.r.custom_resolver()
        if resolver is None or len(order) == 1:
            return win
        from .codec import decode, decode_name
        for (node, pid), (_, e) in order[1:]:
            assert win is not None  # (a None returned below)
            we = claims[win][1]
            a = (Pid(win[0], win[1]), decode(we.meta), we.time_ns)
            b = (Pid(node, pid), decode(e.meta), e.time_ns)
            first, second = sorted([a, b], key=lambda c: c[0])
            got = resolver(scope, decode_name(key), first, second, a[0])
            win = (node, pid) if got == b[0] else win if got == a[0] else None
            if win is None:
                return None
        return win

    def _decide_local(self, scope: str, key: bytes) -> None:
        """A local registration of the name that is not the winner gives way."""
        held = self.r.local_holder(scope, key)
        if held is None:
            return
        pid, start = held
        claims = self.claims.get((scope, key), {})
        if (self.node, pid) not in claims or len(claims) < 2:
            return  # not published yet: etcd has not ordered it
        win = self._winner(scope, key)
        if win == (self.node, pid):
            return
        self.stats["conflicts"] += 1
        fut = self.waiting.get((scope, key, pid))  # left for confirm() to collect
        if fut is not None and not fut.done():
            fut.set_result(False)
        # a caller that waits for the decision is told, not signalled; nor is anyone under a custom resolver
        signal_it = fut is None and self.r.custom_resolver() is None
        self.r.remove_local_loser(scope, key, pid, start, win, signal_it)  # journaled: tombstoned

    def _sync_name(self, scope: str, key: bytes) -> None:
        """The name's holder in our tables follows the winner."""
        self._decide_local(scope, key)
        if not self.r.has_scope(scope):
            return
        win = self._winner(scope, key)
        old = self.holder.get((scope, key))
        if old == win:
            return
        if old is not None:
            self.holder.pop((scope, key))
            c = self.claims.get((scope, key), {}).get(old)
            if old[0] in self.nodes_:
                e = c[1] if c else Entry(REG, key, old[1], 0, 0, b"")
                self.r.apply(scope, old[0], Change(False, e, R_CONFLICT if c else R_NORMAL))
        if win is not None and win[0] != self.node and self.nodes_.get(win[0], _Node()).ready \
                and not self._unordered_local(scope, key):
            self.holder[(scope, key)] = win
            self.r.apply(scope, win[0], Change(True, self.claims[(scope, key)][win][1]))
        if win is None or win[0] != self.node:
            return
        fut = self.waiting.get((scope, key, win[1]))
        if fut is not None and not fut.done():
            fut.set_result(True)

    def _node_down(self, node: str) -> None:
        if self.nodes_.pop(node, None) is None:
            return
        log.warning("etcd: node %r down (its lease ended)", node)
        for scope in self.cache:
            self.cache[scope].pop(node, None)
        touched = []
        for (scope, key), claims in self.claims.items():
            for nk in [nk for nk in claims if nk[0] == node]:
                del claims[nk]
                touched.append((scope, key))
        for sk in touched:
            if self.holder.get(sk, ("",))[0] == node:
                del self.holder[sk]
        self.r.node_down(node)
        for scope, key in touched:
            self._sync_name(scope, key)

    async def _watch(self) -> None:
        end = self.p[:-1] + bytes([self.p[-1] + 1])
        while True:
            gen = self._gen
            try:
                c = await _bounded(self._c(), _CALL_TIMEOUT)
                w = await _bounded(c.watch(self.p, range_end=end, start_revision=self.rev + 1), _CALL_TIMEOUT)
                async for ev in w:
                    self.stats["watch_events"] += 1
                    self._on_event(ev)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if _is_compacted(e):
                    log.warning("etcd: revision %d compacted: reading everything again", self.rev + 1)
                    self.stats["compacted"] += 1
                    await self._full_read()
                    continue
                await asyncio.sleep(await self._failed(gen, e))

    def _on_event(self, ev: Any) -> None:
        kv = ev.kv
        k = kv.key
        delete = str(getattr(ev.kind, "value", ev.kind)).upper().endswith("DELETE")
        self.rev = max(self.rev, kv.mod_revision)
        if k.startswith(self.p + b"n/"):
            node = bytes.fromhex(k[len(self.p) + 2:].decode()).decode()
            if node == self.node:
                return
            if delete:
                self._node_down(node)
                return
            info = _Node(*msgpack.unpackb(kv.value, raw=False))
            old = self.nodes_.get(node)
            self.nodes_[node] = info
            if info.ready and (old is None or not old.ready):
                log.info("etcd: node %r up at %s:%d", node, info.host, info.port)
                for scope in self.r.scopes():
                    entries = [e for _, e in self.cache.get(scope, {}).get(node, {}).values()
                               if self._kept(scope, node, e)]
                    self.r.replace(scope, node, entries, [], True)
                    for e in entries:
                        if e.type == REG:
                            self.holder[(scope, e.key)] = (node, e.pid)
            elif old is not None and info.ready and old.scopes != info.scopes:
                for scope in info.scopes:
                    if scope not in old.scopes and self.r.has_scope(scope):
                        entries = [e for _, e in self.cache.get(scope, {}).get(node, {}).values()
                                   if self._kept(scope, node, e)]
                        self.r.replace(scope, node, entries, [], True)
            return
        if not k.startswith(self.p + b"e/"):
            return
        parsed = self._parse_entry_key(k)
        if parsed is None:
            return
        scope, type_, key, node, pid = parsed
        v = None if delete else msgpack.unpackb(kv.value, raw=False)
        mine = self.cache.setdefault(scope, {}).setdefault(node, {})
        if v is not None and len(v) == 3:  # a put
            e = Entry(type_, key, pid, v[0], v[1], v[2])
            if type_ == REG:
                self.claims.setdefault((scope, key), {})[(node, pid)] = (kv.create_revision, e)
            if node == self.node:
                if type_ == REG:
                    self._sync_name(scope, key)
                return
            mine[(type_, key, pid)] = (kv.create_revision, e)
            if not self.nodes_.get(node, _Node()).ready:
                return  # its whole copy comes when it is ready (reason node_up)
            if type_ == PG or self.holder.get((scope, key)) == (node, pid) == self._winner(scope, key):
                self.r.apply(scope, node, Change(True, e))  # a join, or an update of the holder's meta
            else:
                self._sync_name(scope, key)
            return
        # a removal: a tombstone [reason], or a bare delete (ours follow a tombstone: a bare delete of a
        # live entry is its lease expiring, the node down)
        known = mine.pop((type_, key, pid), None) if node != self.node else None
        claim = self.claims.get((scope, key), {}).pop((node, pid), None) if type_ == REG else None
        if node == self.node:
            if claim is not None:
                self._sync_name(scope, key)
            return
        if delete and known is not None:
            self._node_down(node)
            return
        if known is None or not self.nodes_.get(node, _Node()).ready:
            return
        reason = v[0] if v else R_NORMAL
        if type_ == PG:
            self.r.apply(scope, node, Change(False, known[1], reason))
        else:
            if self.holder.get((scope, key)) == (node, pid):
                del self.holder[(scope, key)]
                self.r.apply(scope, node, Change(False, known[1], reason))
            self._sync_name(scope, key)

    # ------------------------------------------------------------ waiting for etcd's decision

    def expect(self, scope: str, key: bytes, pid: int, timeout: float) -> None:
        """A caller is about to register `key` for `pid` and will wait for etcd's decision: should it
        lose, its registration is removed without signalling the process (confirm() says so)."""
        k = (scope, key, pid)
        fut = self.waiting.get(k)
        if fut is None or fut.done():
            fut = self.waiting[k] = asyncio.get_running_loop().create_future()
        # a caller that never comes to confirm() (it died): forgotten after its own deadline
        asyncio.get_running_loop().call_later(timeout + 5, lambda: self.waiting.pop(k, None)
                                              if self.waiting.get(k) is fut else None)

    async def confirm(self, scope: str, key: bytes, pid: int, timeout: float) -> bool | None:
        """Wait until etcd has ordered our registration of `key` by `pid`: True (it holds the name),
        False (an earlier one does: ours was removed, unsignalled), None (no answer in time)."""
        k = (scope, key, pid)
        fut = self.waiting.get(k)
        if fut is None:
            fut = self.waiting[k] = asyncio.get_running_loop().create_future()
        try:
            self.r.flush_local()  # our write is journaled: published by the writer
            if fut.done():
                return bool(fut.result())
            held = self.r.local_holder(scope, key)
            if held is None or held[0] != pid:
                return False  # removed meanwhile (a conflict, an unregister)
            if (self.node, pid) in self.claims.get((scope, key), {}):
                self._sync_name(scope, key)  # etcd already shows it: decide now
                if not fut.done():
                    return self._winner(scope, key) == (self.node, pid)
            try:
                return bool(await asyncio.wait_for(asyncio.shield(fut), timeout))
            except asyncio.TimeoutError:
                return None
        finally:
            if self.waiting.get(k) is fut:
                del self.waiting[k]

    # ------------------------------------------------------------ messages

    def relay(self, dest: str, target: list, data: bytes) -> None:
        # over the relay's TCP exchange only, whose MAC covers a nonce the receiver picks per
        # connection: a recorded message is refused, by the receiver's next life too. The UDP mode
        # names the receiver's incarnation in a relayed datagram because a datagram has no such nonce.
        info = self.nodes_.get(dest)
        if info is None or not info.ready:
            return  # unknown or down: like a send to a dead process
        self.stats["relayed"] += 1
        body = msgpack.packb(["msg", target, data])
        asyncio.get_running_loop().create_task(self._push(info, body))

    async def _push(self, info: _Node, body: bytes) -> None:
        try:
            await _tcp.request(info.host, info.port, self.relay_key, body, answer=False, timeout=5)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            log.info("etcd: could not reach %s:%d over TCP", info.host, info.port)

    async def _serve_relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.relay_key:
            writer.close()
            return
        await self.relay_server.serve(reader, writer)

    async def _on_request(self, body: bytes) -> bytes | None:
        msg = msgpack.unpackb(body, raw=False)
        if msg[0] == "msg":
            self.r.deliver(msg[1], msg[2])
        return None

    def notify_conflict(self, *args: Any) -> None:
        """Every node sees every registration in etcd and decides alike: nothing to tell."""

    def nodes(self, scope: str) -> list[str]:
        return sorted(n for n, i in self.nodes_.items() if i.ready and scope in i.scopes)

    def status(self) -> dict[str, Any]:
        return {"transport": "etcd", "nodes": sorted(n for n, i in self.nodes_.items() if i.ready),
                "endpoint": self.o.endpoints[self._ep % len(self.o.endpoints)], "lease": self.lease,
                "revision": self.rev, "attached": self._up.is_set(), "incarnation": self.incarnation,
                "pending": len(self.pending), **self.stats}


async def _bounded(coro: Any, timeout: float) -> Any:
    """coro's result, or asyncio.TimeoutError after `timeout` s, or ConnectionError if the call was
    cancelled without us (its channel closed by a failover). Unlike asyncio.wait_for, the time
    out does not wait for the call to finish cancelling: a gRPC call to an endpoint in a black hole
    (a partition) may take that long too, and the keepalive must notice the lease is lost."""
    task = asyncio.ensure_future(coro)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        task.cancel()
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved: no warning
        raise asyncio.TimeoutError()
    if task.cancelled():
        # Not our cancellation (we were not cancelled, nor timed out): grpc.aio cancels a call whose
        # channel another task closed in a failover. A failed call, to retry; re-raised as
        # CancelledError it would end the caller's loop for good, silently (the writer, its
        # pending changes never sent).
        raise ConnectionError("etcd call cancelled: its channel was closed")
    return task.result()


async def _close(c: Any) -> None:
    """Close a client, bounded, whatever it says (it may be half-open, or its endpoint gone)."""
    try:
        await _bounded(c.close(), 1)
    except Exception:
        pass


class _Detached(Exception):
    """Our lease is gone: attach again (new lease, publish, read everything)."""


def _is_compacted(e: BaseException) -> bool:
    try:
        from aetcd.exceptions import RevisionCompactedError
    except ImportError:
        return False
    return isinstance(e, RevisionCompactedError)


def _reaching_address(endpoint: str) -> str:
    """The local address this host uses to reach etcd (what peers are told to reach us at)."""
    host, port, _ = _hostport(endpoint)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((socket.gethostbyname(host), port))  # no packet: only picks the route
            return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"
