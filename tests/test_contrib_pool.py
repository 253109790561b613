"""syn_mp.contrib.pool with real multiprocessing.Pool and ProcessPoolExecutor workers."""
from __future__ import annotations

import glob
import multiprocessing
import os
import signal
import time
from concurrent.futures import ProcessPoolExecutor

import pytest

import syn_mp
from syn_mp.contrib import SettingsError
from syn_mp.contrib.pool import init_worker, initializer, worker_id

from conftest import pid_alive, wait_for


def whoami(_: object = None) -> tuple[int, int]:
    return os.getpid(), worker_id()


def held_ids(scope: str) -> dict[int, int]:
    """{id: pid} of the names ("worker", id) in the scope."""
    return {name[1]: pid.pid for name, pid, _ in syn_mp.registry_entries(scope)
            if isinstance(name, tuple) and name[0] == "worker"}


def all_ids(scope: str, n: int) -> dict[int, int] | None:
    h = held_ids(scope)
    return h if len(h) == n else None


def hold(gate: str) -> tuple[int, int]:
    """A task that marks which worker runs it, then waits until the gate file exists."""
    open(f"{gate}.{os.getpid()}", "w").close()
    while not os.path.exists(gate):
        time.sleep(0.01)
    return os.getpid(), worker_id()


def test_multiprocessing_pool_names_workers_and_a_replacement_takes_the_dead_ones_id(node, tmp_path):
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(3, initializer=init_worker, initargs=("s", "worker", 3, "pool")) as pool:
        seen = dict(pool.map_async(whoami, range(60), chunksize=1).get(timeout=20))
        ids = wait_for(lambda: all_ids("s", 3), what="3 ids claimed")
        assert sorted(ids) == [0, 1, 2]
        assert all(ids[i] == pid for pid, i in seen.items())  # every task saw its own worker's id
        wait_for(lambda: sorted(m["id"] for _, m in syn_mp.members("s", "pool")) == [0, 1, 2], what="3 members")
        assert os.environ.get("SYN_MP_WORKER_ID") is None  # the parent holds nothing

        # kill a worker while every worker runs a task: an idle worker may hold the pool's task
        # queue lock, and a worker SIGKILLed with it would leave the pool deadlocked (multiprocessing)
        gate = str(tmp_path / "gate")
        held = [pool.apply_async(hold, (gate,)) for _ in range(3)]
        wait_for(lambda: len(glob.glob(gate + ".*")) == 3, what="each worker running a task")
        victim = ids[1]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: not pid_alive(victim), what="victim gone")
        # the pool starts a replacement; it claims the id the dead worker held
        new = wait_for(lambda: held_ids("s").get(1) not in (None, victim) and held_ids("s")[1],
                       what="id 1 reclaimed")
        assert new not in ids.values()
        assert sorted(held_ids("s")) == [0, 1, 2]
        open(gate, "w").close()
        wait_for(lambda: sum(r.ready() for r in held) == 2, what="the survivors' tasks done")
        survivors = sorted(r.get(timeout=1) for r in held if r.ready())  # the victim's task is lost with it
        assert survivors == sorted((pid, i) for i, pid in ids.items() if i != 1)
        # and a task run by the replacement reports id 1
        results = wait_for(lambda: [r for r in pool.map_async(whoami, range(30), chunksize=1).get(timeout=10)
                                    if r[0] == new], timeout=10, what="a task on the replacement")
        assert results[0] == (new, 1)
        workers = [p.pid for p in multiprocessing.active_children()]
    for pid in workers:  # Pool.terminate() has reaped them; the manager frees their ids
        wait_for(lambda: not pid_alive(pid), what=f"pool worker {pid} gone")
    wait_for(lambda: not held_ids("s"), what="ids freed")


def test_workers_retired_by_maxtasksperchild_hand_their_ids_on(node):
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2, initializer=init_worker, initargs=("s", "worker", 2), maxtasksperchild=3) as pool:
        results = pool.map_async(whoami, range(24), chunksize=1).get(timeout=30)
    pids = {pid for pid, _ in results}
    assert len(pids) >= 8  # a new worker every 3 tasks
    assert {i for _, i in results} <= {0, 1}  # and each one took an id a retired worker left
    assert all(len({i for p, i in results if p == pid}) == 1 for pid in pids)
    wait_for(lambda: not held_ids("s"), what="ids freed")


def test_process_pool_executor_with_spawn_names_workers(node):
    ctx = multiprocessing.get_context("spawn")  # workers import syn_mp afresh, and find the node by env
    with ProcessPoolExecutor(2, mp_context=ctx, **initializer("s", "worker", 2)) as ex:
        seen = dict(ex.map(whoami, range(40), chunksize=1, timeout=30))
        ids = wait_for(lambda: all_ids("s", 2), what="2 ids claimed")
        assert sorted(ids) == [0, 1]
        assert all(ids[i] == pid for pid, i in seen.items())
        assert syn_mp.group_names("s") == []  # no group asked for
    wait_for(lambda: not held_ids("s"), what="ids freed after shutdown")


def test_bad_pool_settings_fail_in_the_parent():
    with pytest.raises(SettingsError, match="scope"):
        initializer("bad scope!", "worker", 2)
    with pytest.raises(SettingsError, match="slots"):
        initializer("s", "worker", 0)
    with pytest.raises(SettingsError, match="prefix"):
        initializer("s", "", 2)
    with pytest.raises(RuntimeError, match="holds no worker id"):
        worker_id()
