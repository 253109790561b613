"""Small statistics and timing helpers."""
from __future__ import annotations

import gc
import math
import statistics
from time import perf_counter_ns
from typing import Callable, Sequence


def median(xs: Sequence[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def spread(xs: Sequence[float]) -> float | None:
    """(max - min) / median of the repetitions: how noisy a figure was."""
    xs = [x for x in xs if x is not None]
    if len(xs) < 2:
        return None
    m = statistics.median(xs)
    return (max(xs) - min(xs)) / m if m else None


def percentile(xs_sorted: Sequence[float], q: float) -> float:
    """The q-quantile (0 < q <= 1) of sorted samples, nearest rank: a value that was measured."""
    n = len(xs_sorted)
    return xs_sorted[min(n - 1, max(0, math.ceil(q * n) - 1))]


def rotations(items: list, rep: int) -> list:
    """The order of the contenders in repetition `rep`: ABC, BCA, CAB, ... (interleaved, no fixed first)."""
    if not items:
        return []
    k = rep % len(items)
    return items[k:] + items[:k]


def timer_overhead_ns(n: int = 20000) -> float:
    """Median cost of one perf_counter_ns() pair: subtracted from per-operation samples."""
    pc = perf_counter_ns
    samples = []
    for _ in range(n):
        t0 = pc()
        samples.append(pc() - t0)
    return statistics.median(samples)


def loop_overhead_ns(n: int = 100000) -> float:
    """Cost of one turn of an empty `for k in keys:` loop, for the record (not subtracted)."""
    keys = list(range(n))
    t0 = perf_counter_ns()
    for _k in keys:
        pass
    return (perf_counter_ns() - t0) / n


def size_for(run: Callable[[int], float], target_s: float, lo: int, hi: int) -> int:
    """How many operations make one measurement of about target_s: run(n) -> seconds for n ops."""
    n = lo
    run(n)  # warm: first calls attach, fill caches
    t = run(n)
    per_op = max(t / n, 1e-9)
    return int(max(lo, min(hi, target_s / per_op)))


class GCClock:
    """Time this process spends in the garbage collector (gc.callbacks), to tell it apart in a loop."""

    def __init__(self) -> None:
        self.total_ns = 0
        self._start = 0
        gc.callbacks.append(self._cb)

    def _cb(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = perf_counter_ns()
        elif self._start:
            self.total_ns += perf_counter_ns() - self._start
            self._start = 0

    def close(self) -> None:
        if self._cb in gc.callbacks:
            gc.callbacks.remove(self._cb)
