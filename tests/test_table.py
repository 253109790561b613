"""The shared-memory table (csrc/table.c through syn_mp._table.Table), used directly on segments
each test creates and unlinks: semantics of every call, limits, the journal ring, the checker,
and lock-free readers against a real writer process."""
from __future__ import annotations

import ast
import multiprocessing
import os
import random
import struct
import time
import uuid
from typing import Callable, Iterator

import posix_ipc
import pytest

from conftest import in_fork, raw_seq, read_all

from syn_mp._native import ffi, lib
from syn_mp._table import (
    CHUNK, chunks_for,
    ALL_NODES, BY_KEY, BY_NODE, BY_PID, EFULL, EMISMATCH, ENOTFOUND, ETAKEN, F_EXPECT_VER,
    F_FORCE, F_MATCH_PID, FLAG_STRICT, INSERTED, PG, R_CONFLICT, R_NODE_DOWN, R_NORMAL, R_PROCESS_EXIT, REG,
    UNCHANGED, UPDATED, WITH_KEY, WITH_META, Table, TableError,
)

ETOOBIG = lib.SYNT_ETOOBIG
MAX_KEY = lib.SYNT_MAX_KEY
MAX_META = lib.SYNT_MAX_META
JREC = ffi.sizeof("synt_jrec_t")
CHECK_EVERY = 250
STEPS = 5000


def seg_name() -> str:
    return f"/synmp-test-{os.getpid()}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def make_table() -> Iterator[Callable[..., Table]]:
    """Table.create on a fresh uniquely named segment; every segment is unlinked at teardown."""
    names: list[str] = []

    def make(capacity: int = 64, heap: int = 1 << 20, journal: int = 1 << 16, node: str = "n1") -> Table:
        name = seg_name()
        names.append(name)
        return Table.create(name, node, capacity, heap, journal)
    yield make
    for n in names:
        try:
            posix_ipc.unlink_shared_memory(n)
        except posix_ipc.ExistentialError:
            pass


def sound(t: Table) -> None:
    err = t.check()
    assert err is None, f"table invariant broken: {err}"


def snapshot(t: Table) -> dict:
    """Everything the table holds: (type, key, node, pid) -> (start, time_ns, meta)."""
    return {(i.type, i.key, i.node, i.pid): (i.start, i.time_ns, i.meta)
            for i in t.collect(BY_NODE, 0, node=ALL_NODES)}


# ------------------------------------------------------------------ put / get


def test_registry_put_get_round_trip(make_table):
    t = make_table()
    rc, info = t.put(REG, b"name", 0, 4242, 777, 123456789, b"meta-bytes")
    assert rc == INSERTED
    assert (info.node, info.type, info.pid, info.start, info.time_ns, info.metalen) == (0, REG, 4242, 777, 123456789, 10)
    e = t.get(REG, b"name")
    assert e is not None
    assert (e.node, e.pid, e.start, e.time_ns, e.meta) == (0, 4242, 777, 123456789, b"meta-bytes")
    assert e.ver >= 1
    assert t.get(REG, b"other") is None
    assert t.get(PG, b"name", 0, 4242) is None  # a name is not a group
    assert t.stats()["reg_count"] == 1 and t.stats()["pg_count"] == 0
    sound(t)


def test_group_put_get_round_trip_per_member(make_table):
    t = make_table()
    n2 = t.node_id("n2", create=True)
    assert t.put(PG, b"g", 0, 10, 1, 5, b"ten")[0] == INSERTED
    assert t.put(PG, b"g", 0, 11, 2, 6, b"")[0] == INSERTED
    assert t.put(PG, b"g", n2, 10, 3, 7, b"remote ten")[0] == INSERTED
    assert t.get(PG, b"g", 0, 10)[:6] == (0, 10, 1, 5, t.get(PG, b"g", 0, 10).ver, b"ten")
    assert t.get(PG, b"g", 0, 11).meta == b""
    e = t.get(PG, b"g", n2, 10)
    assert (e.node, e.pid, e.start, e.meta) == (n2, 10, 3, b"remote ten")
    assert t.get(PG, b"g", 0, 12) is None
    assert t.get(REG, b"g") is None  # a group is not a name
    assert t.count(BY_KEY, PG, b"g") == 3
    assert t.stats()["pg_count"] == 3
    sound(t)


def test_registry_name_held_by_another_pid_is_taken(make_table):
    t = make_table()
    t.put(REG, b"n", 0, 100, 1, 1, b"first")
    rc, info = t.put(REG, b"n", 0, 200, 2, 2, b"second")
    assert rc == ETAKEN
    assert (info.node, info.pid, info.start) == (0, 100, 1)  # reports the holder
    n2 = t.node_id("n2", create=True)
    assert t.put(REG, b"n", n2, 100, 1, 3, b"x")[0] == ETAKEN  # same pid on another node is another process
    assert t.put(REG, b"n", 0, 100, 99, 3, b"x")[0] == ETAKEN  # a reused pid (other start) too
    e = t.get(REG, b"n")
    assert (e.pid, e.start, e.meta) == (100, 1, b"first")
    assert t.stats()["count"] == 1
    sound(t)


def test_same_pid_same_meta_is_unchanged_other_meta_is_updated(make_table):
    t = make_table()
    rc, info = t.put(REG, b"n", 0, 100, 1, 10, b"m1")
    v1 = info.ver
    head = t.journal_head()
    rc, info = t.put(REG, b"n", 0, 100, 1, 20, b"m1")
    assert rc == UNCHANGED and info.ver == v1
    assert t.journal_head() == head  # nothing happened, nothing journaled
    assert t.get(REG, b"n").time_ns == 10
    rc, info = t.put(REG, b"n", 0, 100, 1, 30, b"m2")
    assert rc == UPDATED and info.ver > v1
    e = t.get(REG, b"n")
    assert (e.meta, e.time_ns, e.ver) == (b"m2", 30, info.ver)
    # the same for a group member
    assert t.put(PG, b"g", 0, 100, 1, 1, b"a")[0] == INSERTED
    assert t.put(PG, b"g", 0, 100, 1, 2, b"a")[0] == UNCHANGED
    assert t.put(PG, b"g", 0, 100, 1, 3, b"b")[0] == UPDATED
    assert t.get(PG, b"g", 0, 100).meta == b"b"
    assert t.stats()["count"] == 2
    sound(t)


def test_expect_ver_compare_and_set(make_table):
    t = make_table()
    rc, info = t.put(REG, b"n", 0, 100, 1, 1, b"v1")
    ver = info.ver
    # not found
    rc, _ = t.put(REG, b"missing", 0, 100, 1, 1, b"x", F_EXPECT_VER, 1)
    assert rc == ENOTFOUND and t.get(REG, b"missing") is None
    # wrong version: nothing changes, the current entry is reported
    rc, info = t.put(REG, b"n", 0, 100, 1, 2, b"v2", F_EXPECT_VER, ver + 1000)
    assert rc == EMISMATCH and info.ver == ver
    assert t.get(REG, b"n").meta == b"v1"
    # right version but another holder
    rc, info = t.put(REG, b"n", 0, 200, 1, 2, b"v2", F_EXPECT_VER, ver)
    assert rc == EMISMATCH and info.pid == 100
    # right version: updated, and the old version is now stale
    rc, info = t.put(REG, b"n", 0, 100, 1, 3, b"v2", F_EXPECT_VER, ver)
    assert rc == UPDATED and info.ver != ver
    assert t.put(REG, b"n", 0, 100, 1, 4, b"v3", F_EXPECT_VER, ver)[0] == EMISMATCH
    assert t.get(REG, b"n").meta == b"v2"
    # groups too
    ver_g = t.put(PG, b"g", 0, 5, 1, 1, b"a")[1].ver
    assert t.put(PG, b"g", 0, 5, 1, 1, b"b", F_EXPECT_VER, ver_g + 1)[0] == EMISMATCH
    assert t.put(PG, b"g", 0, 6, 1, 1, b"b", F_EXPECT_VER, ver_g)[0] == ENOTFOUND
    assert t.put(PG, b"g", 0, 5, 1, 1, b"b", F_EXPECT_VER, ver_g)[0] == UPDATED
    sound(t)


def test_delete_with_match_pid_mismatch_keeps_the_name(make_table):
    t = make_table()
    t.put(REG, b"n", 0, 100, 1, 1, b"m")
    head = t.journal_head()
    rc, info = t.delete(REG, b"n", 0, 200, F_MATCH_PID)
    assert rc == EMISMATCH and info.pid == 100
    n2 = t.node_id("n2", create=True)
    assert t.delete(REG, b"n", n2, 100, F_MATCH_PID)[0] == EMISMATCH
    assert t.get(REG, b"n").pid == 100 and t.journal_head() == head
    assert t.delete(REG, b"missing", 0, 100, F_MATCH_PID)[0] == ENOTFOUND
    rc, info = t.delete(REG, b"n", 0, 100, F_MATCH_PID)
    assert rc == 0 and info.pid == 100
    assert t.get(REG, b"n") is None
    # without MATCH_PID any holder goes
    t.put(REG, b"n", 0, 100, 1, 1, b"m")
    assert t.delete(REG, b"n", 0, 999)[0] == 0
    # group delete is per member
    t.put(PG, b"g", 0, 1, 1, 1, b"")
    t.put(PG, b"g", 0, 2, 1, 1, b"")
    assert t.delete(PG, b"g", 0, 3)[0] == ENOTFOUND
    assert t.delete(PG, b"g", 0, 1)[0] == 0
    assert t.get(PG, b"g", 0, 1) is None and t.get(PG, b"g", 0, 2) is not None
    assert t.stats()["count"] == 1
    sound(t)


def test_self_writes_take_the_identity_set_in_this_process_and_a_forked_child_forgets_it(make_table):
    """put_self / unreg_local (the API's hot path) write as the (pid, start) given to set_self;
    a forked child gets ENOSELF until it sets its own, so it never writes as its parent."""
    from syn_mp._table import ENOSELF, put_self, set_self, unreg_local
    t = make_table()
    me, start = os.getpid(), 4242
    set_self(me, start)
    assert put_self(t.ptr, REG, b"mine", 4, b"\x01", 1) == INSERTED
    e = t.get(REG, b"mine")
    assert (e.node, e.pid, e.start, e.meta) == (0, me, start, b"\x01")
    def child() -> list[int]:
        got = [put_self(t.ptr, REG, b"kid", 3, b"\xc0", 1)]
        t.set_flags(t.flags | FLAG_STRICT)
        got.append(unreg_local(t.ptr, b"mine", 4))  # strict: whose? unknown yet
        set_self(os.getpid(), 7)
        got.append(put_self(t.ptr, REG, b"kid", 3, b"\xc0", 1))
        got.append(unreg_local(t.ptr, b"mine", 4))  # strict: the parent's, not ours
        got.append(unreg_local(t.ptr, b"kid", 3))
        return got
    assert in_fork(child) == repr([ENOSELF, ENOSELF, INSERTED, EMISMATCH, 0])
    assert t.get(REG, b"kid") is None and t.get(REG, b"mine").pid == me
    # not strict: any process of node 0 may unregister, self set or not
    t.set_flags(t.flags & ~FLAG_STRICT)
    assert unreg_local(t.ptr, b"mine", 4) == 0
    sound(t)


def test_forced_takeover_replaces_the_holder_and_journals_both_sides(make_table):
    t = make_table()
    t.put(REG, b"n", 0, 100, 1, 1, b"old")
    r = t.journal()
    rc, info = t.put(REG, b"n", 0, 200, 2, 2, b"new", F_FORCE, reason=R_CONFLICT, reason_node=0)
    assert rc == INSERTED and info.pid == 200
    e = t.get(REG, b"n")
    assert (e.pid, e.start, e.meta) == (200, 2, b"new")
    recs = r.read()
    assert [(x.kind, x.pid, x.meta, x.reason) for x in recs] == [
        ("unregistered", 100, b"old", R_CONFLICT), ("registered", 200, b"new", R_CONFLICT)]
    assert recs[1].seq == recs[0].seq + 1
    assert t.stats()["count"] == 1
    sound(t)


def test_group_join_by_reused_pid_replaces_stale_member_as_left_and_joined(make_table):
    """Same (group, node, pid) with another start time: the dead process's membership goes."""
    t = make_table()
    t.put(PG, b"g", 0, 100, 1, 1, b"dead")
    r = t.journal()
    rc, _ = t.put(PG, b"g", 0, 100, 2, 2, b"alive")
    assert rc == INSERTED
    e = t.get(PG, b"g", 0, 100)
    assert (e.start, e.meta) == (2, b"alive")
    assert [(x.kind, x.start, x.meta) for x in r.read()] == [("left", 1, b"dead"), ("joined", 2, b"alive")]
    assert t.stats()["pg_count"] == 1
    sound(t)


# ------------------------------------------------------------------ purges


def test_purge_pid_with_start_filter_keeps_a_reused_pid(make_table):
    t = make_table()
    n2 = t.node_id("n2", create=True)
    t.put(REG, b"old-name", 0, 100, 1, 1, b"")
    t.put(PG, b"g", 0, 100, 1, 1, b"")
    t.put(REG, b"new-name", 0, 100, 2, 1, b"")  # pid 100 reused: a different process
    t.put(PG, b"g2", 0, 100, 2, 1, b"")
    t.put(REG, b"remote", n2, 100, 1, 1, b"")   # pid 100 of another node
    t.put(REG, b"other", 0, 101, 1, 1, b"")
    r = t.journal()
    assert t.purge_pid(0, 100, 1, R_PROCESS_EXIT) == 2
    assert t.get(REG, b"old-name") is None and t.get(PG, b"g", 0, 100) is None
    assert t.get(REG, b"new-name").start == 2 and t.get(PG, b"g2", 0, 100).start == 2
    assert t.get(REG, b"remote") is not None and t.get(REG, b"other") is not None
    recs = r.read()
    assert sorted((x.kind, x.key) for x in recs) == [("left", b"g"), ("unregistered", b"old-name")]
    assert all(x.reason == R_PROCESS_EXIT and x.pid == 100 and x.start == 1 for x in recs)
    assert t.purge_pid(0, 100, 1, R_PROCESS_EXIT) == 0
    # start 0: every entry of the pid on that node
    assert t.purge_pid(0, 100, 0, R_PROCESS_EXIT) == 2
    assert t.get(REG, b"remote") is not None
    assert t.count(BY_PID, 0, node=0, pid=100) == 0
    assert t.stats()["count"] == 2
    sound(t)


def test_purge_node_removes_only_that_nodes_entries(make_table):
    t = make_table()
    n2 = t.node_id("n2", create=True)
    n3 = t.node_id("n3", create=True)
    for i in range(5):
        t.put(REG, b"a%d" % i, n2, i, 1, 1, b"")
        t.put(PG, b"g", n2, i, 1, 1, b"")
        t.put(PG, b"g", 0, i, 1, 1, b"")
    t.put(REG, b"b", n3, 1, 1, 1, b"")
    r = t.journal()
    assert t.purge_node(n2, R_NODE_DOWN, n2) == 10
    assert t.count(BY_NODE, REG, node=n2) == 0 and t.count(BY_NODE, PG, node=n2) == 0
    assert t.count(BY_KEY, PG, b"g") == 5 and t.get(REG, b"b") is not None
    recs = r.read()
    assert len(recs) == 10 and all(x.node == n2 and x.reason == R_NODE_DOWN and x.reason_node == n2 for x in recs)
    assert t.purge_node(n2, R_NODE_DOWN) == 0
    assert t.purge_node(200, R_NODE_DOWN) == ENOTFOUND
    sound(t)


# ------------------------------------------------------------------ collect / count


@pytest.fixture
def populated(make_table):
    t = make_table()
    n2 = t.node_id("n2", create=True)
    t.put(REG, b"r-a", 0, 1, 11, 100, b"ma")
    t.put(REG, b"r-b", 0, 2, 22, 200, b"mb")
    t.put(REG, b"r-c", n2, 1, 33, 300, b"mc")
    t.put(PG, b"g", 0, 1, 11, 400, b"g1")
    t.put(PG, b"g", 0, 2, 22, 500, b"g2")
    t.put(PG, b"g", n2, 1, 33, 600, b"g3")
    t.put(PG, b"h", 0, 1, 11, 700, b"h1")
    return t, n2


def test_collect_by_key_with_node_filter(populated):
    t, n2 = populated
    got = t.collect(BY_KEY, PG, b"g")
    assert sorted((i.node, i.pid, i.start, i.time_ns, i.key, i.meta) for i in got) == [
        (0, 1, 11, 400, b"g", b"g1"), (0, 2, 22, 500, b"g", b"g2"), (n2, 1, 33, 600, b"g", b"g3")]
    assert all(i.type == PG for i in got)
    assert sorted(i.pid for i in t.collect(BY_KEY, PG, b"g", node=0)) == [1, 2]
    assert [(i.node, i.meta) for i in t.collect(BY_KEY, PG, b"g", node=n2)] == [(n2, b"g3")]
    assert [i.pid for i in t.collect(BY_KEY, REG, b"r-b")] == [2]
    assert t.collect(BY_KEY, REG, b"r-b", node=n2) == []
    assert t.collect(BY_KEY, PG, b"nope") == []


def test_collect_by_pid(populated):
    t, n2 = populated
    got = t.collect(BY_PID, 0, node=0, pid=1)
    assert sorted((i.type, i.key) for i in got) == [(REG, b"r-a"), (PG, b"g"), (PG, b"h")]
    assert sorted(i.key for i in t.collect(BY_PID, PG, node=0, pid=1)) == [b"g", b"h"]
    assert [(i.key, i.node) for i in t.collect(BY_PID, REG, node=n2, pid=1)] == [(b"r-c", n2)]
    assert t.collect(BY_PID, 0, node=0, pid=99) == []


def test_collect_by_node_one_and_all(populated):
    t, n2 = populated
    assert sorted(i.key for i in t.collect(BY_NODE, REG, node=0)) == [b"r-a", b"r-b"]
    assert sorted((i.key, i.pid) for i in t.collect(BY_NODE, PG, node=n2)) == [(b"g", 1)]
    assert sorted(i.key for i in t.collect(BY_NODE, REG, node=ALL_NODES)) == [b"r-a", b"r-b", b"r-c"]
    assert len(t.collect(BY_NODE, 0, node=ALL_NODES)) == 7
    assert len(t.collect(BY_NODE, PG, node=ALL_NODES)) == 4
    assert t.collect(BY_NODE, REG, node=77) == []  # no such node


def test_collect_without_key_or_meta(populated):
    t, _ = populated
    for flags, key, meta in ((0, False, False), (WITH_KEY, True, False), (WITH_META, False, True)):
        got = t.collect(BY_KEY, PG, b"g", flags=flags)
        assert len(got) == 3
        assert all((i.key == b"g") == key and (i.key == b"") == (not key) for i in got)
        assert all((i.meta != b"") == meta for i in got)
        assert sorted(i.pid for i in got) == [1, 1, 2]


def test_collect_grows_its_buffer_for_large_results(make_table):
    t = make_table(capacity=64)
    metas = {b"k%02d" % i: bytes([i]) * (1000 + i) for i in range(40)}
    for k, m in metas.items():
        t.put(REG, k, 0, 1, 1, 1, m)
    got = t.collect(BY_NODE, REG, node=0)
    assert {i.key: i.meta for i in got} == metas
    big = b"z" * MAX_META
    t.put(PG, b"big", 0, 1, 1, 1, big)
    assert t.get(PG, b"big", 0, 1).meta == big
    assert [i.meta for i in t.collect(BY_KEY, PG, b"big")] == [big]


def test_count_uses_counters_and_matches_collect(populated):
    t, n2 = populated
    assert t.count(BY_NODE, REG, node=ALL_NODES) == 3
    assert t.count(BY_NODE, PG, node=ALL_NODES) == 4
    assert t.count(BY_NODE, REG, node=0) == 2 and t.count(BY_NODE, REG, node=n2) == 1
    assert t.count(BY_NODE, PG, node=0) == 3 and t.count(BY_NODE, PG, node=n2) == 1
    assert t.count(BY_NODE, REG, node=150) == 0
    assert t.count(BY_NODE, 0, node=ALL_NODES) == 7
    assert t.count(BY_KEY, PG, b"g") == 3 and t.count(BY_KEY, PG, b"g", node=n2) == 1
    assert t.count(BY_KEY, REG, b"r-a") == 1 and t.count(BY_KEY, REG, b"zz") == 0
    assert t.count(BY_PID, 0, node=0, pid=1) == 3 and t.count(BY_PID, PG, node=0, pid=1) == 2
    st = t.stats()
    assert (st["count"], st["reg_count"], st["pg_count"]) == (7, 3, 4)
    # counters follow deletes and purges
    t.delete(PG, b"g", 0, 2)
    t.purge_node(n2, R_NODE_DOWN)
    assert t.count(BY_NODE, PG, node=ALL_NODES) == 2 and t.count(BY_NODE, REG, node=n2) == 0
    assert t.count(BY_NODE, REG, node=ALL_NODES) == 2
    assert t.stats()["count"] == 4
    sound(t)


# ------------------------------------------------------------------ nodes


def test_node_id_create_lookup_and_name(make_table):
    t = make_table(node="local-node")
    assert t.node_id("local-node") == 0 and t.node_name(0) == "local-node"
    assert t.node_id("n2") is None  # lookup does not create
    a = t.node_id("n2", create=True)
    assert a == 1 and t.node_id("n2", create=True) == 1 and t.node_id("n2") == 1
    b = t.node_id("ñode-3", create=True)
    assert b == 2 and t.node_name(2) == "ñode-3" and t.node_name(1) == "n2"
    assert t.stats()["nnodes"] == 3
    # another mapping of the same segment sees the same ids
    other = Table.attach(t.name)
    assert other.node_id("ñode-3") == 2 and other.node_name(1) == "n2"
    assert lib.synt_node_id(t._t, b"x" * 256, 256, 1) == ETOOBIG
    assert lib.synt_node_id(t._t, b"", 0, 1) == ETOOBIG
    for i in range(3, lib.SYNT_MAX_NODES):
        assert t.node_id(f"node-{i}", create=True) == i
    with pytest.raises(TableError):
        t.node_id("one-too-many", create=True)  # EFULL
    assert t.node_id("one-too-many") is None
    sound(t)


def test_retired_node_ids_are_reused_once_full_and_readers_never_show_an_old_name(make_table):
    t = make_table(node="local-node")
    reader = Table.attach(t.name)  # another process's mapping, with its own cache of names by id
    for i in range(1, lib.SYNT_MAX_NODES):
        assert t.node_id(f"pod-{i}", create=True) == i
    assert reader.node_name(7) == "pod-7" and reader.node_names()[9] == "pod-9"  # cached now
    assert t.put(REG, b"k", 7, 123, 1, 1, b"")[0] == INSERTED
    assert not t.retire_node(7)  # it holds an entry
    assert not t.retire_node(0) and not t.retire_node(lib.SYNT_MAX_NODES)
    gen = lib.synt_node_gen(t._t)
    assert t.purge_node(7, R_NODE_DOWN, 7) == 1
    assert t.retire_node(7) and t.retire_node(9) and t.retire_node(9)  # twice is fine
    assert t.node_id("pod-7") is None and t.node_name(7) == "pod-7"  # not found; journal readers still name it
    assert lib.synt_node_gen(t._t) == gen  # nothing reused yet: cached names hold
    assert t.node_id("new-a", create=True) in (7, 9) and t.node_id("new-b", create=True) in (7, 9)
    assert lib.synt_node_gen(t._t) == gen + 2
    with pytest.raises(TableError):
        t.node_id("one-too-many", create=True)
    for r in (t, reader):
        assert {r.node_name(7), r.node_name(9)} == {"new-a", "new-b"}
        assert {r.node_names()[7], r.node_names()[9]} == {"new-a", "new-b"}
        assert r.node_id("pod-7") is None and r.node_id("new-a") in (7, 9)
    assert t.put(REG, b"k", t.node_id("new-a"), 5, 1, 1, b"")[0] == INSERTED
    assert reader.node_name(reader.get(REG, b"k").node) == "new-a"
    sound(t)


def test_write_to_unknown_node_is_rejected(make_table):
    t = make_table()
    assert t.put(REG, b"n", 5, 1, 1, 1, b"")[0] == ETOOBIG
    assert t.stats()["count"] == 0


def test_a_pid_outside_int32_is_refused_and_matches_nothing(make_table):
    """A head stores the pid in 32 bits (OS pids are below 2^22): a put of any other is refused
    whole, and a read or purge by such a pid finds nothing rather than a truncated pid's entries."""
    t = make_table()
    for p in ((1 << 31) - 1, -(1 << 31), 7):
        assert t.put(REG, b"n%d" % p, 0, p, 1, 1, b"")[0] == INSERTED
        assert t.get(REG, b"n%d" % p).pid == p
    for p in (1 << 31, -(1 << 31) - 1, (1 << 32) + 7, (1 << 63) - 1):
        assert t.put(REG, b"big", 0, p, 1, 1, b"")[0] == lib.SYNT_EBADPID
        assert t.put(PG, b"g", 0, p, 1, 1, b"")[0] == lib.SYNT_EBADPID
        assert t.purge_pid(0, p, 1, 0) == 0
    assert t.stats()["count"] == 3 and t.get(REG, b"n7").pid == 7
    sound(t)


# ------------------------------------------------------------------ limits


def test_capacity_full_returns_efull_and_changes_nothing(make_table):
    cap = 20
    t = make_table(capacity=cap)
    for i in range(cap):
        assert t.put(REG if i % 2 else PG, b"k%d" % i, 0, i, 1, 1, b"m")[0] == INSERTED
    head, before = t.journal_head(), snapshot(t)
    assert t.put(REG, b"one-more", 0, 1, 1, 1, b"m")[0] == EFULL
    assert t.put(PG, b"k0", 0, 999, 1, 1, b"m")[0] == EFULL
    assert t.get(REG, b"one-more") is None
    assert snapshot(t) == before and t.journal_head() == head
    assert t.stats()["count"] == cap
    sound(t)
    # updates and takeovers of existing entries need no room
    assert t.put(REG, b"k1", 0, 1, 1, 1, b"other")[0] == UPDATED
    assert t.put(REG, b"k1", 0, 77, 1, 1, b"x", F_FORCE)[0] == INSERTED
    assert t.stats()["count"] == cap
    # deleting one makes room again
    assert t.delete(REG, b"k3")[0] == 0
    assert t.put(REG, b"one-more", 0, 1, 1, 1, b"m")[0] == INSERTED
    assert t.put(REG, b"two-more", 0, 1, 1, 1, b"m")[0] == EFULL
    sound(t)


def test_heap_exhaustion_returns_efull_and_stays_usable(make_table):
    t = make_table(capacity=64, heap=128 << 10)  # 1024 chunks
    big = b"B" * (MAX_META - 16)
    each = chunks_for(len(b"big0") + len(big))
    n = 0
    while True:
        rc = t.put(REG, b"big%d" % n, 0, n, 1, 1, big)[0]
        if rc == EFULL:
            break
        assert rc == INSERTED
        n += 1
        assert n < 64
    assert n == t.stats()["chunks"] // each  # every chunk the heap has can serve (no fragmentation)
    before, head = snapshot(t), t.journal_head()
    assert t.put(PG, b"another", 0, 1, 1, 1, big)[0] == EFULL
    assert snapshot(t) == before and t.journal_head() == head
    sound(t)
    # an update needs its new chunks before it frees the old ones (readers may still read them):
    # no room either, and no harm
    assert t.put(REG, b"big0", 0, 0, 1, 1, big[:-1] + b"C")[0] == EFULL
    assert t.get(REG, b"big0").meta == big
    sound(t)
    # freeing an entry makes room for one of its size
    assert t.delete(REG, b"big1")[0] == 0
    assert t.put(REG, b"again", 0, 9, 1, 1, big)[0] == INSERTED
    assert t.get(REG, b"again").meta == big
    assert t.stats()["count"] == n
    sound(t)


def test_key_and_meta_size_limits(make_table):
    t = make_table()
    key, meta = b"k" * MAX_KEY, b"m" * MAX_META
    assert MAX_KEY == 1024 and MAX_META == 16384
    assert t.put(REG, key, 0, 1, 1, 1, meta)[0] == INSERTED
    e = t.get(REG, key)
    assert e.meta == meta
    assert t.put(PG, key, 0, 1, 1, 1, meta)[0] == INSERTED
    assert t.collect(BY_KEY, PG, key)[0].key == key
    assert t.put(REG, key + b"k", 0, 1, 1, 1, b"")[0] == ETOOBIG
    assert t.put(REG, b"short", 0, 1, 1, 1, meta + b"m")[0] == ETOOBIG
    assert t.put(PG, b"short", 0, 1, 1, 1, meta + b"m")[0] == ETOOBIG
    assert t.delete(REG, key + b"k")[0] == ETOOBIG
    assert t.get(REG, b"short") is None
    assert lib.synt_collect(t._t, BY_KEY, REG, key + b"k", MAX_KEY + 1, ALL_NODES, 0, 0, ffi.NULL, 0,
                            ffi.NULL) == ETOOBIG
    assert t.stats()["count"] == 2
    r = t.journal(0)
    recs = r.read()
    assert [(x.key, x.meta) for x in recs] == [(key, meta), (key, meta)]
    sound(t)


# ------------------------------------------------------------------ journal


def test_journal_records_every_change_in_order(make_table):
    t = make_table()
    n2 = t.node_id("n2", create=True)
    r = t.journal()
    t.put(REG, b"a", 0, 1, 10, 111, b"m1")
    t.put(REG, b"a", 0, 1, 10, 112, b"m1")          # unchanged: no record
    t.put(REG, b"a", 0, 1, 10, 113, b"m2")
    t.put(REG, b"a", 0, 2, 20, 114, b"x")           # taken: no record
    t.put(PG, b"g", 0, 1, 10, 115, b"j")
    t.put(PG, b"g", n2, 7, 70, 116, b"")
    t.put(PG, b"g", 0, 1, 10, 117, b"j2")
    t.delete(PG, b"g", 0, 1, reason=R_NORMAL)
    t.delete(REG, b"a", 0, 1, F_MATCH_PID)
    t.purge_node(n2, R_NODE_DOWN, n2)
    recs = r.read()
    assert [(x.kind, x.key, x.node, x.pid, x.start, x.time_ns, x.meta, x.reason) for x in recs] == [
        ("registered", b"a", 0, 1, 10, 111, b"m1", R_NORMAL),
        ("registry_updated", b"a", 0, 1, 10, 113, b"m2", R_NORMAL),
        ("joined", b"g", 0, 1, 10, 115, b"j", R_NORMAL),
        ("joined", b"g", n2, 7, 70, 116, b"", R_NORMAL),
        ("group_updated", b"g", 0, 1, 10, 117, b"j2", R_NORMAL),
        ("left", b"g", 0, 1, 10, 117, b"j2", R_NORMAL),
        ("unregistered", b"a", 0, 1, 10, 113, b"m2", R_NORMAL),
        ("left", b"g", n2, 7, 70, 116, b"", R_NODE_DOWN),
    ]
    assert recs[-1].reason_node == n2
    assert [x.seq for x in recs] == list(range(recs[0].seq, recs[0].seq + len(recs)))
    assert r.read() == [] and not r.pending()
    t.put(REG, b"b", 0, 3, 30, 1, b"")
    assert r.pending() and [x.key for x in r.read()] == [b"b"]
    # a reader from the very beginning sees the same history
    assert [x.seq for x in t.journal(0).read()] == [x.seq for x in recs] + [recs[-1].seq + 1]
    # max_records bounds a read
    r2 = t.journal(0)
    assert len(r2.read(3)) == 3 and len(r2.read()) == len(recs) - 2


def test_a_journal_reader_of_one_node_passes_over_the_others_records(make_table):
    """What a manager without event handlers reads: its own node's records; the many a peer's snapshot
    writes are skipped in C, and the cursor still moves past them (no overrun, nothing read twice)."""
    t = make_table(capacity=4096, heap=4 << 20, journal=64 << 10)
    n2 = t.node_id("n2", create=True)
    local, every = t.journal(node=0), t.journal()
    t.put(REG, b"mine", 0, 1, 10, 1, b"")
    for i in range(3000):  # far more than the ring holds: a reader of node 0 must still keep up
        t.put(REG, b"theirs%d" % i, n2, 2, 20, 1, b"")
        if i % 500 == 0:
            assert local.read() is not None
    t.put(PG, b"g", 0, 1, 10, 2, b"")
    assert [(x.kind, x.key) for x in local.read()] == [("joined", b"g")]
    assert local.read() == [] and not local.pending()
    assert every.read() is None  # the reader of every node did not keep up: overrun


def test_journal_reader_that_falls_behind_gets_overrun_and_continues_from_head(make_table):
    t = make_table(journal=64 << 10)
    assert t.stats()["journal_size"] == 64 << 10
    slow, fast = t.journal(), t.journal()
    seen: list[int] = []
    for i in range(1500):  # ~ 150 KiB of records: more than two laps of the ring
        t.put(REG, b"key", 0, 1, 1, i, b"%06d" % i + b"." * 40)
        if i % 50 == 0:
            recs = fast.read()
            assert recs is not None
            seen += [x.seq for x in recs]
    seen += [x.seq for x in fast.read()]
    assert seen == list(range(seen[0], seen[0] + 1500))  # a reader that keeps up misses nothing
    assert slow.read() is None  # overrun
    assert slow.cursor[0] == t.journal_head()
    assert slow.read() == []
    t.put(REG, b"key", 0, 1, 1, 0, b"after")
    recs = slow.read()
    assert [(x.kind, x.meta, x.seq) for x in recs] == [("registry_updated", b"after", seen[-1] + 1)]
    assert t.journal(0).read() is None  # position 0 is long gone
    sound(t)


def test_collect_packed_is_one_msgpack_array_of_the_rows_collect_gives(make_table):
    """F_MSGPACK: the same rows as collect(), as [node, pid, key?, meta?] arrays, the stored key
    and meta bytes embedded as they are (an empty one as nil), for one unpack."""
    import msgpack
    t = make_table(capacity=256)
    other = t.add_node("n2")
    t.put(PG, b"\xa1g", 0, 7, 1, 1, b"\x81\xa4port\x01")
    t.put(PG, b"\xa1g", other, -5, 1, 1, b"")
    t.put(PG, b"\xa1g", 0, (1 << 31) - 1, 1, 1, b"\x93\x01\x02\x03")
    t.put(REG, b"\xa1x", 0, 7, 1, 1, b"\xc3")
    rows = msgpack.unpackb(t.collect_packed(BY_KEY, PG, b"\xa1g"))
    assert sorted(rows) == sorted([[0, 7, {"port": 1}], [other, -5, None], [0, (1 << 31) - 1, [1, 2, 3]]])
    items = t.collect(BY_KEY, PG, b"\xa1g", flags=WITH_META)
    assert sorted((i.node, i.pid) for i in items) == sorted((r[0], r[1]) for r in rows)
    rows = msgpack.unpackb(t.collect_packed(BY_PID, 0, node=0, pid=7, flags=WITH_KEY | WITH_META))
    assert sorted(rows, key=repr) == sorted([[0, 7, "g", {"port": 1}], [0, 7, "x", True]], key=repr)
    assert msgpack.unpackb(t.collect_packed(BY_KEY, PG, b"\xa1none")) == []
    # more rows than the first buffer holds: grown and read again
    for i in range(200):
        t.put(PG, b"\xa1big", 0, 1000 + i, 1, 1, b"\xa5" + b"%05d" % i)
    rows = msgpack.unpackb(t.collect_packed(BY_KEY, PG, b"\xa1big"))
    assert sorted(r[1] for r in rows) == list(range(1000, 1200))
    sound(t)


def test_the_announce_ring_gives_each_local_process_that_adds_entries_once(make_table):
    """Announced: (pid, start) of node-0 puts, in order, a pair its filter remembers dropped;
    deletes and other nodes' entries are not announced; a reset clears the filter."""
    t = make_table()
    other = t.add_node("n2")
    r = t.announced()
    assert r.read() == [] and not r.pending()
    t.put(REG, b"a", 0, 10, 1, 0, b"m")       # registered by (10, 1)
    t.put(REG, b"a", 0, 10, 1, 0, b"m2")      # updated: (10, 1) is remembered
    t.put(PG, b"g", 0, 11, 2, 0, b"")         # joined by (11, 2)
    t.put(REG, b"r", other, 12, 3, 0, b"")    # another node's: not ours to watch
    t.delete(REG, b"a")                       # deletes add nothing
    t.put(PG, b"g", 0, 10, 1, 0, b"")         # (10, 1) again: still remembered
    t.put(REG, b"b", 0, 10, 7, 0, b"")        # pid 10 reused by another process (start 7)
    assert r.pending()
    assert r.read() == [(10, 1), (11, 2), (10, 7)]
    assert r.read() == [] and not r.pending()
    r2 = t.announced()  # a new follower: the filter forgets, so the next writes announce again
    t.put(REG, b"c", 0, 10, 1, 0, b"")
    t.put(REG, b"d", 0, 10, 1, 0, b"")
    assert r2.read() == [(10, 1)]
    sound(t)


def test_the_announce_ring_reports_an_overrun(make_table):
    t = make_table(capacity=8192, heap=4 << 20)
    slow = t.announced()
    for i in range(5000):  # more distinct processes than the ring holds
        assert t.put(PG, b"g", 0, 1000 + i, 1, 0, b"")[0] == INSERTED
    assert slow.read() is None
    again = t.announced()  # what the manager does: reset, then scan the table
    t.put(PG, b"g", 0, 1, 1, 0, b"")
    assert again.read() == [(1, 1)]
    sound(t)


def test_journal_wrap_with_short_tail_keeps_heap_and_records_intact(make_table):
    """Records sized so the ring's tail ends up 8 bytes short of the end, then wrap: the padding
    must stay inside the ring (the heap begins right after it) and readers must skip it."""
    t = make_table(capacity=16, heap=64 << 10, journal=64 << 10)
    size = t.stats()["journal_size"]
    # a free 512-byte blob at the very start of the heap, i.e. right after the ring
    t.put(REG, b"first", 0, 1, 1, 0, b"x" * 200)
    t.delete(REG, b"first")
    r = t.journal(0)
    seqs: list[int] = []
    i = 0

    def update(meta_len: int) -> None:
        nonlocal i
        i += 1
        assert t.put(REG, b"k", 0, 1, 1, i, bytes([65 + i % 2]) * meta_len)[0] in (INSERTED, UPDATED)
        recs = r.read()
        assert recs is not None, "a reader that keeps up must never be overrun"
        seqs.extend(x.seq for x in recs)

    for _lap in range(3):
        while True:
            tail = size - t.journal_head() % size
            if tail <= 168:
                break
            update(64 - JREC - 1)  # 64-byte records
        # one record that leaves an 8-byte tail (where the record size allows), then one that wraps
        update(max(0, tail - 8 - JREC - 1))
        update(40)
        sound(t)
    assert seqs == list(range(1, len(seqs) + 1))
    # the free blob after the ring is intact: allocating blobs of its class works and stays sound
    for j in range(3):
        assert t.put(REG, b"big%d" % j, 0, 1, 1, 0, b"y" * 200)[0] == INSERTED
    sound(t)
    assert t.get(REG, b"big0").meta == b"y" * 200


def test_journal_smaller_than_the_minimum_is_rounded_up(make_table):
    t = make_table(journal=4096)
    assert t.stats()["journal_size"] == 64 << 10
    t.put(REG, b"a", 0, 1, 1, 1, b"")
    assert [x.key for x in t.journal(0).read()] == [b"a"]
    sound(t)


# ------------------------------------------------------------------ random model


def _apply_record(model: dict, x) -> None:
    if x.kind in ("registered", "registry_updated"):
        model[(REG, x.key, x.node, x.pid)] = (x.start, x.time_ns, x.meta)
    elif x.kind == "unregistered":
        del model[(REG, x.key, x.node, x.pid)]
    elif x.kind in ("joined", "group_updated"):
        model[(PG, x.key, x.node, x.pid)] = (x.start, x.time_ns, x.meta)
    elif x.kind == "left":
        del model[(PG, x.key, x.node, x.pid)]
    else:
        raise AssertionError(f"unknown record kind {x.kind}")


@pytest.mark.parametrize("seed,cap", [(1, 25), (2, 25), (3, 200), (4, 200)])
def test_random_operations_match_a_dict_model_and_the_checker(make_table, seed, cap):
    """Thousands of random writes (a small capacity makes EFULL frequent, a big one never)."""
    rnd = random.Random(seed)
    t = make_table(capacity=cap, heap=4 << 20, journal=4 << 20)
    nodes = [0, t.node_id("n2", create=True), t.node_id("n3", create=True)]
    keys = [b"k%d" % i for i in range(12)] + [b"long-" + b"x" * rnd.randrange(100, 1000)]
    pids = [(p, s) for p in (1, 2, 3, 4) for s in (100, 200)]  # (pid, start): pid reuse included
    metas = [b"", b"a", b"bb", b"c" * 300, b"d" * 5000]
    reg: dict = {}   # key -> (node, pid, start, time, meta)
    pg: dict = {}    # (key, node, pid) -> (start, time, meta)
    journal = t.journal(0)
    replayed: dict = {}

    def model_snapshot() -> dict:
        out = {(REG, k, n, p): (s, tm, m) for k, (n, p, s, tm, m) in reg.items()}
        out.update({(PG, k, n, p): v for (k, n, p), v in pg.items()})
        return out

    for step in range(STEPS):
        op = rnd.random()
        key, node = rnd.choice(keys), rnd.choice(nodes)
        pid, start = rnd.choice(pids)
        meta, now = rnd.choice(metas), step
        if op < 0.30:
            force = rnd.random() < 0.1
            rc, _ = t.put(REG, key, node, pid, start, now, meta, F_FORCE if force else 0)
            cur = reg.get(key)
            if cur is None:
                want = INSERTED if len(reg) + len(pg) < cap else EFULL
            elif cur[:3] != (node, pid, start):
                want = INSERTED if force else ETAKEN
            else:
                want = UNCHANGED if cur[4] == meta and not force else UPDATED
            assert rc == want, (step, rc, want)
            if want in (INSERTED, UPDATED):
                reg[key] = (node, pid, start, now, meta)
        elif op < 0.55:
            rc, _ = t.put(PG, key, node, pid, start, now, meta)
            cur = pg.get((key, node, pid))
            if cur is None:
                want = INSERTED if len(reg) + len(pg) < cap else EFULL
            elif cur[0] != start:
                want = INSERTED  # a reused pid replaces the stale member
            else:
                want = UNCHANGED if cur[2] == meta else UPDATED
            assert rc == want, (step, rc, want)
            if want in (INSERTED, UPDATED):
                pg[(key, node, pid)] = (start, now, meta)
        elif op < 0.70:
            match = rnd.random() < 0.5
            rc, _ = t.delete(REG, key, node, pid, F_MATCH_PID if match else 0)
            cur = reg.get(key)
            want = ENOTFOUND if cur is None else EMISMATCH if match and cur[:2] != (node, pid) else 0
            assert rc == want, (step, rc, want)
            if want == 0:
                del reg[key]
        elif op < 0.85:
            rc, _ = t.delete(PG, key, node, pid)
            want = 0 if (key, node, pid) in pg else ENOTFOUND
            assert rc == want, (step, rc, want)
            pg.pop((key, node, pid), None)
        elif op < 0.98:
            flt = rnd.choice((0, start))
            gone = [k for k, v in reg.items() if v[:2] == (node, pid) and flt in (0, v[2])]
            gone_pg = [k for k, v in pg.items() if k[1:] == (node, pid) and flt in (0, v[0])]
            assert t.purge_pid(node, pid, flt, R_PROCESS_EXIT) == len(gone) + len(gone_pg)
            for k in gone:
                del reg[k]
            for k in gone_pg:
                del pg[k]
        else:
            gone = [k for k, v in reg.items() if v[0] == node]
            gone_pg = [k for k in pg if k[1] == node]
            assert t.purge_node(node, R_NODE_DOWN) == len(gone) + len(gone_pg)
            for k in gone:
                del reg[k]
            for k in gone_pg:
                del pg[k]
        if step % CHECK_EVERY == 0 or step == STEPS - 1:
            sound(t)
            assert snapshot(t) == model_snapshot()
            st = t.stats()
            assert (st["count"], st["reg_count"], st["pg_count"]) == (len(reg) + len(pg), len(reg), len(pg))
            for n in nodes:
                assert t.count(BY_NODE, REG, node=n) == sum(1 for v in reg.values() if v[0] == n)
                assert t.count(BY_NODE, PG, node=n) == sum(1 for k in pg if k[1] == n)
            recs = read_all(journal)
            assert recs is not None
            for x in recs:
                _apply_record(replayed, x)
            assert replayed == model_snapshot()  # the journal tells the same story as the table
    for k, (n, p, s, tm, m) in reg.items():
        e = t.get(REG, k)
        assert (e.node, e.pid, e.start, e.time_ns, e.meta) == (n, p, s, tm, m)
    for (k, n, p), (s, tm, m) in pg.items():
        e = t.get(PG, k, n, p)
        assert (e.start, e.time_ns, e.meta) == (s, tm, m)


# ------------------------------------------------------------------ the checker catches corruption


class Layout:
    """Offsets into the mapped segment: header fields from synt_field_offset, the head chunk's
    fields as csrc/layout.h declares them, verified against values the API reports."""

    def __init__(self, t: Table) -> None:
        self.t = t
        f = {n: lib.synt_field_offset(n.encode()) for n in (
            "seq", "top", "free_head", "free_count", "count", "reg_count", "pg_count", "nbuckets",
            "buckets_off", "heap_off", "next_ver", "vers_off")}
        assert -1 not in f.values()
        for n, off in f.items():
            setattr(self, n, off)
        self.nbuckets, self.buckets_off, self.heap_off, self.vers_off = (
            self.u64(f["nbuckets"]), self.u64(f["buckets_off"]), self.u64(f["heap_off"]), self.u64(f["vers_off"]))
        assert self.u64(self.seq) == raw_seq(t)
        st = t.stats()
        assert (self.u64(self.top) - self.u64(self.free_count)) * CHUNK == st["heap_used"]
        assert self.u64(self.count) == st["count"]

    # head_t: w0 (next | type << 32), next_key, next_kp (u32), link_pid, link_node (next |
    # prev << 32), hkey (u32), pid (i32), start, time, lens; the ver words are apart, in vers[]
    E_W0, E_PID = 0, 36
    IX_KEY, IX_PID, IX_KP, IX_NODE = 0, 1, 2, 3
    E_LINK = {IX_KEY: 8, IX_KP: 12, IX_PID: 16, IX_NODE: 24}

    def u64(self, off: int) -> int:
        return struct.unpack_from("=Q", self.t._mm, off)[0]

    def put64(self, off: int, v: int) -> None:
        struct.pack_into("=Q", self.t._mm, off, v)

    def u32(self, off: int) -> int:
        return struct.unpack_from("=I", self.t._mm, off)[0]

    def put32(self, off: int, v: int) -> None:
        struct.pack_into("=I", self.t._mm, off, v)

    def idx(self, off: int) -> int:
        return (off - self.heap_off) // CHUNK + 1

    def ver(self, entry: int) -> int:
        """offset of the ver word of the chunk at `entry`"""
        return self.vers_off + 8 * self.idx(entry)

    def link(self, entry: int, ix: int, prev: bool = False) -> int:
        """offset of the uint32 next (or prev: the pid and node lists only) link of the entry at
        `entry` on list ix"""
        assert not prev or ix in (self.IX_PID, self.IX_NODE), "the bucket chains are singly linked"
        return entry + self.E_LINK[ix] + (4 if prev else 0)

    def bucket(self, ix: int, b: int) -> int:
        return self.buckets_off + 4 * (self.nbuckets * ix + b)

    def entries(self) -> list[tuple[int, int]]:
        """(offset, pid) of the head chunks, in heap order."""
        out = []
        for i in range(1, self.u64(self.top) + 1):
            o = self.heap_off + (i - 1) * CHUNK
            if self.u64(o + self.E_W0) >> 32:
                out.append((o, struct.unpack_from("=i", self.t._mm, o + self.E_PID)[0]))
        return out


@pytest.fixture
def three_entries(make_table):
    t = make_table()
    for pid in (1, 2, 3):
        t.put(REG, b"name%d" % pid, 0, pid, 1, 1, b"m")
    sound(t)
    lay = Layout(t)
    ents = lay.entries()
    assert [p for _, p in ents] == [1, 2, 3]
    return t, lay, ents


def check_in_child(t: Table) -> str | None:
    """Run the checker in a forked child, so a checker that crashes on a bad link fails the test
    instead of killing pytest."""
    got = in_fork(t.check)
    return None if got == "None" else ast.literal_eval(got)


def test_checker_catches_a_wrong_counter(three_entries):
    t, lay, _ = three_entries
    lay.put64(lay.count, lay.u64(lay.count) + 1)
    err = t.check()
    assert err and "I7" in err


def test_checker_catches_a_wrong_group_counter(three_entries):
    t, lay, _ = three_entries
    lay.put64(lay.pg_count, 1)
    assert "I7" in (t.check() or "")


def test_checker_catches_a_broken_back_link(three_entries):
    t, lay, ents = three_entries
    # the node list is newest first: entry 3 -> 2 -> 1; make 1 point back at 3 instead of 2
    e1, e3 = ents[0][0], ents[2][0]
    assert lay.u32(lay.link(e1, lay.IX_NODE, prev=True)) == lay.idx(ents[1][0])
    lay.put32(lay.link(e1, lay.IX_NODE, prev=True), lay.idx(e3))
    err = check_in_child(t)
    assert err and "I4" in err


def test_checker_catches_a_wild_link_without_crashing(three_entries):
    t, lay, ents = three_entries
    e3 = ents[2][0]
    assert lay.u32(lay.link(e3, lay.IX_NODE)) == lay.idx(ents[1][0])
    lay.put32(lay.link(e3, lay.IX_NODE), (1 << 32) - 2)  # far outside the segment
    err = check_in_child(t)
    assert err and "I4" in err


def test_checker_catches_an_entry_missing_from_its_index(three_entries):
    t, lay, ents = three_entries
    e2 = ents[1][0]
    # unlink entry 2 from its pid chain: it is its bucket's only entry with this pid
    slot = next(lay.bucket(lay.IX_PID, b) for b in range(lay.nbuckets)
                if lay.u32(lay.bucket(lay.IX_PID, b)) == lay.idx(e2))
    lay.put32(slot, lay.u32(lay.link(e2, lay.IX_PID)))
    err = check_in_child(t)
    assert err and "I4" in err


def test_checker_catches_a_corrupt_free_list(three_entries):
    t, lay, ents = three_entries
    t.delete(REG, b"name2")
    sound(t)
    e2 = ents[1][0]
    assert lay.u64(lay.free_head) == lay.idx(e2)
    lay.put64(e2 + lay.E_W0, lay.u64(e2 + lay.E_W0) | REG << 32)  # a free chunk that claims to be live
    err = check_in_child(t)
    assert err and "I3" in err


def test_local_writes_report_a_sleeping_manager_in_the_result_code(make_table):
    """put_local/delete_local (as registry and groups call them): no out-struct; WAKE rides on a
    success code when the manager sleeps, and delete with F_MATCH_NODE leaves another node's
    holder alone."""
    from syn_mp._table import F_MATCH_NODE, WAKE, delete_local, put_local
    t = make_table()

    def put(type_: int, key: bytes, pid: int, meta: bytes) -> int:
        return put_local(t.ptr, type_, key, len(key), pid, 1, meta, len(meta))

    def delete(key: bytes) -> int:
        return delete_local(t.ptr, REG, key, len(key), 0, F_MATCH_NODE)

    other = t.add_node("n2")
    assert put(REG, b"a", 5, b"m") == INSERTED
    t.set_sleeping(True)
    assert put(REG, b"a", 5, b"m2") == UPDATED | WAKE
    assert put(REG, b"a", 6, b"m") == ETAKEN  # errors never carry WAKE
    assert delete(b"a") == WAKE  # 0: deleted
    t.set_sleeping(False)
    t.put(REG, b"r", other, 7, 1, 1, b"")
    assert delete(b"r") == EMISMATCH
    assert t.get(REG, b"r") is not None
    assert delete(b"gone") == ENOTFOUND
    assert put(PG, b"g", 5, b"") == INSERTED
    before = time.time_ns()
    put(REG, b"t", 5, b"")
    assert abs(t.get(REG, b"t").time_ns - before) < 5e9  # timed by the C side's CLOCK_REALTIME
    sound(t)


def test_the_flags_word_is_the_header_flags(make_table):
    """unregister reads strict mode as t.words[t.flags_word], without a call."""
    t = make_table()
    assert t.words[t.flags_word] == t.flags == 0
    t.set_flags(FLAG_STRICT)
    assert t.words[t.flags_word] == t.flags == FLAG_STRICT
    sound(t)


def test_checker_catches_a_free_blob_that_keeps_its_ver(three_entries):
    """I9: a freed entry's ver is 0, or a lookup cache holding (offset, ver) would trust it."""
    t, lay, ents = three_entries
    e2 = ents[1][0]
    ver = lay.u64(lay.ver(e2))
    t.delete(REG, b"name2")
    sound(t)
    assert ver != 0 and lay.u64(lay.ver(e2)) == 0
    lay.put64(lay.ver(e2), ver)
    assert "I3" in (check_in_child(t) or "")


def test_checker_catches_a_live_entry_without_a_ver(three_entries):
    t, lay, ents = three_entries
    lay.put64(lay.ver(ents[0][0]), 0)
    assert "I9" in (check_in_child(t) or "")


def test_a_read_names_the_ver_word_that_an_update_or_a_delete_clears(three_entries):
    """read_reg's (ver_word, ver) is the entry's own ver word; any change of the name zeroes it
    (an update is a new blob), while writes to other names leave it as it was."""
    t, lay, ents = three_entries
    found, node, pid, meta, word, ver = t.read_reg(b"name1")
    assert (found, node, pid, meta) == (1, 0, 1, b"m")
    assert word * 8 == lay.ver(ents[0][0]) and t.words[word] == ver != 0
    t.put(REG, b"other", 0, 9, 1, 1, b"x")
    t.delete(REG, b"name3")
    assert t.words[word] == ver  # unrelated writes: still valid
    t.put(REG, b"name1", 0, 1, 1, 1, b"new meta")
    assert t.words[word] == 0
    found, *_, word2, ver2 = t.read_reg(b"name1")
    assert found == 1 and ver2 > ver
    t.delete(REG, b"name1")
    assert t.words[word2] == 0
    # a miss is valid for as long as the seqlock word holds the same value
    found, *_, word3, seq = t.read_reg(b"name1")
    assert found == 0 and word3 == t.seq_word and t.words[word3] == seq == raw_seq(t)
    t.put(REG, b"more", 0, 9, 1, 1, b"x")
    assert t.words[word3] != seq
    sound(t)


def test_checker_reports_an_odd_seq_under_a_free_mutex(three_entries):
    """seq odd while no writer holds the mutex is I1 (only a dead owner's state is repaired)."""
    t, lay, _ = three_entries
    lay.put64(lay.seq, lay.u64(lay.seq) | 1)
    assert "I1" in (t.check() or "")


# ------------------------------------------------------------------ concurrent readers


META_OF = {
    # pid -> (start, the metas that pid may hold): lengths differ so a torn copy shows
    1001: (11, (b"A" * 1500, b"a" * 3500)),
    2002: (22, (b"B" * 2500, b"b" * 500)),
}


def _flip_writer(name: str, flips: int, go, done, progress) -> None:
    """Flips b"name" between two pids and their metas, and updates both members of b"group",
    until it has done `flips` flips and every reader has read a while during them."""
    t = Table.attach(name)
    go.wait(10)
    pids = sorted(META_OF)
    deadline = time.monotonic() + 20
    i = 0
    while i < flips or (min(progress) < 2000 and time.monotonic() < deadline):
        pid = pids[(i // 2) % 2]
        start, metas = META_OF[pid]
        # i % 2 == 0: takeover by the other pid; i % 2 == 1: the holder updates its meta
        t.put(REG, b"name", 0, pid, start, i, metas[i % 2], F_FORCE)
        t.put(PG, b"group", 0, pid, start, i, metas[i % 2])
        i += 1
    done.set()


def _reader(name: str, slot: int, go, done, progress, out) -> None:
    t = Table.attach(name)
    reads = torn = missing = 0
    seen = set()
    examples = []
    go.wait(10)
    while not done.is_set():
        for pid in META_OF:
            for e in (t.get(REG, b"name"), t.get(PG, b"group", 0, pid)):
                reads += 1
                if e is None:
                    missing += 1
                    continue
                start, metas = META_OF.get(e.pid, (None, ()))
                seen.add((e.pid, len(e.meta)))
                if e.start != start or e.meta not in metas:
                    torn += 1
                    if len(examples) < 3:
                        examples.append((e.pid, e.start, len(e.meta), e.meta[:2]))
        items = t.collect(BY_KEY, REG, b"name")
        reads += 1
        if len(items) != 1 or items[0].meta not in META_OF.get(items[0].pid, (0, ()))[1]:
            torn += 1
        progress[slot] = reads
    out.put((reads, torn, missing, examples, len(seen)))


def test_concurrent_readers_never_see_a_torn_entry(make_table):
    t = make_table(capacity=16, heap=1 << 20)
    for pid, (start, metas) in META_OF.items():
        t.put(PG, b"group", 0, pid, start, 0, metas[0])
    t.put(REG, b"name", 0, 1001, 11, 0, META_OF[1001][1][0])
    ctx = multiprocessing.get_context("fork")
    go, done, out = ctx.Event(), ctx.Event(), ctx.Queue()
    progress = ctx.Array("q", 2, lock=False)
    readers = [ctx.Process(target=_reader, args=(t.name, i, go, done, progress, out)) for i in range(2)]
    writer = ctx.Process(target=_flip_writer, args=(t.name, 100000, go, done, progress))
    for p in readers + [writer]:
        p.start()
    try:
        go.set()
        results = [out.get(timeout=50) for _ in readers]
        writer.join(10)
        for p in readers:
            p.join(10)
        assert writer.exitcode == 0 and all(p.exitcode == 0 for p in readers)
    finally:
        for p in readers + [writer]:
            if p.is_alive():
                p.kill()
                p.join()
    for reads, torn, missing, examples, _variants in results:
        assert reads > 0
        assert torn == 0, f"torn reads: {torn} of {reads}, e.g. {examples}"
        assert missing == 0  # a takeover replaces in one step: never a moment without a holder
    sound(t)
    assert t.get(REG, b"name").pid in META_OF
