"""Scopes and nodes: attaching this process to a node's scopes."""
from __future__ import annotations

from typing import Iterable

from . import _config
from ._client import node as _node
from .errors import ManagerUnavailableError


def add_node_to_scopes(scopes: Iterable[str]) -> None:
    """Attach this process to `scopes` on this node, creating them (and the manager) if needed."""
    if isinstance(scopes, (str, bytes)):
        raise TypeError("add_node_to_scopes takes a list of scope names, not a single string")
    names = [_config.check_scope(s) for s in scopes]
    n = _node()
    n.ensure_manager()
    if names:
        n.request("add_scopes", scopes=names)
    for s in names:
        n.table(s)


def node_scopes() -> list[str]:
    """The scopes this node has (whether or not this process used them yet)."""
    return sorted(_node().state().get("scopes", []))


def node_name() -> str:
    return _node().node_name()


def subcluster_nodes(scope: str) -> list[str]:
    """The other nodes that currently share `scope` (as this node's manager sees them)."""
    n = _node()
    n.table(scope)  # InvalidScopeError for a scope this node lacks
    try:
        return list(n.request("nodes", scope=scope)["nodes"])
    except ManagerUnavailableError:  # no manager: no cluster to know of
        return []
