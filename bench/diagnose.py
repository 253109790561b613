"""Where syn_mp's time goes: component timings and cProfile of the figures that miss their goals.

    python -m bench.diagnose [--quick] [--out DIR]     (python -m bench runs it too, at the end)

Writes DIR/diagnostics.md and DIR/diagnostics.json. Every component is timed the way the
figures are (a plain loop, median of repetitions) on its own isolated node, so the parts can
be set against the whole; cProfile shows the same call's profile. Nothing here changes syn_mp:
the one trick is emptying this process's lookup (or members) cache before a call, to see what
a call costs when what it cached has changed.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import time
from time import perf_counter_ns as pc
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _med_ns(fn: Callable[[], Any], n: int, reps: int) -> float:
    """fn() does n operations: the median ns per operation over reps runs."""
    fn()  # warm
    out = []
    for _ in range(reps):
        t0 = pc()
        fn()
        out.append((pc() - t0) / n)
    return statistics.median(out)


def _profile(fn: Callable[[], Any], top: int = 14) -> str:
    pr = cProfile.Profile()
    pr.enable()
    fn()
    pr.disable()
    buf = io.StringIO()
    st = pstats.Stats(pr, stream=buf)
    st.sort_stats("tottime").print_stats(top)
    text = buf.getvalue().replace(ROOT + "/", "").replace(sys.prefix + "/", "")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    # keep the table: from the header line on
    for i, ln in enumerate(lines):
        if ln.lstrip().startswith("ncalls"):
            return "\n".join([lines[0].strip()] + lines[i:])
    return "\n".join(lines)


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    fields = data[data.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


class Diagnose:
    def __init__(self, quick: bool, log: Callable[[str], None]) -> None:
        self.quick = quick
        self.log = log
        self.reps = 3 if quick else 7
        self.n = 2000 if quick else 20000
        self.sections: list[dict[str, Any]] = []

    def section(self, title: str, rows: list[tuple[str, float, str]], profile: str = "", text: str = "") -> None:
        self.sections.append({"title": title, "rows": rows, "profile": profile, "text": text})

    def run(self) -> list[dict[str, Any]]:
        from .node import BenchNode
        node = BenchNode("diag")
        sleepers: list[subprocess.Popen] = []
        try:
            node.use(["d", "other"])
            sleepers = [subprocess.Popen(["sleep", "100000"], stdin=subprocess.DEVNULL) for _ in range(10)]
            self.holders = [p.pid for p in sleepers]
            self.lookups()
            self.scale()
            self.writes(node)
            self.members(sleepers)
            self.readers(node)
            self.death(node)
        finally:
            for p in sleepers:
                p.kill()
                p.wait()
            sleepers = []
            node.close()
        self.manager_profile(0)
        if not self.quick:
            self.manager_profile(3000)
        return self.sections

    def manager_profile(self, many: int) -> None:
        """A manager of its own node run under cProfile while one process, holding `many` other names,
        registers and unregisters as fast as it can."""
        import posix_ipc
        import shutil
        import signal
        import tempfile
        import syn_mp
        from syn_mp import _client, _config
        from syn_mp._table import iter_segments
        self.log(f"diagnostics: the manager under cProfile ({many} names held)")
        rdir = tempfile.mkdtemp(prefix=f"synbench-{os.getpid()}-", dir="/tmp")
        prof = os.path.join(rdir, "manager.prof")
        saved = {k: v for k, v in os.environ.items() if k.startswith("SYN_MP_")}
        env = {k: v for k, v in os.environ.items() if not k.startswith("SYN_MP_")}
        env.update(SYN_MP_RUNTIME_DIR=rdir, SYN_MP_NODE="diag")
        log = open(os.path.join(rdir, "daemon.log"), "ab")
        d = subprocess.Popen([sys.executable, "-c", _PROFILED_MANAGER, prof, "--runtime-dir", rdir, "daemon",
                              "--node", "diag"], cwd=ROOT, env=env, stdout=log, stderr=log)
        n = 5000 if self.quick else 200_000  # long enough for CPU time in clock ticks to mean something
        try:
            deadline = time.monotonic() + 30
            while not os.path.exists(os.path.join(rdir, "ctl.sock")):
                if d.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the profiled manager did not start")
                time.sleep(0.01)
            os.environ.update(SYN_MP_RUNTIME_DIR=rdir, SYN_MP_NODE="diag")
            _client.set_node(None)
            syn_mp.add_node_to_scopes(["m"])
            for i in range(many):
                syn_mp.register("m", f"held-{i}")
            syn_mp.register("m", "me")  # so that the manager watches this process from here on
            time.sleep(0.3)

            def pairs(tag: str) -> float:
                t0 = time.perf_counter()
                for i in range(n):
                    syn_mp.register("m", f"{tag}-{i}", meta={"port": i})
                    syn_mp.unregister("m", f"{tag}-{i}")
                return time.perf_counter() - t0

            # first without the profiler: the manager's CPU time, once it has caught up with the journal
            c0 = _cpu_ticks(d.pid)
            dt = pairs("a")
            time.sleep(0.3)
            cpu = (_cpu_ticks(d.pid) - c0) / os.sysconf("SC_CLK_TCK")
            # then the same under the profiler, switched on and off around it
            os.kill(d.pid, signal.SIGUSR1)
            time.sleep(0.1)
            pairs("b")
            time.sleep(0.3)
            os.kill(d.pid, signal.SIGUSR2)
            deadline = time.monotonic() + 10
            while not os.path.exists(prof) and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.1)
        finally:
            if d.poll() is None:
                d.send_signal(signal.SIGTERM)  # a clean stop: cProfile writes its file
                try:
                    d.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    d.kill()
                    d.wait()
            log.close()
            for seg in iter_segments(_config.segment_name(rdir, "")):
                try:
                    posix_ipc.unlink_shared_memory(seg)
                except posix_ipc.ExistentialError:
                    pass
            for k in [k for k in os.environ if k.startswith("SYN_MP_")]:
                del os.environ[k]
            os.environ.update(saved)
            _client.set_node(None)
        try:
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(14)
        finally:
            shutil.rmtree(rdir, ignore_errors=True)
        text = buf.getvalue().replace(ROOT + "/", "").replace(sys.prefix + "/", "")
        lines = [ln for ln in text.splitlines() if ln.strip()]
        start = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls")), 0)
        # the event loop's wait (epoll) is idle time, not work: left out
        table = [ln for ln in lines[start:] if "epoll" not in ln]
        records = 2 * n
        what = "holds no other name" if many == 0 else f"holds {many:,} other names"
        self.section(f"the manager, while one process that {what} registers + unregisters flat out",
                     [("register + unregister pair (the writer, meanwhile)", dt / n * 1e9, "whole"),
                      ("manager CPU per journal record (2 records per pair)", cpu / records * 1e9, "part")],
                     "\n".join(table),
                     f"The manager's CPU time (utime+stime from /proc, profiler off) for the {n:,} pairs was "
                     f"{cpu:.2f} s for {records:,} journal records, against the writer's {dt:.2f} s of writes "
                     f"({cpu / dt:.1f}x: above 1 the manager falls behind the writer and catches up after). The "
                     f"profile is of a second run of the same pairs, cProfile switched on in "
                     f"the manager only around it. With no event handler and no cluster, Manager._drain "
                     f"follows the announce ring (AnnounceReader, C synt_watch_read) instead of the journal: "
                     f"a process is announced there once, so a writer that keeps writing costs the manager "
                     f"nothing per record.")

    # ------------------------------------------------------------ lookup

    def lookups(self) -> None:
        import syn_mp
        from syn_mp import _client, codec, registry
        from syn_mp._native import lib
        self.log("diagnostics: lookup")
        h = self.holders  # the names are held by other processes, as in the figures
        for i in range(1000):
            syn_mp.register("d", f"name-{i}", pid=h[i % 10], meta={"port": i})
            syn_mp.register("d", ("web", i), pid=h[i % 10], meta={"port": i})
            syn_mp.register("d", f"none-{i}", pid=h[i % 10])
        n, reps = self.n, self.reps
        keys = [f"name-{i % 1000}" for i in range(n)]
        tkeys = [("web", i % 1000) for i in range(n)]
        nkeys = [f"none-{i % 1000}" for i in range(n)]
        lookup = syn_mp.lookup
        t = _client.table_of("d")
        ek = [codec.encode_name(k) for k in keys]
        m = codec.encode_meta({"port": 7})
        cache = t.lookup_cache
        for k in keys[:1000]:
            lookup("d", k)
        hit = cache[keys[0]]
        words, word, value = t.words, hit[0], hit[1]
        d = {k: (("n", 1), {"port": 1}) for k in keys}
        tables = _client.TABLES

        def loop_lookup(ks: list) -> Callable[[], None]:
            def f() -> None:
                for k in ks:
                    lookup("d", k)
            return f

        def uncached() -> None:
            clear = cache.clear
            for k in keys:
                clear()
                lookup("d", k)

        scratch = t._scratch()
        tt = t._t

        def c_get() -> None:
            g = lib.synt_lookup
            s = scratch
            for k in ek:
                g(tt, k, len(k), s.hit, s.buf, s.cap)

        def each(fn: Callable[[Any], Any], ks: list) -> Callable[[], None]:
            def f() -> None:
                for k in ks:
                    fn(k)
            return f

        dec = codec.decode
        rows = [
            ("syn_mp.lookup(scope, str), meta {'port': i} (cached)", _med_ns(loop_lookup(keys), n, reps), "whole"),
            ("syn_mp.lookup(scope, str), meta None (cached)", _med_ns(loop_lookup(nkeys), n, reps), "whole"),
            ("syn_mp.lookup(scope, tuple), meta {'port': i} (cached)", _med_ns(loop_lookup(tkeys), n, reps), "whole"),
            ("dict.get(str) (the floor)", _med_ns(each(d.get, keys), n, reps), "peer"),
            ("  _client.TABLES.get(scope) (the scope's table)", _med_ns(each(lambda k: tables.get("d"), keys), n, reps),
             "part"),
            ("  registry._cache_key(tuple) (a hit on the very name object cached skips it; a str is its own key)",
             _med_ns(each(registry._cache_key, tkeys), n, reps), "part"),
            ("  lookup_cache.get(name)", _med_ns(each(cache.get, keys), n, reps), "part"),
            ("  the entry's ver word, compared (t.words[i] == v)",
             _med_ns(each(lambda k: words[word] == value, keys), n, reps), "part"),
            ("  the cached result's refcount (the shared (Pid, read-only meta) handed out)",
             _med_ns(each(lambda k: hit[2], keys), n, reps), "part"),
            ("  an empty loop turn with a lambda call (harness)", _med_ns(each(lambda k: None, ek), n, reps), "harness"),
        ]
        self.section("lookup, cached path (the lookup figures)", rows,
                     _profile(loop_lookup(keys)),
                     "A cached answer is checked against one word of the segment: the entry's own ver, which "
                     "the C side zeroes when the entry goes (an update is a new entry); writes to other names "
                     "leave it alone. The result is shared by every caller, a dict meta read-only "
                     "(syn_mp/_readonly.py); only a meta holding a list is copied for each (list.copy when "
                     "nothing inside it is mutable, else decoded again).")
        unc = [
            ("syn_mp.lookup(scope, str), cache emptied before each call (uncached)",
             _med_ns(uncached, n, reps), "whole"),
            ("  Table.read_reg(key): the binding, C call included",
             _med_ns(each(t.read_reg, ek), n, reps), "part"),
            ("  lib.synt_lookup alone (the C read under the seqlock)", _med_ns(c_get, n, reps), "part"),
            ("  codec.decode(meta)", _med_ns(each(lambda k: dec(m), ek), n, reps), "part"),
            ("  codec.encode_name(str)", _med_ns(each(codec.encode_name, keys), n, reps), "part"),
            ("  dict.clear() of the cache (diagnostic harness; the next insert allocates the dict anew)",
             _med_ns(each(lambda k: cache.clear(), ek), n, reps), "harness"),
        ]
        self.section("lookup, uncached path (a name that changed since this process read it)", unc,
                     _profile(uncached))

    # ------------------------------------------------------------ scale

    def scale(self) -> None:
        import gc
        import random
        import syn_mp
        from syn_mp import _client, registry
        big = 5000 if self.quick else 100_000
        self.log(f"diagnostics: lookup among {big:,} names")
        syn_mp.add_node_to_scopes(["big"])
        h = self.holders
        for i in range(big):
            syn_mp.register("big", f"name-{i}", pid=h[i % 10], meta={"port": i})
        n, reps = max(self.n, 20000), self.reps
        rnd = random.Random(3)
        # as the bench draws them: existing name objects picked at random from a pool, so that
        # every lookup also reads a str object (its hash, its bytes) from somewhere in the heap
        pool_small = [f"name-{i}" for i in range(1000)]
        pool_big = [f"name-{i}" for i in range(big)]
        small_keys = [pool_small[rnd.randrange(1000)] for _ in range(n)]
        big_keys = [pool_big[rnd.randrange(big)] for _ in range(n)]
        # fresh objects made in the order they are used (as `lookup(scope, f"name-{i}")` makes them)
        fresh_keys = [f"name-{rnd.randrange(big)}" for _ in range(n)]
        d_small = {k: i for i, k in enumerate(pool_small)}  # as the bench fills its dict: the pool's objects
        d_big = {k: i for i, k in enumerate(pool_big)}
        lookup = syn_mp.lookup
        t_small, t_big = _client.table_of("d"), _client.table_of("big")
        misses = {"d": 0, "big": 0}

        def counted(t: Any, tag: str) -> None:
            og = t.read_reg

            def read_reg(key: bytes) -> Any:
                misses[tag] += 1
                return og(key)
            t.read_reg = read_reg  # an instance attribute: only this diagnostic counts the cache misses

        def loop(scope: str, keys: list) -> Callable[[], None]:
            def f() -> None:
                for k in keys:
                    lookup(scope, k)
            return f

        def dict_loop(dd: dict, keys: list) -> Callable[[], None]:
            def f() -> None:
                g = dd.get
                for k in keys:
                    g(k)
            return f

        gc_ns = [0]
        start = [0]

        def cb(phase: str, info: dict) -> None:
            if phase == "start":
                start[0] = pc()
            else:
                gc_ns[0] += pc() - start[0]

        counted(t_small, "d")
        counted(t_big, "big")
        try:
            a = _med_ns(loop("d", small_keys), n, reps)
            misses["d"] = 0
            loop("d", small_keys)()
            miss_small = misses["d"] / n
            gc.callbacks.append(cb)
            try:
                b = _med_ns(loop("big", big_keys), n, reps)  # its first, untimed run fills the cache
                gc_ns[0] = 0
                misses["big"] = 0
                t0 = pc()
                loop("big", big_keys)()
                whole = pc() - t0
                miss_big = misses["big"] / n
                gc_share = gc_ns[0] / whole
            finally:
                gc.callbacks.remove(cb)
        finally:
            del t_small.read_reg, t_big.read_reg
        da = _med_ns(dict_loop(d_small, small_keys), n, reps)
        db = _med_ns(dict_loop(d_big, big_keys), n, reps)
        b_fresh = _med_ns(loop("big", fresh_keys), n, reps)
        db_fresh = _med_ns(dict_loop(d_big, fresh_keys), n, reps)
        # the parts of a cached lookup at that size: each touches memory at random
        cache_big = t_big.lookup_cache
        hits = [cache_big[k] for k in big_keys]
        words = t_big.words
        results = [h[2] for h in hits]  # the shared results a hit hands out

        def each(fn: Callable[[Any], Any], xs: list) -> Callable[[], None]:
            def f() -> None:
                for x in xs:
                    fn(x)
            return f

        rows = [
            ("lookup among 1,000 names (random names from a pool, as the bench)", a, "whole"),
            (f"lookup among {big:,} names (random names from a pool, as the bench)", b, "whole"),
            ("  lookup_cache.get(name) alone", _med_ns(each(cache_big.get, big_keys), n, reps), "part"),
            ("  the entries' ver words, compared, alone (random words of the segment)",
             _med_ns(each(lambda h: words[h[0]] == h[1], hits), n, reps), "part"),
            ("  the shared results, referenced alone", _med_ns(each(lambda r: r[0], results), n, reps), "part"),
            (f"lookup among {big:,} names, fresh name objects made in the order used", b_fresh, "whole"),
            ("dict.get among 1,000 keys (names from a pool)", da, "peer"),
            (f"dict.get among {big:,} keys (names from a pool)", db, "peer"),
            (f"dict.get among {big:,} keys (fresh name objects)", db_fresh, "peer"),
        ]
        self.section(f"lookup among 1,000 vs {big:,} names (the scale figure)", rows, "",
                     f"syn_mp's lookup cache holds up to {registry._CACHE_MAX:,} names per scope. Share of "
                     f"lookups that missed it (read the table): {miss_small:.1%} among 1,000 names, "
                     f"{miss_big:.1%} among {big:,} (after the first pass over the same keys). Time in the garbage "
                     f"collector during the {big:,}-name loop: {gc_share:.0%}. What grows with the number of "
                     f"names is memory latency: {big:,} names, their cache entries and the entries' ver words in "
                     f"the segment do not fit in the CPU's caches, and each lookup touches several of them at "
                     f"random; a plain dict with the same access pattern goes from {da:,.0f} to {db:,.0f} ns "
                     f"({db / da:.1f}x). A cached lookup reads, besides the name and its slot in a dict as "
                     f"dict.get does, the cache entry, the entry's ver word in the segment and the shared "
                     f"result it hands out: the parts above, each alone. With fresh name objects (made "
                     f"where they are used, as callers usually do) the {big:,}-name lookup is {b_fresh / a:.2f}x "
                     f"the 1,000-name one.")

    # ------------------------------------------------------------ writes

    def writes(self, node: Any) -> None:
        import syn_mp
        from syn_mp import _client, codec
        from syn_mp._table import REG
        from syn_mp._native import lib
        self.log("diagnostics: register + unregister")
        n, reps = max(2000, self.n // 4), self.reps
        t = _client.table_of("d")
        reg, unreg = syn_mp.register, syn_mp.unregister
        counter = [0]

        def pairs() -> None:
            counter[0] += 1
            c = counter[0]
            for i in range(n):
                k = f"tmp-{c}-{i}"
                reg("d", k, meta={"port": i})
                unreg("d", k)

        tt = t._t
        keys = [codec.encode_name(f"x-{i}") for i in range(n)]
        meta = codec.encode_meta({"port": 1})

        from syn_mp.registry import _become_self
        _become_self()  # what the first register did: the C calls below write as this process

        def c_only() -> None:
            put, delete = lib.synt_put_self, lib.synt_unreg_local
            for k in keys:
                put(tt, REG, k, len(k), meta, len(meta))
                delete(tt, k, len(k))

        def rep(fn: Callable[[], Any]) -> Callable[[], None]:
            def f() -> None:
                for _ in range(n):
                    fn()
            return f

        mgr = node.manager_pid()

        def with_share() -> tuple[float, float]:
            """(ns per pair, share of a core the manager used meanwhile)"""
            t0, c0 = time.monotonic(), _cpu_ticks(mgr)
            v = _med_ns(pairs, n, reps)
            return v, ((_cpu_ticks(mgr) - c0) / os.sysconf("SC_CLK_TCK")) / (time.monotonic() - t0)

        whole, mgr_share = with_share()
        # a process holding many names: nothing on the write path walks them
        many = 3000
        for i in range(many):
            reg("d", f"held-{i}", meta={"port": i})
        held, held_share = with_share()
        import signal
        os.kill(mgr, signal.SIGSTOP)
        try:
            time.sleep(0.05)
            held_stopped = _med_ns(pairs, n, reps)
        finally:
            os.kill(mgr, signal.SIGCONT)
        for i in range(many):
            unreg("d", f"held-{i}")
        time.sleep(0.2)
        rows = [
            ("register + unregister (the figure's pair)", whole, "whole"),
            ("  lib.synt_put_self + lib.synt_unreg_local (the C calls, through cffi: meta check, mutex, table, "
             "undo log, journal, announce ring)", _med_ns(c_only, n, reps), "part"),
            ("  2 x codec._pack(str) (the name, packed in the call)",
             2 * _med_ns(rep(lambda: codec._pack("tmp-1-1")), n, reps), "part"),
            ("  codec._pack({'port': i}) (the meta; C checks its bytes)",
             _med_ns(rep(lambda: codec._pack({"port": 1})), n, reps), "part"),
            ("  2 x _client.TABLES[scope]", 2 * _med_ns(rep(lambda: _client.TABLES["d"]), n, reps), "part"),
        ]
        rows += [
            (f"register + unregister, by a process that holds {many:,} other names", held, "whole"),
            ("  the same, the manager stopped (SIGSTOP) meanwhile", held_stopped, "part"),
        ]
        self.section("register + unregister", rows, _profile(pairs),
                     f"Meanwhile the node's manager used {mgr_share:.0%} of a core (its CPU time over the loop's "
                     f"wall time), {held_share:.0%} when the writing process holds {many:,} names: with no event "
                     f"handler and no cluster it follows the announce ring instead of the journal, where a "
                     f"process appears once, not once per write.")

    # ------------------------------------------------------------ members

    def members(self, sleepers: list[subprocess.Popen]) -> None:
        import syn_mp
        from syn_mp import _client, codec
        from syn_mp._native import lib
        from syn_mp._table import BY_KEY, F_MSGPACK, PG, WITH_META
        self.log("diagnostics: members")
        for i, p in enumerate(sleepers):
            syn_mp.join("d", "g10", pid=p.pid, meta={"port": i})
        n, reps = max(500, self.n // 10), self.reps
        t = _client.table_of("d")
        key = codec.encode_name("g10")
        s = t._scratch()
        packed = t.collect_packed(BY_KEY, PG, key)
        rows = codec.decode(packed)
        names = t.node_names()
        new = tuple.__new__
        pairs = [(new(syn_mp.Pid, (names[nd], p)), m) for nd, p, m in rows]
        cache = t.members_cache

        def rep(fn: Callable[[], Any]) -> Callable[[], None]:
            def f() -> None:
                for _ in range(n):
                    fn()
            return f

        def uncached() -> None:
            members, clear = syn_mp.members, cache.clear
            for _ in range(n):
                clear()
                members("d", "g10")

        rows_out = [
            ("members(scope, group of 10), nothing changed since the last call (cached)",
             _med_ns(rep(lambda: syn_mp.members("d", "g10")), n, reps), "whole"),
            ("  10 x dict.copy() of the cached metas (every caller gets its own)",
             _med_ns(rep(lambda: [m.copy() for _, m in pairs]), n, reps), "part"),
            ("members(scope, group of 10), cache emptied before each call (after any write in the scope)",
             _med_ns(uncached, n, reps), "whole"),
            ("  Table.collect_packed(BY_KEY, PG, key): the rows as one msgpack array",
             _med_ns(rep(lambda: t.collect_packed(BY_KEY, PG, key)), n, reps), "part"),
            ("    lib.synt_collect alone", _med_ns(rep(lambda: lib.synt_collect(
                t._t, BY_KEY, PG, key, len(key), lib.SYNT_ALL_NODES, 0, WITH_META | F_MSGPACK, s.buf, s.cap,
                s.needed)), n, reps), "part"),
            ("  codec.decode of the rows (one msgpack unpack)", _med_ns(rep(lambda: codec.decode(packed)), n, reps),
             "part"),
            ("  10 x Pid(node, pid) (tuple.__new__)",
             _med_ns(rep(lambda: [new(syn_mp.Pid, (names[nd], p)) for nd, p, _ in rows]), n, reps), "part"),
            ("  sorting the 10 pairs by Pid", _med_ns(rep(lambda: sorted(pairs)), n, reps), "part"),
        ]
        self.section("members(group of 10)", rows_out, _profile(uncached),
                     "Cached while the table's seqlock word is unchanged (a group has no one word that says "
                     "it changed, so any write in the scope makes the next call read the table). The profile "
                     "is of the uncached calls.")

    # ------------------------------------------------------------ death

    def death(self, node: Any) -> None:
        """The kill of the death figure, against a control: the same children registering nothing."""
        from .workers import WorkerProc
        import syn_mp
        n = 50 if self.quick else 500
        reps = 2 if self.quick else 3
        self.log(f"diagnostics: {n} processes killed")
        syn_mp.add_node_to_scopes(["death"])
        w = WorkerProc("death", {"scope": "death"}, env=node.worker_env())
        got: dict[str, list[float]] = {}
        try:
            kinds = ["registered", "plain", "nomailbox"]
            for rep in range(reps):
                for kind in kinds[rep % 3:] + kinds[:rep % 3]:
                    w.ask(f"spawn {n}" + ("" if kind == "registered" else " " + kind))
                    empty, sent, left, exited = map(float, w.ask("kill"))
                    got.setdefault(f"{kind}: kills sent", []).append(sent * 1e3)
                    got.setdefault(f"{kind}: all exited (their pidfds)", []).append(exited * 1e3)
                    if kind != "plain":
                        got.setdefault(f"{kind}: registry_count == 0", []).append(empty * 1e3)
        finally:
            w.close()
        rows = [(label, statistics.median(v), "ms") for label, v in sorted(got.items())]
        self.section(f"{n} processes SIGKILLed at once (the death figure), against a control", rows, "",
                     f"Milliseconds from the first kill, median of {reps}. 'registered': each child registered "
                     f"a name and the manager watches it (the figure); 'nomailbox': registered with an explicit "
                     f"pid, which opens no mailbox (no socket, no drain thread in the child); 'plain': the same "
                     f"children, forked from the same parent, registering nothing and watched by nobody. The "
                     f"time until all have "
                     f"exited is the kernel's: it reaps the processes (their memory, their page tables) on "
                     f"{os.cpu_count()} cores.")

    # ------------------------------------------------------------ readers under a writer

    def readers(self, node: Any) -> None:
        from .contenders import SynMpStore
        from .workers import WorkerProc
        self.log("diagnostics: readers under a writer")
        import syn_mp
        for i in range(1000):
            syn_mp.register("other", f"name-{i}", meta={"port": i})
        w = 0.1 if self.quick else 0.5
        reps = 2 if self.quick else 5
        env = node.worker_env()
        base = {"names": 1000, "count": 128}
        r_cached = WorkerProc("reader", dict(SynMpStore("d").spec(), **base), env=env, wait=False)
        r_nocache = WorkerProc("reader", dict(SynMpStore("d").spec(), nocache=True, **base), env=env, wait=False)
        w_same = WorkerProc("writer", SynMpStore("d").spec(), env=env, wait=False)
        w_other = WorkerProc("writer", SynMpStore("other").spec(), env=env, wait=False)
        procs = [r_cached, r_nocache, w_same, w_other]
        for p in procs:
            p.ready()
        mgr = node.manager_pid()
        got: dict[str, list[float]] = {}
        share: list[float] = []
        wrate: list[float] = []

        def read(r: WorkerProc, writer: WorkerProc | None, label: str) -> None:
            if writer is not None:
                writer.send(f"write {w + 0.15}")
                time.sleep(0.05)
            t0, c0 = time.monotonic(), _cpu_ticks(mgr) if mgr else 0
            n, dt = r.ask(f"read {w}")
            if writer is not None and "same table" in label:
                share.append(((_cpu_ticks(mgr) - c0) / os.sysconf("SC_CLK_TCK")) / (time.monotonic() - t0))
            if writer is not None:
                wn, wdt = writer._line().split()
                if "same table" in label:
                    wrate.append(float(wn) / float(wdt))
            got.setdefault(label, []).append(float(n) / float(dt))

        cases = [("A. no writer (cache answers)", r_cached, None),
                 ("B. no writer, cache emptied before each lookup", r_nocache, None),
                 ("C. writer flat out in another table (CPU contention only)", r_cached, w_other),
                 ("D. writer flat out in the same table (the figure)", r_cached, w_same)]
        try:
            for rep in range(reps):
                k = rep % len(cases)
                for label, r, writer in cases[k:] + cases[:k]:
                    read(r, writer, label)
        finally:
            for p in procs:
                p.close()
        rows = [(label, statistics.median(v), "rate") for label, v in got.items()]
        rows.sort(key=lambda r: r[0])
        a = statistics.median(got[cases[0][0]])
        text = (f"Lookups per second of one reader process (128 names of 1,000), {w:g} s windows, median of "
                f"{reps}. Kept: B/A {statistics.median(got[cases[1][0]]) / a:.2f}, "
                f"C/A {statistics.median(got[cases[2][0]]) / a:.2f}, D/A {statistics.median(got[cases[3][0]]) / a:.2f}. "
                f"During D the writer made {statistics.median(wrate):,.0f} register+unregister pairs/s and the "
                f"node's manager used {statistics.median(share):.0%} of a core; "
                f"this machine has {os.cpu_count()} cores. A write to other names leaves the reader's "
                f"cached entries valid (their own ver words do not change), so what D costs a reader is "
                f"sharing the cores with the writer and the manager.")
        self.section("readers under a writer", rows, "", text)


# A manager whose profiler SIGUSR1 switches on and SIGUSR2 off (then writing the stats to argv[1]).
_PROFILED_MANAGER = """
import cProfile, signal, sys
from syn_mp import cli
prof = cProfile.Profile()
out = sys.argv[1]
def on(*a):
    prof.enable()
def off(*a):
    prof.disable()
    prof.dump_stats(out)
signal.signal(signal.SIGUSR1, on)
signal.signal(signal.SIGUSR2, off)
sys.exit(cli.main(sys.argv[2:]))
"""


def to_markdown(sections: list[dict[str, Any]], header: str) -> str:
    out = ["# Where syn_mp's time goes", "", header, ""]
    for s in sections:
        out += [f"## {s['title']}", ""]
        kinds = {kind for _, _, kind in s["rows"]}
        unit = "lookups/s" if "rate" in kinds else "ms" if "ms" in kinds else "ns per call"
        out += ["| what | " + unit + " |", "|---|---|"]
        for label, v, kind in s["rows"]:
            val = f"{v:,.1f}" if kind == "ms" else f"{v:,.0f}"
            out.append(f"| {label.replace('|', '/')} | {'**' + val + '**' if kind == 'whole' else val} |")
        out.append("")
        if s["text"]:
            out += [s["text"], ""]
        if s["profile"]:
            out += ["cProfile of the whole (sorted by own time):", "", "```", s["profile"], "```", ""]
    return "\n".join(out)


def write(out_dir: str, quick: bool, log: Callable[[str], None] = print) -> str:
    from . import machine
    d = Diagnose(quick, log)
    secs = d.run()
    m = machine.describe()
    header = (f"`python -m bench.diagnose{' --quick' if quick else ''}` on {m['cpu']}, {m['cores']} cores, Linux "
              f"{m['kernel']}, Python {m['python']}, at {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; load average "
              f"{machine.loadavg()}. Indented rows are parts of the bold row above them, each timed alone in "
              f"the same kind of loop (median of {d.reps}); parts overlap a little and the loop's own cost is in "
              f"each, so they add up to about, not exactly, the whole.")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "diagnostics.md")
    with open(path, "w") as f:
        f.write(to_markdown(secs, header))
    with open(os.path.join(out_dir, "diagnostics.json"), "w") as f:
        json.dump({"machine": m, "sections": secs}, f, indent=1)
        f.write("\n")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.diagnose", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    args = p.parse_args(argv)
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    print(write(args.out, args.quick, lambda s: print(s, file=sys.stderr)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
