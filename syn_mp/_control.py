"""The manager's control protocol: one JSON object per line over a Unix stream socket."""
from __future__ import annotations

import json
import socket
from typing import Any

MAX_LINE = 1 << 20


def request(path: str, op: str, timeout: float = 10.0, **args: Any) -> dict[str, Any]:
    """Send one request and return the manager's reply; OSError if it can't be reached."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
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
