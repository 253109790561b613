"""Where a node lives: its runtime dir, its name, and the names of its segments."""
from __future__ import annotations

import hashlib
import os
import re
import socket

_SCOPE_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")

# Table geometry for scopes a manager creates; overridable per manager (tests shrink it).
DEFAULT_CAPACITY = 262_144
DEFAULT_HEAP_PER_ENTRY = 1024
DEFAULT_JOURNAL = 8 << 20


def runtime_dir(explicit: str | None = None) -> str:
    """`--runtime-dir`, else SYN_MP_RUNTIME_DIR, else $XDG_RUNTIME_DIR/syn_mp, else /tmp/syn_mp-<uid>."""
    d = explicit or os.environ.get("SYN_MP_RUNTIME_DIR")
    if not d:
        xdg = os.environ.get("XDG_RUNTIME_DIR")
        d = os.path.join(xdg, "syn_mp") if xdg else f"/tmp/syn_mp-{os.getuid()}"
    return os.path.abspath(d)


def default_node_name(explicit: str | None = None) -> str:
    """`--node`, else SYN_MP_NODE, else the host name."""
    return explicit or os.environ.get("SYN_MP_NODE") or socket.gethostname()


def check_scope(scope: object) -> str:
    if not isinstance(scope, str) or not _SCOPE_RE.match(scope):
        raise ValueError(f"invalid scope name {scope!r}: expected [A-Za-z0-9_.-]{{1,64}}")
    return scope


def segment_name(rdir: str, scope: str) -> str:
    """POSIX shm name of a scope's table: a hash of the runtime dir keeps two nodes apart."""
    tag = hashlib.sha256(os.path.realpath(rdir).encode()).hexdigest()[:16]
    return f"/syn_mp.{tag}.{scope}"


def ensure_runtime_dir(rdir: str) -> None:
    os.makedirs(rdir, mode=0o700, exist_ok=True)


class Paths:
    """The files of one runtime dir."""

    def __init__(self, rdir: str) -> None:
        self.dir = rdir
        self.ctl = os.path.join(rdir, "ctl.sock")
        self.wake = os.path.join(rdir, "wake.sock")
        self.relay = os.path.join(rdir, "relay.sock")
        self.manager_lock = os.path.join(rdir, "manager.lock")
        self.start_lock = os.path.join(rdir, "start.lock")
        self.state = os.path.join(rdir, "state.json")
        self.log = os.path.join(rdir, "manager.log")
