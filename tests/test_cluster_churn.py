"""The cluster under restarts, clock steps and stale traffic (issue 13), on loopback: each node is a
daemon on its own 127.0.0.x address with --peers (no namespaces needed, so these run anywhere)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import msgpack
import pytest

import syn_mp
from syn_mp import Pid, _client, _incarnation, _wire

from conftest import ROOT, NodeHandle, pid_alive, wait_for

SECRET = b"0123456789abcdef0123456789abcdef"
TIMEOUT = 20


@pytest.fixture
def secret_file(tmp_path) -> str:
    p = tmp_path / "secret"
    p.write_bytes(SECRET)
    p.chmod(0o600)
    return str(p)


class LoNet:
    """Nodes n2, n3, ... on 127.0.0.2, 127.0.0.3, ..., one UDP/TCP port, each peering with all."""

    def __init__(self, make_node, secret_file: str, port: int, n: int, extra: tuple[str, ...] = ()) -> None:
        self.port = port
        self.secret_file = secret_file
        self.extra = extra
        self.nodes = [make_node(f"n{i}") for i in range(2, n + 2)]
        self.daemons: dict[str, subprocess.Popen] = {}

    def ip(self, node: NodeHandle) -> str:
        return f"127.0.0.{node.name[1:]}"

    def start(self, node: NodeHandle, *extra: str) -> subprocess.Popen:
        peers = ",".join(f"{self.ip(n)}:{self.port}" for n in self.nodes)
        log = open(os.path.join(node.rdir, "daemon.log"), "ab")
        p = subprocess.Popen([sys.executable, "-m", "syn_mp", "--runtime-dir", node.rdir, "daemon", "--node",
                              node.name, "--interface", self.ip(node), "--peers", peers, "--secret-file",
                              self.secret_file, "--heartbeat-ms", "50", "--node-timeout-ms", "500",
                              *self.extra, *extra], cwd=ROOT, stdout=log, stderr=log, env=node.env)
        log.close()
        node.procs.append(p)
        self.daemons[node.name] = p
        wait_for(lambda: (node.manager_pid() == p.pid and os.path.exists(node.paths.ctl)) or p.poll() is not None,
                 what=f"daemon of {node.name}")
        assert p.poll() is None, node_log(node)
        return p

    def start_all(self, scopes=("s",)) -> list:
        ws = []
        for n in self.nodes:
            self.start(n)
            w = n.worker()
            w.call("add_node_to_scopes", list(scopes))
            ws.append(w)
        return ws

    def kill(self, node: NodeHandle) -> None:
        p = self.daemons.pop(node.name)
        p.kill()
        p.wait(timeout=10)


def node_log(n: NodeHandle) -> str:
    try:
        return open(os.path.join(n.rdir, "daemon.log"), errors="replace").read()[-4000:]
    except OSError:
        return ""


def status(n: NodeHandle) -> dict:
    return json.loads(n.cli("--json", "status").stdout)["cluster"]


def table_of(n: NodeHandle, scope: str = "s") -> list:
    _client.use_runtime_dir(n.rdir)
    return sorted(syn_mp.registry_entries(scope), key=repr)


# ------------------------------------------------------------ finding 2: incarnations without a clock

def test_the_incarnation_counter_reads_no_clock_and_always_grows(tmp_path, monkeypatch):
    def no_clock(*a, **k):
        raise AssertionError("the incarnation read the clock")
    for name in ("time", "time_ns", "monotonic", "monotonic_ns", "clock_gettime", "clock_gettime_ns"):
        monkeypatch.setattr(time, name, no_clock)
    d = str(tmp_path)
    assert _incarnation.next_incarnation(d) == 1
    assert _incarnation.next_incarnation(d) == 2
    # a counter left by a run whose incarnation was "from the future" (a clock far ahead)
    future = 4 * 10 ** 18
    (tmp_path / _incarnation.FILE).write_text(f"{future}\n")
    assert _incarnation.next_incarnation(d) == future + 1
    assert _incarnation.next_incarnation(d) == future + 2
    assert oct((tmp_path / _incarnation.FILE).stat().st_mode & 0o777) == "0o600"
    (tmp_path / _incarnation.FILE).write_text("garbage")
    assert _incarnation.next_incarnation(d) == 1  # lost: peers check a lower one with the node (below)


def test_a_restarted_node_gets_a_larger_incarnation_even_after_one_from_the_future(make_node, secret_file):
    net = LoNet(make_node, secret_file, 47851, 2)
    a, b = net.nodes
    # a's previous life: its manager's incarnation was "from the future" (a clock ahead at that time)
    future = 4 * 10 ** 18
    with open(os.path.join(a.rdir, _incarnation.FILE), "w") as f:
        f.write(f"{future}\n")
    wa, wb = net.start_all()
    assert status(a)["incarnation"] == future + 1
    wa.call("register", "s", "x")
    wait_for(lambda: table_of(b) == [("x", Pid("n2", wa.pid), None)], timeout=TIMEOUT)
    net.kill(a)  # and the clock "steps back": the new incarnation must still be larger
    net.start(a)
    assert status(a)["incarnation"] == future + 2
    wait_for(lambda: "n2" in status(b)["nodes"] and table_of(b) == [("x", Pid("n2", wa.pid), None)],
             timeout=TIMEOUT, what="b sees the restarted a")


def test_a_node_whose_clock_stepped_back_is_not_dropped_forever(make_node, secret_file):
    """b heard a's previous life with an incarnation from the future (4e18 > time_ns today); a then
    restarts with a clock that is behind. The old incarnation (time_ns) made every datagram of a a
    replay for good; now a lower incarnation is checked with a itself and accepted."""
    net = LoNet(make_node, secret_file, 47852, 2)
    a, b = net.nodes
    net.start(b)
    wb = b.worker()
    wb.call("add_node_to_scopes", ["s"])
    # a's previous life, heard by b: an authentic heartbeat of incarnation 4e18 from a's address
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.2", 0))
    s.sendto(_wire.seal(SECRET, "n2", 4 * 10 ** 18, 1, msgpack.packb(["hb", {}, 47852])), ("127.0.0.3", 47852))
    s.close()
    wait_for(lambda: status(b)["received"] >= 1, what="the old life heard")
    net.start(a)
    wa = a.worker()
    wa.call("add_node_to_scopes", ["s"])
    wa.call("register", "s", "x")
    try:
        wait_for(lambda: table_of(b) == [("x", Pid("n2", wa.pid), None)], timeout=TIMEOUT,
                 what="a's name on b")
    except AssertionError:
        raise AssertionError(f"{status(b)}\n{node_log(b)}") from None
    st = status(b)
    assert st["restarts_verified"] == 1 and "n2" in st["nodes"]
    # a replay of the old life's heartbeat now changes nothing (b asks a, a says otherwise)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.2", 0))
    s.sendto(_wire.seal(SECRET, "n2", 4 * 10 ** 18, 2, msgpack.packb(["hb", {}, 47852])), ("127.0.0.3", 47852))
    s.close()
    time.sleep(0.5)
    st = status(b)
    assert "n2" in st["nodes"] and table_of(b) == [("x", Pid("n2", wa.pid), None)]
