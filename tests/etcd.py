"""A real 3-member etcd cluster on loopback for the tests of the etcd mode (Debian's etcd-server).

    def test_x(etcd):                 # the fixture, registered by conftest.py
        e = etcd()                    # 3 members on 127.0.0.1, fresh ports, a temp data dir each
        e.endpoints                   # "http://127.0.0.1:P1,http://127.0.0.1:P2,..." (for --etcd)
        e.kill(1); e.restart(1)       # SIGKILL member 1 (0-based), start it again on its data
        e.stop_all(); e.start_all()   # every member down, then back (same data: a restart)
        e.compact()                   # compact the keyspace at its current revision
        e.put("/k", b"v"); e.get("/k")

        e = etcd(tls=True)            # clients must speak TLS and show a certificate (--client-cert-auth)
        e.endpoints                   # "https://127.0.0.1:P1,..."
        e.pki.client_args()           # ["--etcd-ca", ..., "--etcd-cert", ..., "--etcd-key", ...]
        e.add_user("u", "pw", "/t/")  # a user whose role reads and writes the prefix /t/ only
        e.enable_auth()               # a root user, then etcd's auth on (the harness then logs in as root)
        e = etcd(jwt_ttl="2s")        # login tokens signed (JWT), expiring 2 s after each login

The certificates (tests' own CA, a server certificate for 127.0.0.1, a client certificate, and a
second CA that signed nothing of etcd's) are made with the openssl CLI in the cluster's temp dir.
Members run with a short heartbeat and election timeout (50/250 ms): a lease's minimum TTL follows
the election timeout, and a test's node timeout is 1-2 s. Everything is torn down by pid.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import ssl
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


def _ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_etcd() -> None:
    """Without the binary: skip, except under CI (./dev test installs etcd-server), where it fails."""
    if os.path.exists(ETCD):
        return
    if _ci():
        pytest.fail(f"{ETCD} is missing: ./dev test installs the Debian package etcd-server")
    pytest.skip("etcd is not installed (apt-get install etcd-server, or ./dev test)")


def require_tool(cmd: str, package: str) -> str:
    """A command the tests run (openssl for certificates, etcdctl): skip without it, fail under CI
    (./dev test installs the Debian package)."""
    path = shutil.which(cmd)
    if path:
        return path
    if _ci():
        pytest.fail(f"{cmd} is missing: ./dev test installs the Debian package {package}")
    pytest.skip(f"{cmd} is not installed (apt-get install {package}, or ./dev test)")
    raise AssertionError("unreachable")


def require_openssl() -> str:
    return require_tool("openssl", "openssl")


class Pki:
    """A test CA, etcd's server certificate for 127.0.0.1 and a client certificate, both signed by
    it; and another CA (`other_ca`) with a client certificate of its own (`other_cert`, `other_key`),
    which etcd does not trust and which did not sign etcd's certificate. EC P-256 keys: fast to make."""

    def __init__(self, base: str) -> None:
        self.dir = os.path.join(base, "pki")
        os.makedirs(self.dir)
        self.openssl = require_openssl()
        self.ca, self.ca_key = self._ca("ca")
        # clientAuth too: etcd's JSON gateway dials etcd's own gRPC with the server's certificate
        self.server, self.server_key = self._leaf("server", "ca", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                                                  "extendedKeyUsage=serverAuth,clientAuth\n")
        self.cert, self.key = self._leaf("client", "ca", "extendedKeyUsage=clientAuth\n")
        # the harness's own: no CommonName, which etcd's JSON gateway refuses once auth is on
        self.admin_cert, self.admin_key = self._leaf("admin", "ca", "extendedKeyUsage=clientAuth\n",
                                                     "/O=syn_mp test harness")
        self.other_ca, _ = self._ca("other-ca")
        self.other_cert, self.other_key = self._leaf("other-client", "other-ca", "extendedKeyUsage=clientAuth\n")

    def _run(self, *args: str) -> None:
        r = subprocess.run([self.openssl, *args], cwd=self.dir, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, f"openssl {' '.join(args)}: {r.stderr}"

    def _ca(self, name: str) -> tuple[str, str]:
        self._run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
                  "-subj", f"/CN=syn_mp test {name}", "-keyout", f"{name}-key.pem", "-out", f"{name}.pem")
        return os.path.join(self.dir, f"{name}.pem"), os.path.join(self.dir, f"{name}-key.pem")

    def _leaf(self, name: str, ca: str, ext: str, subject: str = "") -> tuple[str, str]:
        with open(os.path.join(self.dir, f"{name}.ext"), "w") as f:
            f.write(ext)
        self._run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj",
                  subject or f"/CN={name}",
                  "-keyout", f"{name}-key.pem", "-out", f"{name}.csr")
        self._run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}-key.pem",
                  "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem")
        return os.path.join(self.dir, f"{name}.pem"), os.path.join(self.dir, f"{name}-key.pem")

    def client_args(self) -> list[str]:
        """The daemon's flags for this etcd: its CA, our client certificate and key."""
        return ["--etcd-ca", self.ca, "--etcd-cert", self.cert, "--etcd-key", self.key]

    def context(self) -> ssl.SSLContext:
        """The harness's own TLS client context (health checks, the JSON gateway)."""
        ctx = ssl.create_default_context(cafile=self.ca)
        ctx.load_cert_chain(self.admin_cert, self.admin_key)
        return ctx


def _jwt_flag(base: str, ttl: str) -> str:
    """etcd's --auth-token for signed (JWT) login tokens that expire `ttl` after the login, used or not
    (etcd's default, simple tokens, live while used and die with the member's memory)."""
    openssl = require_openssl()
    priv, pub = os.path.join(base, "jwt-key.pem"), os.path.join(base, "jwt-pub.pem")
    for args in (["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", priv],
                 ["ec", "-in", priv, "-pubout", "-out", pub]):
        r = subprocess.run([openssl, *args], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, f"openssl {' '.join(args)}: {r.stderr}"
    return f"jwt,pub-key={pub},priv-key={priv},sign-method=ES256,ttl={ttl}"


class Member:
    def __init__(self, i: int, base: str, client_port: int, peer_port: int, scheme: str = "http") -> None:
        self.i, self.name = i, f"m{i}"
        self.client_port, self.peer_port = client_port, peer_port
        self.client_url = f"{scheme}://127.0.0.1:{client_port}"
        self.peer_url = f"http://127.0.0.1:{peer_port}"
        self.data = os.path.join(base, self.name)
        self.log = os.path.join(base, f"{self.name}.log")
        self.proc: subprocess.Popen | None = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class EtcdCluster:
    def __init__(self, size: int = 3, tls: bool = False, jwt_ttl: str | None = None) -> None:
        self.base = tempfile.mkdtemp(prefix="synmp-etcd-", dir="/tmp")
        # client TLS only: the members talk to each other in plain HTTP on loopback
        try:
            self.pki = Pki(self.base) if tls else None
            self.auth_token = _jwt_flag(self.base, jwt_ttl) if jwt_ttl else None
        except BaseException:  # no openssl (a skip) or a failed openssl: nothing left behind
            shutil.rmtree(self.base, ignore_errors=True)
            raise
        self._ssl = self.pki.context() if self.pki else None
        self.root_password: str | None = None  # set by enable_auth: the harness's calls log in as root
        self._token: str | None = None
        ports = _free_ports(2 * size)
        self.members = [Member(i, self.base, ports[2 * i], ports[2 * i + 1], "https" if tls else "http")
                        for i in range(size)]
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
        if self.auth_token is not None:
            args += ["--auth-token", self.auth_token]
        if self.pki is not None:
            args += ["--cert-file", self.pki.server, "--key-file", self.pki.server_key,
                     "--client-cert-auth", "--trusted-ca-file", self.pki.ca]
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
                    with urllib.request.urlopen(m.client_url + "/health", timeout=2, context=self._ssl) as r:
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

    def _v3(self, path: str, body: dict, auth: bool = True) -> dict:
        """One call of etcd's JSON gateway on the first live member (test set-up only); once auth is
        enabled, as root."""
        last: Exception | None = None
        for m in self.members:
            if not m.alive():
                continue
            enc = {k: base64.b64encode(v).decode() if isinstance(v, bytes) else v for k, v in body.items()}
            headers = {"Content-Type": "application/json"}
            if auth and self.root_password is not None:
                headers["Authorization"] = self._login()
            req = urllib.request.Request(m.client_url + "/v3/" + path, data=json.dumps(enc).encode(), headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=5, context=self._ssl) as r:
                    return json.loads(r.read())
            except urllib.error.HTTPError as e:  # an answer: etcd refused the call
                text = e.read().decode(errors="replace")
                if "invalid auth token" in text:  # a restart forgets the tokens: log in again
                    self._token = None
                    return self._v3(path, body, auth)
                raise AssertionError(f"etcd refused {path}: {text}") from None
            except OSError as e:  # this member is down: the next one
                last = e
        raise AssertionError(f"no etcd member answered {path}: {last}")

    def _login(self) -> str:
        if self._token is None:
            self._token = self._v3("auth/authenticate", {"name": "root", "password": self.root_password},
                                   auth=False)["token"]
        return self._token

    def add_user(self, name: str, password: str, prefix: str) -> None:
        """A user with a role of its own granting read and write on `prefix` (etcd's --prefix range) only."""
        p = prefix.encode()
        perm = {"permType": "READWRITE", "key": base64.b64encode(p).decode(),
                "range_end": base64.b64encode(_prefix_end(p)).decode()}
        self._v3("auth/role/add", {"name": name})
        self._v3("auth/role/grant", {"name": name, "perm": perm})
        self._v3("auth/user/add", {"name": name, "password": password})
        self._v3("auth/user/grant", {"user": name, "role": name})

    def enable_auth(self, root_password: str = "root-pw") -> None:
        """etcd's authentication on: a root user (with the root role, as etcd requires) first."""
        self._v3("auth/role/add", {"name": "root"})
        self._v3("auth/user/add", {"name": "root", "password": root_password})
        self._v3("auth/user/grant", {"user": "root", "role": "root"})
        self._v3("auth/enable", {})
        self.root_password, self._token = root_password, None

    def revision(self) -> int:
        return int(self._v3("kv/range", {"key": b"\0"})["header"]["revision"])

    def compact(self) -> int:
        rev = self.revision()
        self._v3("kv/compaction", {"revision": rev, "physical": True})
        return rev

    def put(self, key: str, value: bytes) -> None:
        self._v3("kv/put", {"key": key.encode(), "value": value})

    def get(self, key: str) -> bytes | None:
        kvs = self._v3("kv/range", {"key": key.encode()}).get("kvs") or []
        return base64.b64decode(kvs[0].get("value", "")) if kvs else None

    def keys(self, prefix: str) -> list[str]:
        p = prefix.encode()
        kvs = self._v3("kv/range", {"key": p, "range_end": _prefix_end(p), "keys_only": True}).get("kvs") or []
        return sorted(base64.b64decode(kv["key"]).decode(errors="replace") for kv in kvs)

    def close(self) -> None:
        for m in self.members:
            if m.alive():
                m.proc.kill()
            if m.proc is not None:
                m.proc.wait(timeout=20)
        shutil.rmtree(self.base, ignore_errors=True)


def _prefix_end(p: bytes) -> bytes:
    """The end of the range of keys starting with p (etcd's --prefix; p does not end in 0xff)."""
    return p[:-1] + bytes([p[-1] + 1])


@pytest.fixture
def etcd() -> Iterator[Callable[..., EtcdCluster]]:
    require_etcd()
    made: list[EtcdCluster] = []

    def make(size: int = 3, tls: bool = False, jwt_ttl: str | None = None) -> EtcdCluster:
        c = EtcdCluster(size, tls, jwt_ttl)
        made.append(c)
        c.start_all()
        return c
    try:
        yield make
    finally:
        for c in made:
            c.close()
