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
# The journal ring (SYN_MP_JOURNAL_BYTES): about 25,000 records of a small entry. A follower (the
# manager's event handlers and cluster deltas, events()) that falls further behind than the ring
# rescans the table or resyncs, which is correct and slower; the ring's pages are memory for good
# once written (2 MiB: 21 B an entry at 100,000 names).
DEFAULT_JOURNAL = 2 << 20


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


def open_runtime_dir(rdir: str, owner: int | None = None) -> int | None:
    """An O_PATH fd of the runtime dir once checked to be a private directory of the node's user
    (`owner`, default segment_owner): not a symlink, owned by that user, writable by nobody else; None
    when there is none. PermissionError (one line) otherwise: whoever can write to the dir can replace
    its sockets, plant symlinks or bind the names we use there. Paths under /proc/self/fd/<fd> keep
    meaning this very dir even if its name is later taken by another."""
    want = segment_owner(rdir) if owner is None else owner
    try:
        fd = os.open(rdir, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError:  # a symlink, or not a dir: say what it is
        try:
            st = os.lstat(rdir)
        except OSError:  # ENOTDIR: a parent is no dir, so there is none
            return None
        raise PermissionError(f"runtime dir {rdir} is not a private directory of uid {want} "
                              f"(mode {stat.filemode(st.st_mode)}): refusing it") from None
    st = os.fstat(fd)
    if st.st_uid != want or st.st_mode & 0o022:
        os.close(fd)
        raise PermissionError(f"runtime dir {rdir} is not a private directory of uid {want} "
                              f"(owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o}): refusing it")
    return fd


def check_runtime_dir(rdir: str, owner: int | None = None) -> bool:
    """open_runtime_dir's check alone: True for a private dir, False for none."""
    fd = open_runtime_dir(rdir, owner)
    if fd is None:
        return False
    os.close(fd)
    return True


def ensure_runtime_dir(rdir: str) -> None:
    """Create the runtime dir 0700; refuse one (e.g. squatted in /tmp) that another user than the
    node's (segment_owner: ours, or for root a service user's dir that root handed out) owns or
    can write to."""
    os.makedirs(rdir, mode=0o700, exist_ok=True)
    check_runtime_dir(rdir)


def create_file(path: str, flags: int = os.O_WRONLY, mode: int = 0o600) -> int:
    """Open (creating it if needed) one of the node's files in its checked runtime dir: never through
    a symlink (O_NOFOLLOW: a planted link can't make us write one of our files elsewhere), and never
    a file another user made (the dir is private, so that would be a bug elsewhere: refuse it)."""
    fd = os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        os.close(fd)
        raise PermissionError(f"{path} is not a file of uid {os.geteuid()}: refusing it")
    return fd


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

    def mailbox(self, pid: int, start: int) -> str:
        """A process's mailbox socket (see mailbox.py): in the private dir, so no other user can bind
        or reach it; (pid, start) so a reused pid never gets a dead process's mail."""
        return os.path.join(self.dir, f"mb.{pid}.{start}")
