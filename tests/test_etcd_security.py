"""The cluster on etcd against an etcd that guards itself (issue 14): client TLS with client
certificates (etcd --client-cert-auth), etcd's users and roles, and the node-to-node relay's replay
protection. Real etcd members (tests/etcd.py), real daemons, on loopback."""
from __future__ import annotations

import asyncio
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time

import msgpack

from syn_mp import Pid, _procinfo, _tcp, _wire, codec, mailbox
from syn_mp._etcd import EtcdOptions, _refusal

from conftest import ROOT, wait_for
from etcd import _free_ports, require_etcd, require_openssl, require_tool
from test_contrib_docs import _processes_of
from test_etcd_cluster import MEMBER, TIMEOUT, start, table_of

PREFIX = "/t/"


def refused(n, e, *flags: str) -> str:
    """The daemon started with these flags against `e` must end at once: exit 2, one line, no
    traceback. Its line."""
    r = n.cli("daemon", "--node", n.name, "--etcd", e.endpoints, "--etcd-prefix", PREFIX, *flags, timeout=20)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, (flags, r.stderr)
    assert r.stderr.startswith("syn-mp: etcd at "), r.stderr
    assert n.manager_pid() is None
    return r.stderr


def test_two_nodes_over_tls_with_client_certificates(etcd, make_node):
    e = etcd(tls=True)
    assert e.endpoints.startswith("https://")
    (n1, n2), (w1, w2) = start(e, make_node, 2, *e.pki.client_args())
    w1.call("register", "s", "tls")
    wait_for(lambda: table_of(n2) == [("tls", Pid("n1", w1.pid), None)], timeout=TIMEOUT, what="over TLS")
    # etcd's auth turned on under them: without --etcd-user, etcd takes the client certificate's
    # CommonName ("client") for the user, whose role covers the prefix
    e.add_user("client", "unused", PREFIX)
    e.enable_auth()
    w2.call("register", "s", "cn")
    want = sorted([("tls", Pid("n1", w1.pid), None), ("cn", Pid("n2", w2.pid), None)], key=repr)
    wait_for(lambda: table_of(n1) == want, timeout=TIMEOUT, what="the certificate as the user")
    n1.kill_manager()  # no goodbye: its lease expires, which n2 sees through its TLS watch
    wait_for(lambda: table_of(n2) == [("cn", Pid("n2", w2.pid), None)] and w2.call("subcluster_nodes", "s") == [],
             timeout=TIMEOUT, what="n1 down on n2")


def test_a_certificate_etcd_does_not_take_ends_the_start_in_one_line(etcd, make_node):
    e = etcd(tls=True)
    p, n = e.pki, make_node("n1")
    # etcd's certificate checked against a CA that did not sign it
    line = refused(n, e, "--etcd-ca", p.other_ca, "--etcd-cert", p.cert, "--etcd-key", p.key)
    assert "TLS handshake failed (CERTIFICATE_VERIFY_FAILED" in line and "--etcd-ca" in line, line
    # no client certificate, then one from a CA etcd does not trust
    for flags in (["--etcd-ca", p.ca], ["--etcd-ca", p.ca, "--etcd-cert", p.other_cert, "--etcd-key", p.other_key]):
        line = refused(n, e, *flags)
        assert "it wants a client certificate signed by a CA of its --trusted-ca-file" in line, (flags, line)
    # and with the right ones, it starts
    n.daemon("--etcd", e.endpoints, "--etcd-prefix", PREFIX, *p.client_args())


def test_a_user_whose_role_covers_only_the_prefix_and_etcd_restarted_under_it(etcd, make_node, tmp_path):
    """etcd's auth on; the nodes log in as a user whose role reads and writes the prefix and nothing
    else: everything of syn_mp is under the prefix (the relay's key too), so it all works. A full
    restart of etcd forgets the login tokens: the nodes log in again by themselves."""
    e = etcd()
    e.add_user("synmp", "s3cret", PREFIX)
    e.add_user("elsewhere", "s3cret", "/other/")
    e.enable_auth()
    good, bad = tmp_path / "password", tmp_path / "wrong"
    good.write_text("s3cret\n")
    bad.write_text("guessed\n")
    n = make_node("n0")
    line = refused(n, e, "--etcd-user", "synmp", "--etcd-password-file", str(bad))
    assert "authentication failed: wrong user 'synmp' or password" in line, line
    line = refused(n, e, "--etcd-user", "elsewhere", "--etcd-password-file", str(good))
    assert f"permission denied: the user 'elsewhere' needs read and write on the prefix {PREFIX}" in line, line
    line = refused(n, e)
    assert "etcd's authentication is on: give --etcd-user and --etcd-password-file" in line, line

    (n1, n2), (w1, w2) = start(e, make_node, 2, "--etcd-user", "synmp", "--etcd-password-file", str(good))
    w1.call("register", "s", "a")
    wait_for(lambda: table_of(n2) == [("a", Pid("n1", w1.pid), None)], timeout=TIMEOUT, what="with a user")
    assert f"{PREFIX}relay-key" in e.keys(PREFIX)
    e.stop_all()
    e.start_all()
    w2.call("register", "s", "b")
    want = sorted([("a", Pid("n1", w1.pid), None), ("b", Pid("n2", w2.pid), None)], key=repr)
    for node in (n1, n2):
        wait_for(lambda: table_of(node) == want, timeout=TIMEOUT, what=f"after etcd's restart on {node.name}")
    for node in (n1, n2):
        st = _status(node)
        # the connection lost with etcd, a new one and a new login; no refusal
        assert st["logins"] >= 2 and st["etcd_refused"] == 0, st


def test_login_tokens_that_expire_are_renewed_by_logging_in_again(etcd, make_node, tmp_path):
    """etcd's signed (JWT) tokens expire a TTL after the login however much they are used: a node's next
    call past it is refused as unauthenticated, and the node logs in again (not a refusal, no endpoint
    change), its writes and watch going on."""
    e = etcd(jwt_ttl="2s")
    e.add_user("synmp", "s3cret", PREFIX)
    e.enable_auth()
    password = tmp_path / "password"
    password.write_text("s3cret")
    (n1, n2), (w1, w2) = start(e, make_node, 2, "--etcd-user", "synmp", "--etcd-password-file", str(password))
    w1.call("register", "s", "a")
    wait_for(lambda: len(table_of(n2)) == 1, timeout=TIMEOUT, what="before the tokens expire")
    time.sleep(2.5)  # past the tokens' TTL
    w2.call("register", "s", "b")
    want = sorted([("a", Pid("n1", w1.pid), None), ("b", Pid("n2", w2.pid), None)], key=repr)
    for node in (n1, n2):
        wait_for(lambda: table_of(node) == want, timeout=TIMEOUT, what=f"after the tokens expired, on {node.name}")
    st = _status(n2)
    assert st["logins"] >= 2 and st["etcd_refused"] == 0, st


def _relay_address(e, node: str) -> tuple[str, int]:
    host, port, _, _ = msgpack.unpackb(e.get(f"{PREFIX}n/{node.encode().hex()}"), raw=False)
    return host, port


def _send_recorded(host: str, port: int, recording: bytes | None, secret: bytes = b"", body: bytes = b"") -> bytes:
    """One relay connection: the recording sent as it is, or a new request (its bytes returned)."""
    with socket.create_connection((host, port), timeout=5) as s:
        nonce_s = b""
        while len(nonce_s) < _tcp.NONCE:
            nonce_s += s.recv(_tcp.NONCE - len(nonce_s))
        if recording is None:
            nonce_c = os.urandom(_tcp.NONCE)
            recording = nonce_c + _wire.frame(secret, _tcp._key(b"C", nonce_s, nonce_c), body)
        s.sendall(recording)
        s.shutdown(socket.SHUT_WR)
        s.recv(1)  # the server's close: it has handled (or refused) the request
    return recording


def _next_line(p: subprocess.Popen, timeout: float = TIMEOUT) -> str:
    ready, _, _ = select.select([p.stdout], [], [], timeout)
    assert ready, "the member printed nothing"
    return p.stdout.readline().strip()


def _status(n) -> dict:
    return json.loads(n.cli("--json", "status").stdout)["cluster"]


def _forged(n) -> int:
    return _status(n)["forged"]


def test_a_recorded_relay_message_is_not_delivered_again_not_even_after_a_restart(etcd, make_node):
    """In the etcd mode messages go node to node over the relay's TCP exchange only, where the receiver
    picks a fresh nonce per connection that the request's MAC covers: a recorded request is refused by
    the same manager and by its next life alike (what the UDP mode needs incarnations for)."""
    e = etcd()
    (n1, n2), _ = start(e, make_node, 2)
    member = n2.python(MEMBER, "n2")
    assert member.stdout.readline().strip() == "ready", member.stderr.read()
    secret = e.get(f"{PREFIX}relay-key")
    target = ["pid", member.pid, _procinfo.start_time(member.pid)]

    def body(message: str) -> bytes:
        data = mailbox._envelope(mailbox._MSG, codec.encode_message(message))
        return msgpack.packb(["msg", target, data])
    recording = _send_recorded(*_relay_address(e, "n2"), None, secret, body("once"))
    assert _next_line(member) == "'once'"
    before = _forged(n2)
    _send_recorded(*_relay_address(e, "n2"), recording)
    wait_for(lambda: _forged(n2) == before + 1, timeout=TIMEOUT, what="the replay refused")
    n2.kill_manager()
    n2.daemon("--etcd", e.endpoints, "--etcd-prefix", PREFIX, "--node-timeout-ms", "1000")
    # attached: its node key (the relay's new address) is in etcd
    wait_for(lambda: _status(n2)["attached"], timeout=TIMEOUT, what="n2's next life in etcd")
    _send_recorded(*_relay_address(e, "n2"), recording)
    wait_for(lambda: _forged(n2) == 1, timeout=TIMEOUT, what="the replay refused by the new manager")
    # the member still receives: had a replay been delivered, it would be the next line
    _send_recorded(*_relay_address(e, "n2"), None, secret, body("after"))
    assert _next_line(member) == "'after'"


def test_what_is_a_refusal_and_what_is_not():
    """A refusal ends the start; a failure a retry may mend (a time-out, which Python 3.11 makes an
    OSError) must not, nor an expired login token."""
    o = EtcdOptions(endpoints=["https://127.0.0.1:1"], ca="/ca.pem")
    assert _refusal(asyncio.TimeoutError(), o, o.endpoints[0]) is None
    assert _refusal(ConnectionResetError(104, "reset"), o, o.endpoints[0]) is None
    gone = _refusal(FileNotFoundError(2, "No such file or directory", "/ca.pem"), o, o.endpoints[0])
    assert gone == "etcd at https://127.0.0.1:1: [Errno 2] No such file or directory: '/ca.pem'"


def test_the_tls_walk_through_of_operations_md_runs_as_written(make_node, tmp_path):
    """docs/operations.md's one-machine etcd with TLS, client certificates and a user, as written:
    openssl, etcd, etcdctl, two daemons, a name registered on one seen on the other."""
    require_etcd()
    require_openssl()
    require_tool("etcdctl", "etcd-client")
    with open(os.path.join(ROOT, "docs", "operations.md"), encoding="utf-8") as f:
        doc = f.read()
    script = doc.split("<!-- run by tests/test_etcd_security.py -->", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    a, b = make_node("a"), make_node("b")  # their runtime dirs stand in for /tmp/node-a and /tmp/node-b
    client, peer = _free_ports(2)
    script = (script.replace("/tmp/etcd-tls", str(tmp_path)).replace("/tmp/node-a", a.rdir)
              .replace("/tmp/node-b", b.rdir).replace(":2379", f":{client}").replace(":2380", f":{peer}"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYN_MP_", "ETCDCTL_"))}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")  # syn-mp and python3
    out = tmp_path / "out"
    try:
        with open(out, "w") as f:  # a file, not a pipe: whatever the script leaves running can't hold it
            r = subprocess.run(["bash", "-e", "-c", script], env=env, stdout=f, stderr=subprocess.STDOUT, timeout=60)
    finally:
        for p in _processes_of(str(tmp_path), a.rdir, b.rdir):  # a failed run's etcd, daemons, sleeper: by pid
            p.send_signal(signal.SIGKILL)
    text = out.read_text()
    assert r.returncode == 0, text
    assert re.search(r"^hello\s+a\s+\d+", text, re.M), text
    wait_for(lambda: a.manager_pid() is None and b.manager_pid() is None, what="both managers stopped")
