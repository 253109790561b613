"""Security (issue #7, part 3): another local user gets nothing, the network gets nothing without the
secret, and the secret leaks nowhere.

The other user is `nobody` (uid/gid 65534): the test forks a child that drops to it (setgroups,
setgid, setuid) and reports what each attempt gave. Checked:

- the runtime dir is created 0700 by the library (even under umask 0), its sockets and files are
  0600; `nobody` can't list it, read state.json, connect to ctl.sock / wake.sock / relay.sock, or
  open / map the node's shm segments, and with the dir opened up (0711) the files still refuse;
- a runtime dir or a segment that another user created first (squatting) is refused, never used;
- `nobody` can't reach a multi_call's reply socket (it lives in the private dir); the same forgery
  from our own user is accepted. Mailboxes are tried in tests/test_reliability_local_user.py;
- the cluster's TCP port does not buffer an oversized frame from someone without the secret, and
  counts it as forged;
- the secret is in no log, process title or environment.
"""
from __future__ import annotations

import errno
import json
import os
import secrets
import select
import shutil
import socket
import stat
import struct
import subprocess
import sys
import time
import traceback
from typing import Any, Callable

import posix_ipc
import psutil
import pytest

import syn_mp
from syn_mp import _config, _wire, mailbox
from syn_mp._procinfo import start_time
from syn_mp._table import REG, Table, TableError, iter_segments
from syn_mp.codec import encode_message, encode_name

from conftest import ROOT, NodeHandle, wait_for

NOBODY = 65534
S = "s"
SECRET = b"security-secret-0123456789abcdef"

# skipped without root, except under CI=true, where these must run: they fail there instead
pytestmark = pytest.mark.skipif(os.geteuid() != 0 and os.environ.get("CI") != "true",
                                reason="needs root to act as a second user")


# ------------------------------------------------------------------ acting as another user

def as_nobody(fn: Callable[[], Any], timeout: float = 20.0) -> Any:
    """fn() in a forked child running as uid/gid 65534 with no supplementary groups; its JSON result."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            assert os.geteuid() == NOBODY and os.getegid() == NOBODY
            out: Any = fn()
        except BaseException:
            out = {"__error__": traceback.format_exc()}
        try:
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    buf = b""
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            assert left > 0, "the child acting as nobody did not finish"
            if select.select([r], [], [], left)[0]:
                chunk = os.read(r, 65536)
                if not chunk:
                    break
                buf += chunk
    finally:
        os.close(r)
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
    out = json.loads(buf)
    if isinstance(out, dict) and "__error__" in out:
        raise AssertionError("child as nobody failed:\n" + out["__error__"])
    return out


def attempt(f: Callable[[], Any]) -> str:
    """'ok', or the errno name (or exception class) it failed with."""
    try:
        f()
        return "ok"
    except posix_ipc.PermissionsError:
        return "EACCES"
    except posix_ipc.ExistentialError:
        return "ENOENT"
    except TableError as e:  # the library's refusal of a segment it can't open
        return "EACCES" if "permission denied" in str(e) else "TableError"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno)) if e.errno else type(e).__name__
    except Exception as e:
        return type(e).__name__


def _connect_stream(path: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        s.connect(path)
        s.sendall(b'{"op": "status"}\n')
        s.recv(100)


def _send_dgram(path: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(b"w", path)


def _open_shm(name: str, flags: int) -> None:
    fd = os.open("/dev/shm" + name, flags)
    os.close(fd)


def _map_shm(name: str) -> None:
    shm = posix_ipc.SharedMemory(name)
    shm.close_fd()


def probe_node(paths: _config.Paths, segments: list[str]) -> dict[str, str]:
    """What nobody gets from every door of a node (run in the child)."""
    out = {
        "list dir": attempt(lambda: os.listdir(paths.dir)),
        "read state.json": attempt(lambda: open(paths.state, "rb").read()),
        "read manager.log": attempt(lambda: open(paths.log, "rb").read()),
        "connect ctl.sock": attempt(lambda: _connect_stream(paths.ctl)),
        "send wake.sock": attempt(lambda: _send_dgram(paths.wake)),
        "send relay.sock": attempt(lambda: _send_dgram(paths.relay)),
        "create in dir": attempt(lambda: open(os.path.join(paths.dir, "planted"), "w").close()),
    }
    for seg in segments:
        out[f"read {seg}"] = attempt(lambda: _open_shm(seg, os.O_RDONLY))
        out[f"write {seg}"] = attempt(lambda: _open_shm(seg, os.O_RDWR))
        out[f"shm_open {seg}"] = attempt(lambda: _map_shm(seg))
        out[f"Table.attach {seg}"] = attempt(lambda: Table.attach(seg))
    return out


# ------------------------------------------------------------------ fixtures

@pytest.fixture
def private_node(make_node) -> NodeHandle:
    """A node whose runtime dir the library itself creates, under umask 0."""
    n = make_node("sec")
    os.rmdir(n.rdir)  # (make_node made it; the library must make it, and make it private)
    n.use()
    old = os.umask(0)
    try:
        syn_mp.add_node_to_scopes([S, "other"])
    finally:
        os.umask(old)
    return n


# ------------------------------------------------------------------ the node's files

def test_runtime_dir_sockets_and_segments_are_private(private_node: NodeHandle) -> None:
    n = private_node
    st = os.stat(n.rdir)
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.getuid(), oct(st.st_mode)
    for p in (n.paths.ctl, n.paths.wake, n.paths.relay, n.paths.manager_lock, n.paths.start_lock, n.paths.log,
              n.paths.state):
        mode = stat.S_IMODE(os.stat(p).st_mode)
        assert mode & 0o077 == 0, f"{p} is mode {oct(mode)}"
    segs = n.segments()
    assert len(segs) == 2
    for seg in segs:
        st = os.stat("/dev/shm" + seg)
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.getuid(), (seg, oct(st.st_mode))
    got = as_nobody(lambda: probe_node(n.paths, segs))
    assert all(v == "EACCES" for v in got.values()), json.dumps(got)
    # defence in depth: with the dir opened for traversal, every file still refuses on its own mode
    os.chmod(n.rdir, 0o711)
    try:
        got = as_nobody(lambda: probe_node(n.paths, segs))
    finally:
        os.chmod(n.rdir, 0o700)
    assert all(v == "EACCES" for v in got.values()), json.dumps(got)
    assert n.manager_pid() and not os.path.exists(os.path.join(n.rdir, "planted"))


def test_a_runtime_dir_squatted_by_another_user_is_refused(make_node) -> None:
    rdir = f"/tmp/synmp-squat-{secrets.token_hex(4)}"
    seg_prefix = _config.segment_name(rdir, "")
    try:
        def squat() -> str:
            os.mkdir(rdir)
            os.chmod(rdir, 0o777)
            return "ok"
        assert as_nobody(squat) == "ok"
        env = dict(os.environ, SYN_MP_RUNTIME_DIR=rdir, SYN_MP_NODE="victim")
        r = subprocess.run([sys.executable, "-m", "syn_mp", "--runtime-dir", rdir, "daemon"], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 2, f"the daemon ran in a dir another user owns: {r.stderr}"
        assert r.stderr.startswith("syn-mp: runtime dir") and r.stderr.count("\n") == 1, r.stderr
        code = ("import syn_mp\n"
                "try:\n    syn_mp.add_node_to_scopes(['s'])\n    print('started')\n"
                "except syn_mp.ManagerUnavailableError as e:\n    print('refused:', e)\n")
        r = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
        assert r.stdout.startswith("refused:"), (r.stdout, r.stderr)
        assert set(os.listdir(rdir)) <= {"manager.log"} and not list(iter_segments(seg_prefix))
    finally:
        for seg in iter_segments(seg_prefix):
            posix_ipc.unlink_shared_memory(seg)
        shutil.rmtree(rdir, ignore_errors=True)


def test_a_segment_squatted_by_another_user_is_refused(private_node: NodeHandle) -> None:
    """Segment names are predictable (a hash of the runtime dir): another user can create one first.
    The node must refuse it rather than keep its registry in memory that user can read and write."""
    name = _config.segment_name(private_node.rdir, "squat")

    def squat() -> str:
        t = Table.create(name, "evil", 64, 1 << 20, 1 << 16, mode=0o666)
        t.put(REG, b"\xa4fake", 0, 1, 1, 1, b"\xc0")
        return t.name
    assert as_nobody(squat) == name
    try:
        assert os.stat("/dev/shm" + name).st_uid == NOBODY
        with pytest.raises(syn_mp.ManagerUnavailableError, match="owned by"):
            syn_mp.add_node_to_scopes(["squat"])
        with pytest.raises(TableError, match="owned by"):
            Table.attach(name)
        assert "squat" not in syn_mp.node_scopes()
        with pytest.raises(syn_mp.InvalidScopeError, match="owned by"):
            syn_mp.register("squat", "mine", pid=os.getpid())
        # what the squatter sees: nothing of ours
        seen = as_nobody(lambda: Table.attach(name).stats()["count"])
        assert seen == 1
    finally:
        posix_ipc.unlink_shared_memory(name)


def _service_node(rdir: str) -> str:
    """As nobody: a node of its own in rdir (which it owns), one scope with one name; the segment."""
    def make() -> str:
        t = Table.create(_config.segment_name(rdir, "s"), "svc", 64, 1 << 20, 1 << 16)
        t.put(REG, encode_name("job"), 0, 1, start_time(1), 1, encode_message("meta"))
        return t.name
    return as_nobody(make)


@pytest.mark.parametrize("parent", ["root's", "/tmp"])
def test_root_inspects_a_service_users_node_only_in_a_dir_root_handed_out(parent: str) -> None:
    """An admin (root) may read a service user's node whose runtime dir root made (as systemd's
    RuntimeDirectory= does), never one in /tmp, which that user could have squatted."""
    base = f"/tmp/synmp-run-{secrets.token_hex(4)}"
    rdir = os.path.join(base, "node") if parent == "root's" else base
    seg = None
    try:
        if parent == "root's":
            os.mkdir(base, 0o755)
            os.mkdir(rdir, 0o700)
            os.chown(rdir, NOBODY, NOBODY)
        else:
            assert as_nobody(lambda: os.mkdir(rdir, 0o700)) is None
        seg = _service_node(rdir)
        r = subprocess.run([sys.executable, "-m", "syn_mp", "--runtime-dir", rdir, "--json", "registry", "s"],
                           cwd=ROOT, capture_output=True, text=True, timeout=30, check=False)
        if parent == "root's":
            assert r.returncode == 0, r.stderr
            assert [e["name"] for e in json.loads(r.stdout)] == ["job"]
        else:
            assert r.returncode == 2 and "not a private directory of uid 0 (owner uid 65534" in r.stderr \
                and r.stderr.count("\n") == 1, r.stderr
    finally:
        if seg:
            posix_ipc.unlink_shared_memory(seg)
        shutil.rmtree(base, ignore_errors=True)


# ------------------------------------------------------------------ mailboxes

def _read_proc_net_unix() -> list[str]:
    with open("/proc/net/unix") as f:
        return [line.split()[-1] for line in f.readlines()[1:] if len(line.split()) >= 8]


def _forge_replies(rdir: str, answer: str, timeout: float = 10.0) -> dict[str, Any]:
    """Wait for a multi_call's reply socket (rp.<pid>.<start>.<ref>) to appear in /proc/net/unix; send
    a forged reply to it in the node's runtime dir (public: ctl.sock's path is listed too)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        names = [os.path.basename(x) for x in _read_proc_net_unix() if "/rp." in x]
        if names:
            ref = names[0].rsplit(".", 1)[1]
            data = mailbox._envelope(mailbox._REPLY, ref.encode(), b"0", encode_message(answer))
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                try:
                    s.sendto(data, os.path.join(rdir, names[0]))
                except OSError as e:
                    return {"sent": False, "error": errno.errorcode[e.errno]}
            return {"sent": True}
        time.sleep(0.002)
    return {"sent": False}


@pytest.mark.parametrize("forger", ["nobody", "our own user"])
def test_a_forged_multi_call_reply(private_node: NodeHandle, forger: str) -> None:
    n = private_node
    silent = n.worker()
    silent.call("join", S, "g", meta="silent")  # a member that never answers
    caller = n.worker()
    r, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the forger, started before the call so it is waiting for the reply socket
        try:
            os.close(r)
            if forger == "nobody":
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            os.write(wfd, json.dumps(_forge_replies(n.rdir, "forged")).encode())
        finally:
            os._exit(0)
    os.close(wfd)
    try:
        replies, bad = caller.call("multi_call", S, "g", "status?", timeout=2)
    finally:
        got = json.loads(os.read(r, 1000) or b"{}")
        os.close(r)
        os.waitpid(pid, 0)
    # another user can't even reach the reply socket (it is in the private dir); our own user can
    assert got == ({"sent": False, "error": "EACCES"} if forger == "nobody" else {"sent": True}), got
    member = (syn_mp.Pid(n.name, silent.pid), "silent")
    if forger == "nobody":
        assert replies == [] and bad == [member], "a reply forged by another user was accepted"
    else:
        assert replies == [(member, "forged")] and bad == []


# ------------------------------------------------------------------ the cluster

def _cluster_daemon(n: NodeHandle, port: int, secret_file: str) -> subprocess.Popen:
    log = open(os.path.join(n.rdir, "daemon.log"), "ab")
    p = subprocess.Popen([sys.executable, "-m", "syn_mp", "--runtime-dir", n.rdir, "daemon", "--node", "127.0.0.2",
                          "--interface", "127.0.0.2", "--peers", f"127.0.0.2:{port}", "--secret-file", secret_file,
                          "--heartbeat-ms", "50", "--node-timeout-ms", "400", "--log-level", "DEBUG"],
                         cwd=ROOT, stdout=log, stderr=log, env=n.env)
    log.close()
    n.procs.append(p)
    wait_for(lambda: os.path.exists(n.paths.ctl) or p.poll() is not None, what="daemon up")
    assert p.poll() is None, open(os.path.join(n.rdir, "daemon.log")).read()
    return p


def _status(n: NodeHandle) -> dict:
    return json.loads(n.cli("--json", "status").stdout)["cluster"]


def test_oversized_tcp_frames_without_the_secret_are_not_buffered(make_node, tmp_path) -> None:
    """The cluster's TCP port reads a length, a body and a MAC: someone without the secret must not
    make it hold up to MAX_FRAME (64 MiB) per connection before the MAC is checked."""
    sf = tmp_path / "secret"
    sf.write_bytes(SECRET)
    sf.chmod(0o600)
    port = 47831
    n = make_node("127.0.0.2")
    p = _cluster_daemon(n, port, str(sf))
    rss0 = psutil.Process(p.pid).memory_info().rss
    forged0 = _status(n)["forged"]
    conns, streamed, peak = [], [], rss0
    try:
        for _ in range(4):
            c = socket.create_connection(("127.0.0.2", port), timeout=5)
            assert len(c.recv(16)) == 16  # the server's nonce
            c.sendall(os.urandom(16) + struct.pack("!I", _wire.MAX_FRAME))  # our nonce, a 64 MiB body announced
            conns.append(c)
        chunk = b"\0" * (1 << 20)
        for c in conns:
            sent = 0
            try:
                c.settimeout(2)
                while sent < 60 << 20:
                    c.sendall(chunk)
                    sent += len(chunk)
                    peak = max(peak, psutil.Process(p.pid).memory_info().rss)
            except OSError:
                pass  # closed on us: what should happen
            streamed.append(sent >> 20)
        peak = max(peak, psutil.Process(p.pid).memory_info().rss)
        wait_for(lambda: _status(n)["forged"] >= forged0 + 4, what="oversized frames counted as forged")
    finally:
        for c in conns:
            c.close()
    assert p.poll() is None
    growth = peak - rss0
    assert growth < 50 << 20, f"unauthenticated frames buffered: RSS +{growth >> 20} MB ({streamed} MiB sent)"
    assert max(streamed) < 16, f"the server kept reading an oversized frame: {streamed} MiB"
    # an authentic peer still gets served: a snapshot request with the secret
    with socket.create_connection(("127.0.0.2", port), timeout=5) as c:
        nonce_s, nonce_c = c.recv(16), os.urandom(16)
        c.sendall(nonce_c + _wire.frame(SECRET, b"C" + nonce_s + nonce_c, b"\x92\xa4snap\xa1s"))
        (size,) = struct.unpack("!I", c.recv(4))
        assert size < 1 << 20
    print(f"\n4 connections announcing 64 MiB frames: server closed after {streamed} MiB each; "
          f"daemon RSS {rss0 >> 20} -> peak {peak >> 20} MB")


def test_the_secret_is_in_no_log_title_or_environment(make_node, tmp_path) -> None:
    sf = tmp_path / "secret"
    sf.write_bytes(SECRET)
    sf.chmod(0o600)
    port = 47832
    n = make_node("127.0.0.2")
    p = _cluster_daemon(n, port, str(sf))
    # give it things to log: forged, malformed-authentic, TCP garbage
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(_wire.seal(SECRET, "mallory", 1, 1, b"\xc1not msgpack"), ("127.0.0.2", port))
    s.sendto(_wire.seal(b"x" * 32, "mallory", 1, 2, b""), ("127.0.0.2", port))
    s.close()
    with socket.create_connection(("127.0.0.2", port), timeout=5) as c:
        c.recv(16)
        c.sendall(b"\x00\x00\x00\x05hello" + b"\x00" * 32)
    wait_for(lambda: _status(n)["forged"] >= 2 and _status(n)["malformed"] >= 1, what="counted")
    status = n.cli("--json", "status").stdout
    n.cli("stop")
    p.wait(timeout=10)
    for what, data in (("status", status.encode()),
                       ("daemon.log", open(os.path.join(n.rdir, "daemon.log"), "rb").read())):
        assert SECRET not in data and SECRET.hex().encode() not in data, what
    # and while it runs: its command line, title and environment
    p = _cluster_daemon(n, port, str(sf))
    proc = psutil.Process(p.pid)
    for what, data in (("cmdline", open(f"/proc/{p.pid}/cmdline", "rb").read()),
                       ("comm", open(f"/proc/{p.pid}/comm", "rb").read()),
                       ("environ", open(f"/proc/{p.pid}/environ", "rb").read()),
                       ("title", " ".join(proc.cmdline()).encode())):
        assert SECRET not in data, what
