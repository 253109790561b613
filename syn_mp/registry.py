"""The registry: one process per name in a scope (Syn's syn_registry)."""
from __future__ import annotations

import functools
import time
from typing import Any, Callable

from . import _client, _pids, _procinfo
from ._client import TABLES as _TABLES
from ._client import table_of as _table
from ._client import wake_if_asleep as _after_write
from ._client import wake_manager as _wake
from .mailbox import open_mailbox
from ._table import (BY_NODE, BY_PID, EFULL, EMISMATCH, ENOSELF, ENOTFOUND, ENOTPLAIN, ERETIRED, ETAKEN, ETOOBIG,
                     F_EXPECT_VER, F_MATCH_PID, REG, R_PROCESS_EXIT, WAKE, WITH_KEY, Entry, Table)
from ._table import delete_local as _delete_local
from ._table import put_local as _put_local
from ._table import put_self as _put_self
from ._table import set_self as _set_self
from ._table import unreg_local as _unreg_local
from ._readonly import _SCALARS, freeze
from ._types import Pid
from .codec import _pack, decode, decode_name, encode_meta, encode_name
from .errors import CapacityError, RemotePidError, TakenError, UndefinedError

_META_NONE = encode_meta(None)
_self_identity = _procinfo.self_identity


def _purge_if_dead(t: Table, node: int, pid: int, start: int) -> bool:
    """A local holder that died while no manager watched it is purged by whoever trips on it."""
    if node != 0 or _procinfo.start_time(pid) == start:
        return False
    t.purge_pid(0, pid, start, R_PROCESS_EXIT)
    return True


def _become_self() -> None:
    """This process's first self write on its node (or its first since a fork or a change of node,
    which unset the identity in C): open its mailbox, before its entry is written, so that every
    registered process or member can be sent to; then give C its identity. The one place that sets
    it: a set identity means an open mailbox."""
    while True:
        mb = open_mailbox()
        _set_self(*_self_identity())
        if mb.node is _client._node:
            return
        # another thread moved the process to another node meanwhile (set_node), and its reset of
        # the identity may have come before ours: open the mailbox there, and set it again


def _packed_meta(meta: Any) -> bytes:
    """A self write's meta, for synt_put_self: packed as it is, for C to check (ENOTPLAIN: the walk)."""
    try:
        return _pack(meta)  # strict types: exact built-in types only
    except Exception:
        return encode_meta(meta)  # a subclass, a tuple, ...: normalised, or EncodingError


def register(scope: str, name: Any, pid: _pids.PidArg = None, meta: Any = None, *,
             confirm: float | None = None) -> None:
    """Register `name` to a process (the caller by default); the same name and pid again updates meta.

    confirm=seconds (a node on etcd): also wait for etcd's decision, raising TakenError if another
    node's registration came first (ours is withdrawn, the process not signalled)."""
    if confirm is not None:
        return _register_confirmed(scope, name, pid, meta, confirm)
    try:
        t = _TABLES[scope]
    except (KeyError, TypeError):
        t = _table(scope)
    try:
        key = _pack(name) if type(name) is str else encode_name(name)  # a str: encode_name's own first step
    except UnicodeEncodeError:
        key = encode_name(name)  # raises EncodingError
    if pid is None:
        # The caller itself (the hot path): its meta packed as it is, C checks that the bytes are
        # what encode_meta's walk would give (ENOTPLAIN: the walk below), and knows the caller.
        p = start = 0
        m = _META_NONE if meta is None else _packed_meta(meta)
    else:
        p, start = _pids.for_write(t, pid)
        m = _META_NONE if meta is None else encode_meta(meta)
    while True:
        if p:
            rc = _put_local(t.ptr, REG, key, len(key), p, start, m, len(m))
        else:
            rc = _put_self(t.ptr, REG, key, len(key), m, len(m))
        if rc >= 0:
            # the ledger: put back if the segment is rebuilt (_segments); a bare meta is the caller's
            t.own_reg[key] = (p, start, m) if p else m
            if rc & WAKE:
                _wake()
            return
        if rc == ENOSELF:
            _become_self()
            continue
        if rc == ENOTPLAIN:  # bytes, a tuple, deep nesting, ...: the walk normalises it or refuses it
            m = encode_meta(meta)
            p, start = _self_identity()  # (C knew it: the mailbox is open)
            continue
        if rc == ETAKEN:
            e = t.get(REG, key)
            if e is None or _purge_if_dead(t, e.node, e.pid, e.start):
                continue  # the holder went meanwhile
            raise TakenError(f"{name!r} is registered to {Pid(t.node_name(e.node), e.pid)}")
        if rc == EFULL:
            raise CapacityError(f"scope {scope!r} is full")
        if rc == ERETIRED and t.renew():
            continue  # the segment was replaced: t now maps the new one
        if rc == ETOOBIG:
            encode_name(name)  # raises EncodingError for a name over MAX_NAME
            encode_meta(meta)  # ... and for a meta over MAX_META
        raise RuntimeError(f"register: table error {rc}")


def _register_confirmed(scope: str, name: Any, pid: _pids.PidArg, meta: Any, confirm: float) -> None:
    """register(..., confirm=T): tell the manager first (a lost race then removes the entry without
    a signal), write locally as usual, then wait up to T seconds for the cluster's decision."""
    if isinstance(confirm, bool) or not isinstance(confirm, (int, float)) or not 0 < confirm <= 3600:
        raise ValueError(f"confirm must be a number of seconds in (0, 3600], not {confirm!r}")
    from ._client import node as _node
    t = _table(scope)
    key = encode_name(name)
    p = _procinfo.self_identity()[0] if pid is None else _pids.for_write(t, pid)[0]
    args = {"scope": scope, "key": key.hex(), "pid": p, "wait": float(confirm)}
    n = _node()
    mode = n.request("expect", **args)["mode"]
    if mode == "unsupported":
        raise ValueError("register(..., confirm=...) needs a node on etcd (syn-mp daemon --etcd): under "
                         "--cluster/--peers a name held on both sides of a partition is decided at the heal")
    register(scope, name, pid, meta)  # TakenError at once if this node already shows a holder
    if mode == "local":
        return  # no cluster: this node's table is the whole truth, decided already
    got = n.request("confirm", timeout=confirm + 10, **args)["result"]
    if got == "held":
        return
    if got == "lost":
        t.own_reg.pop(key, None)  # the manager removed it (reason conflict_resolution)
        e = t.get(REG, key)
        holder = f" registered to {Pid(t.node_name(e.node), e.pid)}" if e is not None else ""
        raise TakenError(f"{name!r} is{holder or ' taken'}: etcd ordered another node's registration first")
    # no decision in time (etcd unreachable): withdrawn, so that it cannot be lost later
    while True:
        rc = _delete_local(t.ptr, REG, key, len(key), p, F_MATCH_PID)
        if rc == ERETIRED and t.renew():
            continue
        break
    t.own_reg.pop(key, None)
    if rc >= 0 and rc & WAKE:
        _wake()
    raise TimeoutError(f"register({scope!r}, {name!r}): etcd did not decide within {confirm}s; "
                       "the registration was withdrawn")


_new_pid = tuple.__new__  # Pid without NamedTuple's Python-level __new__ (hot path)
# Bound on a process's lookup cache (names it looked up): 131,072 entries of ~250 B at most.
_CACHE_MAX = 1 << 17


def _immutable(v: Any) -> bool:
    t = type(v)
    return t in _SCALARS or (t is tuple and all(_immutable(x) for x in v))


def _copier(meta: Any) -> Callable[[], Any] | None:
    """How a cache hit hands out its own copy of a meta that can't be frozen (_readonly) without
    decoding it again: a shallow copy of a list of immutables; None otherwise (decode)."""
    if type(meta) is list and all(_immutable(v) for v in meta):
        return meta.copy
    return None


def _cache_key(name: Any) -> Any:
    """The name itself where Python's equality is the codec's (exact str and int, flat tuples
    of them); else its encoding. 1, 1.0 and True are equal in a dict but are three names."""
    tn = type(name)
    if tn is str or tn is int:
        return name
    if tn is tuple:
        for x in name:
            tx = type(x)
            if tx is not str and tx is not int:
                return encode_name(name)
        return name
    return encode_name(name)


def lookup(scope: str, name: Any) -> tuple[Pid, Any] | None:
    """(Pid, meta) of the process registered under `name`, from shared memory without locking."""
    try:
        t = _TABLES[scope]
    except (KeyError, TypeError):
        t = _table(scope)
    try:
        hit = t.lookup_cache[name]
    except (KeyError, TypeError):  # not cached (or unhashable: encode_name says why)
        return _lookup_by_key(t, name)
    # The cache holds a name itself only where Python's equality is the codec's (_cache_key): a
    # hit on the very object cached is that name. An equal object of other types (1.0 for 1,
    # ("w", True) for ("w", 1)) is another name. Checking identity first leaves a tuple's items
    # untouched on the hot path: among 10,000 names each is a cache miss of its own.
    if hit[5] is not name:
        tn = type(name)
        if not (tn is str or tn is int or (tn is tuple and len(name) == 2 and type(name[0]) is str
                                            and type(name[1]) is int)) and _cache_key(name) is not name:
            return _lookup_by_key(t, name)
    # A hit stays true while one word of the segment is unchanged: the entry's ver (C I9),
    # or for a name found missing, the table's seqlock word.
    if t.words[hit[0]] == hit[1]:
        r = hit[2]  # the result when immutable (shared by every caller), None, or False: missing
        if r:
            return r
        return (hit[3], hit[4]()) if r is None else None
    return _read(t, name, name)


def _lookup_by_key(t: Table, name: Any) -> tuple[Pid, Any] | None:
    """lookup of a name not cached under itself: under its encoding (_cache_key), or read."""
    k = _cache_key(name)
    hit = None if k is name else t.lookup_cache.get(k)
    if hit is not None and t.words[hit[0]] == hit[1]:
        r = hit[2]
        if r:
            return r
        return (hit[3], hit[4]()) if r is None else None
    return _read(t, k, name)


def _read(t: Table, k: Any, name: Any) -> tuple[Pid, Any] | None:
    """lookup's miss: read the table and cache what was read, under k (_cache_key)."""
    key = k if type(k) is bytes else encode_name(name)
    found, node, p, raw, word, value = t.read_reg(key)
    cache = t.lookup_cache
    same = k if k is name else None  # what lookup's identity check compares with: never an encoding
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    if not found:
        cache[k] = (word, value, False, None, None, same)
        return None
    meta = decode(raw)
    pid = _new_pid(Pid, (t.node_name(node), p))
    shareable, frozen = freeze(meta)
    if shareable:  # every caller gets this one result (a dict meta read-only: _readonly)
        result = (pid, frozen)
        cache[k] = (word, value, result, pid, None, same)
        return result
    # a list inside: each caller gets its own copy
    fresh = _copier(meta) or functools.partial(decode, raw)
    cache[k] = (word, value, None, pid, fresh, same)  # `meta` stays the cache's own: callers get copies
    return pid, fresh()


def whereis_name(scope: str, name: Any) -> Pid | None:
    found = lookup(scope, name)
    return None if found is None else found[0]


def _local_holder(t: Table, scope: str, key: bytes, name: Any) -> Entry:
    """The entry a write acts on: it must exist, be of this node, and (strict mode) be the caller's."""
    e = t.get(REG, key)
    if e is None:
        raise UndefinedError(f"{name!r} is not registered in scope {scope!r}")
    if e.node != 0:
        raise RemotePidError(f"{name!r} is held by {Pid(t.node_name(e.node), e.pid)}: write on its own node")
    _pids.check_self(t, e.pid)
    return e


def update_registry(scope: str, name: Any, fn: Callable[[Pid, Any], Any]) -> tuple[Pid, Any]:
    """Set the meta of `name` to fn(pid, meta); retried if another write changes it meanwhile."""
    t = _table(scope)
    key = encode_name(name)
    while True:
        e = _local_holder(t, scope, key, name)
        pid = Pid(t.node_name(0), e.pid)
        new_meta = fn(pid, decode(e.meta))
        m = encode_meta(new_meta)
        rc, info = t.put(REG, key, 0, e.pid, e.start, time.time_ns(), m, F_EXPECT_VER, e.ver)
        if rc >= 0:
            if key in t.own_reg:
                t.own_reg[key] = (e.pid, e.start, m)
            _after_write(info)
            return pid, new_meta
        if rc == EFULL:
            raise CapacityError(f"scope {scope!r} is full")
        if rc not in (EMISMATCH, ENOTFOUND):
            raise RuntimeError(f"update_registry: table error {rc}")
        # changed under us: read again


def unregister(scope: str, name: Any) -> None:
    try:
        t = _TABLES[scope]
    except (KeyError, TypeError):
        t = _table(scope)
    try:
        key = _pack(name) if type(name) is str else encode_name(name)
    except UnicodeEncodeError:
        key = encode_name(name)  # raises EncodingError
    while True:
        # in strict mode only the holder itself may unregister, else any process of this node
        rc = _unreg_local(t.ptr, key, len(key))
        if rc >= 0:
            t.own_reg.pop(key, None)
            if rc & WAKE:
                _wake()
            return
        if rc == ENOSELF:
            _become_self()
            continue
        if rc == ERETIRED and t.renew():
            continue
        if rc == ETOOBIG:
            encode_name(name)  # raises EncodingError for a name over MAX_NAME
        if rc not in (EMISMATCH, ENOTFOUND):
            raise RuntimeError(f"unregister: table error {rc}")
        _local_holder(t, scope, key, name)  # raises the error that says why; else it changed: again


def registry_count(scope: str, node: str | None = None) -> int:
    t = _table(scope)
    nid = _pids.node_filter(t, node)
    return 0 if nid is None else t.count(BY_NODE, REG, node=nid)


def local_registry_count(scope: str) -> int:
    return _table(scope).count(BY_NODE, REG, node=0)


def registry_entries(scope: str, node: str | None = None) -> list[tuple[Any, Pid, Any]]:
    t = _table(scope)
    nid = _pids.node_filter(t, node)
    if nid is None:
        return []
    items = t.collect(BY_NODE, REG, node=nid)
    return [(decode_name(i.key), Pid(t.node_name(i.node), i.pid), decode(i.meta)) for i in items]


def names_of(scope: str, pid: _pids.PidArg = None) -> list[Any]:
    t = _table(scope)
    nid, p = _pids.for_read(t, pid)
    if nid is None:
        return []
    return [decode_name(i.key) for i in t.collect(BY_PID, REG, node=nid, pid=p, flags=WITH_KEY)]


def claim_slot(scope: str, prefix: str, limit: int, pid: _pids.PidArg = None, meta: Any = None, *,
               confirm: float | None = None) -> int:
    """Register `(prefix, i)` for the lowest free i in range(limit) and return i.

    A process that already holds a slot of this prefix gets that slot back. confirm=seconds: each
    slot taken waits for etcd's decision (as in register); a slot lost to another node is skipped.
    """
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"limit must be an int, not {type(limit).__name__}")
    if limit <= 0:
        raise ValueError(f"limit must be positive, not {limit}")
    t = _table(scope)
    p, _ = _pids.for_write(t, pid)
    for name in names_of(scope, p):
        if (isinstance(name, tuple) and len(name) == 2 and name[0] == prefix and type(name[1]) is int
                and 0 <= name[1] < limit):
            return name[1]
    for i in range(limit):
        e = t.get(REG, encode_name((prefix, i)))
        if e is not None and not _purge_if_dead(t, e.node, e.pid, e.start):
            continue  # lock-free peek first: a busy pool costs no lock per taken slot
        try:
            register(scope, (prefix, i), pid, meta, confirm=confirm)
            return i
        except TakenError:
            continue
    raise CapacityError(f"no free slot ({prefix!r}, i) for i in range({limit}) in scope {scope!r}")
