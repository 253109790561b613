"""hypercorn: every worker of ``hypercorn --workers N`` gets a stable id ``0 .. N-1``.

hypercorn has no post-fork hook either, and spawns its workers (each imports the app anew): as for
uvicorn, the claim runs at the ASGI lifespan startup, which every worker passes once before it
serves (see syn_mp.contrib.uvicorn, whose wrapper this is, with hypercorn's command line)::

    # myapp.py
    from syn_mp.contrib.hypercorn import wrap, worker_id
    app = wrap(app)                    # a Quart / FastAPI / Starlette / plain ASGI app

    $ hypercorn myapp:app --workers 4

The number of slots is, in this order: ``slots=``, ``SYN_MP_SLOTS``, ``WEB_CONCURRENCY``, the
``-w``/``--workers`` option of the ``hypercorn`` command line (a spawned worker sees its parent's
``sys.argv``), 1 for a ``hypercorn`` command line without it. Workers set in a config file
(``-c``) are not read: set ``SYN_MP_SLOTS``. hypercorn restarts a worker that exits cleanly (its
id is given back, the new one claims it); a worker that dies of a signal makes hypercorn stop them
all (hypercorn's own choice), and the ids go with them.
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence

from syn_mp.contrib import SettingsError, slots_from_env_or_command, worker_id
from syn_mp.contrib.uvicorn import ASGIApp, SynMpLifespan

__all__ = ["wrap", "HypercornLifespan", "worker_id", "slots_from_environment"]


def slots_from_environment(argv: Optional[Sequence[str]] = None) -> int:
    """The number of hypercorn workers, from SYN_MP_SLOTS, WEB_CONCURRENCY or hypercorn's command line."""
    args = list(sys.argv if argv is None else argv)
    n = slots_from_env_or_command("hypercorn", args)
    if n is not None:
        return n
    value = None
    for k, a in enumerate(args[1:], 1):  # the last one given wins, as argparse does
        if a in ("-w", "--workers") and k + 1 < len(args):
            value = args[k + 1]
        elif a.startswith("--workers="):
            value = a.split("=", 1)[1]
        elif a.startswith("-w") and len(a) > 2 and not a.startswith("--"):
            value = a[2:]
    if value is None:
        return 1
    if not value.isdigit() or int(value) <= 0:
        raise SettingsError(f"hypercorn --workers {value!r} is not a positive integer")
    return int(value)


class HypercornLifespan(SynMpLifespan):
    """An ASGI app that claims a worker id at lifespan startup and then runs ``app``."""

    server = "hypercorn"

    def slots_from_environment(self) -> int:
        return slots_from_environment()


def wrap(app: ASGIApp, *, scope: Optional[str] = None, prefix: Optional[str] = None,
         group: Optional[str] = "", slots: Optional[int] = None) -> HypercornLifespan:
    """Wrap an ASGI app so each hypercorn worker claims a stable id at startup.

    Arguments override SYN_MP_SCOPE (default "web"), SYN_MP_PREFIX, SYN_MP_GROUP (None: no group)
    and the number of slots (see :func:`slots_from_environment`).
    """
    return HypercornLifespan(app, scope=scope, prefix=prefix, group=group, slots=slots)
