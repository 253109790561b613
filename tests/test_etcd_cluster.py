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
from tcpcut import CutLink

TIMEOUT = 20  # generous: a loaded 2-core CI machine
NODE_TIMEOUT_MS = "1000"


def on(node):
    _client.use_runtime_dir(node.rdir)
    return syn_mp


def table_of(node, scope: str = "s") -> list:
    return sorted(on(node).registry_entries(scope), key=repr)


def start(e, make_node, k: int, *extra: str, prefix: str = "/t/", timeout_ms: str = NODE_TIMEOUT_MS,
          via: dict | None = None):
    """k nodes n1..nk on the etcd cluster `e`, scope "s" added on each through a worker; `via`: a
    node's own etcd endpoints by name (a CutLink's, tests/tcpcut.py)."""
    nodes, workers = [], []
    for i in range(1, k + 1):
        n = make_node(f"n{i}")
        eps = (via or {}).get(n.name, e.endpoints)
        n.daemon("--etcd", eps, "--etcd-prefix", prefix, "--node-timeout-ms", timeout_ms, *extra)
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
                 what=f"death propagated to {n.name}: {table_of(n)} {on(n).members('s', 'pool')}")
    got = sorted((x.kind, x.reason) for x in [next(ev), next(ev)])
    assert got == [("left", "process_exit"), ("unregistered", "process_exit")]
    # the CLI shows the nodes and entries as in the UDP mode
    out = n2.cli("nodes", "s")
    assert out.returncode == 0 and "n1" in out.stdout and "n3" in out.stdout, out


MEMBER = """
import sys, syn_mp
syn_mp.add_node_to_scopes(["s"])
syn_mp.register("s", ("srv", sys.argv[1]))
syn_mp.join("s", "g")
print("ready", flush=True)
while True:
    m = syn_mp.receive()
    if isinstance(m, syn_mp.MultiCall):
        m.reply(("pong", sys.argv[1], m.message))
    else:
        print(repr(m), flush=True)
"""


def test_send_publish_and_multi_call_go_node_to_node(etcd, make_node):
    e = etcd()
    (n1, n2, n3), (w1, _, _) = start(e, make_node, 3)
    members = [n.python(MEMBER, n.name) for n in (n2, n3)]
    for m in members:
        assert m.stdout.readline().strip() == "ready", m.stderr.read()
    wait_for(lambda: w1.call("member_count", "s", "g") == 2, timeout=TIMEOUT)
    assert w1.call("send", "s", ("srv", "n2"), {"to": "n2", "big": "x" * 5000}) == Pid("n2", members[0].pid)
    assert eval(members[0].stdout.readline()) == {"to": "n2", "big": "x" * 5000}
    assert w1.call("publish", "s", "g", ("all", 1)) == 2
    for m in members:
        assert m.stdout.readline().strip() == "('all', 1)"
    replies, bad = w1.call("multi_call", "s", "g", "ping", timeout=5)
    assert bad == []
    assert sorted(r for _, r in replies) == [("pong", "n2", "ping"), ("pong", "n3", "ping")]
    assert e.get("/t/relay-key") is not None and len(e.get("/t/relay-key")) == 32  # the relay's key, in etcd


def test_node_death_by_lease_and_its_return(etcd, make_node):
    e = etcd()
    (n1, n2, n3), (w1, w2, w3) = start(e, make_node, 3)
    w1.call("register", "s", "a")
    w1.call("join", "s", "g")
    for n in (n2, n3):
        wait_for(lambda: table_of(n) == [("a", Pid("n1", w1.pid), None)] and len(on(n).members("s", "g")) == 1,
                 timeout=TIMEOUT, what=f"on {n.name}")
    ev = on(n2).events("s", timeout=TIMEOUT)
    t0 = time.monotonic()
    n1.kill_manager()  # SIGKILL: no goodbye, the lease has to expire
    for n in (n2, n3):
        wait_for(lambda: table_of(n) == [] and on(n).members("s", "g") == [], timeout=TIMEOUT, what=f"purge on {n.name}")
    took = time.monotonic() - t0
    got = sorted((x.kind, x.reason) for x in [next(ev), next(ev)])
    assert got == [("left", ("remote_node_down", "n1")), ("unregistered", ("remote_node_down", "n1"))]
    assert took < 6, f"node down after {took:.1f}s with a 1 s lease"
    assert table_of(n1) == [("a", Pid("n1", w1.pid), None)]  # its own node keeps serving it
    n1.daemon("--etcd", e.endpoints, "--etcd-prefix", "/t/", "--node-timeout-ms", NODE_TIMEOUT_MS)
    for n in (n2, n3):
        wait_for(lambda: table_of(n) == [("a", Pid("n1", w1.pid), None)], timeout=TIMEOUT, what=f"back on {n.name}")
    got = next(ev)
    assert (got.kind, got.reason) in {("registered", ("remote_node_up", "n1")), ("joined", ("remote_node_up", "n1"))}


def test_etcd_member_killed_and_all_members_restarted_and_a_compaction(etcd, make_node):
    e = etcd()
    (n1, n2), (w1, w2) = start(e, make_node, 2)
    w1.call("register", "s", "before")
    wait_for(lambda: table_of(n2) == [("before", Pid("n1", w1.pid), None)], timeout=TIMEOUT)
    # one member of three killed (the first: the one each node talks to first): no interruption
    e.kill(0)
    w1.call("register", "s", "one-down")
    wait_for(lambda: len(table_of(n2)) == 2, timeout=TIMEOUT, what="propagation with a member down")
    assert on(n2).subcluster_nodes("s") == ["n1"]
    e.restart(0)
    # every member down: each node goes on serving its own tables, local writes don't wait
    e.stop_all()
    w1.call("register", "s", "during")
    w2.call("register", "s", "n2-during")
    assert on(n1).lookup("s", "during") == (Pid("n1", w1.pid), None)
    time.sleep(1.5)  # longer than the lease: each side drops the other for now
    e.start_all()
    want = sorted([("before", Pid("n1", w1.pid), None), ("one-down", Pid("n1", w1.pid), None),
                   ("during", Pid("n1", w1.pid), None), ("n2-during", Pid("n2", w2.pid), None)], key=repr)
    for n in (n1, n2):
        wait_for(lambda: table_of(n) == want, timeout=TIMEOUT, what=f"resync on {n.name}: {table_of(n)}")
    # a compacted revision: a node whose watch resumes below it reads everything again
    st = n2.cli("--json", "status")
    before = __import__("json").loads(st.stdout)["cluster"]["resyncs"]
    os.kill(n2.manager_pid(), signal.SIGSTOP)
    try:
        w1.call("register", "s", "while-stopped")
        w1.call("unregister", "s", "before")
        e.compact()
    finally:
        os.kill(n2.manager_pid(), signal.SIGCONT)
    # (a stop shorter than the lease keeps n2 up; its watch stream is older than the compaction only if
    # it was cut: the resync counter tells which path ran, the tables must agree either way)
    want = sorted([w for w in want if w[0] != "before"] + [("while-stopped", Pid("n1", w1.pid), None)], key=repr)
    wait_for(lambda: table_of(n2) == want, timeout=TIMEOUT, what=f"after compaction: {table_of(n2)}")
    assert before >= 1


def test_conflict_racing_on_two_nodes_is_decided_once_by_etcd(etcd, make_node):
    e = etcd()
    (n1, n2, n3), _ = start(e, make_node, 3, timeout_ms="3000")
    for first, second in ((n2, n1), (n1, n2)):
        name = ("race", first.name)
        a, b = second.worker(), first.worker()
        m1, m2 = n1.manager_pid(), n2.manager_pid()
        # both managers held still: each node takes the name locally, neither has told etcd yet
        os.kill(m1, signal.SIGSTOP)
        os.kill(m2, signal.SIGSTOP)
        try:
            a.call("register", "s", name)  # the earlier registration...
            b.call("register", "s", name)  # ...the later one, on the node that reaches etcd first
            os.kill(first.manager_pid(), signal.SIGCONT)
            wait_for(lambda: any(k.endswith(f"/{b.pid}") for k in e.keys("/t/e/s/r/")), timeout=TIMEOUT,
                     what="the first claim in etcd")
        finally:
            os.kill(m1, signal.SIGCONT)
            os.kill(m2, signal.SIGCONT)
        # etcd's order decides, not the registration times: the same holder on every node
        def settled():
            hs = {on(n).whereis_name("s", name) for n in (n1, n2, n3)}
            return hs == {Pid(first.name, b.pid)}
        wait_for(settled, timeout=TIMEOUT, what=f"{first.name} holds it everywhere")
        a.proc.wait(timeout=TIMEOUT)  # the loser is signalled by its own node (SIGTERM)
        assert a.proc.returncode == -signal.SIGTERM
        wait_for(lambda: [k for k in e.keys("/t/e/s/r/") if k.endswith(f"/{a.pid}")] == [], timeout=TIMEOUT,
                 what="the loser's claim gone from etcd")


def test_etcd_flags_refused_with_one_clear_line(make_node):
    n = make_node("n1")
    for args, msg in ((["--etcd", "http://127.0.0.1:2379", "--peers", "127.0.0.1:1"], "--etcd excludes --cluster and --peers"),
                      (["--etcd-ca", "/nonexistent"], "--etcd-ca needs --etcd"),
                      (["--etcd", "http://127.0.0.1:2379", "--etcd-user", "u"], "--etcd-user and --etcd-password-file go together"),
                      (["--etcd", "ftp://x:1"], "--etcd: expected http(s)://HOST:PORT")):
        r = n.cli("daemon", *args)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and msg in r.stderr, (args, r.stderr)


def test_register_with_confirm_racing_on_two_nodes_exactly_one_wins_at_once(etcd, make_node):
    """register(..., confirm=T) on two nodes for one name, both let go at once: one returns, the other
    gets TakenError (not a signal later), and the winner keeps the name on every node."""
    import threading
    e = etcd()
    (n1, n2, n3), _ = start(e, make_node, 3, timeout_ms="3000")
    a, b = n1.worker(), n2.worker()
    m1, m2 = n1.manager_pid(), n2.manager_pid()
    winners = {}
    for i in range(5):
        name = ("confirmed", i)
        got: dict = {}

        def race(w, tag):
            try:
                got[tag] = w.call("register", "s", name, confirm=10)
            except syn_mp.TakenError as ex:
                got[tag] = ex
        # both managers held still, both callers waiting on them: let go together, so that each
        # node takes the name locally before it sees the other's claim in etcd
        os.kill(m1, signal.SIGSTOP)
        os.kill(m2, signal.SIGSTOP)
        ts = [threading.Thread(target=race, args=(a, "n1")), threading.Thread(target=race, args=(b, "n2"))]
        try:
            for t in ts:
                t.start()
            time.sleep(0.2)
        finally:
            os.kill(m1, signal.SIGCONT)
            os.kill(m2, signal.SIGCONT)
        for t in ts:
            t.join(timeout=TIMEOUT)
        assert sorted(type(v).__name__ for v in got.values()) == ["NoneType", "TakenError"], got
        winners[name] = Pid("n1", a.pid) if got["n1"] is None else Pid("n2", b.pid)
    # neither loses later: the same holders everywhere, still after more than a lease, both callers alive
    for n in (n1, n2, n3):
        wait_for(lambda: all(on(n).whereis_name("s", k) == v for k, v in winners.items()), timeout=TIMEOUT,
                 what=f"the winners on {n.name}: {winners} != {[(k, on(n).whereis_name('s', k)) for k in winners]}, "
                      f"{[x.proc.poll() for x in (a, b)]}")
    time.sleep(3.5)
    for n in (n1, n2, n3):
        assert {k: on(n).whereis_name("s", k) for k in winners} == winners, n.name
    assert a.proc.poll() is None and b.proc.poll() is None  # a loser that waited is not signalled
    assert a.call("whereis_name", "s", "nothing") is None


def test_register_with_confirm_without_etcd(make_node):
    """A node without a cluster: confirm is the local register (that node is the whole truth);
    under --peers (UDP) it is refused with a clear error, nothing registered."""
    n = make_node("solo")
    n.daemon()
    w = n.worker()
    w.call("add_node_to_scopes", ["s"])
    assert w.call("register", "s", "x", confirm=1) is None
    assert on(n).whereis_name("s", "x") == Pid("solo", w.pid)
    with pytest.raises(syn_mp.TakenError):
        n.worker().call("register", "s", "x", confirm=1)
    with pytest.raises(RuntimeError, match="confirm must be a number"):  # ValueError, through the worker
        w.call("register", "s", "y", confirm=0)
    u = make_node("udp")
    secret = os.path.join(u.rdir, "secret")
    with open(secret, "wb") as f:
        f.write(os.urandom(32))
    os.chmod(secret, 0o600)
    u.daemon("--peers", "127.0.0.1:1", "--secret-file", secret)
    wu = u.worker()
    wu.call("add_node_to_scopes", ["s"])
    with pytest.raises(RuntimeError, match="needs a node on etcd"):
        wu.call("register", "s", "z", confirm=1)
    assert on(u).whereis_name("s", "z") is None
    assert wu.call("claim_slot", "s", "slot", 3) == 0  # without confirm: as ever


@pytest.fixture
def cut_link():
    made: list[CutLink] = []

    def make(endpoints: str) -> CutLink:
        made.append(CutLink(endpoints.split(",")))
        return made[-1]
    yield make
    for c in made:
        c.close()


def test_a_node_cut_off_from_etcd_goes_down_elsewhere_keeps_serving_and_comes_back(etcd, make_node, cut_link):
    """Only n1 loses etcd (its connections to every member go into a black hole): the others drop it
    when its lease ends, reason remote_node_down; n1 keeps serving (and writing) its own tables and
    drops the others; reconnected, it comes back with its living entries, reason remote_node_up."""
    e = etcd()
    link = cut_link(e.endpoints)
    (n1, n2, n3), (w1, w2, w3) = start(e, make_node, 3, via={"n1": link.endpoints})
    w1.call("register", "s", "a")
    w1.call("join", "s", "g")
    w2.call("register", "s", "b")
    both = sorted([("a", Pid("n1", w1.pid), None), ("b", Pid("n2", w2.pid), None)], key=repr)
    for n in (n1, n2, n3):
        wait_for(lambda: table_of(n) == both and len(on(n).members("s", "g")) == 1, timeout=TIMEOUT,
                 what=f"before the cut on {n.name}")
    ev = on(n3).events("s", timeout=TIMEOUT)
    t0 = time.monotonic()
    link.cut("blackhole")
    for n in (n2, n3):
        wait_for(lambda: table_of(n) == [("b", Pid("n2", w2.pid), None)] and on(n).members("s", "g") == [],
                 timeout=TIMEOUT, what=f"n1 down on {n.name}: {table_of(n)}")
    took = time.monotonic() - t0
    got = sorted((x.kind, x.reason) for x in [next(ev), next(ev)])
    assert got == [("left", ("remote_node_down", "n1")), ("unregistered", ("remote_node_down", "n1"))]
    assert took < 8, f"n1 down after {took:.1f}s with a 1 s lease"
    assert n1.manager_pid() is not None  # cut off, not dead
    # n1 serves its own tables, writes locally without waiting on etcd, and drops the others
    assert on(n1).lookup("s", "a") == (Pid("n1", w1.pid), None)
    w1.call("register", "s", "during-cut")
    assert on(n1).whereis_name("s", "during-cut") == Pid("n1", w1.pid)
    wait_for(lambda: on(n1).whereis_name("s", "b") is None, timeout=TIMEOUT, what="n1 drops the others")
    assert on(n1).subcluster_nodes("s") == []
    assert on(n2).whereis_name("s", "during-cut") is None
    link.heal()
    want = sorted(both + [("during-cut", Pid("n1", w1.pid), None)], key=repr)
    for n in (n1, n2, n3):
        wait_for(lambda: table_of(n) == want and len(on(n).members("s", "g")) == 1, timeout=TIMEOUT,
                 what=f"n1 back on {n.name}: {table_of(n)}")
    back = sorted((x.kind, x.key, x.reason) for x in [next(ev), next(ev), next(ev)])
    assert back == [("joined", "g", ("remote_node_up", "n1")), ("registered", "a", ("remote_node_up", "n1")),
                    ("registered", "during-cut", ("remote_node_up", "n1"))], back
    assert sorted(on(n2).subcluster_nodes("s")) == ["n1", "n3"]


def _status(n) -> dict:
    import json
    out = n.cli("--json", "status")
    return json.loads(out.stdout)["cluster"]


def test_a_watch_resumed_below_a_compaction_reads_everything_again(etcd, make_node, cut_link):
    """n2's links to etcd are cut (refused) for less than its lease, so it stays up and keeps its
    lease; meanwhile n1 adds and removes entries and etcd is compacted past them: n2's watch cannot
    resume where it stopped and must read the prefix again (the compacted counter, not a new lease),
    and it ends with n1's entries as they are."""
    import msgpack
    from syn_mp.codec import encode_name
    e = etcd()
    link = cut_link(e.endpoints)
    (n1, n2), (w1, w2) = start(e, make_node, 2, timeout_ms="4000", via={"n2": link.endpoints})
    w1.call("register", "s", "old")
    w1.call("register", "s", "kept")
    wait_for(lambda: len(table_of(n2)) == 2, timeout=TIMEOUT, what="before the cut")
    before = _status(n2)
    ev = on(n2).events("s", timeout=TIMEOUT)

    def key(name):
        return f"/t/e/s/r/{encode_name(name).hex()}/{b'n1'.hex()}/{w1.pid}"
    t0 = time.monotonic()
    link.cut("refuse")
    w1.call("register", "s", "new")
    w1.call("unregister", "s", "old")
    def removed(v):  # a tombstone [reason], or already deleted
        return v is None or len(msgpack.unpackb(v)) == 1
    wait_for(lambda: e.get(key("new")) is not None and removed(e.get(key("old"))), timeout=TIMEOUT,
             what="n1's changes in etcd")
    # n1's writer may send both changes in one transaction, one revision: n2 then resumes at that
    # very revision, which a compaction there leaves readable (the failure this test had in CI 1 run
    # in ~20). A write outside the prefix moves the compaction past it
    e.put("/elsewhere", b"x")
    e.compact()
    assert time.monotonic() - t0 < 2.5, "the cut lasted longer than n2's lease: not the path under test"
    link.heal()
    want = sorted([("kept", Pid("n1", w1.pid), None), ("new", Pid("n1", w1.pid), None)], key=repr)
    wait_for(lambda: table_of(n2) == want, timeout=TIMEOUT, what=f"n2 after the compaction: {table_of(n2)}")
    after = _status(n2)
    assert after["compacted"] == before["compacted"] + 1, (before, after)
    assert after["leases"] == before["leases"], "n2 took a new lease: it was dropped, not resumed"
    assert on(n2).subcluster_nodes("s") == ["n1"]
    got = sorted((x.kind, x.key) for x in [next(ev), next(ev)])
    assert got == [("registered", "new"), ("unregistered", "old")], got


def test_a_call_whose_channel_a_failover_closes_is_a_failure_to_retry_not_the_end_of_its_loop(etcd):
    """grpc.aio cancels a call in flight when another task closes its channel, as a failover does:
    the call's caller sees CancelledError although nobody cancelled it. _bounded (around every etcd
    call of the node) turns that into an error its loop retries; before, the writer's loop ended for
    good and a change written while one etcd member died never left the node (seen 1 run in 10)."""
    import asyncio
    from syn_mp._etcd import _bounded, _client_class
    e = etcd()
    m = e.members[0]
    host, port = m.client_url.rsplit("/", 1)[1].split(":")

    async def main() -> tuple[str, str]:
        c = _client_class()(host=host, port=int(port), timeout=30)
        await c.connect()
        await c.put(b"/x", b"0")
        os.kill(m.proc.pid, signal.SIGSTOP)  # the member stops answering: calls stay in flight
        try:
            bare = asyncio.ensure_future(c.put(b"/x", b"1"))  # what a loop sees without _bounded
            bounded = asyncio.ensure_future(_bounded(c.put(b"/x", b"2"), 20))
            await asyncio.sleep(0.3)
            await c.close()  # the failover's close, from another task
            done, _ = await asyncio.wait({bare, bounded}, timeout=5)
        finally:
            os.kill(m.proc.pid, signal.SIGCONT)
        assert done == {bare, bounded}, "a call in flight outlived its channel"
        return ("cancelled" if bare.cancelled() else repr(bare.exception()),
                "cancelled" if bounded.cancelled() else type(bounded.exception()).__name__)

    got_bare, got_bounded = asyncio.run(main())
    assert (got_bare, got_bounded) == ("cancelled", "ConnectionError")

    async def own() -> None:  # a cancellation of the caller itself still cancels, a timeout still times out
        t = asyncio.ensure_future(_bounded(asyncio.sleep(10), 5))
        await asyncio.sleep(0.01)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        with pytest.raises(asyncio.TimeoutError):
            await _bounded(asyncio.sleep(10), 0.05)
    asyncio.run(own())
