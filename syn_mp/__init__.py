"""syn_mp: Syn's process registry and process groups for OS processes, in shared memory.

The public API is what this module exports; everything in underscored modules is private.
"""
from __future__ import annotations

from ._types import Event, Pid
from .errors import (CapacityError, EncodingError, InvalidScopeError, ManagerUnavailableError,
                     NotAliveError, NotInGroupError, NotSelfError, RemotePidError, SynError,
                     TakenError, UndefinedError)
from .events import events
from .groups import (group_count, group_names, groups_of, is_local_member, is_member, join, leave,
                     local_group_count, local_group_names, local_member_count, local_members, member,
                     member_count, members, update_member)
from .mailbox import (MultiCall, areceive, local_publish, multi_call, multi_call_reply, publish, receive,
                      send)
from .registry import (claim_slot, local_registry_count, lookup, names_of, register, registry_count,
                       registry_entries, unregister, update_registry, whereis_name)
from .scopes import add_node_to_scopes, node_name, node_scopes, subcluster_nodes

__version__ = "0.1.0"

__all__ = [
    "Pid", "Event",
    "SynError", "TakenError", "NotAliveError", "NotSelfError", "UndefinedError", "NotInGroupError",
    "InvalidScopeError", "RemotePidError", "CapacityError", "EncodingError", "ManagerUnavailableError",
    "add_node_to_scopes", "node_scopes", "node_name", "subcluster_nodes",
    "register", "lookup", "whereis_name", "update_registry", "unregister", "registry_count",
    "local_registry_count", "registry_entries", "names_of", "claim_slot",
    "join", "leave", "members", "member", "is_member", "update_member", "member_count",
    "local_member_count", "local_members", "is_local_member", "group_count", "local_group_count",
    "group_names", "local_group_names", "groups_of",
    "send", "publish", "local_publish", "receive", "areceive", "multi_call", "multi_call_reply", "MultiCall",
    "events",
]
