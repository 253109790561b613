"""Cluster figures: propagation latency, node-down detection, convergence after a partition heals, a
snapshot's sync time.

By default two nodes on loopback addresses (127.0.0.2 and 127.0.0.3), each with its own runtime dir,
for each transport: unicast --peers, or --etcd against a 3-member etcd cluster on loopback
(tests/etcd.py, Debian's etcd-server). With --nodes N (N >= 3; root), N nodes in network namespaces
on one bridge (tests/netns.py, multicast): propagation from one node to all the others, the time to
converge after a partition of the nodes into two halves heals, and a snapshot to a node that joins
(in the last host's namespace, whose manager is stopped first) once every node holds the entries,
with the node down events the daemons logged meanwhile (flaps: there must be none).
Latency is read by polling the tables every 0.1 ms, not in a busy loop: on a 2-core machine a
spinning reader takes a core from the 8 daemons it measures.
Everything started here is stopped by pid and its segments unlinked at the end.

    python -m bench.cluster [--samples N] [--entries N] [--transport udp|etcd|both]
    python -m bench.cluster --nodes 8 [--samples N] [--entries N] [--split-writes N]
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
POLL = 0.0001  # seconds between two looks at the tables (see the module's docstring)


class _Node:
    def __init__(self, name: str, addr: str, cluster: list[str]) -> None:
        self.name, self.addr, self.cluster = name, addr, cluster
        self.rdir = tempfile.mkdtemp(prefix=f"synmp-bench-{name}-")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(os.path.join(self.rdir, "daemon.log"), "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "syn_mp", "--runtime-dir", self.rdir, "daemon", "--node", self.name,
             "--interface", self.addr, "--node-timeout-ms", "1000", *self.cluster], cwd=ROOT, stdout=log, stderr=log)
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


def _cluster_args(transport: str, tmp: str) -> tuple[list[str], Any]:
    """The daemon's cluster flags for `transport`, and what to close at the end (an etcd cluster)."""
    if transport == "udp":
        secret = os.path.join(tmp, "secret")
        with open(secret, "w") as f:
            f.write(os.urandom(32).hex())
        return ["--peers", f"127.0.0.2:{PORT},127.0.0.3:{PORT}", "--secret-file", secret, "--heartbeat-ms", "50"], None
    if transport == "etcd":
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        from etcd import EtcdCluster  # type: ignore[import-not-found]  # tests/etcd.py: 3 members, loopback
        e = EtcdCluster(3)
        try:
            e.start_all()
        except BaseException:
            e.close()
            raise
        return ["--etcd", e.endpoints, "--etcd-prefix", "/bench/"], e
    raise ValueError(f"transport must be udp or etcd, not {transport!r}")


def _wait(pred: Any, timeout: float, what: str) -> None:
    deadline = time.perf_counter() + timeout
    while not pred():
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{what} within {timeout} s")
        time.sleep(0.0005)


def run(samples: int = 200, entries: int = 20_000, transport: str = "udp") -> dict[str, Any]:
    from syn_mp._table import REG
    from syn_mp.codec import encode_name
    tmp = tempfile.mkdtemp(prefix="synmp-bench-")
    cluster, closer = _cluster_args(transport, tmp)
    a, b = _Node("a", "127.0.0.2", cluster), _Node("b", "127.0.0.3", cluster)
    try:
        a.start()
        b.start()
        _use(b).add_node_to_scopes(["bench"])
        syn = _use(a)
        syn.add_node_to_scopes(["bench"])
        tb = b.table("bench")
        _wait(lambda: _use(a).subcluster_nodes("bench") == ["b"] and _use(b).subcluster_nodes("bench") == ["a"], 20,
              "the two nodes did not see each other")
        syn = _use(a)
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
        # node down: b's daemon SIGKILLed; how long until a drops b's entry (node timeout 1000 ms)
        marker = encode_name("on-b")
        _use(b).register("bench", "on-b")
        ta = a.table("bench")
        _wait(lambda: ta.get(REG, marker) is not None, 5, "b's entry did not reach a")
        assert b.proc is not None
        t0 = time.perf_counter()
        b.proc.send_signal(signal.SIGKILL)
        _wait(lambda: ta.get(REG, marker) is None, 30, "a did not see b down")
        down = time.perf_counter() - t0
        b.proc.wait()
        # snapshot: `entries` names on a, then b's manager starts again and must fetch them all
        syn = _use(a)
        for i in range(entries):
            syn.register("bench", ("s", i), meta=i)
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
        lat.sort()
        return {"transport": transport, "propagation_median_ms": statistics.median(lat) * 1e3,
                "propagation_p90_ms": lat[int(len(lat) * 0.9)] * 1e3,
                "propagation_p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3,
                "node_down_s": down, "snapshot_s": snap, "snapshot_entries": entries, "samples": samples}
    finally:
        a.close()
        b.close()
        if closer is not None:
            closer.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _fine_timers() -> None:
    """This process's sleeps end on time (Linux's timer slack 1 us, not 50): a poll of the tables
    every 0.1 ms then adds about 0.05 ms to a latency, not 0.1."""
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(29, 1000, 0, 0, 0)  # PR_SET_TIMERSLACK, in ns


def _downs(log: str) -> int:
    """Node down events in a daemon's log."""
    return sum(1 for ln in log.splitlines() if "cluster: node" in ln and " down " in ln)


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))]


def run_namespaces(nodes: int = 8, samples: int = 200, entries: int = 100_000,
                   split_writes: int = 1000) -> dict[str, float]:
    """The figures for `nodes` nodes in network namespaces (root); see the module's docstring."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import conftest  # noqa: F401  (first: netns and conftest import each other)
    from netns import Cluster, HostNode
    from syn_mp import _client, _config
    from syn_mp._table import REG, Table
    from syn_mp.codec import encode_name
    import syn_mp

    def table(rdir: str) -> Any:
        return Table.attach(_config.segment_name(rdir, "bench"))

    def wait(pred: Any, what: str, timeout: float = 60) -> float:
        t0 = time.perf_counter()
        while not pred():
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"{what}: not within {timeout} s")
            time.sleep(0.0005)
        return time.perf_counter() - t0

    def count(t: Any, node: str) -> int:
        nid = t.node_id(node)
        return 0 if nid is None else t.count(3, REG, node=nid)

    def lag_counts() -> tuple[int, int]:
        """The receivers' own propagation histograms (from the write to the apply, no polling),
        summed: (changes applied within 1 ms, all changes)."""
        within = every = 0
        for h in c.hosts[1:]:
            _client.use_runtime_dir(h.node.rdir)
            buckets = _client.node().request("status")["propagation"]["buckets"]  # cumulative, by upper bound
            within += next(n for le, n in buckets if le == 0.001)
            every += buckets[-1][1]
        return within, every

    _fine_timers()
    c = Cluster(nodes)
    try:
        for h in c.hosts:
            h.daemon()
        for h in c.hosts:
            _client.use_runtime_dir(h.node.rdir)
            syn_mp.add_node_to_scopes(["bench"])
        tables = [table(h.node.rdir) for h in c.hosts]
        names = [h.name for h in c.hosts]
        for h in c.hosts:
            _client.use_runtime_dir(h.node.rdir)
            wait(lambda: len(syn_mp.subcluster_nodes("bench")) == nodes - 1, f"{h.name} sees the others")
        # propagation: a registration on h1, the time until each other node's table holds it
        before = lag_counts()
        _client.use_runtime_dir(c.hosts[0].node.rdir)
        lat: list[float] = []
        for i in range(samples):
            key = encode_name(("p", i))
            pending = set(range(1, nodes))
            t0 = time.perf_counter()
            syn_mp.register("bench", ("p", i))
            while pending:
                for k in list(pending):
                    if tables[k].get(REG, key) is not None:
                        lat.append(time.perf_counter() - t0)
                        pending.discard(k)
                if time.perf_counter() - t0 > 5:
                    raise RuntimeError("a registration did not reach every node in 5 s")
                time.sleep(POLL)
            time.sleep(0.005)  # one at a time: latency, not throughput
        after = lag_counts()
        _client.use_runtime_dir(c.hosts[0].node.rdir)
        for i in range(samples):
            syn_mp.unregister("bench", ("p", i))
        # a partition into two halves, writes on both sides, heal: until every table holds them all
        half = nodes // 2
        c.partition(c.hosts[:half], c.hosts[half:])
        _client.use_runtime_dir(c.hosts[0].node.rdir)
        wait(lambda: len(syn_mp.subcluster_nodes("bench")) == half - 1, "h1 sees only its half", timeout=10)
        for side in (0, half):
            _client.use_runtime_dir(c.hosts[side].node.rdir)
            for i in range(split_writes):
                syn_mp.register("bench", ("split", side, i))
        writers = (names[0], names[half])
        t0 = time.perf_counter()
        c.heal()
        wait(lambda: all(count(t, w) == split_writes for t in tables for w in writers
                         if t is not tables[names.index(w)]), "convergence after the heal")
        heal = time.perf_counter() - t0
        # a snapshot: `entries` names on h1; once every node holds them (the burst's own figure), a node
        # joins (a new runtime dir in h<nodes>)
        _client.use_runtime_dir(c.hosts[0].node.rdir)
        t0 = time.perf_counter()
        for i in range(entries):
            syn_mp.register("bench", ("s", i))
        written = time.perf_counter() - t0
        want = entries + split_writes
        burst = wait(lambda: all(count(t, names[0]) == want for t in tables[1:]), "the burst on every node")
        downs_before = sum(_downs(h.node.log()) for h in c.hosts[:-1])
        h = c.hosts[-1]
        h.stop()  # the joiner takes the last host's place (its address and port), as a new pod would
        new = HostNode("joiner", h.ns, rdir=os.path.join(c.tmpdir, "joiner"))
        try:
            new.daemon("--cluster", f"{c.group}:{c.port}", "--interface", h.addr, "--secret-file", c.secret_file,
                       "--heartbeat-ms", "50", "--node-timeout-ms", "500")
            _client.use_runtime_dir(new.rdir)
            t_join = time.perf_counter()
            syn_mp.add_node_to_scopes(["bench"])  # the node joins the scope: it fetches every node's snapshot
            tn = table(new.rdir)
            try:
                wait(lambda: count(tn, names[0]) == want, "the snapshot on the joiner", timeout=20)
            except RuntimeError as e:
                raise RuntimeError(f"{e}: {count(tn, names[0])} of {want}\n{new.log()[-3000:]}") from None
            t_done = time.perf_counter()
            time.sleep(2)  # a flap shows within a node timeout or two
            # h<nodes> itself went down once (stopped for the joiner): every other down is a flap
            flapped = (sum(_downs(h.node.log()) for h in c.hosts[:-1]) - downs_before - (nodes - 1)
                       + _downs(new.log()))
        finally:
            new.close()
        return {"nodes": nodes, "samples": samples,
                "propagation_p50_ms": _pct(lat, 0.5) * 1e3, "propagation_p99_ms": _pct(lat, 0.99) * 1e3,
                "propagation_within_1ms": (after[0] - before[0]) / max(1, after[1] - before[1]),
                "heal_writes": split_writes, "heal_s": heal, "burst_written_s": written, "burst_s": burst,
                "snapshot_entries": want, "snapshot_s": t_done - t_join, "snapshot_flaps": flapped}
    finally:
        c.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=2, help="2: loopback; 3 or more: network namespaces (root)")
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--entries", type=int, default=None, help="20,000 (2 nodes) or 100,000 (namespaces)")
    p.add_argument("--split-writes", type=int, default=1000, help="names written on each side of the partition")
    p.add_argument("--transport", choices=("udp", "etcd", "both"), default="both", help="with 2 nodes")
    args = p.parse_args(argv)
    if args.nodes > 2:
        r = run_namespaces(args.nodes, args.samples, args.entries or 100_000, args.split_writes)
        print(f"{r['nodes']} nodes in network namespaces (one bridge, multicast):")
        print(f"  propagation to every other node: p50 {r['propagation_p50_ms']:.3f} ms, "
              f"p99 {r['propagation_p99_ms']:.3f} ms ({r['samples']} registrations x {r['nodes'] - 1} nodes); "
              f"applied within 1 ms by the receivers' own clock: {r['propagation_within_1ms']:.0%}")
        print(f"  convergence after a partition into two halves heals ({r['heal_writes']:,} names written on "
              f"each side meanwhile): {r['heal_s']:.3f} s")
        print(f"  {r['snapshot_entries'] - r['heal_writes']:,} names written on one node in {r['burst_written_s']:.2f} s "
              f"are on every node {r['burst_s']:.3f} s later")
        print(f"  snapshot of {r['snapshot_entries']:,} entries (one node's) to a node that joins the scope: "
              f"{r['snapshot_s']:.3f} s; node down events meanwhile (flaps): {r['snapshot_flaps']}")
        return 0
    entries = args.entries or 20_000
    rows = [run(args.samples, entries, t) for t in (("udp", "etcd") if args.transport == "both" else (args.transport,))]
    label = {"udp": "UDP (unicast peers)", "etcd": "etcd (3 members)"}
    print(f"{'':44}" + "".join(f"{label[r['transport']]:>22}" for r in rows))
    for name, key, fmt in (("propagation to another node, p50 (ms)", "propagation_median_ms", "{:.3f}"),
                           ("propagation to another node, p99 (ms)", "propagation_p99_ms", "{:.3f}"),
                           ("node down detected (s, node timeout 1 s)", "node_down_s", "{:.2f}"),
                           (f"snapshot of {entries:,} entries to a new node (s)", "snapshot_s", "{:.3f}")):
        print(f"{name:44}" + "".join(f"{fmt.format(r[key]):>22}" for r in rows))
    print(f"({args.samples} registrations one at a time, two nodes on loopback)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
