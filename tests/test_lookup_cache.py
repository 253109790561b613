"""lookup() and members() reuse what they read only while it is unchanged, and never share a meta a caller could change."""
from __future__ import annotations

import os

import pytest

import syn_mp
from syn_mp import Pid


def test_a_change_by_another_process_is_seen_by_the_next_lookup(node):
    w = node.worker()
    w.call("register", "s", "web", meta=("v", 1))
    assert syn_mp.lookup("s", "web") == (Pid("n1", w.pid), ("v", 1))
    assert syn_mp.lookup("s", "web") == (Pid("n1", w.pid), ("v", 1))  # served again
    w.call("register", "s", "web", meta=("v", 2))
    assert syn_mp.lookup("s", "web") == (Pid("n1", w.pid), ("v", 2))
    w.call("unregister", "s", "web")
    assert syn_mp.lookup("s", "web") is None
    w.call("register", "s", "web", meta=("v", 3))
    assert syn_mp.whereis_name("s", "web") == Pid("n1", w.pid)
    w.kill()
    from conftest import wait_for
    wait_for(lambda: syn_mp.lookup("s", "web") is None, what="death seen through the cache")


def test_a_change_elsewhere_in_the_table_does_not_return_stale_data(node):
    syn_mp.register("s", "a", meta=1)
    assert syn_mp.lookup("s", "a")[1] == 1
    syn_mp.register("s", "b")  # any write moves the table on
    syn_mp.register("s", "a", meta=2)
    assert syn_mp.lookup("s", "a")[1] == 2


def test_mutable_meta_is_a_fresh_object_for_every_caller(node):
    syn_mp.register("s", "a", meta={"k": [1]})
    first = syn_mp.lookup("s", "a")[1]
    first["k"].append(2)
    first["x"] = 0
    assert syn_mp.lookup("s", "a")[1] == {"k": [1]}
    assert syn_mp.lookup("s", "a")[1] is not syn_mp.lookup("s", "a")[1]


def test_names_that_python_calls_equal_stay_apart(node):
    """1, 1.0 and True are equal dict keys but three names; so are ("w", 1) and ("w", True)."""
    names = [1, 1.0, True, "1", b"1", (1,), ("w", 1), ("w", True), ("w", 1.0), ("w", (1,))]
    for i, n in enumerate(names):
        syn_mp.register("s", n, meta=i)
    for _ in range(3):  # the second and third rounds are served by the cache
        assert [syn_mp.lookup("s", n)[1] for n in names] == list(range(len(names)))
    # equal objects that are not the ones cached, of the same types and of others
    copies = [int("1"), float("1"), bool(1), "".join(["1"]), bytes([49]), (int("1"),), ("".join("w"), int("1")),
              ("w", bool(1)), ("w", float(1)), ("w", (int("1"),))]
    for _ in range(2):
        assert [syn_mp.lookup("s", n)[1] for n in copies] == list(range(len(names)))
    # the bytes a cached name is encoded to are a name of their own, here not registered
    from syn_mp.codec import encode_name
    for n in (1.0, ("w", 1.0), (1,)):
        assert syn_mp.lookup("s", encode_name(n)) is None
    syn_mp.unregister("s", True)
    assert syn_mp.lookup("s", True) is None
    assert syn_mp.lookup("s", 1)[1] == 0 and syn_mp.lookup("s", 1.0)[1] == 1


def test_an_unrelated_write_keeps_the_cached_result(node):
    """The cache is checked against the entry's own ver word: writes to other names, even by
    another process, leave a cached result standing (the very same object comes back)."""
    w = node.worker()
    syn_mp.register("s", "mine", meta=("t", 1))
    first = syn_mp.lookup("s", "mine")
    for i in range(20):
        w.call("register", "s", ("other", i))
        w.call("unregister", "s", ("other", i))
    assert syn_mp.lookup("s", "mine") is first


def test_a_reused_blob_does_not_revive_a_cached_name(node):
    """unregister frees the entry's blob and the next register reuses it: the cached (offset,
    ver) must not match the new tenant."""
    syn_mp.register("s", "a", meta="A")
    assert syn_mp.lookup("s", "a")[1] == "A"
    syn_mp.unregister("s", "a")
    assert syn_mp.lookup("s", "a") is None  # the blob is free, its ver zeroed
    syn_mp.register("s", "b", meta="B")  # same size class: the freed blob, first on its list
    assert syn_mp.lookup("s", "a") is None
    assert syn_mp.lookup("s", "b")[1] == "B"


def test_a_name_found_missing_is_seen_when_another_process_registers_it(node):
    w = node.worker()
    assert syn_mp.lookup("s", "later") is None
    assert syn_mp.lookup("s", "later") is None  # the miss is cached
    w.call("register", "s", "later", meta=[1])
    assert syn_mp.lookup("s", "later") == (Pid("n1", w.pid), [1])


def test_dict_metas_are_shared_read_only_and_list_metas_are_copies(node):
    import copy
    import json
    import pickle
    syn_mp.register("s", "d", meta={"port": 80, "tags": ("a", "b"), "sub": {"x": 1}})
    syn_mp.register("s", "l", meta=[1, "x"])
    syn_mp.register("s", "n", meta={"k": {"j": [1]}})
    d1, d2 = syn_mp.lookup("s", "d")[1], syn_mp.lookup("s", "d")[1]
    assert d1 is d2 and isinstance(d1, dict) and d1 == {"port": 80, "tags": ("a", "b"), "sub": {"x": 1}}
    for change in (lambda m: m.__setitem__("port", 0), lambda m: m.pop("port"), lambda m: m.update(a=1),
                   lambda m: m.clear(), lambda m: m.setdefault("z", 1), lambda m: m.popitem(),
                   lambda m: m.__delitem__("port"), lambda m: m["sub"].__setitem__("x", 2)):
        with pytest.raises(TypeError, match="read-only"):
            change(d1)
    with pytest.raises(TypeError, match="read-only"):
        d1 |= {"a": 1}
    # what a caller does to get a meta it can change, and what it hands on, are plain dicts
    for mutable in (dict(d1), d1.copy(), copy.copy(d1), copy.deepcopy(d1), pickle.loads(pickle.dumps(d1)), d1 | {}):
        assert mutable == d1
        mutable["port"] = 1
    assert copy.deepcopy(d1)["sub"].__class__ is dict
    assert json.loads(json.dumps(d1)) == {"port": 80, "tags": ["a", "b"], "sub": {"x": 1}}
    syn_mp.register("s", "again", meta=d1)  # a looked-up meta registers as a dict
    assert syn_mp.lookup("s", "again")[1] == d1
    assert syn_mp.lookup("s", "d")[1] == {"port": 80, "tags": ("a", "b"), "sub": {"x": 1}}
    # a list can't be frozen without changing its type: each caller gets its own
    for name in ("l", "n"):
        a, b = syn_mp.lookup("s", name)[1], syn_mp.lookup("s", name)[1]
        assert a == b and a is not b
    syn_mp.lookup("s", "l")[1].append(2)
    syn_mp.lookup("s", "n")[1]["k"]["j"].append(2)
    assert syn_mp.lookup("s", "l")[1] == [1, "x"]
    assert syn_mp.lookup("s", "n")[1] == {"k": {"j": [1]}}
    # update_registry's function gets a meta it may change in place
    syn_mp.update_registry("s", "d", lambda pid, m: (m.__setitem__("port", 81), m)[1])
    assert syn_mp.lookup("s", "d")[1]["port"] == 81


def test_a_full_cache_starts_over_and_stays_right(node, monkeypatch):
    from syn_mp import registry
    monkeypatch.setattr(registry, "_CACHE_MAX", 8)
    for i in range(30):
        syn_mp.register("s", ("n", i), meta=i)
    for _ in range(2):
        assert [syn_mp.lookup("s", ("n", i))[1] for i in range(30)] == list(range(30))
    assert len(syn_mp._client.table_of("s").lookup_cache) <= 8


def test_lookups_never_go_back_in_time_while_a_writer_updates(node):
    """A reader's successive lookups of a name another process keeps updating (and whose
    neighbours it keeps churning) see the values in order, and see the last one at the end."""
    import os
    import signal
    import subprocess
    import sys
    import textwrap
    code = textwrap.dedent("""
        import sys, syn_mp
        n = int(sys.argv[1])
        for i in range(n):
            syn_mp.register("s", "counter", meta={"i": i})
            syn_mp.register("s", ("churn", i % 7), meta=i)
            syn_mp.unregister("s", ("churn", i % 7))
        print("done", flush=True)
        sys.stdin.read()
    """)
    last = 3000
    p = subprocess.Popen([sys.executable, "-c", code, str(last)], env=node.env,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        import time
        seen, prev = 0, -1
        deadline = time.monotonic() + 60
        from conftest import wait_for
        wait_for(lambda: syn_mp.lookup("s", "counter") is not None, what="the writer's first write")
        while True:
            r = syn_mp.lookup("s", "counter")
            i = r[1]["i"]
            assert i >= prev, f"went back from {prev} to {i}"
            seen += i != prev
            prev = i
            if i == last - 1:
                break
            assert time.monotonic() < deadline, f"stuck at {i}: the cache never saw the writer's updates"

        assert p.stdout.readline() == "done\n"
        assert syn_mp.lookup("s", "counter")[1] == {"i": last - 1}
        assert seen > 1
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()


def test_members_are_cached_until_the_table_changes_and_never_share_what_a_caller_can_change(node):
    """members() answers from its cache while the seqlock word is unchanged; a join elsewhere (by
    another process) is seen at once, and a caller that changes its result changes nothing."""
    w = node.worker()
    me = os.getpid()
    syn_mp.join("s", "g", meta={"port": 1})
    first = syn_mp.members("s", "g")
    assert first == [(Pid("n1", me), {"port": 1})]
    with pytest.raises(TypeError, match="read-only"):
        first[0][1]["port"] = 99  # a dict meta is shared, read-only (as lookup's)
    first.append("junk")  # the list is the caller's own
    assert syn_mp.members("s", "g") == [(Pid("n1", me), {"port": 1})]
    w.call("join", "s", "g", meta=("t", 2))
    assert syn_mp.members("s", "g") == sorted([(Pid("n1", me), {"port": 1}), (Pid("n1", w.pid), ("t", 2))])
    w.call("join", "s", "other")  # a write elsewhere: read again, same answer
    assert syn_mp.local_members("s", "g") == sorted([(Pid("n1", me), {"port": 1}), (Pid("n1", w.pid), ("t", 2))])
    syn_mp.join("s", "n", meta={"k": [1]})  # nested mutable: not cached, still a copy each call
    a, b = syn_mp.members("s", "n")[0][1], syn_mp.members("s", "n")[0][1]
    a["k"].append(2)
    assert b == {"k": [1]} and syn_mp.members("s", "n")[0][1] == {"k": [1]}
    syn_mp.leave("s", "g")
    assert syn_mp.members("s", "g") == [(Pid("n1", w.pid), ("t", 2))]
