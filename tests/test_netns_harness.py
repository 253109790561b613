"""The network-namespace harness itself (tests/netns.py): unicast and multicast between hosts, partitions,
and a teardown that leaves nothing behind. Tiny inline programs stand in for the daemon."""
from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time

import pytest

from syn_mp import _config

from conftest import pid_alive, wait_for
from netns import GROUP, Cluster, Host, list_namespaces, require_netns

MPORT = 47701  # the harness's own multicast port (the daemons use 47700)
UPORT = 47702

# prints "ready <pid>", then one line "<payload> <source address> <ttl>" per datagram
RECEIVER = r"""
import os, socket, struct, sys
mode, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IP, getattr(socket, "IP_RECVTTL", 12), 1)
if mode == "mcast":
    s.bind((addr, port))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(addr) + socket.inet_aton(sys.argv[4]))
else:
    s.bind((addr, port))
print("ready", os.getpid(), flush=True)
while True:
    data, anc, _, src = s.recvmsg(65535, socket.CMSG_SPACE(4))
    ttl = [struct.unpack("i", d[:4])[0] for lvl, typ, d in anc if lvl == socket.IPPROTO_IP and typ == socket.IP_TTL]
    print(data.decode(), src[0], ttl[0] if ttl else -1, flush=True)
"""

# reads "<dest> <port> <payload>" lines on stdin, sends each from argv[1] (multicast TTL 1, IF argv[1])
SENDER = r"""
import os, socket, sys
me = sys.argv[1]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(me))
s.bind((me, 0))
print("ready", os.getpid(), flush=True)
for line in sys.stdin:
    dest, port, payload = line.split()
    try:
        s.sendto(payload.encode(), (dest, int(port)))
        print("sent", payload, flush=True)
    except OSError as e:
        print("err", payload, e.errno, flush=True)
"""


class Lines:
    """Lines from a process's stdout, each read with a bounded wait."""

    def __init__(self, proc: subprocess.Popen) -> None:
        assert proc.stdout
        self.proc = proc
        self.fd = proc.stdout.fileno()
        self.buf = b""

    def get(self, timeout: float) -> str | None:
        """The next line, or None if none comes within timeout."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if select.select([self.fd], [], [], left)[0]:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                    raise AssertionError(f"process {self.proc.pid} ended: {err}")
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def expect(self, prefix: str, timeout: float = 5.0) -> list[str]:
        """Read lines until one starts with prefix; its fields. Fails after timeout."""
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            line = self.get(max(0.0, deadline - time.monotonic()))
            if line is None:
                raise AssertionError(f"no line {prefix!r} from {self.proc.pid} within {timeout}s; saw {seen}")
            if line.startswith(prefix):
                return line.split()
            seen.append(line)

    def quiet(self, timeout: float) -> list[str]:
        """Every line that arrives within timeout (the test wants none)."""
        deadline = time.monotonic() + timeout
        lines = []
        while (left := deadline - time.monotonic()) > 0:
            line = self.get(left)
            if line is None:
                break
            lines.append(line)
        return lines


def start(host: Host, code: str, *args: str) -> Lines:
    p = host.python(code, *args, text=False)
    out = Lines(p)
    ready = out.expect("ready", timeout=10)
    assert int(ready[1]) == p.pid, "ip netns exec should exec the program: same pid"
    return out


def receiver(host: Host, mode: str = "mcast", port: int = MPORT) -> Lines:
    if mode == "mcast":
        return start(host, RECEIVER, "mcast", GROUP, str(port), host.addr)
    return start(host, RECEIVER, "ucast", host.addr, str(port))


class Sender:
    def __init__(self, host: Host) -> None:
        self.out = start(host, SENDER, host.addr)
        self.proc = self.out.proc

    def send(self, dest: str, port: int, payload: str) -> None:
        assert self.proc.stdin
        self.proc.stdin.write(f"{dest} {port} {payload}\n".encode())
        self.proc.stdin.flush()
        assert self.out.expect("sent", timeout=5)[1] == payload

    def mcast(self, payload: str) -> None:
        self.send(GROUP, MPORT, payload)


def test_unicast_between_hosts(cluster):
    c = cluster(2)
    assert (c.h1.addr, c.h2.addr) == ("10.77.0.11", "10.77.0.12")
    rx = receiver(c.h2, "ucast", UPORT)
    tx = Sender(c.h1)
    tx.send(c.h2.addr, UPORT, "hello")
    assert rx.expect("hello") == ["hello", c.h1.addr, "64"]
    # and the other way round
    rx1 = receiver(c.h1, "ucast", UPORT)
    Sender(c.h2).send(c.h1.addr, UPORT, "back")
    assert rx1.expect("back")[:2] == ["back", c.h2.addr]


def test_multicast_reaches_every_other_host_with_ttl_1(cluster):
    c = cluster(3)
    rx2, rx3 = receiver(c.h2), receiver(c.h3)
    tx = Sender(c.h1)
    tx.mcast("m1")
    assert rx2.expect("m1") == ["m1", c.h1.addr, "1"]
    assert rx3.expect("m1") == ["m1", c.h1.addr, "1"]


def test_link_down_partitions_a_host_and_link_up_heals_it(cluster):
    c = cluster(3)
    rx2, rx3 = receiver(c.h2), receiver(c.h3)
    tx = Sender(c.h1)
    tx.mcast("before")
    rx2.expect("before")
    rx3.expect("before")

    c.h2.link_down()
    tx.mcast("during")
    rx3.expect("during")
    assert rx2.quiet(0.5) == []

    c.h2.link_up()
    k = 0

    def h2_hears() -> bool:
        nonlocal k
        k += 1
        tx.mcast(f"after{k}")
        line = rx2.get(0.1)
        return bool(line and line.startswith("after"))
    wait_for(h2_hears, timeout=5, interval=0, what="h2 to hear multicast after link_up")
    rx3.expect(f"after{k}")


def test_partition_into_groups_and_heal(cluster):
    c = cluster(3)
    rx2, rx3 = receiver(c.h2), receiver(c.h3)
    tx = Sender(c.h1)
    c.partition([c.h1, c.h2], [c.h3])
    tx.mcast("split")
    rx2.expect("split")
    assert rx3.quiet(0.5) == []
    c.heal()
    k = 0

    def h3_hears() -> bool:
        nonlocal k
        k += 1
        tx.mcast(f"healed{k}")
        line = rx3.get(0.1)
        return bool(line and line.startswith("healed"))
    wait_for(h3_hears, timeout=5, interval=0, what="h3 to hear multicast after heal")


def test_programs_run_inside_the_namespace(cluster):
    c = cluster(1)
    h = c.h1
    w = h.worker()  # NodeHandle-style: asserts the worker's own getpid() is the Popen pid
    assert os.stat(f"/proc/{w.pid}/ns/net").st_ino == os.stat(f"/run/netns/{h.ns}").st_ino
    assert os.stat(f"/proc/{w.pid}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino
    assert w.pid in h.pids()
    env = open(f"/proc/{w.pid}/environ", "rb").read().split(b"\0")
    assert f"SYN_MP_NODE={h.name}".encode() in env
    assert f"SYN_MP_RUNTIME_DIR={h.node.rdir}".encode() in env
    out = h.run(["ip", "-o", "-4", "addr", "show", "dev", "eth0"], stdout=subprocess.PIPE, text=True)
    assert f"inet {h.addr}/24" in out.communicate(timeout=10)[0]
    st = os.stat(c.secret_file)
    assert st.st_mode & 0o777 == 0o600
    secret = open(c.secret_file).read().strip()
    assert len(bytes.fromhex(secret)) == 32
    wrong = c.write_wrong_secret()
    assert os.stat(wrong).st_mode & 0o777 == 0o600 and open(wrong).read().strip() != secret
    h.stop()
    assert w.proc.poll() == -signal.SIGKILL


def test_close_leaves_nothing_behind():
    require_netns()
    c = Cluster(2)
    try:
        names = c.namespaces()
        assert len(names) == 3 and set(names) <= set(list_namespaces())
        sleeper = c.h1.run([sys.executable, "-c", "import signal; signal.pause()"])  # until killed
        # a process the cluster did not start itself, only its namespace holds it
        stray = subprocess.Popen(["ip", "netns", "exec", c.h2.ns, "sleep", "60"])
        wait_for(lambda: stray.pid in c.h2.pids(), timeout=5, what="stray process in h2")
        seg = _segment(c.h1.node.rdir)
        rdirs, tmpdir = [h.node.rdir for h in c], c.tmpdir
        assert all(d.startswith(tmpdir + "/") for d in rdirs)
    finally:
        c.close()
    assert not set(names) & set(list_namespaces())
    assert not [ns for ns in list_namespaces() if c.token in ns]
    assert sleeper.poll() == -signal.SIGKILL
    assert stray.wait(timeout=5) == -signal.SIGKILL
    assert not os.path.exists(tmpdir) and not any(os.path.exists(d) for d in rdirs)
    assert not os.path.exists("/dev/shm" + seg)
    c.close()  # idempotent


def _segment(rdir: str) -> str:
    """A shm segment as a node's manager would make it for scope "s" of rdir."""
    import posix_ipc
    name = _config.segment_name(rdir, "s")
    posix_ipc.SharedMemory(name, posix_ipc.O_CREX, size=4096).close_fd()
    assert os.path.exists("/dev/shm" + name)
    return name


def test_stale_leftovers_of_dead_runs_are_removed():
    require_netns()
    p = subprocess.Popen(["true"])
    p.wait()
    if pid_alive(p.pid):
        pytest.skip("the dead pid was reused already")
    token = f"{p.pid}x0"
    stale = f"synmp-h1-{token}"
    stale_dir = f"/tmp/synmp-net-{token}"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    leftover = seg = None
    try:
        os.makedirs(f"{stale_dir}/h1", mode=0o700)
        seg = _segment(f"{stale_dir}/h1")
        leftover = subprocess.Popen(["ip", "netns", "exec", stale, "sleep", "60"])
        wait_for(lambda: os.path.exists(f"/proc/{leftover.pid}/ns/net") and
                 os.stat(f"/proc/{leftover.pid}/ns/net").st_ino == os.stat(f"/run/netns/{stale}").st_ino,
                 timeout=5, what="leftover process in the stale namespace")
        with Cluster(1) as c:
            assert stale not in list_namespaces()
            assert leftover.wait(timeout=5) == -signal.SIGKILL
            assert not os.path.exists(stale_dir) and not os.path.exists("/dev/shm" + seg)
            assert set(c.namespaces()) <= set(list_namespaces())  # ours are not stale
            assert os.path.isdir(c.tmpdir)
    finally:
        if leftover and leftover.poll() is None:
            leftover.kill()
            leftover.wait()
        if stale in list_namespaces():
            subprocess.run(["ip", "netns", "del", stale])
        shutil.rmtree(stale_dir, ignore_errors=True)
        if seg and os.path.exists("/dev/shm" + seg):
            os.unlink("/dev/shm" + seg)
