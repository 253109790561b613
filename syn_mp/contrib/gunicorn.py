"""gunicorn: every worker gets a stable id; a replacement worker gets the id of the one that died.

Use the module as gunicorn's config::

    gunicorn -c python:syn_mp.contrib.gunicorn --workers 4 myapp:app

or import its hooks into your own ``gunicorn.conf.py``::

    from syn_mp.contrib.gunicorn import on_starting, post_fork, worker_exit

(from a ``post_fork`` of your own, call ``syn_mp.contrib.gunicorn.post_fork(server, worker)``).

- ``on_starting`` (master): checks the settings, so a bad one stops gunicorn at once.
- ``post_fork`` (each worker, before it loads the app): claims the lowest free id in
  ``range(workers)`` as the name ``(SYN_MP_PREFIX, id)`` in ``SYN_MP_SCOPE``, joins
  ``SYN_MP_GROUP`` with meta ``{"id": id}`` and sets ``SYN_MP_WORKER_ID``.
- ``worker_exit`` (a worker leaving cleanly): gives the id back (reason ``"normal"``).

No ``child_exit`` is needed: when a worker dies the node's manager frees its id within
milliseconds (reason ``"process_exit"``), before the master forks its replacement.
Settings: ``SYN_MP_SCOPE`` (default ``web``), ``SYN_MP_PREFIX`` (``worker``), ``SYN_MP_GROUP``
(``workers``; empty for none), ``SYN_MP_SLOTS`` (default: gunicorn's current number of
workers), ``SYN_MP_CLAIM_TIMEOUT`` (10 s). gunicorn reads every module-level name of a config
module that matches one of its settings, so this module defines only the three hooks and
names no setting of gunicorn's.
"""
from __future__ import annotations

import os as _os
from typing import Any as _Any

from syn_mp.contrib import Settings as _Settings
from syn_mp.contrib import claim_worker_id as _claim
from syn_mp.contrib import release_worker_id as _release
from syn_mp.contrib import worker_id

__all__ = ["on_starting", "post_fork", "worker_exit", "worker_id", "settings"]

DEFAULT_SCOPE = "web"


def settings() -> _Settings:
    """The settings from the environment (SYN_MP_SCOPE, default "web"); SettingsError if one is bad."""
    return _Settings.from_env(DEFAULT_SCOPE)


def on_starting(server: _Any) -> None:
    """gunicorn master, at start: fail fast on bad settings."""
    s = settings()
    server.log.info("syn_mp: workers claim ids (%r, i) in scope %r, group %r", s.prefix, s.scope, s.group)


def post_fork(server: _Any, worker: _Any) -> None:
    """gunicorn worker, right after the fork: claim the stable id and join the group."""
    s = settings().with_slots(int(server.num_workers))
    i = _claim(s, meta={"server": "gunicorn", "master": _os.getppid()})
    server.log.info("syn_mp: worker %s has id %s (%r in scope %r)", _os.getpid(), i, (s.prefix, i), s.scope)


def worker_exit(server: _Any, worker: _Any) -> None:
    """gunicorn worker leaving cleanly: give the id back. (gunicorn may call it in the master: no-op.)"""
    _release()
