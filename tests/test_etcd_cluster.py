"""The cluster on etcd (syn-mp daemon --etcd): nodes on loopback, each with its own runtime dir, against
a real 3-member etcd cluster (tests/etcd.py)."""
from __future__ import annotations

import os
import signal
import time

import pytest

import syn_mp
from syn_mp import Pid, _client

from conftest import wait_for

TIMEOUT = 20  # generous: a loaded 2-core CI machine
NODE_TIMEOUT_MS = "1000"


def on(node):
    _client.use_runtime_dir(node.rdir)
    return syn_mp


def table_of(node, scope: str = "s") -> list:
    return sorted(on(node).registry_entries(scope), key=repr)


def start(e, make_node, k: int, *extra: str, prefix: str = "/t/"):
    """k nodes n1..nk on the etcd cluster `e`, scope "s" added on each through a worker."""
    nodes, workers = [], []
    for i in range(1, k + 1):
        n = make_node(f"n{i}")
        n.daemon("--etcd", e.endpoints, "--etcd-prefix", prefix, "--node-timeout-ms", NODE_TIMEOUT_MS, *extra)
        w = n.worker()
        w.call("add_node_to_scopes", ["s"])
        nodes.append(n)
        workers.append(w)
    for n, w in zip(nodes, workers):
        others = sorted(m.name for m in nodes if m is not n)
        wait_for(lambda: w.call("subcluster_nodes", "s") == others, timeout=TIMEOUT, what=f"{n.name} sees the others")
    return nodes, workers


def test_discovery_propagation_groups_and_process_death(etcd, make_node):
    e = etcd()
    (n1, n2, n3), (w1, w2, w3) = start(e, make_node, 3)
    w1.call("register", "s", "web", meta={"port": 80})
    w2.call("register", "s", ("db", 1))
    w3.call("join", "s", "pool", meta="three")
    w1.call("join", "s", "pool", meta="one")
    want = sorted([("web", Pid("n1", w1.pid), {"port": 80}), (("db", 1), Pid("n2", w2.pid), None)], key=repr)
    for n in (n1, n2, n3):
        wait_for(lambda: table_of(n) == want, timeout=TIMEOUT, what=f"registry on {n.name}: {table_of(n)} != {want}")
        wait_for(lambda: [p for p, _ in on(n).members("s", "pool")] == sorted([Pid("n1", w1.pid), Pid("n3", w3.pid)]),
                 timeout=TIMEOUT, what=f"members on {n.name}")
    with pytest.raises(syn_mp.TakenError):
        w3.call("register", "s", "web")
    # an update and a removal
    w1.call("register", "s", "web", meta={"port": 81})
    w2.call("unregister", "s", ("db", 1))
    for n in (n1, n2, n3):
        wait_for(lambda: table_of(n) == [("web", Pid("n1", w1.pid), {"port": 81})], timeout=TIMEOUT,
                 what=f"update and removal on {n.name}: {table_of(n)}")
    # a process that dies: gone everywhere, reason process_exit as its node saw it
    ev = on(n3).events("s", timeout=TIMEOUT)
    w1.kill()
    for n in (n1, n2, n3):
        wait_for(lambda: table_of(n) == [] and len(on(n).members("s", "pool")) == 1, timeout=TIMEOUT,
                 what=f"death propagated to {n.name}")
    got = sorted((x.kind, x.reason) for x in [next(ev), next(ev)])
    assert got == [("left", "process_exit"), ("unregistered", "process_exit")]
    # the CLI shows the nodes and entries as in the UDP mode
    out = n2.cli("nodes", "s")
    assert out.returncode == 0 and "n1" in out.stdout and "n3" in out.stdout, out
