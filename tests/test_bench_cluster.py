"""bench.cluster runs end to end (figures are printed by the bench, never asserted here)."""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


import pytest


@pytest.mark.parametrize("transport", ["udp", "etcd"])
def test_cluster_bench_measures_propagation_node_down_and_snapshot(transport):
    from bench import cluster
    if transport == "etcd":
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
        from etcd import require_etcd
        require_etcd()
    r = cluster.run(samples=5, entries=300, transport=transport)
    assert r["samples"] == 5 and r["snapshot_entries"] == 300 and r["transport"] == transport
    assert 0 < r["propagation_median_ms"] <= r["propagation_p99_ms"] and r["snapshot_s"] > 0
    assert 0.5 < r["node_down_s"] < 15  # a node timeout of 1 s: neither at once nor never
    assert not [d for d in os.listdir("/tmp") if d.startswith("synmp-bench-") or d.startswith("synmp-etcd-")]


def test_cluster_bench_in_namespaces_measures_propagation_heal_and_snapshot():
    from bench import cluster
    from netns import require_netns
    require_netns()
    r = cluster.run_namespaces(nodes=3, samples=5, entries=500, split_writes=20)
    assert r["samples"] == 5 and r["snapshot_entries"] == 520
    assert 0 < r["propagation_p50_ms"] <= r["propagation_p99_ms"] and r["heal_s"] > 0 and r["snapshot_s"] > 0
