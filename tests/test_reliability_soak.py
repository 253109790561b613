"""Load (issue #7, part 4): three hosts (network namespaces on one bridge), a daemon on each with 20%
of the cluster's datagrams dropped (SYN_MP_TEST_DROP_RATE=0.2, on send and on receive), several
worker processes per host churning register / unregister / join / leave / publish for a bounded
time. Then they stop writing (but live), and every node must hold identical tables, equal to what
each node holds for its own processes; then they are SIGKILLed and every table must empty. The
managers' private memory (RssAnon) must not grow between the first and the last third of the run.

Figures are printed (run with -s): operations/s, convergence times, RSS, drops and snapshots.
SYN_MP_SOAK_SECONDS (default 15) sets the churn time, SYN_MP_SOAK_WORKERS (default 2) the workers
per host, SYN_MP_SOAK_DROP_RATE (default 0.2) the loss.
"""
from __future__ import annotations

import json
import os
import statistics
import time

import psutil

import syn_mp
from syn_mp import _client

from conftest import checked, wait_for

SECONDS = float(os.environ.get("SYN_MP_SOAK_SECONDS", "15"))
WORKERS = int(os.environ.get("SYN_MP_SOAK_WORKERS", "2"))
DROP = os.environ.get("SYN_MP_SOAK_DROP_RATE", "0.2")
GROUPS = [("g", i) for i in range(5)]
RSS_GROWTH_LIMIT = 20 << 20  # bytes of RssAnon a manager may gain from the first to the last third

CHURNER = r"""
import json, random, sys, time
import syn_mp
host, idx, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
syn_mp.add_node_to_scopes(["s"])
rnd = random.Random(f"{host}-{idx}")
names = [(host, idx, i) for i in range(30)]            # its own names: no cross-node conflicts
groups = [("g", i) for i in range(5)]                  # shared by every process of every node
metas = [None, 1, "m" * 30, {"k": list(range(20))}, "x" * 600]
c = {"register": 0, "unregister": 0, "join": 0, "leave": 0, "publish": 0, "published_to": 0, "received": 0,
     "refused": 0}
print("ready", flush=True)
sys.stdin.readline()
t_end = time.monotonic() + seconds
n = 0
while time.monotonic() < t_end:
    x = rnd.random()
    try:
        if x < 0.30:
            syn_mp.register("s", rnd.choice(names), meta=rnd.choice(metas)); c["register"] += 1
        elif x < 0.45:
            syn_mp.unregister("s", rnd.choice(names)); c["unregister"] += 1
        elif x < 0.75:
            syn_mp.join("s", rnd.choice(groups), meta=rnd.choice(metas)); c["join"] += 1
        elif x < 0.92:
            syn_mp.leave("s", rnd.choice(groups)); c["leave"] += 1
        else:
            c["published_to"] += syn_mp.publish("s", rnd.choice(groups), {"from": [host, idx], "n": n})
            c["publish"] += 1
    except (syn_mp.UndefinedError, syn_mp.NotInGroupError):
        c["refused"] += 1
    n += 1
    if n % 16 == 0:
        try:
            while True:
                syn_mp.receive(timeout=0)
                c["received"] += 1
        except TimeoutError:
            pass
    time.sleep(0.001)
print(json.dumps(c), flush=True)
sys.stdin.readline()
"""


def view(host) -> tuple:
    """Everything host's node holds of scope s: (registry, members of every group)."""
    _client.use_runtime_dir(host.node.rdir)
    reg = sorted(syn_mp.registry_entries("s"), key=repr)
    groups = {g: syn_mp.members("s", g) for g in GROUPS}
    return reg, groups


def own(host) -> tuple:
    """What host's node holds of its own processes (each node is the authority for those)."""
    _client.use_runtime_dir(host.node.rdir)
    reg = [e for e in syn_mp.registry_entries("s", node=host.name)]
    groups = {g: [m for m in syn_mp.members("s", g) if m[0].node == host.name] for g in GROUPS}
    return reg, groups


def truth(c) -> tuple:
    reg: list = []
    groups: dict = {g: [] for g in GROUPS}
    for h in c:
        r, gs = own(h)
        reg += r
        for g, ms in gs.items():
            groups[g] += ms
    return sorted(reg, key=repr), {g: sorted(ms, key=lambda m: m[0]) for g, ms in groups.items()}


def identical(c) -> tuple | None:
    """The common view if every node's view equals the truth, else None."""
    t = truth(c)
    return t if all(view(h) == t for h in c) else None


def rss_anon(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon")


def test_three_nodes_churning_under_packet_loss_end_identical(cluster):
    c = cluster(3)
    daemons = {}
    for h in c:
        h.node.env["SYN_MP_TEST_DROP_RATE"] = DROP
        daemons[h.name] = h.daemon().pid
    churners = []
    for h in c:
        for i in range(WORKERS):
            churners.append((h, h.python(CHURNER, h.name, str(i), str(SECONDS))))
    for h, p in churners:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
    samples: dict[str, list[tuple[float, int, int]]] = {name: [] for name in daemons}
    t_start = time.monotonic()
    for _, p in churners:
        p.stdin.write("go\n")
        p.stdin.flush()
    # sample the managers' memory while the churn runs
    while time.monotonic() - t_start < SECONDS:
        for name, pid in daemons.items():
            samples[name].append((time.monotonic() - t_start, rss_anon(pid), psutil.Process(pid).memory_info().rss))
        time.sleep(0.25)
    counts = []
    for h, p in churners:
        line = p.stdout.readline()
        assert line, f"a churner on {h.name} died: {p.stderr.read()}"
        counts.append(json.loads(line))
    t_quiet = time.monotonic()
    churn_time = t_quiet - t_start
    for name, pid in daemons.items():
        assert psutil.pid_exists(pid), f"the manager of {name} died"
    # quiesce: every node ends with the same tables, equal to the union of each node's own entries
    try:
        want = wait_for(lambda: identical(c), timeout=60, interval=0.05, what="identical tables on every node")
    except AssertionError:
        raise AssertionError("no convergence:\n" + "\n".join(
            f"{h.name}: {len(view(h)[0])} names, {sum(len(m) for m in view(h)[1].values())} members"
            for h in c) + "\n" + c.h1.log()[-3000:]) from None
    converge = time.monotonic() - t_quiet
    time.sleep(0.5)  # and it stays so
    for h in c:
        assert view(h) == want, f"{h.name} changed after convergence"
        _client.use_runtime_dir(h.node.rdir)
        checked("s")
    n_names, n_members = len(want[0]), sum(len(m) for m in want[1].values())
    assert n_names > 0 and n_members > 0
    # every churner SIGKILLed: every node must forget all of them
    t_kill = time.monotonic()
    for _, p in churners:
        p.kill()
        p.wait(timeout=10)
    wait_for(lambda: all(view(h) == ([], {g: [] for g in GROUPS}) for h in c), timeout=60, interval=0.05,
             what="every churner purged on every node")
    purge = time.monotonic() - t_kill
    # memory: the managers' private memory is flat between the first and the last third
    report = []
    for name, ss in samples.items():
        first = [s for s in ss if s[0] < churn_time / 3]
        last = [s for s in ss if s[0] >= 2 * churn_time / 3]
        a0, a1 = statistics.median(s[1] for s in first), statistics.median(s[1] for s in last)
        r0, r1 = statistics.median(s[2] for s in first), statistics.median(s[2] for s in last)
        assert a1 - a0 < RSS_GROWTH_LIMIT, f"manager of {name}: RssAnon {a0 >> 20} -> {a1 >> 20} MB"
        report.append(f"{name} RssAnon {a0 / 2**20:.1f} -> {a1 / 2**20:.1f} MB, RSS {r0 / 2**20:.1f} -> "
                      f"{r1 / 2**20:.1f} MB")
    stats = {}
    downs = 0
    for h in c:
        st = json.loads(h.cli("--json", "status").stdout)["cluster"]
        stats[h.name] = {k: st[k] for k in ("sent", "received", "dropped_test", "snapshots_fetched", "forged",
                                            "replayed", "malformed")}
        downs += h.log().count("down (no heartbeat")
        # nobody attacks here: a forged, malformed or replayed datagram would be a false alarm (or a bug)
        assert st["forged"] == 0 and st["malformed"] == 0 and st["replayed"] == 0, (h.name, st)
        assert st["dropped_test"] > 0
    total = {k: sum(x[k] for x in counts) for k in counts[0]}
    writes = sum(total[k] for k in ("register", "unregister", "join", "leave"))
    print(f"\nsoak: 3 nodes x {WORKERS} workers, {churn_time:.1f} s, drop rate {DROP}: "
          f"{writes + total['publish']} operations ({(writes + total['publish']) / churn_time:.0f}/s; "
          f"{total}); final {n_names} names and {n_members} memberships identical on every node "
          f"{converge * 1e3:.0f} ms after the last write; all purged everywhere {purge * 1e3:.0f} ms after "
          f"SIGKILL; node-down events {downs}\n  " + "\n  ".join(report) + f"\n  cluster stats {stats}")
