"""Process pools: name the workers of a multiprocessing.Pool or a ProcessPoolExecutor.

::

    from multiprocessing import Pool
    from concurrent.futures import ProcessPoolExecutor
    from syn_mp.contrib.pool import init_worker, initializer, worker_id

    with Pool(4, initializer=init_worker, initargs=("jobs", "worker", 4)) as pool:
        pool.map(task, items)              # in task: worker_id() is 0..3

    with ProcessPoolExecutor(4, **initializer("jobs", "worker", 4)) as ex:
        ex.submit(task, item)

Each worker claims the lowest free id in ``range(size)`` as the name ``(prefix, id)`` in
``scope`` and, with ``group``, joins it with meta ``{"id": id}``. A worker that
multiprocessing.Pool starts in place of a dead one (killed, or retired by
``maxtasksperchild``) takes the dead one's id. The pool's workers use the node of the
process that makes the pool (its SYN_MP_RUNTIME_DIR), with fork, spawn or forkserver.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from syn_mp.contrib import DEFAULT_CLAIM_TIMEOUT, Settings, claim_worker_id, worker_id

__all__ = ["init_worker", "initializer", "worker_id"]


def init_worker(scope: str, prefix: str = "worker", size: int = 1, group: Optional[str] = None,
                meta: Optional[Mapping[str, Any]] = None, claim_timeout: float = DEFAULT_CLAIM_TIMEOUT) -> None:
    """A pool initializer: claim a stable id in ``range(size)`` (SettingsError on a bad argument)."""
    claim_worker_id(Settings(scope, prefix, group, size, claim_timeout), meta={"server": "pool", **(meta or {})})


def initializer(scope: str, prefix: str = "worker", size: int = 1, group: Optional[str] = None,
                meta: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """``initializer=`` and ``initargs=`` for a pool, checked now: ``Pool(n, **initializer(...))``."""
    Settings(scope, prefix, group, size)  # a bad argument fails here, not in every worker
    args: Tuple[Any, ...] = (scope, prefix, size, group, dict(meta) if meta else None)
    fn: Callable[..., None] = init_worker
    return {"initializer": fn, "initargs": args}
