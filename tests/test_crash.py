"""Crash safety of the shared-memory table: writers SIGKILLed mid-operation, by the test hook
(synt_test_stop_after: the n-th undo-logged store kills its own process) and from outside at random
moments. After each death the next locker repairs (robust mutex, EOWNERDEAD), and the table must
pass the checker, hold exactly the state before or after the operation, and journal exactly what
took effect. Real forked processes and real signals only."""
from __future__ import annotations

import functools
import os
import random
import select
import signal
import struct
import time
import uuid
from typing import Callable, Iterator

import posix_ipc
import pytest

from conftest import raw_seq, read_all

from syn_mp._native import ffi, lib
from syn_mp._table import (
    ALL_NODES, BY_KEY, BY_NODE, F_EXPECT_VER, F_FORCE, F_MATCH_PID, INSERTED, PG, R_CONFLICT,
    R_NODE_DOWN, R_NORMAL, R_PROCESS_EXIT, REG, UPDATED, Table,
)

SOAK = os.environ.get("SYN_MP_SOAK_ITERATIONS")


def seg_name() -> str:
    return f"/synmp-test-{os.getpid()}-{uuid.uuid4().hex[:12]}"


class Segments:
    """Creates uniquely named tables; unlinks each one now (drop) or at teardown."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def create(self, capacity: int = 64, heap: int = 1 << 20, journal: int = 1 << 16) -> Table:
        name = seg_name()
        self.names.add(name)
        return Table.create(name, "n1", capacity, heap, journal)

    def drop(self, t: Table) -> None:
        self.names.discard(t.name)
        try:
            posix_ipc.unlink_shared_memory(t.name)
        except posix_ipc.ExistentialError:
            pass

    def close(self) -> None:
        for n in list(self.names):
            try:
                posix_ipc.unlink_shared_memory(n)
            except posix_ipc.ExistentialError:
                pass


@pytest.fixture
def segments() -> Iterator[Segments]:
    s = Segments()
    yield s
    s.close()


def snapshot(t: Table) -> dict:
    """(type, key, node, pid) -> (start, time_ns, meta, ver) of every entry, plus the counters."""
    out: dict = {}
    for i in t.collect(BY_NODE, 0, node=ALL_NODES):
        e = t.get(i.type, i.key, i.node, i.pid)
        out[(i.type, i.key, i.node, i.pid)] = (i.start, i.time_ns, i.meta, e.ver)
    st = t.stats()
    nodes = st["nnodes"]
    out["counters"] = (st["count"], st["reg_count"], st["pg_count"], nodes,
                       tuple((t.count(BY_NODE, REG, node=n), t.count(BY_NODE, PG, node=n)) for n in range(nodes)))
    return out


def contents(t: Table) -> dict:
    """(type, key, node, pid) -> (start, time_ns, meta): what a journal replay can rebuild."""
    return {(i.type, i.key, i.node, i.pid): (i.start, i.time_ns, i.meta)
            for i in t.collect(BY_NODE, 0, node=ALL_NODES)}


def apply_record(model: dict, x) -> None:
    typ = REG if x.kind in ("registered", "registry_updated", "unregistered") else PG
    k = (typ, x.key, x.node, x.pid)
    if x.kind in ("unregistered", "left"):
        assert k in model, f"journal removes what is not there: {x}"
        del model[k]
    else:
        assert x.kind in ("registered", "registry_updated", "joined", "group_updated"), x
        model[k] = (x.start, x.time_ns, x.meta)


def died_by_sigkill(status: int) -> bool:
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


# ---------------------------------------------------------------- (a) deterministic sweep

N2 = 1  # id of node "n2" in the base table


def populate(t: Table) -> None:
    assert t.node_id("n2", create=True) == N2
    t.put(REG, b"r1", 0, 100, 1000, 1, b"m-r1")
    t.put(REG, b"r2", 0, 101, 1001, 2, b"m-r2")
    t.put(REG, b"r4", 0, 100, 1000, 3, b"m-r4")
    t.put(REG, b"r3", N2, 100, 5000, 4, b"m-r3")
    t.put(PG, b"g1", 0, 100, 1000, 5, b"g-100")
    t.put(PG, b"g1", 0, 101, 1001, 6, b"g-101")
    t.put(PG, b"g1", 0, 102, 1002, 7, b"g-102")
    t.put(PG, b"g1", N2, 100, 5000, 8, b"g-n2")
    t.put(REG, b"tmp", 0, 103, 1003, 9, b"")
    t.delete(REG, b"tmp")  # leaves a free 256-byte blob for the next small insert


# name -> (operation, atomic as a whole?). Purges are one crash-atomic step per entry.
OPS: dict[str, tuple[Callable[[Table], object], bool]] = {
    "insert_reusing_a_free_blob": (lambda t: t.put(REG, b"new", 0, 103, 1003, 10, b"m-new"), True),
    "insert_carving_a_new_blob": (lambda t: t.put(REG, b"big", 0, 103, 1003, 10, b"B" * 600), True),
    "join": (lambda t: t.put(PG, b"g2", 0, 103, 1003, 10, b"j"), True),
    "update_registry": (lambda t: t.put(REG, b"r1", 0, 100, 1000, 10, b"changed"), True),
    "update_registry_to_a_bigger_blob": (lambda t: t.put(REG, b"r1", 0, 100, 1000, 10, b"X" * 600), True),
    "update_registry_compare_and_set": (lambda t: t.put(REG, b"r1", 0, 100, 1000, 10, b"cas", F_EXPECT_VER,
                                                       t.get(REG, b"r1").ver), True),
    "update_group": (lambda t: t.put(PG, b"g1", 0, 101, 1001, 10, b"changed"), True),
    "unregister": (lambda t: t.delete(REG, b"r2", 0, 101, F_MATCH_PID), True),
    "leave": (lambda t: t.delete(PG, b"g1", 0, 102), True),
    "forced_takeover": (lambda t: t.put(REG, b"r1", 0, 103, 1003, 10, b"winner", F_FORCE, reason=R_CONFLICT), True),
    "group_join_by_reused_pid": (lambda t: t.put(PG, b"g1", 0, 101, 7777, 10, b"reborn"), True),
    "purge_pid_one_entry": (lambda t: t.purge_pid(0, 102, 1002, R_PROCESS_EXIT), True),
    "purge_pid_several_entries": (lambda t: t.purge_pid(0, 100, 1000, R_PROCESS_EXIT), False),
    "purge_node": (lambda t: t.purge_node(N2, R_NODE_DOWN, N2), False),
    "create_node": (lambda t: t.node_id("n3", create=True), True),
}


def fork_child(name: str, op: Callable[[Table], object], stop_after: int,
               arm: Callable[[int], None] = lib.synt_test_stop_after) -> int:
    """Fork; the child attaches the table, arms the hook (by default: SIGKILL itself at the n-th
    hook point) and runs op. Returns its pid."""
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            t = Table.attach(name)
            arm(stop_after)
            op(t)
            code = 0
        finally:
            os._exit(code)
    return pid


def run_in_child(name: str, op: Callable[[Table], object], stop_after: int) -> int:
    """fork_child, then its wait status."""
    return os.waitpid(fork_child(name, op, stop_after), 0)[1]


class Reference:
    """What an operation does to the populated table, from a run without deaths: the state
    before and after, its journal records, and the states a death may leave (records that took
    effect, state): all or nothing, or for purges the first k entries removed."""

    def __init__(self, segments: Segments, opname: str) -> None:
        op, self.atomic = OPS[opname]
        ref = segments.create()
        populate(ref)
        self.before, self.j0 = snapshot(ref), ref.journal_head()
        self.seq0 = ref.journal(0).read()[-1].seq  # the last record before the operation
        op(ref)
        self.after = snapshot(ref)
        assert self.after != self.before
        self.recs = ref.journal(self.j0).read()
        assert self.recs is not None
        # the journal alone turns before into after
        model = {k: v[:3] for k, v in self.before.items() if k != "counters"}
        for x in self.recs:
            apply_record(model, x)
        assert model == {k: v[:3] for k, v in self.after.items() if k != "counters"}
        segments.drop(ref)
        # (create_node journals nothing: k is 0 both ways.)
        self.allowed = [(0, self.before), (len(self.recs), self.after)]
        if not self.atomic:
            state = {k: v for k, v in self.before.items() if k != "counters"}
            nn = self.before["counters"][3]
            for k, x in enumerate(self.recs[:-1], 1):
                assert x.kind in ("unregistered", "left")
                del state[(REG if x.kind == "unregistered" else PG, x.key, x.node, x.pid)]
                regs = [key for key in state if key[0] == REG]
                pgs = [key for key in state if key[0] == PG]
                counters = (len(state), len(regs), len(pgs), nn, tuple(
                    (sum(1 for key in regs if key[2] == n), sum(1 for key in pgs if key[2] == n)) for n in range(nn)))
                self.allowed.append((k, dict(state, counters=counters)))

    def verify(self, t: Table, what: str) -> int:
        """After a death: repair (check locks: EOWNERDEAD), then the table must be sound, hold an
        allowed state, journal exactly the part that took effect, and go on working with
        sequence numbers continuing without a gap. Returns which allowed state it holds."""
        err = t.check()
        assert err is None, f"{what}: {err}"
        assert raw_seq(t) & 1 == 0
        snap = snapshot(t)
        matches = [(k, i) for i, (k, s) in enumerate(self.allowed) if s == snap]
        assert matches, f"{what}: neither before nor after:\n{snap}"
        k, which = matches[0]
        recs = t.journal(self.j0).read()
        assert recs == self.recs[:k], f"{what}: journal {recs} for outcome {k}"
        if k == 0:
            assert t.journal_head() == self.j0
        rc, _ = t.put(REG, b"probe", 0, 4242, 1, 99, b"probe")
        assert rc == INSERTED
        assert t.get(REG, b"probe").meta == b"probe"
        probe = t.journal(self.j0).read()[-1]
        assert probe.key == b"probe"
        assert probe.seq == (self.recs[k - 1].seq if k else self.seq0) + 1
        assert t.check() is None
        return which


@pytest.mark.parametrize("opname", list(OPS))
def test_writer_killed_at_every_logged_store_leaves_before_or_after_state(segments, opname):
    op, atomic = OPS[opname]
    ref = Reference(segments, opname)
    outcomes: list[int] = []
    for n in range(2000):
        t = segments.create()
        populate(t)
        assert t.journal_head() == ref.j0
        status = run_in_child(t.name, op, n)
        if os.WIFEXITED(status):
            assert os.WEXITSTATUS(status) == 0, f"{opname}: child failed (stop_after={n})"
            assert t.check() is None
            assert snapshot(t) == ref.after and t.journal(ref.j0).read() == ref.recs
            segments.drop(t)
            break
        assert died_by_sigkill(status), f"{opname}: child status {status} at stop_after={n}"
        assert raw_seq(t) & 1, "the hook fires only inside an operation: seq must be odd"
        outcomes.append(ref.verify(t, f"{opname}, killed at logged store {n}"))
        segments.drop(t)
    else:
        raise AssertionError(f"{opname}: never completed")
    assert outcomes
    if atomic:
        # every logged store precedes the commit point and rolls back; the one hook point after
        # it (the publication of the journal records) keeps the operation and publishes them
        published = [1] if ref.recs else []
        assert outcomes == [0] * (len(outcomes) - len(published)) + published, f"{opname}: {outcomes}"
    else:
        assert len(set(outcomes)) > 1, f"{opname}: deaths between per-entry steps keep the finished ones"


def in_lanes(segments: Segments, fn: Callable[[int], int], items: list[int], lanes: int = 2) -> list[int]:
    """[fn(x) for x in items], computed by `lanes` forked children at once (the sweeps below are
    thousands of forks and checks, each independent: on 2 cores they take half the time). A lane
    that raises fails the caller with its traceback; the segments it made are unlinked."""
    import json
    import traceback
    lanes_ = []
    for i in range(lanes):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            before = set(segments.names)
            code = 1
            try:
                out = json.dumps([fn(x) for x in items[i::lanes]])
                code = 0
            except BaseException:
                out = "!" + traceback.format_exc()
                for n in segments.names - before:
                    try:
                        posix_ipc.unlink_shared_memory(n)
                    except posix_ipc.ExistentialError:
                        pass
            finally:
                try:
                    with os.fdopen(w, "w") as f:
                        f.write(out)
                except BaseException:
                    pass  # the test is gone (^C): this child must not go on as a copy of pytest
                os._exit(code)
        os.close(w)
        lanes_.append((pid, r))
    results: list[list[int]] = []
    failures = []
    for pid, r in lanes_:
        with os.fdopen(r) as f:
            out = f.read()
        os.waitpid(pid, 0)
        if out.startswith("!") or not out:
            failures.append(out[1:] or "a lane died without a word")
        else:
            results.append(json.loads(out))
    assert not failures, "\n".join(failures)
    merged = [0] * len(items)
    for i, part in enumerate(results):
        merged[i::lanes] = part
    return merged


def hook_points(segments: Segments, op: Callable[[Table], object]) -> int:
    """How many hook points (logged stores, and the publication) `op` passes on the populated
    table: the n at which a writer armed to die at its n-th completes instead."""
    for n in range(2000):
        t = segments.create()
        populate(t)
        done = os.WIFEXITED(run_in_child(t.name, op, n))
        segments.drop(t)
        if done:
            return n
    raise AssertionError("never completed")


@pytest.mark.parametrize("opname", ["insert_reusing_a_free_blob", "update_registry_to_a_bigger_blob",
                                    "forced_takeover", "purge_pid_one_entry"])
def test_repairer_killed_at_every_store_of_its_rollback_or_publication(segments, opname):
    """A double crash: the writer dies at logged store n, then the process repairing after it dies
    at its own m-th store (of the rollback, or of the journal publication), for every n and m.
    The next repairer must still leave the state before or after the operation, never publish
    a rolled-back operation's records (a phantom event) nor reuse their sequence numbers."""
    op, _ = OPS[opname]
    ref = Reference(segments, opname)
    points = hook_points(segments, op)

    def sweep(n: int) -> int:
        """The writer killed at n, the repairer at every m: how many times the repairer died."""
        deaths = 0
        for m in range(2000):
            t = segments.create()
            populate(t)
            assert died_by_sigkill(run_in_child(t.name, op, n))
            status = run_in_child(t.name, lambda c: c.repair(), m)
            if os.WIFEXITED(status):
                assert os.WEXITSTATUS(status) == 0
                ref.verify(t, f"{opname}: writer killed at {n}, repair completed")
                segments.drop(t)
                return deaths
            assert died_by_sigkill(status), f"repairer status {status}"
            deaths += 1
            ref.verify(t, f"{opname}: writer killed at {n}, repairer killed at {m}")
            segments.drop(t)
        raise AssertionError(f"{opname}: the repair after a death at {n} never completed")

    deaths = in_lanes(segments, sweep, list(range(points)))
    assert sum(deaths) > points, "every rollback store is a point the repairer was killed at"


def journal_words(t: Table) -> dict[str, int]:
    """Offsets of the journal cursors in the header (synt_field_offset), checked against what
    the API reports."""
    off = {f: lib.synt_field_offset(f.encode()) for f in
           ("seq", "count", "j_head", "j_min_valid", "j_seq", "j_pending", "j_last", "j_last_pending")}
    assert word(t, off["seq"]) == raw_seq(t)
    assert word(t, off["count"]) == t.stats()["count"]
    assert word(t, off["j_head"]) == t.journal_head()
    return off


def word(t: Table, off: int) -> int:
    return struct.unpack_from("=Q", t._mm, off)[0]


@pytest.mark.parametrize("published", [False, True], ids=["before_publishing", "after_publishing"])
def test_writer_dead_after_its_commit_gets_its_records_published_exactly_once(segments, published):
    """Recreate by hand the instant after a commit point (undo_n = 0): a committed operation
    whose records are still pending (j_pending holds the head to publish), the head published
    or not yet, the mutex held by a dead writer. Repair must publish them, once. (The hook's
    sweep reaches the first of these instants too.)"""
    t = segments.create()
    t.put(REG, b"a", 0, 1, 1, 1, b"x")
    h0 = t.journal_head()
    t.put(REG, b"b", 0, 1, 1, 2, b"y")
    h1 = t.journal_head()
    off = journal_words(t)
    assert word(t, off["j_pending"]) == 0 and word(t, off["j_seq"]) == 2
    # a dead owner of the mutex, with nothing logged (the hook fires before the first logged store)
    assert died_by_sigkill(run_in_child(t.name, lambda c: c.put(REG, b"c", 0, 1, 1, 3, b"z"), 0))
    assert raw_seq(t) & 1
    struct.pack_into("=Q", t._mm, off["j_pending"], h1)
    struct.pack_into("=Q", t._mm, off["j_last_pending"], word(t, off["j_last"]))
    if not published:
        struct.pack_into("=Q", t._mm, off["j_head"], h0)
        assert [x.key for x in read_all(t.journal(0))] == [b"a"]
    assert t.check() is None
    assert t.journal_head() == h1 and word(t, off["j_pending"]) == 0
    recs = read_all(t.journal(0))
    assert [(x.seq, x.key) for x in recs] == [(1, b"a"), (2, b"b")]
    assert t.put(REG, b"c", 0, 1, 1, 3, b"z")[0] == INSERTED
    assert [(x.seq, x.key) for x in read_all(t.journal(h1))] == [(3, b"c")]
    assert t.check() is None


# ---------------------------------------------------------------- (b) random SIGKILL loop

KEYS = [b"name-%d" % i for i in range(16)]
GROUPS = [b"group-%d" % i for i in range(8)]
PIDS = [(p, s) for p in (201, 202, 203) for s in (1, 2)]
METAS = [b"", b"m" * 10, b"n" * 300, b"o" * 2000]


@functools.lru_cache(maxsize=None)
def chaos_ops(seed: int) -> list[tuple]:
    """A writer's random script (built in the parent once, inherited by forked writers)."""
    rnd = random.Random(seed)
    ops = []
    for _ in range(4096):
        x = rnd.random()
        node = rnd.choice((0, 0, 0, N2))
        pid, start = rnd.choice(PIDS)
        meta = rnd.choice(METAS) + bytes([rnd.randrange(256)])
        if x < 0.25:
            ops.append((0, rnd.choice(KEYS), node, pid, start, meta, F_FORCE if rnd.random() < 0.2 else 0))
        elif x < 0.50:
            ops.append((1, rnd.choice(GROUPS), node, pid, start, meta, 0))
        elif x < 0.65:
            ops.append((2, rnd.choice(KEYS), node, pid, start, b"", F_MATCH_PID if rnd.random() < 0.5 else 0))
        elif x < 0.85:
            ops.append((3, rnd.choice(GROUPS), node, pid, start, b"", 0))
        elif x < 0.97:
            ops.append((4, b"", node, pid, rnd.choice((0, start)), b"", 0))
        elif x < 0.99:
            ops.append((5, rnd.choice(KEYS), node, pid, start, meta, 0))
        else:
            ops.append((6, b"", N2, 0, 0, b"", 0))
    return ops


def _chaos_writer(name: str, ops: list[tuple], ready_fd: int, go_fd: int) -> None:
    """A writer that never stops: random registry and group writes and purges, until killed."""
    t = Table.attach(name)
    os.write(ready_fd, b"r")
    os.close(ready_fd)
    os.read(go_fd, 1)  # all writers start together
    i = 0
    now = time.time_ns
    while True:
        kind, key, node, pid, start, meta, flags = ops[i & 4095]
        i += 1
        if kind == 0:
            t.put(REG, key, node, pid, start, now(), meta, flags, reason=R_CONFLICT if flags else R_NORMAL)
        elif kind == 1:
            t.put(PG, key, node, pid, start, now(), meta)
        elif kind == 2:
            t.delete(REG, key, node, pid, flags)
        elif kind == 3:
            t.delete(PG, key, node, pid)
        elif kind == 4:
            t.purge_pid(node, pid, start, R_PROCESS_EXIT)
        elif kind == 5:
            e = t.get(REG, key)
            if e is not None:
                t.put(REG, key, e.node, e.pid, e.start, now(), meta, F_EXPECT_VER, e.ver)
        else:
            t.purge_node(node, R_NODE_DOWN, node)


def spawn_writer(name: str, seed: int, go_fd: int) -> tuple[int, int]:
    ops = chaos_ops(seed)
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(rfd)
            _chaos_writer(name, ops, wfd, go_fd)
        finally:
            os._exit(3)
    os.close(wfd)
    return pid, rfd


def wait_ready(rfd: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        r, _, _ = select.select([rfd], [], [], max(0.0, deadline - time.monotonic()))
        if r:
            assert os.read(rfd, 1) == b"r", "writer died before it started"
            os.close(rfd)
            return
        if time.monotonic() > deadline:
            raise AssertionError("writer did not start in time")


def test_writers_sigkilled_at_random_moments_leave_a_sound_table(segments):
    iterations = int(SOAK) if SOAK else 300
    budget = None if SOAK else 25.0  # the default suite stays bounded on a loaded machine
    t = segments.create(capacity=256, heap=4 << 20, journal=4 << 20)
    assert t.node_id("n2", create=True) == N2
    rnd = random.Random(0xC0FFEE)
    reader = t.journal(0)
    model: dict = {}
    began = time.monotonic()
    mid_op = resyncs = done = 0
    try:
        for it in range(iterations):
            if budget and time.monotonic() - began > budget and it >= 50:
                break
            go_r, go_w = os.pipe()
            kids = [spawn_writer(t.name, (it * 2 + j) % 16, go_r) for j in range(2)]
            for _, rfd in kids:
                wait_ready(rfd)
            os.write(go_w, b"gg")
            os.close(go_r)
            os.close(go_w)
            time.sleep(rnd.uniform(0, 0.003))
            for pid, _ in kids:
                os.kill(pid, signal.SIGKILL)
                if rnd.random() < 0.5:
                    time.sleep(rnd.uniform(0, 0.0005))
            for pid, _ in kids:
                _, status = os.waitpid(pid, 0)
                assert died_by_sigkill(status), f"iteration {it}: writer ended with status {status}"
            kids = []
            if raw_seq(t) & 1:
                mid_op += 1
            err = t.check()
            assert err is None, f"iteration {it}: {err}"
            assert raw_seq(t) & 1 == 0
            # the journal replays to exactly the table's contents (unless the reader was lapped)
            recs = read_all(reader)
            if recs is None:
                resyncs += 1
                model = contents(t)
            else:
                for x in recs:
                    apply_record(model, x)
                assert model == contents(t), f"iteration {it}: journal and table disagree"
            # and the table still works
            assert t.put(REG, b"probe", 0, 4242, 1, it, b"p%d" % it)[0] == INSERTED
            e = t.get(REG, b"probe")
            assert (e.pid, e.meta) == (4242, b"p%d" % it)
            assert t.delete(REG, b"probe", 0, 4242, F_MATCH_PID)[0] == 0
            done += 1
    finally:
        for pid, _ in kids:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
    assert t.check() is None
    assert done >= min(iterations, 50)
    assert resyncs < done, "the journal check never ran"
    if done >= 100:
        assert mid_op > 0, "no writer was ever killed inside an operation: the loop tests nothing"
    print(f"\n{done} iterations, {mid_op} writers died mid-operation, {resyncs} journal resyncs")


# ---------------------------------------------------------------- (c) readers behind a dead writer


def kill_writer_mid_update(t: Table, stop_after: int = 8, check_odd: bool = True) -> None:
    """A child dies inside an update of b"name" (seq left odd, mutex held by the dead)."""
    status = run_in_child(t.name, lambda c: c.put(REG, b"name", 0, 1, 1, 2, b"after" * 50), stop_after)
    assert died_by_sigkill(status)
    if check_odd:
        assert raw_seq(t) & 1


def test_reader_behind_a_dead_writer_reads_the_state_before_its_operation(segments):
    """Readers never lock and never repair: behind a writer that died mid-update they read the
    last committed state through the undo log (csrc/view.h), and leave the repair to the next
    writer."""
    t = segments.create()
    t.put(REG, b"name", 0, 1, 1, 1, b"before")
    t.put(PG, b"g", 0, 1, 1, 1, b"member")
    kill_writer_mid_update(t)
    info, buf = ffi.new("synt_info_t *"), ffi.new("uint8_t[]", 64)
    assert lib.synt_get(t._t, REG, b"name", 4, 0, 0, info, buf, 64) == 1
    assert ffi.buffer(buf, info.metalen)[:] == b"before" and info.seq == raw_seq(t)
    assert lib.synt_count(t._t, BY_KEY, PG, b"g", 1, ALL_NODES, 0) == 1
    e = t.get(REG, b"name")
    assert (e.pid, e.time_ns, e.meta) == (1, 1, b"before")
    assert [i.meta for i in t.collect(BY_KEY, REG, b"name")] == [b"before"]
    assert t.count(BY_KEY, PG, b"g") == 1
    assert raw_seq(t) & 1, "a reader wrote to the segment"
    assert t.check() is None  # the checker locks: EOWNERDEAD, repair
    assert raw_seq(t) & 1 == 0
    assert t.put(REG, b"name", 0, 1, 1, 3, b"later")[0] == UPDATED
    assert t.get(REG, b"name").meta == b"later"


def _spinning_reader(name: str, ready_fd: int, stop_fd: int, result_fd: int) -> None:
    t = Table.attach(name)
    reads = bad = 0
    os.write(ready_fd, b"r")
    while not select.select([stop_fd], [], [], 0)[0]:
        e = t.get(REG, b"name")
        g = t.collect(BY_KEY, PG, b"g")
        reads += 1
        if e is None or e.meta != b"before" or [i.meta for i in g] != [b"member"]:
            bad += 1
    os.write(result_fd, f"{reads} {bad}".encode())


def test_readers_reading_when_the_writer_dies_go_on_without_it(segments):
    t = segments.create()
    t.put(REG, b"name", 0, 1, 1, 1, b"before")
    t.put(PG, b"g", 0, 1, 1, 1, b"member")
    readers = []
    stop_r, stop_w = os.pipe()
    try:
        for _ in range(2):
            ready_r, ready_w = os.pipe()
            res_r, res_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                try:
                    _spinning_reader(t.name, ready_w, stop_r, res_w)
                finally:
                    os._exit(0)
            os.close(ready_w)
            os.close(res_w)
            wait_ready(ready_r)
            readers.append((pid, res_r))
        kill_writer_mid_update(t)
        # nobody repairs: the readers go on reading the committed state, without waiting
        for pid, res_r in readers:
            os.kill(pid, 0)
        time.sleep(0.2)
        os.write(stop_w, b"x")
        for pid, res_r in readers:
            _, status = os.waitpid(pid, 0)
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
            reads, bad = map(int, os.read(res_r, 64).split())
            os.close(res_r)
            assert reads > 0 and bad == 0, f"reader saw {bad} wrong results in {reads}"
        readers = []
        assert raw_seq(t) & 1, "readers never write: the table waits for the next writer's repair"
    finally:
        for pid, _ in readers:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(stop_r)
        os.close(stop_w)
    assert t.check() is None
    assert t.get(REG, b"name").meta == b"before"
