"""Every error of API.md's table that one node can raise, with its `.reason`, and "a failed call
changes nothing" checked after each (counts, entries, members, and the C table checker)."""
from __future__ import annotations

import json
import os
import subprocess
from typing import Any, Callable

import pytest

import syn_mp
from syn_mp import Pid, _client
from syn_mp._procinfo import start_time
from conftest import NodeHandle, checked, wait_for

S = "s"


# ------------------------------------------------------------------ helpers

def snapshot(scope: str = S) -> Any:
    """Everything a reader can see of a scope; compared before and after a failing call."""
    groups = sorted(syn_mp.group_names(scope), key=repr)
    return (
        sorted(syn_mp.registry_entries(scope), key=repr),
        syn_mp.registry_count(scope),
        syn_mp.local_registry_count(scope),
        groups,
        syn_mp.group_count(scope),
        {repr(g): syn_mp.members(scope, g) for g in groups},
    )


def fails(exc: type[syn_mp.SynError], reason: str, fn: Callable[..., Any], *args: Any, scope: str = S,
          **kwargs: Any) -> syn_mp.SynError:
    """fn(*args, **kwargs) raises exc with .reason == reason and leaves the scope as it was."""
    before = snapshot(scope)
    with pytest.raises(exc) as ei:
        fn(*args, **kwargs)
    assert ei.value.reason == reason
    assert isinstance(ei.value, syn_mp.SynError)
    assert snapshot(scope) == before, f"{fn.__name__}{args} failed but changed the scope"
    checked(scope)
    return ei.value


def populate(node: NodeHandle) -> None:
    """Some state for failures to leave alone."""
    syn_mp.register(S, "mine", meta={"v": 1})
    syn_mp.register(S, ("t", 1), meta=(1, 2))
    syn_mp.join(S, "g", meta="gm")
    syn_mp.join(S, ("h", 2))


@pytest.fixture
def populated(node: NodeHandle) -> NodeHandle:
    populate(node)
    return node


def me(node: NodeHandle) -> Pid:
    return Pid(node.name, os.getpid())


# ---------------------------------------------------------------- TakenError

def test_taken_error_for_a_name_held_by_another_process(populated: NodeHandle) -> None:
    node = populated
    w = node.worker()
    w.call("register", S, "theirs", meta=1)
    fails(syn_mp.TakenError, "taken", syn_mp.register, S, "theirs")
    fails(syn_mp.TakenError, "taken", syn_mp.register, S, "theirs", meta="other")
    fails(syn_mp.TakenError, "taken", syn_mp.register, S, "mine", w.pid, meta=2)
    fails(syn_mp.TakenError, "taken", syn_mp.register, S, "mine", Pid(node.name, w.pid))
    fails(syn_mp.TakenError, "taken", w.call, "register", S, "mine")
    assert syn_mp.lookup(S, "theirs") == (Pid(node.name, w.pid), 1)
    assert syn_mp.lookup(S, "mine") == (me(node), {"v": 1})


# ------------------------------------------------------------- NotAliveError

def _exited_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()  # exited and reaped
    assert start_time(p.pid) is None
    return p.pid


WRITES_NAMING_A_PID: list[tuple[str, Callable[[int], Any]]] = [
    ("register", lambda pid: syn_mp.register(S, "new", pid, meta=1)),
    ("register_taken_name", lambda pid: syn_mp.register(S, "mine", pid)),
    ("join", lambda pid: syn_mp.join(S, "g", pid, meta=1)),
    ("claim_slot", lambda pid: syn_mp.claim_slot(S, "slot", 4, pid)),
]


@pytest.mark.parametrize("call", [c for _, c in WRITES_NAMING_A_PID], ids=[n for n, _ in WRITES_NAMING_A_PID])
def test_not_alive_error_for_an_exited_and_reaped_pid(populated: NodeHandle, call: Callable[[int], Any]) -> None:
    node = populated
    pid = _exited_pid()
    for form in (pid, Pid(node.name, pid)):
        fails(syn_mp.NotAliveError, "not_alive", call, form)


def test_not_alive_error_for_a_zombie(populated: NodeHandle) -> None:
    node = populated
    p = subprocess.Popen(["true"])
    try:
        def state() -> bytes:
            with open(f"/proc/{p.pid}/stat", "rb") as f:
                data = f.read()
            return data[data.rindex(b")") + 2:].split()[0]
        wait_for(lambda: state() == b"Z", what="the child to become a zombie")  # exited, not reaped
        for _, call in WRITES_NAMING_A_PID:
            fails(syn_mp.NotAliveError, "not_alive", call, p.pid)
            fails(syn_mp.NotAliveError, "not_alive", call, Pid(node.name, p.pid))
    finally:
        p.wait()


def test_not_alive_error_for_nonsense_pids(populated: NodeHandle) -> None:
    for pid in (0, -1, 2**31 + 12345):
        fails(syn_mp.NotAliveError, "not_alive", syn_mp.register, S, "new", pid)
        fails(syn_mp.NotAliveError, "not_alive", syn_mp.join, S, "g", pid)


# -------------------------------------------------------------- NotSelfError

@pytest.fixture
def strict_node(make_node: Callable[..., NodeHandle], monkeypatch: pytest.MonkeyPatch) -> NodeHandle:
    n = make_node("strict1", SYN_MP_STRICT="1").use()
    monkeypatch.setenv("SYN_MP_STRICT", "1")  # this process starts the manager: it inherits our env
    syn_mp.add_node_to_scopes([S])
    status = n.cli("--json", "status")
    assert json.loads(status.stdout)["strict"] is True, status.stderr
    return n


_FORKED_WRITER = """
import os
import syn_mp
S = "s"
syn_mp.register(S, "parent")
child = os.fork()
if child == 0:
    try:
        syn_mp.register(S, "child")
        got = [syn_mp.whereis_name(S, "child").pid == os.getpid()]
        try:
            syn_mp.unregister(S, "parent")
            got.append("unregistered its parent's name")
        except syn_mp.NotSelfError:
            got.append(True)
        syn_mp.unregister(S, "child")
        got.append(syn_mp.whereis_name(S, "child") is None)
        print("child", got, flush=True)
    finally:
        os._exit(0)
os.waitpid(child, 0)
print("parent", syn_mp.whereis_name(S, "parent").pid == os.getpid(), flush=True)
"""


def test_a_forked_child_writes_as_itself_in_strict_mode(strict_node: NodeHandle) -> None:
    """The write path keeps the caller's identity in C (set once per process): a child forked
    after its parent wrote registers under its own pid and may not unregister its parent's name."""
    p = strict_node.python(_FORKED_WRITER)
    out, err = p.communicate(timeout=60)
    assert out.split("\n")[:2] == ["child [True, True, True]", "parent True"], (out, err)


_UNREGISTER_FIRST = """
import sys
import syn_mp
S = "s"
try:
    syn_mp.unregister(S, "never-held")  # strict: C learns who the caller is here, on an error path
except syn_mp.UndefinedError:
    pass
if sys.argv[1] == "register":  # ... so this write finds the identity set already
    syn_mp.register(S, "late")
else:
    syn_mp.join(S, "late-group")
print("ready", flush=True)
sys.stdin.readline()  # sent to: whatever reached no mailbox is lost
print(repr(syn_mp.receive(timeout=10)), flush=True)
"""


@pytest.mark.parametrize("write", ["register", "join"])
def test_a_process_whose_first_write_is_an_unregister_still_gets_messages_in_strict_mode(
        strict_node: NodeHandle, write: str) -> None:
    """A process's mailbox is opened when C first learns the caller's identity, whichever write
    that is: else a process that unregistered before it registered (or joined) would hold a name
    or a membership with no mailbox behind it, and what was sent before it first called receive()
    would be lost."""
    p = strict_node.python(_UNREGISTER_FIRST, write)
    assert p.stdout.readline().strip() == "ready", p.stderr.read()
    if write == "register":
        syn_mp.send(S, "late", "sent")
    else:
        assert syn_mp.publish(S, "late-group", "sent") == 1
    out, err = p.communicate("go\n", timeout=30)
    assert out.strip() == "'sent'", (out, err)


def test_not_self_error_in_strict_mode_for_writes_naming_another_process(strict_node: NodeHandle) -> None:
    node = strict_node
    populate(node)
    w = node.worker()
    w.call("register", S, "theirs", meta=1)
    w.call("join", S, "wg", meta=1)
    other = Pid(node.name, w.pid)
    called = []
    for pid in (w.pid, other):
        fails(syn_mp.NotSelfError, "not_self", syn_mp.register, S, "new", pid)
        fails(syn_mp.NotSelfError, "not_self", syn_mp.register, S, "theirs", pid, meta=2)  # even its own name
        fails(syn_mp.NotSelfError, "not_self", syn_mp.join, S, "g", pid)
        fails(syn_mp.NotSelfError, "not_self", syn_mp.join, S, "wg", pid, meta=2)
        fails(syn_mp.NotSelfError, "not_self", syn_mp.leave, S, "wg", pid)
        fails(syn_mp.NotSelfError, "not_self", syn_mp.update_member, S, "wg", pid, lambda m: called.append(m))
        fails(syn_mp.NotSelfError, "not_self", syn_mp.claim_slot, S, "slot", 4, pid)
    # the entries of another process can't be changed by name either
    fails(syn_mp.NotSelfError, "not_self", syn_mp.update_registry, S, "theirs", lambda p, m: called.append(m))
    fails(syn_mp.NotSelfError, "not_self", syn_mp.unregister, S, "theirs")
    assert called == []  # fn never ran
    # the worker is just as bound: it can't touch this process's entries
    fails(syn_mp.NotSelfError, "not_self", w.call, "unregister", S, "mine")
    fails(syn_mp.NotSelfError, "not_self", w.call, "leave", S, "g", os.getpid())
    fails(syn_mp.NotSelfError, "not_self", w.call, "join", S, "g", os.getpid(), meta="x")
    assert syn_mp.lookup(S, "theirs") == (other, 1)


def test_strict_mode_writes_on_self_succeed(strict_node: NodeHandle) -> None:
    node = strict_node
    w = node.worker()
    for pid in (None, os.getpid(), me(node)):
        syn_mp.register(S, "a", pid, meta=repr(pid))
        assert syn_mp.lookup(S, "a") == (me(node), repr(pid))
        syn_mp.join(S, "g", pid, meta=1)
        assert syn_mp.update_member(S, "g", pid if pid is not None else os.getpid(), lambda m: m + 1) == (me(node), 2)
        assert syn_mp.update_registry(S, "a", lambda p, m: (m, "u")) == (me(node), (repr(pid), "u"))
        syn_mp.leave(S, "g", pid)
        syn_mp.unregister(S, "a")
        assert syn_mp.registry_count(S) == 0 and syn_mp.group_count(S) == 0
    assert syn_mp.claim_slot(S, "slot", 2) == 0
    # a worker writing for itself is fine too
    w.call("register", S, "w")
    w.call("join", S, "wg")
    w.call("unregister", S, "w")
    w.call("leave", S, "wg")
    assert syn_mp.names_of(S, w.pid) == [] and syn_mp.groups_of(S, w.pid) == []
    # reads of other processes are not writes
    w.call("register", S, "w2", meta=5)
    assert syn_mp.lookup(S, "w2") == (Pid(node.name, w.pid), 5)
    checked(S)


# ------------------------------------------------------------ UndefinedError

def test_undefined_error_for_missing_registrations_and_memberships(populated: NodeHandle) -> None:
    node = populated
    w = node.worker()
    called = []
    fails(syn_mp.UndefinedError, "undefined", syn_mp.unregister, S, "nobody")
    fails(syn_mp.UndefinedError, "undefined", syn_mp.update_registry, S, "nobody", lambda p, m: called.append(m))
    fails(syn_mp.UndefinedError, "undefined", syn_mp.update_member, S, "g", w.pid, lambda m: called.append(m))
    fails(syn_mp.UndefinedError, "undefined", syn_mp.update_member, S, "nope", os.getpid(), lambda m: called.append(m))
    fails(syn_mp.UndefinedError, "undefined", w.call, "unregister", S, "nobody")
    # names differ by type: ("t", 1.0) and ("t", True) are not ("t", 1)
    fails(syn_mp.UndefinedError, "undefined", syn_mp.unregister, S, ("t", 1.0))
    fails(syn_mp.UndefinedError, "undefined", syn_mp.unregister, S, ("t", True))
    assert called == []


# ---------------------------------------------------------- NotInGroupError

def test_not_in_group_error_for_leave_of_a_non_member(populated: NodeHandle) -> None:
    node = populated
    w = node.worker()
    fails(syn_mp.NotInGroupError, "not_in_group", syn_mp.leave, S, "nope")
    fails(syn_mp.NotInGroupError, "not_in_group", syn_mp.leave, S, "g", w.pid)
    fails(syn_mp.NotInGroupError, "not_in_group", syn_mp.leave, S, "g", Pid(node.name, w.pid))
    fails(syn_mp.NotInGroupError, "not_in_group", w.call, "leave", S, "g")
    fails(syn_mp.NotInGroupError, "not_in_group", syn_mp.leave, S, ("h", 2.0))


# -------------------------------------------------------- InvalidScopeError

ALL_SCOPED_CALLS: list[tuple[str, tuple]] = [
    ("register", ("x",)), ("lookup", ("x",)), ("whereis_name", ("x",)),
    ("update_registry", ("x", lambda p, m: m)), ("unregister", ("x",)), ("registry_count", ()),
    ("local_registry_count", ()), ("registry_entries", ()), ("names_of", ()), ("claim_slot", ("p", 2)),
    ("join", ("g",)), ("leave", ("g",)), ("members", ("g",)), ("member", ("g", 1)), ("is_member", ("g", 1)),
    ("update_member", ("g", 1, lambda m: m)), ("member_count", ("g",)), ("local_member_count", ("g",)),
    ("local_members", ("g",)), ("is_local_member", ("g", 1)), ("group_count", ()),
    ("local_group_count", ()), ("group_names", ()), ("local_group_names", ()), ("groups_of", ()),
    ("subcluster_nodes", ()),
]


def test_invalid_scope_error_for_a_scope_never_added(populated: NodeHandle) -> None:
    for fn, args in ALL_SCOPED_CALLS:
        fails(syn_mp.InvalidScopeError, "invalid_scope", getattr(syn_mp, fn), "never-added", *args)
    assert "never-added" not in syn_mp.node_scopes()
    assert syn_mp.node_scopes() == [S]


def test_invalid_scope_error_for_a_scope_of_another_node(populated: NodeHandle,
                                                           make_node: Callable[..., NodeHandle]) -> None:
    node = populated
    n2 = make_node("n2")
    w2 = n2.worker()  # a process of node n2 (its own runtime dir)
    w2.call("add_node_to_scopes", ["only-n2"])  # starts n2's manager
    w2.call("register", "only-n2", "x")
    assert w2.call("node_scopes") == ["only-n2"]
    for fn, args in ALL_SCOPED_CALLS:
        fails(syn_mp.InvalidScopeError, "invalid_scope", getattr(syn_mp, fn), "only-n2", *args)
    # and n1's scope does not exist for n2's processes
    with pytest.raises(syn_mp.InvalidScopeError):
        w2.call("lookup", S, "mine")
    with pytest.raises(syn_mp.InvalidScopeError):
        w2.call("register", S, "mine")
    assert syn_mp.lookup(S, "mine") == (me(node), {"v": 1})
    assert syn_mp.node_scopes() == [S]


# ------------------------------------------------------------ RemotePidError

def test_remote_pid_error_for_writes_naming_another_nodes_pid(populated: NodeHandle) -> None:
    remote = Pid("othernode", 1)
    fails(syn_mp.RemotePidError, "remote_pid", syn_mp.register, S, "new", remote)
    fails(syn_mp.RemotePidError, "remote_pid", syn_mp.register, S, "mine", remote)
    fails(syn_mp.RemotePidError, "remote_pid", syn_mp.register, S, "new", Pid("othernode", os.getpid()))
    fails(syn_mp.RemotePidError, "remote_pid", syn_mp.join, S, "g", remote, meta=1)
    fails(syn_mp.RemotePidError, "remote_pid", syn_mp.join, S, "new-group", remote)
    fails(syn_mp.RemotePidError, "remote_pid", syn_mp.leave, S, "g", remote)
    fails(syn_mp.RemotePidError, "remote_pid", syn_mp.claim_slot, S, "slot", 2, remote)
    # reads of a remote pid are fine and find nothing
    assert syn_mp.names_of(S, remote) == [] and syn_mp.groups_of(S, remote) == []
    assert syn_mp.member(S, "g", remote) is None and not syn_mp.is_member(S, "g", remote)


# ------------------------------------------------------------- CapacityError

def test_capacity_error_when_the_table_is_full(make_node: Callable[..., NodeHandle],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    node = make_node("small", SYN_MP_CAPACITY="8").use()
    monkeypatch.setenv("SYN_MP_CAPACITY", "8")  # this process starts the manager: it inherits our env
    syn_mp.add_node_to_scopes([S])
    w = node.worker()
    for i in range(6):
        syn_mp.register(S, ("n", i), meta=i)
    w.call("join", S, "g")
    w.call("register", S, "w")
    assert syn_mp.registry_count(S) + sum(len(syn_mp.members(S, g)) for g in syn_mp.group_names(S)) == 8
    # the 9th entry, of any kind and from any process
    fails(syn_mp.CapacityError, "full", syn_mp.register, S, "ninth")
    fails(syn_mp.CapacityError, "full", syn_mp.join, S, "g2")
    fails(syn_mp.CapacityError, "full", syn_mp.join, S, "g")  # a new membership of an existing group
    fails(syn_mp.CapacityError, "full", w.call, "register", S, "ninth")
    fails(syn_mp.CapacityError, "full", w.call, "join", S, "g2")
    fails(syn_mp.CapacityError, "full", syn_mp.claim_slot, S, "slot", 3)
    assert syn_mp.lookup(S, "ninth") is None
    # updates of existing entries need no room
    syn_mp.register(S, ("n", 0), meta="updated")
    w.call("join", S, "g", meta="updated")
    assert syn_mp.update_registry(S, ("n", 1), lambda p, m: m + 100)[1] == 101
    assert syn_mp.update_member(S, "g", w.pid, lambda m: (m,))[1] == ("updated",)
    checked(S)
    # one entry less and there is room again
    syn_mp.unregister(S, ("n", 5))
    syn_mp.register(S, "ninth", meta=9)
    assert syn_mp.lookup(S, "ninth") == (me(node), 9)
    fails(syn_mp.CapacityError, "full", syn_mp.join, S, "g2")
    syn_mp.unregister(S, ("n", 4))
    syn_mp.join(S, "g")
    assert syn_mp.member_count(S, "g") == 2
    # a dead process's entries are freed by the manager, making room
    fails(syn_mp.CapacityError, "full", syn_mp.register, S, "tenth")
    w.kill()
    wait_for(lambda: syn_mp.registry_count(S) == 5 and syn_mp.member_count(S, "g") == 1,
             what="the dead worker's entries to be purged")
    syn_mp.register(S, "tenth")
    syn_mp.join(S, "g2")
    fails(syn_mp.CapacityError, "full", syn_mp.register, S, "eleventh")
    checked(S)


# ------------------------------------------------------------- EncodingError

class Opaque:
    pass


BAD_NAMES = [[1], ["a", "b"], {"a": 1}, {1}, frozenset({1}), Opaque(), object(), bytearray(b"x"), ("ok", [1]),
             ("ok", {1: 2}), "x" * 1025, b"x" * 1100, tuple(range(600)), 2**64, -2**63 - 1, "\ud800"]
BAD_METAS = [{1}, frozenset(), Opaque(), object(), [Opaque()], {"k": {1}}, {Opaque(): 1}, {frozenset(): 1},
             "x" * (16 * 1024 + 1), b"x" * 16400, [0] * 17000, 2**64, bytearray(b"m")]


def _ids(vals: list) -> list[str]:
    return [f"{type(v).__name__}{len(v) if hasattr(v, '__len__') else ''}" for v in vals]


@pytest.mark.parametrize("name", BAD_NAMES, ids=_ids(BAD_NAMES))
def test_encoding_error_for_bad_names(populated: NodeHandle, name: Any) -> None:
    for fn, extra in (("register", ()), ("join", ()), ("unregister", ()), ("leave", ()),
                      ("update_registry", (lambda p, m: m,)), ("update_member", (os.getpid(), lambda m: m)),
                      ("lookup", ()), ("whereis_name", ()), ("members", ()), ("member_count", ()),
                      ("is_member", (os.getpid(),)), ("local_members", ())):
        err = fails(syn_mp.EncodingError, "encoding", getattr(syn_mp, fn), S, name, *extra)
        assert isinstance(err, TypeError)


@pytest.mark.parametrize("meta", BAD_METAS, ids=_ids(BAD_METAS))
def test_encoding_error_for_bad_meta(populated: NodeHandle, meta: Any) -> None:
    for fn, args in (("register", ("new",)), ("register", ("mine",)), ("join", ("g",)), ("join", ("new-g",))):
        err = fails(syn_mp.EncodingError, "encoding", getattr(syn_mp, fn), S, *args, meta=meta)
        assert isinstance(err, TypeError)
    fails(syn_mp.EncodingError, "encoding", syn_mp.claim_slot, S, "slot", 2, meta=meta)
    # an fn returning a bad meta fails the same way, and nothing changes
    fails(syn_mp.EncodingError, "encoding", syn_mp.update_registry, S, "mine", lambda p, m: meta)
    fails(syn_mp.EncodingError, "encoding", syn_mp.update_member, S, "g", os.getpid(), lambda m: meta)


def test_largest_names_and_meta_fit(populated: NodeHandle) -> None:
    from syn_mp.codec import encode_meta, encode_name
    name = "n" * 1021  # str8/str16 header: 3 bytes
    assert len(encode_name(name)) == 1024
    meta = b"m" * (16 * 1024 - 3)  # bin16 header
    assert len(encode_meta(meta)) == 16 * 1024
    syn_mp.register(S, name, meta=meta)
    assert syn_mp.lookup(S, name) == (me(populated), meta)
    syn_mp.join(S, name, meta=meta)
    assert syn_mp.member(S, name, os.getpid()) == (me(populated), meta)
    fails(syn_mp.EncodingError, "encoding", syn_mp.register, S, name + "n")
    fails(syn_mp.EncodingError, "encoding", syn_mp.register, S, "x", meta=meta + b"m")
    checked(S)


# ----------------------------------------------------------- ValueError (scope names)

BAD_SCOPES = ["", "a" * 65, "a/b", "a b", "é", "s\n", "../s", 5, None, b"s", ("s",), ["s"], 1.5]


@pytest.mark.parametrize("scope", BAD_SCOPES, ids=[repr(s)[:12] for s in BAD_SCOPES])
def test_value_error_for_bad_scope_names(populated: NodeHandle, scope: Any) -> None:
    before = snapshot()
    for fn, args in ALL_SCOPED_CALLS:
        with pytest.raises(ValueError):
            getattr(syn_mp, fn)(scope, *args)
    with pytest.raises(ValueError):
        syn_mp.add_node_to_scopes([scope])
    with pytest.raises(ValueError):
        syn_mp.add_node_to_scopes(["fine", scope])  # all checked before anything is added
    assert syn_mp.node_scopes() == [S]
    assert snapshot() == before
    checked(S)


def test_longest_scope_name_is_valid(populated: NodeHandle) -> None:
    longest = "a" * 64
    syn_mp.add_node_to_scopes([longest, "A.b-c_9"])
    syn_mp.register(longest, "x")
    assert syn_mp.lookup(longest, "x") == (me(populated), None)
    assert sorted(syn_mp.node_scopes()) == sorted([S, longest, "A.b-c_9"])


# -------------------------------------------------------- TypeError (pid arguments)

BAD_PIDS = ["123", 1.0, True, False, b"1", [1], (1,)]


@pytest.mark.parametrize("pid", BAD_PIDS, ids=[repr(p) for p in BAD_PIDS])
def test_type_error_for_bad_pid_arguments(populated: NodeHandle, pid: Any) -> None:
    calls = [
        (syn_mp.register, (S, "new", pid)), (syn_mp.register, (S, "mine", pid)), (syn_mp.join, (S, "g", pid)),
        (syn_mp.leave, (S, "g", pid)), (syn_mp.claim_slot, (S, "slot", 2, pid)), (syn_mp.names_of, (S, pid)),
        (syn_mp.groups_of, (S, pid)), (syn_mp.member, (S, "g", pid)), (syn_mp.is_member, (S, "g", pid)),
        (syn_mp.is_local_member, (S, "g", pid)), (syn_mp.update_member, (S, "g", pid, lambda m: m)),
    ]
    before = snapshot()
    for fn, args in calls:
        with pytest.raises(TypeError) as ei:
            fn(*args)
        assert not isinstance(ei.value, syn_mp.SynError), (fn.__name__, ei.value)
    assert snapshot() == before
    checked(S)


@pytest.mark.parametrize("pid", [2**63, 2**64, -2**63 - 1, 10**30])
def test_out_of_range_int_pids_are_absent_processes_not_overflow(populated: NodeHandle, pid: int) -> None:
    node = populated
    for form in (pid, Pid(node.name, pid)):
        assert syn_mp.names_of(S, form) == [] and syn_mp.groups_of(S, form) == []
        assert syn_mp.member(S, "g", form) is None
        assert not syn_mp.is_member(S, "g", form) and not syn_mp.is_local_member(S, "g", form)
        fails(syn_mp.NotInGroupError, "not_in_group", syn_mp.leave, S, "g", form)
        fails(syn_mp.UndefinedError, "undefined", syn_mp.update_member, S, "g", form, lambda m: m)
        fails(syn_mp.NotAliveError, "not_alive", syn_mp.register, S, "new", form)
        fails(syn_mp.NotAliveError, "not_alive", syn_mp.join, S, "g", form)


def test_type_error_for_a_bad_node_argument(populated: NodeHandle) -> None:
    for fn, args in ((syn_mp.registry_count, (S,)), (syn_mp.registry_entries, (S,)),
                     (syn_mp.member_count, (S, "g")), (syn_mp.group_count, (S,)), (syn_mp.group_names, (S,))):
        with pytest.raises(TypeError):
            fn(*args, node=1)


def test_add_node_to_scopes_with_a_bare_string_is_a_type_error(populated: NodeHandle) -> None:
    for bad in ("s", "t", b"s"):
        with pytest.raises(TypeError):
            syn_mp.add_node_to_scopes(bad)  # type: ignore[arg-type]
    assert syn_mp.node_scopes() == [S]  # nothing added: not the scope "t", nor one scope per letter
    syn_mp.add_node_to_scopes(("t",))  # any iterable of names is fine
    syn_mp.add_node_to_scopes(iter(["u"]))
    syn_mp.add_node_to_scopes([])
    assert syn_mp.node_scopes() == [S, "t", "u"]


# ------------------------------------------------- ManagerUnavailableError

def test_manager_unavailable_when_the_runtime_dir_cannot_be_created(
        tmp_path: Any, make_node: Callable[..., NodeHandle], monkeypatch: pytest.MonkeyPatch) -> None:
    # make_node's teardown forgets this process's node (_client._node) again
    blocker = tmp_path / "a-regular-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("SYN_MP_RUNTIME_DIR", str(blocker / "syn_mp"))
    _client.set_node(None)
    with pytest.raises(syn_mp.ManagerUnavailableError) as ei:
        syn_mp.add_node_to_scopes([S])
    assert ei.value.reason == "no_manager"
    assert isinstance(ei.value, syn_mp.SynError)
    assert blocker.read_text() == "not a directory"
    # without a manager the scope was never created: reads say so
    with pytest.raises(syn_mp.InvalidScopeError):
        syn_mp.lookup(S, "x")
