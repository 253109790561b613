"""The table at its edges: a heap that cannot wedge (csrc/alloc.h), the ring protocol at the
exact boundary (csrc/ring.h), and a segment distrusted in every byte (csrc/layout.h, view.h):
tampered geometry, a wrapping undo record, random bytes flipped. Real segments, real forks."""
from __future__ import annotations

import os
import random
import signal
import struct
from typing import Callable

import pytest

from test_crash import Segments, fork_child

from syn_mp._native import ffi, lib
from syn_mp._table import (
    ALL_NODES, BY_KEY, BY_NODE, BY_PID, EFULL, INSERTED, MAX_META, PG, REG, UNCHANGED, UPDATED,
    Table, TableError, chunks_for,
)


@pytest.fixture
def segments():
    s = Segments()
    yield s
    s.close()


def in_child(fn: Callable[[], object], timeout: float = 60.0) -> int:
    """Run fn in a forked child; its exit status (0: returned; 3: raised). A child killed by a
    signal (SIGSEGV, SIGBUS) fails the caller's assertion, not pytest."""
    return wait_child(start_child(fn), timeout)


def start_child(fn: Callable[[], object]) -> int:
    """Fork a child that runs fn and exits 0 (returned) or 3 (raised); its pid."""
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            fn()
            code = 0
        finally:
            os._exit(code)
    return pid


def wait_child(pid: int, timeout: float = 60.0) -> int:
    """The wait status of a start_child child; a child still running after `timeout` is killed and
    fails the caller ("the child hung")."""
    import time
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the child hung")
        time.sleep(0.005)


def field(name: str) -> int:
    off = lib.synt_field_offset(name.encode())
    assert off >= 0, name
    return off


def u64(t: Table, name: str) -> int:
    return struct.unpack_from("=Q", t._mm, field(name))[0]


def put64(t: Table, name: str, v: int, index: int = 0) -> None:
    struct.pack_into("=Q", t._mm, field(name) + 8 * index, v)


# ------------------------------------------------------------------ the heap never wedges


def test_an_emptied_table_takes_any_size_again(segments):
    """The finding: filled with ~700-byte metas then emptied, the old heap refused both a 1.5 KiB
    and a 2-byte entry for the life of the segment."""
    t = segments.create(capacity=4096, heap=1 << 20)
    n = 0
    while t.put(REG, b"k%d" % n, 0, n, 1, 1, b"m" * 700)[0] == INSERTED:
        n += 1
    assert t.stats()["chunks_free"] < chunks_for(len(b"k0") + 700)
    for i in range(n):
        assert t.delete(REG, b"k%d" % i)[0] == 0
    st = t.stats()
    assert st["chunks_free"] == st["chunks"] and st["heap_used"] == 0
    assert t.put(REG, b"big", 0, 1, 1, 1, b"B" * 1536)[0] == INSERTED
    assert t.put(REG, b"small", 0, 1, 1, 1, b"s" * 2)[0] == INSERTED
    # and it fills to the last chunk again, with any mix of sizes
    sizes = [0, 2, 39, 40, 41, 152, 700, 1536, 9000, MAX_META]
    i = 0
    while True:
        meta = b"x" * sizes[i % len(sizes)]
        rc = t.put(PG, b"g", 0, 100 + i, 1, 1, meta)[0]
        if rc == EFULL:
            assert chunks_for(1 + len(meta)) > t.stats()["chunks_free"]
            break
        assert rc == INSERTED
        i += 1
    assert t.check() is None


def test_random_churn_never_refuses_what_the_free_chunks_hold(segments):
    """A randomized churn of a million operations with meta sizes from 0 to the limit, checked
    against a model of the chunks: EFULL exactly when the new entry's chunks exceed the free
    ones (or the entry count is at capacity), never otherwise; the heap never passes its chunks."""
    cap, heap = 512, 2 << 20
    t = segments.create(capacity=cap, heap=heap)
    chunks = t.stats()["chunks"]
    rnd = random.Random(20261202)
    keys = [b"key-%d" % i for i in range(900)]
    model: dict[bytes, int] = {}  # key -> meta length
    used = 0
    full = inserts = 0
    put, delete = lib.synt_put_local, lib.synt_delete_local
    ops = int(os.environ.get("SYN_MP_CHURN_OPS", "1000000"))
    metas = {}

    def meta_of(n: int) -> bytes:
        m = metas.get(n)
        if m is None:
            m = metas[n] = bytes([n & 0xff]) * n
        return m
    for step in range(ops):
        key = rnd.choice(keys)
        x = rnd.random()
        if x < 0.6:
            # mostly small, now and then up to the limit
            n = rnd.randrange(0, 64) if x < 0.45 else rnd.randrange(0, 2000) if x < 0.58 else rnd.randrange(0, MAX_META + 1)
            meta = meta_of(n)
            need = chunks_for(len(key) + n)
            old = model.get(key)
            rc = put(t.ptr, REG, key, len(key), 7, 1, meta, n)
            if old is not None and old == n:
                assert rc == UNCHANGED  # same meta (the bytes depend on the length only)
                continue
            room = chunks - used >= need and (old is not None or len(model) < cap)
            assert rc == (UPDATED if old is not None else INSERTED) if room else rc == EFULL, \
                (step, rc, need, chunks - used, len(model))
            if room:
                used += need - (chunks_for(len(key) + old) if old is not None else 0)
                model[key] = n
                inserts += 1
            else:
                full += 1
        else:
            rc = delete(t.ptr, REG, key, len(key), 7, 0)
            if key in model:
                assert rc == 0
                used -= chunks_for(len(key) + model.pop(key))
            else:
                assert rc == lib.SYNT_ENOTFOUND
        if step % 100000 == 0:
            st = t.stats()
            assert st["chunks"] - st["chunks_free"] == used <= chunks
            assert t.check() is None
    st = t.stats()
    assert st["chunks"] - st["chunks_free"] == used and st["count"] == len(model)
    assert t.check() is None
    assert full > ops // 1000 and inserts > ops // 4, (full, inserts)  # both sides of the rule were exercised


# ------------------------------------------------------------------ the ring at its boundary


def test_an_announce_reader_exactly_one_ring_behind_never_takes_the_slot_being_overwritten(segments):
    """The finding: a reader exactly one ring behind accepted the slot a stopped writer had begun
    to overwrite, so the process announced there was never watched. At every hook point of that
    writer, the reader gets either the exact pairs announced or an overrun (then it rescans)."""
    wring = 4096
    for n in range(64):
        t = segments.create(capacity=8192, heap=8 << 20)
        r = t.announced()
        for i in range(wring):
            assert t.put(PG, b"g", 0, 1000 + i, 1, 0, b"")[0] == INSERTED
        assert lib.synt_watch_head(t._t) == r.cursor[0] + wring  # the oldest slot, still intact
        writer = fork_child(t.name, lambda c: c.put(PG, b"g", 0, 99999, 5, 0, b""), n,
                            arm=lib.synt_test_sigstop_after)
        _, status = os.waitpid(writer, os.WUNTRACED)
        try:
            got = r.read()
            assert got is None or got == [(1000 + i, 1) for i in range(wring)], \
                f"stopped at hook point {n}: the reader took a pair being overwritten: {got[:2]}"
        finally:
            if os.WIFSTOPPED(status):
                os.kill(writer, signal.SIGCONT)
                os.waitpid(writer, 0)
        segments.drop(t)
        if not os.WIFSTOPPED(status):
            break
    assert n > 3


# ------------------------------------------------------------------ distrust every byte


@pytest.mark.parametrize("name,value", [
    ("nbuckets", 1 << 40), ("nbuckets", 3), ("buckets_off", 1 << 62), ("journal_off", 8),
    ("journal_size", 1 << 63), ("heap_off", 1 << 63), ("nchunks", 1 << 40), ("capacity", 0),
    ("vers_off", 1 << 62),
])
def test_a_segment_with_impossible_geometry_is_refused_at_attach(segments, name, value):
    t = segments.create()
    put64(t, name, value)
    with pytest.raises(TableError):
        Table.attach(t.name)


def test_geometry_rewritten_after_attach_is_never_followed(segments):
    """The geometry is copied at attach and never read from the segment again: rewriting it under
    a reader (its owner may, when root reads its node) changes nothing the reader does."""
    t = segments.create()
    for i in range(20):
        t.put(REG, b"n%d" % i, 0, i, 1, 1, b"m%d" % i)
        t.put(PG, b"g", 0, i, 1, 1, b"")
    for name in ("nbuckets", "buckets_off", "vers_off", "journal_off", "journal_size", "heap_off", "nchunks",
                 "capacity"):
        put64(t, name, (1 << 63) - 8)

    def reads() -> None:
        assert t.get(REG, b"n7").meta == b"m7"
        assert len(t.collect(BY_KEY, PG, b"g")) == 20
        assert t.count(BY_NODE, REG, node=ALL_NODES) == 20
        assert len(t.collect(BY_NODE, 0, node=ALL_NODES)) == 40
        t.journal(0).read()
        t.stats()
    assert in_child(reads) == 0


def test_an_undo_record_whose_offset_wraps_is_not_followed_by_the_repair(segments):
    """The old bounds check `off + 8 <= size` wrapped: a rollback wrote 8 chosen bytes outside
    the mapping. A writer dies mid-operation, its log is rewritten to point past the end, and
    the repair (by the checker, in a child) must neither crash nor write there."""
    for off in ((1 << 64) - 4, (1 << 64) - 8, 1 << 63, 0):
        t = segments.create()
        t.put(REG, b"a", 0, 1, 1, 1, b"x")
        assert os.WIFSIGNALED(os.waitpid(fork_child(t.name, lambda c: c.put(REG, b"b", 0, 1, 1, 1, b"y"), 4), 0)[1])
        assert u64(t, "undo_n") > 0
        struct.pack_into("=QQ", t._mm, field("undo"), off, 0xDEADBEEF)
        assert in_child(lambda: t.check()) == 0
        segments.drop(t)


def _reads_of_everything(t: Table, keys: list[bytes]) -> None:
    for k in keys:
        for call in (lambda: t.get(REG, k), lambda: t.get(PG, k, 0, 3),
                     lambda: t.collect(BY_KEY, PG, k), lambda: t.collect_packed(BY_KEY, PG, k, flags=0),
                     lambda: t.count(BY_KEY, PG, k), lambda: t.read_reg(k)):
            try:
                call()
            except TableError:
                pass  # a corrupt table is an error, never a crash
    for call in (lambda: t.collect(BY_NODE, 0, node=ALL_NODES), lambda: t.collect(BY_PID, 0, node=0, pid=3),
                 lambda: t.count(BY_NODE, REG, node=ALL_NODES), lambda: t.stats(),
                 lambda: t.journal(0).read(), lambda: t.node_names(),
                 lambda: lib.synt_watch_read(t._t, ffi.new("uint64_t *", 0), ffi.new("int64_t[]", 64),
                                             ffi.new("uint64_t[]", 64), 64)):
        try:
            call()
        except (TableError, UnicodeDecodeError):
            pass


def test_random_bytes_flipped_anywhere_give_errors_never_a_crash(segments):
    """Fuzz the segment's bytes, not only the API: flip random bytes across the header, the
    buckets, the journal and the heap of a filled table, and read it every way after each batch,
    in a child; it must never die of a signal or hang. The rounds' children run at once (each its
    own table and seed), using every core."""
    tables = []
    children = {}
    for round_ in range(12):
        rnd = random.Random(7 + round_)
        t = segments.create(capacity=256, heap=256 << 10)
        keys = [b"name-%d" % i for i in range(40)] + [b"k" * 300]
        for i, k in enumerate(keys):
            t.put(REG, k, 0, i, 1, 1, b"m" * rnd.randrange(0, 600))
            t.put(PG, k, 0, 3, 1, 1, b"p" * rnd.randrange(0, 200))
        used = lib.synt_layout_size(256, 256 << 10, 1 << 16)
        hot = [field(f) for f in ("seq", "undo_n", "count", "top", "free_head", "nnodes", "j_head",
                                  "j_min_valid", "w_head", "w_min_valid")]

        def fuzz(t: Table = t, keys: list = keys, rnd: random.Random = rnd, used: int = used,
                 hot: list = hot) -> None:
            for _ in range(40):
                for _ in range(rnd.randrange(1, 16)):
                    if rnd.random() < 0.3:
                        at = rnd.choice(hot) + rnd.randrange(8)
                    else:
                        at = rnd.randrange(len(t._mm) if rnd.random() < 0.5 else min(used, len(t._mm)))
                    t._mm[at] = rnd.randrange(256)
                _reads_of_everything(t, keys)
        tables.append(t)
        children[round_] = start_child(fuzz)
    statuses = {}
    for round_, pid in children.items():  # every child waited for before any verdict
        try:
            statuses[round_] = wait_child(pid)
        except AssertionError:  # killed: it hung
            statuses[round_] = None
    for t in tables:
        segments.drop(t)
    for round_, status in statuses.items():
        assert status is not None, f"round {round_}: the reader hung"
        assert os.WIFEXITED(status), f"round {round_}: the reader died of signal {os.WTERMSIG(status)}"
        assert os.WEXITSTATUS(status) == 0, f"round {round_}: a read raised something else than TableError"
