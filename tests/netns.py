"""Several hosts on one machine: Linux network namespaces on one bridge (DESIGN.md, "Testing").

    # the `cluster` fixture is registered by conftest.py for every test module

    def test_x(cluster):
        c = cluster(3)                      # hosts c.h1, c.h2, c.h3 (also c.hosts[0..2], c["h1"])
        c.h1.daemon(); c.h2.daemon()        # syn-mp daemon --cluster 239.77.0.1:47700 inside each namespace
        w = c.h1.worker()                   # a conftest.Worker whose process lives in h1's namespace
        c.h2.link_down()                    # h2 is cut off (a partition); c.h2.link_up() heals it

Topology, per Cluster (token = "<creator pid>x<sequence>", unique per run and per cluster):
- "synmp-hub-<token>": a namespace holding bridge br0 (STP off, forward delay 0, multicast snooping
  off, so multicast floods to every port).
- "synmp-h<i>-<token>": one namespace per host, its eth0 = 10.77.0.<10+i>/24, lo up, and a route
  224.0.0.0/4 dev eth0. The veth pair is created straight between the hub and the host namespace
  (the hub end is "v<i>", a port of br0), so nothing ever appears in the machine's own namespace.
Teardown kills every process by pid (the ones started through a Host, then whatever is still inside
the namespaces, e.g. a manager a worker started on demand), deletes the namespaces (which destroys
the veths and the bridge), unlinks the hosts' shm segments and removes the cluster's temp dir
/tmp/synmp-net-<token> (secret files, and the hosts' runtime dirs <tmpdir>/h<i>), even when a test
fails. Before a cluster is made, what runs that were killed left (namespaces synmp-*-<token> and
dirs /tmp/synmp-net-<token> whose creating pid is dead) is removed the same way.
"""
from __future__ import annotations

import itertools
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from typing import Any, Callable, Iterator

import pytest

from syn_mp import _config
from syn_mp._table import iter_segments

from conftest import ROOT, NodeHandle, Worker, pid_alive, wait_for

PREFIX = "synmp-"
SUBNET = "10.77.0"
GROUP = "239.77.0.1"
PORT = 47700
HEARTBEAT_MS = 50
NODE_TIMEOUT_MS = 500
IP = shutil.which("ip") or "/usr/sbin/ip"
IPTABLES = shutil.which("iptables") or "/usr/sbin/iptables"

TMP = "/tmp"
_NS_RE = re.compile(r"^synmp-[a-z0-9]+-(\d+)x(\d+)$")
_DIR_RE = re.compile(r"^synmp-net-(\d+)x(\d+)$")
_seq = itertools.count()
_live_tokens: set[str] = set()  # tokens of this process's clusters that are still up
_unavailable: list[str | None] = []  # cached result of the probe


class NetnsError(RuntimeError):
    pass


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([IP, *args], capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: exit {r.returncode}: {r.stderr.strip()}")
    return r


def host_addr(i: int) -> str:
    """Address of host i (1-based): 10.77.0.<10+i>."""
    return f"{SUBNET}.{10 + i}"


def _new_token() -> str:
    return f"{os.getpid()}x{next(_seq)}"


def list_namespaces() -> list[str]:
    """Names in `ip netns list` (the "(id: N)" suffix dropped)."""
    r = _ip("netns", "list", check=False)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


def ns_pids(ns: str) -> list[int]:
    """Pids of the processes inside namespace ns."""
    r = _ip("netns", "pids", ns, check=False)
    return [int(x) for x in r.stdout.split() if x.isdigit()]


def _kill_pids(pids: list[int], timeout: float = 10.0) -> list[int]:
    """SIGKILL each pid and wait (bounded) until it is gone; the pids still alive after that."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    left = [p for p in pids if pid_alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.01)
        left = [p for p in left if pid_alive(p)]
    return left


def _creator_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid_alive(pid)


def _stale(pid_s: str, seq_s: str) -> bool:
    """Whether a token's creator is gone (or is this process, reused pid, and the token is not live)."""
    pid = int(pid_s)
    if pid == os.getpid():
        return f"{pid_s}x{seq_s}" not in _live_tokens
    return not _creator_alive(pid)


def unlink_segments(rdir: str) -> None:
    """Unlink the shm segments of the node whose runtime dir is rdir."""
    import posix_ipc
    for seg in iter_segments(_config.segment_name(rdir, "")):
        try:
            posix_ipc.unlink_shared_memory(seg)
        except posix_ipc.ExistentialError:
            pass


def cleanup_stale() -> list[str]:
    """Undo what runs that died without tearing down left: delete synmp-* namespaces whose creator is dead
    (after SIGKILLing the processes still inside them, by pid), unlink the shm segments of their hosts'
    runtime dirs and remove their temp dirs. Returns what it removed."""
    gone = []
    for ns in list_namespaces():
        m = _NS_RE.match(ns)
        if m and _stale(*m.groups()):
            _kill_pids(ns_pids(ns))
            if _ip("netns", "del", ns, check=False).returncode == 0:
                gone.append(ns)
    try:
        names = os.listdir(TMP)
    except OSError:
        names = []
    for name in names:
        m = _DIR_RE.match(name)
        if not (m and _stale(*m.groups())):
            continue
        d = os.path.join(TMP, name)
        for sub in os.listdir(d) if os.path.isdir(d) else []:
            if os.path.isdir(os.path.join(d, sub)):
                unlink_segments(os.path.join(d, sub))
        shutil.rmtree(d, ignore_errors=True)
        gone.append(d)
    return gone


def unavailable_reason() -> str | None:
    """Why this machine cannot run the namespace tests, or None. Probed once per process."""
    if _unavailable:
        return _unavailable[0]
    reason = _probe()
    _unavailable.append(reason)
    return reason


def _probe() -> str | None:
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not os.path.exists(IP):
        return "iproute2 (`ip`) is not installed"
    ns = f"{PREFIX}probe-{_new_token()}"
    try:
        r = _ip("netns", "add", ns, check=False)
        if r.returncode != 0:
            return f"cannot create a network namespace: {r.stderr.strip()}"
        for args in (("link", "add", "br0", "type", "bridge", "mcast_snooping", "0"),
                     ("link", "add", "v0", "type", "veth", "peer", "name", "v1"),
                     ("link", "set", "v0", "master", "br0")):
            r = _ip("-n", ns, *args, check=False)
            if r.returncode != 0:
                return f"`ip {' '.join(args)}` fails in a namespace: {r.stderr.strip()}"
        r = subprocess.run([IP, "netns", "exec", ns, sys.executable, "-c", "print(1)"], capture_output=True,
                           text=True, timeout=30)
        if r.returncode != 0 or r.stdout.strip() != "1":
            return f"`ip netns exec` does not run programs: {r.stderr.strip()}"
        return None
    except (OSError, subprocess.SubprocessError) as e:
        return f"network namespaces unusable: {e}"
    finally:
        _ip("netns", "del", ns, check=False)


def require_netns() -> None:
    """Skip the test when the machine can't do namespaces; under CI=true, fail it instead."""
    reason = unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but the network namespace tests cannot run: {reason}", pytrace=False)
    pytest.skip(f"network namespaces unavailable: {reason}")


def require_iptables() -> None:
    """Skip (fail under CI=true) when iptables is missing (./dev installs it)."""
    if os.path.exists(IPTABLES):
        return
    if os.environ.get("CI") == "true":
        pytest.fail("CI=true but iptables is not installed (./dev setup installs it)", pytrace=False)
    pytest.skip("iptables is not installed (./dev setup installs it)")


class HostNode(NodeHandle):
    """A conftest.NodeHandle whose programs (python, cli, daemon, worker) run inside a namespace."""

    def __init__(self, name: str, ns: str, rdir: str | None = None, **env: str) -> None:
        super().__init__(name, **env)
        if rdir:  # inside the cluster's temp dir, so a later run can clean up after a killed one
            os.rmdir(self.rdir)
            os.mkdir(rdir, 0o700)
            self.rdir = rdir
            self.extra_env.update(SYN_MP_RUNTIME_DIR=rdir)
            self.env.update(SYN_MP_RUNTIME_DIR=rdir)
            self.paths = _config.Paths(rdir)
        self.ns = ns
        self.prefix = [IP, "netns", "exec", ns]

    def popen(self, argv: list[str], **kw: Any) -> subprocess.Popen:
        """argv inside the namespace, with the node's env, cwd at the repo; recorded for teardown.
        `ip netns exec` execs argv, so the Popen's pid is the program's own pid."""
        kw.setdefault("env", self.env)
        kw.setdefault("cwd", ROOT)
        kw.setdefault("stdin", subprocess.DEVNULL)
        p = subprocess.Popen([*self.prefix, *argv], **kw)
        self.procs.append(p)
        return p

    def python(self, code: str, *args: str, stdout: int = subprocess.PIPE, **kw: Any) -> subprocess.Popen:
        import textwrap
        kw.setdefault("stderr", subprocess.PIPE)
        kw.setdefault("stdin", subprocess.PIPE)
        kw.setdefault("text", True)
        return self.popen([sys.executable, "-c", textwrap.dedent(code), *args], stdout=stdout, **kw)

    def cli(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run([*self.prefix, sys.executable, "-m", "syn_mp", "--runtime-dir", self.rdir, *args],
                              env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)

    def daemon(self, *args: str, wait: bool = True, timeout: float = 10.0) -> subprocess.Popen:
        """`syn-mp daemon --node NAME *args` in the namespace, output to rdir/daemon.log; with wait, until
        it is the node's manager and its control socket exists (fails with the log if it died)."""
        self.daemon_log = os.path.join(self.rdir, "daemon.log")
        with open(self.daemon_log, "ab") as log:  # a file, not a pipe nobody drains
            p = self.popen([sys.executable, "-m", "syn_mp", "--runtime-dir", self.rdir, "daemon", "--node",
                            self.name, *args], stdout=log, stderr=log)
        if wait:
            wait_for(lambda: self.manager_pid() == p.pid or p.poll() is not None, timeout=timeout,
                     what=f"daemon of {self.name} up")
            assert p.poll() is None, f"daemon of {self.name} exited {p.returncode}:\n{self.log()}"
            wait_for(lambda: os.path.exists(self.paths.ctl) or p.poll() is not None, timeout=timeout,
                     what=f"control socket of {self.name}")
            assert p.poll() is None, f"daemon of {self.name} exited {p.returncode}:\n{self.log()}"
        return p

    def log(self) -> str:
        try:
            with open(os.path.join(self.rdir, "daemon.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def worker(self) -> Worker:
        p = self.popen([sys.executable, os.path.join(ROOT, "tests", "worker.py")], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
        w = Worker(p)
        assert w.call("getpid") == p.pid, "ip netns exec did not exec the worker"
        return w

    def stop(self, sig: int = signal.SIGKILL, timeout: float = 10.0) -> None:
        """Signal every live process this node started (by pid), wait; SIGKILL what outlives timeout."""
        live = [p for p in self.procs if p.poll() is None]
        for p in live:
            try:
                p.send_signal(sig)
            except ProcessLookupError:
                pass
        for p in live:
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)


class Host:
    """One host: a namespace on the cluster's bridge, with its own node (runtime dir, manager, segments)."""

    def __init__(self, cluster: "Cluster", index: int) -> None:
        self.cluster = cluster
        self.index = index
        self.name = f"h{index}"
        self.ns = f"{PREFIX}{self.name}-{cluster.token}"
        self.addr = host_addr(index)
        self.veth = f"v{index}"  # the bridge-side end, in the hub namespace
        self.node: HostNode | None = None

    def __repr__(self) -> str:
        return f"<Host {self.name} {self.addr} ns={self.ns}>"

    def _setup(self) -> None:
        hub = self.cluster.hub_ns
        _ip("netns", "add", self.ns)
        self.cluster._namespaces.append(self.ns)
        _ip("-n", hub, "link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.ns)
        _ip("-n", hub, "link", "set", self.veth, "master", "br0", "up")
        _ip("-n", self.ns, "link", "set", "lo", "up")
        _ip("-n", self.ns, "addr", "add", f"{self.addr}/24", "dev", "eth0")
        _ip("-n", self.ns, "link", "set", "eth0", "up")
        _ip("-n", self.ns, "route", "add", "224.0.0.0/4", "dev", "eth0")
        self.node = HostNode(self.name, self.ns, rdir=os.path.join(self.cluster.tmpdir, self.name))

    # programs inside the namespace
    def run(self, argv: list[str], **popen_kwargs: Any) -> subprocess.Popen:
        """Popen of argv inside the namespace with the host's env (stdin defaults to /dev/null)."""
        assert self.node
        return self.node.popen(list(argv), **popen_kwargs)

    def python(self, code: str, *args: str, **kw: Any) -> subprocess.Popen:
        """`python -c code` inside the namespace; stdin/stdout/stderr pipes, text mode (as NodeHandle.python)."""
        assert self.node
        return self.node.python(code, *args, **kw)

    def cli(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """`python -m syn_mp --runtime-dir RDIR *args` inside the namespace."""
        assert self.node
        return self.node.cli(*args, timeout=timeout)

    def daemon(self, *extra_args: str, cluster: bool = True, secret_file: str | None = None,
               wait: bool = True, timeout: float = 10.0) -> subprocess.Popen:
        """The host's manager: `python -m syn_mp --runtime-dir RDIR daemon --node NAME --cluster
        239.77.0.1:47700 --interface ADDR --secret-file SECRET --heartbeat-ms 50 --node-timeout-ms 500
        *extra_args` in the namespace, logging to RDIR/daemon.log. cluster=False leaves out --cluster (for
        --peers); secret_file replaces the cluster's; wait=False returns at once (for a daemon that
        is expected to refuse to start)."""
        assert self.node
        args = []
        if cluster:
            args += ["--cluster", f"{self.cluster.group}:{self.cluster.port}"]
        args += ["--interface", self.addr, "--secret-file", secret_file or self.cluster.secret_file,
                 "--heartbeat-ms", str(HEARTBEAT_MS), "--node-timeout-ms", str(NODE_TIMEOUT_MS), *extra_args]
        return self.node.daemon(*args, wait=wait, timeout=timeout)

    def log(self) -> str:
        """The daemon's log so far (for assertion messages)."""
        assert self.node
        return self.node.log()

    def worker(self) -> Worker:
        """A conftest.Worker whose tests/worker.py process runs inside the namespace."""
        assert self.node
        return self.node.worker()

    # the link
    def link_down(self) -> None:
        """Cut the host off the bridge (its veth's bridge-side end down): eth0 loses carrier."""
        _ip("-n", self.cluster.hub_ns, "link", "set", self.veth, "down")

    def link_up(self) -> None:
        _ip("-n", self.cluster.hub_ns, "link", "set", self.veth, "up")

    def iptables(self, *args: str) -> None:
        """`iptables *args` inside the host's namespace (its own netfilter tables: nothing leaks to
        the machine), e.g. kernel packet loss: iptables("-A", "INPUT", "-m", "statistic", "--mode",
        "random", "--probability", "0.2", "-j", "DROP"). The namespace's deletion drops the rules."""
        require_iptables()
        self._exec(IPTABLES, *args)

    def tc(self, *args: str) -> None:
        """`tc *args` inside the namespace, e.g. tc("qdisc", "add", "dev", "eth0", "root", "tbf", ...)
        to slow the host's link (this kernel has tbf, not netem)."""
        self._exec(shutil.which("tc") or "/usr/sbin/tc", *args)

    def _exec(self, *argv: str) -> None:
        r = subprocess.run([IP, "netns", "exec", self.ns, *argv], capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise NetnsError(f"{' '.join(argv)} in {self.name}: exit {r.returncode}: {r.stderr.strip()}")

    # processes
    def stop(self, sig: int = signal.SIGKILL, timeout: float = 10.0) -> None:
        """Stop the processes started through this host, by pid (SIGKILL by default: a crash)."""
        if self.node:
            self.node.stop(sig, timeout)

    def pids(self) -> list[int]:
        """Pids of every process inside the namespace."""
        return ns_pids(self.ns)

    def close(self) -> list[str]:
        """Kill everything in the namespace, unlink the node's segments, remove its runtime dir."""
        errors: list[str] = []
        if self.node:
            try:
                self.node.stop(signal.SIGKILL)
            except Exception as e:  # keep tearing down
                errors.append(f"{self.name}: stop: {e!r}")
        left = _kill_pids(ns_pids(self.ns)) if self.ns in list_namespaces() else []
        if left:
            errors.append(f"{self.name}: pids {left} survived SIGKILL")
        if self.node:
            try:
                self.node.close()
            except Exception as e:
                errors.append(f"{self.name}: close node: {e!r}")
        return errors


class Cluster:
    """n hosts h1..hn on one bridge. Use as a context manager, or call close()."""

    def __init__(self, n: int = 3, *, group: str = GROUP, port: int = PORT) -> None:
        if not 1 <= n <= 200:
            raise ValueError("1 <= n <= 200 hosts")
        self.token = _new_token()
        self.hub_ns = f"{PREFIX}hub-{self.token}"
        self.group = group
        self.port = port
        self.hosts: list[Host] = []
        self._namespaces: list[str] = []
        self._bridges = ["br0"]
        self._closed = False
        self.tmpdir = os.path.join(TMP, f"{PREFIX}net-{self.token}")  # secret files and the hosts' runtime dirs
        _live_tokens.add(self.token)
        try:
            cleanup_stale()
            os.mkdir(self.tmpdir, 0o700)
            self.secret_file = self._write_secret("secret")
            _ip("netns", "add", self.hub_ns)
            self._namespaces.append(self.hub_ns)
            _ip("-n", self.hub_ns, "link", "set", "lo", "up")
            self._add_bridge("br0")
            for i in range(1, n + 1):
                h = Host(self, i)
                self.hosts.append(h)
                h._setup()
        except BaseException:
            self.close()
            raise

    def _add_bridge(self, name: str) -> None:
        _ip("-n", self.hub_ns, "link", "add", name, "type", "bridge", "stp_state", "0", "forward_delay", "0",
            "mcast_snooping", "0")
        _ip("-n", self.hub_ns, "link", "set", name, "up")

    def _write_secret(self, name: str) -> str:
        path = os.path.join(self.tmpdir, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        return path

    def write_wrong_secret(self) -> str:
        """A second secret file (another random secret, mode 0600); its path."""
        return self._write_secret(f"wrong-secret-{secrets.token_hex(4)}")

    # access
    def __len__(self) -> int:
        return len(self.hosts)

    def __iter__(self) -> Iterator[Host]:
        return iter(self.hosts)

    def __getitem__(self, key: int | str) -> Host:
        """cluster[0] is h1; cluster["h2"] is h2."""
        if isinstance(key, str):
            for h in self.hosts:
                if h.name == key:
                    return h
            raise KeyError(key)
        return self.hosts[key]

    def __getattr__(self, name: str) -> Host:
        if re.fullmatch(r"h\d+", name):
            try:
                return self[name]
            except KeyError:
                pass
        raise AttributeError(name)

    @property
    def cluster_arg(self) -> str:
        """The --cluster value: "239.77.0.1:47700"."""
        return f"{self.group}:{self.port}"

    def peers_arg(self, exclude: Host | None = None, port: int | None = None) -> str:
        """A --peers value: "10.77.0.11:47700,10.77.0.12:47700,..." (without exclude)."""
        return ",".join(f"{h.addr}:{port or self.port}" for h in self.hosts if h is not exclude)

    def namespaces(self) -> list[str]:
        """The names of this cluster's namespaces (hub first)."""
        return list(self._namespaces)

    # partitions
    def partition(self, *groups: list[Host]) -> None:
        """Split the hosts into groups that only reach each other: group k's ports move to bridge br<k>;
        hosts in no group go to br0 with group 0. Links are left as they are. heal() undoes it."""
        grouped = {h.name for g in groups for h in g}
        for h in self.hosts:
            if h.name not in grouped:
                _ip("-n", self.hub_ns, "link", "set", h.veth, "master", "br0")
        for k, group in enumerate(groups):
            br = f"br{k}"
            if br not in self._bridges:
                self._add_bridge(br)
                self._bridges.append(br)
            for h in group:
                _ip("-n", self.hub_ns, "link", "set", h.veth, "master", br)

    def heal(self) -> None:
        """Every host back on br0, every link up."""
        for h in self.hosts:
            _ip("-n", self.hub_ns, "link", "set", h.veth, "master", "br0", "up")

    def cut(self, a: Host, b: Host) -> None:
        """A partial partition: a and b no longer reach each other (a blackhole route to the other's
        address in each), while both still reach everyone else. Unicast only (--peers): multicast
        still floods the bridge. uncut() undoes it."""
        _ip("-n", a.ns, "route", "add", "blackhole", f"{b.addr}/32")
        _ip("-n", b.ns, "route", "add", "blackhole", f"{a.addr}/32")

    def uncut(self, a: Host, b: Host) -> None:
        _ip("-n", a.ns, "route", "del", "blackhole", f"{b.addr}/32")
        _ip("-n", b.ns, "route", "del", "blackhole", f"{a.addr}/32")

    # teardown
    def close(self) -> None:
        """Tear everything down (idempotent); raises at the end if something could not be cleaned."""
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        for h in self.hosts:
            errors += h.close()
        for ns in reversed(self._namespaces):  # hosts first (their veths go with them), then the hub
            if ns in list_namespaces():
                left = _kill_pids(ns_pids(ns))
                if left:
                    errors.append(f"{ns}: pids {left} survived SIGKILL")
                r = _ip("netns", "del", ns, check=False)
                if r.returncode != 0:
                    errors.append(f"ip netns del {ns}: {r.stderr.strip()}")
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        _live_tokens.discard(self.token)
        left_ns = [ns for ns in list_namespaces() if ns in self._namespaces]
        if left_ns:
            errors.append(f"namespaces left: {left_ns}")
        if errors:
            raise NetnsError("cluster teardown: " + "; ".join(errors))

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@pytest.fixture
def cluster() -> Iterator[Callable[..., Cluster]]:
    """A factory: cluster(3) makes hosts h1..h3 on one bridge; all torn down after the test."""
    require_netns()
    made: list[Cluster] = []

    def make(n: int = 3, **kw: Any) -> Cluster:
        c = Cluster(n, **kw)
        made.append(c)
        return c
    try:
        yield make
    finally:
        errors = []
        for c in made:
            try:
                c.close()
            except Exception as e:
                errors.append(str(e))
        if errors:
            raise NetnsError("; ".join(errors))
