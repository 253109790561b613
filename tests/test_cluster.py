"""Several hosts (network namespaces on one bridge): scopes synced with Syn's semantics."""
from __future__ import annotations

import json
import os
import signal
import time

import pytest

import syn_mp
from syn_mp import Event, Pid, _client

from conftest import wait_for

TIMEOUT = 20  # generous: a loaded 2-core CI machine


def on(host):
    """This test process reads `host`'s tables (shared memory is not per namespace)."""
    _client.use_runtime_dir(host.node.rdir)
    return syn_mp


def table_of(host, scope: str = "s") -> list:
    return sorted(on(host).registry_entries(scope), key=repr)


def groups_of(host, group, scope: str = "s") -> list:
    return on(host).members(scope, group)


def start(c, *extra: str, scopes=("s",)):
    """Every host's daemon, and scope(s) added on each (through a worker in its namespace)."""
    workers = []
    for h in c:
        h.daemon(*extra)
        w = h.worker()
        w.call("add_node_to_scopes", list(scopes))
        workers.append(w)
    return workers


def converged(c, scope: str = "s") -> bool:
    tables = [table_of(h, scope) for h in c]
    return all(t == tables[0] for t in tables)


def test_discovery_and_propagation_in_both_directions(cluster):
    c = cluster(3)
    w1, w2, w3 = start(c)
    w1.call("register", "s", "web", meta={"port": 80})
    w2.call("register", "s", ("db", 1))
    w3.call("join", "s", "pool", meta="three")
    w1.call("join", "s", "pool", meta="one")
    want = sorted([("web", Pid("h1", w1.pid), {"port": 80}), (("db", 1), Pid("h2", w2.pid), None)], key=repr)
    for h in c:
        wait_for(lambda: table_of(h) == want, timeout=TIMEOUT, what=f"registry on {h.name}")
        wait_for(lambda: [p for p, _ in groups_of(h, "pool")] == sorted([Pid("h1", w1.pid), Pid("h3", w3.pid)]),
                 timeout=TIMEOUT, what=f"members on {h.name}")
    # remote counts and listings by node
    s2 = on(c.h2)
    assert s2.registry_count("s") == 2 and s2.registry_count("s", "h1") == 1 and s2.local_registry_count("s") == 1
    assert s2.registry_entries("s", node="h1") == [("web", Pid("h1", w1.pid), {"port": 80})]
    assert s2.member_count("s", "pool", node="h3") == 1 and s2.local_member_count("s", "pool") == 0
    assert s2.lookup("s", "web") == (Pid("h1", w1.pid), {"port": 80})
    # subcluster_nodes and `syn-mp nodes`, from inside h2
    assert w2.call("subcluster_nodes", "s") == ["h1", "h3"]
    doc = json.loads(c.h2.cli("--json", "nodes", "s").stdout)
    assert [d["node"] for d in doc] == ["h2", "h1", "h3"] and doc[0]["self"]
    # a change and a removal propagate too
    w1.call("register", "s", "web", meta={"port": 81})
    w2.call("unregister", "s", ("db", 1))
    for h in c:
        wait_for(lambda: table_of(h) == [("web", Pid("h1", w1.pid), {"port": 81})], timeout=TIMEOUT,
                 what=f"update and removal on {h.name}")
    # a remote name is taken for every node
    with pytest.raises(syn_mp.TakenError):
        w3.call("register", "s", "web")


def test_only_nodes_that_added_a_scope_sync_it(cluster):
    c = cluster(2)
    c.h1.daemon()
    c.h2.daemon()
    w1, w2 = c.h1.worker(), c.h2.worker()
    w1.call("add_node_to_scopes", ["s", "only1"])
    w2.call("add_node_to_scopes", ["s"])
    w1.call("register", "only1", "x")
    w1.call("register", "s", "y")
    wait_for(lambda: table_of(c.h2) == [("y", Pid("h1", w1.pid), None)], timeout=TIMEOUT)
    assert w1.call("subcluster_nodes", "only1") == []
    with pytest.raises(syn_mp.InvalidScopeError):
        w2.call("lookup", "only1", "x")


def test_node_down_purges_its_entries_and_node_up_restores_them(cluster):
    c = cluster(3)
    w1, w2, w3 = start(c)
    w1.call("register", "s", "a")
    w1.call("join", "s", "g")
    for h in (c.h2, c.h3):
        wait_for(lambda: table_of(h) == [("a", Pid("h1", w1.pid), None)] and len(groups_of(h, "g")) == 1,
                 timeout=TIMEOUT, what=f"name and membership on {h.name}")
    ev = on(c.h2).events("s", timeout=TIMEOUT)
    daemon1 = c.h1.node.manager_pid()
    os.kill(daemon1, signal.SIGKILL)  # h1's manager dies; its process w1 lives on
    for h in (c.h2, c.h3):
        wait_for(lambda: table_of(h) == [] and groups_of(h, "g") == [], timeout=TIMEOUT, what=f"purge on {h.name}")
    got = [next(ev), next(ev)]
    assert sorted((e.kind, e.reason) for e in got) == [("left", ("remote_node_down", "h1")),
                                                        ("unregistered", ("remote_node_down", "h1"))]
    assert table_of(c.h1) == [("a", Pid("h1", w1.pid), None)]  # its own node keeps it
    c.h1.daemon()
    for h in (c.h2, c.h3):
        wait_for(lambda: table_of(h) == [("a", Pid("h1", w1.pid), None)], timeout=TIMEOUT, what=f"back on {h.name}")
    w1.kill()
    for h in c:
        wait_for(lambda: table_of(h) == [], timeout=TIMEOUT, what=f"death propagated to {h.name}")


def test_node_up_reason_on_the_receiving_node(cluster):
    c = cluster(2)
    c.h1.daemon()
    w1 = c.h1.worker()
    w1.call("add_node_to_scopes", ["s"])
    w1.call("register", "s", "early")
    c.h2.daemon()
    w2 = c.h2.worker()
    w2.call("add_node_to_scopes", ["s"])
    wait_for(lambda: table_of(c.h2) == [("early", Pid("h1", w1.pid), None)], timeout=TIMEOUT)
    # the scope's journal on h2 holds how it arrived
    from syn_mp._client import table_of as t_of
    from syn_mp.events import to_event
    on(c.h2)
    t = t_of("s")
    recs = [to_event("s", t, r) for r in t.journal(0).read()]
    assert Event("registered", "s", "early", Pid("h1", w1.pid), None, ("remote_node_up", "h1")) in recs


def test_partition_heal_conflict_newest_wins_and_the_loser_is_signalled(cluster):
    c = cluster(3)
    w1, w2, w3 = start(c)
    wait_for(lambda: w1.call("subcluster_nodes", "s") == ["h2", "h3"], timeout=TIMEOUT)
    c.partition([c.h1], [c.h2, c.h3])
    wait_for(lambda: w1.call("subcluster_nodes", "s") == [], timeout=TIMEOUT, what="h1 sees itself alone")
    loser = c.h1.worker()
    loser.call("register", "s", "leader", meta="old")
    time.sleep(0.01)  # a strictly later registration on the other side
    winner = c.h2.worker()
    winner.call("register", "s", "leader", meta="new")
    c.heal()
    want = [("leader", Pid("h2", winner.pid), "new")]
    for h in c:
        wait_for(lambda: table_of(h) == want, timeout=TIMEOUT, what=f"winner on {h.name}")
    wait_for(lambda: loser.proc.poll() is not None, timeout=TIMEOUT, what="loser signalled by its own node")
    assert loser.proc.returncode == -signal.SIGTERM
    time.sleep(0.3)  # and it stays so: no zombie comes back
    assert all(table_of(h) == want for h in c)


def test_conflict_signal_option(cluster):
    c = cluster(2)
    w1, w2 = start(c, "--conflict-signal", "SIGUSR1")
    c.partition([c.h1], [c.h2])
    wait_for(lambda: w1.call("subcluster_nodes", "s") == [], timeout=TIMEOUT)
    a = c.h1.worker()
    a.call("register", "s", "n")
    time.sleep(0.01)
    b = c.h2.worker()
    b.call("register", "s", "n")
    c.heal()
    wait_for(lambda: a.proc.poll() is not None, timeout=TIMEOUT)
    assert a.proc.returncode == -signal.SIGUSR1


RESOLVER = '''
import json, os
class KeepOldest:
    def resolve_registry_conflict(self, scope, name, one, two):
        with open(os.environ["RESOLVER_LOG"], "a") as f:
            f.write(json.dumps([scope, name, one[2], two[2]]) + "\\n")
        return min(one, two, key=lambda e: e[2])[0]
class KeepNone:
    def resolve_registry_conflict(self, scope, name, one, two):
        return "neither"
'''


@pytest.mark.parametrize("resolver", ["KeepOldest", "KeepNone"])
def test_custom_resolver_is_honoured_and_nobody_is_signalled(cluster, tmp_path, resolver):
    (tmp_path / "synresolver.py").write_text(RESOLVER)
    c = cluster(2)
    for h in c:
        h.node.env.update(PYTHONPATH=f"{tmp_path}:{h.node.env.get('PYTHONPATH', '')}",
                          RESOLVER_LOG=str(tmp_path / "log"))
    w1, w2 = start(c, "--event-handler", f"synresolver:{resolver}")
    c.partition([c.h1], [c.h2])
    wait_for(lambda: w1.call("subcluster_nodes", "s") == [], timeout=TIMEOUT)
    old = c.h1.worker()
    old.call("register", "s", "x", meta="old")
    time.sleep(0.01)
    new = c.h2.worker()
    new.call("register", "s", "x", meta="new")
    c.heal()
    want = [("x", Pid("h1", old.pid), "old")] if resolver == "KeepOldest" else []
    for h in c:
        wait_for(lambda: table_of(h) == want, timeout=TIMEOUT, what=f"resolution on {h.name}")
    time.sleep(0.3)
    assert all(table_of(h) == want for h in c)
    assert old.proc.poll() is None and new.proc.poll() is None  # nobody signalled


def test_partial_netsplit_a_custom_resolver_gives_one_answer_on_every_node(cluster, tmp_path):
    """h1 and h2 cannot see each other, h3 sees both (issue 13, finding 1). h3 meets the conflict:
    it decides with the same resolver as the owners would (KeepOldest), keeps h1's, and tells h2,
    which drops its own. Before, h3 applied the default rule (newest) and ended with nothing."""
    (tmp_path / "synresolver.py").write_text(RESOLVER)
    c = cluster(3)
    ws = []
    for h in c:
        h.node.env.update(PYTHONPATH=f"{tmp_path}:{h.node.env.get('PYTHONPATH', '')}",
                          RESOLVER_LOG=str(tmp_path / "log"))
        h.daemon("--peers", c.peers_arg(), "--event-handler", "synresolver:KeepOldest", cluster=False)
        w = h.worker()
        w.call("add_node_to_scopes", ["s"])
        ws.append(w)
    w1, w2, w3 = ws
    c.cut(c.h1, c.h2)
    wait_for(lambda: w1.call("subcluster_nodes", "s") == ["h3"] and w2.call("subcluster_nodes", "s") == ["h3"],
             timeout=TIMEOUT, what="h1 and h2 apart, both with h3")
    old = c.h1.worker()
    old.call("register", "s", "x", meta="old")
    wait_for(lambda: table_of(c.h3) == [("x", Pid("h1", old.pid), "old")], timeout=TIMEOUT)
    new = c.h2.worker()
    new.call("register", "s", "x", meta="new")
    want = [("x", Pid("h1", old.pid), "old")]
    try:
        wait_for(lambda: table_of(c.h1) == want and table_of(c.h3) == want and table_of(c.h2) == [],
                 timeout=TIMEOUT, what="h3 keeps the oldest, h2 gives way")
    except AssertionError:
        raise AssertionError({h.name: table_of(h) for h in c}) from None
    c.uncut(c.h1, c.h2)
    for h in c:
        wait_for(lambda: table_of(h) == want, timeout=TIMEOUT, what=f"one answer on {h.name} after the heal")
    time.sleep(0.3)
    assert all(table_of(h) == want for h in c)
    assert old.proc.poll() is None and new.proc.poll() is None  # a custom resolver: nobody signalled


def _alive(pid: Pid) -> bool:
    from conftest import pid_alive
    return pid_alive(pid.pid)


@pytest.mark.parametrize("delay", [0.0, 0.03, 0.1, 0.3])
def test_zombie_race_leaves_no_entry_of_a_dead_process(cluster, delay):
    """SYN_NOTES' TLA+ race: n2 unregisters while the snapshots of the heal are in flight. Whatever the
    timing, every node ends with the same table and no entry of a dead process (no zombie)."""
    c = cluster(2)
    w1, w2 = start(c)
    c.partition([c.h1], [c.h2])
    wait_for(lambda: w1.call("subcluster_nodes", "s") == [], timeout=TIMEOUT)
    a1 = c.h1.worker()
    a1.call("register", "s", "a")
    time.sleep(0.01)
    a2 = c.h2.worker()
    a2.call("register", "s", "a")  # later: wins any conflict, so n1's process is the one to lose
    c.heal()
    time.sleep(delay)
    a2.call("unregister", "s", "a")  # while the heal's snapshots and resolution may be in flight

    # either a1 lost the conflict (killed, 'a' free) or the conflict never met (a1 keeps 'a')
    def converged_ok():
        final = table_of(c.h1)
        return final in ([], [("a", Pid("h1", a1.pid), None)]) and all(table_of(h) == final for h in c)
    try:
        wait_for(converged_ok, timeout=TIMEOUT, what="convergence")
    except AssertionError:
        raise AssertionError(f"no convergence: { {h.name: table_of(h) for h in c} }, a1 alive: "
                             f"{a1.proc.poll() is None}\n{c.h1.log()[-3000:]}\n{c.h2.log()[-3000:]}") from None
    final = table_of(c.h1)
    time.sleep(0.5)
    for h in c:
        assert table_of(h) == final, f"{h.name} changed after convergence: a stale entry came back"
    for _, pid, _ in final:
        assert _alive(pid), f"zombie: {pid} is dead but still registered"
    if final == []:
        wait_for(lambda: a1.proc.poll() is not None, timeout=TIMEOUT, what="the loser was signalled")
    # the name is usable again
    if final:
        a1.call("unregister", "s", "a")
        for h in c:
            wait_for(lambda: table_of(h) == [], timeout=TIMEOUT)
    a2.call("register", "s", "a")
    for h in c:
        wait_for(lambda: [e[1] for e in table_of(h)] == [Pid("h2", a2.pid)], timeout=TIMEOUT)


def test_twenty_percent_datagram_loss_still_converges(cluster):
    c = cluster(3)
    for h in c:
        h.node.env["SYN_MP_TEST_DROP_RATE"] = "0.2"
    workers = start(c)
    for i, w in enumerate(workers):
        for j in range(40):
            w.call("register", "s", (f"h{i + 1}", j), meta=j)
            w.call("join", "s", "g", meta=i)
        for j in range(0, 40, 3):
            w.call("unregister", "s", (f"h{i + 1}", j))
    wait_for(lambda: converged(c) and len(table_of(c.h1)) == 3 * (40 - 14), timeout=60, interval=0.2,
             what="identical tables under loss")
    assert all(len(groups_of(h, "g")) == 3 for h in c)
    st = json.loads(c.h1.cli("--json", "status").stdout)["cluster"]
    assert st["dropped_test"] > 0


_FILL = """
import sys, syn_mp
syn_mp.add_node_to_scopes(["s"])
for i in range({n}):
    syn_mp.register("s", ("n", i), meta=i)
print("done", flush=True)
sys.stdin.read()
"""


def test_twenty_thousand_entries_reach_a_new_node(cluster):
    c = cluster(2)
    c.h1.daemon()
    filler = c.h1.python(_FILL.format(n=20_000))
    assert filler.stdout.readline().strip() == "done", filler.stderr.read()
    t0 = time.monotonic()
    c.h2.daemon()
    w2 = c.h2.worker()
    w2.call("add_node_to_scopes", ["s"])
    wait_for(lambda: on(c.h2).registry_count("s", "h1") == 20000, timeout=60, interval=0.01,
             what="20,000 entries on the new node")
    print(f"\n20,000-entry snapshot on a new node: {time.monotonic() - t0:.3f}s from its manager's start")
    assert on(c.h2).lookup("s", ("n", 19999)) == (Pid("h1", filler.pid), 19999)


def flaps(*hosts) -> list[str]:
    """Every node down/up event the daemons logged after their start (their first sight of each other)."""
    out = []
    for h in hosts:
        lines = [ln for ln in h.log().splitlines() if "cluster: node" in ln and (" down " in ln or " restarted" in ln)]
        out += [f"{h.name}: {ln}" for ln in lines]
    return out


def test_a_hundred_thousand_entries_reach_a_new_node_and_no_node_flaps(cluster):
    """100,000 names on h1, synced to h2; then h3 joins. h1 copies its snapshot out of the table in one
    C call (shared by whoever asks at that position) and h3 applies it a slice at a time, so no loop
    stops hearing and sending heartbeats. Before, building and applying it blocked the managers'
    loops past the 500 ms node timeout: the nodes took each other for down and fetched again, for
    ever (in the 8-node bench the joiner never held the 100,000)."""
    c = cluster(3)
    c.h1.daemon()
    c.h2.daemon()
    w2 = c.h2.worker()
    w2.call("add_node_to_scopes", ["s"])
    filler = c.h1.python(_FILL.format(n=100_000))
    assert filler.stdout.readline().strip() == "done", filler.stderr.read()
    wait_for(lambda: on(c.h2).registry_count("s", "h1") == 100_000, timeout=60, interval=0.05,
             what="the 100,000 names on h2")
    c.h3.daemon()
    w3 = c.h3.worker()
    t0 = time.monotonic()
    w3.call("add_node_to_scopes", ["s"])
    wait_for(lambda: on(c.h3).registry_count("s", "h1") == 100_000, timeout=30, interval=0.01,
             what="the 100,000 names on the new node")
    took = time.monotonic() - t0
    time.sleep(2)  # the heartbeats go on: a flap shows within a node timeout or two
    st = cluster_status(c.h3)
    print(f"\n100,000-entry snapshot on a new node: {took:.3f}s; snapshots fetched by it {st['snapshots_fetched']}, "
          f"served by h1 {cluster_status(c.h1)['snapshots_served']}")
    assert flaps(c.h1, c.h2, c.h3) == []
    assert st["snapshots_fetched"] == 2, st  # one of each node: none fetched again
    assert on(c.h3).lookup("s", ("n", 99_999)) == (Pid("h1", filler.pid), 99_999)
    assert took < 5, took  # about 0.3 s here; before, never


def test_unicast_peers_where_multicast_is_blocked(cluster):
    c = cluster(3)
    workers = []
    for h in c:
        h.daemon("--peers", c.peers_arg(), cluster=False)
        w = h.worker()
        w.call("add_node_to_scopes", ["s"])
        workers.append(w)
    workers[2].call("register", "s", "via-peers")
    for h in c:
        wait_for(lambda: table_of(h) == [("via-peers", Pid("h3", workers[2].pid), None)], timeout=TIMEOUT)


def test_a_node_with_the_wrong_secret_never_joins(cluster):
    c = cluster(2)
    c.h1.daemon()
    c.h2.daemon(secret_file=c.write_wrong_secret())
    w1, w2 = c.h1.worker(), c.h2.worker()
    w1.call("add_node_to_scopes", ["s"])
    w2.call("add_node_to_scopes", ["s"])
    w1.call("register", "s", "secret-only")
    wait_for(lambda: json.loads(c.h2.cli("--json", "status").stdout)["cluster"]["forged"] >= 5, timeout=TIMEOUT)
    assert table_of(c.h2) == [] and w2.call("subcluster_nodes", "s") == []


MEMBER = """
import sys, syn_mp
syn_mp.add_node_to_scopes(["s"])
syn_mp.register("s", ("srv", sys.argv[1]))
syn_mp.join("s", "g", meta=sys.argv[1])
print("ready", flush=True)
while True:
    m = syn_mp.receive()
    if isinstance(m, syn_mp.MultiCall):
        m.reply(("pong", sys.argv[1], m.message))
    else:
        print(repr(m), flush=True)
"""


def test_send_publish_and_multi_call_across_nodes(cluster):
    c = cluster(3)
    start(c)
    members = [h.python(MEMBER, h.name) for h in (c.h2, c.h3)]
    for m in members:
        assert m.stdout.readline().strip() == "ready", m.stderr.read()
    w1 = c.h1.worker()
    wait_for(lambda: w1.call("member_count", "s", "g") == 2, timeout=TIMEOUT)
    assert w1.call("send", "s", ("srv", "h2"), {"to": "h2", "big": "x" * 5000}) == Pid("h2", members[0].pid)
    assert eval(members[0].stdout.readline()) == {"to": "h2", "big": "x" * 5000}
    assert w1.call("publish", "s", "g", ("all", 1)) == 2
    for m in members:
        assert m.stdout.readline().strip() == "('all', 1)"
    replies, bad = w1.call("multi_call", "s", "g", "ping", timeout=5)
    assert bad == []
    assert sorted(r for _, r in replies) == [("pong", "h2", "ping"), ("pong", "h3", "ping")]


def test_changes_missed_in_a_journal_overrun_still_reach_the_other_nodes(cluster):
    """A manager that fell a whole journal ring behind rescans, and its peers refetch its snapshot."""
    c = cluster(2)
    c.h1.node.env["SYN_MP_JOURNAL_BYTES"] = "65536"  # a small ring: easy to overrun
    w1, w2 = start(c)
    wait_for(lambda: w1.call("subcluster_nodes", "s") == ["h2"] and w2.call("subcluster_nodes", "s") == ["h1"],
             timeout=TIMEOUT, what="synced both ways")
    filler = c.h1.python("""
import sys, syn_mp
syn_mp.register("s", "ready")
print("ready", flush=True)
sys.stdin.readline()
for i in range(1500):
    syn_mp.register("s", ("x", i), meta="m" * 40)
print("done", flush=True)
sys.stdin.read()
""")
    assert filler.stdout.readline().strip() == "ready", filler.stderr.read()
    mgr = c.h1.node.manager_pid()
    # stopped for far less than the node timeout: h2 must not take h1 for down (that would refetch anyway)
    os.kill(mgr, signal.SIGSTOP)
    try:
        filler.stdin.write("go\n")
        filler.stdin.flush()
        assert filler.stdout.readline().strip() == "done", filler.stderr.read()
    finally:
        os.kill(mgr, signal.SIGCONT)
    wait_for(lambda: on(c.h2).registry_count("s", "h1") == 1501, timeout=TIMEOUT, what="all 1501 on h2")
    assert "journal overrun" in c.h1.log()
    assert "down" not in c.h2.log()


# ------------------------------------------------ finding 4 of issue 13: snapshot storms, stuck fetches

def cluster_status(host) -> dict:
    return json.loads(host.cli("--json", "status").stdout)["cluster"]


_BURST = """
import sys, time, syn_mp
syn_mp.add_node_to_scopes(["s"])
for i in range({base}):
    syn_mp.register("s", ("base", i))
print("ready", flush=True)
sys.stdin.readline()
syn_mp.register("s", "big", meta="x" * 4000)   # too big for a datagram: peers fetch a snapshot
for i in range({n}):
    syn_mp.register("s", ("w", i))
    time.sleep({pause})
print("done", flush=True)
sys.stdin.read()
"""


def test_a_write_burst_during_a_snapshot_fetch_costs_one_snapshot_not_a_storm(cluster):
    """A synced node made to fetch a snapshot (a change too big for a datagram) while 2,000 writes
    follow, one every 2 ms, over a slow link (tbf, 2 Mbit/s: a 5,000-entry answer takes a while to
    arrive). The changes that arrive meanwhile are buffered and replayed over it: one fetch.
    Before, they were dropped, the gap they left started another fetch whose own arrivals were
    dropped again, over and over (a storm: 12 snapshots for 2,000 writes)."""
    c = cluster(2)
    start(c)
    writer = c.h1.python(_BURST.format(base=5000, n=2000, pause=0.002))
    assert writer.stdout.readline().strip() == "ready", writer.stderr.read()
    wait_for(lambda: on(c.h2).registry_count("s", "h1") == 5000, timeout=60, interval=0.05,
             what="the 5,000 base names on h2")
    before = cluster_status(c.h2)["snapshots_fetched"]
    c.h1.tc("qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "2mbit", "burst", "32kb", "latency", "2s")
    writer.stdin.write("go\n")
    writer.stdin.flush()
    assert writer.stdout.readline().strip() == "done", writer.stderr.read()
    wait_for(lambda: on(c.h2).registry_count("s", "h1") == 7001, timeout=60, interval=0.05,
             what="7,001 names on h2")
    st = cluster_status(c.h2)
    fetched = st["snapshots_fetched"] - before
    print(f"\nsnapshots fetched for a 2,000-write burst: {fetched}")
    assert 1 <= fetched <= 2, (fetched, st)  # the big change's; one more for a datagram truly lost


def test_a_snapshot_fetch_stuck_in_tcp_retransmission_is_superseded(cluster):
    """h1's kernel drops every segment of its cluster port's answers that carries data (not the
    handshake, nor the nonce) for 3.5 s while h2 must fetch a snapshot: the answer sits in TCP's
    retransmission backoff (0.2, 0.6, 1.4, 3.0, then 6.2 s). A fetch unanswered after 0.5 s is given
    up for a new one at the next heartbeat, so h2 has h1's names within 1.5 s of the link healing;
    before, it waited for the backoff, dropping h1's changes meanwhile."""
    c = cluster(2)
    w1, w2 = start(c)
    w1.call("register", "s", "first")
    wait_for(lambda: on(c.h2).lookup("s", "first") is not None, timeout=TIMEOUT, what="first on h2")
    rule = ("OUTPUT", "-p", "tcp", "--sport", str(c.port), "-m", "length", "--length", "100:65535", "-j", "DROP")
    c.h1.iptables("-A", *rule)
    w1.call("register", "s", "big", meta="x" * 4000)  # h2 must fetch a snapshot: its answer is dropped
    for i in range(50):
        w1.call("register", "s", ("after", i))
    time.sleep(3.5)  # the fault (a bounded pause, < 5 s)
    c.h1.iptables("-D", *rule)
    healed = time.monotonic()
    wait_for(lambda: on(c.h2).registry_count("s", "h1") == 52, timeout=TIMEOUT, interval=0.02,
             what="h1's 52 names on h2")
    took = time.monotonic() - healed
    st = cluster_status(c.h2)
    print(f"\nconverged {took:.2f}s after TCP came back; fetches superseded {st['fetches_superseded']}")
    assert took < 1.5, (took, st)
