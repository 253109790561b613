"""The registry (API.md "Registry") with real processes: this test process, Workers, killed processes."""
from __future__ import annotations

import ast
import os
import signal
import subprocess
from typing import Any

import pytest

import syn_mp
from syn_mp import Pid
from syn_mp._readonly import ReadOnlyDict
from conftest import NodeHandle, Worker, _literal, checked, pid_alive, wait_for

S = "s"


# ------------------------------------------------------------------ helpers

def call_all(workers: list[Worker], fn: str, *args: Any, **kwargs: Any) -> list[Any]:
    """Send the same call to every worker before reading any reply, so they run concurrently.

    Each result is the value, or the SynError instance the call raised."""
    line = repr(_literal((fn, args, kwargs))) + "\n"
    for w in workers:
        assert w.proc.stdin
        w.proc.stdin.write(line)
        w.proc.stdin.flush()
    out: list[Any] = []
    for w in workers:
        assert w.proc.stdout
        reply = w.proc.stdout.readline()
        assert reply, f"worker {w.pid} died"
        status, value = ast.literal_eval(reply)
        out.append(getattr(syn_mp, value[0], RuntimeError)(value[1]) if status == "error" else value)
    return out


def me(node: NodeHandle) -> Pid:
    return Pid(node.name, os.getpid())


# ------------------------------------------------------- register / lookup / whereis


def test_register_self_then_lookup_and_whereis_name(node: NodeHandle) -> None:
    assert syn_mp.lookup(S, "web") is None
    assert syn_mp.whereis_name(S, "web") is None
    syn_mp.register(S, "web", meta={"port": 8080})
    assert syn_mp.lookup(S, "web") == (me(node), {"port": 8080})
    found = syn_mp.whereis_name(S, "web")
    assert found == me(node) and isinstance(found, Pid)
    pid, meta = syn_mp.lookup(S, "web")
    assert isinstance(pid, Pid) and pid.node == node.name == syn_mp.node_name()
    syn_mp.register(S, "plain")  # meta defaults to None
    assert syn_mp.lookup(S, "plain") == (me(node), None)
    checked(S)


def test_lookup_from_another_process_sees_this_process_registration(node: NodeHandle) -> None:
    w = node.worker()
    syn_mp.register(S, "api", meta=1)
    assert w.call("lookup", S, "api") == (me(node), 1)
    assert w.call("whereis_name", S, "api") == me(node)
    assert w.call("lookup", S, "absent") is None


@pytest.mark.parametrize("form", ["int", "Pid"])
def test_register_another_live_process_by_int_or_pid(node: NodeHandle, form: str) -> None:
    w = node.worker()
    pid_arg: Any = w.pid if form == "int" else Pid(node.name, w.pid)
    syn_mp.register(S, "worker", pid_arg, meta=("w", 1))
    assert syn_mp.lookup(S, "worker") == (Pid(node.name, w.pid), ("w", 1))
    assert w.call("lookup", S, "worker") == (Pid(node.name, w.pid), ("w", 1))
    assert w.call("names_of", S) == ["worker"]  # the worker itself holds it
    assert syn_mp.names_of(S) == []
    assert syn_mp.names_of(S, pid_arg) == ["worker"]
    checked(S)


def test_worker_registers_itself_and_this_process_looks_it_up(node: NodeHandle) -> None:
    w = node.worker()
    w.call("register", S, "job", meta=[1, 2])
    assert syn_mp.lookup(S, "job") == (Pid(node.name, w.pid), [1, 2])
    assert syn_mp.whereis_name(S, "job") == Pid(node.name, w.pid)


META_VALUES = [
    None, True, False, 0, -1, 2**63 - 1, -2**63, 2**64 - 1, 1.5, -0.25, float("inf"), "", "héllo ✓", b"",
    b"\x00\xff", [], (), [1, "a", None], (1, "a", None), ((1, (2,)), [(3,)]), {"a": 1},
    {1: "int", 2.5: "float", False: "bool"}, {(1, "x"): [b"k"], None: (True,), b"b": {"n": ()}},
    {"list": [1, (2, [3, {"d": (4,)}])], "tuple": ([], {})},
]


@pytest.mark.parametrize("meta", META_VALUES, ids=lambda m: repr(m)[:40])
def test_meta_round_trips_exactly_with_types(node: NodeHandle, meta: Any) -> None:
    syn_mp.register(S, "m", meta=meta)
    pid, got = syn_mp.lookup(S, "m")
    assert got == meta

    def same_types(a: Any, b: Any) -> None:
        # a dict meta free of lists comes back read-only (shared by every caller: _readonly)
        assert type(a) is type(b) or (type(a) is ReadOnlyDict and type(b) is dict), (a, b)
        if isinstance(a, (list, tuple)):
            for x, y in zip(a, b):
                same_types(x, y)
        elif isinstance(a, dict):
            for (ka, va), (kb, vb) in zip(a.items(), b.items()):
                same_types(ka, kb)
                same_types(va, vb)
    same_types(got, meta)
    assert syn_mp.registry_entries(S) == [("m", pid, meta)]


def test_meta_round_trips_across_processes(node: NodeHandle) -> None:
    w = node.worker()
    meta = {"t": (1, (2, "x")), "l": [b"\x01", None, True], 7: -2**63, (1, 2): {"f": 0.5}}
    syn_mp.register(S, "cross", meta=meta)
    got = w.call("lookup", S, "cross")[1]
    assert got == meta and type(got["t"]) is tuple and type(got["t"][1]) is tuple and type(got["l"]) is list
    w.call("register", S, "back", meta=meta)
    got = syn_mp.lookup(S, "back")[1]
    assert got == meta and type(got["t"]) is tuple and type(got[(1, 2)]) is dict


def test_re_register_same_name_same_pid_updates_meta(node: NodeHandle) -> None:
    w = node.worker()
    syn_mp.register(S, "a", meta=1)
    syn_mp.register(S, "a", meta={"v": 2})
    assert syn_mp.lookup(S, "a") == (me(node), {"v": 2})
    assert w.call("lookup", S, "a") == (me(node), {"v": 2})
    syn_mp.register(S, "a", os.getpid(), meta=(3,))  # explicit int pid of self: same pid
    assert w.call("lookup", S, "a") == (me(node), (3,))
    syn_mp.register(S, "a", me(node))  # back to None
    assert w.call("lookup", S, "a") == (me(node), None)
    assert syn_mp.registry_count(S) == 1
    # the same on behalf of the worker, mixing int and Pid forms
    syn_mp.register(S, "b", w.pid, meta="x")
    syn_mp.register(S, "b", Pid(node.name, w.pid), meta="y")
    w.call("register", S, "b", meta="z")
    assert syn_mp.lookup(S, "b") == (Pid(node.name, w.pid), "z")
    assert syn_mp.registry_count(S) == 2
    checked(S)


def test_name_held_by_another_process_is_taken(node: NodeHandle) -> None:
    w = node.worker()
    syn_mp.register(S, "mine", meta="orig")
    with pytest.raises(syn_mp.TakenError) as ei:
        w.call("register", S, "mine", meta="thief")
    assert ei.value.reason == "taken"
    with pytest.raises(syn_mp.TakenError):
        syn_mp.register(S, "mine", w.pid, meta="thief")
    w.call("register", S, "theirs", meta=1)
    with pytest.raises(syn_mp.TakenError):
        syn_mp.register(S, "theirs", meta=2)
    assert syn_mp.lookup(S, "mine") == (me(node), "orig")
    assert syn_mp.lookup(S, "theirs") == (Pid(node.name, w.pid), 1)
    checked(S)


# ------------------------------------------------------------ update_registry

COUNTER_SCRIPT = """
import sys
import syn_mp
syn_mp.add_node_to_scopes(["s"])
print("ready", flush=True)
sys.stdin.readline()
calls = 0
def inc(pid, meta):
    global calls
    calls += 1
    return {"n": meta["n"] + 1, "by": pid.pid}
for _ in range(int(sys.argv[1])):
    syn_mp.update_registry("s", "counter", inc)
print(calls, flush=True)
"""


def test_update_registry_is_atomic_under_concurrent_increments(node: NodeHandle) -> None:
    k, each = 4, 200
    holder = node.worker()
    holder.call("register", S, "counter", meta={"n": 0, "by": 0})
    procs = [node.python(COUNTER_SCRIPT, str(each)) for _ in range(k)]
    for p in procs:
        assert p.stdout and p.stdout.readline().strip() == "ready", p.stderr.read() if p.stderr else ""
    for p in procs:  # release them together
        assert p.stdin
        p.stdin.write("go\n")
        p.stdin.flush()
    calls = 0
    for p in procs:
        out, err = p.communicate(timeout=45)
        assert p.returncode == 0, err
        calls += int(out)
    pid, meta = syn_mp.lookup(S, "counter")
    assert meta["n"] == k * each  # no increment lost
    assert pid == Pid(node.name, holder.pid)  # updating never moves the name
    assert calls >= k * each  # fn is re-run when another write got in between
    checked(S)


def test_update_registry_returns_pid_and_new_meta_and_others_see_it(node: NodeHandle) -> None:
    w = node.worker()
    w.call("register", S, "w", meta=10)
    seen = []

    def fn(pid: Pid, meta: Any) -> Any:
        seen.append((pid, meta))
        return (meta + 1, "t")
    assert syn_mp.update_registry(S, "w", fn) == (Pid(node.name, w.pid), (11, "t"))
    assert seen == [(Pid(node.name, w.pid), 10)]
    assert isinstance(seen[0][0], Pid)
    assert w.call("lookup", S, "w") == (Pid(node.name, w.pid), (11, "t"))
    checked(S)


def test_update_registry_fn_raising_propagates_and_changes_nothing(node: NodeHandle) -> None:
    syn_mp.register(S, "c", meta={"n": 1})
    before = syn_mp.registry_entries(S)

    class Boom(Exception):
        pass

    def bad(pid: Pid, meta: Any) -> Any:
        raise Boom("no")
    with pytest.raises(Boom):
        syn_mp.update_registry(S, "c", bad)
    assert syn_mp.registry_entries(S) == before
    assert syn_mp.lookup(S, "c") == (me(node), {"n": 1})
    checked(S)


def test_update_registry_of_unknown_name_is_undefined(node: NodeHandle) -> None:
    called = []
    with pytest.raises(syn_mp.UndefinedError) as ei:
        syn_mp.update_registry(S, "nobody", lambda p, m: called.append(1))
    assert ei.value.reason == "undefined"
    assert called == []
    assert syn_mp.lookup(S, "nobody") is None
    assert syn_mp.registry_count(S) == 0


# ---------------------------------------------------------------- unregister

def test_unregister_then_lookup_is_none(node: NodeHandle) -> None:
    w = node.worker()
    syn_mp.register(S, "x", meta=1)
    syn_mp.register(S, "y")
    syn_mp.unregister(S, "x")
    assert syn_mp.lookup(S, "x") is None
    assert w.call("lookup", S, "x") is None
    assert syn_mp.names_of(S) == ["y"]
    # a name held by another process can be unregistered (not strict mode)
    w.call("register", S, "z")
    syn_mp.unregister(S, "z")
    assert w.call("whereis_name", S, "z") is None
    # and the name is free again, for anyone
    w.call("register", S, "x", meta=2)
    assert syn_mp.lookup(S, "x") == (Pid(node.name, w.pid), 2)
    checked(S)


def test_unregister_unknown_name_is_undefined(node: NodeHandle) -> None:
    syn_mp.register(S, "keep")
    with pytest.raises(syn_mp.UndefinedError) as ei:
        syn_mp.unregister(S, "gone")
    assert ei.value.reason == "undefined"
    syn_mp.unregister(S, "keep")
    with pytest.raises(syn_mp.UndefinedError):
        syn_mp.unregister(S, "keep")  # twice
    assert syn_mp.registry_count(S) == 0


# ------------------------------------------------------ counts / entries / names_of

def test_counts_entries_and_names_of_by_node(node: NodeHandle) -> None:
    w = node.worker()
    syn_mp.register(S, "a", meta=1)
    syn_mp.register(S, ("b", 2), meta=[2])
    w.call("register", S, "c", meta=None)
    this = syn_mp.node_name()
    assert this == node.name
    want = {("a", me(node), 1), (("b", 2), me(node), (2,)), ("c", Pid(node.name, w.pid), None)}

    def norm(entries: list) -> set:
        return {(n, p, tuple(m) if isinstance(m, list) else m) for n, p, m in entries}
    for node_arg in (None, this):
        assert syn_mp.registry_count(S, node_arg) == 3
        entries = syn_mp.registry_entries(S, node_arg)
        assert len(entries) == 3 and norm(entries) == want
        assert all(isinstance(p, Pid) for _, p, _ in entries)
    assert syn_mp.registry_count(S, node=this) == 3  # keyword form
    assert syn_mp.local_registry_count(S) == 3
    assert syn_mp.registry_count(S, "no-such-node") == 0
    assert syn_mp.registry_entries(S, "no-such-node") == []
    assert sorted(syn_mp.names_of(S), key=repr) == sorted(["a", ("b", 2)], key=repr)
    assert syn_mp.names_of(S, None) == syn_mp.names_of(S, os.getpid()) == syn_mp.names_of(S, me(node))
    assert syn_mp.names_of(S, w.pid) == ["c"] == syn_mp.names_of(S, Pid(this, w.pid))
    assert w.call("names_of", S) == ["c"]
    assert syn_mp.names_of(S, Pid("no-such-node", w.pid)) == []
    assert w.call("registry_count", S) == 3 and w.call("local_registry_count", S) == 3
    # a live process that holds nothing, and an empty scope view
    other = node.worker()
    assert syn_mp.names_of(S, other.pid) == []
    checked(S)


def test_empty_scope_counts(node: NodeHandle) -> None:
    assert syn_mp.registry_count(S) == 0
    assert syn_mp.registry_count(S, node.name) == 0
    assert syn_mp.local_registry_count(S) == 0
    assert syn_mp.registry_entries(S) == []
    assert syn_mp.names_of(S) == []


# ---------------------------------------------------------------- canonical names

def test_names_are_canonical_across_processes(node: NodeHandle) -> None:
    w = node.worker()
    w.call("register", S, ("web", 3), meta="w3")
    assert syn_mp.lookup(S, ("web", 3)) == (Pid(node.name, w.pid), "w3")
    assert syn_mp.lookup(S, ("web", 3.0)) is None
    assert syn_mp.lookup(S, ("web", "3")) is None
    # nested tuples and bytes, registered here, looked up there
    syn_mp.register(S, (b"k", (None, True, 1.5), ""), meta=1)
    assert w.call("lookup", S, (b"k", (None, True, 1.5), "")) == (me(node), 1)
    # -0.0 == 0.0: one name
    syn_mp.register(S, 0.0, meta="zero")
    assert w.call("lookup", S, -0.0) == (me(node), "zero")
    checked(S)


def test_one_one_point_zero_and_true_are_three_names(node: NodeHandle) -> None:
    w = node.worker()
    syn_mp.register(S, 1, meta="int")
    w.call("register", S, 1.0, meta="float")
    syn_mp.register(S, True, meta="bool")
    assert syn_mp.lookup(S, 1) == (me(node), "int")
    assert syn_mp.lookup(S, 1.0) == (Pid(node.name, w.pid), "float")
    assert syn_mp.lookup(S, True) == (me(node), "bool")
    assert w.call("lookup", S, True) == (me(node), "bool")
    assert syn_mp.registry_count(S) == 3
    names = syn_mp.names_of(S)
    assert len(names) == 2 and {type(n) for n in names} == {int, bool}
    assert [type(n) for n in w.call("names_of", S)] == [float]
    syn_mp.unregister(S, 1)
    assert syn_mp.lookup(S, True) == (me(node), "bool") and syn_mp.lookup(S, 1.0) is not None


# ------------------------------------------------------------ many names / death

def test_a_process_holds_many_names(node: NodeHandle) -> None:
    n = 300
    for i in range(n):
        syn_mp.register(S, ("many", i), meta=i)
    assert syn_mp.registry_count(S) == syn_mp.local_registry_count(S) == n
    assert sorted(syn_mp.names_of(S)) == [("many", i) for i in range(n)]
    assert all(syn_mp.lookup(S, ("many", i)) == (me(node), i) for i in range(n))
    for i in range(0, n, 2):
        syn_mp.unregister(S, ("many", i))
    assert sorted(syn_mp.names_of(S)) == [("many", i) for i in range(1, n, 2)]
    checked(S)


def test_sigkilled_holder_loses_all_its_names(node: NodeHandle) -> None:
    w, bystander = node.worker(), node.worker()
    for i in range(50):
        w.call("register", S, ("w", i), meta=i)
    syn_mp.register(S, ("w", "by-us"), w.pid)  # registered for it by another process
    bystander.call("register", S, "stays")
    syn_mp.register(S, "mine")
    assert syn_mp.registry_count(S) == 53
    w.kill()
    wait_for(lambda: syn_mp.registry_count(S) == 2, what="the manager to purge the dead worker's names")
    assert syn_mp.names_of(S, w.pid) == []
    assert syn_mp.lookup(S, ("w", 0)) is None and syn_mp.lookup(S, ("w", "by-us")) is None
    assert syn_mp.lookup(S, "stays") == (Pid(node.name, bystander.pid), None)
    assert syn_mp.lookup(S, "mine") == (me(node), None)
    # a freed name is free for others
    bystander.call("register", S, ("w", 0))
    checked(S)


def test_registered_non_syn_process_is_purged_when_it_exits(node: NodeHandle) -> None:
    p = subprocess.Popen(["sleep", "30"])
    node.procs.append(p)
    syn_mp.register(S, "sleeper", p.pid, meta="zz")
    assert syn_mp.whereis_name(S, "sleeper") == Pid(node.name, p.pid)
    p.kill()
    p.wait()
    wait_for(lambda: syn_mp.lookup(S, "sleeper") is None, what="sleeper purged")
    checked(S)


# ------------------------------------------------------------------ claim_slot

def test_claim_slot_gives_distinct_ids_to_racing_processes(node: NodeHandle) -> None:
    workers = node.workers(8)
    ids = call_all(workers, "claim_slot", S, "slot", 8, meta="m")
    assert sorted(ids) == list(range(8)), ids
    for w, i in zip(workers, ids):
        assert syn_mp.lookup(S, ("slot", i)) == (Pid(node.name, w.pid), "m")
    assert syn_mp.registry_count(S) == 8
    checked(S)


def test_claim_slot_lowest_free_and_capacity_error_when_all_taken(node: NodeHandle) -> None:
    workers = node.workers(3)
    assert [w.call("claim_slot", S, "p", 3) for w in workers] == [0, 1, 2]
    with pytest.raises(syn_mp.CapacityError) as ei:
        syn_mp.claim_slot(S, "p", 3)
    assert ei.value.reason == "full"
    assert syn_mp.names_of(S) == [] and syn_mp.registry_count(S) == 3
    # other prefixes and larger limits are independent
    assert syn_mp.claim_slot(S, "q", 3) == 0
    assert syn_mp.claim_slot(S, "p", 4) == 3
    # unregistering the middle one frees exactly that id
    syn_mp.unregister(S, ("p", 1))
    other = node.worker()
    assert other.call("claim_slot", S, "p", 4) == 1
    checked(S)


def test_claim_slot_is_idempotent_for_a_holder(node: NodeHandle) -> None:
    w = node.worker()
    assert syn_mp.claim_slot(S, "slot", 4, meta="a") == 0
    assert syn_mp.claim_slot(S, "slot", 4, meta="b") == 0
    assert syn_mp.claim_slot(S, "slot", 4, pid=os.getpid()) == 0
    assert w.call("claim_slot", S, "slot", 4) == 1
    assert w.call("claim_slot", S, "slot", 4) == 1
    assert syn_mp.claim_slot(S, "slot", 4, pid=w.pid) == 1  # on its behalf: still its own slot
    assert syn_mp.registry_count(S) == 2
    assert syn_mp.names_of(S) == [("slot", 0)]
    checked(S)


def test_claim_slot_id_of_a_killed_worker_goes_to_its_replacement(node: NodeHandle) -> None:
    workers = node.workers(4)
    ids = call_all(workers, "claim_slot", S, "slot", 4)
    assert sorted(ids) == [0, 1, 2, 3]
    victim = workers[ids.index(2)]
    victim.kill()
    wait_for(lambda: syn_mp.lookup(S, ("slot", 2)) is None, what="slot 2 freed by the manager")
    replacement = node.worker()
    assert replacement.call("claim_slot", S, "slot", 4) == 2
    assert syn_mp.whereis_name(S, ("slot", 2)) == Pid(node.name, replacement.pid)
    checked(S)


def test_claim_slot_reuses_a_dead_holders_id_before_the_manager_purges_it(node: NodeHandle) -> None:
    """gunicorn forks a replacement the moment a worker dies: it must not lose the race to the manager."""
    workers = node.workers(2)
    assert [w.call("claim_slot", S, "slot", 2) for w in workers] == [0, 1]
    manager = node.manager_pid()
    assert manager
    os.kill(manager, signal.SIGSTOP)  # the manager can't purge: only the claimer can notice the death
    try:
        workers[0].kill()
        assert not pid_alive(workers[0].pid)
        assert syn_mp.lookup(S, ("slot", 0)) is not None  # still there: nobody purged it yet
        assert syn_mp.claim_slot(S, "slot", 2) == 0
        assert syn_mp.whereis_name(S, ("slot", 0)) == me(node)
    finally:
        os.kill(manager, signal.SIGCONT)
    assert syn_mp.whereis_name(S, ("slot", 1)) == Pid(node.name, workers[1].pid)
    checked(S)


def test_claim_slot_rejects_bad_arguments(node: NodeHandle) -> None:
    with pytest.raises(TypeError):
        syn_mp.claim_slot(S, 1, 4)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        syn_mp.claim_slot(S, "p", 4.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        syn_mp.claim_slot(S, "p", 0)
    assert syn_mp.registry_count(S) == 0
