"""Helpers shared by the tests that run real servers (gunicorn, uvicorn, hypercorn, celery)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import urllib.request

import pytest

import syn_mp


def require(module: str) -> None:
    """Skip without the package, except under CI, where a missing integration package is a failure."""
    try:
        __import__(module)
    except ImportError as e:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{module} is not installed (pip install -e '.[integrations]'): {e}")
        pytest.skip(f"{module} is not installed (pip install -e '.[integrations]')")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, query: str = "") -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/?{query}", timeout=5) as r:
        return json.loads(r.read())


def ids(scope: str) -> dict[int, int]:
    return {n[1]: p.pid for n, p, _ in syn_mp.registry_entries(scope) if isinstance(n, tuple) and n[0] == "worker"}


def ids_when(scope: str, want: list[int]) -> dict[int, int] | None:
    got = ids(scope)
    members = sorted(m["id"] for _, m in syn_mp.members(scope, "workers"))
    return got if sorted(got) == want and members == want else None


def stop(proc: subprocess.Popen, pids: set[int], grace: float = 15) -> None:
    """SIGTERM the server's master (a graceful stop), then SIGKILL whatever of ours is left, by pid."""
    from conftest import pid_alive
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    for pid in pids:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
