"""examples/supervisor.py: restarts a SIGKILLed worker under its old id; stops on SIGTERM or after --duration."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil

import syn_mp

from conftest import ROOT, pid_alive, wait_for

SCRIPT = os.path.join(ROOT, "examples", "supervisor.py")


def ids(scope: str) -> dict[int, int]:
    return {m["id"]: p.pid for p, m in syn_mp.members(scope, "workers")}


def ids_when(scope: str, want: list[int]) -> dict[int, int] | None:
    got = ids(scope)
    names = {n[1]: p.pid for n, p, _ in syn_mp.registry_entries(scope)}
    return got if sorted(got) == want and names == got else None


def run(node, *args: str) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, SCRIPT, "--scope", "jobs", *args], env=node.env, cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    node.procs.append(p)  # killed by pid at teardown if still alive
    return p


def kill_left(pids: set[int]) -> None:
    for pid in pids:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_supervisor_restarts_a_dead_worker_with_its_id_and_stops_on_sigterm(make_node):
    n = make_node().use()
    syn_mp.add_node_to_scopes(["jobs"])
    sup = run(n, "--workers", "3", "--duration", "45")
    seen: set[int] = set()
    try:
        held = wait_for(lambda: sup.poll() is None and ids_when("jobs", [0, 1, 2]), timeout=15, what="3 workers")
        seen |= set(held.values())
        assert all(psutil.Process(pid).ppid() == sup.pid for pid in held.values())
        replies, bad = syn_mp.multi_call("jobs", "workers", "who?", timeout=5)
        assert not bad and sorted(r["id"] for _, r in replies) == [0, 1, 2]

        victim = held[2]
        os.kill(victim, signal.SIGKILL)
        new = wait_for(lambda: ids("jobs").get(2) not in (None, victim) and ids("jobs")[2], timeout=15,
                       what="the supervisor to restart worker 2")
        seen.add(new)
        assert wait_for(lambda: ids_when("jobs", [0, 1, 2]), what="3 workers again") == {**held, 2: new}
        assert psutil.Process(new).ppid() == sup.pid
        assert not pid_alive(victim)  # reaped by the supervisor

        sup.send_signal(signal.SIGTERM)
        out, _ = sup.communicate(timeout=15)
        assert sup.returncode == 0, out
    finally:
        kill_left(seen)
    assert "worker id 2 (pid %d) died (SIGKILL): restarting" % victim in out
    assert "SIGTERM: stopping" in out and "stopped 3 workers" in out
    assert not any(pid_alive(p) for p in seen)
    wait_for(lambda: not ids("jobs") and not syn_mp.registry_entries("jobs"), what="workers gone from the scope")


def test_supervisor_stops_by_itself_after_its_duration(make_node):
    n = make_node().use()
    syn_mp.add_node_to_scopes(["jobs"])
    sup = run(n, "--workers", "1", "--duration", "2")
    seen: set[int] = set()
    try:
        held = wait_for(lambda: ids_when("jobs", [0]), timeout=15, what="1 worker")
        seen |= set(held.values())
        out, _ = sup.communicate(timeout=15)
    finally:
        kill_left(seen)
    assert sup.returncode == 0, out
    assert "SIGALRM: stopping" in out and "stopped 1 workers" in out
    assert not any(pid_alive(p) for p in seen)
