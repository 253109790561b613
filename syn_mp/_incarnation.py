"""A node's incarnation: a number that grows with every start of its manager, without the clock.

Peers drop every datagram of an incarnation older than the newest they saw (replay protection),
so the incarnation must grow across restarts whatever the wall clock does (an NTP step, a VM
restored from a snapshot, a board without an RTC). It is a counter persisted in the runtime dir:
read, add one, write back (fsync, then an atomic rename) before the cluster speaks. Nothing here
reads a clock.

A runtime dir that loses the file (a tmpfs after a reboot, a pod's new emptyDir) starts again at
1, below what peers remember: the cluster then checks the lower incarnation with the node itself
over an authenticated TCP exchange (both sides pick a nonce) before it believes it (see
_cluster.Cluster._probe), so a replay never passes for a restart.
"""
from __future__ import annotations

import os

FILE = "incarnation"
_MAX = (1 << 64) - 1  # the datagram header's u64


def next_incarnation(rdir: str) -> int:
    """The persisted counter plus one, written back before it is returned (called by the manager,
    which holds the runtime dir's lock: no other writer)."""
    path = os.path.join(rdir, FILE)
    try:
        with open(path, "rb") as f:
            old = int(f.read(32).decode("ascii").strip() or 0)
    except (OSError, ValueError, UnicodeDecodeError):
        old = 0  # missing or garbled: peers verify a lower incarnation (see above)
    new = old + 1 if 0 <= old < _MAX else 1
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, f"{new}\n".encode())
        os.fsync(fd)  # a power cut must not hand the same number out twice
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return new
