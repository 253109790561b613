"""Keeping this process on its scopes' live segments.

A scope's segment can be replaced under a running process: its name removed (systemd-logind's
RemoveIPC=yes, an `rm` in /dev/shm) and the segment rebuilt by the manager, or rebuilt because the
manager found it of another layout version or half-created. A segment the manager replaces is first
marked retired (SYNT_FLAG_RETIRED: from then on every put and delete on it fails with ERETIRED), then
copied into the new one. A process notices on its next write or slow-path read, or within
CHECK_INTERVAL from a watcher thread (so an idle process notices too), and renews the table in
place: it maps the new segment (Table.rebind) and puts back its own registrations and memberships
where the new segment lacks them. It knows them from its ledger (Table.own_reg / own_pg, one dict
update per write): the only copy left of them when the manager could not read the old segment.
"""
from __future__ import annotations

import logging
import os
import threading
import time

from . import _client, _procinfo
from ._table import LIVE, PG, REG, ETAKEN, SegmentLayoutError, SegmentOwnerError, Table
from .errors import InvalidScopeError, ManagerUnavailableError

log = logging.getLogger("syn_mp.segments")

CHECK_INTERVAL = 0.5  # seconds between the watcher thread's looks at every attached table
RENEW_TIMEOUT = 5.0  # seconds a call waits for the manager to publish a segment's replacement

_lock = threading.RLock()  # one renewal at a time (the watcher thread and callers race for it)
_watcher_pid = 0  # the process whose watcher thread runs (a forked child starts its own)


def wait_for_segment(name: str, owner: int | None, timeout: float = RENEW_TIMEOUT) -> Table:
    """The usable table now named `name`, waiting while the manager rebuilds it (missing,
    half-created, of another version, or retired and not yet replaced). ManagerUnavailableError
    when none comes within `timeout`; SegmentOwnerError when another user holds the name."""
    deadline = time.monotonic() + timeout
    pause = 0.001
    while True:
        try:
            t = Table.attach(name, owner)
            why = f"segment {name} is missing"
        except SegmentLayoutError as e:
            t, why = None, str(e)
        if t is not None and t.retired():
            t, why = None, f"segment {name} is retired and not yet replaced"
        if t is not None:
            return t
        if time.monotonic() > deadline:
            raise ManagerUnavailableError(f"{why}, and no manager rebuilt it within {timeout:.0f}s "
                                          "(is the node's manager running?)")
        time.sleep(pause)
        pause = min(pause * 2, 0.02)


def renew(t: Table) -> bool:
    """Table.on_stale: if `t` is retired or its name now names another segment, rebind it to that
    segment and put this process's own entries back. True: the caller may retry on `t`."""
    with _lock:
        if not t.stale():
            return True  # another thread renewed it meanwhile
        try:
            fresh = wait_for_segment(t.name, t.owner)
        except SegmentOwnerError as e:
            raise InvalidScopeError(f"segment {t.name} was replaced by another user's: {e}") from None
        try:
            old: Table | None = t.view()  # still our layout: what it held is the truth to restore
        except SegmentLayoutError:
            old = None  # overwritten with another version or garbage: only our ledger is left
        t.rebind(fresh)
        log.info("segment %s was replaced: attached the new one, putting our entries back", t.name)
        _replay(t, old)
        return True


def _replay(t: Table, old: Table | None) -> None:
    """Put the ledger's entries that `t` lacks back into it. With the old table readable (it was
    retired, or removed while no manager ran), only what it still held for us, with its meta and
    time: what another process unregistered or updated is not brought back. Never over another
    holder (that one came later), never for a process that died."""
    now = time.time_ns()
    me = _procinfo.self_identity()
    for key, held in list(t.own_reg.items()):
        # register()'s own writes keep only their meta: they are this process's (forgotten at fork)
        if isinstance(held, bytes):
            (pid, start), meta = me, held
        else:
            pid, start, meta = held
        when = now
        if old is not None:
            e = old.get(REG, key)
            if e is None or e.node != 0 or e.pid != pid or e.start != start:
                t.own_reg.pop(key, None)  # no longer ours
                continue
            meta, when = e.meta, e.time_ns
        if _procinfo.start_time(pid) != start:
            t.own_reg.pop(key, None)
            continue
        e = t.get(REG, key)
        if e is not None:
            if (e.node, e.pid, e.start) != (0, pid, start):
                t.own_reg.pop(key, None)  # registered by another process since the rebuild
            continue
        rc, _ = t.put(REG, key, 0, pid, start, when, meta)
        if rc == ETAKEN:
            t.own_reg.pop(key, None)
        elif rc < 0:
            log.warning("segment %s: could not put a name back (%d)", t.name, rc)
    for (key, pid), (start, meta) in list(t.own_pg.items()):
        when = now
        if old is not None:
            e = old.get(PG, key, 0, pid)
            if e is None or e.start != start:
                t.own_pg.pop((key, pid), None)
                continue
            meta, when = e.meta, e.time_ns
        if _procinfo.start_time(pid) != start:
            t.own_pg.pop((key, pid), None)
            continue
        if t.get(PG, key, 0, pid) is not None:
            continue
        rc, _ = t.put(PG, key, 0, pid, start, when, meta)
        if rc < 0:
            log.warning("segment %s: could not put a membership back (%d)", t.name, rc)


def watch() -> None:
    """Start this process's watcher thread, once: it renews every attached table within
    CHECK_INTERVAL of its replacement, so a process that makes no call still gets its entries back."""
    global _watcher_pid
    if _watcher_pid == os.getpid():
        return
    _watcher_pid = os.getpid()
    threading.Thread(target=_watch_loop, name="syn_mp-segments", daemon=True).start()


def _watch_loop() -> None:
    warned: dict[str, str] = {}  # segment -> the last problem logged: each said once
    while True:
        time.sleep(CHECK_INTERVAL)
        for t in list(_client.TABLES.values()):
            try:
                if t.on_stale is not None and t.stale():
                    renew(t)
                warned.pop(t.name, None)
            except Exception as e:  # no manager rebuilt it, or another user took the name: try again later
                if warned.get(t.name) != str(e):
                    warned[t.name] = str(e)
                    log.warning("segment %s was replaced, and this process can't follow: %s", t.name, e)


def _after_fork_in_child() -> None:
    """The child is another process: the parent's ledger is not its own, the parent's lock may have
    been held by a thread the child does not have, and the watcher thread was not copied."""
    global _lock, _watcher_pid
    _lock = threading.RLock()
    _watcher_pid = 0
    for t in list(LIVE):  # the tables of nodes it moved away from too: a bare meta there means "mine"
        t.own_reg.clear()
        t.own_pg.clear()
    if _client.TABLES:
        watch()


os.register_at_fork(after_in_child=_after_fork_in_child)
