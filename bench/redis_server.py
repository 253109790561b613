"""A throwaway redis-server on 127.0.0.1 with a free port, no persistence; stopped by its pid."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time


def find_redis_server() -> str | None:
    exe = shutil.which("redis-server")
    if exe:
        return exe
    for d in ("/usr/bin", "/usr/sbin", "/usr/local/bin"):
        p = os.path.join(d, "redis-server")
        if os.access(p, os.X_OK):
            return p
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.dir = ""
        self.version = ""

    def start(self, timeout: float = 10.0) -> None:
        exe = find_redis_server()
        if exe is None:
            raise RuntimeError("redis-server not installed (apt-get install -y redis-server)")
        import redis
        self.dir = tempfile.mkdtemp(prefix=f"synbench-{os.getpid()}-redis-")
        last: Exception | None = None
        for _ in range(5):  # the free port can be taken between the probe and the bind: try another
            self.port = _free_port()
            self.proc = subprocess.Popen(
                [exe, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
                 "--dir", self.dir, "--daemonize", "no", "--databases", "16", "--loglevel", "warning",
                 "--unixsocket", "", "--protected-mode", "yes"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    r = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
                    r.ping()
                    self.version = r.info("server").get("redis_version", "")
                    r.close()
                    return
                except Exception as e:  # not up yet
                    last = e
                    time.sleep(0.02)
            self.stop()
        raise RuntimeError(f"redis-server did not start: {last}")

    def client(self, db: int = 0):
        import redis
        return redis.Redis(host="127.0.0.1", port=self.port, db=db)

    def stop(self) -> None:
        p = self.proc
        if p is not None and p.poll() is None:
            os.kill(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(timeout=5)
        self.proc = None
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = ""
