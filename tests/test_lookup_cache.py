"""lookup() reuses a result only while the table is unchanged, and never shares a mutable meta."""
from __future__ import annotations

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
