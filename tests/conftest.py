"""Fixtures shared by the tests: real nodes (runtime dirs + managers) and real worker processes."""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import Any, Callable, Iterator

import pytest

import syn_mp
from syn_mp import _client, _config
from syn_mp._table import iter_segments

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wait_for(pred: Callable[[], Any], timeout: float = 10.0, interval: float = 0.005, what: str = "") -> Any:
    """Poll pred until it returns something truthy; fail the test after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or pred}")
        time.sleep(interval)


NOBODY = 65534


def create_as_nobody(path: str, mode: int) -> None:
    """Create the file `path` (say a squatted /dev/shm segment) as the user nobody (needs root)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode))
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 and os.stat(path).st_uid == NOBODY


def in_fork(fn: Callable[[], Any]) -> str:
    """repr(fn()) as computed in a forked child of this process (what a child sees after fork); a
    child killed by a signal (a crash) fails the caller, not pytest."""
    rfd, wfd = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(rfd)
            os.write(wfd, repr(fn()).encode())
        finally:
            os._exit(0)
    os.close(wfd)
    out = b""
    while chunk := os.read(rfd, 65536):
        out += chunk
    os.close(rfd)
    _, status = os.waitpid(child, 0)
    assert os.WIFEXITED(status), f"the child crashed (status {status})"
    return out.decode()


def pid_alive(pid: int) -> bool:
    from syn_mp._procinfo import start_time
    return start_time(pid) is not None


class NodeHandle:
    """One node on this machine: its own runtime dir, its own manager and segments."""

    def __init__(self, name: str = "n1", **env: str) -> None:
        # AF_UNIX paths are limited to 108 bytes: keep the runtime dir short
        self.rdir = tempfile.mkdtemp(prefix="synmp-", dir="/tmp")
        self.name = name
        self.extra_env = dict(env, SYN_MP_RUNTIME_DIR=self.rdir, SYN_MP_NODE=name)
        self.env = dict(os.environ, **self.extra_env)
        if "SYN_MP_STRICT" not in env:
            self.env.pop("SYN_MP_STRICT", None)
        self.paths = _config.Paths(self.rdir)
        self.procs: list[subprocess.Popen] = []

    # this process uses the node
    def use(self) -> "NodeHandle":
        """This test process becomes a client of the node (and starts its manager with the node's env)."""
        os.environ.update(self.extra_env)
        _client.set_node(None)
        return self

    def manager_pid(self) -> int | None:
        try:
            with open(self.paths.state) as f:
                pid = json.load(f)["pid"]
        except (OSError, ValueError, KeyError):
            return None
        return pid if pid_alive(pid) else None

    def python(self, code: str, *args: str, stdout: int = subprocess.PIPE, **kw: Any) -> subprocess.Popen:
        """A real worker process running `code` on this node."""
        p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=self.env, cwd=ROOT,
                             stdout=stdout, stderr=subprocess.PIPE, stdin=subprocess.PIPE, text=True, **kw)
        self.procs.append(p)
        return p

    def cli(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "syn_mp", "--runtime-dir", self.rdir, *args], env=self.env,
                              cwd=ROOT, capture_output=True, text=True, timeout=timeout)

    def daemon(self, *args: str) -> subprocess.Popen:
        """`syn-mp daemon` in the foreground, as systemd would run it; waits until it answers."""
        self.daemon_log = os.path.join(self.rdir, "daemon.log")
        with open(self.daemon_log, "ab") as log:  # a file, not a pipe nobody drains
            p = subprocess.Popen([sys.executable, "-m", "syn_mp", "--runtime-dir", self.rdir, "daemon", "--node",
                                  self.name, *args], env=self.env, cwd=ROOT, stdout=log, stderr=log)
        self.procs.append(p)
        wait_for(lambda: self.manager_pid() == p.pid or p.poll() is not None, what="daemon up")
        assert p.poll() is None, open(self.daemon_log).read()
        wait_for(lambda: os.path.exists(self.paths.ctl), what="control socket")
        return p

    def worker(self) -> "Worker":
        """A real process that runs syn_mp calls on request (see tests/worker.py)."""
        return self.workers(1)[0]

    def workers(self, k: int) -> list["Worker"]:
        """k such processes, started in parallel."""
        procs = [subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "worker.py")], env=self.env,
                                  cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.PIPE,
                                  text=True) for _ in range(k)]
        self.procs.extend(procs)
        ws = [Worker(p) for p in procs]
        for w in ws:
            assert w.call("getpid") == w.pid
        return ws

    def kill_manager(self, sig: int = signal.SIGKILL) -> int:
        pid = self.manager_pid()
        assert pid, "no manager running"
        os.kill(pid, sig)
        wait_for(lambda: not pid_alive(pid), what=f"manager {pid} to exit")
        return pid

    def segments(self) -> list[str]:
        prefix = _config.segment_name(self.rdir, "")
        return list(iter_segments(prefix))

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
            for f in (p.stdout, p.stderr, p.stdin):
                if f:
                    f.close()
        pid = self.manager_pid()
        if pid:
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: not pid_alive(pid), what="manager exit")
        unlink_segments_of(self.rdir)
        shutil.rmtree(self.rdir, ignore_errors=True)


def unlink_segments_of(rdir: str) -> list[str]:
    """Unlink the shared-memory segments of the node whose runtime dir is `rdir` (its processes
    stopped first); their names. Every test leaves /dev/shm as it found it (_no_segment_left)."""
    import posix_ipc
    gone = []
    for seg in iter_segments(_config.segment_name(rdir, "")):
        try:
            posix_ipc.unlink_shared_memory(seg)
            gone.append(seg)
        except posix_ipc.ExistentialError:
            pass
    return gone


# Segment name prefixes (segment_name(rdir, "")) of nodes that outlive one test on purpose (a session
# fixture's): their fixture unlinks them and checks it.
SHM_IN_FLIGHT: set[str] = set()


def _syn_mp_segments() -> set[str]:
    return {"/" + n for n in os.listdir("/dev/shm") if n.startswith("syn_mp.")}


# Every test session holds a shared lock on this file for its lifetime. A session that can't turn it
# into an exclusive one is not alone on the machine: the segments that appear during a test may be
# another session's, so the leak check below can neither blame nor unlink them. POSIX record locks
# (lockf), not flock: a failed upgrade keeps the shared lock (flock drops it first, and another
# session could find itself alone in that gap), and a forked child does not inherit them.
_SESSIONS = open(os.path.join(tempfile.gettempdir(), "syn_mp-test-sessions.lock"), "a+")
fcntl.lockf(_SESSIONS, fcntl.LOCK_SH)


def _alone() -> bool:
    try:
        fcntl.lockf(_SESSIONS, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # EAGAIN or EACCES: another session holds its shared lock
        return False
    fcntl.lockf(_SESSIONS, fcntl.LOCK_SH)
    return True


@pytest.fixture(autouse=True)
def _no_segment_left(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that leaves a syn_mp segment in /dev/shm errors (the segment is unlinked): segments
    outlive their processes, so leaks pile up in RAM from run to run. Checked when this test session
    is the only one running (always in CI)."""
    alone = _alone()
    before = _syn_mp_segments()
    yield
    left = sorted(n for n in _syn_mp_segments() - before if not any(n.startswith(p) for p in SHM_IN_FLIGHT))
    if left and not (alone and _alone()):
        if os.environ.get("CI") == "true":
            pytest.fail("another test session ran alongside this one: the segment leak check can't tell "
                        "whose segments these are", pytrace=False)
        return
    if left:
        import posix_ipc
        for n in left:
            try:
                posix_ipc.unlink_shared_memory(n)
            except posix_ipc.ExistentialError:
                pass
        pytest.fail(f"{request.node.nodeid} left shared-memory segments behind: {left}", pytrace=False)


def _literal(v: Any) -> Any:
    if isinstance(v, syn_mp.Pid):
        return ("__Pid__", v.node, v.pid)
    if isinstance(v, tuple):
        return tuple(_literal(x) for x in v)
    if isinstance(v, list):
        return [_literal(x) for x in v]
    if isinstance(v, dict):
        return {_literal(k): _literal(x) for k, x in v.items()}
    return v


class Worker:
    """Drives tests/worker.py: each call is one line out, one line back."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.pid = proc.pid

    def call(self, fn: str, *args: Any, **kwargs: Any) -> Any:
        """Run syn_mp.<fn>(*args, **kwargs) in the worker; a SynError comes back raised here."""
        import ast
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(repr(_literal((fn, args, kwargs))) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"worker {self.pid} died: {self.proc.stderr.read() if self.proc.stderr else ''}")
        status, value = ast.literal_eval(line)
        if status == "error":
            cls, msg = value
            raise getattr(syn_mp, cls, RuntimeError)(msg)
        return value

    def kill(self, sig: int = signal.SIGKILL) -> None:
        os.kill(self.pid, sig)
        self.proc.wait(timeout=10)


@pytest.fixture
def make_node() -> Iterator[Callable[..., NodeHandle]]:
    nodes: list[NodeHandle] = []
    saved = dict(os.environ)  # NodeHandle.use() sets the node's env here (SYN_MP_*, PYTHONPATH, ...)

    def make(name: str = "n1", **env: str) -> NodeHandle:
        n = NodeHandle(name, **env)
        nodes.append(n)
        return n
    yield make
    for n in nodes:
        n.close()
    os.environ.clear()
    os.environ.update(saved)
    _client.set_node(None)


@pytest.fixture
def node(make_node: Callable[..., NodeHandle]) -> NodeHandle:
    """A node this test process uses, with scope "s" added (which starts its manager)."""
    n = make_node().use()
    syn_mp.add_node_to_scopes(["s"])
    return n


def read_all(reader: Any) -> list | None:
    """Every journal record up to the head (one read() returns at most a buffer's worth); None on overrun."""
    out: list = []
    while True:
        recs = reader.read()
        if recs is None:
            return None
        if not recs:
            return out
        out += recs


def raw_seq(t: Any) -> int:
    """A table's seqlock word, through the C stats call."""
    from syn_mp._native import ffi, lib
    st = ffi.new("synt_stats_t *")
    lib.synt_stats(t._t, st)
    return st.seq


def checked(table_or_scope: Any) -> None:
    """Run the C checker on a scope's table and fail with its message."""
    from syn_mp._client import table_of as _table
    t = _table(table_or_scope) if isinstance(table_or_scope, str) else table_or_scope
    err = t.check()
    assert err is None, f"table invariant broken: {err}"


# the network-namespace fixture (`cluster`), for every test module; netns imports from this module,
# so it comes last
from netns import cluster  # noqa: E402,F401
# a real 3-member etcd cluster on loopback (`etcd`), for the tests of the etcd mode
from etcd import etcd  # noqa: E402,F401
