"""Mailboxes: each process's queue of messages, and the messages of API.md.

A mailbox is a Unix datagram socket bound in the node's private runtime dir (0700,
checked before we bind or send there), named by the process's (pid, start time):
RDIR/mb.<pid>.<start>. No other user can bind that name, connect to it or list it,
so nobody can take a process's mailbox, before it opens or after it dies (the
abstract namespace, used before, has no permissions and is listed in
/proc/net/unix for everyone). The process unlinks it at exit; the manager unlinks a
dead process's (see _manager). A reused pid never gets a dead process's mail: the
start time differs. A daemon thread drains the socket into an in-process queue, so
senders rarely meet a full kernel queue; the queue holds at most MAILBOX_LIMIT
messages, beyond which new ones are dropped. Senders wait at most SEND_TIMEOUT for
room and never block longer. Datagrams from another user (not root) are dropped
(SO_PASSCRED), should one ever reach us.
"""
from __future__ import annotations

import asyncio
import atexit
import collections
import errno
import os
import re
import socket
import struct
import threading
import time
import uuid
from typing import Any, NamedTuple

from . import _client, _procinfo
from ._client import node as _node
from ._table import ALL_NODES, BY_KEY, PG, REG, WITH_META
from ._types import Pid
from .codec import decode, encode_message, encode_name
from .errors import EncodingError, ManagerUnavailableError, UndefinedError
from ._client import table_of as _table

MAILBOX_LIMIT = int(os.environ.get("SYN_MP_MAILBOX_LIMIT", "100000"))
SEND_TIMEOUT = 0.1  # seconds a sender waits for room in a full mailbox before dropping
_MSG, _CALL, _REPLY = 0, 1, 2
_CRED = struct.Struct("iII")  # struct ucred: pid, uid, gid


class Caller(NamedTuple):
    """Who made a multi_call, and where its reply goes (`ref` and `token` name the call and the member)."""

    pid: Pid
    ref: str
    token: str
    address: bytes


class MultiCall:
    """What `receive()` returns for a multi_call: answer it with `.reply(value)`."""

    __slots__ = ("message", "caller", "meta")

    def __init__(self, message: Any, caller: Caller, meta: Any) -> None:
        self.message = message
        self.caller = caller
        self.meta = meta

    def reply(self, value: Any) -> None:
        multi_call_reply(self.caller, value)

    def __repr__(self) -> str:
        return f"MultiCall(message={self.message!r}, caller={self.caller.pid}, meta={self.meta!r})"


def _address(rdir: str, pid: int, start: int) -> str:
    """The mailbox of a local process (_config.Paths.mailbox), without a call per send. `rdir` is the
    node's Node.dir_prefix (or, in the manager, its runtime dir)."""
    return f"{rdir}/mb.{pid}.{start}"


_REPLY_NAME = re.compile(rb"rp\.[0-9]+\.[0-9]+\.[0-9a-f]{32}\Z")


def reply_path(rdir: str, name: bytes) -> str | None:
    """Where a multi_call's reply goes: `name` is the basename the caller sent (RDIR/rp.<pid>.<start>.<ref>);
    None for anything else, so a relayed target can never name a path outside the dir."""
    if not isinstance(name, bytes) or not _REPLY_NAME.match(name):
        return None
    return f"{rdir}/{name.decode()}"


def bind_private(sock: socket.socket, path: str) -> None:
    """Bind `sock` at `path` in the checked runtime dir, 0600; a leftover of our own is replaced."""
    try:
        sock.bind(path)
    except OSError as e:
        if e.errno != errno.EADDRINUSE:
            raise
        os.unlink(path)  # only our user can have made it (the dir is private): a stale one
        sock.bind(path)
    os.chmod(path, 0o600)  # bind follows the umask


class _Mailbox:
    """This process's mailbox: the bound socket, the drain thread and the queue."""

    def __init__(self) -> None:
        pid, start = _procinfo.self_identity()
        self.node = _node()
        self.owner = pid
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.node.check_dir(must_exist=True, fresh=True)  # never bind where another user could reach it
            self.address = _address(self.node.dir_prefix, pid, start)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            bind_private(self.sock, self.address)
        except OSError as e:
            self.sock.close()
            raise ManagerUnavailableError(f"cannot open this process's mailbox in {self.node.rdir}: {e}") from None
        self.queue: collections.deque[bytes] = collections.deque()
        self.cond = threading.Condition()
        self.dropped = 0
        self.waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []
        threading.Thread(target=self._drain, name="syn_mp-mailbox", daemon=True).start()

    def close(self) -> None:
        """Close the socket; its file goes too, unless it is a parent's (after fork)."""
        self.sock.close()
        if self.owner == os.getpid():
            try:
                os.unlink(self.address)
            except OSError:
                pass

    def _drain(self) -> None:
        while True:
            try:
                data = _recv_own_user(self.sock)
            except OSError:
                return  # closed (fork child) or gone
            if data is None:
                continue
            with self.cond:
                if len(self.queue) >= MAILBOX_LIMIT:
                    self.dropped += 1
                    continue
                self.queue.append(data)
                self.cond.notify()
                waiters, self.waiters = self.waiters, []
            for loop, fut in waiters:
                loop.call_soon_threadsafe(_wake_future, fut)

    def get(self, timeout: float | None) -> bytes:
        with self.cond:
            if not self.cond.wait_for(lambda: self.queue, timeout):
                raise TimeoutError("no message received within the timeout")
            return self.queue.popleft()


def _recv_own_user(sock: socket.socket) -> bytes | None:
    """One datagram, or None when another user (not root) sent it: only our own user may write to us."""
    data, anc, _, _ = sock.recvmsg(1 << 17, socket.CMSG_SPACE(_CRED.size))
    uid = next((_CRED.unpack(d[:_CRED.size])[1] for lvl, typ, d in anc
                if lvl == socket.SOL_SOCKET and typ == socket.SCM_CREDENTIALS), None)
    return data if uid in (os.getuid(), 0) else None


def _wake_future(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


_mbox: _Mailbox | None = None
_mbox_lock = threading.Lock()
_sender: socket.socket | None = None


def open_mailbox() -> _Mailbox:
    """This process's mailbox, opened on first use (register, join or receive)."""
    global _mbox
    mb = _mbox
    if mb is None or mb.node is not _client._node:
        with _mbox_lock:
            if _mbox is None or _mbox.node is not _node():
                if _mbox is not None:
                    _mbox.close()  # the process moved to another runtime dir (the CLI, tests)
                _mbox = _Mailbox()
            mb = _mbox
    return mb


def _forget_after_fork() -> None:
    global _mbox, _sender, _mbox_lock
    # a new lock: another thread of the parent may have held this one at the fork, and that thread
    # does not exist in the child to release it (its first register or receive would hang)
    _mbox_lock = threading.Lock()
    if _mbox is not None:
        _mbox.sock.close()  # the parent's mailbox is the parent's
    _mbox = _sender = None


os.register_at_fork(after_in_child=_forget_after_fork)


@atexit.register
def _close_at_exit() -> None:
    if _mbox is not None:
        _mbox.close()  # a killed process's file is the manager's to unlink


def _send_raw(address: str, data: bytes) -> bool:
    """One datagram to a mailbox; False when it is gone or stayed full for SEND_TIMEOUT."""
    global _sender
    s = _sender
    if s is None:
        s = _sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        s.settimeout(SEND_TIMEOUT)
    try:
        s.sendto(data, address)
        return True
    except (ConnectionRefusedError, FileNotFoundError, TimeoutError, BlockingIOError, OSError):
        return False


def _envelope(kind: int, *parts: bytes) -> bytes:
    out = [bytes([kind])]
    for p in parts:
        out.append(struct.pack("!I", len(p)))
        out.append(p)
    return b"".join(out)


def _unpack_envelope(data: bytes) -> tuple[int, list[bytes]]:
    kind, parts, off = data[0], [], 1
    while off < len(data):
        (n,) = struct.unpack_from("!I", data, off)
        parts.append(data[off + 4:off + 4 + n])
        off += 4 + n
    return kind, parts


def _deliver_entry(t: Any, node: int, pid: int, start: int, data: bytes) -> bool:
    """To a local mailbox directly; to another node's process through our manager (best effort)."""
    if node == 0:
        n = _node()
        if not n.dir_ok:
            n.check_dir(must_exist=True)  # once: never send our messages into a dir another user controls
        return _send_raw(_address(n.dir_prefix, pid, start), data)
    _node().relay(t.node_name(node), ["pid", pid, start], data)
    return True


# ------------------------------------------------------------------ API

def send(scope: str, name: Any, message: Any) -> Pid:
    """Send `message` to the process registered under `name`; UndefinedError if there is none."""
    t = _table(scope)
    data = _envelope(_MSG, encode_message(message))
    e = t.get(REG, encode_name(name))
    if e is None:
        raise UndefinedError(f"{name!r} is not registered in scope {scope!r}")
    _deliver_entry(t, e.node, e.pid, e.start, data)
    return Pid(t.node_name(e.node), e.pid)


def _publish(scope: str, group: Any, message: Any, node: int) -> int:
    t = _table(scope)
    data = _envelope(_MSG, encode_message(message))
    items = t.collect(BY_KEY, PG, encode_name(group), node=node, flags=0)
    for i in items:
        _deliver_entry(t, i.node, i.pid, i.start, data)
    return len(items)  # as Syn: every member the message was sent to, delivered or not


def publish(scope: str, group: Any, message: Any) -> int:
    """Send `message` to every member of `group`; returns how many members it was sent to."""
    return _publish(scope, group, message, ALL_NODES)


def local_publish(scope: str, group: Any, message: Any) -> int:
    return _publish(scope, group, message, 0)


def _from_mailbox(data: bytes) -> Any:
    kind, parts = _unpack_envelope(data)
    if kind == _MSG:
        return decode(parts[0])
    if kind == _CALL:
        ref, token, node, pid, address, meta, message = parts
        caller = Caller(Pid(node.decode(), int(pid)), ref.decode(), token.decode(), bytes(address))
        return MultiCall(decode(message), caller, decode(meta))
    raise EncodingError("unexpected datagram in a mailbox")


def receive(timeout: float | None = None) -> Any:
    """The calling process's next message (a MultiCall for a multi_call); TimeoutError after `timeout` s."""
    mb = open_mailbox()
    while True:
        data = mb.get(timeout)
        try:
            return _from_mailbox(data)
        except (EncodingError, ValueError, IndexError, struct.error):
            continue  # a malformed datagram from our own user: skip it


async def areceive(timeout: float | None = None) -> Any:
    """`receive` for asyncio: awaits the next message without blocking the loop."""
    mb = open_mailbox()
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    while True:
        with mb.cond:
            data = mb.queue.popleft() if mb.queue else None
            if data is None:
                fut = loop.create_future()
                mb.waiters.append((loop, fut))
        if data is not None:
            try:
                return _from_mailbox(data)
            except (EncodingError, ValueError, IndexError, struct.error):
                continue
        remaining = None if deadline is None else deadline - loop.time()
        if remaining is not None and remaining <= 0:
            raise TimeoutError("no message received within the timeout")
        try:
            await asyncio.wait_for(fut, remaining)
        except asyncio.TimeoutError:
            raise TimeoutError("no message received within the timeout") from None


def multi_call(scope: str, group: Any, message: Any, timeout: float = 5.0
               ) -> tuple[list[tuple[tuple[Pid, Any], Any]], list[tuple[Pid, Any]]]:
    """Ask every member of `group`; (replies, bad_replies) once all answered or `timeout` passed.

    A member that is gone, whose mailbox is full, or that does not answer in time is a bad reply.
    """
    t = _table(scope)
    payload = encode_message(message)
    pid, start = _procinfo.self_identity()
    me = Pid(t.node_name(0), pid)
    ref = uuid.uuid4().hex
    n = _node()
    reply_addr = f"rp.{pid}.{start}.{ref}".encode()  # in the private dir, like mailboxes (see reply_path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        n.check_dir(must_exist=True, fresh=True)
        reply_file = f"{n.dir_prefix}/{reply_addr.decode()}"
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        bind_private(sock, reply_file)  # bound before any request leaves: no reply can miss it
    except OSError as e:
        sock.close()
        raise ManagerUnavailableError(f"cannot open a reply socket in {n.rdir}: {e}") from None
    pending: dict[str, tuple[Pid, Any]] = {}
    bad: list[tuple[Pid, Any]] = []
    try:
        for n, i in enumerate(t.collect(BY_KEY, PG, encode_name(group), flags=WITH_META)):
            who = (Pid(t.node_name(i.node), i.pid), decode(i.meta))
            token = str(n)
            request = _envelope(_CALL, ref.encode(), token.encode(), me.node.encode(), str(me.pid).encode(),
                                reply_addr, i.meta, payload)
            if _deliver_entry(t, i.node, i.pid, i.start, request):
                pending[token] = who
            else:
                bad.append(who)
        replies: list[tuple[tuple[Pid, Any], Any]] = []
        deadline = time.monotonic() + timeout
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sock.settimeout(remaining)
            try:
                data = _recv_own_user(sock)
            except TimeoutError:
                break
            if data is None:
                continue
            try:
                kind, parts = _unpack_envelope(data)
                token = parts[1].decode()
                if kind != _REPLY or parts[0].decode() != ref or token not in pending:
                    continue
                replies.append((pending.pop(token), decode(parts[2])))
            except (EncodingError, ValueError, IndexError, struct.error):
                continue
        bad.extend(pending.values())
        replies.sort(key=lambda r: r[0][0])
        bad.sort(key=lambda b: b[0])
        return replies, bad
    finally:
        sock.close()
        try:
            os.unlink(reply_file)
        except OSError:
            pass


def multi_call_reply(caller: Caller, reply: Any) -> None:
    """Answer a multi_call (what `MultiCall.reply` does)."""
    if not isinstance(caller, Caller):
        raise TypeError("caller must be the .caller of a received syn_mp.MultiCall")
    data = _envelope(_REPLY, caller.ref.encode(), caller.token.encode(), encode_message(reply))
    n = _node()
    if caller.pid.node == n.node_name():
        if not n.dir_ok:
            n.check_dir(must_exist=True)
        path = reply_path(n.dir_prefix, caller.address)
        if path is not None:
            _send_raw(path, data)
    else:
        n.relay(caller.pid.node, ["addr", caller.address], data)


def dropped() -> int:
    """Messages this process's mailbox dropped because it was full."""
    return 0 if _mbox is None else _mbox.dropped
