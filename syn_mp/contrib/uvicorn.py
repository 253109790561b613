"""uvicorn: every worker of ``uvicorn --workers N`` gets a stable id, reclaimed by its replacement.

uvicorn has no post-fork hook, and its workers are *spawned* (each imports the app anew), so
the claim runs where every worker passes once: the ASGI lifespan startup. Wrap the app::

    # myapp.py
    from syn_mp.contrib.uvicorn import wrap, worker_id
    app = wrap(app)                    # a FastAPI / Starlette / plain ASGI app

    $ uvicorn myapp:app --workers 4

On ``lifespan.startup`` the wrapper claims the lowest free id in ``range(slots)`` as the name
``(SYN_MP_PREFIX, id)`` in ``SYN_MP_SCOPE`` (default ``web``), joins ``SYN_MP_GROUP`` with meta
``{"id": id}`` and sets ``SYN_MP_WORKER_ID``, then hands the startup to the app (which may or
may not speak the lifespan protocol). On ``lifespan.shutdown`` it gives the id back. If the
claim fails, the worker reports ``lifespan.startup.failed`` and uvicorn stops. The lifespan
must run: not ``--lifespan off``.

uvicorn does not tell its workers how many there are, so ``slots`` is, in this order: the
``slots=`` argument, ``SYN_MP_SLOTS``, ``WEB_CONCURRENCY`` (uvicorn's own default for
``--workers``), the ``--workers`` option of the ``uvicorn`` command line, 1 when that command
line has none; otherwise a SettingsError. A rolling restart (SIGHUP) runs N+1 workers for a
moment: set ``SYN_MP_SLOTS`` to N+1 if you use it, or the new worker waits for a free id.
"""
from __future__ import annotations

import sys
from typing import Any, Awaitable, Callable, MutableMapping, Optional, Sequence

from syn_mp.contrib import (Settings, SettingsError, claim_worker_id, release_worker_id, slots_from_env_or_command,
                            worker_id)

__all__ = ["wrap", "SynMpLifespan", "worker_id", "slots_from_environment"]

DEFAULT_SCOPE = "web"

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]


def slots_from_environment(argv: Optional[Sequence[str]] = None) -> int:
    """The number of uvicorn workers, from SYN_MP_SLOTS, WEB_CONCURRENCY or uvicorn's command line."""
    args = list(sys.argv if argv is None else argv)  # a spawned worker has its parent's argv
    n = slots_from_env_or_command("uvicorn", args)
    if n is not None:
        return n
    for k, a in enumerate(args):
        value = args[k + 1] if a == "--workers" and k + 1 < len(args) else (
            a.split("=", 1)[1] if a.startswith("--workers=") else None)
        if value is not None:
            if not value.isdigit() or int(value) <= 0:
                raise SettingsError(f"uvicorn --workers {value!r} is not a positive integer")
            return int(value)
    return 1


class SynMpLifespan:
    """An ASGI app that claims a worker id at lifespan startup and then runs ``app``."""

    # what the claim's meta names, and how the number of workers is found: another ASGI server's
    # wrapper (syn_mp.contrib.hypercorn) sets its own
    server = "uvicorn"

    def slots_from_environment(self) -> int:
        return slots_from_environment()

    def __init__(self, app: ASGIApp, *, scope: Optional[str] = None, prefix: Optional[str] = None,
                 group: Optional[str] = "", slots: Optional[int] = None) -> None:
        if not callable(app):
            raise TypeError(f"wrap() needs an ASGI app, not {type(app).__name__}")
        env = Settings.from_env(DEFAULT_SCOPE)
        self.app = app
        # the settings are checked now, at import of the app: a bad one fails loudly and early
        self.settings = Settings(scope or env.scope, prefix or env.prefix,
                                 env.group if group == "" else group, env.slots if slots is None else slots,
                                 env.claim_timeout)

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope.get("type") != "lifespan":
            await self.app(scope, receive, send)
            return
        startup = await receive()
        if startup.get("type") != "lifespan.startup":  # not the protocol: let the app deal with it
            await self.app(scope, _replay(startup, receive), send)
            return
        try:
            s = self.settings.with_slots(self.settings.slots or self.slots_from_environment())
            claim_worker_id(s, meta={"server": self.server})
        except Exception as e:
            await send({"type": "lifespan.startup.failed", "message": f"syn_mp: {e}"})
            return
        sent: list[str] = []

        async def send_app(message: Message) -> None:
            sent.append(message.get("type", ""))
            await send(message)

        async def receive_app() -> Message:
            message = await pending()
            if message.get("type") == "lifespan.shutdown":
                release_worker_id()
            return message
        pending = _replay(startup, receive)
        try:
            await self.app(scope, receive_app, send_app)
        except Exception:
            if sent:  # the app speaks the lifespan protocol and failed in it
                release_worker_id()
                raise
        except BaseException:  # cancelled
            release_worker_id()
            raise
        if sent:
            return
        # the app does not speak the lifespan protocol (it raised, or returned without a word,
        # which uvicorn calls "unsupported"): speak it for the app
        await send({"type": "lifespan.startup.complete"})
        while (await receive()).get("type") != "lifespan.shutdown":
            pass
        release_worker_id()
        await send({"type": "lifespan.shutdown.complete"})


def _replay(first: Message, receive: Receive) -> Receive:
    """A receive that returns `first` once, then what `receive` returns."""
    queue = [first]

    async def again() -> Message:
        return queue.pop() if queue else await receive()
    return again


def wrap(app: ASGIApp, *, scope: Optional[str] = None, prefix: Optional[str] = None,
         group: Optional[str] = "", slots: Optional[int] = None) -> SynMpLifespan:
    """Wrap an ASGI app so each uvicorn worker claims a stable id at startup.

    Arguments override SYN_MP_SCOPE (default "web"), SYN_MP_PREFIX, SYN_MP_GROUP (None: no group)
    and the number of slots (see :func:`slots_from_environment`).
    """
    return SynMpLifespan(app, scope=scope, prefix=prefix, group=group, slots=slots)
