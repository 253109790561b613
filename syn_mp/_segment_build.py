"""The manager's way to make a scope's segment anew, with no moment where its name holds half a table.

Used when the segment is missing, half-created or of another layout version (at start, or when a
scope is added), and when the segment the manager maps was removed or replaced under it (systemd-
logind's RemoveIPC=yes, an `rm` in /dev/shm). Linux keeps POSIX shared memory as files in /dev/shm,
so a table filled under a temporary name is published by one rename(2).
"""
from __future__ import annotations

import logging
import os
from typing import Callable

import posix_ipc

from ._table import (ALL_NODES, BY_NODE, PG, REG, SegmentOwnerError, Table, TableError, shm_path)

log = logging.getLogger("syn_mp.manager")

SEGMENT_CHECK = 0.5  # seconds between the manager's looks at whether each segment is still its own
_TMP_SUFFIX = "~new"  # "~" is no scope character: the temporary name is never another scope's segment


def build_segment(name: str, node: str, capacity: int, heap: int, journal: int, mode: int,
                  old: Table | None, before_copy: Callable[[], None] = lambda: None) -> Table:
    """A new table published under `name`: made under a temporary name, filled with `old`'s entries
    (old retired first, so nothing is written there after the copy; `before_copy` runs then), and
    renamed over whatever the name holds (nothing, or a half-created or foreign-version segment).
    SegmentOwnerError when another user holds the name: never ours to replace. On any failure `old`
    is un-retired and stays the scope's table."""
    try:
        uid = os.lstat(shm_path(name)).st_uid
    except FileNotFoundError:
        pass
    else:
        if uid != os.geteuid():
            raise SegmentOwnerError(f"segment {name} is owned by uid {uid}, not by the node's user: refusing it")
    tmp = name + _TMP_SUFFIX
    try:
        posix_ipc.unlink_shared_memory(tmp)  # left by a manager that died here
    except posix_ipc.ExistentialError:
        pass
    t = Table.create(tmp, node, capacity, heap, journal, mode)
    try:
        if old is not None:
            old.retire()
            before_copy()
            copy_entries(old, t)
        os.rename(shm_path(tmp), shm_path(name))
    except BaseException as e:
        if old is not None:
            old.retire(False)
        posix_ipc.unlink_shared_memory(tmp)
        if isinstance(e, OSError):
            raise TableError(f"cannot publish a new segment {name}: {e}") from None
        raise
    t.name = name
    return t


def copy_entries(old: Table, new: Table) -> int:
    """Every entry of `old` (every node's, with its registration time) into `new`, an empty table:
    the node ids stay the same, so what clients cached by id stays right. Returns how many."""
    ids = {i: new.add_node(n) for i, n in enumerate(old.node_names()) if i}  # in id order: the same ids
    ids[0] = 0
    copied = 0
    for type_ in (REG, PG):
        for i in old.collect(BY_NODE, type_, node=ALL_NODES):
            rc, _ = new.put(type_, i.key, ids[i.node], i.pid, i.start, i.time_ns, i.meta)
            if rc >= 0:
                copied += 1
            else:
                log.warning("segment %s: an entry could not be copied (%d)", new.name, rc)
    return copied
