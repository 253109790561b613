"""Readers behind a stalled writer (DESIGN.md, Performance: "lookup never waits for a writer").

One reader process times every lookup alone, its lookup cache emptied before each one so that
each reads the table through the C read path, while one writer process writes to the same
scope's table in four runs, interleaved (order rotated every repetition):

  idle       no writer: the floor of this machine;
  free       the writer registers and unregisters flat out, unthrottled (the goal's baseline);
  stopped    the writer SIGSTOPs itself at a logged store inside a register (the C test hook
             synt_test_sigstop_after) and stays stopped for the whole run: the table's seq word
             is odd throughout, so every lookup reads through the undo log's overlay (checked);
  throttled  the same flat-out writer inside a cgroup v1 cpu group of its own with a 2 ms /
             100 ms quota, so it is often throttled in the middle of an operation.

Per run: p50, p99, p99.9 and max of the lookup latency and the max of its CPU time (what a
spin-wait would show and a preemption would not); for the stopped and throttled runs, the p99.9
over the unthrottled run's p99.9 of the same repetition, and the share of lookups that began
with the seq word odd.
"""
from __future__ import annotations

import os
import select
import signal
import time

from . import cgroup, stats
from .figures import Bench, Figure
from .workers import WorkerProc

RUNS = [("idle", "no writer"),
        ("free", "writer unthrottled (flat out)"),
        ("stopped", "writer SIGSTOPped mid-write"),
        ("throttled", "writer under a 2 ms / 100 ms CPU quota")]
STATS = [("p50", "p50"), ("p99", "p99"), ("p999", "p99.9"), ("max", "max")]
STOP_AT = 2                        # the writer stops at its third logged store of the register
QUOTA_US, PERIOD_US = 2000, 100_000
SCOPE = "rw"                       # the reader's names and the writer's own names share this table
OTHERS = ("dict", "ultradict", "manager", "redis", "syn", "syn1")


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def _wait_stopped(w: WorkerProc, timeout: float = 10.0) -> None:
    """Bounded poll until the writer is stopped by its own hook; an answer first means it never
    reached the hook's store (the write finished without stopping)."""
    deadline = time.monotonic() + timeout
    while _state(w.proc.pid) not in ("T", "t"):
        if select.select([w.proc.stdout], [], [], 0.001)[0]:
            raise RuntimeError(f"stalled writer: the write finished before store {STOP_AT}: {w._line()!r}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"stalled writer: not stopped after {timeout:.0f} s")


def figures(b: Bench) -> list[Figure]:
    cfg = b.cfg
    win = cfg.stall_s
    figs: dict[tuple[str, str], Figure] = {}
    for sid, sname in STATS:
        for run, rname in RUNS:
            f = Figure(f"stall_{run}_{sid}", f"lookup {sname}, {rname}", "ns/op", "lower", group="stall")
            if sid == "max" and run in ("stopped", "throttled"):
                f.goal = "< 1 ms"
            figs[run, sid] = f
    ratio = {run: Figure(f"stall_{run}_ratio", f"lookup p99.9, {rname} / unthrottled", "x", "lower",
                         group="stall", goal="<= 2x",
                         note="the two p99.9 of the same repetition, moments apart")
             for run, rname in RUNS[2:]}
    cpu = {run: Figure(f"stall_{run}_cpumax", f"lookup max CPU time, {rname}", "ns/op", "lower", group="stall")
           for run, rname in RUNS}
    odd = {run: Figure(f"stall_{run}_odd", f"share of lookups begun mid-write (seq odd), {rname}", "%",
                       "higher", group="stall")
           for run, rname in RUNS[2:]}
    out = ([figs[run, sid] for sid, _ in STATS for run, _ in RUNS] + list(ratio.values()) + list(cpu.values())
           + list(odd.values()))
    for f in out:
        for k in OTHERS:
            f.na[k] = "syn_mp only: the mid-write stop is a hook in its C engine"
    first = figs["idle", "p50"]
    first.note = (f"one reader process looks up names drawn at random from the {cfg.names:,} registered in a "
                  f"scope, each lookup timed alone (perf_counter_ns around syn_mp.lookup, one timer pair of "
                  f"about {b.timer_ns:.0f} ns included) with the process's lookup cache emptied before it "
                  f"(untimed), so every lookup reads the table (the uncached C path); {win:g} s of lookups "
                  f"per run; meanwhile one writer process registers and unregisters names of its own in that "
                  f"same table, flat out. Four runs interleaved in every repetition: no writer (the floor); "
                  f"the writer unthrottled (the baseline of the goal); stopped by "
                  f"SIGSTOP at a logged store inside a register (the C test hook synt_test_sigstop_after) and "
                  f"left stopped for the whole run; and inside a cgroup v1 cpu group of its own "
                  f"(cpu.cfs_quota_us={QUOTA_US}, cpu.cfs_period_us={PERIOD_US})")

    c = b.c("syn_mp")
    store = c.store(SCOPE)
    from syn_mp._client import table_of
    table = table_of(SCOPE)  # the bench process reads the same table's seq word
    why = cgroup.unavailable()
    quota = None
    if why is None:
        try:
            quota = cgroup.CpuQuota.create(QUOTA_US, PERIOD_US)
        except OSError as e:
            why = f"cannot make a cpu cgroup: {e}"
    if why is not None:
        for sid, _ in STATS:
            figs["throttled", sid].na["syn_mp"] = f"not run: {why}"
        for f in (ratio["throttled"], cpu["throttled"], odd["throttled"]):
            f.na["syn_mp"] = f"not run: {why}"
        b.notes.append(f"readers behind a throttled writer: not run: {why}")
    runs = [r for r, _ in RUNS if r != "throttled" or quota is not None]
    reader = b.worker("reader", dict(store.spec(), names=cfg.names, count=4096, seed=11), c, wait=False)
    writer = b.worker("writer", store.spec(), c, wait=False)
    reader.ready()
    writer.ready()
    wpid = writer.proc.pid
    throttled_periods: list[int] = []
    worst: dict[str, float] = {}
    switches: dict[str, list[float]] = {}  # run -> [voluntary, involuntary] context switches of the reader
    try:
        for rep in range(cfg.reps):
            got: dict[str, list[float]] = {}
            for run in stats.rotations(runs, rep):
                if run == "stopped":
                    writer.send(f"stall {STOP_AT}")
                    try:
                        _wait_stopped(writer)
                        s0 = table.seq()
                        if not s0 & 1:
                            raise RuntimeError("stalled writer: stopped, but outside its operation (seq even)")
                        got[run] = [float(x) for x in reader.ask(f"lat {win}")]
                        if table.seq() != s0 or _state(wpid) not in ("T", "t"):
                            raise RuntimeError("stalled writer: it moved during the run")
                        if got[run][5] != got[run][0]:
                            raise RuntimeError(f"stalled writer: {got[run][0] - got[run][5]:.0f} lookups began "
                                               "with seq even")
                    finally:
                        os.kill(wpid, signal.SIGCONT)
                    if writer._line() != "k":
                        raise RuntimeError("stalled writer: no answer after SIGCONT")
                    continue
                if run == "idle":
                    got[run] = [float(x) for x in reader.ask(f"lat {win}")]
                    continue
                if run == "throttled":
                    quota.add(wpid)
                    n0 = quota.throttled()[0]
                try:
                    writer.send(f"write {win + 0.15}")
                    time.sleep(0.05)  # the writer is up to speed (or into its quota)
                    got[run] = [float(x) for x in reader.ask(f"lat {win}")]
                    writer._line()
                finally:
                    if run == "throttled":
                        throttled_periods.append(quota.throttled()[0] - n0)
                        quota.release(wpid)
            for run, (n, p50, p99, p999, mx, n_odd, _c999, cmax, vcsw, ivcsw) in got.items():
                cpu[run].add("syn_mp", cmax)
                sw = switches.setdefault(run, [0.0, 0.0])
                sw[0] += vcsw
                sw[1] += ivcsw
                for sid, v in zip(("p50", "p99", "p999", "max"), (p50, p99, p999, mx)):
                    figs[run, sid].add("syn_mp", v)
                worst[run] = max(worst.get(run, 0.0), mx)
                if run in ratio:
                    ratio[run].add("syn_mp", p999 / got["free"][3])
                    odd[run].add("syn_mp", 100.0 * n_odd / n)
    finally:
        if _state(wpid) in ("T", "t"):
            os.kill(wpid, signal.SIGCONT)
        b.drop(reader)
        b.drop(writer)
        if quota is not None:
            quota.close()
    b.log(f"  stalled writer: in all {cfg.reps} stopped runs the writer was stopped inside its operation and "
          f"every lookup began with the seq word odd (checked)"
          + (f"; throttled {stats.median(throttled_periods):.0f} periods per run" if throttled_periods else ""))
    for run, rname in RUNS:
        if run in worst:
            figs[run, "max"].note = (f"the median of the repetitions' maxima; the worst single lookup over all "
                                     f"{cfg.reps} repetitions: {worst[run] / 1e3:.0f} µs")
        if run in switches:
            v, iv = switches[run]
            cpu[run].note = (f"the same lookups' thread CPU time (time.thread_time_ns just outside the wall timer; "
                             f"it includes that timer and part of one clock call): a lookup that spun waiting "
                             f"for the writer shows here, one the scheduler preempted does not; over the "
                             f"{cfg.reps} runs the reader blocked (voluntary context switches) {v:.0f} times and "
                             f"was preempted (involuntary ones) {iv:.0f} times")
    odd["stopped"].note = ("checked in every repetition: the writer stopped inside its operation, the seq word "
                           "odd and unchanged from before the first lookup to after the last, and every lookup "
                           "began with it odd, so every one read through the undo log's overlay (csrc/view.h)")
    if throttled_periods:
        odd["throttled"].note = ("the writer is mid-operation whenever its quota runs out there; cpu.stat counted "
                                 f"{stats.median(throttled_periods):.0f} throttled periods per run (median)")
    return out
