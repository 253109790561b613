"""The bench runs end to end (`python -m bench --quick`) and writes every figure: no timing is checked."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FIGURES = ["lookup_str", "lookup_tuple", "lookup_none", "lookup_uncached", "lookup_after_other", "regunreg",
           "joinleave", "members", "scale_1k", "scale_10k", "scale_100k", "scale_100k_gc", "scale_ratio", "scale_uncached_1k", "scale_uncached_100k",
           "scale_uncached_ratio", "readers_idle", "readers_loaded", "readers_ratio", "writer_rate", "death",
           "death_exit", "death_kill", "memory", "cluster_visible", "cluster_snapshot"]
# readers behind a stalled writer (bench/stall.py): per writer state, five latency figures, and two more
STALL_RUNS = ["idle", "free", "stopped", "throttled"]
FIGURES += [f"stall_{run}_{q}" for run in STALL_RUNS for q in ("p50", "p99", "p999", "max", "cpumax")]
FIGURES += [f"stall_{run}_{what}" for run in STALL_RUNS[2:] for what in ("ratio", "odd")]


def _leftovers(pid: int) -> list[str]:
    """What a bench process `pid` made and should have removed: its temp dirs (runtime dirs, the Redis
    dir, the Syn build) and UltraDict's segments, all named with its pid."""
    tmp = [os.path.join(d, n) for d in {"/tmp", tempfile.gettempdir()} for n in os.listdir(d)
           if n.startswith(f"synbench-{pid}-")]
    shm = ["/dev/shm/" + n for n in os.listdir("/dev/shm") if n.startswith(f"synbench_{pid}_")]
    cg = [p for p in (f"/sys/fs/cgroup/cpu/synbench-{pid}",) if os.path.exists(p)]  # the writer's CPU quota
    return tmp + shm + cg


@pytest.mark.slow
def test_bench_quick(tmp_path):
    out = tmp_path / "results"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYN_MP_")}
    p = subprocess.Popen([sys.executable, "-m", "bench", "--quick", "--out", str(out)], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, err = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 0, err[-4000:]
    md = (out / "results.md").read_text()
    doc = json.loads((out / "results.json").read_text())
    ids = [f["id"] for f in doc["figures"]]
    assert sorted(ids) == sorted(FIGURES)
    # syn_mp and the in-process floor have a value wherever the figure means something for them
    for f in doc["figures"]:
        if f["pending"] or f["id"].startswith("cluster_"):  # the cluster rows are someone else's hook
            continue
        if f["id"].startswith("stall_throttled_") and f["na"].get("syn_mp", "").startswith("not run: "):
            # the throttled writer needs a cgroup v1 cpu controller and root; CI must have them
            assert os.environ.get("CI") != "true", f["na"]["syn_mp"]
            assert "not run" in md
            continue
        assert f["median"].get("syn_mp") is not None, f["id"]
        if "dict" not in f["na"]:
            assert f["median"].get("dict") is not None, f["id"]
        assert f["title"] in md, f["title"]
    assert "| figure | syn_mp | dict |" in md
    assert doc["contenders"]["syn_mp"]["status"] == "ran"
    assert doc["contenders"]["dict"]["status"] == "ran"
    assert doc["machine"]["cores"] and doc["machine"]["cpu"]
    assert doc["command"].startswith("python -m bench --quick")
    assert "Machine:" in md and "Command: `python -m bench --quick" in md
    try:
        import matplotlib  # noqa: F401  (in the bench extra: without it the bench writes no plots)
    except ImportError:
        pass
    else:
        for png in ("lookup.png", "register.png", "scale.png", "readers_under_writer.png",
                    "readers_stalled_writer.png"):
            assert (out / png).stat().st_size > 0, png
    # no runtime dir, segment or temp dir of the bench is left behind
    assert _leftovers(p.pid) == []
