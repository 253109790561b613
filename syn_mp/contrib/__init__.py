"""Stable worker ids for the servers and pools that run Python workers.

Each integration (``syn_mp.contrib.gunicorn``, ``.uvicorn``, ``.celery``, ``.pool``) calls
:func:`claim_worker_id` once in every worker process: it adds the node to the scope, claims
the lowest free id with :func:`syn_mp.claim_slot` (registering the name ``(prefix, id)``),
joins a group with the meta ``{"id": id}``, and sets ``SYN_MP_WORKER_ID`` in the worker's
environment. A worker that replaces a dead one gets the dead one's id: the node's manager
frees the id within milliseconds of the death, and ``claim_slot`` frees it itself if the
manager has not yet.

Settings come from arguments or, for the server hooks, from the environment
(:meth:`Settings.from_env`): ``SYN_MP_SCOPE``, ``SYN_MP_PREFIX`` (default ``worker``),
``SYN_MP_GROUP`` (default ``workers``; empty: join no group), ``SYN_MP_SLOTS`` (default: the
server's number of workers) and ``SYN_MP_CLAIM_TIMEOUT`` (seconds to wait for a free id,
default 10).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple, Optional, Sequence

import syn_mp
from syn_mp import _config

__all__ = ["ENV_WORKER_ID", "Settings", "SettingsError", "Claim", "claim_worker_id", "release_worker_id",
           "worker_id", "current_claim"]

ENV_WORKER_ID = "SYN_MP_WORKER_ID"
DEFAULT_PREFIX = "worker"
DEFAULT_GROUP = "workers"
DEFAULT_CLAIM_TIMEOUT = 10.0
_RETRY_INTERVAL = 0.02


class SettingsError(ValueError):
    """A bad setting of an integration (an argument or a SYN_MP_* variable); says which and why."""


@dataclass(frozen=True)
class Settings:
    """What a worker claims: ``(prefix, id)`` in ``scope`` for an id in ``range(slots)``, and ``group``."""

    scope: str
    prefix: str = DEFAULT_PREFIX
    group: Optional[str] = DEFAULT_GROUP
    slots: Optional[int] = None  # None: the server's number of workers
    claim_timeout: float = DEFAULT_CLAIM_TIMEOUT

    def __post_init__(self) -> None:
        try:
            _config.check_scope(self.scope)
        except ValueError as e:
            raise SettingsError(f"scope (SYN_MP_SCOPE): {e}") from None
        if not isinstance(self.prefix, str) or not self.prefix:
            raise SettingsError(f"prefix (SYN_MP_PREFIX) must be a non-empty string, not {self.prefix!r}")
        if self.group is not None and (not isinstance(self.group, str) or not self.group):
            raise SettingsError(f"group (SYN_MP_GROUP) must be a non-empty string or None, not {self.group!r}")
        if self.slots is not None and (isinstance(self.slots, bool) or not isinstance(self.slots, int)
                                       or self.slots <= 0):
            raise SettingsError(f"slots (SYN_MP_SLOTS) must be a positive integer, not {self.slots!r}")
        if (isinstance(self.claim_timeout, bool) or not isinstance(self.claim_timeout, (int, float))
                or not self.claim_timeout >= 0):
            raise SettingsError(f"claim_timeout (SYN_MP_CLAIM_TIMEOUT) must be a number >= 0, "
                                f"not {self.claim_timeout!r}")

    @classmethod
    def from_env(cls, default_scope: str, environ: Optional[Mapping[str, str]] = None) -> "Settings":
        """Settings from SYN_MP_SCOPE, SYN_MP_PREFIX, SYN_MP_GROUP, SYN_MP_SLOTS, SYN_MP_CLAIM_TIMEOUT."""
        env = os.environ if environ is None else environ
        group = env.get("SYN_MP_GROUP", DEFAULT_GROUP)
        return cls(scope=env.get("SYN_MP_SCOPE") or default_scope,
                   prefix=env.get("SYN_MP_PREFIX") or DEFAULT_PREFIX,
                   group=group or None,
                   slots=_env_number(env, "SYN_MP_SLOTS", int),
                   claim_timeout=_env_number(env, "SYN_MP_CLAIM_TIMEOUT", float, DEFAULT_CLAIM_TIMEOUT))

    def with_slots(self, slots: int) -> "Settings":
        """These settings, with ``slots`` filled in when the environment left it unset."""
        if self.slots is not None:
            return self
        return Settings(self.scope, self.prefix, self.group, slots, self.claim_timeout)


def _env_number(env: Mapping[str, str], var: str, kind: type, default: Any = None) -> Any:
    raw = env.get(var, "").strip()
    if not raw:
        return default
    try:
        return kind(raw)
    except ValueError:
        raise SettingsError(f"{var}={raw!r} is not a valid {kind.__name__}") from None


class Claim(NamedTuple):
    """The id this process holds: the name ``(prefix, id)`` in ``scope``, and its group."""

    scope: str
    prefix: str
    id: int
    group: Optional[str]
    pid: int


_claim: Optional[Claim] = None


def slots_from_env_or_command(server: str, argv: Sequence[str]) -> Optional[int]:
    """A web server's worker count from SYN_MP_SLOTS or WEB_CONCURRENCY; None when neither is set
    and the process was started by `server`'s command (its caller reads that command line then).
    SettingsError when a variable is not a positive integer, or the command is another one."""
    for var in ("SYN_MP_SLOTS", "WEB_CONCURRENCY"):
        raw = os.environ.get(var, "").strip()
        if raw:
            if not raw.isdigit() or int(raw) <= 0:
                raise SettingsError(f"{var}={raw!r} is not a positive integer")
            return int(raw)
    prog = os.path.basename(argv[0]) if argv else ""
    if not (prog.startswith(server) or argv[0:1] and argv[0].endswith(os.path.join(server, "__main__.py"))):
        raise SettingsError(f"can't tell how many workers {server} runs (not started by the {server} command): "
                            "set SYN_MP_SLOTS or pass wrap(app, slots=N)")
    return None


def claim_worker_id(settings: Settings, meta: Optional[Mapping[str, Any]] = None) -> int:
    """Claim a stable id for the calling process, join the group, and return the id.

    Waits up to ``settings.claim_timeout`` seconds for a free id (during a rolling restart the
    old worker may still hold it), then raises :class:`syn_mp.CapacityError`. ``meta`` (a dict)
    is the registration's meta; the group membership's meta is ``{"id": id, **meta}``.
    Calling it again in the same process returns the id it already holds.
    """
    global _claim
    if settings.slots is None:
        raise SettingsError("the number of slots is unknown: set SYN_MP_SLOTS (or pass slots=)")
    if meta is not None and not isinstance(meta, Mapping):
        raise SettingsError(f"meta must be a dict, not {type(meta).__name__}")
    pid = os.getpid()
    if _claim is not None and _claim.pid == pid:
        return _claim.id
    extra = dict(meta or {})
    syn_mp.add_node_to_scopes([settings.scope])
    deadline = time.monotonic() + settings.claim_timeout
    while True:
        try:
            i = syn_mp.claim_slot(settings.scope, settings.prefix, settings.slots, meta=extra or None)
            break
        except syn_mp.CapacityError:
            if time.monotonic() >= deadline:
                raise syn_mp.CapacityError(
                    f"no free id ({settings.prefix!r}, 0..{settings.slots - 1}) in scope {settings.scope!r} "
                    f"within {settings.claim_timeout}s: more workers run than SYN_MP_SLOTS={settings.slots}"
                ) from None
            time.sleep(_RETRY_INTERVAL)
    if settings.group is not None:
        try:
            syn_mp.join(settings.scope, settings.group, meta={"id": i, **extra})
        except BaseException:
            syn_mp.unregister(settings.scope, (settings.prefix, i))  # a failed claim changes nothing
            raise
    _claim = Claim(settings.scope, settings.prefix, i, settings.group, pid)
    os.environ[ENV_WORKER_ID] = str(i)
    return i


def release_worker_id() -> None:
    """Give the id back (unregister, leave the group) with reason "normal"; no-op if none is held.

    Not needed when a worker dies: its node's manager frees the id (reason "process_exit").
    """
    global _claim
    c = _claim
    if c is None or c.pid != os.getpid():
        return
    _claim = None
    if os.environ.get(ENV_WORKER_ID) == str(c.id):
        del os.environ[ENV_WORKER_ID]
    gone = (syn_mp.UndefinedError, syn_mp.NotInGroupError, syn_mp.InvalidScopeError)
    if c.group is not None:
        try:
            syn_mp.leave(c.scope, c.group)
        except gone:
            pass
    try:
        syn_mp.unregister(c.scope, (c.prefix, c.id))
    except gone:
        pass


def current_claim() -> Optional[Claim]:
    """What this process holds, or None (a child forked from a worker holds nothing)."""
    c = _claim
    return c if c is not None and c.pid == os.getpid() else None


def worker_id() -> int:
    """The stable id of the calling worker; RuntimeError if this process claimed none."""
    c = current_claim()
    if c is None:
        raise RuntimeError("this process holds no worker id: it is not a worker started with a "
                           "syn_mp.contrib hook or pool initializer (or its claim was released)")
    return c.id
