"""The per-node manager: owns the scopes' segments, watches local processes, serves the CLI.

One asyncio loop. Clients write the tables themselves; the manager follows each
table's journal to learn of new local processes, watches them, and purges a dead
one's names and memberships (reason process_exit). A restarted manager rescans the
tables: the living are watched again, the dead purged (reason manager_restart).
"""
from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import resource
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any

from . import _config, _control, _procinfo
from ._handlers import CallbackRunner
from ._replication import Replica, Transport, TransportOptions
from ._health import Incidents, Supervised
from .events import to_event
from ._segment_build import SEGMENT_CHECK, build_segment
from ._table import (ALL_NODES, BY_NODE, R_MANAGER_RESTART, R_PROCESS_EXIT, FLAG_STRICT, AnnounceReader, SegmentLayoutError,
                     SegmentOwnerError, Table, TableError, JournalReader)
from ._watch import make_watcher

log = logging.getLogger("syn_mp.manager")

SAFETY_TICK = 1.0  # seconds: rescan journals even if a wake datagram was lost
PURGE_LOCK_WAIT = 0.05  # seconds a purge waits for a table's lock before it is put off
SWEEP_EVERY = 30  # safety ticks between sweeps of dead processes' mailbox files
# seconds of quiet before the manager sleeps (and writes must wake it). With peers or event handlers,
# short: the first write after a pause then wakes the manager at once (one datagram), where an awake
# manager would see it at its next poll, up to POLL_AWAKE later, on the change's way to the other
# nodes; a burst keeps it awake. A lean manager (only new processes to watch) sleeps less often.
STAY_AWAKE = 0.002
STAY_AWAKE_LEAN = 0.05
POLL_AWAKE = 0.001  # while awake, how often the journals are looked at
DRAIN_BUDGET = 4096  # journal records handled before the loop lets other work run (heartbeats: a few ms)
_WATCHED_KINDS = {"registered", "registry_updated", "joined", "group_updated"}


class AlreadyRunning(Exception):
    """Another manager holds this runtime dir."""


@dataclass
class Options:
    rdir: str
    node: str
    strict: bool = False
    watcher: str = "auto"
    capacity: int = _config.DEFAULT_CAPACITY
    heap_per_entry: int = _config.DEFAULT_HEAP_PER_ENTRY
    journal: int = _config.DEFAULT_JOURNAL
    mode: int = 0o600
    event_handler: Any = None  # an object with Syn's callbacks (see _handlers)
    cluster: TransportOptions | None = None  # a replication transport's options (_cluster.ClusterOptions), or None
    handler_timeout: float = 5.0
    metrics: tuple[str, int] | None = None  # serve Prometheus metrics on (host, port) (see _metrics)


class Manager:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.paths = _config.Paths(opts.rdir)
        self.tables: dict[str, Table] = {}
        # scopes this manager could not open or rebuild (another user holds the segment's name), and
        # why: refused alone, every other scope is served; `status` lists them
        self.refused: dict[str, str] = {}
        self.readers: dict[str, JournalReader | AnnounceReader] = {}
        self.started = time.time()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._lockfd = -1
        self.purged = {"process_exit": 0, "manager_restart": 0}
        self.cluster: Transport | None = None  # the replication transport (see _replication)
        self.replica: Replica | None = None
        self.callbacks = CallbackRunner(opts.event_handler, opts.handler_timeout) if opts.event_handler else None
        # no event handler and no peers: nothing needs every journal record, only the processes to
        # watch, which the announce ring gives (see _drain)
        self._lean = opts.event_handler is None and opts.cluster is None
        self.incidents = Incidents(log)
        # identities whose watch or purge raised: tried again every SAFETY_TICK, so none is lost
        self._retry: dict[tuple[int, int], int] = {}  # (pid, start) -> reason
        self._faults = _test_faults()
        self.metrics: Any = None

    # ------------------------------------------------------------ start / stop

    def _take_lock(self) -> None:
        _config.ensure_runtime_dir(self.opts.rdir)
        self._lockfd = _config.create_file(self.paths.manager_lock, os.O_RDWR)
        try:
            fcntl.flock(self._lockfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lockfd)
            raise AlreadyRunning(f"a manager already runs for {self.opts.rdir}") from None
        os.set_inheritable(self._lockfd, False)

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """asyncio's own errors: a failed accept for want of descriptors (asyncio then pauses that
        server for a second) is an incident, logged once, not a traceback per attempt."""
        err = context.get("exception")
        if isinstance(err, OSError) and "accept" in str(context.get("message", "")):
            self.incidents.report("accept paused, out of descriptors", err, logging.WARNING)
            return
        loop.default_exception_handler(context)

    async def run(self) -> None:
        self._take_lock()
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(self._loop_exception)
        _raise_fd_limit()
        if self.opts.metrics is not None:  # first: a taken address ends the start before anything is set up
            from ._metrics import MetricsServer
            self.metrics = MetricsServer(*self.opts.metrics, self._metrics_status)
        self.watcher = make_watcher(self.opts.watcher, loop, self._on_exit, self.incidents)
        for scope in self._known_scopes():
            try:
                self._open_scope(scope, restart=True)
            except Exception as e:  # one bad segment must not keep the other scopes unwatched
                self._refuse(scope, f"{type(e).__name__}: {e}")
        self._write_state()
        for p in (self.paths.ctl, self.paths.wake, self.paths.relay):
            _unlink(p)  # stale sockets of a dead manager: we hold the lock, nobody else uses them
        if self.opts.cluster is not None:
            self.replica = Replica(self.opts.node, self.opts.rdir, self.tables, self._drain, self.callbacks,
                                   self.opts.cluster.conflict_signal)
            self.cluster = self.opts.cluster.make(self.replica)
            await self.cluster.start()
        wake = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        wake.bind(self.paths.wake)
        os.chmod(self.paths.wake, 0o600)
        wake.setblocking(False)
        loop.add_reader(wake.fileno(), self._on_wake_datagram, wake)
        relay = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        relay.bind(self.paths.relay)
        os.chmod(self.paths.relay, 0o600)
        relay.setblocking(False)
        loop.add_reader(relay.fileno(), self._on_relay_datagram, relay)
        # the control socket last: once it answers, the manager is fully up
        server = await asyncio.start_unix_server(self._serve, path=self.paths.ctl)
        os.chmod(self.paths.ctl, 0o600)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        log.info("manager of node %r up: pid %d, runtime dir %s, watcher %s, scopes %s",
                 self.opts.node, os.getpid(), self.opts.rdir, self.watcher.kind, sorted(self.tables))
        # supervised: a loop that ends is logged, restarted, and reported by `syn-mp status`
        self.pump = Supervised("journal pump", self._pump, self.incidents)
        self.ticker = Supervised("safety tick", self._tick, self.incidents)
        self.checker = Supervised("segment check", self._check_segments, self.incidents)
        for loop_ in (self.pump, self.ticker, self.checker):
            loop_.start()
        self._wake.set()
        try:
            await self._stop.wait()
        finally:
            for loop_ in (self.pump, self.ticker, self.checker):
                loop_.close()
            server.close()
            loop.remove_reader(wake.fileno())
            wake.close()
            loop.remove_reader(relay.fileno())
            relay.close()
            if self.cluster:
                self.cluster.close()
            for p in (self.paths.ctl, self.paths.wake, self.paths.relay):
                _unlink(p)
            self.watcher.close()
            if self.metrics is not None:
                self.metrics.close()
            os.close(self._lockfd)
            log.info("manager of node %r stopped; registrations stay in shared memory", self.opts.node)

    def _known_scopes(self) -> list[str]:
        try:
            with open(self.paths.state, encoding="utf-8") as f:
                state = json.load(f)
            return list(state.get("scopes", [])) + list(state.get("refused", []))
        except (OSError, ValueError, TypeError, AttributeError):
            return []

    def _write_state(self) -> None:
        # refused scopes are kept apart: not usable (node_scopes() does not list them), tried again
        # by the next manager
        state = {"node": self.opts.node, "pid": os.getpid(), "scopes": sorted(self.tables),
                 "refused": sorted(set(self.refused) - set(self.tables)), "strict": self.opts.strict}
        tmp = self.paths.state + ".tmp"
        fd = _config.create_file(tmp, os.O_WRONLY | os.O_TRUNC)
        os.fchmod(fd, 0o600)  # whatever the umask, or the mode of a leftover tmp file
        with open(fd, "w", encoding="utf-8") as f:
            json.dump(state, f)
        os.replace(tmp, self.paths.state)  # atomic: readers see the old or the new file

    # ------------------------------------------------------------------ scopes

    def _open_scope(self, scope: str, restart: bool = False) -> Table:
        """The scope's table: attached, created, or rebuilt when its segment is of another layout
        version or half-created. TableError (and the scope refused, alone) when another user holds
        the segment's name."""
        t = self.tables.get(scope)
        if t is not None:
            if t.moved():  # removed under us and not noticed yet: a client waits for the rebuild
                self._rebuild(scope)
            return self.tables[scope]
        name = _config.segment_name(self.opts.rdir, scope)
        try:
            t = Table.attach(name)
        except SegmentOwnerError as e:
            self._refuse(scope, str(e))
            raise
        except SegmentLayoutError as e:
            # an upgrade (another layout version) or a crash (half-created): what it holds can't be
            # read; the processes of this version that hold entries there put them back (_segments)
            log.warning("scope %r: %s: rebuilding it; the living processes put their entries back", scope, e)
            t = None
        try:
            if t is None:
                t = self._build(scope, None)
                log.info("scope %r created: segment %s, capacity %d", scope, name, self.opts.capacity)
        except TableError as e:
            self._refuse(scope, str(e))
            raise
        if t.node_name(0) != self.opts.node:
            log.warning("scope %r was created by node %r; this manager is %r", scope, t.node_name(0),
                        self.opts.node)
        if t.retired():  # we died between retiring it and publishing its replacement: it is the truth
            t.retire(False)
        self.refused.pop(scope, None)
        self._serve_table(scope, t, R_MANAGER_RESTART if restart else R_PROCESS_EXIT)
        return t

    def _serve_table(self, scope: str, t: Table, reason: int) -> None:
        flags = t.flags
        want = (flags | FLAG_STRICT) if self.opts.strict else (flags & ~FLAG_STRICT)
        if want != flags:
            t.set_flags(want)
        self.tables[scope] = t
        if self._lean:
            self.readers[scope] = t.announced()  # from now: older processes are found by the scan
        else:
            # from now: older changes are covered by the scan. Without event handlers only our own
            # node's records matter (the peers' changes applied here are passed over in C: a
            # snapshot of 100,000 entries writes as many records)
            self.readers[scope] = t.journal(node=ALL_NODES if self.callbacks else 0)
        self._scan(scope, reason)

    def _build(self, scope: str, old: Table | None) -> Table:
        o = self.opts
        return build_segment(_config.segment_name(o.rdir, scope), o.node, o.capacity,
                             max(1 << 20, o.capacity * o.heap_per_entry), o.journal, o.mode, old,
                             before_copy=lambda: self._drain_scope(scope))

    def _refuse(self, scope: str, why: str) -> None:
        if self.refused.get(scope) != why:
            log.error("scope %r refused, its processes are not watched (the node serves its other "
                      "scopes): %s", scope, why)
        self.refused[scope] = why

    def _rebuild(self, scope: str) -> None:
        """The scope's segment was removed or replaced under us: a new one, with everything the old
        one holds (we still map it), published under the name; the old one retired, so the clients
        that still map it move over (their writes there fail with ERETIRED, see _segments)."""
        old = self.tables[scope]
        try:
            t = self._build(scope, old)
        except TableError as e:
            self._refuse(scope, f"{e}; still serving the segment it replaced")  # clients keep the old one
            return
        log.warning("scope %r: segment %s was removed or replaced under the running node: rebuilt it "
                    "with its %d entries", scope, t.name, t.stats()["count"])
        self.refused.pop(scope, None)
        self._serve_table(scope, t, R_PROCESS_EXIT)
        if self.cluster is not None:
            self.cluster.resync(scope)  # peers refetch what we hold, in case a change slipped by
        self._write_state()
        self._wake.set()

    def _drain_scope(self, scope: str) -> None:
        """Every journal (or announce) record of the scope's table handled: called once the table is
        retired, before it is copied, so nothing written to it goes unwatched or unbroadcast."""
        reader = self.readers.get(scope)
        while reader is not None:
            if isinstance(reader, AnnounceReader):
                n = self._follow_announced(scope, reader)
            else:
                n = self._follow_journal(scope, reader, 4096)
            if not n:
                return
            reader = self.readers.get(scope)

    async def _check_segments(self) -> None:
        """Every SEGMENT_CHECK: is each scope's name still the segment we map (RemoveIPC=yes, an rm in
        /dev/shm)? A refused scope is tried again, in case its squatter went."""
        while True:
            await asyncio.sleep(SEGMENT_CHECK)
            for scope in list(self.tables):
                try:
                    if self.tables[scope].moved():
                        self._rebuild(scope)
                except Exception:  # nothing here may stop the manager
                    log.exception("scope %r: checking its segment failed", scope)
            for scope in [s for s in self.refused if s not in self.tables]:
                try:
                    self._open_scope(scope, restart=True)
                except Exception:
                    continue  # still refused (logged once)
                log.info("scope %r: no longer refused", scope)
                self._write_state()

    def _scan(self, scope: str, reason: int) -> None:
        """Watch every live local process of the table; purge the dead."""
        t = self.tables[scope]
        seen: set[tuple[int, int]] = set()
        for item in t.collect(BY_NODE, 0, node=0, flags=0):
            seen.add((item.pid, item.start))
        for pid, start in seen:
            self._ensure_watched(pid, start, reason)

    def _ensure_watched(self, pid: int, start: int, reason: int = R_PROCESS_EXIT) -> None:
        """Watch the identity (pid, start), or purge it if it is provably dead. The watcher decides
        by the pid's current start time, never by the order identities arrive in: an older identity
        arriving after a newer one is purged alone (purge_pid filters by start), and the live one
        stays watched; if the pid now names `start`, the identity watched before is the dead one."""
        try:
            if not self.watcher.watch(pid, start):
                self._purge(pid, start, reason)
        except Exception as e:  # isolated: this identity is retried on the next tick, the rest go on
            self.incidents.report("watch", e)
            self._retry[(pid, start)] = reason

    def _on_exit(self, pid: int, start: int) -> None:
        self._purge(pid, start, R_PROCESS_EXIT)

    def _retry_failed(self) -> None:
        retry, self._retry = self._retry, {}
        for (pid, start), reason in retry.items():
            self._ensure_watched(pid, start, reason)

    def _purge(self, pid: int, start: int, reason: int) -> None:
        """Remove the entries of the dead process (pid, start) from every table; a table that fails
        is reported and the whole identity tried again on the next tick (purging twice is harmless)."""
        n = 0
        failed = False
        for scope, t in list(self.tables.items()):
            try:
                # a writer stopped mid-write holds the lock: don't stall the loop behind it (status
                # must answer, other scopes be served); the purge is tried again next tick
                rc = t.purge_pid(0, pid, start, reason, wait=PURGE_LOCK_WAIT)
                if rc < 0:
                    raise TableError(f"purge_pid returned {rc}")
                n += rc
            except Exception as e:
                self.incidents.report(f"purge in scope {scope!r}", e)
                failed = True
        if failed:
            # a live process never gets here (only dead identities are purged); once the retry's
            # watch() finds it dead again, the purge is repeated
            self._retry[(pid, start)] = reason
        _unlink(self.paths.mailbox(pid, start))  # a killed process could not unlink its own
        key = "manager_restart" if reason == R_MANAGER_RESTART else "process_exit"
        self.purged[key] += n
        if n:
            # the purge is journaled like any write, and a sleeping manager would only drain it at
            # the next SAFETY_TICK: wake now, so peers and event handlers learn of the death at once
            self._wake.set()
            log.debug("pid %d gone (%s): %d entries removed", pid, key, n)

    # ----------------------------------------------------------------- journal

    def _on_wake_datagram(self, sock: socket.socket) -> None:
        try:
            while sock.recv(64):
                pass
        except BlockingIOError:
            pass
        # a write found us asleep: what it wrote is handled here and now, not a loop turn later in the
        # pump (a peer's latency, an event handler's); then the pump stays awake a while, so that the
        # writes that follow cost their writers no system call
        try:
            self._drain()
        except Exception as e:  # what was read is lost to the pump too: say so (once; counted after)
            self.incidents.report("journal drain on wake", e)
        self._wake.set()

    def _on_relay_datagram(self, sock: socket.socket) -> None:
        """A client's message for a process on another node: [node, target, data]."""
        import msgpack
        while True:
            try:
                data = sock.recv(1 << 18)
            except BlockingIOError:
                return
            try:
                dest, target, payload = msgpack.unpackb(data, raw=False)
                if self.cluster is not None:
                    self.cluster.relay(dest, target, payload)
            except Exception:  # a malformed datagram must not escape the loop's reader callback
                continue

    def _sweep_mailboxes(self) -> None:
        """Unlink the mailbox and reply sockets (mb.<pid>.<start>, rp.<pid>.<start>.<ref>) of processes
        that died unwatched (a mailbox without a registration, a caller killed in multi_call)."""
        try:
            names = os.listdir(self.opts.rdir)
        except OSError:
            return
        for name in names:
            parts = name.split(".")
            if parts[0] not in ("mb", "rp") or len(parts) < 3 or not (parts[1].isdigit() and parts[2].isdigit()):
                continue
            pid, start = int(parts[1]), int(parts[2])
            if not self.watcher.has(pid, start) and _procinfo.start_time(pid) != start:
                _unlink(os.path.join(self.opts.rdir, name))

    async def _tick(self) -> None:
        ticks = 0
        while True:
            if ticks % SWEEP_EVERY == 0:
                self._sweep_mailboxes()
            ticks += 1
            await asyncio.sleep(SAFETY_TICK)
            self._wake.set()
            if self._retry:
                self._retry_failed()
            if self.callbacks:
                self.callbacks.check_hung()
            self.ticker.ok()

    async def _pump(self) -> None:
        """Follow the journals. Awake (flag clear), writers never make a system call for us; after
        STAY_AWAKE of quiet the manager sleeps and the next write wakes it with one datagram."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            for t in self.tables.values():
                t.set_sleeping(False)
            quiet_since = loop_time = asyncio.get_running_loop().time()
            while loop_time - quiet_since < (STAY_AWAKE_LEAN if self._lean else STAY_AWAKE):
                if self._faults.get("pump"):
                    self._faults["pump"] -= 1
                    raise RuntimeError("injected fault (SYN_MP_TEST_FAULT)")
                n = self._drain()
                self.pump.ok()
                if n:
                    quiet_since = asyncio.get_running_loop().time()
                # a full budget: more is waiting; else poll again shortly (pidfds and the socket run meanwhile)
                await asyncio.sleep(0 if n >= DRAIN_BUDGET else POLL_AWAKE)
                loop_time = asyncio.get_running_loop().time()
            for t in self.tables.values():
                t.set_sleeping(True)  # then look again: a write between drain and flag is not lost
            if any(r.pending() for r in self.readers.values()):
                self._wake.set()

    def _drain(self, budget: int = DRAIN_BUDGET) -> int:
        """Follow every journal, up to `budget` records; returns how many were handled. Without
        event handlers and peers, which need every record, only the announce ring is followed:
        the processes to watch, each announced once, so the manager's work no longer follows
        every write (csrc/table.c, "the announce ring")."""
        left = budget
        for scope, reader in list(self.readers.items()):
            while left > 0:
                if isinstance(reader, AnnounceReader):
                    n = self._follow_announced(scope, reader)
                else:
                    n = self._follow_journal(scope, reader, min(left, 4096))
                if not n:
                    break
                left -= n
        if left < budget and self.replica is not None:
            self.replica.local_batch_done()  # the changes handed to the transport go out now
        return budget - left

    def _follow_journal(self, scope: str, reader: JournalReader, most: int) -> int:
        """Records handled, each one in full; after an overrun, the table is read again."""
        recs = reader.read(most)
        if recs is None:
            log.warning("scope %r: journal overrun, rescanning the table", scope)
            self._scan(scope, R_PROCESS_EXIT)
            if self.cluster is not None:
                self.cluster.resync(scope)  # changes we never broadcast: peers refetch
            return 1
        for r in recs:
            self._on_record(scope, r)
        return len(recs)

    def _follow_announced(self, scope: str, reader: AnnounceReader) -> int:
        """Processes announced and now watched; after an overrun, the ring starts over and the
        table is read again."""
        pairs = reader.read()
        if pairs is None:
            log.warning("scope %r: announce ring overrun, rescanning the table", scope)
            self.readers[scope] = self.tables[scope].announced()
            self._scan(scope, R_PROCESS_EXIT)
            return 1
        for pid, start in pairs:
            self._ensure_watched(pid, start)
        return len(pairs)

    def _on_record(self, scope: str, r: Any) -> None:
        if self.callbacks:
            try:
                e = to_event(scope, self.tables[scope], r)
            except Exception:  # an undecodable record must not stop the manager
                log.exception("scope %r: journal record %d undecodable", scope, r.seq)
            else:
                self.callbacks.submit(e.kind, (scope, e.key, e.pid, e.meta, e.reason))
        if r.node != 0:
            return
        if self.replica is not None:
            self.replica.on_local_record(scope, r)
        if r.kind in _WATCHED_KINDS:
            # watched until it dies, even once it holds nothing: one fd per process, and no walk of
            # its entries after every unregister (which made the manager's work grow with them)
            self._ensure_watched(r.pid, r.start)

    # ------------------------------------------------------------ control socket

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            # ctl.sock is 0600 in a 0700 dir; should another user reach it anyway (a dir opened up),
            # it gets no answer: only our user and root may drive the manager
            uid = _control.peer_uid(writer.get_extra_info("socket"))
            if uid not in (os.geteuid(), 0):
                log.warning("control connection from uid %d refused", uid)
                return
            try:
                line = await reader.readline()  # ValueError: a line over the reader's limit
                req = json.loads(line)
                if not isinstance(req, dict):
                    raise ValueError("a request is a JSON object")
                reply = await self._confirm(req) if req.get("op") in ("expect", "confirm") else self._handle(req)
            except (ValueError, TypeError, KeyError, RecursionError) as e:  # RecursionError: JSON nested too deep
                reply = {"ok": False, "error": f"bad request: {e}"}
            except TableError as e:
                reply = {"ok": False, "error": str(e)}
            writer.write(_control.encode_line(reply))
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    def _handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req["op"]
        if op == "ping":
            return {"ok": True, "node": self.opts.node, "pid": os.getpid()}
        if op == "add_scopes":
            errors = []
            for s in req["scopes"]:
                try:
                    self._open_scope(_config.check_scope(s))
                except TableError as e:  # refused alone: the others are added
                    errors.append(f"scope {s!r}: {e}")
            self._write_state()
            self._wake.set()
            if errors:
                return {"ok": False, "error": "; ".join(errors), "scopes": sorted(self.tables)}
            return {"ok": True, "scopes": sorted(self.tables)}
        if op == "scopes":
            return {"ok": True, "scopes": sorted(self.tables)}
        if op == "status":
            return {"ok": True, "node": self.opts.node, "pid": os.getpid(), "runtime_dir": self.opts.rdir,
                    "uptime": round(time.time() - self.started, 3), "watcher": self.watcher.kind,
                    "watched": len(self.watcher), "watch": self.watcher.stats(), "health": self.health(),
                    "strict": self.opts.strict, "purged": dict(self.purged),
                    "cluster": None if not self.cluster else self.cluster.status(),
                    "propagation": None if self.replica is None else self.replica.lag.status(),
                    "callbacks": None if not self.callbacks else {"failed": self.callbacks.failures,
                                                                  "hung": self.callbacks.hangs},
                    "scopes": {s: t.stats() for s, t in sorted(self.tables.items())},
                    "refused": dict(sorted(self.refused.items()))}
        if op == "nodes":
            scope = _config.check_scope(req["scope"])
            return {"ok": True, "nodes": self.cluster.nodes(scope) if self.cluster else []}
        if op == "stop":
            asyncio.get_running_loop().call_soon(self._stop.set)
            return {"ok": True, "pid": os.getpid()}
        return {"ok": False, "error": f"unknown op {op!r}"}


    async def _confirm(self, req: dict[str, Any]) -> dict[str, Any]:
        """register(..., confirm=T): `expect` before the local write (so a lost race is not signalled),
        `confirm` after it waits for the cluster's decision. Only a transport that orders writes
        (etcd) decides at once; a node without a cluster is its own decision."""
        scope = _config.check_scope(req["scope"])
        key, pid = bytes.fromhex(req["key"]), int(req["pid"])
        c = self.cluster
        if c is None:
            return {"ok": True, "mode": "local", "result": "held"}
        expect, confirm = getattr(c, "expect", None), getattr(c, "confirm", None)  # etcd's only
        if expect is None or confirm is None:
            return {"ok": True, "mode": "unsupported"}
        if req["op"] == "expect":
            expect(scope, key, pid, float(req["wait"]))
            return {"ok": True, "mode": "etcd"}
        got = await confirm(scope, key, pid, float(req["wait"]))
        return {"ok": True, "mode": "etcd", "result": {True: "held", False: "lost", None: "timeout"}[got]}

    def _metrics_status(self) -> dict[str, Any]:
        return {**self._handle({"op": "status"}), "started": self.started}

    def health(self) -> dict[str, Any]:
        """Whether the manager does its job; `problems` (one line each) make `syn-mp status` fail."""
        problems = [f"scope {s!r} could not be opened: {e}" for s, e in sorted(self.refused.items())]
        loops = {}
        for sup in (self.pump, self.ticker, self.watcher.poller):
            loops[sup.name] = {"failing": sup.failing, "restarts": sup.restarts}
            if sup.failing:
                last = self.incidents.summary().get(f"{sup.name} loop stopped and restarted", {}).get("last", "")
                problems.append(f"the {sup.name} loop is failing ({sup.restarts} restarts): {last}")
        if self._retry:
            problems.append(f"{len(self._retry)} processes could not be watched or purged yet")
        return {"ok": not problems, "problems": problems, "loops": loops, "refused": dict(self.refused),
                "incidents": self.incidents.summary()}


def _test_faults() -> dict[str, int]:
    """SYN_MP_TEST_FAULT=pump[:N] (tests only): the journal pump raises, N times or always, so that
    the supervision and the health report can be checked on a real manager."""
    spec = os.environ.get("SYN_MP_TEST_FAULT", "")
    out: dict[str, int] = {}
    for part in filter(None, spec.split(",")):
        what, _, n = part.partition(":")
        out[what] = int(n) if n.isdigit() else 1 << 62
    return out


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _raise_fd_limit() -> None:
    """One pidfd per watched process: take the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def serve(opts: Options) -> None:
    asyncio.run(_serve(opts))


async def _serve(opts: Options) -> None:
    # the Manager is made inside the running loop: on Python 3.9 an asyncio.Event made before
    # asyncio.run binds to another loop, and the first wait on it raises
    await Manager(opts).run()
