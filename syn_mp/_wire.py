"""The cluster's wire format: authenticated, replay-proof datagrams and TCP frames.

Datagram:  MAGIC | version u8 | node len u8 | node | incarnation u64 | seq u64 | body | MAC
The MAC (keyed BLAKE2b-256, RFC 7693's MAC mode, its key derived from the cluster secret) covers
everything before it: every node computes one per change it sends or receives, and BLAKE2b's
one call costs a third of HMAC-SHA256's through OpenSSL on a cold cache (the latency of a change
across 8 nodes on 2 cores). A receiver
keeps, per sender node, the newest incarnation (a counter the sender's manager
persists and raises at every start, see _incarnation) and a 1024-wide window of seen sequence numbers: an older incarnation, a seen or
too-old seq is a replay and is dropped; another incarnation (a restart, or an old
life replayed) is believed only once the node itself confirms it over TCP (see
ReplayGuard.reset). TCP frames are
length-prefixed and carry an HMAC-SHA256 over both sides' per-connection nonces and the
body (see _tcp), so they can't be replayed on another connection.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import struct
from typing import NamedTuple

MAGIC = b"SYNMP"
VERSION = 3  # 2: a relayed message names the receiving manager's incarnation (issue 13, finding 7);
#             3: a snapshot answer carries its entries as rows (csrc/rows.c), changes travel
#                several to a datagram (_changes), datagrams are MACed with keyed BLAKE2b
MAC_LEN = 32
_PREFIX = MAGIC + bytes([VERSION])
_HDR = struct.Struct("!QQ")
_blake2b = hashlib.blake2b
_tuple = tuple.__new__  # a NamedTuple without its Python-level __new__
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


@functools.lru_cache(maxsize=16)
def datagram_key(secret: bytes) -> bytes:
    """The datagrams' MAC key, derived from the cluster secret (a transport keeps it)."""
    # BLAKE2b takes a key of at most 64 bytes: a secret of any length, hashed (it is high-entropy)
    return hashlib.blake2b(secret, digest_size=32, person=b"syn_mp datagram").digest()


def seal(secret: bytes, node: str, incarnation: int, seq: int, body: bytes) -> bytes:
    return seal_keyed(datagram_key(secret), node, incarnation, seq, body)


def open_datagram(secret: bytes, data: bytes) -> Datagram | None:
    """The datagram if it is well formed and authentic, else None."""
    return open_keyed(datagram_key(secret), data)


def seal_keyed(key: bytes, node: str, incarnation: int, seq: int, body: bytes) -> bytes:
    nb = node.encode()
    data = _PREFIX + bytes([len(nb)]) + nb + _HDR.pack(incarnation, seq) + body
    return data + _blake2b(data, key=key, digest_size=MAC_LEN).digest()


def open_keyed(key: bytes, data: bytes) -> Datagram | None:
    """open_datagram() with the key: every node runs it on every change it receives, each step of
    it costing microseconds on a cold cache, so it takes as few as it can."""
    if data[:len(_PREFIX)] != _PREFIX:
        return None
    off = len(_PREFIX) + 1 + data[len(_PREFIX)] if len(data) > len(_PREFIX) else len(data)
    end = len(data) - MAC_LEN
    if end < off + _HDR.size or not hmac.compare_digest(_blake2b(data[:end], key=key, digest_size=MAC_LEN).digest(),
                                                        data[end:]):
        return None
    try:
        node = data[len(_PREFIX) + 1:off].decode()
    except UnicodeDecodeError:
        return None
    inc, seq = _HDR.unpack_from(data, off)
    return _tuple(Datagram, (node, inc, seq, data[off + _HDR.size:end]))


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
