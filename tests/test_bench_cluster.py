"""bench.cluster runs end to end (figures are printed by the bench, never asserted here)."""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_cluster_bench_measures_propagation_and_snapshot():
    from bench import cluster
    r = cluster.run(samples=5, entries=300)
    assert r["samples"] == 5 and r["snapshot_entries"] == 300
    assert r["propagation_median_ms"] > 0 and r["snapshot_s"] > 0
    assert not [d for d in os.listdir("/tmp") if d.startswith("synmp-bench-")]


def test_cluster_bench_in_namespaces_measures_propagation_heal_and_snapshot():
    from bench import cluster
    from netns import require_netns
    require_netns()
    r = cluster.run_namespaces(nodes=3, samples=5, entries=500, split_writes=20)
    assert r["samples"] == 5 and r["snapshot_entries"] == 520
    assert 0 < r["propagation_p50_ms"] <= r["propagation_p99_ms"] and r["heal_s"] > 0 and r["snapshot_s"] > 0
