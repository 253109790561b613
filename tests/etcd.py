"""A real 3-member etcd cluster on loopback for the tests of the etcd mode (Debian's etcd-server).

    def test_x(etcd):                 # the fixture, registered by conftest.py
        e = etcd()                    # 3 members on 127.0.0.1, fresh ports, a temp data dir each
        e.endpoints                   # "http://127.0.0.1:P1,http://127.0.0.1:P2,..." (for --etcd)
        e.kill(1); e.restart(1)       # SIGKILL member 1 (0-based), start it again on its data
        e.stop_all(); e.start_all()   # every member down, then back (same data: a restart)
        e.compact()                   # compact the keyspace at its current revision
        e.put("/k", b"v"); e.get("/k")

Members run with a short heartbeat and election timeout (50/250 ms): a lease's minimum TTL follows
the election timeout, and a test's node timeout is 1-2 s. Everything is torn down by pid.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from typing import Callable, Iterator

import pytest

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def require_etcd() -> None:
    """Without the binary: skip, except under CI (./dev test installs etcd-server), where it fails."""
    if os.path.exists(ETCD):
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{ETCD} is missing: ./dev test installs the Debian package etcd-server")
    pytest.skip("etcd is not installed (apt-get install etcd-server, or ./dev test)")


class Member:
    def __init__(self, i: int, base: str, client_port: int, peer_port: int) -> None:
        self.i, self.name = i, f"m{i}"
        self.client_port, self.peer_port = client_port, peer_port
        self.client_url = f"http://127.0.0.1:{client_port}"
        self.peer_url = f"http://127.0.0.1:{peer_port}"
        self.data = os.path.join(base, self.name)
        self.log = os.path.join(base, f"{self.name}.log")
        self.proc: subprocess.Popen | None = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class EtcdCluster:
    def __init__(self, size: int = 3) -> None:
        self.base = tempfile.mkdtemp(prefix="synmp-etcd-", dir="/tmp")
        ports = _free_ports(2 * size)
        self.members = [Member(i, self.base, ports[2 * i], ports[2 * i + 1]) for i in range(size)]
        self.initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        self.token = os.path.basename(self.base)
        self.endpoints = ",".join(m.client_url for m in self.members)

    def _spawn(self, m: Member) -> None:
        state = "existing" if os.path.isdir(m.data) else "new"
        args = [ETCD, "--name", m.name, "--data-dir", m.data,
                "--listen-client-urls", m.client_url, "--advertise-client-urls", m.client_url,
                "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
                "--initial-cluster", self.initial, "--initial-cluster-token", self.token,
                "--initial-cluster-state", state, "--heartbeat-interval", "50", "--election-timeout", "250",
                "--log-level", "warn", "--logger", "zap"]
        with open(m.log, "ab") as log:
            m.proc = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL)

    def start_all(self, timeout: float = 30) -> None:
        for m in self.members:
            if not m.alive():
                self._spawn(m)
        self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float = 30, members: list[Member] | None = None) -> None:
        """Every (given) member answers and the cluster has a leader."""
        deadline = time.monotonic() + timeout
        for m in members or self.members:
            while True:
                if not m.alive():
                    raise AssertionError(f"etcd {m.name} exited: {self.tail(m)}")
                try:
                    with urllib.request.urlopen(m.client_url + "/health", timeout=2) as r:
                        if json.loads(r.read()).get("health") == "true":
                            break
                except (OSError, ValueError):
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"etcd {m.name} not healthy after {timeout}s: {self.tail(m)}")
                time.sleep(0.05)

    def tail(self, m: Member) -> str:
        try:
            with open(m.log, errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        m = self.members[i]
        assert m.proc is not None
        m.proc.send_signal(sig)
        m.proc.wait(timeout=20)

    def restart(self, i: int, timeout: float = 30) -> None:
        m = self.members[i]
        if m.alive():
            self.kill(i)
        self._spawn(m)
        self.wait_healthy(timeout, [m])

    def stop_all(self) -> None:
        for m in self.members:
            if m.alive():
                m.proc.send_signal(signal.SIGKILL)
        for m in self.members:
            if m.proc is not None:
                m.proc.wait(timeout=20)

    def _v3(self, path: str, body: dict) -> dict:
        """One call of etcd's JSON gateway on the first live member (test set-up only)."""
        import base64
        last: Exception | None = None
        for m in self.members:
            if not m.alive():
                continue
            enc = {k: base64.b64encode(v).decode() if isinstance(v, bytes) else v for k, v in body.items()}
            req = urllib.request.Request(m.client_url + "/v3/" + path, data=json.dumps(enc).encode(),
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    return json.loads(r.read())
            except urllib.error.HTTPError as e:  # an answer: etcd refused the call
                raise AssertionError(f"etcd refused {path}: {e.read().decode(errors='replace')}") from None
            except OSError as e:  # this member is down: the next one
                last = e
        raise AssertionError(f"no etcd member answered {path}: {last}")

    def revision(self) -> int:
        return int(self._v3("kv/range", {"key": b"\0"})["header"]["revision"])

    def compact(self) -> int:
        rev = self.revision()
        self._v3("kv/compaction", {"revision": rev, "physical": True})
        return rev

    def put(self, key: str, value: bytes) -> None:
        self._v3("kv/put", {"key": key.encode(), "value": value})

    def get(self, key: str) -> bytes | None:
        import base64
        kvs = self._v3("kv/range", {"key": key.encode()}).get("kvs") or []
        return base64.b64decode(kvs[0].get("value", "")) if kvs else None

    def keys(self, prefix: str) -> list[str]:
        import base64
        p = prefix.encode()
        end = p[:-1] + bytes([p[-1] + 1])
        kvs = self._v3("kv/range", {"key": p, "range_end": end, "keys_only": True}).get("kvs") or []
        return sorted(base64.b64decode(kv["key"]).decode(errors="replace") for kv in kvs)

    def close(self) -> None:
        for m in self.members:
            if m.alive():
                m.proc.kill()
            if m.proc is not None:
                m.proc.wait(timeout=20)
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def etcd() -> Iterator[Callable[..., EtcdCluster]]:
    require_etcd()
    made: list[EtcdCluster] = []

    def make(size: int = 3) -> EtcdCluster:
        c = EtcdCluster(size)
        made.append(c)
        c.start_all()
        return c
    try:
        yield make
    finally:
        for c in made:
            c.close()
