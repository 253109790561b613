"""An isolated syn_mp node for the bench: its own runtime dir, its own manager, its own segments.

Like tests/conftest.py's NodeHandle: nothing of the user's node is touched, and close()
stops the manager by its pid, unlinks the segments and removes the runtime dir.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time

import syn_mp
from syn_mp import _client, _config
from syn_mp._table import iter_segments


def _alive(pid: int) -> bool:
    from syn_mp._procinfo import start_time
    return start_time(pid) is not None


class BenchNode:
    def __init__(self, name: str = "bench") -> None:
        # AF_UNIX paths are limited to 108 bytes: keep the runtime dir short
        self.rdir = tempfile.mkdtemp(prefix=f"synbench-{os.getpid()}-", dir="/tmp")
        self.name = name
        self.env = {"SYN_MP_RUNTIME_DIR": self.rdir, "SYN_MP_NODE": name}
        self._saved = {k: v for k, v in os.environ.items() if k.startswith("SYN_MP_")}
        self.paths = _config.Paths(self.rdir)

    def use(self, scopes: list[str]) -> "BenchNode":
        """This process becomes a client of the node; starts its manager and creates `scopes`."""
        for k in [k for k in os.environ if k.startswith("SYN_MP_")]:
            del os.environ[k]
        os.environ.update(self.env)
        _client.set_node(None)
        syn_mp.add_node_to_scopes(scopes)
        return self

    def worker_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SYN_MP_")}
        env.update(self.env)
        return env

    def manager_pid(self) -> int | None:
        try:
            with open(self.paths.state) as f:
                pid = json.load(f)["pid"]
        except (OSError, ValueError, KeyError):
            return None
        return pid if _alive(pid) else None

    def status(self) -> dict:
        return _client.node().request("status")

    def segment(self, scope: str) -> str:
        """The /dev/shm path of a scope's table."""
        return "/dev/shm" + _config.segment_name(self.rdir, scope)

    def close(self) -> None:
        pid = self.manager_pid()
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.01)
        import posix_ipc
        for seg in iter_segments(_config.segment_name(self.rdir, "")):
            try:
                posix_ipc.unlink_shared_memory(seg)
            except posix_ipc.ExistentialError:
                pass
        shutil.rmtree(self.rdir, ignore_errors=True)
        for k in [k for k in os.environ if k.startswith("SYN_MP_")]:
            del os.environ[k]
        os.environ.update(self._saved)
        _client.set_node(None)
