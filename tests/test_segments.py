"""Segments that are not what the node left there: a foreign layout version (an upgrade), a
half-created one (a crash), one removed under a running node (systemd-logind's RemoveIPC=yes, an
`rm /dev/shm/...`); and a fork while another thread holds the mailbox lock.

Every case is real: real segments in /dev/shm altered or removed under real managers and real
worker processes that hold names and memberships.
"""
from __future__ import annotations

import os
import struct
import time

import pytest

import syn_mp
from syn_mp import _config

from conftest import NodeHandle, Worker, create_as_nobody, in_fork, wait_for

VERSION_OFFSET = 8  # the header: magic (u64) at 0, layout version (u64) at 8


def shm_path(n: NodeHandle, scope: str) -> str:
    return "/dev/shm" + _config.segment_name(n.rdir, scope)


def holds(w: Worker, scope: str, names: list, groups: list) -> None:
    """The worker registers `names` and joins `groups` in `scope`, each with its own meta."""
    for name in names:
        w.call("register", scope, name, meta={"name": name, "pid": w.pid})
    for g in groups:
        w.call("join", scope, g, meta={"group": g, "pid": w.pid})


def sees(fresh: Worker, scope: str, w: Worker, names: list, groups: list) -> bool:
    """Whether `fresh` sees every name and membership of `w`, with their meta."""
    for name in names:
        got = fresh.call("lookup", scope, name)
        if got is None or got[0][1] != w.pid or got[1] != {"name": name, "pid": w.pid}:
            return False
    for g in groups:
        got = fresh.call("member", scope, g, w.pid)
        if got is None or got[1] != {"group": g, "pid": w.pid}:
            return False
    return True


def corrupt(path: str, how: str) -> None:
    """Make the segment at `path` what a crash or another version leaves."""
    if how == "version":  # another layout version, mapped by the workers as it is
        with open(path, "r+b") as f:
            f.seek(VERSION_OFFSET)
            (v,) = struct.unpack("<Q", f.read(8))
            f.seek(VERSION_OFFSET)
            f.write(struct.pack("<Q", v + 1))
    elif how == "magic":  # half-created: synt_init never reached the magic
        with open(path, "r+b") as f:
            f.write(b"\0" * 8)
    elif how == "empty":  # half-created: created, never sized
        os.unlink(path)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        os.close(fd)
    else:
        raise ValueError(how)


@pytest.mark.parametrize("how", ["version", "magic", "empty"])
def test_a_bad_segment_is_rebuilt_alone_at_start(make_node, how: str) -> None:
    """The manager restarts and finds one scope's segment of another version or half-created: the
    node comes up, the other scopes keep their entries, the bad scope is rebuilt, and the living
    processes' names and memberships come back into it."""
    n = make_node()
    n.daemon()
    ws = n.workers(2)
    for w in ws:
        w.call("add_node_to_scopes", ["good", "bad"])
        holds(w, "good", [f"g{w.pid}"], ["gg"])
        holds(w, "bad", [f"b{w.pid}"], ["bg"])
    assert n.cli("stop").returncode == 0
    wait_for(lambda: n.manager_pid() is None, what="manager stopped")
    corrupt(shm_path(n, "bad"), how)

    d = n.daemon()  # fails here when the manager exits at start
    fresh = n.worker()
    fresh.call("add_node_to_scopes", ["good", "bad"])
    for w in ws:  # the good scope untouched
        assert sees(fresh, "good", w, [f"g{w.pid}"], ["gg"])
    # the bad scope is usable again, and every living worker's entries come back without a call
    fresh.call("register", "bad", "fresh")
    assert fresh.call("lookup", "bad", "fresh")[0][1] == fresh.pid
    for w in ws:
        wait_for(lambda: sees(fresh, "bad", w, [f"b{w.pid}"], ["bg"]), timeout=3, what=f"{w.pid} restored")
    # and their writes land in the new segment
    ws[0].call("register", "bad", "later")
    assert fresh.call("lookup", "bad", "later")[0][1] == ws[0].pid
    ws[1].call("unregister", "bad", f"b{ws[1].pid}")
    assert fresh.call("lookup", "bad", f"b{ws[1].pid}") is None
    assert d.poll() is None
    st = n.cli("--json", "status")
    assert st.returncode == 0, st.stderr


def test_a_segment_removed_under_a_running_node_is_rebuilt(make_node) -> None:
    """`rm /dev/shm/<segment>` (what RemoveIPC=yes does) with live workers: within a second or two a
    fresh process sees every living worker's names and memberships again, idle workers included, and
    the old workers' next writes land in the new segment."""
    n = make_node()
    n.daemon()
    ws = n.workers(3)
    for w in ws:
        w.call("add_node_to_scopes", ["s", "other"])
        holds(w, "s", [f"n{w.pid}", ("t", w.pid)], ["all", f"g{w.pid}"])
        holds(w, "other", [f"o{w.pid}"], [])
    path = shm_path(n, "s")
    ino = os.stat(path).st_ino

    os.unlink(path)
    t0 = time.monotonic()
    ws[0].call("register", "s", "early", meta="written to the removed segment")
    fresh = n.worker()
    # no add_node_to_scopes (which would make the manager look at once): the manager notices by
    # itself, and a fresh process's first call waits for the rebuilt segment
    for w in ws:
        wait_for(lambda: sees(fresh, "s", w, [f"n{w.pid}", ("t", w.pid)], ["all", f"g{w.pid}"]), timeout=3,
                 what=f"worker {w.pid}'s entries in the rebuilt segment")
    assert fresh.call("lookup", "s", "early") == ((n.name, ws[0].pid), "written to the removed segment")
    took = time.monotonic() - t0
    print(f"removed segment: every worker's entries visible again after {took * 1000:.0f} ms")
    assert took < 2.5
    assert os.stat(path).st_ino != ino
    assert sorted(p for p, _ in fresh.call("members", "s", "all")) == sorted((n.name, w.pid) for w in ws)
    for w in ws:  # the other scope never noticed
        assert sees(fresh, "other", w, [f"o{w.pid}"], [])

    # the old workers write: into the new segment
    ws[1].call("register", "s", "after", meta=1)
    ws[2].call("join", "s", "late", meta=2)
    ws[0].call("unregister", "s", f"n{ws[0].pid}")
    ws[0].call("leave", "s", "all")
    assert fresh.call("lookup", "s", "after") == ((n.name, ws[1].pid), 1)
    assert fresh.call("members", "s", "late") == [((n.name, ws[2].pid), 2)]
    assert fresh.call("lookup", "s", f"n{ws[0].pid}") is None
    assert (n.name, ws[0].pid) not in [p for p, _ in fresh.call("members", "s", "all")]
    # and the old workers read what the fresh process writes
    fresh.call("register", "s", "from-fresh")
    assert ws[2].call("lookup", "s", "from-fresh")[0][1] == fresh.pid
    # a worker killed now is purged from the new segment
    ws[2].kill()
    wait_for(lambda: fresh.call("lookup", "s", f"n{ws[2].pid}") is None, what="purge of a killed worker")
    st = n.cli("--json", "status")
    assert st.returncode == 0, st.stderr


def test_a_segment_removed_while_no_manager_runs_is_rebuilt_when_one_starts(make_node) -> None:
    """The segment is removed while the manager is down: the next manager creates it anew, and the
    workers, which still map the removed one, put their own entries back into it."""
    n = make_node()
    n.daemon()
    ws = n.workers(2)
    for w in ws:
        w.call("add_node_to_scopes", ["s"])
        holds(w, "s", [f"n{w.pid}"], ["all"])
    n.kill_manager()
    os.unlink(shm_path(n, "s"))
    n.daemon()
    fresh = n.worker()
    fresh.call("add_node_to_scopes", ["s"])
    for w in ws:
        wait_for(lambda: sees(fresh, "s", w, [f"n{w.pid}"], ["all"]), timeout=3, what=f"{w.pid} restored")


def test_a_scope_squatted_by_another_user_is_refused_alone() -> None:
    """Issue 12, item 5: a known scope's segment lost and then created by another user: the manager
    starts, serves every other scope, and refuses only that one (and says so in `status`)."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("needs root to act as a second user")
        pytest.skip("needs root to act as a second user")
    n = NodeHandle("sq")
    try:
        n.daemon()
        w = n.worker()
        w.call("add_node_to_scopes", ["good", "lost"])
        holds(w, "good", ["g"], ["gg"])
        n.kill_manager()
        path = shm_path(n, "lost")
        os.unlink(path)
        create_as_nobody(path, 0o666)  # the name, first
        n.daemon()
        fresh = n.worker()
        fresh.call("add_node_to_scopes", ["good"])
        assert sees(fresh, "good", w, ["g"], ["gg"])
        with pytest.raises(syn_mp.ManagerUnavailableError, match="owned by"):
            fresh.call("add_node_to_scopes", ["lost"])
        st = n.cli("status")
        assert st.returncode != 0 and "lost" in st.stdout and "owned by" in st.stdout, (st.stdout, st.stderr)
    finally:
        try:
            os.unlink(shm_path(n, "lost"))
        except FileNotFoundError:
            pass
        n.close()


_FORK_WHILE_LOCKED = """
import os, sys, threading, time
import syn_mp
from syn_mp import mailbox
syn_mp.add_node_to_scopes(["s"])
held, release = threading.Event(), threading.Event()
def hold():
    with mailbox._mbox_lock:
        held.set()
        release.wait()
threading.Thread(target=hold, daemon=True).start()
held.wait()
pid = os.fork()
if pid == 0:
    try:
        syn_mp.register("s", "child")
        syn_mp.send("s", "child", "hello")
        got = syn_mp.receive(timeout=5)
        os._exit(0 if got == "hello" else 3)
    except BaseException:
        os._exit(4)
release.set()
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        print("exit", os.waitstatus_to_exitcode(status), flush=True)
        sys.exit(0)
    time.sleep(0.01)
os.kill(pid, 9)
os.waitpid(pid, 0)
print("hung", flush=True)
"""


def test_a_child_forked_while_another_thread_holds_the_mailbox_lock_registers_and_receives(make_node) -> None:
    n = make_node()
    p = n.python(_FORK_WHILE_LOCKED)
    out, err = p.communicate(timeout=60)
    assert out.strip() == "exit 0", (out, err)


_NO_WATCHER = """
import sys
import syn_mp
from syn_mp import _segments
_segments.CHECK_INTERVAL = 3600  # this process notices only through its own calls
syn_mp.add_node_to_scopes(["s"])
syn_mp.register("s", "before", meta=0)
syn_mp.join("s", "g", meta=0)
print("ready", flush=True)
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "register":
        syn_mp.register("s", cmd[1], meta=1)
        print("ok", flush=True)
    elif cmd[0] == "lookup":
        print(syn_mp.whereis_name("s", cmd[1]), flush=True)
"""


def test_a_write_to_a_retired_segment_moves_the_writer_over(make_node) -> None:
    """A process that has not noticed the rebuild writes to the old segment: the write fails inside
    the table's lock (SYNT_ERETIRED), and the process attaches the new segment, puts its entries
    back and writes there. A read that misses its cache moves it over the same way."""
    n = make_node()
    n.daemon()
    p = n.python(_NO_WATCHER)
    assert p.stdout.readline().strip() == "ready", p.stderr.read()
    os.unlink(shm_path(n, "s"))
    wait_for(lambda: os.path.exists(shm_path(n, "s")), timeout=3, what="the manager's rebuild")
    fresh = n.worker()  # on the new segment
    # the manager's copy: what the process wrote before the removal
    assert fresh.call("lookup", "s", "before") == ((n.name, p.pid), 0)
    fresh.call("register", "s", "by-fresh")
    p.stdin.write("register after\n")
    p.stdin.flush()
    assert p.stdout.readline().strip() == "ok"
    assert fresh.call("lookup", "s", "after") == ((n.name, p.pid), 1)
    assert fresh.call("members", "s", "g") == [((n.name, p.pid), 0)]
    p.stdin.write("lookup by-fresh\n")
    p.stdin.flush()
    assert p.stdout.readline().strip() == f"Pid(node='{n.name}', pid={fresh.pid})"


def test_a_retired_table_refuses_writes_and_still_reads() -> None:
    """The C side of it: once retired, put and delete fail with SYNT_ERETIRED in every mapping."""
    import posix_ipc
    from syn_mp._table import ERETIRED, REG, Table
    name = f"/synmp-test-retired-{os.getpid()}"
    t = Table.create(name, "n1", 64, 1 << 20, 1 << 16)
    try:
        other = Table.attach(name)
        assert t.put(REG, b"k", 0, 1, 1, 1, b"\xc0")[0] >= 0
        t.retire()
        assert other.retired()
        assert other.put(REG, b"k2", 0, 1, 1, 1, b"\xc0")[0] == ERETIRED
        assert other.delete(REG, b"k", 0, 1)[0] == ERETIRED
        assert other.get(REG, b"k") is not None and other.check() is None
        t.retire(False)
        assert other.put(REG, b"k2", 0, 1, 1, 1, b"\xc0")[0] >= 0
    finally:
        posix_ipc.unlink_shared_memory(name)


def test_a_forked_child_forgets_the_ledgers_of_every_node_its_parent_used(make_node) -> None:
    """The ledger keeps a bare meta for the process's own names, read as "mine" when it is
    replayed: a forked child must start with every ledger empty, those of the nodes its parent
    moved away from included, or a child that went back to such a node could put its parent's
    names back as its own."""
    from syn_mp._client import table_of
    make_node("n1").use()
    syn_mp.add_node_to_scopes(["s"])
    syn_mp.register("s", "parent's", meta={"port": 1})
    t1 = table_of("s")
    assert t1.own_reg
    make_node("n2").use()
    syn_mp.add_node_to_scopes(["s"])
    syn_mp.register("s", "parent's too")
    t2 = table_of("s")
    assert t2.own_reg and t2 is not t1
    assert in_fork(lambda: (len(t1.own_reg), len(t2.own_reg))) == "(0, 0)"
    assert t1.own_reg and t2.own_reg  # the parent's stay
