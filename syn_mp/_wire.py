"""The cluster's wire format: authenticated, replay-proof datagrams and TCP frames.

Datagram:  MAGIC | version u8 | node len u8 | node | incarnation u64 | seq u64 | body | HMAC-SHA256
The HMAC (keyed with the cluster secret) covers everything before it. A receiver
keeps, per sender node, the newest incarnation (a counter the sender's manager
persists and raises at every start, see _incarnation) and a 1024-wide window of seen sequence numbers: an older incarnation, a seen or
too-old seq is a replay and is dropped; another incarnation (a restart, or an old
life replayed) is believed only once the node itself confirms it over TCP (see
ReplayGuard.reset). TCP frames are
length-prefixed and carry an HMAC-SHA256 over both sides' per-connection nonces and the
body (see _tcp), so they can't be replayed on another connection.
"""
from __future__ import annotations

import hashlib
import hmac
import struct
from typing import NamedTuple

MAGIC = b"SYNMP"
VERSION = 3  # 2: a relayed message names the receiving manager's incarnation (issue 13, finding 7);
#             3: a snapshot answer carries its entries as rows (csrc/rows.c), changes travel
#                several to a datagram (_changes)
MAC_LEN = 32
_HDR = struct.Struct("!QQ")
MAX_DATAGRAM = 1400  # fits a 1500-byte MTU with IP/UDP headers
# One seq counter covers a sender's multicast and its unicast datagrams, which arrive on two sockets
# read in turn: between them, order can slip by a socket queue's worth. A narrow window (64) drops
# authentic datagrams under load and counts them as replays.
WINDOW = 1024


def body_room(node: str) -> int:
    """The largest body a datagram of `node` can carry within MAX_DATAGRAM."""
    return MAX_DATAGRAM - len(MAGIC) - 2 - len(node.encode()) - _HDR.size - MAC_LEN


class Datagram(NamedTuple):
    node: str
    incarnation: int
    seq: int
    body: bytes


def mac(secret: bytes, data: bytes) -> bytes:
    return hmac.new(secret, data, hashlib.sha256).digest()


def seal(secret: bytes, node: str, incarnation: int, seq: int, body: bytes) -> bytes:
    nb = node.encode()
    head = MAGIC + bytes([VERSION, len(nb)]) + nb + _HDR.pack(incarnation, seq)
    data = head + body
    return data + mac(secret, data)


def open_datagram(secret: bytes, data: bytes) -> Datagram | None:
    """The datagram if it is well formed and authentic, else None."""
    if len(data) < len(MAGIC) + 2 + _HDR.size + MAC_LEN or not data.startswith(MAGIC):
        return None
    if data[len(MAGIC)] != VERSION:
        return None
    n = data[len(MAGIC) + 1]
    off = len(MAGIC) + 2
    if len(data) < off + n + _HDR.size + MAC_LEN:
        return None
    signed, tag = data[:-MAC_LEN], data[-MAC_LEN:]
    if not hmac.compare_digest(mac(secret, signed), tag):
        return None
    try:
        node = data[off:off + n].decode()
    except UnicodeDecodeError:
        return None
    inc, seq = _HDR.unpack_from(data, off + n)
    return Datagram(node, inc, seq, signed[off + n + _HDR.size:])


class ReplayGuard:
    """Per sender: its current incarnation and a window of seen sequence numbers."""

    def __init__(self) -> None:
        self._state: dict[str, tuple[int, int, int]] = {}  # node -> (incarnation, highest seq, bitmap)

    def accept(self, node: str, incarnation: int, seq: int) -> bool:
        st = self._state.get(node)
        if st is None:  # first contact: nothing to compare with (a snapshot is checked with the node)
            self._state[node] = (incarnation, seq, 1)
            return True
        inc, high, bits = st
        if incarnation != inc:
            return False  # an older life replayed, or a restart: believed once the node confirms (reset)
        if seq > high:
            shift = seq - high
            bits = ((bits << shift) | 1) & ((1 << WINDOW) - 1) if shift < WINDOW else 1
            self._state[node] = (inc, seq, bits)
            return True
        back = high - seq
        if back >= WINDOW or bits & (1 << back):
            return False
        self._state[node] = (inc, high, bits | (1 << back))
        return True

    def newest(self, node: str) -> int | None:
        """The incarnation accepted from node, if any."""
        st = self._state.get(node)
        return None if st is None else st[0]

    def reset(self, node: str, incarnation: int) -> None:
        """Take `incarnation` as node's current one (higher: it restarted; lower: its runtime dir lost
        the counter, e.g. a reboot), only once the node itself said so in an exchange fresh on both
        sides: a replayed datagram of an older life, lower or higher, never moves it."""
        self._state[node] = (incarnation, 0, 0)


_LEN = struct.Struct("!I")
MAX_FRAME = 64 << 20    # a snapshot answer
MAX_REQUEST = 1 << 20   # what a TCP server reads from an unauthenticated peer before checking its MAC


def frame(secret: bytes, nonce: bytes, body: bytes) -> bytes:
    return _LEN.pack(len(body)) + body + _frame_mac(secret, nonce, body)


def check_frame(secret: bytes, nonce: bytes, body: bytes, tag: bytes) -> bool:
    return hmac.compare_digest(_frame_mac(secret, nonce, body), tag)


def _frame_mac(secret: bytes, nonce: bytes, body: bytes) -> bytes:
    h = hmac.new(secret, nonce, hashlib.sha256)
    h.update(body)  # not nonce + body: a snapshot's body is megabytes, not copied again
    return h.digest()
