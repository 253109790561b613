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
from ._table import SegmentLayoutError, SegmentOwnerError, Table, TableError
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

    # -------------------------------------------------------------- tables

    def table(self, scope: str) -> Table:
        """The scope's table; attached on first use. InvalidScopeError if the node lacks it."""
        try:
            return self.tables[scope]
        except (KeyError, TypeError):  # TypeError: unhashable, check_scope raises ValueError
            pass
        _config.check_scope(scope)
        from . import _segments
        name, owner = _config.segment_name(self.rdir, scope), _config.segment_owner(self.rdir)
        try:
            t = Table.attach(name, owner)
            why = "" if t is None or not t.retired() else "retired"
        except SegmentOwnerError as e:  # another user's segment under our node's name
            raise InvalidScopeError(f"scope {scope!r} can't be used: {e}") from None
        except SegmentLayoutError as e:  # another version, or half-created: the manager rebuilds it
            t, why = None, str(e)
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
        try:
            reply = _control.request(self.paths.ctl, op, **args)
        except (OSError, ValueError) as e:
            raise ManagerUnavailableError(f"manager at {self.rdir} unreachable: {e}") from None
        if not reply.get("ok"):
            raise ManagerUnavailableError(f"manager refused {op}: {reply.get('error')}")
        return reply

    def ping(self) -> dict[str, Any] | None:
        try:
            r = _control.request(self.paths.ctl, "ping", timeout=5.0)
        except (OSError, ValueError):
            return None
        return r if r.get("ok") else None

    def ensure_manager(self) -> None:
        """Make sure a manager serves this runtime dir, starting exactly one if none does."""
        if self.ping():
            return
        try:
            _config.ensure_runtime_dir(self.rdir)
            lockfd = os.open(self.paths.start_lock, os.O_RDWR | os.O_CREAT, 0o600)
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
        log = os.open(self.paths.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            # --detach: the daemon forks away so it is no child of ours and outlives us
            subprocess.run(
                [sys.executable, "-m", "syn_mp", "--runtime-dir", self.rdir, "daemon", "--detach"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, close_fds=True, check=False,
                timeout=MANAGER_START_TIMEOUT,
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
