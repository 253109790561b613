"""Where a node lives: its runtime dir, its name, and the names of its segments."""
from __future__ import annotations

import hashlib
import os
import re
import socket
import stat

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
    """Create the runtime dir 0700; refuse one (e.g. squatted in /tmp) that another user owns or can write to."""
    os.makedirs(rdir, mode=0o700, exist_ok=True)
    st = os.lstat(rdir)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise PermissionError(f"runtime dir {rdir} is not a private directory of uid {os.geteuid()} "
                              f"(owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o}): refusing it")


def segment_owner(rdir: str) -> int:
    """The user a node's segments must belong to: ours; for root, the owner of a runtime dir that root
    handed out (its parent is root's and not writable by others, e.g. /run/syn_mp), so an admin can
    inspect a service user's node. Never the owner of a dir under /tmp: anyone could have made that."""
    uid = os.geteuid()
    if uid == 0:
        try:
            st, parent = os.stat(rdir), os.stat(os.path.dirname(os.path.abspath(rdir)))
        except OSError:
            return uid
        if parent.st_uid == 0 and not parent.st_mode & 0o022:
            return st.st_uid
    return uid


def mailbox_key(rdir: str) -> bytes:
    """The node's secret part of mailbox names (RDIR/mailbox.key, 0600; made by its manager). Mailboxes
    live in the abstract namespace, where anyone may bind any name: without this key another user,
    who can read a process's pid and start time in /proc, could bind its mailbox name first."""
    path = os.path.join(rdir, "mailbox.key")
    try:
        with open(path, "rb") as f:
            key = f.read()
        if len(key) == 32:
            return key
    except FileNotFoundError:
        pass
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, os.urandom(32))
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # atomic: the first maker wins, everyone reads the same whole key
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    with open(path, "rb") as f:
        return f.read()


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
