"""The cluster's TCP exchanges: one authenticated request (and answer) per connection.

    server -> client   nonce_s (16 bytes)
    client -> server   nonce_c (16 bytes) | frame(MAC over "C" + nonce_s + nonce_c + request)
    server -> client   frame(MAC over "S" + nonce_s + nonce_c + answer)        (if there is one)

Both sides pick a nonce, so neither a request nor an answer recorded on another connection is
accepted again (a stale snapshot replayed to a restarted node, whose replay guard is empty, is
refused: its MAC covers a nonce_c it never sent). The direction letter keeps a request from
passing for an answer.

The server bounds what someone without the secret can hold: at most MAX_PENDING connections that
have not authenticated yet (more are closed at once), AUTH_DEADLINE seconds to authenticate, and
at most _wire.MAX_REQUEST bytes read before the MAC is checked.
"""
from __future__ import annotations

import asyncio
import os
import struct
from typing import Awaitable, Callable

from . import _wire

NONCE = 16
AUTH_DEADLINE = 2.0     # seconds an unauthenticated connection may take to send its request
MAX_PENDING = 16        # unauthenticated connections held at once (each <= MAX_REQUEST buffered)


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
                 stats: dict[str, int]) -> None:
        self.secret = secret
        self.handle = handle
        self.stats = stats
        self.pending = 0  # connections not authenticated yet

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.pending >= MAX_PENDING:
            self.stats["tcp_refused"] = self.stats.get("tcp_refused", 0) + 1
            writer.transport.abort()  # no buffer, no wait: the slot is for authentic peers
            return
        self.pending += 1
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
            self.stats["tcp_timeouts"] = self.stats.get("tcp_timeouts", 0) + 1
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError, TypeError):
            pass
        finally:
            if not authed:  # a wrong MAC, garbage, a hang-up or the deadline: counted forged
                self.pending -= 1
                self.stats["forged"] += 1
            writer.close()
