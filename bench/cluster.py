"""Cluster figures: propagation latency between two nodes and a 20,000-entry snapshot's sync time.

Two nodes on loopback addresses (127.0.0.2 and 127.0.0.3, unicast --peers), each with its own
runtime dir; everything started here is stopped by pid and its segments unlinked at the end.

    python -m bench.cluster [--samples N] [--entries N]
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import posix_ipc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PORT = 47950


class _Node:
    def __init__(self, name: str, addr: str, secret: str) -> None:
        self.name, self.addr, self.secret = name, addr, secret
        self.rdir = tempfile.mkdtemp(prefix=f"synmp-bench-{name}-")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(os.path.join(self.rdir, "daemon.log"), "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "syn_mp", "--runtime-dir", self.rdir, "daemon", "--node", self.name,
             "--interface", self.addr, "--peers", f"127.0.0.2:{PORT},127.0.0.3:{PORT}", "--secret-file",
             self.secret, "--heartbeat-ms", "50", "--node-timeout-ms", "1000"], cwd=ROOT, stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while not os.path.exists(os.path.join(self.rdir, "ctl.sock")):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"daemon {self.name} did not start; see {self.rdir}/daemon.log")
            time.sleep(0.005)

    def table(self, scope: str) -> Any:
        from syn_mp import _config
        from syn_mp._table import Table
        return Table.attach(_config.segment_name(self.rdir, scope))

    def close(self) -> None:
        from syn_mp import _config
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)
        for seg in os.listdir("/dev/shm"):
            if seg.startswith(_config.segment_name(self.rdir, "")[1:]):
                try:
                    posix_ipc.unlink_shared_memory("/" + seg)
                except posix_ipc.ExistentialError:
                    pass
        shutil.rmtree(self.rdir, ignore_errors=True)


def _use(node: _Node) -> Any:
    import syn_mp
    from syn_mp import _client
    _client.use_runtime_dir(node.rdir)
    return syn_mp


def run(samples: int = 200, entries: int = 20_000) -> dict[str, float]:
    from syn_mp._table import REG
    from syn_mp.codec import encode_name
    secret = os.path.join(tempfile.mkdtemp(prefix="synmp-bench-"), "secret")
    with open(secret, "w") as f:
        f.write(os.urandom(32).hex())
    a, b = _Node("a", "127.0.0.2", secret), _Node("b", "127.0.0.3", secret)
    try:
        a.start()
        b.start()
        _use(b).add_node_to_scopes(["bench"])
        syn = _use(a)
        syn.add_node_to_scopes(["bench"])
        tb = b.table("bench")
        deadline = time.monotonic() + 10
        while syn.subcluster_nodes("bench") != ["b"] and time.monotonic() < deadline:
            time.sleep(0.01)
        lat = []
        for i in range(samples):
            key = encode_name(("p", i))
            t0 = time.perf_counter()
            syn.register("bench", ("p", i))
            while tb.get(REG, key) is None:
                if time.perf_counter() - t0 > 5:
                    raise RuntimeError("a registration did not reach the other node in 5 s")
            lat.append(time.perf_counter() - t0)
            time.sleep(0.002)  # one at a time: latency, not throughput
        for i in range(samples):
            syn.unregister("bench", ("p", i))
        # snapshot: `entries` names on a, then b's manager restarts and must fetch them all
        for i in range(entries):
            syn.register("bench", ("s", i), meta=i)
        assert b.proc is not None
        b.proc.send_signal(signal.SIGKILL)
        b.proc.wait()
        b.table("bench").purge_node(b.table("bench").node_id("a"), 0)  # b starts from nothing of a's
        t0 = time.perf_counter()
        b.start()
        tb = b.table("bench")
        nid = None
        while True:
            nid = nid if nid is not None else tb.node_id("a")
            if nid is not None and tb.count(3, REG, node=nid) >= entries:
                break
            if time.perf_counter() - t0 > 60:
                raise RuntimeError("the snapshot did not arrive within 60 s")
            time.sleep(0.001)
        snap = time.perf_counter() - t0
        return {"propagation_median_ms": statistics.median(lat) * 1e3,
                "propagation_p90_ms": sorted(lat)[int(len(lat) * 0.9)] * 1e3,
                "snapshot_s": snap, "snapshot_entries": entries, "samples": samples}
    finally:
        a.close()
        b.close()
        shutil.rmtree(os.path.dirname(secret), ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--entries", type=int, default=20_000)
    args = p.parse_args(argv)
    r = run(args.samples, args.entries)
    print(f"propagation to another node: median {r['propagation_median_ms']:.3f} ms, "
          f"p90 {r['propagation_p90_ms']:.3f} ms ({r['samples']} registrations, loopback, unicast peers)")
    print(f"snapshot of {r['snapshot_entries']:,} entries on a node whose manager starts: {r['snapshot_s']:.3f} s "
          f"from its manager's start")
    return 0


if __name__ == "__main__":
    sys.exit(main())
