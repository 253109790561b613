"""This process's view of its node: runtime dir, attached tables, the manager link."""
from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import sys
import time
from typing import Any

from . import _config, _control
from ._table import SegmentLayoutError, SegmentOwnerError, Table, TableError, set_self
from .errors import InvalidScopeError, ManagerUnavailableError

MANAGER_START_TIMEOUT = 15.0


class Node:
    """Per-process state for one runtime dir (one node)."""

    def __init__(self, rdir: str) -> None:
        self.rdir = rdir
        self.paths = _config.Paths(rdir)
        self.tables: dict[str, Table] = {}
        self._wake_sock: socket.socket | None = None
        self._relay_sock: socket.socket | None = None
        self._node_name: str | None = None
        self.dir_ok = False  # check_dir passed: the dir is the node's user's and private
        self.dir_prefix = ""  # then: /proc/self/fd/<fd>, the checked dir itself, for the sockets we bind and send to

    def check_dir(self, must_exist: bool = False, fresh: bool = False) -> bool:
        """Refuse, before anything is read from, said to or bound in it, a runtime dir that is not a private
        dir of the node's user (_config.open_runtime_dir); False when there is none (and must_exist is
        false). `fresh`: look again (the name may have been removed and taken since)."""
        if self.dir_ok and not fresh:
            return True
        try:
            fd = _config.open_runtime_dir(self.rdir)
        except OSError as e:  # PermissionError: says which dir and why
            raise ManagerUnavailableError(str(e)) from None
        if fd is None:
            if must_exist:
                raise ManagerUnavailableError(f"runtime dir {self.rdir} does not exist: is the node's manager running?")
            return False
        if self.dir_ok:
            os.dup2(fd, int(self.dir_prefix.rsplit("/", 1)[1]), inheritable=False)  # the prefix others hold stays valid
            os.close(fd)
        else:
            self.dir_prefix = f"/proc/self/fd/{fd}"
        self.dir_ok = True
        return True

    # -------------------------------------------------------------- tables

    def table(self, scope: str) -> Table:
        """The scope's table; attached on first use. InvalidScopeError if the node lacks it."""
        try:
            return self.tables[scope]
        except (KeyError, TypeError):  # TypeError: unhashable, check_scope raises ValueError
            pass
        _config.check_scope(scope)
        self.check_dir()  # (no dir at all is fine here: the segment's owner is checked)
        from . import _segments
        name, owner = _config.segment_name(self.rdir, scope), _config.segment_owner(self.rdir)
        try:
            t = Table.attach(name, owner)
            why = "" if t is None or not t.retired() else "retired"
        except SegmentOwnerError as e:  # another user's segment under our node's name
            raise InvalidScopeError(f"scope {scope!r} can't be used: {e}") from None
        except SegmentLayoutError as e:  # another version, or half-created: the manager rebuilds it
            t, why = None, str(e)
        except TableError as e:  # unreadable in another way: one clear error, never a traceback
            raise InvalidScopeError(f"scope {scope!r} can't be used: {e}") from None
        if t is None or why:
            if scope not in self.state().get("scopes", ()) or not self.ping():
                raise InvalidScopeError(f"scope {scope!r} was not added on this node (runtime dir {self.rdir})"
                                        + (f": {why}" if why else "")) from None
            try:  # a known scope whose segment the manager is rebuilding (lost, or of another version)
                t = _segments.wait_for_segment(name, owner)
            except TableError as e:
                raise InvalidScopeError(f"scope {scope!r} can't be used: {e}") from None
        t.on_stale = _segments.renew
        self.tables[scope] = t
        _segments.watch()
        return t

    def wake_manager(self) -> None:
        """Called when a write finds the manager asleep: one datagram wakes it."""
        s = self._wake_sock
        if s is None:
            s = self._wake_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            s.setblocking(False)
        try:
            s.sendto(b"w", self.paths.wake)
        except OSError:
            pass  # manager down or its queue full: it rescans the journal when it runs

    def relay(self, dest: str, target: list, data: bytes) -> None:
        """A mailbox datagram for a process on node `dest`: the manager carries it there."""
        import msgpack
        if not self.dir_ok:
            self.check_dir(must_exist=True)  # our messages go to no socket another user could have bound
        s = self._relay_sock
        if s is None:
            s = self._relay_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            s.settimeout(0.1)
        try:
            s.sendto(msgpack.packb([dest, target, data]), self.paths.relay)
        except OSError:
            pass  # no manager: like a send to a process that is gone

    # -------------------------------------------------------------- manager

    def state(self) -> dict[str, Any]:
        if not self.check_dir():
            return {}
        try:
            with open(self.paths.state, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def node_name(self) -> str:
        if self._node_name is None:
            name = self.state().get("node")
            if not name:
                return _config.default_node_name()
            self._node_name = name
        return self._node_name

    def request(self, op: str, **args: Any) -> dict[str, Any]:
        self.check_dir(must_exist=True)
        try:
            reply = _control.request(self.paths.ctl, op, owner=_config.segment_owner(self.rdir), **args)
        except (OSError, ValueError) as e:
            raise ManagerUnavailableError(f"manager at {self.rdir} unreachable: {e}") from None
        if not reply.get("ok"):
            raise ManagerUnavailableError(f"manager refused {op}: {reply.get('error')}")
        return reply

    def ping(self) -> dict[str, Any] | None:
        """The manager's answer, or None when none answers. Only after the dir is checked, and only to
        a socket served by the node's user (_control.request): nothing is said to anyone else's."""
        if not self.check_dir():
            return None
        try:
            r = _control.request(self.paths.ctl, "ping", timeout=5.0, owner=_config.segment_owner(self.rdir))
        except _control.WrongPeer as e:
            raise ManagerUnavailableError(f"manager at {self.rdir} refused: {e}") from None
        except (OSError, ValueError):
            return None
        return r if r.get("ok") else None

    def ensure_manager(self) -> None:
        """Make sure a manager serves this runtime dir, starting exactly one if none does."""
        try:
            _config.ensure_runtime_dir(self.rdir)  # before a word is said to its socket
        except OSError as e:
            raise ManagerUnavailableError(f"cannot use runtime dir {self.rdir}: {e}") from None
        if self.ping():
            return
        try:
            lockfd = _config.create_file(self.paths.start_lock, os.O_RDWR)
        except OSError as e:
            raise ManagerUnavailableError(f"cannot use runtime dir {self.rdir}: {e}") from None
        try:
            fcntl.flock(lockfd, fcntl.LOCK_EX)  # racing starters queue here
            if self.ping():
                return
            self._spawn()
            deadline = time.monotonic() + MANAGER_START_TIMEOUT
            while time.monotonic() < deadline:
                if self.ping():
                    return
                time.sleep(0.01)
            raise ManagerUnavailableError(
                f"manager for {self.rdir} did not start within {MANAGER_START_TIMEOUT:.0f}s; see {self.paths.log}")
        finally:
            os.close(lockfd)

    def _spawn(self) -> None:
        try:
            log = _config.create_file(self.paths.log, os.O_WRONLY | os.O_APPEND)
        except OSError as e:
            raise ManagerUnavailableError(f"cannot start the manager: {e}") from None
        # `python -m` puts its working dir first on sys.path: run it in "/", with the syn_mp we run
        # ahead on PYTHONPATH, so a syn_mp package planted in our cwd (say /tmp) is never imported
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p))
        try:
            # --detach: the daemon forks away so it is no child of ours and outlives us
            subprocess.run(
                [sys.executable, "-m", "syn_mp", "--runtime-dir", self.rdir, "daemon", "--detach"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, close_fds=True, check=False,
                timeout=MANAGER_START_TIMEOUT, cwd="/", env=env,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ManagerUnavailableError(f"cannot start the manager: {e}") from None
        finally:
            os.close(log)


_node: Node | None = None
# The tables of the node in use, by scope: the one dict the hot paths (lookup) read, so that
# reaching a table costs a dict lookup and no call. set_node keeps it in step with _node.
TABLES: dict[str, Table] = {}


def set_node(n: "Node | None") -> "Node | None":
    """Make `n` this process's node (None: forget it; the next use reads the environment again)."""
    global _node
    if _node is not None:
        _node.tables = dict(_node.tables)  # the node left behind keeps its own tables
    TABLES.clear()
    if n is not None:
        TABLES.update(n.tables)
        n.tables = TABLES
    _node = n
    # unset the identity of self writes, once `n` is the node: the next self write opens this
    # process's mailbox on `n` first (registry._become_self checks the node after setting it)
    set_self(0, 0)
    return n


def node() -> Node:
    """This process's node, from SYN_MP_RUNTIME_DIR etc. at first use (kept across fork)."""
    n = _node
    if n is None:
        n = set_node(Node(_config.runtime_dir()))
        assert n is not None
    return n


def table_of(scope: str) -> Table:
    """A scope's table: one dict lookup once attached."""
    try:
        return TABLES[scope]
    except (KeyError, TypeError):  # TypeError: unhashable, not a scope name; n.table raises
        return node().table(scope)


def wake_if_asleep(info: Any) -> None:
    """After a write: the C call told us whether the manager sleeps."""
    if info.wake:
        node().wake_manager()


def wake_manager() -> None:
    """A write found the manager asleep (SYNT_WAKE in its result code)."""
    node().wake_manager()


def use_runtime_dir(rdir: str) -> Node:
    """Point this process at another runtime dir (the CLI's --runtime-dir)."""
    if _node is None or _node.rdir != os.path.abspath(rdir):
        set_node(Node(os.path.abspath(rdir)))
    return node()
