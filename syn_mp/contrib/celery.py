"""celery (prefork pool): every pool child gets a stable id; a replaced child's id is reclaimed.

In the module that defines your Celery app::

    from celery import Celery
    from syn_mp.contrib import celery as syn_celery

    app = Celery("tasks", broker="redis://127.0.0.1:6379/0")
    syn_celery.install()               # connects celery's signals; checks the settings now

    @app.task
    def work():
        return syn_celery.worker_id()  # 0 .. concurrency-1, stable across child restarts

    $ celery -A tasks worker --pool prefork --concurrency 4

Signals used: ``celeryd_after_setup`` (the worker's main process: records the pool size),
``worker_process_init`` (each pool child, as it starts: claims the lowest free id in
``range(concurrency)`` as ``(SYN_MP_PREFIX, id)`` in ``SYN_MP_SCOPE`` (default ``celery``),
joins ``SYN_MP_GROUP`` with meta ``{"id": id}``, sets ``SYN_MP_WORKER_ID``) and
``worker_process_shutdown`` (a child leaving cleanly gives its id back). A child killed, or
replaced after ``--max-tasks-per-child``, frees its id and the new child takes it. Only the
prefork pool has child processes: with ``--pool solo/threads/gevent`` nothing is claimed.
Two celery workers on one node that share a scope need different ``SYN_MP_PREFIX`` values.
celery logs, and does not raise, what a signal handler raises: a child that could not claim
an id logs the reason and its tasks get a RuntimeError from ``worker_id()``.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Optional

from celery import signals

from syn_mp.contrib import Settings, SettingsError, claim_worker_id, release_worker_id, worker_id

__all__ = ["install", "worker_id"]

DEFAULT_SCOPE = "celery"
_POOL_SIZE_ENV = "SYN_MP_CELERY_POOL_SIZE"  # the main process tells children spawned afresh
log = logging.getLogger("syn_mp.contrib.celery")
_settings: Optional[Settings] = None


def install(*, scope: Optional[str] = None, prefix: Optional[str] = None, group: Optional[str] = "",
            slots: Optional[int] = None) -> Settings:
    """Connect the signals; arguments override SYN_MP_SCOPE, SYN_MP_PREFIX, SYN_MP_GROUP, SYN_MP_SLOTS.

    ``group=None`` joins no group. Returns the settings; SettingsError if one is bad.
    """
    global _settings
    env = Settings.from_env(DEFAULT_SCOPE)
    _settings = Settings(scope or env.scope, prefix or env.prefix, env.group if group == "" else group,
                         env.slots if slots is None else slots, env.claim_timeout)
    signals.celeryd_after_setup.connect(_after_setup, weak=False, dispatch_uid="syn_mp.after_setup")
    signals.worker_process_init.connect(_process_init, weak=False, dispatch_uid="syn_mp.process_init")
    signals.worker_process_shutdown.connect(_process_shutdown, weak=False, dispatch_uid="syn_mp.process_shutdown")
    return _settings


def _after_setup(sender: Any = None, instance: Any = None, **_: Any) -> None:
    size = getattr(instance, "max_concurrency", None) if getattr(instance, "autoscale", None) else None
    size = size or getattr(instance, "concurrency", None)
    if isinstance(size, int) and size > 0:
        os.environ[_POOL_SIZE_ENV] = str(size)


def _process_init(sender: Any = None, **_: Any) -> None:
    if _settings is None:
        return
    try:
        s = _settings
        if s.slots is None:
            raw = os.environ.get(_POOL_SIZE_ENV)
            if not raw:
                raise SettingsError("the pool size is unknown (not started by `celery worker`?): set SYN_MP_SLOTS")
            s = s.with_slots(int(raw))
        i = claim_worker_id(s, meta={"server": "celery", "hostname": str(sender)})
    except Exception as e:
        log.error("syn_mp: pool child %s claimed no worker id: %s", os.getpid(), e)
        raise
    log.info("syn_mp: pool child %s has id %s (%r in scope %r)", os.getpid(), i, (s.prefix, i), s.scope)


def _process_shutdown(**_: Any) -> None:
    release_worker_id()
