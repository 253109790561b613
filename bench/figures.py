"""The figures: each a function that measures every contender, interleaved, and returns Figures.

Within a repetition the contenders run one after the other in a rotated order (ABC, BCA,
CAB, ...), so a slow minute of this shared machine falls on all of them, and no contender
is always first; a figure is the median of its repetitions.
"""
from __future__ import annotations

import importlib
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from syn_mp.registry import _CACHE_MAX

from . import stats
from .contenders import Contender, DictStore, meta_for, python_contenders, rss_of, shm_allocated
from .syn_erlang import SynErlang
from .workers import WorkerProc

SCOPES = ["ops", "regs", "groups", "s1k", "s10k", "s100k", "rw", "death"]
WARM = 2000  # lookups of an untimed pass before every timed lookup loop: steady state, caches warm


@dataclass
class Config:
    quick: bool = False
    reps: int = 7              # repetitions of every figure (the median is reported)
    target_s: float = 0.1      # one timed loop lasts about this long
    names: int = 1000          # names in the ops, regs, rw and small-scale stores
    mid: int = 10_000          # tuple names ("web", i) in the mid-scale store (DESIGN.md's realistic pattern)
    big: int = 100_000         # names in the large-scale store (and the memory figure)
    uncached: int = 400        # per-op samples of the uncached lookup, per repetition
    window_s: float = 0.5      # reader measuring window, with and without the writer
    death: int = 500           # processes killed at once
    group: int = 10            # members of the group that members() reads
    stall_s: float = 1.0       # lookups timed per run behind a stalled writer (bench/stall.py)

    @classmethod
    def make(cls, quick: bool) -> "Config":
        if not quick:
            return cls()
        return cls(quick=True, reps=2, target_s=0.004, names=1000, mid=2000, big=5000, uncached=40, window_s=0.05,
                   death=40, group=10, stall_s=0.05)


@dataclass
class Figure:
    id: str
    title: str
    unit: str
    better: str                                     # "lower" or "higher"
    reps: dict[str, list[float]] = field(default_factory=dict)
    na: dict[str, str] = field(default_factory=dict)  # contender -> why it has no value
    goal: str = ""
    note: str = ""
    group: str = ""                                 # which plot it belongs to
    pending: str = ""                               # a figure nobody measured yet (the cluster hook)

    def add(self, who: str, value: float | None) -> None:
        if value is not None:
            self.reps.setdefault(who, []).append(value)

    def median(self, who: str) -> float | None:
        return stats.median(self.reps.get(who, []))


class Bench:
    def __init__(self, cfg: Config, syn_path: str | None, log: Callable[[str], None] = print) -> None:
        self.cfg = cfg
        self.log = log
        self.syn_path = syn_path
        self.contenders: list[Contender] = []
        self.status: dict[str, dict[str, str]] = {}   # key -> {"label", "version", "status"}
        self.syns: dict[str, SynErlang] = {}  # "syn": the VM's default schedulers; "syn1": +S 1
        self.workers: list[WorkerProc] = []
        self.figures: list[Figure] = []
        self.notes: list[str] = []
        self.memory: Figure | None = None
        self.rnd = random.Random(20240601)
        self.timer_ns = 0.0
        self.loop_ns = 0.0
        self.gc = stats.GCClock()

    # ================================================================ setup

    def _status(self, key: str, label: str, version: str, status: str) -> None:
        self.status[key] = {"label": label, "version": version, "status": status}

    def start(self) -> None:
        self.timer_ns = stats.timer_overhead_ns()
        self.loop_ns = stats.loop_overhead_ns()
        for c in python_contenders(SCOPES):
            try:
                c.start()
            except Exception as e:  # not installed, cannot start: reported, not fatal (but syn_mp is)
                if c.key == "syn_mp":
                    raise
                self._status(c.key, c.label, "", f"not run: {_why(e)}")
                c.close()
                continue
            self.contenders.append(c)
            self._status(c.key, c.label, c.version, "ran")
        why = _syn_unavailable(self.syn_path)
        for sched in (None, 1):
            s = SynErlang(self.syn_path or "", sched)
            if why is not None:
                self._status(s.key, s.label, "", f"not run: {why}")
                continue
            try:
                self.log(f"building Syn from {s.syn_path} ({s.label})")
                s.start()
                self.syns[s.key] = s
                self._status(s.key, s.label, s.version, "ran")
            except Exception as e:
                s.close()
                self._status(s.key, s.label, "", f"not run: {_why(e)}")
        self._fill()

    def order(self) -> list[str]:
        keys = [c.key for c in self.contenders]
        return keys + list(self.syns)

    def c(self, key: str) -> Contender:
        return next(c for c in self.contenders if c.key == key)

    def _fill(self) -> None:
        cfg = self.cfg
        n = cfg.names
        self.names_str = [f"name-{i}" for i in range(n)]
        self.names_tuple = [("web", i) for i in range(n)]
        self.names_none = [f"none-{i}" for i in range(n)]
        metas = [meta_for(i) for i in range(n)]
        self.mid_names = [("web", i) for i in range(cfg.mid)]
        self.big_names = [f"name-{i}" for i in range(cfg.big)]
        big_metas = [meta_for(i) for i in range(cfg.big)]
        self.memory = Figure("memory", f"memory per entry ({cfg.big:,} names)", "bytes", "lower", group="memory",
                             note="syn_mp: st_blocks*512 of its /dev/shm segment before/after; Redis: INFO "
                                  "used_memory delta; Manager dict: RSS delta of its server process; "
                                  "UltraDict: st_blocks of its shared segments (an update log: each process "
                                  "also keeps a full dict copy, not counted); Syn: erlang:memory(ets) delta; "
                                  "dict: tracemalloc (one process, not shared)")
        # syn_mp's names are held by 10 other live processes (sleep), Syn's by one Erlang process each:
        # the bench process holds only what a figure's loop registers, as a worker would
        for c in self.contenders:
            t0 = time.perf_counter()
            ops = c.store("ops")
            ops.fill(self.names_str, metas)
            ops.fill(self.names_tuple, metas)
            ops.fill(self.names_none, [None] * n)
            c.store("regs").fill([f"other-{i}" for i in range(n)], metas)
            c.store("s1k").fill(self.names_str, metas)
            c.store("s10k").fill(self.mid_names, [meta_for(i) for i in range(cfg.mid)])
            c.store("rw").fill(self.names_str, metas)
            groups = c.store("groups")
            groups.fill([f"other-{i}" for i in range(n)], metas)
            pids = self.member_pids(cfg.group)
            for i, pid in enumerate(pids):
                groups.add_member("g10", pid, i)
            assert len(groups.members("g10")) == cfg.group, (c.key, groups.members("g10"))
            # the large store, and the memory it takes
            big = c.store("s100k")
            before = self._mem(c, big)
            big.fill(self.big_names, big_metas)
            after = self._mem(c, big)
            if c.key == "dict":
                self.memory.add("dict", DictStore().memory_of_fill(self.big_names, big_metas) / cfg.big)
            elif before is None:
                self.memory.na[c.key] = "not measurable"
            else:
                self.memory.add(c.key, (after - before) / cfg.big)
            # every store answers what was put in it
            for store, k, i in ((ops, self.names_str[7], 7), (ops, self.names_tuple[9], 9), (big, self.big_names[-1], cfg.big - 1)):
                v = store.get(k)
                assert v is not None and v[1] == meta_for(i), (c.key, k, v)
            assert ops.get(self.names_none[3])[1] is None
            self.log(f"  {c.label}: filled in {time.perf_counter() - t0:.1f} s")
        for key, s in self.syns.items():
            t0 = time.perf_counter()
            for kind in ("str", "tuple", "none"):
                s.cmd("fill", "ops", kind, n)
            s.cmd("fill", "regs", "str", n)
            s.cmd("fill", "s1k", "str", n)
            s.cmd("fill", "s10k", "tuple", cfg.mid)
            s.cmd("fill", "rw", "str", n)
            s.cmd("group", cfg.group)
            self.memory.add(key, s.cmd("fill", "s100k", "str", cfg.big)[0])
            self.log(f"  {s.label}: filled in {time.perf_counter() - t0:.1f} s")
        self.memory.na.setdefault("dict", "not measured")

    def member_pids(self, n: int) -> list[int]:
        return self.c("syn_mp").member_pids(n)  # live processes: syn_mp checks that a member lives

    def _mem(self, c: Contender, store: Any) -> float | None:
        if c.key == "syn_mp":
            return shm_allocated(c.node.segment(store.scope))
        if c.key == "redis":
            return store.used_memory()
        if c.key == "manager":
            return rss_of(c.server_pid())
        if c.key == "ultradict":
            return store.shm_bytes()
        return None

    def close(self) -> None:
        self.gc.close()
        for w in self.workers:
            try:
                w.close()
            except Exception:
                pass
        self.workers.clear()
        for s in self.syns.values():
            s.close()
        for c in reversed(self.contenders):
            try:
                c.close()
            except Exception as e:
                self.log(f"closing {c.label}: {e}")

    def worker(self, role: str, spec: dict, c: Contender, wait: bool = True) -> WorkerProc:
        w = WorkerProc(role, spec, env=c.worker_env(), wait=wait)
        self.workers.append(w)
        return w

    def drop(self, w: WorkerProc) -> None:
        w.close()
        self.workers.remove(w)

    # ================================================================ helpers

    def keys(self, pool: list, count: int) -> list:
        return [pool[self.rnd.randrange(len(pool))] for _ in range(count)]

    def loop_sizes(self, run: Callable[[str, int], float], lo: int = 50, hi: int = 200_000) -> dict[str, int]:
        """Per contender, the loop length that takes about cfg.target_s."""
        return {k: stats.size_for(lambda n, k=k: run(k, n), self.cfg.target_s, lo, hi) for k in self.order()}

    # ================================================================ figures

    def fig_lookup(self) -> list[Figure]:
        cfg = self.cfg
        kinds = [("str", self.names_str, "lookup, str name (hit)"),
                 ("tuple", self.names_tuple, "lookup, tuple name (hit)"),
                 ("none", self.names_none, "lookup, str name, meta None (hit)")]
        figs = {kind: Figure(f"lookup_{kind}", title, "ns/op", "lower", group="lookup") for kind, _, title in kinds}
        figs["str"].goal = "<= UltraDict get, <= 10x dict get, < the faster Syn"
        figs["str"].note = ("names drawn at random from 1,000 registered ones; meta {'port': i}; syn_mp's "
                            "per-table cache answers (nothing changed since the last read) and decodes the "
                            "mutable meta anew every call")
        figs["none"].note = "an immutable result: syn_mp's cache returns the very same tuple"
        key_lists = {kind: self.keys(pool, 200_000) for kind, pool, _ in kinds}

        def run(k: str, kind: str, n: int) -> float:  # seconds for n lookups, after a warm-up
            if k in self.syns:  # the driver warms up the same way
                return self.syns[k].cmd("lookup", "ops", kind, cfg.names, n)[0] * n / 1e9
            store = self.c(k).store("ops")
            keys = key_lists[kind][:n]
            store.lookup_loop(keys[:WARM])
            return store.lookup_loop(keys) / 1e9

        sizes = {kind: self.loop_sizes(lambda k, n, kind=kind: run(k, kind, n)) for kind, _, _ in kinds}
        for rep in range(cfg.reps):
            for k in stats.rotations(self.order(), rep):
                for kind, _, _ in kinds:
                    n = sizes[kind][k]
                    figs[kind].add(k, run(k, kind, n) * 1e9 / n)
        return list(figs.values())

    def _pokers(self) -> dict[str, WorkerProc]:
        out = {}
        for c in self.contenders:
            if c.shared:
                spec = {"stores": {t: c.store(t).spec() for t in ("ops", "s1k", "s100k")}}
                out[c.key] = self.worker("poke", spec, c, wait=False)
        for w in out.values():  # started together, waited for together
            w.ready()
        return out

    def _after_write(self, pokers: dict[str, WorkerProc], k: str, tag: str, pool_n: int, count: int,
                     same: bool) -> float:
        """Median ns of one lookup made right after another process wrote: the very name looked up
        (same: a new meta, its holder kept; every cache of it is stale) or one elsewhere in the table."""
        if k in self.syns:
            return self.syns[k].cmd("changed" if same else "uncached", tag, pool_n, count)[0]
        store = self.c(k).store(tag)
        w = pokers[k]
        samples = []
        rnd = self.rnd
        for _ in range(count):
            key = f"name-{rnd.randrange(pool_n)}"
            w.ask(f"c {tag} {key}" if same else f"p {tag}")
            samples.append(store.timed_get(key))
        return stats.median(samples) - self.timer_ns

    def fig_uncached(self, pokers: dict[str, WorkerProc]) -> list[Figure]:
        cfg = self.cfg
        timing = (f"one lookup is timed alone (median of {cfg.uncached} per repetition, minus the "
                  f"{self.timer_ns:.0f} ns of the timer)")
        changed = Figure("lookup_uncached", "lookup of a name another process just changed (uncached path)",
                         "ns/op", "lower", group="lookup",
                         note=(f"another process gives the name a new meta (its holder kept), then {timing}: "
                               "no cache may answer, syn_mp reads the table, UltraDict first applies the "
                               "update"))
        elsewhere = Figure("lookup_after_other", "lookup right after a write elsewhere in the table", "ns/op",
                           "lower", group="lookup",
                           note=(f"another process writes one other name, then {timing}: syn_mp's cached "
                                 "entry is checked against its own entry's ver word, which a write to another "
                                 "name leaves alone; UltraDict first applies the other process's update"))
        for f in (changed, elsewhere):
            f.na["dict"] = "one process only"
        for rep in range(cfg.reps):
            for k in stats.rotations(self.shared_order(), rep):
                changed.add(k, self._after_write(pokers, k, "ops", cfg.names, cfg.uncached, True))
                elsewhere.add(k, self._after_write(pokers, k, "ops", cfg.names, cfg.uncached, False))
        return [changed, elsewhere]

    def shared_order(self) -> list[str]:
        return [k for k in self.order() if k in self.syns or self.c(k).shared]

    def fig_write(self) -> list[Figure]:
        cfg = self.cfg
        reg = Figure("regunreg", "register + unregister (one pair)", "ns/pair", "lower", group="write",
                     goal="<= 1/2 UltraDict set+del, 50x < Manager dict, 4x < the faster Syn",
                     note="a fresh name each pair, in a table of 1,000 other names; Redis: SET + DEL; "
                          "UltraDict, Manager dict, dict: d[k] = v; del d[k]")
        jl = Figure("joinleave", "join + leave (one pair)", "ns/pair", "lower", group="write",
                    note="UltraDict and Manager dict keep a group as one {pid: meta} value, rewritten whole "
                         "(read-modify-write: not atomic across processes); Redis: HSET + HDEL")
        mem = Figure("members", f"members(group of {cfg.group})", "ns/op", "lower", group="write",
                     note="all (pid, meta) of the group, sorted by pid; Redis: HGETALL + unpickle")
        counter = [0]

        def run_reg(k: str, n: int) -> float:
            if k in self.syns:
                return self.syns[k].cmd("regunreg", n)[0] * n / 1e9
            counter[0] += 1
            keys = [f"tmp-{counter[0]}-{i}" for i in range(n)]
            return self.c(k).store("regs").regunreg_loop(keys) / 1e9

        def run_jl(k: str, n: int) -> float:
            if k in self.syns:
                return self.syns[k].cmd("joinleave", n)[0] * n / 1e9
            return self.c(k).store("groups").join_leave_loop("jl", n) / 1e9

        def run_mem(k: str, n: int) -> float:
            if k in self.syns:
                return self.syns[k].cmd("members", n)[0] * n / 1e9
            return self.c(k).store("groups").members_loop("g10", n) / 1e9

        runs = [(reg, run_reg), (jl, run_jl), (mem, run_mem)]
        sizes = {f.id: self.loop_sizes(r, lo=20, hi=100_000) for f, r in runs}
        for rep in range(cfg.reps):
            for k in stats.rotations(self.order(), rep):
                for f, r in runs:
                    n = sizes[f.id][k]
                    f.add(k, r(k, n) * 1e9 / n)
        return [reg, jl, mem]

    def fig_scale(self, pokers: dict[str, WorkerProc]) -> list[Figure]:
        cfg = self.cfg
        big = f"{cfg.big:,}"
        small = Figure("scale_1k", f"lookup among {cfg.names:,} names", "ns/op", "lower", group="scale",
                       goal="<= UltraDict, <= the faster Syn", note="names drawn at random (uniformly) among all registered")
        mid = Figure("scale_10k", f"lookup among {cfg.mid:,} tuple names", "ns/op", "lower", group="scale",
                     goal="<= UltraDict, <= the faster Syn",
                     note='DESIGN.md\'s realistic pattern: names ("web", i) drawn at random (uniformly) among all '
                          "registered, each with a small dict meta")
        large = Figure("scale_100k", f"lookup among {big} names", "ns/op", "lower", group="scale",
                       goal="<= UltraDict, <= the faster Syn", note="names drawn at random among all registered; syn_mp's lookup cache holds up to "
                            f"{_CACHE_MAX:,} names, so after the warm-up these too are cache hits: what grows "
                            "with the table is memory latency, as the plain dict's own ratio shows")
        ratio = Figure("scale_ratio", f"lookup at {big} / at {cfg.names:,} names", "x", "lower", group="scale",
                       goal="<= 1.5x", note="ratio of the two figures above, per repetition")
        u_small = Figure("scale_uncached_1k", f"uncached lookup among {cfg.names:,} names", "ns/op", "lower",
                         group="scale")
        u_large = Figure("scale_uncached_100k", f"uncached lookup among {big} names", "ns/op", "lower",
                         group="scale")
        u_ratio = Figure("scale_uncached_ratio", f"uncached lookup at {big} / at {cfg.names:,} names", "x",
                         "lower", group="scale",
                         note="each lookup right after another process changed that very name (as "
                              "lookup_uncached): the table itself, without any cache")
        gc_large = Figure("scale_100k_gc", f"… of which garbage collection (lookup among {big} names)", "ns/op",
                          "lower", group="scale",
                          note="time this Python process spent in gc collections during the timed loop above "
                               "(gc.callbacks): a cache of 100,000 entries is heap the collector walks")
        for k in ("syn", "syn1"):
            gc_large.na[k] = "Erlang VM"
        for f in (u_small, u_large, u_ratio):
            f.na["dict"] = "one process only"
        pools = {"s1k": self.keys(self.names_str, 200_000), "s10k": self.keys(self.mid_names, 200_000),
                 "s100k": self.keys(self.big_names, 200_000)}
        syn_kind = {"s1k": ("str", cfg.names), "s10k": ("tuple", cfg.mid), "s100k": ("str", cfg.big)}
        gc_ns = {}

        def run(k: str, tag: str, n: int) -> float:
            if k in self.syns:  # the driver warms up the same way
                return self.syns[k].cmd("lookup", tag, *syn_kind[tag], n)[0] * n / 1e9
            store = self.c(k).store(tag)
            keys = pools[tag][:n]
            store.lookup_loop(keys[:WARM])
            g0 = self.gc.total_ns
            t = store.lookup_loop(keys) / 1e9
            gc_ns[tag] = (self.gc.total_ns - g0) / n
            return t

        sizes = {tag: self.loop_sizes(lambda k, n, tag=tag: run(k, tag, n)) for tag in pools}
        for rep in range(cfg.reps):
            for k in stats.rotations(self.order(), rep):
                a = run(k, "s1k", sizes["s1k"][k]) * 1e9 / sizes["s1k"][k]
                mid.add(k, run(k, "s10k", sizes["s10k"][k]) * 1e9 / sizes["s10k"][k])
                b = run(k, "s100k", sizes["s100k"][k]) * 1e9 / sizes["s100k"][k]
                small.add(k, a)
                large.add(k, b)
                if k not in self.syns:
                    gc_large.add(k, gc_ns["s100k"])
                ratio.add(k, b / a)
        # the uncached lookups in repetitions of their own: their writes would otherwise leave
        # the lookup caches of the hit loops above cold
        for rep in range(cfg.reps):
            for k in stats.rotations(self.order(), rep):
                if k in self.syns or self.c(k).shared:
                    ua = self._after_write(pokers, k, "s1k", cfg.names, cfg.uncached, True)
                    ub = self._after_write(pokers, k, "s100k", cfg.big, cfg.uncached, True)
                    u_small.add(k, ua)
                    u_large.add(k, ub)
                    u_ratio.add(k, ub / ua if ua > 0 else None)
        return [small, mid, large, gc_large, ratio, u_small, u_large, u_ratio]

    def fig_readers(self) -> list[Figure]:
        cfg = self.cfg
        w = cfg.window_s
        idle = Figure("readers_idle", "reader throughput, no writer", "lookups/s", "higher", group="readers",
                      note="one reader process looks up 128 names (of 1,000) in a loop")
        loaded = Figure("readers_loaded", "reader throughput, a writer writing flat out", "lookups/s", "higher",
                        group="readers",
                        note="meanwhile another process registers and unregisters its own names in the same "
                             "table as fast as it can")
        ratio = Figure("readers_ratio", "reader throughput under a writer / idle", "x", "higher",
                       group="readers", goal=">= 0.70",
                       note=f"{w:g} s windows; idle and loaded windows alternate in each repetition")
        wrate = Figure("writer_rate", "writer rate (register+unregister pairs/s) meanwhile", "pairs/s", "higher",
                       group="readers")
        for f in (idle, loaded, ratio, wrate):
            f.na["dict"] = "one process only"
        readers, writers = {}, {}
        for c in self.contenders:
            if c.shared:
                spec = dict(c.store("rw").spec(), names=cfg.names, count=128)
                readers[c.key] = self.worker("reader", spec, c, wait=False)
                writers[c.key] = self.worker("writer", c.store("rw").spec(), c, wait=False)
        for w_ in list(readers.values()) + list(writers.values()):
            w_.ready()
        for rep in range(cfg.reps):
            for k in stats.rotations(self.shared_order(), rep):
                got = {}
                for phase in (("idle", "loaded") if rep % 2 == 0 else ("loaded", "idle")):
                    if k in self.syns:
                        n, dt = self.syns[k].cmd("read", f"{w:.3f}", "1" if phase == "loaded" else "0")
                        got[phase] = n / dt
                        continue
                    r = readers[k]
                    if phase == "idle":
                        n, dt = r.ask(f"read {w}")
                    else:
                        wr = writers[k]
                        wr.send(f"write {w + 0.1}")
                        time.sleep(0.05)  # the writer is up to speed
                        n, dt = r.ask(f"read {w}")
                        wn, wdt = wr._line().split()
                        wrate.add(k, float(wn) / float(wdt))  # pairs per second
                    got[phase] = float(n) / float(dt)
                idle.add(k, got["idle"])
                loaded.add(k, got["loaded"])
                ratio.add(k, got["loaded"] / got["idle"])
        for w_ in list(readers.values()) + list(writers.values()):
            self.drop(w_)
        return [idle, loaded, ratio, wrate]

    def fig_stall(self) -> list[Figure]:
        from . import stall
        return stall.figures(self)

    def fig_death(self) -> list[Figure]:
        cfg = self.cfg
        f = Figure("death", f"{cfg.death} processes SIGKILLed at once: until registry_count == 0", "s", "lower",
                   group="death", goal="< 0.1 s (aim), <= 0.5 s (max)",
                   note=(f"{cfg.death} processes forked from a prepared parent each register a name; once the "
                         "manager watches them all, the parent SIGKILLs them all and polls registry_count "
                         "every 0.2 ms; timed from the first kill. Syn: Erlang processes, exit(P, kill)"))
        floor = Figure("death_exit", f"… of which the kernel: until all {cfg.death} have exited (pidfd)", "s",
                       "lower", group="death",
                       note="the same kill, timed until the last child's own pidfd turns readable (the process "
                            "is gone: its memory torn down): no registry can learn of a death earlier")
        sent = Figure("death_kill", f"… of which sending the {cfg.death} SIGKILLs", "s", "lower", group="death")
        for k in ("dict", "ultradict", "manager", "redis"):
            f.na[k] = "no liveness tracking: a dead process's entries stay"
            floor.na[k] = sent.na[k] = f.na[k]
        for k in ("syn", "syn1"):
            floor.na[k] = sent.na[k] = "Erlang processes"
        c = self.c("syn_mp")
        parent = self.worker("death", {"scope": "death"}, c)
        try:
            for rep in range(cfg.reps):
                for k in stats.rotations(["syn_mp"] + list(self.syns), rep):
                    if k in self.syns:
                        f.add(k, self.syns[k].cmd("death", cfg.death)[0])
                        continue
                    ready = parent.ask(f"spawn {cfg.death}")
                    if ready[:1] != ["ready"] or int(ready[1]) != cfg.death:
                        raise RuntimeError(f"death: children not ready: {ready}")
                    dt, t_sent, left, t_exit = map(float, parent.ask("kill"))
                    if left != 0 or dt < 0:
                        self.notes.append(f"death: {left:.0f} entries still there after 30 s")
                        continue
                    f.add("syn_mp", dt)
                    floor.add("syn_mp", t_exit)
                    sent.add("syn_mp", t_sent)
        finally:
            self.drop(parent)
        return [f, floor, sent]

    def fig_cluster(self) -> list[Figure]:
        """The hook for the cluster figures, which live in bench/cluster.py (someone else's part).

        That module may offer `figures(bench) -> list[Figure]` (it gets this Bench: cfg, order(),
        c(key), syn, Figure), or `run(samples, entries) -> dict` with propagation_median_ms and
        snapshot_s, which is run here cfg.reps // 2 times (once with --quick). Without the module
        the two rows stay in the table as pending."""
        cfg = self.cfg
        entries = 2_000 if cfg.quick else 20_000
        samples = 20 if cfg.quick else 200
        vis = Figure("cluster_visible", "registration visible on another node (median)", "ms", "lower",
                     group="cluster", goal="< 1 ms (Syn: about 0.24 ms)")
        snap = Figure("cluster_snapshot", f"{entries:,}-entry snapshot synced to a new node", "s", "lower",
                      group="cluster", goal="< 0.5 s (Syn: about 0.55 s)")
        try:
            mod = importlib.import_module("bench.cluster")
        except ModuleNotFoundError as e:
            if e.name != "bench.cluster":
                raise
            vis.pending = snap.pending = "pending: cluster figures come from bench/cluster.py (not written yet)"
            return [vis, snap]
        if hasattr(mod, "figures"):
            return list(mod.figures(self))
        from syn_mp import _client
        saved = _client._node  # the cluster bench points this process at its own nodes
        try:
            for _ in range(1 if cfg.quick else max(3, cfg.reps // 2)):
                r = mod.run(samples, entries)
                vis.add("syn_mp", r["propagation_median_ms"])
                snap.add("syn_mp", r["snapshot_s"])
        except Exception as e:  # someone else's module: its failure is reported, not fatal
            vis.reps.pop("syn_mp", None)
            snap.reps.pop("syn_mp", None)
            vis.na["syn_mp"] = snap.na["syn_mp"] = f"failed: {_why(e)}"
            self.notes.append(f"cluster figures failed: {_why(e)}")
        finally:
            _client.set_node(saved)
        why = "single node"
        for k in ("dict", "ultradict", "manager", "redis"):
            vis.na[k] = snap.na[k] = why
        for k in ("syn", "syn1"):
            vis.na[k] = snap.na[k] = "not measured by this bench"
        note = (f"from bench/cluster.py: two nodes on 127.0.0.2/127.0.0.3 (unicast peers); each run's "
                f"median of {samples} registrations, one at a time; the snapshot: {entries:,} names on one "
                "node, the other's manager restarted from nothing, timed from its start until all arrive")
        vis.note = note
        snap.note = "see the row above"
        return [vis, snap]

    # ================================================================ all

    def run(self) -> list[Figure]:
        cfg = self.cfg
        steps: list[tuple[str, Callable[[], list[Figure]]]] = [
            ("lookup", self.fig_lookup),
            ("register/unregister, join/leave, members", self.fig_write),
        ]
        self.log("starting the poke workers")
        pokers = self._pokers()
        steps += [("uncached lookup", lambda: self.fig_uncached(pokers)),
                  ("scale", lambda: self.fig_scale(pokers)),
                  ("readers under a writer", self.fig_readers),
                  ("readers behind a stalled writer", self.fig_stall),
                  ("death", self.fig_death),
                  ("cluster", self.fig_cluster)]
        for name, fn in steps:
            t0 = time.perf_counter()
            self.log(f"figure: {name}")
            self.figures += fn()
            self.log(f"  {time.perf_counter() - t0:.1f} s")
            if name == "scale":
                for w in pokers.values():
                    self.drop(w)
        self.figures.append(self.memory)
        return self.figures


def _why(e: BaseException) -> str:
    if isinstance(e, ImportError):
        return f"{e.name or 'a module'} not installed"
    return str(e).splitlines()[0][:160] if str(e) else type(e).__name__


def _syn_unavailable(syn_path: str | None) -> str | None:
    from .syn_erlang import erlang_missing
    why = erlang_missing()
    if why:
        return why
    if not syn_path:
        return "no --syn-path given"
    if not os.path.isdir(syn_path):
        return f"--syn-path {syn_path} is not a directory"
    return None
