"""Turning the `pid` arguments of the API into (node id, pid, start) for one table."""
from __future__ import annotations

from typing import Union

from . import _procinfo
from ._table import FLAG_STRICT, Table
from ._types import Pid
from .errors import NotAliveError, NotSelfError, RemotePidError

PidArg = Union[int, Pid, None]


def _os_pid(pid: object) -> int:
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise TypeError(f"pid must be an int, a syn_mp.Pid or None, not {type(pid).__name__}")
    return pid


def for_write(table: Table, pid: PidArg) -> tuple[int, int]:
    """(pid, start) of a live local process that a write may name; raises the API's errors."""
    own_pid, own_start = _procinfo.self_identity()
    if pid is None:
        return own_pid, own_start
    if isinstance(pid, Pid):
        if pid.node != table.node_name(0):
            raise RemotePidError(f"{pid} belongs to node {pid.node!r}: write on its own node")
        pid = pid.pid
    p = _os_pid(pid)
    if p == own_pid:
        return own_pid, own_start
    if table.flags & FLAG_STRICT:
        raise NotSelfError(f"strict mode: process {own_pid} may not write for pid {p}")
    start = _procinfo.start_time(p) if p > 0 else None
    if start is None:
        raise NotAliveError(f"pid {p} is not a live process of this node")
    return p, start


def check_self(table: Table, pid: int) -> None:
    """Strict mode: a write that acts on an existing entry must be the entry's own process."""
    if table.flags & FLAG_STRICT and pid != _procinfo.self_identity()[0]:
        raise NotSelfError(f"strict mode: pid {pid} is not the calling process")


def _read_pid(pid: object) -> int:
    """A pid to look up; 0 (which no entry has) for an int outside the table's int64 range."""
    p = _os_pid(pid)
    return p if -(1 << 63) <= p < (1 << 63) else 0


def for_read(table: Table, pid: PidArg) -> tuple[int | None, int]:
    """(node id, pid) to look a process up by; node id None when the table has no such node."""
    if pid is None:
        return 0, _procinfo.self_identity()[0]
    if isinstance(pid, Pid):
        if not isinstance(pid.node, str):
            raise TypeError("Pid.node must be a str")
        nid = 0 if pid.node == table.node_name(0) else table.node_id(pid.node)
        return nid, _read_pid(pid.pid)
    return 0, _read_pid(pid)


def node_filter(table: Table, node: str | None) -> int | None:
    """The table's id for a `node=` argument; ALL for None; None when the node is unknown."""
    from ._table import ALL_NODES
    if node is None:
        return ALL_NODES
    if not isinstance(node, str):
        raise TypeError(f"node must be a str or None, not {type(node).__name__}")
    return table.node_id(node)
