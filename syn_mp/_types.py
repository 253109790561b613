"""The named tuples the public API returns."""
from __future__ import annotations

from typing import Any, NamedTuple


class Pid(NamedTuple):
    """A process: the node it runs on and its OS pid."""

    node: str
    pid: int


class Event(NamedTuple):
    """One change in a scope on this node (see `syn_mp.events`)."""

    kind: str
    scope: str
    key: Any
    pid: Pid
    meta: Any
    reason: Any
