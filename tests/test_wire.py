"""The cluster's wire: only authentic, fresh datagrams get in; a cluster needs a secret."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from syn_mp import _wire

from conftest import ROOT, wait_for

SECRET = b"0123456789abcdef0123456789abcdef"


def test_sealed_datagram_opens_with_the_secret_only():
    d = _wire.seal(SECRET, "n1", 7, 42, b"body")
    assert _wire.open_datagram(SECRET, d) == ("n1", 7, 42, b"body")
    assert _wire.open_datagram(b"another secret, 32 bytes long!!!", d) is None
    for i in range(len(d)):  # any flipped byte is caught
        bad = bytearray(d)
        bad[i] ^= 1
        assert _wire.open_datagram(SECRET, bytes(bad)) is None
    for cut in (0, 5, 10, len(d) - 1):
        assert _wire.open_datagram(SECRET, d[:cut]) is None


def test_replay_guard_drops_repeats_old_sequences_and_old_incarnations():
    g = _wire.ReplayGuard()
    assert g.accept("a", 1, 10)
    assert not g.accept("a", 1, 10)          # the same datagram again
    assert g.accept("a", 1, 12) and g.accept("a", 1, 11)  # reordering inside the window is fine
    assert not g.accept("a", 1, 11)
    assert g.accept("a", 1, 100)
    assert not g.accept("a", 1, 100 - _wire.WINDOW)   # too old to tell: dropped
    assert not g.accept("a", 0, 500)          # a previous incarnation of the node
    assert not g.accept("a", 2, 1)            # a restart, or an old life replayed: not yet believed
    g.reset("a", 2)                           # the node confirmed it (over TCP)
    assert g.accept("a", 2, 1) and not g.accept("a", 1, 101)
    g.reset("a", 0)                           # lower: its counter was lost, and it confirmed that
    assert g.accept("a", 0, 1) and not g.accept("a", 2, 2)
    assert g.accept("b", 1, 1)                # senders are independent


def _daemon(rdir: str, iface: str, port: int, secret_file: str | None, *extra: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "syn_mp", "--runtime-dir", rdir, "daemon", "--node", iface,
            "--interface", iface, "--peers", f"127.0.0.2:{port},127.0.0.3:{port}", "--heartbeat-ms", "50",
            "--node-timeout-ms", "400", *extra]
    if secret_file:
        args += ["--secret-file", secret_file]
    log = open(os.path.join(rdir, "daemon.log"), "ab")
    return subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=log)


@pytest.fixture
def secret_file(tmp_path):
    p = tmp_path / "secret"
    p.write_bytes(SECRET)
    p.chmod(0o600)
    return str(p)


def test_cluster_refuses_to_start_without_a_secret(make_node, secret_file, tmp_path):
    n = make_node()
    r = n.cli("daemon", "--cluster", "239.77.0.1:47700")
    assert r.returncode == 2 and "secret" in r.stderr and r.stderr.count("\n") == 1
    short = tmp_path / "short"
    short.write_bytes(b"abc")
    r = n.cli("daemon", "--peers", "127.0.0.2:1", "--secret-file", str(short))
    assert r.returncode == 2 and "16 bytes" in r.stderr
    for bad in (["--cluster", "10.0.0.1:5"], ["--cluster", "239.1.1.1"], ["--peers", "x"],
                ["--cluster", "239.1.1.1:5", "--peers", "127.0.0.2:5"],
                ["--cluster", "239.1.1.1:5", "--conflict-signal", "SIGNOPE"]):
        r = n.cli("daemon", *bad, "--secret-file", secret_file)
        assert r.returncode == 2 and r.stderr.startswith("syn-mp: "), (bad, r.stderr)


def _status(n) -> dict:
    return json.loads(n.cli("--json", "status").stdout)


def test_forged_replayed_truncated_and_oversized_datagrams_are_dropped_and_counted(make_node, secret_file):
    port = 47811
    a = make_node("127.0.0.2")
    p = _daemon(a.rdir, "127.0.0.2", port, secret_file)
    a.procs.append(p)
    wait_for(lambda: os.path.exists(a.paths.ctl), what="daemon up")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    target = ("127.0.0.2", port)
    good = _wire.seal(SECRET, "mallory", 1, 1, b"\x93\xa2hb\x80\x00")
    s.sendto(good, target)
    wait_for(lambda: _status(a)["cluster"]["received"] >= 1, what="authentic datagram accepted")
    s.sendto(good, target)                                            # replayed
    s.sendto(_wire.seal(b"W" * 32, "mallory", 1, 2, b"x"), target)     # wrong secret: forged
    s.sendto(good[:-1] + bytes([good[-1] ^ 1]), target)               # tampered MAC: forged
    s.sendto(good[:20], target)                                       # truncated
    s.sendto(b"\x00" * 1400, target)                                  # garbage
    s.sendto(b"SYNMP" + b"\x01" * 60000, target)                      # oversized, not authentic
    def counted():
        c = _status(a)["cluster"]
        # anything carrying our magic that fails authentication is forged; the rest is malformed
        return c["replayed"] >= 1 and c["forged"] >= 4 and c["malformed"] >= 1 and c
    try:
        wait_for(counted, what="drops counted")
    except AssertionError:
        raise AssertionError(_status(a)["cluster"]) from None
    st = _status(a)["cluster"]
    assert st["received"] == 1
    assert p.poll() is None


def test_a_node_with_the_wrong_secret_is_ignored(make_node, secret_file, tmp_path):
    port = 47812
    wrong = tmp_path / "wrong"
    wrong.write_bytes(b"W" * 32)
    a, b = make_node("127.0.0.2"), make_node("127.0.0.3")
    a.procs.append(_daemon(a.rdir, "127.0.0.2", port, secret_file))
    b.procs.append(_daemon(b.rdir, "127.0.0.3", port, str(wrong)))
    wait_for(lambda: os.path.exists(a.paths.ctl) and os.path.exists(b.paths.ctl), what="daemons up")
    wait_for(lambda: _status(a)["cluster"]["forged"] >= 3 and _status(b)["cluster"]["forged"] >= 3,
             what="each side drops the other's heartbeats")
    assert _status(a)["cluster"]["nodes"] == [] and _status(b)["cluster"]["nodes"] == []


def test_the_secret_never_appears_in_logs_or_process_titles(make_node, secret_file):
    port = 47813
    a = make_node("127.0.0.2")
    p = _daemon(a.rdir, "127.0.0.2", port, secret_file, "--log-level", "DEBUG")
    a.procs.append(p)
    wait_for(lambda: os.path.exists(a.paths.ctl), what="daemon up")
    with open(f"/proc/{p.pid}/cmdline", "rb") as f:
        assert SECRET not in f.read()
    status = a.cli("--json", "status").stdout
    assert SECRET.decode() not in status
    a.cli("stop")
    p.wait(timeout=10)
    assert SECRET not in open(os.path.join(a.rdir, "daemon.log"), "rb").read()
