"""Thin typed binding of csrc/table.c: one `Table` per attached scope segment.

Policy (errors of API.md, strict mode, encoding) lives above this module; here the
C return codes come back as they are; reads never wait for a writer (csrc/view.h).
"""
from __future__ import annotations

import mmap
import os
import struct
import weakref
from typing import Any, Iterable, Iterator, NamedTuple

import posix_ipc

from ._native import ffi, lib

REG = lib.SYNT_REG
PG = lib.SYNT_PG
ALL_NODES = lib.SYNT_ALL_NODES
BY_KEY, BY_PID, BY_NODE = lib.SYNT_BY_KEY, lib.SYNT_BY_PID, lib.SYNT_BY_NODE
WITH_KEY, WITH_META, F_MSGPACK = lib.SYNT_F_WITH_KEY, lib.SYNT_F_WITH_META, lib.SYNT_F_MSGPACK
F_FORCE, F_EXPECT_VER, F_MATCH_PID = lib.SYNT_F_FORCE, lib.SYNT_F_EXPECT_VER, lib.SYNT_F_MATCH_PID
F_MATCH_NODE, WAKE = lib.SYNT_F_MATCH_NODE, lib.SYNT_WAKE
INSERTED, UPDATED, UNCHANGED = lib.SYNT_INSERTED, lib.SYNT_UPDATED, lib.SYNT_UNCHANGED
ENOTFOUND, ETAKEN, EFULL, EMISMATCH = lib.SYNT_ENOTFOUND, lib.SYNT_ETAKEN, lib.SYNT_EFULL, lib.SYNT_EMISMATCH
EBUFSMALL, EBUSY, ECORRUPT, EOVERRUN = lib.SYNT_EBUFSMALL, lib.SYNT_EBUSY, lib.SYNT_ECORRUPT, lib.SYNT_EOVERRUN
FLAG_STRICT = lib.SYNT_FLAG_STRICT
# A table replaced by a new segment (its name removed, or it was rebuilt): put and delete return
# ERETIRED, and its users attach the new one (_segments).
FLAG_RETIRED, ERETIRED = lib.SYNT_FLAG_RETIRED, lib.SYNT_ERETIRED
EBADPID = lib.SYNT_EBADPID  # a pid outside int32, which an entry's head stores (OS pids are < 2^22)
ENOSELF = lib.SYNT_ENOSELF  # a self write (put_self, unreg_local) before set_self in this process
ENOTPLAIN = lib.SYNT_ENOTPLAIN  # put_self's meta is not what codec's walk leaves as it is (csrc/plain.c)
ETOOBIG = lib.SYNT_ETOOBIG
meta_plain = lib.synt_meta_plain
CHUNK = lib.SYNT_CHUNK
chunks_for = lib.synt_chunks_for  # chunks an entry with key + meta of n bytes takes
MAX_META = lib.SYNT_MAX_META

# journal kinds and reasons as stored in the segment
J_KINDS = {
    lib.SYNT_J_REGISTERED: "registered",
    lib.SYNT_J_REG_UPDATED: "registry_updated",
    lib.SYNT_J_UNREGISTERED: "unregistered",
    lib.SYNT_J_JOINED: "joined",
    lib.SYNT_J_PG_UPDATED: "group_updated",
    lib.SYNT_J_LEFT: "left",
}
R_NORMAL, R_PROCESS_EXIT, R_MANAGER_RESTART, R_CONFLICT, R_NODE_UP, R_NODE_DOWN = range(6)


class TableError(RuntimeError):
    """The segment is not a usable table (bad layout, unusable lock, corruption)."""


class SegmentOwnerError(TableError):
    """The segment belongs to another user: never ours to use, nor to replace."""


class SegmentLayoutError(TableError):
    """Not a table of this version: another layout version, or half-created (no magic, no size)."""


SHM_DIR = "/dev/shm"  # where Linux keeps POSIX shared memory: a segment /x is the file /dev/shm/x


def shm_path(name: str) -> str:
    return SHM_DIR + name


def identity(name: str) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the segment the name now names; None when there is none."""
    try:
        st = os.stat(shm_path(name))
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


class Entry(NamedTuple):
    node: int
    pid: int
    start: int
    time_ns: int
    ver: int
    meta: bytes
    seq: int  # the table's seqlock value this read is valid for


class Item(NamedTuple):
    node: int
    type: int
    pid: int
    start: int
    time_ns: int
    key: bytes
    meta: bytes


class JournalRecord(NamedTuple):
    seq: int
    kind: str
    reason: int
    node: int
    reason_node: int
    pid: int
    start: int
    time_ns: int
    key: bytes
    meta: bytes


class _Scratch:
    """Out-buffers for one C call at a time. cffi drops the GIL during calls, so two threads
    must never share one: each call pops a set from the table's pool (list.pop and append are
    atomic under the GIL) and gives it back."""

    __slots__ = ("info", "info_bytes", "hit", "hit_bytes", "cap", "buf", "buf_bytes", "needed")

    def __init__(self) -> None:
        self.needed = ffi.new("uint64_t *")
        self.info = ffi.new("synt_info_t *")
        self.info_bytes = ffi.buffer(self.info)  # all fields in one struct.unpack_from
        self.hit = ffi.new("synt_hit_t *")
        self.hit_bytes = ffi.buffer(self.hit)
        self.cap = 4096
        self.buf = ffi.new("uint8_t[]", self.cap)
        self.buf_bytes = ffi.buffer(self.buf)

    def grow(self, n: int) -> None:
        self.cap = max(n, self.cap * 2)
        self.buf = ffi.new("uint8_t[]", self.cap)
        self.buf_bytes = ffi.buffer(self.buf)


class _Info(NamedTuple):
    """synt_info_t as Python values."""

    node: int
    type: int
    pid: int
    start: int
    time_ns: int
    ver: int
    keylen: int
    metalen: int
    wake: int
    pad: int
    seq: int
    ver_word: int


_new_entry = tuple.__new__  # a NamedTuple without its Python-level __new__: the lookup hot path

# The API's own writes, called by registry and groups straight with Table.ptr, as every Python frame
# on that path counts (csrc/table.h): a put or delete by node 0, timed in C, whose result code has
# WAKE set when the manager sleeps.
#   put_local(ptr, type, key, len(key), pid, start, meta, len(meta)) -> int
#   delete_local(ptr, type, key, len(key), pid, flags) -> int
#   put_self(ptr, type, key, len(key), meta, len(meta)) -> int: register or join by the caller itself
#   unreg_local(ptr, key, len(key)) -> int: unregister, strict mode decided in C
# The self writes take the caller's (pid, start) from C, set by set_self(pid, start) at the process's
# first self write, after its mailbox is opened (registry._become_self); ENOSELF until then, and again
# in a forked child or after a change of node: two fewer arguments to convert per call.
put_local = lib.synt_put_local
delete_local = lib.synt_delete_local
put_self = lib.synt_put_self
unreg_local = lib.synt_unreg_local
set_self = lib.synt_set_self
_INFO = struct.Struct("=IIqQqQIIIIQQ")  # synt_info_t
assert _INFO.size == ffi.sizeof("synt_info_t")
_HIT = struct.Struct("=QQqII")  # synt_hit_t
assert _HIT.size == ffi.sizeof("synt_hit_t")


def _owned_by(name: str) -> str:
    """ ", owned by uid N" for a segment's error message, when /dev/shm shows it."""
    try:
        return f", owned by uid {os.stat('/dev/shm' + name).st_uid}"
    except OSError:
        return ""


# Every Table of this process, the tables of nodes it moved away from included: a forked child
# empties every one's ledger (_segments), as the parent's entries are not the child's.
LIVE: "weakref.WeakSet[Table]" = weakref.WeakSet()


class Table:
    """One scope's segment, mapped into this process."""

    def __init__(self, name: str, mm: mmap.mmap, ident: tuple[int, int] = (0, 0)) -> None:
        self.name = name
        self.ident = ident  # (st_dev, st_ino) of the segment mapped: is the name still ours? (moved)
        self._pool: list[_Scratch] = []
        # set by the client (_segments.renew): called when this table is found retired or moved;
        # it attaches the new segment in place (rebind) and puts this process's entries back
        self.on_stale: Any = None
        self.owner: int | None = None  # the owner attach required: a replacement must have it too
        self.gen = 0  # bumped by rebind: journal cursors of the old segment mean nothing in the new
        self._past: list[tuple[Any, ...]] = []  # mappings replaced by rebind, kept a while (see rebind)
        self._map(mm)
        # name -> (word index, word value, ...): see registry.lookup
        self.lookup_cache: dict[Any, tuple[Any, ...]] = {}
        # (group, node) -> (seqlock value, ...): see groups.members
        self.members_cache: dict[tuple[bytes, int], tuple[Any, ...]] = {}
        # This process's own writes (_ledger): what it puts back into a rebuilt segment.
        # name key -> (pid, start, meta), or meta alone for the process itself (register's hot path);
        # (group key, pid) -> (start, meta)
        self.own_reg: dict[bytes, tuple[int, int, bytes] | bytes] = {}
        self.own_pg: dict[tuple[bytes, int], tuple[int, bytes]] = {}
        LIVE.add(self)

    def _map(self, mm: mmap.mmap) -> None:
        base = ffi.from_buffer(mm)
        t = ffi.new("synt_t *")
        rc = lib.synt_open(t, base, len(mm))
        if rc != 0:
            raise SegmentLayoutError(f"segment {self.name} is not a syn_mp table of this version"
                                     f" ({_describe(mm)})")
        self._mm = mm
        self._base = base
        self._t = t
        self.ptr = t  # what put_local/delete_local take
        self._node_names: list[str] = []
        self._node_gen = lib.synt_node_gen(self._t)
        self._seqp = lib.synt_seq_ptr(self._t)
        self._flagsp = lib.synt_flags_ptr(self._t)
        # The segment as 64-bit words: registry.lookup checks one word (an entry's ver, or the
        # seqlock) to know that what it cached is still what the table holds. An aligned 8-byte
        # item is one load, so the word is never torn.
        self.words = memoryview(mm).cast("Q")
        self.seq_word = lib.synt_seq_word(self._t)
        addr = int(ffi.cast("uintptr_t", self._flagsp)) - int(ffi.cast("uintptr_t", self._base))
        self.flags_word = addr // 8  # the header's flags (SYNT_FLAG_*): strict mode, read on writes

    # ------------------------------------------------------------ lifecycle

    @classmethod
    def create(cls, name: str, node: str, capacity: int, heap: int, journal: int,
               mode: int = 0o600, flags: int = 0) -> "Table":
        size = lib.synt_layout_size(capacity, heap, journal)
        try:
            shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=mode, size=size)
        except posix_ipc.ExistentialError:  # made by someone else since we looked (maybe another user)
            raise TableError(f"segment {name} already exists{_owned_by(name)}: refusing it") from None
        except posix_ipc.Error as e:
            raise TableError(f"cannot create segment {name}: {e}") from None
        try:
            os.fchmod(shm.fd, mode)  # O_CREAT honours the umask; the mode is the contract
            st = os.fstat(shm.fd)
            mm = mmap.mmap(shm.fd, size)
        finally:
            shm.close_fd()
        nb = node.encode()
        rc = lib.synt_init(ffi.from_buffer(mm), size, capacity, heap, journal, nb, len(nb), flags)
        if rc != 0:
            posix_ipc.unlink_shared_memory(name)
            raise TableError(f"cannot initialise segment {name}: {rc}")
        return cls(name, mm, (st.st_dev, st.st_ino))

    @classmethod
    def attach(cls, name: str, owner: int | None = None) -> "Table | None":
        """Map an existing segment; None when there is none. SegmentOwnerError when it belongs to a user
        other than `owner` (default: this process's): segment names are predictable, another user may
        have created one first. SegmentLayoutError when it is not a table of this layout version, or
        one half-created (never sized, or no magic: its creator died before the end)."""
        try:
            shm = posix_ipc.SharedMemory(name)
        except posix_ipc.ExistentialError:
            return None
        except posix_ipc.PermissionsError:  # another user's, mode 0600 (the usual default)
            raise SegmentOwnerError(f"segment {name} can't be opened{_owned_by(name)}: permission denied, "
                             "refusing it") from None
        except posix_ipc.Error as e:
            raise TableError(f"segment {name} can't be opened: {e}") from None
        try:
            st = os.fstat(shm.fd)
            if st.st_uid != (os.geteuid() if owner is None else owner):
                raise SegmentOwnerError(f"segment {name} is owned by uid {st.st_uid}, not by the node's user: "
                                        "refusing it")
            if shm.size == 0:
                raise SegmentLayoutError(f"segment {name} is half-created (size 0)")
            mm = mmap.mmap(shm.fd, shm.size)
        finally:
            shm.close_fd()
        t = cls(name, mm, (st.st_dev, st.st_ino))
        t.owner = owner
        return t

    def view(self) -> "Table":
        """A second Table on this one's mapping (not rebound with it): how a renewed client reads
        the segment it left. SegmentLayoutError when the header is no longer this version's."""
        t = Table(self.name, self._mm, self.ident)
        t.owner = self.owner
        return t

    def rebind(self, other: "Table") -> None:
        """Take over `other`'s mapping in place: every holder of this object (the hot paths keep
        it in _client.TABLES) uses the new segment from its next call; the caches start over.
        The old mapping stays mapped for two more rebinds: another thread may be inside a C call
        on it (a write there fails with ERETIRED, a read returns what the old table held)."""
        self._past = (self._past + [(self._mm, self._base, self._t, self.words)])[-2:]
        self._map(other._mm)
        self.ident = other.ident
        self.lookup_cache = {}
        self.members_cache = {}
        self.gen += 1

    def retired(self) -> bool:
        return bool(self._flagsp[0] & FLAG_RETIRED)

    def moved(self) -> bool:
        """Whether the segment's name now names another segment, or none."""
        return identity(self.name) != self.ident

    def stale(self) -> bool:
        """Retired by the manager, or its name now names another segment: attach that one."""
        if self._flagsp[0] & FLAG_RETIRED:
            return True
        now = identity(self.name)
        return now is not None and now != self.ident

    def renew(self) -> bool:
        """After a read or write found this table retired: the client's on_stale hook (it rebinds
        this table to the new segment); False when there is none (then the caller sees ERETIRED)."""
        hook = self.on_stale
        return hook is not None and hook(self)

    # ------------------------------------------------------------- nodes

    def node_name(self, node_id: int) -> str:
        gen = lib.synt_node_gen(self._t)
        if gen != self._node_gen:  # a retired id went to another name: forget the names cached by id
            self._node_names, self._node_gen = [], gen
        names = self._node_names
        if node_id < len(names):
            return names[node_id]
        buf = ffi.new("char[]", 256)
        for i in range(len(names), lib.synt_nnodes(self._t)):
            n = lib.synt_node_name(self._t, i, buf, 256)
            names.append(ffi.buffer(buf, n)[:].decode("utf-8", "replace"))
        return names[node_id]

    def node_names(self) -> list[str]:
        """Every node's name, by id: the table's own list (do not change it), brought up to date."""
        self.node_name(lib.synt_nnodes(self._t) - 1)  # checks the generation, fills what is missing
        return self._node_names

    def nnodes(self) -> int:
        return lib.synt_nnodes(self._t)

    def add_node(self, name: str) -> int:
        """The id of node `name`, added to the node table if new."""
        nid = self.node_id(name, create=True)
        assert nid is not None
        return nid

    def retire_node(self, node_id: int) -> bool:
        """Retire a node id that holds no entry (see synt_node_retire): its name is no longer found,
        and once all SYNT_MAX_NODES ids are taken, the id goes to a new name. False if it holds
        entries (or is 0, or unknown)."""
        return lib.synt_node_retire(self._t, node_id) == 0

    def node_id(self, name: str, create: bool = False) -> int | None:
        b = name.encode()
        rc = lib.synt_node_id(self._t, b, len(b), 1 if create else 0)
        if rc >= 0:
            return rc
        if rc == ENOTFOUND or not create:
            return None
        raise TableError(f"node table: {rc}")

    # ------------------------------------------------------------- reads

    def _scratch(self) -> _Scratch:
        try:
            return self._pool.pop()
        except IndexError:
            return _Scratch()

    def get(self, type_: int, key: bytes, node: int = 0, pid: int = 0) -> Entry | None:
        s = self._scratch()
        try:
            while True:
                rc = lib.synt_get(self._t, type_, key, len(key), node, pid, s.info, s.buf, s.cap)
                if rc >= 0 and self._flagsp[0] & FLAG_RETIRED and self.renew():
                    continue  # a retired table no longer changes: read the one that replaced it
                if rc == 1:
                    nd, _, p, start, t, ver, _, ml, _, _, seq, _ = _INFO.unpack_from(s.info_bytes)
                    return _new_entry(Entry, (nd, p, start, t, ver, s.buf_bytes[:ml], seq))
                if rc == 0:
                    return None
                self._retry(rc, s, s.info.metalen)
        finally:
            self._pool.append(s)

    def read_reg(self, key: bytes) -> tuple[int, int, int, bytes, int, int]:
        """registry.lookup's read: (found 1/0, node, pid, meta, word, value), where word is the
        index of the segment's uint64 word that holds value while the answer stays true."""
        s = self._scratch()
        try:
            while True:
                rc = lib.synt_lookup(self._t, key, len(key), s.hit, s.buf, s.cap)
                if rc >= 0 and self._flagsp[0] & FLAG_RETIRED and self.renew():
                    continue
                if rc >= 0:
                    word, value, p, nd, ml = _HIT.unpack_from(s.hit_bytes)
                    return rc, nd, p, s.buf_bytes[:ml], word, value
                self._retry(rc, s, s.hit.metalen)
        finally:
            self._pool.append(s)

    def seq(self) -> int:
        """The seqlock word now: equal to an Entry's seq means nothing changed since that read."""
        return self._seqp[0]

    def collect(self, mode: int, type_: int, key: bytes = b"", node: int = ALL_NODES,
                pid: int = 0, flags: int = WITH_KEY | WITH_META) -> list[Item]:
        s = self._scratch()
        needed = s.needed
        try:
            while True:
                n = lib.synt_collect(self._t, mode, type_, key, len(key), node, pid, flags, s.buf, s.cap, needed)
                if n >= 0 and self._flagsp[0] & FLAG_RETIRED and self.renew():
                    continue
                if n >= 0:
                    return _parse_items(s.buf_bytes[:needed[0]], n)
                self._retry(n, s, needed[0])
        finally:
            self._pool.append(s)

    def collect_packed(self, mode: int, type_: int, key: bytes = b"", node: int = ALL_NODES,
                       pid: int = 0, flags: int = WITH_META) -> bytes:
        """collect() as one msgpack array of [node, pid, key?, meta?] rows (codec.decode reads
        it in one call): what listings use where Python-level parsing of each item would cost
        more than the C read itself."""
        s = self._scratch()
        needed = s.needed
        try:
            while True:
                n = lib.synt_collect(self._t, mode, type_, key, len(key), node, pid, flags | F_MSGPACK,
                                     s.buf, s.cap, needed)
                if n >= 0 and self._flagsp[0] & FLAG_RETIRED and self.renew():
                    continue
                if n >= 0:
                    return s.buf_bytes[:needed[0]]
                self._retry(n, s, needed[0])
        finally:
            self._pool.append(s)

    def collect_rows(self, mode: int, type_: int, key: bytes = b"", node: int = ALL_NODES, pid: int = 0,
                     flags: int = WITH_KEY | WITH_META) -> tuple[bytes, int]:
        """collect() as rows (csrc/rows.c: synt_item_t records in one byte string) and their count,
        for a caller that hands them on whole (a snapshot) rather than reading each one. Its own
        buffer, sized by a first walk: a snapshot's megabytes are not kept in the scratch pool."""
        needed = ffi.new("uint64_t *")
        cap, buf = 0, ffi.NULL
        while True:
            n = lib.synt_collect(self._t, mode, type_, key, len(key), node, pid, flags, buf, cap, needed)
            if n >= 0 and self._flagsp[0] & FLAG_RETIRED and self.renew():
                continue
            if n >= 0 and buf != ffi.NULL:
                return ffi.buffer(buf, needed[0])[:], n
            if n >= 0 or n == EBUFSMALL:  # measured (or it grew since): room for it and some more
                cap = needed[0] + needed[0] // 8 + 4096
                buf = ffi.new("uint8_t[]", cap)
                continue
            self._retry(n, None, 0)

    def count(self, mode: int, type_: int, key: bytes = b"", node: int = ALL_NODES, pid: int = 0) -> int:
        while True:
            n = lib.synt_count(self._t, mode, type_, key, len(key), node, pid)
            if n >= 0 and self._flagsp[0] & FLAG_RETIRED and self.renew():
                continue
            if n >= 0:
                return n
            self._retry(n, None, 0)

    def _retry(self, rc: int, s: _Scratch | None, need: int) -> None:
        if rc == EBUFSMALL and s is not None:
            s.grow(need)
        else:
            # reads never wait for a writer (csrc/view.h): even EBUSY means a segment rewritten
            # under us without end, never a writer to wait for
            raise TableError(f"table {self.name}: read failed ({rc})")

    # ------------------------------------------------------------ writes

    def put_rc(self, type_: int, key: bytes, node: int, pid: int, start: int, time_ns: int, meta: bytes,
               reason: int, reason_node: int) -> int:
        """put()'s result code alone, the info not read back (one C call: the path of every remote
        change); ERETIRED as it is."""
        return lib.synt_put(self._t, type_, key, len(key), node, pid, start, time_ns, meta, len(meta), 0, 0, reason,
                            reason_node, ffi.NULL)

    def put(self, type_: int, key: bytes, node: int, pid: int, start: int, time_ns: int,
            meta: bytes, flags: int = 0, expect_ver: int = 0, reason: int = R_NORMAL,
            reason_node: int = 0) -> tuple[int, Any]:
        """(result code, the entry's info: the new one, or the holder on ETAKEN); the info is a
        snapshot copy, safe to keep."""
        s = self._scratch()
        try:
            while True:
                rc = lib.synt_put(self._t, type_, key, len(key), node, pid, start, time_ns, meta, len(meta),
                                  flags, expect_ver, reason, reason_node, s.info)
                if rc != ERETIRED or not self.renew():
                    return rc, _new_entry(_Info, _INFO.unpack_from(s.info_bytes))
        finally:
            self._pool.append(s)

    def delete(self, type_: int, key: bytes, node: int = 0, pid: int = 0, flags: int = 0,
               reason: int = R_NORMAL, reason_node: int = 0) -> tuple[int, Any]:
        s = self._scratch()
        try:
            while True:
                rc = lib.synt_delete(self._t, type_, key, len(key), node, pid, flags, reason, reason_node, s.info)
                if rc != ERETIRED or not self.renew():
                    return rc, _new_entry(_Info, _INFO.unpack_from(s.info_bytes))
        finally:
            self._pool.append(s)

    def put_rows(self, rows: bytes, pos: int, most: int, node: int, reason: int,
                 reason_node: int) -> tuple[int, list[int]]:
        """put() of at most `most` rows (csrc/rows.c) from byte offset `pos` on, as entries of `node`:
        (the offset after the rows done, the offsets of the rows whose put failed: a conflict,
        no room...; the caller puts those one by one). TableError on a malformed row."""
        cur = ffi.new("uint64_t *", pos)
        failed = ffi.new("uint64_t[]", _FAILED_MAX)
        nfailed = ffi.new("uint32_t *")
        n = lib.synt_put_rows(self._t, rows, len(rows), cur, most, node, reason, reason_node, failed, _FAILED_MAX,
                              nfailed)
        if n < 0:
            raise TableError(f"table {self.name}: a malformed row at byte {cur[0]} ({n})")
        return cur[0], [failed[i] for i in range(nfailed[0])]

    def purge_pid(self, node: int, pid: int, start: int, reason: int, reason_node: int = 0,
                  wait: float = 0.0) -> int:
        """Entries removed, or < 0; with `wait` > 0, EBUSY once the lock was held that long by
        another writer (one stopped mid-write, say): the caller tries again later."""
        self._t.lock_wait_ns = int(wait * 1e9)
        try:
            return lib.synt_purge_pid(self._t, node, pid, start, reason, reason_node)
        finally:
            self._t.lock_wait_ns = 0

    def purge_node(self, node: int, reason: int, reason_node: int = 0) -> int:
        return lib.synt_purge_node(self._t, node, reason, reason_node)

    # ------------------------------------------------------------ header

    @property
    def flags(self) -> int:
        return self._flagsp[0]  # a plain load: checked on every write (strict mode)

    def set_flags(self, flags: int) -> None:
        lib.synt_set_flags(self._t, flags)

    def retire(self, retired: bool = True) -> None:
        """Mark this table replaced (under its mutex: once this returns, no put or delete succeeds
        on it); the manager's step before it copies the table into a new segment."""
        f = self.flags
        self.set_flags((f | FLAG_RETIRED) if retired else (f & ~FLAG_RETIRED))

    def set_sleeping(self, sleeping: bool) -> None:
        lib.synt_set_sleeping(self._t, 1 if sleeping else 0)

    def journal_head(self) -> int:
        return lib.synt_journal_head(self._t)

    def repair(self) -> None:
        if lib.synt_repair(self._t) != 0:
            raise TableError(f"table {self.name}: mutex unusable")

    def check(self) -> str | None:
        """Verify every invariant of csrc/table.c (repairing a dead writer first); None if sound."""
        err = ffi.new("char[]", 512)
        rc = lib.synt_check(self._t, err, 512)
        return None if rc == 0 else (ffi.string(err).decode() or f"error {rc}")

    def stats(self) -> dict[str, int]:
        st = ffi.new("synt_stats_t *")
        lib.synt_stats(self._t, st)
        return {f: getattr(st, f) for f in ("capacity", "count", "reg_count", "pg_count", "heap_size",
                                            "heap_used", "chunks", "chunks_free", "nnodes",
                                            "journal_size", "journal_head", "lock_holder",
                                            "lock_since")}

    def announced(self) -> "AnnounceReader":
        """Clear the announce ring's filter and follow the ring from now (csrc/table.c, "the
        announce ring"): the manager's way to learn which processes to watch; scan the table after."""
        head = lib.synt_watch_reset(self._t)
        if head < 0:
            raise TableError(f"table {self.name}: mutex unusable ({head})")
        return AnnounceReader(self, head)

    def journal(self, cursor: int | None = None, node: int = ALL_NODES) -> "JournalReader":
        """A reader of the journal from `cursor` (default: now), of every node's records or of
        `node`'s only (the others are passed over in C, never copied or parsed)."""
        return JournalReader(self, self.journal_head() if cursor is None else cursor, node)


_ITEM = ffi.sizeof("synt_item_t")
_JREC = ffi.sizeof("synt_jrec_t")


_ITEM_HEAD = struct.Struct("=IIqQqII")  # synt_item_t
_JREC_HEAD = struct.Struct("=QIHHIIqQqII")  # synt_jrec_t
_FAILED_MAX = 256  # rows whose put failed, reported per put_rows call


def rows_check(rows: bytes) -> int:
    """How many rows (csrc/rows.c); TableError when one is malformed (they come from another node)."""
    n = lib.synt_rows_check(rows, len(rows))
    if n < 0:
        raise TableError(f"malformed rows ({n})")
    return n


def rows_missing(have: bytes, want: bytes) -> list[Item]:
    """The rows of `have` whose (type, key, pid) no row of `want` has."""
    needed = ffi.new("uint64_t *")
    n = lib.synt_rows_missing(have, len(have), want, len(want), ffi.NULL, 0, needed)
    if n == EBUFSMALL:
        buf = ffi.new("uint8_t[]", needed[0])
        n = lib.synt_rows_missing(have, len(have), want, len(want), buf, needed[0], needed)
        if n >= 0:
            return _parse_items(ffi.buffer(buf, needed[0])[:], n)
    if n < 0:
        raise TableError(f"malformed rows ({n})")
    return []


def parse_rows(rows: bytes) -> list[Item]:
    """Every row, as Items."""
    return _parse_items(rows, rows_check(rows))


def make_rows(entries: Iterable[tuple[int, bytes, int, int, int, bytes]]) -> bytes:
    """Rows of (type, key, pid, start, time_ns, meta) entries of node 0, built in Python: what
    collect_rows() gives, for a few entries (the inverse of parse_rows)."""
    out = []
    for type_, key, pid, start, time_ns, meta in entries:
        row = _ITEM_HEAD.pack(0, type_, pid, start, time_ns, len(key), len(meta)) + key + meta
        out.append(row + b"\0" * (-len(row) % 8))
    return b"".join(out)


def parse_row(rows: bytes, off: int) -> Item:
    """The row at byte offset `off`."""
    return _parse_items(rows[off:off + _ITEM + sum(_ITEM_HEAD.unpack_from(rows, off)[5:])], 1)[0]


def _parse_items(data: bytes, n: int) -> list[Item]:
    out = []
    off = 0
    unpack = _ITEM_HEAD.unpack_from
    new = _new_entry  # Item without NamedTuple's Python-level __new__: listings build many
    for _ in range(n):
        node, type_, pid, start, t, kl, ml = unpack(data, off)
        d = off + _ITEM
        out.append(new(Item, (node, type_, pid, start, t, data[d:d + kl], data[d + kl:d + kl + ml])))
        off += (_ITEM + kl + ml + 7) & ~7
    return out


class JournalReader:
    """A lock-free cursor over a table's journal ring."""

    def __init__(self, table: Table, cursor: int, node: int = ALL_NODES) -> None:
        self.table = table
        self.cursor = ffi.new("uint64_t *", cursor)
        self.node = node
        self._gen = table.gen
        self._cap = 1 << 16
        self._buf = ffi.new("uint8_t[]", self._cap)

    def pending(self) -> bool:
        return self.table.journal_head() != self.cursor[0]

    def read(self, max_records: int = 4096) -> list[JournalRecord] | None:
        """The next records; None when the reader fell behind the ring (resync from the table)."""
        unpack = _JREC_HEAD.unpack_from
        if self._gen != self.table.gen:  # the table was rebound to a new segment: follow it from now
            self._gen = self.table.gen
            self.cursor[0] = self.table.journal_head()
            return []
        while True:
            n = lib.synt_journal_read_node(self.table._t, self.cursor, self._buf, self._cap, max_records,
                                           self.node)
            if n == EOVERRUN:
                return None
            if n == EBUFSMALL:
                self._cap *= 2
                self._buf = ffi.new("uint8_t[]", self._cap)
                continue
            if n < 0:
                raise TableError(f"journal of {self.table.name}: {n}")
            data = ffi.buffer(self._buf, self._cap)
            out = []
            off = 0
            for _ in range(n):
                seq, reclen, kind, reason, node, rnode, pid, start, t, kl, ml = unpack(data, off)
                d = off + _JREC
                out.append(_new_entry(JournalRecord, (seq, J_KINDS.get(kind, "?"), reason, node, rnode, pid, start, t,
                                                      data[d:d + kl], data[d + kl:d + kl + ml])))
                off += reclen
            return out


class AnnounceReader:
    """A cursor over a table's announce ring: (pid, start) of local processes that added entries."""

    def __init__(self, table: Table, cursor: int) -> None:
        self.table = table
        self.cursor = ffi.new("uint64_t *", cursor)
        self._pids = ffi.new("int64_t[]", 4096)
        self._starts = ffi.new("uint64_t[]", 4096)

    def pending(self) -> bool:
        return lib.synt_watch_head(self.table._t) != self.cursor[0]

    def read(self) -> list[tuple[int, int]] | None:
        """The next pairs, in the order announced (a pid reused by a new process comes after the
        old one); None after an overrun: call Table.announced() again and scan the table."""
        n = lib.synt_watch_read(self.table._t, self.cursor, self._pids, self._starts, 4096)
        if n == EOVERRUN:
            return None
        if n < 0:
            raise TableError(f"announce ring of {self.table.name}: {n}")
        return list(zip(self._pids[0:n], self._starts[0:n]))


def _describe(mm: mmap.mmap) -> str:
    """What the first header words of a segment that is no table of ours say (magic at 0, version at 8)."""
    if len(mm) < 16:
        return f"{len(mm)} bytes"
    magic, version = struct.unpack_from("<QQ", mm, 0)
    if magic == 0:
        return "no magic: half-created"
    return f"magic {magic:#x}, layout version {version}"


def iter_segments(prefix: str) -> Iterator[str]:
    """Names of the shm segments under /dev/shm that start with prefix (Linux)."""
    try:
        names = os.listdir("/dev/shm")
    except FileNotFoundError:
        return
    for n in names:
        if n.startswith(prefix.lstrip("/")):
            yield "/" + n
