"""Process groups (API.md "Process groups") with real processes: this test process, Workers, killed ones."""
from __future__ import annotations

import os
from typing import Any

import pytest

import syn_mp
from syn_mp import Pid
from conftest import NodeHandle, checked, wait_for

S = "s"


def me(node: NodeHandle) -> Pid:
    return Pid(node.name, os.getpid())


def by_repr(xs: list) -> list:
    return sorted(xs, key=repr)


# ------------------------------------------------------------- join / members


def test_join_then_members_member_is_member_for_the_caller(node: NodeHandle) -> None:
    assert syn_mp.members(S, "g") == []
    assert not syn_mp.is_member(S, "g", os.getpid())
    syn_mp.join(S, "g", meta={"role": "web"})
    assert syn_mp.members(S, "g") == [(me(node), {"role": "web"})]
    for form in (os.getpid(), me(node)):
        assert syn_mp.member(S, "g", form) == (me(node), {"role": "web"})
        assert syn_mp.is_member(S, "g", form)
        assert syn_mp.is_local_member(S, "g", form)
    pid, _ = syn_mp.member(S, "g", os.getpid())
    assert isinstance(pid, Pid)
    assert syn_mp.member(S, "other", os.getpid()) is None
    syn_mp.join(S, "nometa")
    assert syn_mp.member(S, "nometa", os.getpid()) == (me(node), None)
    checked(S)


def test_members_of_several_processes_are_sorted_by_pid(node: NodeHandle) -> None:
    workers = node.workers(3)
    for i, w in enumerate(reversed(workers)):
        w.call("join", S, "g", meta=("w", i))
    syn_mp.join(S, "g", meta="me")
    ms = syn_mp.members(S, "g")
    pids = [p for p, _ in ms]
    assert pids == sorted(pids)
    assert all(isinstance(p, Pid) for p in pids)
    assert set(pids) == {me(node)} | {Pid(node.name, w.pid) for w in workers}
    assert dict(ms)[me(node)] == "me"
    for i, w in enumerate(reversed(workers)):
        assert dict(ms)[Pid(node.name, w.pid)] == ("w", i)
        assert syn_mp.member(S, "g", w.pid) == (Pid(node.name, w.pid), ("w", i))
        assert syn_mp.is_member(S, "g", Pid(node.name, w.pid))
    # the same view from a worker
    assert workers[0].call("members", S, "g") == ms
    assert syn_mp.local_members(S, "g") == ms  # a single node: every member is local
    assert syn_mp.member_count(S, "g") == syn_mp.local_member_count(S, "g") == 4
    checked(S)


@pytest.mark.parametrize("form", ["int", "Pid"])
def test_join_and_leave_on_behalf_of_another_process(node: NodeHandle, form: str) -> None:
    w = node.worker()
    pid_arg: Any = w.pid if form == "int" else Pid(node.name, w.pid)
    syn_mp.join(S, "g", pid_arg, meta=1)
    assert syn_mp.members(S, "g") == [(Pid(node.name, w.pid), 1)]
    assert w.call("groups_of", S) == ["g"]
    assert w.call("is_member", S, "g", w.pid)
    assert syn_mp.groups_of(S) == []
    syn_mp.leave(S, "g", pid_arg)
    assert syn_mp.members(S, "g") == []
    assert w.call("groups_of", S) == []
    # and a worker can join this process
    w.call("join", S, "h", os.getpid(), meta="by-worker")
    assert syn_mp.member(S, "h", os.getpid()) == (me(node), "by-worker")
    w.call("leave", S, "h", Pid(node.name, os.getpid()))
    assert not syn_mp.is_member(S, "h", os.getpid())
    checked(S)


def test_join_again_with_other_meta_updates_it(node: NodeHandle) -> None:
    w = node.worker()
    syn_mp.join(S, "g", meta=1)
    syn_mp.join(S, "g", meta=(2, [3]))
    assert syn_mp.members(S, "g") == [(me(node), (2, [3]))]
    assert w.call("member", S, "g", os.getpid()) == (me(node), (2, [3]))
    syn_mp.join(S, "g")  # meta None
    assert syn_mp.member(S, "g", os.getpid()) == (me(node), None)
    w.call("join", S, "g", meta="a")
    w.call("join", S, "g", meta="b")
    syn_mp.join(S, "g", w.pid, meta="c")
    assert syn_mp.member_count(S, "g") == 2
    assert syn_mp.member(S, "g", w.pid) == (Pid(node.name, w.pid), "c")
    checked(S)


def test_leave_removes_only_that_membership(node: NodeHandle) -> None:
    w = node.worker()
    syn_mp.join(S, "g")
    syn_mp.join(S, "h")
    w.call("join", S, "g")
    syn_mp.leave(S, "g")
    assert syn_mp.members(S, "g") == [(Pid(node.name, w.pid), None)]
    assert syn_mp.groups_of(S) == ["h"]
    assert not syn_mp.is_member(S, "g", os.getpid())
    assert w.call("is_member", S, "g", os.getpid()) is False
    w.call("leave", S, "g")
    assert syn_mp.members(S, "g") == []
    assert syn_mp.group_names(S) == ["h"]  # an empty group is no group
    checked(S)


def test_leave_of_a_non_member_is_not_in_group(node: NodeHandle) -> None:
    w = node.worker()
    syn_mp.join(S, "g", meta=1)
    with pytest.raises(syn_mp.NotInGroupError) as ei:
        syn_mp.leave(S, "nope")
    assert ei.value.reason == "not_in_group"
    with pytest.raises(syn_mp.NotInGroupError):
        syn_mp.leave(S, "g", w.pid)  # a live process that is not a member
    with pytest.raises(syn_mp.NotInGroupError):
        w.call("leave", S, "g")
    syn_mp.leave(S, "g")
    with pytest.raises(syn_mp.NotInGroupError):
        syn_mp.leave(S, "g")  # twice
    assert syn_mp.group_count(S) == 0
    checked(S)


# ---------------------------------------------------------------- update_member

def test_update_member_applies_fn_and_others_see_it(node: NodeHandle) -> None:
    w = node.worker()
    w.call("join", S, "g", meta={"n": 1})
    seen = []

    def fn(meta: Any) -> Any:
        seen.append(meta)
        return {"n": meta["n"] + 1, "t": (1,)}
    for form in (w.pid, Pid(node.name, w.pid)):
        got = syn_mp.update_member(S, "g", form, fn)
        assert got[0] == Pid(node.name, w.pid) and isinstance(got[0], Pid)
    assert seen == [{"n": 1}, {"n": 2, "t": (1,)}]
    assert got[1] == {"n": 3, "t": (1,)}
    assert w.call("member", S, "g", w.pid) == (Pid(node.name, w.pid), {"n": 3, "t": (1,)})
    assert syn_mp.member_count(S, "g") == 1
    checked(S)


def test_update_member_of_a_non_member_is_undefined(node: NodeHandle) -> None:
    w = node.worker()
    syn_mp.join(S, "g", meta=1)
    called = []
    for group, pid in (("g", w.pid), ("nope", os.getpid()), ("g", Pid("no-such-node", os.getpid()))):
        with pytest.raises(syn_mp.UndefinedError) as ei:
            syn_mp.update_member(S, group, pid, lambda m: called.append(m))
        assert ei.value.reason == "undefined"
    assert called == []
    assert syn_mp.members(S, "g") == [(me(node), 1)]
    assert syn_mp.group_names(S) == ["g"]
    checked(S)


def test_update_member_fn_raising_propagates_and_changes_nothing(node: NodeHandle) -> None:
    syn_mp.join(S, "g", meta=[1])

    def bad(meta: Any) -> Any:
        raise KeyError("boom")
    with pytest.raises(KeyError):
        syn_mp.update_member(S, "g", os.getpid(), bad)
    assert syn_mp.members(S, "g") == [(me(node), [1])]
    checked(S)


# ---------------------------------------------------------- counts and names

def test_counts_and_group_names_by_node(node: NodeHandle) -> None:
    w = node.worker()
    syn_mp.join(S, "a")
    syn_mp.join(S, ("b", 1))
    w.call("join", S, "a")
    w.call("join", S, "c")
    this = syn_mp.node_name()
    groups = by_repr(["a", ("b", 1), "c"])
    for node_arg in (None, this):
        assert syn_mp.member_count(S, "a", node_arg) == 2
        assert syn_mp.member_count(S, ("b", 1), node_arg) == 1
        assert syn_mp.member_count(S, "zzz", node_arg) == 0
        assert syn_mp.group_count(S, node_arg) == 3
        assert by_repr(syn_mp.group_names(S, node_arg)) == groups
    assert syn_mp.member_count(S, "a", node=this) == 2 and syn_mp.group_count(S, node=this) == 3
    assert syn_mp.member_count(S, "a", "no-such-node") == 0
    assert syn_mp.group_count(S, "no-such-node") == 0
    assert syn_mp.group_names(S, "no-such-node") == []
    assert syn_mp.local_member_count(S, "a") == 2 and syn_mp.local_member_count(S, "zzz") == 0
    assert syn_mp.local_group_count(S) == 3
    assert by_repr(syn_mp.local_group_names(S)) == groups
    assert syn_mp.local_members(S, "a") == syn_mp.members(S, "a")
    assert syn_mp.local_members(S, "zzz") == []
    assert sorted(w.call("local_group_names", S), key=repr) == groups
    assert w.call("group_count", S) == 3
    # a group with many members counts once
    assert len(syn_mp.group_names(S)) == len(set(map(repr, syn_mp.group_names(S))))
    # is_local_member / is_member for pids of unknown nodes and non-members
    assert not syn_mp.is_member(S, "a", Pid("no-such-node", os.getpid()))
    assert not syn_mp.is_local_member(S, "a", Pid("no-such-node", os.getpid()))
    assert syn_mp.member(S, "a", Pid("no-such-node", os.getpid())) is None
    assert not syn_mp.is_local_member(S, "c", os.getpid())
    assert syn_mp.is_local_member(S, "c", w.pid)
    checked(S)


def test_groups_of_for_caller_and_others(node: NodeHandle) -> None:
    w = node.worker()
    syn_mp.join(S, "x")
    syn_mp.join(S, (1, "y"))
    w.call("join", S, "x")
    mine = by_repr(["x", (1, "y")])
    assert by_repr(syn_mp.groups_of(S)) == mine
    assert by_repr(syn_mp.groups_of(S, os.getpid())) == mine == by_repr(syn_mp.groups_of(S, me(node)))
    assert w.call("groups_of", S) == ["x"] == syn_mp.groups_of(S, w.pid) == syn_mp.groups_of(S, Pid(node.name, w.pid))
    assert sorted(w.call("groups_of", S, os.getpid()), key=repr) == mine
    assert syn_mp.groups_of(S, Pid("no-such-node", w.pid)) == []
    checked(S)


def test_group_names_are_canonical_one_one_point_zero_true_differ(node: NodeHandle) -> None:
    w = node.worker()
    syn_mp.join(S, 1, meta="int")
    w.call("join", S, 1.0, meta="float")
    syn_mp.join(S, True, meta="bool")
    w.call("join", S, ("g", (None, b"x")), meta="tuple")
    assert syn_mp.group_count(S) == 4
    assert syn_mp.members(S, 1) == [(me(node), "int")]
    assert syn_mp.members(S, 1.0) == [(Pid(node.name, w.pid), "float")]
    assert syn_mp.members(S, True) == [(me(node), "bool")]
    assert syn_mp.members(S, ("g", (None, b"x"))) == [(Pid(node.name, w.pid), "tuple")]
    assert syn_mp.members(S, ("g", (None, "x"))) == []
    assert sorted(type(g).__name__ for g in syn_mp.group_names(S)) == ["bool", "float", "int", "tuple"]


def test_empty_scope_group_views(node: NodeHandle) -> None:
    assert syn_mp.group_count(S) == syn_mp.local_group_count(S) == 0
    assert syn_mp.group_names(S) == syn_mp.local_group_names(S) == []
    assert syn_mp.groups_of(S) == []
    assert syn_mp.members(S, "g") == syn_mp.local_members(S, "g") == []
    assert syn_mp.member_count(S, "g") == syn_mp.local_member_count(S, "g") == 0


# ------------------------------------------------------------- many / death

def test_a_process_in_many_groups(node: NodeHandle) -> None:
    n = 200
    w = node.worker()
    for i in range(n):
        syn_mp.join(S, ("g", i), meta=i)
    w.call("join", S, ("g", 0))
    assert sorted(syn_mp.groups_of(S)) == [("g", i) for i in range(n)]
    assert syn_mp.group_count(S) == syn_mp.local_group_count(S) == n
    assert all(syn_mp.member(S, ("g", i), os.getpid()) == (me(node), i) for i in range(n))
    assert syn_mp.member_count(S, ("g", 0)) == 2
    for i in range(0, n, 2):
        syn_mp.leave(S, ("g", i))
    assert sorted(syn_mp.groups_of(S)) == [("g", i) for i in range(1, n, 2)]
    assert syn_mp.group_count(S) == n // 2 + 1  # ("g", 0) still has the worker
    checked(S)


def test_sigkilled_member_disappears_from_every_group(node: NodeHandle) -> None:
    victim, bystander = node.worker(), node.worker()
    for i in range(30):
        victim.call("join", S, ("v", i), meta=i)
    syn_mp.join(S, "on-behalf", victim.pid)
    victim.call("join", S, "shared")
    bystander.call("join", S, "shared", meta="b")
    syn_mp.join(S, "shared", meta="me")
    assert syn_mp.group_count(S) == 32
    victim.kill()
    wait_for(lambda: syn_mp.group_count(S) == 1, what="the manager to purge the dead member")
    assert syn_mp.groups_of(S, victim.pid) == []
    assert syn_mp.group_names(S) == ["shared"]
    assert syn_mp.members(S, "shared") == sorted([(Pid(node.name, bystander.pid), "b"), (me(node), "me")])
    assert not syn_mp.is_member(S, "shared", victim.pid)
    assert syn_mp.member_count(S, ("v", 0)) == 0
    checked(S)


def test_member_that_both_joins_and_registers_is_purged_from_both(node: NodeHandle) -> None:
    w = node.worker()
    w.call("join", S, "g")
    w.call("register", S, "n")
    w.kill()
    wait_for(lambda: syn_mp.member_count(S, "g") == 0 and syn_mp.registry_count(S) == 0, what="purge")
    checked(S)
