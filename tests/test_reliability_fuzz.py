"""Bad input (issue #7, part 2): fuzz every decoder that takes bytes from outside, and the manager's
sockets. Nothing may crash, hang or grow without bound:

- syn_mp._wire.open_datagram on random bytes and on mutated valid datagrams: a Datagram or None,
  never an exception, and only the untouched datagram opens;
- ReplayGuard against a model: no (node, incarnation, seq) is ever accepted twice, no other
  incarnation gets in unconfirmed (reset), a fresh sequence number always does;
- codec.decode / decode_name on random and hostile msgpack: a value or EncodingError, nothing else;
- the mailbox envelope parser on random bytes: only the errors `receive` skips;
- the manager's control socket fed garbage lines: it answers or closes, and stays up;
- a running daemon's cluster UDP port (and its wake and relay sockets) fed random, mutated and
  authentic-but-garbage datagrams: it stays up, keeps counting, keeps serving, and its RSS stays flat.

Every hypothesis test is bounded (max_examples, deadline). SYN_MP_SOAK_ITERATIONS multiplies the
number of datagrams thrown at the daemon.
"""
from __future__ import annotations

import json
import os
import random
import socket
import struct
import subprocess
import sys
import time

import msgpack
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import syn_mp
from syn_mp import _control, _wire, mailbox
from syn_mp.codec import decode, decode_name, encode_meta, encode_name
from syn_mp.errors import EncodingError

from conftest import ROOT, NodeHandle, wait_for

SECRET = b"fuzz-secret-0123456789abcdef0123"
SOAK = os.environ.get("SYN_MP_SOAK_ITERATIONS")
FAST = settings(max_examples=400, deadline=2000, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------ the wire decoder

@FAST
@given(st.binary(max_size=2048))
def test_open_datagram_random_bytes(data):
    d = _wire.open_datagram(SECRET, data)
    assert d is None or isinstance(d, _wire.Datagram)


@FAST
@given(st.binary(max_size=600), st.integers(0, 255), st.binary(max_size=64))
def test_open_datagram_random_bytes_behind_a_valid_header(tail, n, node):
    """Past the magic and version byte, with a node length that may lie."""
    data = _wire.MAGIC + bytes([_wire.VERSION, n]) + node + tail
    assert _wire.open_datagram(SECRET, data) is None  # no valid MAC without the secret


_nodes = st.text(min_size=0, max_size=40).filter(lambda s: len(s.encode()) <= 255)
_u64 = st.integers(0, 2**64 - 1)
_mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("cut"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("append"), st.integers(1, 100), st.integers(0, 255)),
)


def mutate(d: bytes, muts) -> bytes:
    b = bytearray(d)
    for kind, pos, v in muts:
        if kind == "append":
            b += bytes([v]) * pos
            continue
        if not b:
            continue
        i = pos % len(b)
        if kind == "flip":
            b[i] ^= v
        elif kind == "cut":
            del b[i:]
        elif kind == "insert":
            b.insert(i, v)
        else:
            del b[i]
    return bytes(b)


@FAST
@given(_nodes, _u64, _u64, st.binary(max_size=1300), st.lists(_mutation, min_size=1, max_size=4))
def test_open_datagram_mutated_valid_datagrams(node, inc, seq, body, muts):
    good = _wire.seal(SECRET, node, inc, seq, body)
    assert _wire.open_datagram(SECRET, good) == (node, inc, seq, body)
    bad = mutate(good, muts)
    got = _wire.open_datagram(SECRET, bad)
    if bad == good:
        assert got == (node, inc, seq, body)
    else:
        assert got is None, f"a mutated datagram opened: {muts}"
    assert _wire.open_datagram(b"another-secret-of-32-bytes......", good) is None


# ------------------------------------------------------------------ the replay guard

_events = st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 3),
                             st.one_of(st.integers(0, 200), _u64)), max_size=300)


@FAST
@given(_events)
def test_replay_guard_against_a_model(events):
    g = _wire.ReplayGuard()
    accepted: set[tuple[str, int, int]] = set()
    newest: dict[str, int] = {}
    high: dict[tuple[str, int], int] = {}
    for node, inc, seq in events:
        ok = g.accept(node, inc, seq)
        key = (node, inc, seq)
        if ok:
            assert key not in accepted, f"replay accepted: {key}"
            assert node not in newest or inc == newest[node], "another incarnation got in unconfirmed"
            accepted.add(key)
        if node not in newest:
            assert ok, "a first contact must be accepted"
        elif inc == newest.get(node) and seq > high.get((node, inc), -1):
            assert ok, "a fresh sequence number must be accepted"
        if ok:
            newest[node] = max(newest.get(node, -1), inc)
            high[(node, inc)] = max(high.get((node, inc), -1), seq)
    assert len(g._state) <= 3  # one small record per sender, whatever it sent


# ------------------------------------------------------------------ the codec

def _only_encoding_error(fn, data):
    try:
        fn(data)
    except EncodingError:
        pass


@settings(max_examples=1500, deadline=2000)
@given(st.binary(max_size=512))
def test_decode_random_bytes(data):
    _only_encoding_error(decode, data)
    _only_encoding_error(decode_name, data)


# hostile msgpack: real containers, ext types (tuple or unknown), lying lengths, deep nesting
_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(), st.text(max_size=20),
                  st.binary(max_size=20))


def _ext(children):
    return st.one_of(
        st.builds(lambda x: msgpack.ExtType(1, msgpack.packb(x, use_bin_type=True)), children),
        st.builds(lambda c, b: msgpack.ExtType(c, b), st.integers(0, 127), st.binary(max_size=30)),
        st.builds(lambda b: msgpack.ExtType(1, b), st.binary(max_size=30)),  # tuple ext of garbage
    )


_packable = st.recursive(_leaf, lambda ch: st.one_of(st.lists(ch, max_size=5), _ext(ch),
                                                      st.dictionaries(st.text(max_size=5), ch, max_size=4)),
                         max_leaves=30)


@settings(max_examples=800, deadline=2000)
@given(_packable, st.lists(_mutation, max_size=2))
def test_decode_hostile_msgpack(value, muts):
    data = mutate(msgpack.packb(value, use_bin_type=True), muts)
    _only_encoding_error(decode, data)


@pytest.mark.parametrize("depth", [50, 99, 100, 101, 500, 5000, 100000])
def test_decode_deep_nesting_is_refused_not_a_crash(depth):
    tup = msgpack.packb(None)
    for _ in range(min(depth, 2000)):
        tup = msgpack.packb(msgpack.ExtType(1, b"\x91" + tup))
    arrays = b"\x91" * depth + b"\xc0"
    maps = b"\x81\xc0" * depth + b"\xc0"
    for data in (tup, arrays, maps):
        _only_encoding_error(decode, data)


def test_decode_lying_lengths_allocate_nothing():
    """Headers that announce 4 GiB of array, map, str, bin or ext: refused at once."""
    proc = psutil.Process()
    rss = proc.memory_info().rss
    t0 = time.monotonic()
    for head in (b"\xdd", b"\xdf", b"\xdb", b"\xc6", b"\xc9"):
        for _ in range(1000):
            _only_encoding_error(decode, head + b"\xff\xff\xff\xff" + b"\x00" * 8)
    assert time.monotonic() - t0 < 5
    assert proc.memory_info().rss - rss < 50 << 20


@FAST
@given(st.binary(max_size=300))
def test_mailbox_envelopes_from_random_bytes(data):
    """What `receive` does with a datagram: a message, or one of the errors it skips."""
    for d in (data, bytes([1]) + data, bytes([0]) + data):
        try:
            mailbox._from_mailbox(d)
        except (EncodingError, ValueError, IndexError, struct.error):
            pass


@FAST
@given(st.lists(st.binary(max_size=40), max_size=9), st.integers(0, 3))
def test_mailbox_envelopes_with_random_parts(parts, kind):
    data = mailbox._envelope(kind, *parts)
    try:
        mailbox._from_mailbox(data)
    except (EncodingError, ValueError, IndexError, struct.error):
        pass


# ------------------------------------------------------------------ the control socket

def _send_line(path: str, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes on the control socket; what comes back before the manager closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        buf = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return buf
                buf += chunk
        except ConnectionResetError:
            return buf


def _answered_or_closed(reply: bytes) -> None:
    if reply:
        doc = json.loads(reply)
        assert isinstance(doc, dict) and doc.get("ok") in (True, False), reply


_json = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                               st.text(max_size=10)),
                     lambda ch: st.one_of(st.lists(ch, max_size=4), st.dictionaries(st.text(max_size=6), ch,
                                                                                    max_size=4)),
                     max_leaves=10)
# every op but the two that change the node (stop, and add_scopes with valid names, which creates them)
_requests = st.fixed_dictionaries(
    {"op": st.one_of(st.sampled_from(["ping", "scopes", "status", "nodes", "add_scopes", "", "PING"]), _json)},
    optional={"scope": _json, "scopes": st.one_of(st.lists(st.sampled_from(["", "bad name", "x" * 65, "a/b"]),
                                                           min_size=1), st.integers(), st.none()),
              "extra": _json})


def test_control_socket_fed_garbage_answers_or_closes_and_stays_up(make_node):
    node = make_node().use()
    syn_mp.add_node_to_scopes(["s"])
    pid = node.manager_pid()
    ctl = node.paths.ctl
    syn_mp.register("s", "keep", pid=os.getpid())

    @settings(max_examples=300, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.binary(max_size=300).filter(lambda b: b"stop" not in b))
    def raw(data):
        _answered_or_closed(_send_line(ctl, data + b"\n"))

    @settings(max_examples=300, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(_requests)
    def structured(req):
        if req["op"] == "stop":
            return
        _answered_or_closed(_send_line(ctl, json.dumps(req).encode() + b"\n"))

    raw()
    structured()
    # lines the stream reader refuses, deep JSON, no newline at all, invalid UTF-8
    for data in (b"x" * 200_000 + b"\n", b"[" * 100_000 + b"\n", b"[" * 60_000 + b"\n", b'{"a":' * 12_000 + b"\n",
                 b'{"op": "ping"}', b"\xff\xfe\n",
                 b'{"op": "ping"}\n' * 1000, b"\n", b"\x00" * 70_000):
        _answered_or_closed(_send_line(ctl, data))
    # a client that connects and says nothing holds nobody else up
    idle = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(20)]
    try:
        for s in idle:
            s.connect(ctl)
        assert _control.request(ctl, "ping", timeout=5)["ok"]
    finally:
        for s in idle:
            s.close()
    assert node.manager_pid() == pid, "the manager died"
    assert _control.request(ctl, "ping")["pid"] == pid
    assert syn_mp.node_scopes() == ["s"], "garbage created or dropped a scope"
    assert syn_mp.lookup("s", "keep") is not None
    assert node.cli("status").returncode == 0
    log = open(node.paths.log, errors="replace").read()
    for crash in ("Exception in callback", "Task exception was never retrieved", "Unhandled exception"):
        assert crash not in log, f"an exception escaped the manager's loop:\n{log[-5000:]}"


# ------------------------------------------------------------------ the cluster port

def _daemon(node: NodeHandle, iface: str, port: int, secret_file: str) -> subprocess.Popen:
    log = open(os.path.join(node.rdir, "daemon.log"), "ab")
    p = subprocess.Popen([sys.executable, "-m", "syn_mp", "--runtime-dir", node.rdir, "daemon", "--node", iface,
                          "--interface", iface, "--peers", f"{iface}:{port}", "--heartbeat-ms", "50",
                          "--node-timeout-ms", "400", "--secret-file", secret_file], cwd=ROOT, stdout=log,
                         stderr=log, env=dict(node.env))
    log.close()
    node.procs.append(p)
    return p


def _status(node: NodeHandle) -> dict:
    r = node.cli("--json", "status")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def _garbage_bodies(rnd: random.Random, closed_port: int) -> list[bytes]:
    """Authentic datagram bodies a buggy or hostile peer (one that holds the secret) could send."""
    junk = [None, 0, -1, 2**64 - 1, "", "x", b"", b"\x00" * 5, [], {}, [1, 2], {"s": "x"}, {1: 2}, 1.5, True,
            "s", ["pid", 1, 2], ["addr", b"\0syn_mp.nowhere"], ["addr", b"\0other"], ["pid", "x", None]]
    r = rnd.choice
    shapes = [
        lambda: ["hb", r([{"s": rnd.randrange(5)}, {"s": r(junk)}, r(junk)]), r([closed_port, r(junk)])],
        lambda: ["chg", r(["s", r(junk)]), r([rnd.randrange(4), r(junk)]),
                 r([[[r([True, False, r(junk)]), r([1, 2, r(junk)]), r([encode_name(("m", rnd.randrange(9))), r(junk)]),
                      r([rnd.randrange(1, 9), r(junk)]), r([1, r(junk)]), r([time.time_ns(), r(junk)]),
                      r([encode_meta(1), r(junk)]), r([0, 1, r(junk)])][:rnd.randrange(6, 9)]
                     for _ in range(rnd.randrange(3))], r(junk)])],
        lambda: ["big", r(["s", r(junk)]), r(junk)],
        lambda: ["msg", r(["127.0.0.2", r(junk)]), r(junk), r([b"\x00", r(junk)])],
        lambda: [r(["hb", "chg", "big", "msg", "snap", "cfl", "", r(junk)])] + [r(junk)] * rnd.randrange(12),
        lambda: r(junk),
    ]
    out = []
    for _ in range(400):
        try:
            out.append(msgpack.packb(r(shapes)()))
        except (TypeError, ValueError, OverflowError):
            pass
    out += [os.urandom(rnd.randrange(0, 200)) for _ in range(100)]  # not even msgpack
    return out


def test_cluster_port_fed_random_mutated_and_garbage_datagrams(make_node, tmp_path):
    n_random = 4000 * (max(1, int(SOAK) // 300) if SOAK else 1)
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(SECRET)
    secret_file.chmod(0o600)
    port = 47821
    node = make_node("127.0.0.2")
    p = _daemon(node, "127.0.0.2", port, str(secret_file))
    wait_for(lambda: os.path.exists(node.paths.ctl) or p.poll() is not None, what="daemon up")
    assert p.poll() is None, open(os.path.join(node.rdir, "daemon.log")).read()
    with open(f"/proc/{p.pid}/cmdline", "rb") as f:
        assert SECRET not in f.read()
    syn_mp._client.use_runtime_dir(node.rdir)
    syn_mp.add_node_to_scopes(["s"])
    target = ("127.0.0.2", port)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.3", 0))
    closed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # bound, never listening: connections refused
    closed.bind(("127.0.0.3", 0))
    closed_port = closed.getsockname()[1]
    rnd = random.Random(0xF022)
    sent = {"random": 0, "forged": 0, "authentic": 0, "replayed": 0}

    def blast(k: int) -> None:
        for i in range(k):
            x = rnd.random()
            if x < 0.4:
                data = os.urandom(rnd.randrange(0, 1500))
                if rnd.random() < 0.3:
                    data = _wire.MAGIC + data
                kind = "random"
            else:
                good = _wire.seal(SECRET, "mallory", 1, 10**6 + i, msgpack.packb(["hb", {}, closed_port]))
                if x < 0.7:
                    data = mutate(good, [(rnd.choice(["flip", "cut", "insert", "delete", "append"]),
                                          rnd.randrange(1, 200), rnd.randrange(1, 256))])
                    kind = "forged"
                else:
                    data = _wire.seal(b"not-the-secret-but-32-bytes-long", "mallory", 1, i, b"x" * rnd.randrange(900))
                    kind = "forged"
            s.sendto(data, target)
            sent[kind] += 1
            if i % 50 == 0:
                time.sleep(0.005)  # let the daemon keep up: a UDP queue overflow drops, it does not test

    # authentic datagrams with garbage bodies (a peer that holds the secret but is broken)
    bodies = _garbage_bodies(rnd, closed_port)
    seq = 0

    def authentic() -> None:
        nonlocal seq
        for b in bodies:
            seq += 1
            d = _wire.seal(SECRET, rnd.choice(["mallory", "eve"]), 7, seq, b)
            s.sendto(d, target)
            sent["authentic"] += 1
            if rnd.random() < 0.1:
                s.sendto(d, target)  # the same datagram again
                sent["replayed"] += 1
            if seq % 20 == 0:
                time.sleep(0.005)

    try:
        blast(500)  # warm up: the code paths and the allocator settle
        authentic()
        time.sleep(0.5)
        rss0 = _rss(p.pid)
        t0 = time.monotonic()
        blast(n_random)
        authentic()
        blast(n_random)
        elapsed = time.monotonic() - t0
        # wake and relay sockets: any same-user process can write to them
        for path in (node.paths.wake, node.paths.relay):
            u = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            for _ in range(300):
                try:
                    u.sendto(rnd.choice([os.urandom(rnd.randrange(1, 600)),
                                         msgpack.packb([rnd.choice(["x", 1, None, [1]]), rnd.choice([[1], None, "pid"]),
                                                        rnd.choice([b"", 5, None])]),
                                         msgpack.packb(["mallory", ["pid", 1, 2], b"\x00"])]), path)
                except OSError:
                    pass
            u.close()
        total = sum(sent.values())

        def counted():
            c = _status(node)["cluster"]
            return c if c["forged"] + c["malformed"] + c["replayed"] + c["received"] >= total * 0.98 else None
        try:
            c = wait_for(counted, timeout=20, interval=0.2, what="every datagram counted")
        except AssertionError:
            raise AssertionError(f"sent {sent}, counted {_status(node)['cluster']}") from None
        rss1 = _rss(p.pid)
        assert p.poll() is None, "the daemon died"
        assert c["forged"] >= sent["forged"] * 0.98
        assert c["replayed"] >= sent["replayed"] * 0.9
        assert c["received"] <= sent["authentic"]
        # it still serves: status, nodes, lookups, writes
        wait_for(lambda: _status(node)["cluster"]["nodes"] == [], timeout=10, what="mallory and eve timed out")
        assert node.cli("nodes", "s").returncode == 0
        syn_mp.register("s", "still-works", pid=os.getpid())
        assert syn_mp.whereis_name("s", "still-works").pid == os.getpid()
        assert syn_mp.subcluster_nodes("s") == []
        growth = rss1 - rss0
        assert growth < 50 << 20, f"daemon RSS grew {growth >> 20} MB"
        # an authentic heartbeat of the wrong shape is counted and changes nothing (no half-up node)
        before = _status(node)["cluster"]["malformed"]
        for i, junk in enumerate([5, None, "s", ["s"], {"s": "x"}, {7: 1}]):
            s.sendto(_wire.seal(SECRET, "zed", 1, i + 1, msgpack.packb(["hb", junk, closed_port])), target)
        s.sendto(_wire.seal(SECRET, "zed", 1, 99, msgpack.packb(["hb", {"s": 0}, "port"])), target)
        wait_for(lambda: _status(node)["cluster"]["malformed"] >= before + 7, what="malformed heartbeats counted")
        assert _status(node)["cluster"]["nodes"] == [] and node.cli("nodes", "s").returncode == 0
        log = open(os.path.join(node.rdir, "daemon.log"), "rb").read()
        assert SECRET not in log
        for crash in (b"Exception in callback", b"Task exception was never retrieved", b"Unhandled exception"):
            assert crash not in log, f"an exception escaped the manager's loop:\n{log.decode(errors='replace')[-5000:]}"
        print(f"\ncluster port: {total} datagrams ({sent}) in {elapsed:.1f}s; counted forged {c['forged']}, "
              f"malformed {c['malformed']}, replayed {c['replayed']}, received {c['received']}; "
              f"daemon RSS {rss0 >> 20} -> {rss1 >> 20} MB ({growth / 1024:+.0f} KiB)")
    finally:
        s.close()
        closed.close()
