"""The manager: started exactly once, watches real processes, loses nothing when it stops or dies."""
from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

import syn_mp
from syn_mp._table import REG, R_MANAGER_RESTART, R_PROCESS_EXIT
from syn_mp.codec import encode_meta, encode_name
from syn_mp._client import table_of as _table

from conftest import checked, pid_alive, wait_for


def _managers_of(rdir: str) -> list[int]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "daemon" in cmd and rdir in cmd:
            out.append(p.pid)
    return out


def test_racing_clients_start_exactly_one_manager(make_node):
    n = make_node()
    code = "import syn_mp, os; syn_mp.add_node_to_scopes(['s']); print(os.getpid())"
    procs = [n.python(code) for _ in range(12)]
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    pid = n.manager_pid()
    assert pid and pid_alive(pid)
    assert _managers_of(n.rdir) == [pid]
    # the manager outlives every client that raced to start it
    assert all(p.poll() is not None for p in procs)


def test_second_daemon_for_the_same_runtime_dir_refuses(make_node):
    n = make_node()
    n.daemon()
    r = n.cli("daemon", "--node", "other")
    assert r.returncode == 2
    assert "already runs" in r.stderr


@pytest.mark.parametrize("watcher", ["pidfd", "psutil"])
def test_killed_process_loses_its_names_and_memberships(make_node, watcher):
    n = make_node(SYN_MP_WATCHER=watcher).use()
    syn_mp.add_node_to_scopes(["s", "t"])
    assert n.cli("--json", "status").stdout.count(f'"watcher": "{watcher}"') == 1
    w = n.worker()
    w.call("register", "s", "web", meta={"port": 8000})
    w.call("register", "t", ("web", 3))
    w.call("join", "s", "workers")
    w.call("join", "t", "workers", meta="x")
    keeper = n.worker()
    keeper.call("register", "s", "db")
    keeper.call("join", "s", "workers")
    w.kill(signal.SIGKILL)
    wait_for(lambda: syn_mp.lookup("s", "web") is None and syn_mp.lookup("t", ("web", 3)) is None,
             what="names of the dead worker to go")
    wait_for(lambda: syn_mp.members("t", "workers") == [], what="memberships to go")
    assert [p for p, _ in syn_mp.members("s", "workers")] == [syn_mp.Pid("n1", keeper.pid)]
    assert syn_mp.whereis_name("s", "db") == syn_mp.Pid("n1", keeper.pid)
    checked("s")
    checked("t")


def test_removal_is_journaled_with_reason_process_exit(node):
    t = _table("s")
    j = t.journal()
    w = node.worker()
    w.call("register", "s", "a")
    w.kill()
    wait_for(lambda: syn_mp.lookup("s", "a") is None)
    recs = [r for r in j.read() if r.kind == "unregistered"]
    assert [(r.pid, r.reason) for r in recs] == [(w.pid, R_PROCESS_EXIT)]


def test_entry_of_a_reused_pid_is_not_mistaken_for_the_live_process(node):
    """An entry whose start time is not the live process's is a dead process's, whatever its pid."""
    w = node.worker()  # alive, but the entry below claims an older process with the same pid
    t = _table("s")
    rc, _ = t.put(REG, encode_name("ghost"), 0, w.pid, 12345, time.time_ns(), encode_meta(None))
    assert rc == 1
    wait_for(lambda: syn_mp.lookup("s", "ghost") is None, what="stale entry purged")
    assert pid_alive(w.pid)
    # the live process with that pid registers normally and is watched as itself
    w.call("register", "s", "real")
    assert syn_mp.whereis_name("s", "real") == syn_mp.Pid("n1", w.pid)
    w.kill()
    wait_for(lambda: syn_mp.lookup("s", "real") is None)


def test_taken_name_of_a_dead_unwatched_process_is_freed_by_the_next_register(node):
    node.kill_manager()
    w = node.worker()
    w.call("register", "s", "slot")
    w.kill()
    # no manager: the dead process's entry stays until someone trips on it
    assert syn_mp.lookup("s", "slot") is not None
    syn_mp.register("s", "slot")
    assert syn_mp.whereis_name("s", "slot") == syn_mp.Pid("n1", os.getpid())
    checked("s")


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_manager_down_loses_nothing_and_restart_purges_the_dead(node, how):
    alive = node.worker()
    doomed = node.worker()
    alive.call("register", "s", "alive", meta=1)
    alive.call("join", "s", "g")
    doomed.call("register", "s", "doomed")
    doomed.call("join", "s", "g")
    t = _table("s")
    j = t.journal()
    if how == "stop":
        r = node.cli("stop")
        assert r.returncode == 0, r.stderr
        assert node.manager_pid() is None
    else:
        node.kill_manager(signal.SIGKILL)
    # the table lives on: reads and writes work without a manager
    assert syn_mp.lookup("s", "alive") == (syn_mp.Pid("n1", alive.pid), 1)
    syn_mp.register("s", "meanwhile")
    doomed.kill()
    assert syn_mp.lookup("s", "doomed") is not None  # nobody watches while the manager is down
    syn_mp.add_node_to_scopes(["s"])  # restarts the manager
    wait_for(lambda: syn_mp.lookup("s", "doomed") is None, what="restarted manager purges the dead")
    gone = [r for r in j.read() if r.kind in ("unregistered", "left") and r.pid == doomed.pid]
    assert gone and all(r.reason == R_MANAGER_RESTART for r in gone)
    assert syn_mp.lookup("s", "alive") == (syn_mp.Pid("n1", alive.pid), 1)
    assert syn_mp.lookup("s", "meanwhile") is not None
    # the living are watched again
    alive.kill()
    wait_for(lambda: syn_mp.lookup("s", "alive") is None and syn_mp.members("s", "g") == [],
             what="re-watched process purged on death")
    checked("s")


def test_a_registration_made_while_the_manager_is_down_is_watched_after_restart(node):
    node.kill_manager()
    w = node.worker()
    w.call("register", "s", "late")
    syn_mp.add_node_to_scopes(["s"])
    w.kill()
    wait_for(lambda: syn_mp.lookup("s", "late") is None)


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_a_process_announced_to_the_last_manager_is_watched_by_the_next(node, how):
    """The announce ring filters a process it announced already; a new manager clears that filter
    when it starts, so a process that held nothing at its start and registers afterwards is still
    announced, watched, and purged when it dies."""
    w = node.worker()
    w.call("register", "s", "first")  # announced to this manager
    if how == "stop":
        assert node.cli("stop").returncode == 0
    else:
        node.kill_manager(signal.SIGKILL)
    w.call("unregister", "s", "first")  # holds nothing: the next manager's scan won't see it
    syn_mp.add_node_to_scopes(["s"])  # the next manager
    w.call("register", "s", "second")
    w.call("join", "s", "g")
    w.kill()
    wait_for(lambda: syn_mp.lookup("s", "second") is None and syn_mp.members("s", "g") == [],
             what="the re-announced process purged on death")
    checked("s")


def test_many_processes_killed_at_once_all_disappear(node):
    n_procs = 100
    code = """
import sys, syn_mp
syn_mp.register("s", ("w", int(sys.argv[1])))
syn_mp.join("s", "pool")
print("ready", flush=True)
sys.stdin.read()
"""
    procs = [node.python(code, str(i)) for i in range(n_procs)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
    assert syn_mp.member_count("s", "pool") == n_procs
    for p in procs:
        p.kill()
    wait_for(lambda: syn_mp.member_count("s", "pool") == 0 and syn_mp.registry_count("s") == 0,
             timeout=10, what="all entries of the killed processes gone")
    checked("s")


def test_segments_and_sockets_are_private_to_the_owner(node):
    for seg in node.segments():
        assert os.stat("/dev/shm" + seg).st_mode & 0o077 == 0
    for path in (node.paths.ctl, node.paths.wake):
        assert os.stat(path).st_mode & 0o077 == 0
