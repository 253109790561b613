"""The exceptions of syn_mp.

Every error derives from :class:`SynError` and carries a ``reason`` string, the
same word Syn (Erlang) returns in ``{error, Reason}``, so callers can branch on
``exc.reason`` as well as on the class.
"""

from __future__ import annotations

__all__ = [
    "SynError",
    "TakenError",
    "NotAliveError",
    "NotSelfError",
    "UndefinedError",
    "NotInGroupError",
    "InvalidScopeError",
    "RemotePidError",
    "CapacityError",
    "EncodingError",
    "ManagerUnavailableError",
]


class SynError(Exception):
    """Base class of every syn_mp error; ``reason`` names the failure."""

    reason: str = "error"
    _default_message: str = "syn_mp error"

    def __init__(self, message: str | None = None) -> None:
        if message is None:
            message = self._default_message
        # One line: messages end up in logs and in the CLI's one-line stderr.
        message = " ".join(str(message).split())
        super().__init__(message)
        self.message: str = message
        self.reason = type(self).reason

    def __str__(self) -> str:
        return self.message


class TakenError(SynError):
    """The name is registered to another process, on some node."""

    reason = "taken"
    _default_message = "the name is already registered to another process"


class NotAliveError(SynError):
    """The pid is not a live process of this node."""

    reason = "not_alive"
    _default_message = "the process is not alive on this node"


class NotSelfError(SynError):
    """Strict mode: a write named a pid other than the caller's."""

    reason = "not_self"
    _default_message = "strict mode: a process may only write for itself"


class UndefinedError(SynError):
    """No such registration or membership."""

    reason = "undefined"
    _default_message = "no such registration or group membership"


class NotInGroupError(SynError):
    """``leave`` of a process that is not a member of the group."""

    reason = "not_in_group"
    _default_message = "the process is not a member of the group"


class InvalidScopeError(SynError):
    """The scope was not added on this node."""

    reason = "invalid_scope"
    _default_message = "the scope was not added on this node (call add_node_to_scopes first)"


class RemotePidError(SynError):
    """A write named a pid of another node."""

    reason = "remote_pid"
    _default_message = "only processes of this node can be written for"


class CapacityError(SynError):
    """The scope's shared-memory table is full; nothing was changed."""

    reason = "full"
    _default_message = "the scope's table is full"


class EncodingError(SynError, TypeError):
    """A name, meta or message has a type or size that can't be encoded."""

    reason = "encoding"
    _default_message = "the value can't be encoded"


class ManagerUnavailableError(SynError):
    """The node's manager can't be reached or started."""

    reason = "no_manager"
    _default_message = "the syn_mp manager can't be reached or started"
