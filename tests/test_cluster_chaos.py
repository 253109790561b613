"""8 nodes in network namespaces through seeded, logged chaos (issue 13): processes register, leave
and die; daemons are SIGKILLed and restarted under the same name, or replaced by a pod under a new
name (new runtime dir, its processes gone with it); partitions come and heal; the kernel drops
datagrams (iptables statistic, 20 %, inside a host's namespace). Once the chaos stops, within 5 s
every node's tables must be identical and equal to the union of each node's own living processes.

SYN_MP_CHAOS_SECONDS sets the chaos's length (default 20: the CI run); SYN_MP_CHAOS_SEED its seed
(default: random, printed, and in the log). Every step is written to the test's chaos.log.
"""
from __future__ import annotations

import json
import os
import random
import select
import subprocess
import time
import zlib

import pytest

from conftest import wait_for
from netns import HostNode, ns_pids

SCOPE = "s"
GROUPS = 3
CONVERGE_WITHIN = 5.0

# one per node, inside its namespace: spawns `sleep` processes, registers them by pid, and answers
DRIVER = r'''
import json, subprocess, sys, zlib
import syn_mp
syn_mp.add_node_to_scopes(["s"])
procs = {}   # name -> Popen of a sleep registered under it
node = sys.argv[1]
print("ready", flush=True)
for line in sys.stdin:
    cmd, _, arg = line.strip().partition(" ")
    out = "ok"
    if cmd == "reg":
        p = subprocess.Popen(["sleep", "3600"])
        procs[arg] = p
        syn_mp.register("s", arg, pid=p.pid)
        syn_mp.join("s", ("g", zlib.crc32(arg.encode()) % 3), pid=p.pid)
    elif cmd == "leave":
        p = procs.pop(arg)
        syn_mp.unregister("s", arg)
        syn_mp.leave("s", ("g", zlib.crc32(arg.encode()) % 3), pid=p.pid)
        p.kill(); p.wait()
    elif cmd == "die":
        p = procs.pop(arg)
        p.kill(); p.wait()
    elif cmd == "own":
        out = json.dumps({n: p.pid for n, p in procs.items()})
    elif cmd == "table":
        reg = sorted([n, pid.node, pid.pid] for n, pid, _ in syn_mp.registry_entries("s"))
        grp = sorted([k, pid.node, pid.pid] for k in range(3) for pid, _ in syn_mp.members("s", ("g", k)))
        out = json.dumps([reg, grp])
    elif cmd == "quit":
        for p in procs.values():
            p.kill(); p.wait()
        break
    print(out, flush=True)
'''


class Node:
    """One node of the chaos: a host's namespace, a node name (a pod gets a new one), its daemon and
    its driver."""

    def __init__(self, host, node: HostNode) -> None:
        self.host, self.node = host, node
        self.name = node.name
        self.daemon: subprocess.Popen | None = None
        self.driver: subprocess.Popen | None = None
        self.names: list[str] = []   # registered by the driver and not left nor dead
        self.count = 0

    def start_daemon(self) -> None:
        h = self.host
        self.daemon = self.node.daemon("--cluster", f"{h.cluster.group}:{h.cluster.port}", "--interface", h.addr,
                                       "--secret-file", h.cluster.secret_file, "--heartbeat-ms", "50",
                                       "--node-timeout-ms", "500")

    def kill_daemon(self) -> None:
        assert self.daemon is not None
        self.daemon.kill()
        self.daemon.wait(timeout=10)
        self.daemon = None

    def start_driver(self) -> None:
        self.driver = self.node.python(DRIVER, self.name)
        assert self.driver.stdout.readline().strip() == "ready", self.driver.stderr.read()

    def ask(self, cmd: str, timeout: float = 10.0) -> str:
        assert self.driver is not None
        self.driver.stdin.write(cmd + "\n")
        self.driver.stdin.flush()
        if not select.select([self.driver.stdout], [], [], timeout)[0]:
            raise AssertionError(f"{self.name}: no answer to {cmd!r} in {timeout}s\n{self.node.log()[-3000:]}")
        return self.driver.stdout.readline().strip()

    def status(self) -> dict:
        r = self.node.cli("--json", "status")
        return json.loads(r.stdout)["cluster"]


def _zombies(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    out.append(pid)
        except OSError:
            pass
    return out


def test_eight_nodes_converge_after_chaos(cluster, tmp_path):
    if os.environ.get("CI") != "true" and subprocess.run(["which", "iptables"], capture_output=True).returncode:
        pytest.skip("iptables not installed (./dev setup installs it)")
    seconds = float(os.environ.get("SYN_MP_CHAOS_SECONDS", "20"))
    seed = int(os.environ.get("SYN_MP_CHAOS_SEED", str(random.randrange(1 << 30))))
    rng = random.Random(seed)
    logf = open(tmp_path / "chaos.log", "w")
    t_start = time.monotonic()

    def log(msg: str) -> None:
        logf.write(f"{time.monotonic() - t_start:8.3f} {msg}\n")
        logf.flush()
    print(f"\nchaos: seed {seed}, {seconds:.0f} s, log {tmp_path / 'chaos.log'}")
    log(f"seed {seed}")

    c = cluster(8)
    nodes = []
    for h in c.hosts:
        n = Node(h, h.node)
        n.start_daemon()
        nodes.append(n)
    for n in nodes:
        n.start_driver()
    pods: list[HostNode] = []  # the nodes made for pods, closed at the end
    lossy: set[str] = set()
    partitioned_until = 0.0
    down: dict[int, float] = {}  # index -> when its daemon comes back
    counts: dict[str, int] = {}
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            now = time.monotonic()
            for i, when in list(down.items()):
                if now >= when:
                    nodes[i].start_daemon()
                    del down[i]
                    log(f"{nodes[i].name} daemon restarted")
            if partitioned_until and now >= partitioned_until:
                c.heal()
                partitioned_until = 0.0
                log("healed")
            i = rng.randrange(len(nodes))
            n = nodes[i]
            r = rng.random()
            up = i not in down
            if r < 0.40 and up and len(n.names) < 40:
                n.count += 1
                name = f"{n.name}-{n.count}"
                n.ask(f"reg {name}")
                n.names.append(name)
                kind = "reg"
            elif r < 0.55 and up and n.names:
                n.ask(f"leave {n.names.pop(rng.randrange(len(n.names)))}")
                kind = "leave"
            elif r < 0.70 and n.names:
                n.ask(f"die {n.names.pop(rng.randrange(len(n.names)))}")
                kind = "die"
            elif r < 0.74 and up and len(down) < 2:
                n.kill_daemon()
                down[i] = now + rng.uniform(0.2, 1.5)
                kind = "daemon SIGKILLed"
            elif r < 0.76 and up and len(down) < 2:
                # a pod restarts: its daemon and processes die, a new node (name, runtime dir) comes up
                n.ask("quit", timeout=10)
                n.driver.wait(timeout=10)
                n.kill_daemon()
                k = len(pods) + 1
                name = f"{n.host.name}p{k}"
                rdir = os.path.join(c.tmpdir, name)
                pod = HostNode(name, n.host.ns, rdir=rdir)
                pods.append(pod)
                nodes[i] = Node(n.host, pod)
                nodes[i].start_daemon()
                nodes[i].start_driver()
                log(f"pod {n.name} replaced by {name}")
                kind = "pod replaced"
            elif r < 0.79 and not partitioned_until:
                hosts = list(c.hosts)
                rng.shuffle(hosts)
                cut = rng.randrange(1, len(hosts))
                c.partition(hosts[:cut], hosts[cut:])
                partitioned_until = now + rng.uniform(0.3, 2.0)
                kind = "partition"
                log(f"partition {[h.name for h in hosts[:cut]]} | {[h.name for h in hosts[cut:]]}")
            elif r < 0.82:
                h = c.hosts[rng.randrange(len(c.hosts))]
                rule = ("INPUT", "-m", "statistic", "--mode", "random", "--probability", "0.2", "-j", "DROP")
                if h.name in lossy:
                    h.iptables("-D", *rule)
                    lossy.discard(h.name)
                    kind = "loss off"
                else:
                    h.iptables("-A", *rule)
                    lossy.add(h.name)
                    kind = "loss on"
                log(f"{kind} {h.name}")
            else:
                time.sleep(0.02)
                continue
            counts[kind] = counts.get(kind, 0) + 1
            if kind in ("reg", "leave", "die"):
                log(f"{kind} on {n.name}")
            time.sleep(rng.uniform(0.0, 0.05))

        # the chaos stops: heal, no loss, every daemon up
        c.heal()
        for h in c.hosts:
            if h.name in lossy:
                h.iptables("-D", "INPUT", "-m", "statistic", "--mode", "random", "--probability", "0.2",
                           "-j", "DROP")
        for i in list(down):
            nodes[i].start_daemon()
        down.clear()
        log(f"chaos stopped: {counts}")
        t0 = time.monotonic()
        want_reg, want_grp = [], []
        for n in nodes:
            for name, pid in json.loads(n.ask("own")).items():
                want_reg.append([name, n.name, pid])
                want_grp.append([zlib.crc32(name.encode()) % GROUPS, n.name, pid])
        want = [sorted(want_reg), sorted(want_grp)]
        last: dict[str, list] = {}

        def converged() -> bool:
            for n in nodes:
                last[n.name] = json.loads(n.ask("table"))
            return all(v == want for v in last.values())
        try:
            wait_for(converged, timeout=CONVERGE_WITHIN + 10, interval=0.02)
        except AssertionError:
            diff = {k: (len(v[0]), [e for e in v[0] if e not in want[0]][:5], [e for e in want[0] if e not in v[0]][:5])
                    for k, v in last.items() if v != want}
            raise AssertionError(f"seed {seed}: no convergence: {diff}\n"
                                 + "\n".join(f"--- {n.name}\n{n.node.log()[-2500:]}" for n in nodes)) from None
        took = time.monotonic() - t0
        sts = {n.name: n.status() for n in nodes}
        zombies = _zombies([p for h in c.hosts for p in ns_pids(h.ns)])
        figures = {"seed": seed, "seconds": seconds, "steps": counts, "converged_s": round(took, 3),
                   "names": len(want_reg), "memberships": len(want_grp),
                   "snapshots_fetched": sum(s["snapshots_fetched"] for s in sts.values()),
                   "fetches_superseded": sum(s["fetches_superseded"] for s in sts.values()),
                   "datagrams_sent": sum(s["sent"] for s in sts.values()),
                   "datagrams_received": sum(s["received"] for s in sts.values()),
                   "zombies": len(zombies)}
        log(f"figures {json.dumps(figures)}")
        print(f"chaos figures: {json.dumps(figures)}")
        assert not zombies, zombies
        assert took < CONVERGE_WITHIN, f"seed {seed}: converged in {took:.2f} s (over {CONVERGE_WITHIN} s)"
    finally:
        for n in nodes:
            if n.driver is not None and n.driver.poll() is None:
                try:
                    n.ask("quit", timeout=5)
                except Exception:
                    pass
        for pod in pods:
            try:
                pod.close()
            except Exception:
                pass
        logf.close()

