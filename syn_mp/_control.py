"""The manager's control protocol: one JSON object per line over a Unix stream socket."""
from __future__ import annotations

import json
import os
import socket
import struct
from typing import Any

MAX_LINE = 1 << 20
_CRED = struct.Struct("iII")  # struct ucred: pid, uid, gid


class WrongPeer(PermissionError):
    """The socket is served by another user: nothing was sent to it."""


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a connected Unix stream socket (SO_PEERCRED)."""
    return _CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))[1]


def request(path: str, op: str, timeout: float = 10.0, owner: int | None = None, **args: Any) -> dict[str, Any]:
    """Send one request and return the manager's reply; OSError if it can't be reached, WrongPeer
    (before a byte is sent) if the socket is not served by `owner` (default: our user) or root."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        uid = peer_uid(s)
        if owner is None:
            owner = os.geteuid()
        if uid not in (owner, 0):
            raise WrongPeer(f"{path} is served by uid {uid}, not by the node's user (uid {owner})")
        s.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("manager closed the connection")
            buf += chunk
            if len(buf) > MAX_LINE:
                raise ConnectionError("reply too long")
    return json.loads(buf)


def encode_line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode() + b"\n"
