"""Crash safety through the API (issue #7, part 1): processes calling syn_mp.register / unregister /
join / leave on a real node (its manager running) are SIGKILLed at random moments, and the node's
manager itself is SIGKILLed while many of them churn, then restarted. After every kill:

- the C checker passes (conftest.checked);
- no entry of a dead process survives once the manager has run (wait_for);
- the entries of a long-lived "witness" process (and of every churner still alive) are never lost;
- no lock stays held: a register from the test process completes within a bounded time.

tests/test_crash.py does the same at the level of the raw table (forked writers, the test hook that
kills at every logged store); here the writers are the public API, the manager purges and watches.

Bounded by default (500 iterations, two kills each, within 12 s and at least 100); SYN_MP_SOAK_ITERATIONS=N runs N kills (thousands)
and N // 25 manager kills, without a time budget.
"""
from __future__ import annotations

import mmap
import os
import random
import signal
import struct
import sys
import threading
import time
import traceback

import pytest

import syn_mp
from syn_mp import _client, _procinfo
from syn_mp._table import BY_NODE, PG, REG, WITH_KEY
from syn_mp.codec import encode_name

from conftest import NodeHandle, checked, pid_alive, wait_for

S = "s"
SOAK = os.environ.get("SYN_MP_SOAK_ITERATIONS")
CAPACITY = "4096"  # small tables: the checker runs after every kill
PROBE_TIMEOUT = 5.0  # seconds a register may take behind a dead writer's lock
NAMES = [("churn", i) for i in range(12)]
GROUPS = [("cg", i) for i in range(4)]
METAS = [None, 1, "m" * 40, {"blob": "x" * 300}, b"y" * 2000]  # several blob size classes
WITNESS_NAMES = {("witness", i): {"i": i, "pad": "w" * (50 * i)} for i in range(8)}
WITNESS_GROUPS = {("wg", i): ("member", i) for i in range(4)}


# ------------------------------------------------------------------ helpers

def table():
    return _client.table_of(S)


def dead_entries() -> list[tuple[int, int, int, bytes]]:
    """Local entries whose process (pid and start time) no longer lives."""
    out = []
    for i in table().collect(BY_NODE, 0, node=0, flags=WITH_KEY):
        if _procinfo.start_time(i.pid) != i.start:
            out.append((i.type, i.pid, i.start, i.key))
    return out


def entries_of(pid: int) -> set[tuple[int, bytes]]:
    return {(i.type, i.key) for i in table().collect(BY_NODE, 0, node=0, flags=WITH_KEY) if i.pid == pid}


def probe(pid: int) -> float:
    """A register (and unregister) from this process, for `pid`, in bounded time: no lock stays held.
    Returns how long it took."""
    out: list = []

    def run() -> None:
        t0 = time.monotonic()
        try:
            syn_mp.register(S, "probe", pid=pid, meta="probe")
            assert syn_mp.lookup(S, "probe")[0].pid == pid
            syn_mp.unregister(S, "probe")
            out.append(time.monotonic() - t0)
        except BaseException as e:  # reported below
            out.append(e)
    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(PROBE_TIMEOUT)
    assert not th.is_alive(), f"a register did not complete within {PROBE_TIMEOUT}s: a lock stayed held"
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


def witness_intact(w, node: NodeHandle) -> None:
    for name, meta in WITNESS_NAMES.items():
        got = syn_mp.lookup(S, name)
        assert got == (syn_mp.Pid(node.name, w.pid), meta), f"witness lost {name!r}: {got}"
    for g, meta in WITNESS_GROUPS.items():
        assert syn_mp.member(S, g, w.pid) == (syn_mp.Pid(node.name, w.pid), meta), f"witness left {g!r}"


def start_witness(node: NodeHandle):
    w = node.worker()
    for name, meta in WITNESS_NAMES.items():
        w.call("register", S, name, meta=meta)
    for g, meta in WITNESS_GROUPS.items():
        w.call("join", S, g, meta=meta)
    witness_intact(w, node)
    return w


def churn(seed: int, counter: mmap.mmap, slot: int, keep: bool) -> None:
    """A forked child: the public API in a tight loop until it is killed. With `keep`, it first
    registers ("keep", slot) and joins "keepers", which nobody else touches: they must live as long
    as it does. Counts its finished operations in `counter`."""
    code = 3
    try:
        rnd = random.Random(seed)
        if keep:
            syn_mp.register(S, ("keep", slot), meta=slot)
            syn_mp.join(S, "keepers", meta=slot)
        n = 0
        while True:
            x = rnd.random()
            try:
                if x < 0.30:
                    syn_mp.register(S, rnd.choice(NAMES), meta=rnd.choice(METAS))
                elif x < 0.45:
                    syn_mp.unregister(S, rnd.choice(NAMES))
                elif x < 0.75:
                    syn_mp.join(S, rnd.choice(GROUPS), meta=rnd.choice(METAS))
                else:
                    syn_mp.leave(S, rnd.choice(GROUPS))
            except (syn_mp.TakenError, syn_mp.UndefinedError, syn_mp.NotInGroupError):
                pass
            n += 1
            struct.pack_into("=Q", counter, slot * 8, n)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
    finally:
        os._exit(code)


class Churners:
    """Forked API writers, killed by pid only."""

    def __init__(self, slots: int = 64) -> None:
        self.counter = mmap.mmap(-1, slots * 8)  # MAP_SHARED: the children's op counts
        self.pids: dict[int, int] = {}           # slot -> pid
        self.free = list(range(slots))
        self.ops_done = 0
        self.killed = 0

    def spawn(self, seed: int, keep: bool = False) -> int:
        slot = self.free.pop(0)
        struct.pack_into("=Q", self.counter, slot * 8, 0)
        pid = os.fork()
        if pid == 0:
            churn(seed, self.counter, slot, keep)
        self.pids[slot] = pid
        return slot

    def ops(self, slot: int) -> int:
        return struct.unpack_from("=Q", self.counter, slot * 8)[0]

    def kill(self, slot: int) -> None:
        pid = self.pids.pop(slot)
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, \
            f"churner {pid} ended by itself (status {status}): an API call raised, see stderr"
        self.ops_done += self.ops(slot)
        self.killed += 1
        self.free.append(slot)

    def kill_all(self) -> None:
        for slot in list(self.pids):
            self.kill(slot)

    def close(self) -> None:
        for pid in self.pids.values():
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        self.pids.clear()


@pytest.fixture
def small_node(make_node, monkeypatch) -> NodeHandle:
    n = make_node("crash", SYN_MP_CAPACITY=CAPACITY).use()
    monkeypatch.setenv("SYN_MP_CAPACITY", CAPACITY)  # the manager this process starts inherits it
    syn_mp.add_node_to_scopes([S])
    return n


# ------------------------------------------------------------- API writers

def test_api_writers_sigkilled_at_random_moments(small_node: NodeHandle) -> None:
    node = small_node
    iterations = int(SOAK) if SOAK else 500
    budget = None if SOAK else 12.0
    w = start_witness(node)
    rnd = random.Random(0x5EED)
    ch = Churners()
    seen_odd = 0
    purge_times: list[float] = []
    probe_times: list[float] = []
    began = time.monotonic()
    done = 0
    try:
        for it in range(iterations):
            if budget and time.monotonic() - began > budget and it >= 100:
                break
            slots = [ch.spawn(it * 3 + j) for j in range(2)]
            time.sleep(rnd.uniform(0.0, 0.02))
            for s in slots:
                ch.kill(s)
                if rnd.random() < 0.5:
                    time.sleep(rnd.uniform(0, 0.001))
            t_dead = time.monotonic()
            if table().seq() & 1:
                seen_odd += 1  # a writer died inside an operation and nobody has repaired yet
            probe_times.append(probe(w.pid))
            wait_for(lambda: not dead_entries(), timeout=10, what=f"iteration {it}: the dead purged")
            purge_times.append(time.monotonic() - t_dead)
            checked(S)
            witness_intact(w, node)
            done += 1
    finally:
        ch.close()
    assert node.manager_pid(), "the manager died"
    assert done >= min(iterations, 100)
    assert ch.ops_done > done, "the churners hardly ran: the kills test nothing"
    purge_times.sort()
    probe_times.sort()
    print(f"\n{done} iterations, {ch.killed} API writers SIGKILLed after {ch.ops_done} operations, "
          f"{seen_odd} left the seqlock odd; dead purged within p50 {purge_times[len(purge_times) // 2] * 1e3:.1f} ms"
          f" / max {purge_times[-1] * 1e3:.1f} ms; probe register max {probe_times[-1] * 1e3:.1f} ms; "
          f"{time.monotonic() - began:.1f} s")


# ------------------------------------------------------------- the manager

def test_manager_sigkilled_under_load_and_restarted(small_node: NodeHandle) -> None:
    node = small_node
    rounds = max(4, int(SOAK) // 25) if SOAK else 4
    w = start_witness(node)
    rnd = random.Random(0xD00D)
    ch = Churners()
    seed = iter(range(10**9))
    restarts: list[float] = []
    try:
        for _ in range(6):
            ch.spawn(next(seed), keep=True)
        for r in range(rounds):
            time.sleep(rnd.uniform(0.1, 0.4))  # churning, the manager purging and watching
            # the manager dies; so do some churners, around the same moment
            victims = rnd.sample(list(ch.pids), 2)
            ch.kill(victims[0])
            old = node.kill_manager()
            ch.kill(victims[1])
            # while no manager runs: new processes come and go, the rest keep writing
            ch.spawn(next(seed), keep=True)
            gone = ch.spawn(next(seed), keep=True)
            wait_for(lambda: ch.ops(gone) > 0, what="a churner writing while the manager is down")
            ch.kill(gone)
            ch.spawn(next(seed), keep=True)
            time.sleep(rnd.uniform(0.05, 0.2))
            t0 = time.monotonic()
            syn_mp.add_node_to_scopes([S])  # starts a new manager: it rescans, watches the living, purges the dead
            restarts.append(time.monotonic() - t0)
            new = node.manager_pid()
            assert new and new != old
            wait_for(lambda: not dead_entries(), timeout=10, what=f"round {r}: the dead purged after the restart")
            # the living lost nothing: the witness and every churner's own entries
            witness_intact(w, node)
            for slot, pid in ch.pids.items():
                wait_for(lambda: syn_mp.lookup(S, ("keep", slot)) is not None or ch.ops(slot) == 0,
                         what=f"keep entry of churner {slot}")
                if ch.ops(slot) > 0:  # it got past its keep registration before the check
                    assert syn_mp.lookup(S, ("keep", slot)) == (syn_mp.Pid(node.name, pid), slot), \
                        f"round {r}: live churner {pid} lost its registration"
                    assert syn_mp.member(S, "keepers", pid) == (syn_mp.Pid(node.name, pid), slot)
            probe(w.pid)
            checked(S)
            # the new manager watches the living: a churner killed now is purged by it
            victim = rnd.choice(list(ch.pids))
            vpid = ch.pids[victim]
            ch.kill(victim)
            wait_for(lambda: not entries_of(vpid), timeout=10, what="a churner's death after the restart")
            ch.spawn(next(seed), keep=True)
        ch.kill_all()
        wait_for(lambda: not dead_entries(), timeout=10, what="every churner purged")
        assert entries_of(w.pid) == ({(REG, encode_name(n)) for n in WITNESS_NAMES}
                                     | {(PG, encode_name(g)) for g in WITNESS_GROUPS})
        assert syn_mp.registry_count(S) == len(WITNESS_NAMES)
        checked(S)
        status = node.cli("status")
        assert status.returncode == 0, status.stderr
    finally:
        ch.close()
    assert all(pid_alive(p) for p in [w.pid])
    print(f"\n{rounds} manager SIGKILLs under load: {ch.killed} churners killed after {ch.ops_done} operations; "
          f"restart (add_node_to_scopes) took max {max(restarts) * 1e3:.0f} ms")
