"""The cluster's TCP exchanges: one authenticated request (and answer) per connection.

    server -> client   nonce_s (16 bytes)
    client -> server   nonce_c (16 bytes) | frame(MAC over "C" + nonce_s + nonce_c + request)
    server -> client   frame(MAC over "S" + nonce_s + nonce_c + answer)        (if there is one)

Both sides pick a nonce, so neither a request nor an answer recorded on another connection is
accepted again (a stale snapshot replayed to a restarted node, whose replay guard is empty, is
refused: its MAC covers a nonce_c it never sent). The direction letter keeps a request from
passing for an answer.

The server bounds what someone without the secret can hold: at most MAX_PENDING connections that
have not authenticated yet (more are reset at once), AUTH_DEADLINE seconds to authenticate, and
at most _wire.MAX_REQUEST bytes read before the MAC is checked. It accepts connections itself
(`Server.listen`), not through asyncio's server: when the process is out of descriptors it stops
accepting for ACCEPT_PAUSE seconds (the connections wait in the kernel's backlog) and says so
once, where asyncio would log a traceback per failed accept.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import struct
from typing import Awaitable, Callable

from . import _wire
from ._health import Incidents

log = logging.getLogger("syn_mp.cluster")

NONCE = 16
AUTH_DEADLINE = 2.0     # seconds an unauthenticated connection may take to send its request
MAX_PENDING = 16        # unauthenticated connections held at once (each <= MAX_REQUEST buffered)
ACCEPT_PAUSE = 0.5      # seconds without accepting after the process ran out of descriptors
ACCEPT_BATCH = 32       # connections accepted per wake-up (then the loop serves others)
_OUT_OF_FDS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def _key(side: bytes, nonce_s: bytes, nonce_c: bytes) -> bytes:
    return side + nonce_s + nonce_c


async def read_frame(reader: asyncio.StreamReader, secret: bytes, key: bytes,
                     limit: int = _wire.MAX_FRAME, started: Callable[[], None] | None = None) -> bytes | None:
    """A frame's body if its MAC (over key + body) holds, else None; a length over `limit` is
    refused before a byte of the body is read. `started` is called once the length is in."""
    (n,) = struct.unpack("!I", await reader.readexactly(4))
    if started is not None:
        started()
    if n > limit:
        return None
    body = await reader.readexactly(n)
    tag = await reader.readexactly(_wire.MAC_LEN)
    return body if _wire.check_frame(secret, key, body, tag) else None


async def request(host: str, port: int, secret: bytes, body: bytes, *, answer: bool,
                  timeout: float, started: Callable[[], None] | None = None) -> bytes | None:
    """Send one request; with `answer`, return the authentic answer (None if it is not). Every
    step, connecting included, fits in `timeout` seconds (asyncio.TimeoutError past it)."""
    async def go() -> bytes | None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            nonce_s = await reader.readexactly(NONCE)
            nonce_c = os.urandom(NONCE)
            writer.write(nonce_c + _wire.frame(secret, _key(b"C", nonce_s, nonce_c), body))
            await writer.drain()
            if not answer:
                return b""
            return await read_frame(reader, secret, _key(b"S", nonce_s, nonce_c), started=started)
        finally:
            writer.close()
    return await asyncio.wait_for(go(), timeout)


class Server:
    """Serves requests with `handle(body) -> answer bytes or None`; counts what it refuses."""

    def __init__(self, secret: bytes, handle: Callable[[bytes], Awaitable[bytes | None]],
                 stats: dict[str, int], incidents: Incidents | None = None) -> None:
        self.secret = secret
        self.handle = handle
        self.stats = stats
        self.pending = 0  # connections not authenticated yet
        self.incidents = incidents or Incidents(log)
        self._sock: socket.socket | None = None
        self._resume: asyncio.TimerHandle | None = None
        # "forged" too: the etcd transport's counters had none, and a refused connection raised KeyError
        for k in ("forged", "tcp_refused", "tcp_timeouts", "tcp_accept_paused"):
            stats.setdefault(k, 0)

    # ------------------------------------------------------------------ accepting

    def listen(self, host: str, port: int, backlog: int = 128) -> None:
        """Accept connections on host:port from the running loop (until close())."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(backlog)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._accept)

    def close(self) -> None:
        if self._resume is not None:
            self._resume.cancel()
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def _accept(self) -> None:
        assert self._sock is not None
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in _OUT_OF_FDS:
                    self._pause(e)
                    return
                continue  # ECONNABORTED and the like: that connection's business
            if self.pending >= MAX_PENDING:
                self.stats["tcp_refused"] += 1
                _reset(conn)  # no buffer, no wait: the slots are for authentic peers
                continue
            self.pending += 1
            asyncio.get_running_loop().create_task(self._serve_socket(conn))

    def _pause(self, err: OSError) -> None:
        """Out of descriptors: accept nothing for ACCEPT_PAUSE s (the backlog waits in the kernel)."""
        self.stats["tcp_accept_paused"] += 1
        self.incidents.report("cluster TCP accept paused, out of descriptors", err, logging.WARNING)
        loop = asyncio.get_running_loop()
        assert self._sock is not None
        loop.remove_reader(self._sock.fileno())
        self._resume = loop.call_later(ACCEPT_PAUSE, self._resume_accepting)

    def _resume_accepting(self) -> None:
        self._resume = None
        if self._sock is not None:
            asyncio.get_running_loop().add_reader(self._sock.fileno(), self._accept)

    async def _serve_socket(self, conn: socket.socket) -> None:
        try:
            reader, writer = await asyncio.open_connection(sock=conn)
        except OSError:
            self.pending -= 1
            self.stats["forged"] += 1
            conn.close()
            return
        await self._serve(reader, writer)

    # ------------------------------------------------------------------ one connection

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection accepted by someone else (asyncio.start_server)."""
        if self.pending >= MAX_PENDING:
            self.stats["tcp_refused"] += 1
            writer.transport.abort()
            return
        self.pending += 1
        await self._serve(reader, writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A connection already counted in `pending`."""
        authed = False
        nonce_s = os.urandom(NONCE)
        try:
            writer.write(nonce_s)
            await writer.drain()

            async def auth() -> bytes | None:
                nonce_c = await reader.readexactly(NONCE)
                body = await read_frame(reader, self.secret, _key(b"C", nonce_s, nonce_c), _wire.MAX_REQUEST)
                return None if body is None else nonce_c + body
            got = await asyncio.wait_for(auth(), AUTH_DEADLINE)
            if got is None:
                return
            authed = True
            self.pending -= 1
            nonce_c, body = got[:NONCE], got[NONCE:]
            out = await self.handle(body)
            if out is not None:
                writer.write(_wire.frame(self.secret, _key(b"S", nonce_s, nonce_c), out))
                await writer.drain()
        except asyncio.TimeoutError:
            self.stats["tcp_timeouts"] += 1
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError, TypeError):
            pass
        finally:
            if not authed:  # a wrong MAC, garbage, a hang-up or the deadline: counted forged
                self.pending -= 1
                self.stats["forged"] += 1
            writer.close()


def _reset(conn: socket.socket) -> None:
    """Close with a reset (SO_LINGER 0): nothing kept for the peer, no TIME_WAIT here."""
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    conn.close()
