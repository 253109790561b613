"""Process groups: many processes per group, one meta per member (Syn's syn_pg)."""
from __future__ import annotations

import time
from typing import Any, Callable

from . import _pids, _procinfo
from ._table import (ALL_NODES, BY_KEY, BY_NODE, BY_PID, EFULL, EMISMATCH, ENOSELF, ENOTFOUND, ENOTPLAIN, ERETIRED,
                     ETOOBIG, F_EXPECT_VER, PG, WAKE, WITH_KEY, Table)
from ._table import delete_local as _delete_local
from ._table import put_local as _put_local
from ._table import put_self as _put_self
from ._types import Pid
from .codec import decode, decode_name, encode_meta, encode_name
from .errors import CapacityError, NotInGroupError, RemotePidError, UndefinedError
from ._client import table_of as _table
from ._client import wake_if_asleep as _after_write
from ._client import wake_manager as _wake
from ._readonly import freeze
from .registry import _META_NONE, _become_self, _copier, _packed_meta


def join(scope: str, group: Any, pid: _pids.PidArg = None, meta: Any = None) -> None:
    """Add a process (the caller by default) to `group`; joining again with other meta updates it."""
    t = _table(scope)
    key = encode_name(group)
    if pid is None:  # the caller itself: C knows it, and checks the meta's bytes (registry.register)
        p, start = _procinfo.self_identity()  # the ledger's
        m = _META_NONE if meta is None else _packed_meta(meta)
        own = True
    else:
        p, start = _pids.for_write(t, pid)
        m = _META_NONE if meta is None else encode_meta(meta)
        own = False
    while True:
        if own:
            rc = _put_self(t.ptr, PG, key, len(key), m, len(m))
        else:
            rc = _put_local(t.ptr, PG, key, len(key), p, start, m, len(m))
        if rc >= 0:
            break
        if rc == ENOSELF:
            _become_self()  # opens the mailbox first: a member can always be sent to
            continue
        if rc == ENOTPLAIN:  # the walk normalises it or refuses it (C knew the caller: its mailbox is open)
            m = encode_meta(meta)
            own = False
            continue
        if rc == ERETIRED and t.renew():  # the segment was replaced: t now maps the new one
            continue
        if rc == EFULL:
            raise CapacityError(f"scope {scope!r} is full")
        if rc == ETOOBIG:
            encode_meta(meta)  # raises EncodingError for a meta over MAX_META
        raise RuntimeError(f"join: table error {rc}")
    t.own_pg[(key, p)] = (start, m)  # the ledger: put back if the segment is rebuilt (_segments)
    if rc & WAKE:
        _wake()


def leave(scope: str, group: Any, pid: _pids.PidArg = None) -> None:
    t = _table(scope)
    key = encode_name(group)
    if pid is None:
        p = _procinfo.self_identity()[0]
    else:
        nid, p = _pids.for_read(t, pid)
        if nid != 0:
            raise RemotePidError(f"{pid} belongs to another node: leave on its own node")
        _pids.check_self(t, p)
    rc = _delete_local(t.ptr, PG, key, len(key), p, 0)
    while rc == ERETIRED and t.renew():
        rc = _delete_local(t.ptr, PG, key, len(key), p, 0)
    t.own_pg.pop((key, p), None)
    if rc < 0:
        if rc == ENOTFOUND:
            raise NotInGroupError(f"pid {p} is not a member of {group!r} in scope {scope!r}")
        raise RuntimeError(f"leave: table error {rc}")
    if rc & WAKE:
        _wake()


_new_pid = tuple.__new__  # Pid without NamedTuple's Python-level __new__ (listings build many)
_CACHE_MAX = 4096  # groups a process keeps the members of (see _members)


def _members(t: Table, key: bytes, node: int) -> list[tuple[Pid, Any]]:
    """members() and local_members(): cached while the table's seqlock word is unchanged, since a
    group has no single word that says it changed (lookup's cache checks the entry's own)."""
    words, sw = t.words, t.seq_word
    ck = (key, node)
    hit = t.members_cache.get(ck)
    if hit is not None and words[sw] == hit[0]:
        pairs, fresh = hit[1], hit[2]
        return list(pairs) if fresh is None else [(p, f()) for p, f in fresh]
    s0 = words[sw]
    rows = decode(t.collect_packed(BY_KEY, PG, key, node))
    names = t.node_names()  # after the read: it covers every node id the rows hold
    pairs = [(_new_pid(Pid, (names[nd], p)), m) for nd, p, m in rows]
    pairs.sort()  # by Pid: a group holds a Pid once, so the metas are never compared
    if s0 & 1 or t.words is not words or words[sw] != s0:
        return pairs  # the table moved (or was rebound, _segments) during the read: not cacheable at s0
    cache = t.members_cache
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    shared = []
    for pid, m in pairs:
        ok, fm = freeze(m)
        if not ok:
            break
        shared.append((pid, fm))
    else:  # all immutable (dict metas made read-only, _readonly): every caller shares them
        cache[ck] = (s0, tuple(shared), None)
        return shared
    fresh = [(pid, _copier(m)) for pid, m in pairs]
    if not all(f for _, f in fresh):
        return pairs  # a nested mutable meta: a copy would cost a decode, so the next call reads again
    cache[ck] = (s0, None, fresh)  # the metas stay the cache's own: callers get copies
    return [(p, f()) for p, f in fresh]


def members(scope: str, group: Any) -> list[tuple[Pid, Any]]:
    """(Pid, meta) of every member, on every node, sorted by Pid."""
    return _members(_table(scope), encode_name(group), ALL_NODES)


def local_members(scope: str, group: Any) -> list[tuple[Pid, Any]]:
    return _members(_table(scope), encode_name(group), 0)


def member(scope: str, group: Any, pid: _pids.PidArg) -> tuple[Pid, Any] | None:
    t = _table(scope)
    key = encode_name(group)
    nid, p = _pids.for_read(t, pid)
    if nid is None:
        return None
    e = t.get(PG, key, nid, p)
    return None if e is None else (Pid(t.node_name(e.node), e.pid), decode(e.meta))


def is_member(scope: str, group: Any, pid: _pids.PidArg) -> bool:
    t = _table(scope)
    key = encode_name(group)
    nid, p = _pids.for_read(t, pid)
    return nid is not None and t.get(PG, key, nid, p) is not None


def is_local_member(scope: str, group: Any, pid: _pids.PidArg) -> bool:
    t = _table(scope)
    key = encode_name(group)
    nid, p = _pids.for_read(t, pid)
    return nid == 0 and t.get(PG, key, 0, p) is not None


def update_member(scope: str, group: Any, pid: _pids.PidArg, fn: Callable[[Any], Any]) -> tuple[Pid, Any]:
    """Set a member's meta to fn(meta); retried if another write changes it meanwhile."""
    t = _table(scope)
    key = encode_name(group)
    nid, p = _pids.for_read(t, pid)
    while True:
        e = None if nid is None else t.get(PG, key, nid, p)
        if e is None:
            raise UndefinedError(f"pid {p} is not a member of {group!r} in scope {scope!r}")
        who = Pid(t.node_name(e.node), e.pid)
        if e.node != 0:
            raise RemotePidError(f"{who} belongs to another node: update it there")
        _pids.check_self(t, p)
        new_meta = fn(decode(e.meta))
        m = encode_meta(new_meta)
        rc, info = t.put(PG, key, 0, p, e.start, time.time_ns(), m, F_EXPECT_VER, e.ver)
        if rc >= 0:
            if (key, p) in t.own_pg:
                t.own_pg[(key, p)] = (e.start, m)
            _after_write(info)
            return who, new_meta
        if rc == EFULL:
            raise CapacityError(f"scope {scope!r} is full")
        if rc not in (EMISMATCH, ENOTFOUND):
            raise RuntimeError(f"update_member: table error {rc}")
        # changed under us: read again


def member_count(scope: str, group: Any, node: str | None = None) -> int:
    t = _table(scope)
    nid = _pids.node_filter(t, node)
    return 0 if nid is None else t.count(BY_KEY, PG, encode_name(group), node=nid)


def local_member_count(scope: str, group: Any) -> int:
    t = _table(scope)
    return t.count(BY_KEY, PG, encode_name(group), node=0)


def _group_keys(t: Table, nid: int) -> list[bytes]:
    seen: dict[bytes, None] = {}
    for i in t.collect(BY_NODE, PG, node=nid, flags=WITH_KEY):
        seen[i.key] = None
    return sorted(seen)


def group_count(scope: str, node: str | None = None) -> int:
    t = _table(scope)
    nid = _pids.node_filter(t, node)
    return 0 if nid is None else len(_group_keys(t, nid))


def local_group_count(scope: str) -> int:
    return len(_group_keys(_table(scope), 0))


def group_names(scope: str, node: str | None = None) -> list[Any]:
    t = _table(scope)
    nid = _pids.node_filter(t, node)
    return [] if nid is None else [decode_name(k) for k in _group_keys(t, nid)]


def local_group_names(scope: str) -> list[Any]:
    return [decode_name(k) for k in _group_keys(_table(scope), 0)]


def groups_of(scope: str, pid: _pids.PidArg = None) -> list[Any]:
    t = _table(scope)
    nid, p = _pids.for_read(t, pid)
    if nid is None:
        return []
    return [decode_name(i.key) for i in t.collect(BY_PID, PG, node=nid, pid=p, flags=WITH_KEY)]
