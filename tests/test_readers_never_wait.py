"""Readers never wait for a writer (csrc/view.h): a writer stopped at any instruction of its
operation (SIGSTOP, a debugger, a frozen cgroup) delays no lookup, listing or count of any other
process, which read the last committed state. Real processes, real SIGSTOP."""
from __future__ import annotations

import os
import random
import signal
import struct
import subprocess
import sys
import time

import pytest

from conftest import raw_seq, wait_for
from test_crash import OPS, Segments, fork_child, populate, snapshot

from syn_mp._native import lib
from syn_mp._table import BY_KEY, PG, REG, Table

READ_BUDGET_S = 1.0  # the bound for a fresh process; in practice it is microseconds


@pytest.fixture
def segments():
    s = Segments()
    yield s
    s.close()


def stop_writer_at(name: str, op, n: int) -> int | None:
    """Fork a writer that SIGSTOPs itself at its n-th hook point inside op; return its pid once it
    is stopped, or None when op finished first (n past its last point)."""
    pid = fork_child(name, op, n, arm=lib.synt_test_sigstop_after)
    _, status = os.waitpid(pid, os.WUNTRACED)
    if os.WIFSTOPPED(status):
        return pid
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    return None


def fresh_reader(name: str, allowed: list[dict] | None) -> float:
    """A new process attaches the table and reads everything; returns the slowest read in s.
    It must see one of the `allowed` states (None: for purges, which are one operation per entry,
    any committed prefix; the crash sweep checks those states)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            os.close(r)
            t = Table.attach(name)
            worst = 0.0
            for _ in range(3):
                t0 = time.monotonic()
                snap = snapshot(t)  # collect, get of every entry, stats and counts
                t.get(REG, b"unrelated-name")
                t.count(BY_KEY, PG, b"g1")
                list(t.collect(BY_KEY, PG, b"g1"))
                worst = max(worst, time.monotonic() - t0)
                if allowed is not None and snap not in allowed:
                    os.write(w, b"state")
                    break
            else:
                os.write(w, repr(worst).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    deadline = time.monotonic() + 10
    while True:  # bounded: a reader that hangs fails the test instead of hanging it
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("a fresh reader hung behind a stopped writer")
        time.sleep(0.002)
    out = os.read(r, 100)
    os.close(r)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    assert out != b"state", "the reader saw neither the state before nor after the stopped operation"
    return float(out)


@pytest.mark.parametrize("opname", ["insert_reusing_a_free_blob", "update_registry_to_a_bigger_blob",
                                    "forced_takeover", "leave", "purge_pid_several_entries",
                                    "purge_node", "create_node"])
def test_a_writer_stopped_at_every_store_delays_no_reader(segments, opname):
    op, atomic = OPS[opname]
    ref = segments.create()
    populate(ref)
    op(ref)
    after = snapshot(ref)
    segments.drop(ref)
    stops = 0
    for n in range(2000):
        t = segments.create()
        populate(t)
        before = snapshot(t)
        writer = stop_writer_at(t.name, op, n)
        if writer is None:
            segments.drop(t)
            break
        try:
            stops += 1
            assert raw_seq(t) & 1, "stopped inside its operation"
            # before the commit point (undo_n = 0), the state before; stopped at the journal's
            # publication (records pending), after it, the state after
            def word(f: bytes) -> int:
                return struct.unpack_from("=Q", t._mm, lib.synt_field_offset(f))[0]
            committed = word(b"undo_n") == 0 and word(b"j_pending") != 0
            worst = fresh_reader(t.name, ([after] if committed else [before]) if atomic else None)
            assert worst < READ_BUDGET_S, f"{opname}: a read took {worst:.3f}s behind a writer stopped at {n}"
        finally:
            os.kill(writer, signal.SIGCONT)
            _, status = os.waitpid(writer, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        assert t.check() is None
        segments.drop(t)
    assert stops >= 1


def test_writers_behind_a_stopped_writer_wait_and_stats_name_the_holder(segments):
    """Writers may wait behind a stopped writer; the table says who holds the lock and since when."""
    t = segments.create()
    populate(t)
    writer = stop_writer_at(t.name, OPS["update_registry"][0], 3)
    assert writer is not None
    try:
        st = t.stats()
        assert st["lock_holder"] == writer and st["lock_since"] > 0
        assert t.get(REG, b"r1").meta == b"m-r1"
    finally:
        os.kill(writer, signal.SIGCONT)
        os.waitpid(writer, 0)
    assert t.stats()["lock_holder"] == 0
    assert t.get(REG, b"r1").meta == b"changed"


def test_a_writer_stopped_at_random_moments_through_the_api_delays_no_fresh_process(node):
    """The finding as a user meets it: a worker registering flat out is SIGSTOPped at random
    moments (Ctrl-Z, a debugger, docker pause); every time, a brand-new process's first lookup
    answers at once."""
    import syn_mp
    syn_mp.register("s", ("steady", 1), meta={"role": "probe"})
    writer = node.python("""
        import os, syn_mp
        syn_mp.add_node_to_scopes(["s"])
        print("ready", flush=True)
        i = 0
        while True:
            syn_mp.register("s", ("churn", i % 64), meta={"i": i})
            try:
                syn_mp.unregister("s", ("churn", (i + 32) % 64))
            except syn_mp.UndefinedError:
                pass
            i += 1
    """)
    assert writer.stdout.readline().strip() == "ready"
    rnd = random.Random(11)
    inside = 0
    try:
        for _ in range(30):
            time.sleep(rnd.uniform(0.001, 0.02))
            os.kill(writer.pid, signal.SIGSTOP)
            wait_for(lambda: _state(writer.pid) == "T", what="writer stopped")
            t = syn_mp._client.table_of("s")
            inside += raw_seq(t) & 1
            t0 = time.monotonic()
            p = subprocess.run([sys.executable, "-c", (
                "import time, syn_mp\n"
                "syn_mp.add_node_to_scopes(['s'])\n"
                "t0 = time.monotonic()\n"
                "assert syn_mp.lookup('s', ('steady', 1))[1] == {'role': 'probe'}\n"
                "syn_mp.lookup('s', ('never', 0)); syn_mp.registry_count('s')\n"
                "syn_mp.members('s', 'nobody'); syn_mp.group_count('s')\n"
                "print(time.monotonic() - t0)")], env=node.env, timeout=30, capture_output=True, text=True)
            assert p.returncode == 0, p.stderr
            assert float(p.stdout) < READ_BUDGET_S, f"lookups took {p.stdout.strip()}s behind a stopped writer"
            assert time.monotonic() - t0 < 10
            os.kill(writer.pid, signal.SIGCONT)
    finally:
        os.kill(writer.pid, signal.SIGCONT)
        writer.kill()
        writer.wait()
    # (how often a random stop lands inside the critical section is luck; the sweep above covers
    # every store deterministically)
    print(f"stops inside a write: {inside}/30")


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]
