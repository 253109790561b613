"""The contenders: one registry each, the same operations, each called the way its users call it.

Every registry maps a name to what syn_mp.lookup returns, (pid, meta), with meta
{"port": i}; a group maps a pid to its meta. A `Store` is one such map (a syn_mp scope,
a Redis database, one UltraDict, one Manager dict, one dict), used by the bench process
and, through `spec()` and `attach()`, by the worker processes of bench/workers.py.

All loops time themselves with perf_counter_ns around a plain `for` loop, so the loop's
own cost (about 15-25 ns per turn, `loop_overhead_ns` in results.json) is in every figure
alike.
"""
from __future__ import annotations

import os
import pickle
import signal
import subprocess
from time import perf_counter, perf_counter_ns
from typing import Any

NODE = "bench"


def meta_for(i: int) -> dict:
    return {"port": i}


def value_for(pid: int, meta: Any) -> tuple:
    """What syn_mp.lookup returns for a name: (pid, meta); the other registries store this."""
    return ((NODE, pid), meta)


def shm_allocated(path: str) -> int:
    """Bytes the kernel actually allocated for a /dev/shm file (st_blocks * 512: sparse pages count 0)."""
    try:
        return os.stat(path).st_blocks * 512
    except FileNotFoundError:
        return 0


def rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Store:
    """One name -> (pid, meta) map of a contender. Subclasses fill in the operations."""

    kind = "?"

    def fill(self, names: list, metas: list) -> None:
        raise NotImplementedError

    def get(self, key: Any) -> Any:
        raise NotImplementedError

    def lookup_loop(self, keys: list) -> int:
        raise NotImplementedError

    def timed_get(self, key: Any) -> int:
        """One lookup, called as in lookup_loop, timed alone: ns (with one perf_counter_ns pair's cost)."""
        raise NotImplementedError

    def put(self, key: Any, i: int) -> None:
        raise NotImplementedError

    def delete(self, key: Any) -> None:
        raise NotImplementedError

    def change(self, key: Any, i: int) -> None:
        """A new meta for an existing name, its holder kept (what makes every cache of it stale)."""
        self.put(key, i)

    def regunreg_loop(self, keys: list) -> int:
        raise NotImplementedError

    # groups: `group` of members given by pid
    def join_leave_loop(self, group: Any, n: int) -> int:
        raise NotImplementedError

    def add_member(self, group: Any, pid: int, i: int) -> None:
        raise NotImplementedError

    def members_loop(self, group: Any, n: int) -> int:
        raise NotImplementedError

    def members(self, group: Any) -> list:
        raise NotImplementedError

    # for the reader/writer workers
    def read_for(self, keys: list, seconds: float) -> tuple[int, float]:
        """Look keys up (cycling) for `seconds`; (lookups done, seconds taken)."""
        n = 0
        t0 = perf_counter()
        end = t0 + seconds
        while True:
            self.lookup_loop(keys)
            n += len(keys)
            t = perf_counter()
            if t >= end:
                return n, t - t0

    def write_for(self, keys: list, seconds: float) -> tuple[int, float]:
        n = 0
        t0 = perf_counter()
        end = t0 + seconds
        while True:
            self.regunreg_loop(keys)
            n += len(keys)
            t = perf_counter()
            if t >= end:
                return n, t - t0

    def spec(self) -> dict:
        raise NotImplementedError

    def close(self) -> None:
        pass


# ---------------------------------------------------------------- dict


class DictStore(Store):
    kind = "dict"

    def __init__(self) -> None:
        self.d: dict = {}
        self.groups: dict = {}
        self.pid = os.getpid()

    def fill(self, names, metas):
        pid = self.pid
        d = self.d
        for k, m in zip(names, metas):
            d[k] = value_for(pid, m)

    def get(self, key):
        return self.d.get(key)

    def lookup_loop(self, keys):
        g = self.d.get
        t0 = perf_counter_ns()
        for k in keys:
            g(k)
        return perf_counter_ns() - t0

    def timed_get(self, key):
        g = self.d.get
        t0 = perf_counter_ns()
        g(key)
        return perf_counter_ns() - t0

    def put(self, key, i):
        self.d[key] = value_for(self.pid, meta_for(i))

    def delete(self, key):
        del self.d[key]

    def regunreg_loop(self, keys):
        d = self.d
        pid = self.pid
        t0 = perf_counter_ns()
        for i, k in enumerate(keys):
            d[k] = ((NODE, pid), {"port": i})
            del d[k]
        return perf_counter_ns() - t0

    def join_leave_loop(self, group, n):
        groups = self.groups
        pid = self.pid
        t0 = perf_counter_ns()
        for i in range(n):
            groups.setdefault(group, {})[pid] = {"port": i}
            del groups[group][pid]
        return perf_counter_ns() - t0

    def add_member(self, group, pid, i):
        self.groups.setdefault(group, {})[pid] = meta_for(i)

    def members(self, group):
        return sorted(self.groups.get(group, {}).items())

    def members_loop(self, group, n):
        groups = self.groups
        t0 = perf_counter_ns()
        for _ in range(n):
            sorted(groups.get(group, {}).items())
        return perf_counter_ns() - t0

    def memory_of_fill(self, names, metas) -> int:
        """Bytes Python allocated for a dict of these names (keys, values and the table)."""
        import tracemalloc
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            d = {}
            pid = self.pid
            for k, m in zip(names, metas):
                d[str(k)] = ((NODE, pid), dict(m))  # fresh key and value objects: as a registry holds them
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        del d
        return after - before


# ---------------------------------------------------------------- syn_mp


class SynMpStore(Store):
    kind = "syn_mp"

    def __init__(self, scope: str, holders: list[int] | None = None) -> None:
        import syn_mp
        self.syn_mp = syn_mp
        self.scope = scope
        # the processes the filled names are registered to (None: this process): as in real use, the
        # process that runs a figure's loop then holds only what the loop registers
        self.holders = holders

    def fill(self, names, metas):
        reg = self.syn_mp.register
        s = self.scope
        if self.holders:
            h = self.holders
            for i, (k, m) in enumerate(zip(names, metas)):
                reg(s, k, pid=h[i % len(h)], meta=m)
            return
        for k, m in zip(names, metas):
            reg(s, k, meta=m)

    def get(self, key):
        return self.syn_mp.lookup(self.scope, key)

    def lookup_loop(self, keys):
        lookup = self.syn_mp.lookup
        s = self.scope
        t0 = perf_counter_ns()
        for k in keys:
            lookup(s, k)
        return perf_counter_ns() - t0

    def lookup_loop_nocache(self, keys):
        """Diagnostics only: the same loop with this process's lookup cache emptied before each call,
        so that every lookup reads the table (what a writer elsewhere causes)."""
        from syn_mp._client import table_of
        cache = table_of(self.scope).lookup_cache
        clear = cache.clear
        lookup = self.syn_mp.lookup
        s = self.scope
        t0 = perf_counter_ns()
        for k in keys:
            clear()
            lookup(s, k)
        return perf_counter_ns() - t0

    def timed_get(self, key):
        lookup = self.syn_mp.lookup
        s = self.scope
        t0 = perf_counter_ns()
        lookup(s, key)
        return perf_counter_ns() - t0

    def latency_for(self, keys, seconds):
        """Per-lookup latency for `seconds`: every lookup timed alone (perf_counter_ns around it),
        with this process's lookup cache emptied before it (untimed), so that each one reads the
        table through the C read path. Returns (wall ns, CPU ns, odd): the wall-clock samples; the
        same lookups' thread CPU time (read just outside the wall timer: a lookup that spun
        waiting for a writer shows there, one the scheduler preempted does not); and how many
        lookups began with the table's seq word odd (an operation open: read through the undo
        log's overlay)."""
        from time import thread_time_ns
        from syn_mp._client import table_of
        t = table_of(self.scope)
        clear, seq = t.lookup_cache.clear, t.seq
        lookup = self.syn_mp.lookup
        s = self.scope
        wall: list[int] = []
        cpu: list[int] = []
        add_w, add_c = wall.append, cpu.append
        odd = 0
        n = len(keys)
        i = 0
        end = perf_counter_ns() + int(seconds * 1e9)
        while True:
            k = keys[i]
            i = i + 1 if i + 1 < n else 0
            clear()
            odd += seq() & 1
            c0 = thread_time_ns()
            t0 = perf_counter_ns()
            lookup(s, k)
            t1 = perf_counter_ns()
            c1 = thread_time_ns()
            add_w(t1 - t0)
            add_c(c1 - c0)
            if t1 >= end:
                return wall, cpu, odd

    def put(self, key, i):
        self.syn_mp.register(self.scope, key, meta=meta_for(i))

    def change(self, key, i):
        holder = self.syn_mp.whereis_name(self.scope, key)  # untimed: the poker's side
        self.syn_mp.register(self.scope, key, pid=holder.pid if holder else None, meta=meta_for(i))

    def delete(self, key):
        self.syn_mp.unregister(self.scope, key)

    def regunreg_loop(self, keys):
        reg, unreg = self.syn_mp.register, self.syn_mp.unregister
        s = self.scope
        t0 = perf_counter_ns()
        for i, k in enumerate(keys):
            reg(s, k, meta={"port": i})
            unreg(s, k)
        return perf_counter_ns() - t0

    def join_leave_loop(self, group, n):
        join, leave = self.syn_mp.join, self.syn_mp.leave
        s = self.scope
        t0 = perf_counter_ns()
        for i in range(n):
            join(s, group, meta={"port": i})
            leave(s, group)
        return perf_counter_ns() - t0

    def add_member(self, group, pid, i):
        self.syn_mp.join(self.scope, group, pid=pid, meta=meta_for(i))

    def members(self, group):
        return self.syn_mp.members(self.scope, group)

    def members_loop(self, group, n):
        members = self.syn_mp.members
        s = self.scope
        t0 = perf_counter_ns()
        for _ in range(n):
            members(s, group)
        return perf_counter_ns() - t0

    def spec(self):
        return {"kind": "syn_mp", "scope": self.scope}


# ---------------------------------------------------------------- UltraDict

ULTRA_BUFFER = 32 << 20  # the update stream: large, so that full dumps (of the whole dict) are rare


class UltraDictStore(Store):
    kind = "ultradict"

    def __init__(self, name: str, create: bool = True) -> None:
        from UltraDict import UltraDict
        if create:
            self.u = UltraDict(name=name, create=True, buffer_size=ULTRA_BUFFER, auto_unlink=False)
        else:
            self.u = UltraDict(name=name, create=False)
        self.name = name
        self.owner = create
        self.pid = os.getpid()

    def fill(self, names, metas):
        u = self.u
        pid = self.pid
        for k, m in zip(names, metas):
            u[k] = value_for(pid, m)

    def get(self, key):
        return self.u.get(key)

    def lookup_loop(self, keys):
        g = self.u.get
        t0 = perf_counter_ns()
        for k in keys:
            g(k)
        return perf_counter_ns() - t0

    def timed_get(self, key):
        g = self.u.get
        t0 = perf_counter_ns()
        g(key)
        return perf_counter_ns() - t0

    def put(self, key, i):
        self.u[key] = value_for(self.pid, meta_for(i))

    def delete(self, key):
        del self.u[key]

    def regunreg_loop(self, keys):
        u = self.u
        pid = self.pid
        t0 = perf_counter_ns()
        for i, k in enumerate(keys):
            u[k] = ((NODE, pid), {"port": i})
            del u[k]
        return perf_counter_ns() - t0

    # a group is one entry {pid: meta}, rewritten whole (read-modify-write: not atomic across processes)
    def join_leave_loop(self, group, n):
        u = self.u
        pid = self.pid
        t0 = perf_counter_ns()
        for i in range(n):
            m = dict(u.get(group) or {})
            m[pid] = {"port": i}
            u[group] = m
            m = dict(u[group])
            del m[pid]
            u[group] = m
        return perf_counter_ns() - t0

    def add_member(self, group, pid, i):
        m = dict(self.u.get(group) or {})
        m[pid] = meta_for(i)
        self.u[group] = m

    def members(self, group):
        return sorted((self.u.get(group) or {}).items())

    def members_loop(self, group, n):
        g = self.u.get
        t0 = perf_counter_ns()
        for _ in range(n):
            sorted((g(group) or {}).items())
        return perf_counter_ns() - t0

    def shm_bytes(self) -> int:
        names = [self.u.name, self.u.name + "_memory"]
        try:
            full = bytes(self.u.full_dump_memory_name_remote).decode().strip().strip("\x00")
            if full:
                names.append(full)
        except Exception:
            pass
        return sum(shm_allocated("/dev/shm/" + n.lstrip("/")) for n in names)

    def spec(self):
        return {"kind": "ultradict", "name": self.name}

    def close(self):
        try:
            if self.owner:
                self.u.unlink()
            else:
                self.u.close()
        except Exception:
            pass


# ---------------------------------------------------------------- multiprocessing.Manager().dict()


class ManagerStore(Store):
    kind = "manager"

    def __init__(self, proxy: Any, authkey: bytes) -> None:
        self.d = proxy
        self.authkey = authkey
        self.pid = os.getpid()

    @classmethod
    def attach(cls, spec: dict) -> "ManagerStore":
        from multiprocessing.managers import DictProxy, Token
        key = bytes.fromhex(spec["authkey"])
        tok = Token("dict", spec["address"], spec["id"])
        return cls(DictProxy(tok, "pickle", authkey=key), key)

    def fill(self, names, metas):
        pid = self.pid
        batch = {}
        for k, m in zip(names, metas):
            batch[k] = value_for(pid, m)
            if len(batch) >= 10000:
                self.d.update(batch)
                batch = {}
        if batch:
            self.d.update(batch)

    def get(self, key):
        return self.d.get(key)

    def lookup_loop(self, keys):
        g = self.d.get
        t0 = perf_counter_ns()
        for k in keys:
            g(k)
        return perf_counter_ns() - t0

    def timed_get(self, key):
        g = self.d.get
        t0 = perf_counter_ns()
        g(key)
        return perf_counter_ns() - t0

    def put(self, key, i):
        self.d[key] = value_for(self.pid, meta_for(i))

    def delete(self, key):
        del self.d[key]

    def regunreg_loop(self, keys):
        d = self.d
        pid = self.pid
        t0 = perf_counter_ns()
        for i, k in enumerate(keys):
            d[k] = ((NODE, pid), {"port": i})
            del d[k]
        return perf_counter_ns() - t0

    def join_leave_loop(self, group, n):
        d = self.d
        pid = self.pid
        t0 = perf_counter_ns()
        for i in range(n):
            m = dict(d.get(group) or {})
            m[pid] = {"port": i}
            d[group] = m
            m = dict(d[group])
            del m[pid]
            d[group] = m
        return perf_counter_ns() - t0

    def add_member(self, group, pid, i):
        m = dict(self.d.get(group) or {})
        m[pid] = meta_for(i)
        self.d[group] = m

    def members(self, group):
        return sorted((self.d.get(group) or {}).items())

    def members_loop(self, group, n):
        g = self.d.get
        t0 = perf_counter_ns()
        for _ in range(n):
            sorted((g(group) or {}).items())
        return perf_counter_ns() - t0

    def spec(self):
        t = self.d._token
        return {"kind": "manager", "address": t.address, "id": t.id, "authkey": self.authkey.hex()}


# ---------------------------------------------------------------- Redis


def _rkey(k: Any) -> Any:
    return k if isinstance(k, str) else repr(k)  # a tuple name becomes its repr: Redis keys are strings


class RedisStore(Store):
    kind = "redis"

    def __init__(self, port: int, db: int) -> None:
        import redis
        self.r = redis.Redis(host="127.0.0.1", port=port, db=db)
        self.port, self.db = port, db
        self.pid = os.getpid()

    def fill(self, names, metas):
        pid = self.pid
        p = self.r.pipeline(transaction=False)
        for i, (k, m) in enumerate(zip(names, metas)):
            p.set(_rkey(k), pickle.dumps(value_for(pid, m)))
            if i % 1000 == 999:
                p.execute()
        p.execute()

    def get(self, key):
        v = self.r.get(_rkey(key))
        return None if v is None else pickle.loads(v)

    def lookup_loop(self, keys):
        g = self.r.get
        loads = pickle.loads
        t0 = perf_counter_ns()
        for k in keys:
            v = g(k if k.__class__ is str else repr(k))
            if v is not None:
                loads(v)
        return perf_counter_ns() - t0

    def timed_get(self, key):
        g = self.r.get
        loads = pickle.loads
        t0 = perf_counter_ns()
        v = g(key if key.__class__ is str else repr(key))
        if v is not None:
            loads(v)
        return perf_counter_ns() - t0

    def put(self, key, i):
        self.r.set(_rkey(key), pickle.dumps(value_for(self.pid, meta_for(i))))

    def delete(self, key):
        self.r.delete(_rkey(key))

    def regunreg_loop(self, keys):
        set_, delete = self.r.set, self.r.delete
        dumps = pickle.dumps
        pid = self.pid
        t0 = perf_counter_ns()
        for i, k in enumerate(keys):
            set_(k, dumps(((NODE, pid), {"port": i})))
            delete(k)
        return perf_counter_ns() - t0

    # a group is a hash: field pid, value the pickled meta
    def join_leave_loop(self, group, n):
        hset, hdel = self.r.hset, self.r.hdel
        dumps = pickle.dumps
        pid = self.pid
        t0 = perf_counter_ns()
        for i in range(n):
            hset(group, pid, dumps({"port": i}))
            hdel(group, pid)
        return perf_counter_ns() - t0

    def add_member(self, group, pid, i):
        self.r.hset(group, pid, pickle.dumps(meta_for(i)))

    def members(self, group):
        return sorted((int(p), pickle.loads(m)) for p, m in self.r.hgetall(group).items())

    def members_loop(self, group, n):
        hgetall = self.r.hgetall
        loads = pickle.loads
        t0 = perf_counter_ns()
        for _ in range(n):
            sorted((int(p), loads(m)) for p, m in hgetall(group).items())
        return perf_counter_ns() - t0

    def used_memory(self) -> int:
        return int(self.r.info("memory")["used_memory"])

    def spec(self):
        return {"kind": "redis", "port": self.port, "db": self.db}

    def close(self):
        self.r.close()


def attach(spec: dict) -> Store:
    """A worker process's Store for the bench process's `store.spec()`."""
    kind = spec["kind"]
    if kind == "syn_mp":
        return SynMpStore(spec["scope"])
    if kind == "ultradict":
        return UltraDictStore(spec["name"], create=False)
    if kind == "manager":
        return ManagerStore.attach(spec)
    if kind == "redis":
        return RedisStore(spec["port"], spec["db"])
    raise ValueError(f"no worker-side store for {kind!r}")


# ---------------------------------------------------------------- contenders


class Contender:
    """One registry under test: its server (if any) and its stores by tag."""

    key = "?"       # short id: results.json keys
    label = "?"     # as printed
    shared = True   # seen by other processes (dict is not)

    def __init__(self) -> None:
        self.stores: dict[str, Store] = {}
        self.version = ""

    def start(self) -> None:
        pass

    def make_store(self, tag: str) -> Store:
        raise NotImplementedError

    def store(self, tag: str) -> Store:
        s = self.stores.get(tag)
        if s is None:
            s = self.stores[tag] = self.make_store(tag)
        return s

    def worker_env(self) -> dict[str, str] | None:
        return None

    def close(self) -> None:
        for s in self.stores.values():
            try:
                s.close()
            except Exception:
                pass
        self.stores.clear()


class DictContender(Contender):
    key, label, shared = "dict", "dict", False

    def start(self):
        import sys
        self.version = "Python " + sys.version.split()[0]

    def make_store(self, tag):
        return DictStore()


class SynMpContender(Contender):
    key, label = "syn_mp", "syn_mp"

    def __init__(self, scopes: list[str]) -> None:
        super().__init__()
        self.scopes = scopes
        self.node = None
        self.sleepers: list[subprocess.Popen] = []

    def start(self):
        import syn_mp
        from .node import BenchNode
        self.version = syn_mp.__version__
        self.node = BenchNode().use(self.scopes)

    def make_store(self, tag):
        return SynMpStore(tag, holders=self.member_pids(10))

    def member_pids(self, n: int) -> list[int]:
        """n live local processes to be group members (syn_mp checks that a member is alive)."""
        while len(self.sleepers) < n:
            self.sleepers.append(subprocess.Popen(["sleep", "100000"], stdin=subprocess.DEVNULL))
        return [p.pid for p in self.sleepers[:n]]

    def worker_env(self):
        return self.node.worker_env()

    def close(self):
        super().close()
        for p in self.sleepers:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
            p.wait()
        self.sleepers.clear()
        if self.node is not None:
            self.node.close()
            self.node = None


class UltraDictContender(Contender):
    key, label = "ultradict", "UltraDict"

    def start(self):
        from importlib.metadata import version
        self.prefix = f"synbench_{os.getpid()}_"
        import UltraDict  # noqa: F401  (ImportError: not installed)
        self.version = version("UltraDict")

    def make_store(self, tag):
        return UltraDictStore(self.prefix + tag)

    def close(self):
        super().close()
        # UltraDict keeps its segments out of Python's resource tracker: remove any left over
        for n in os.listdir("/dev/shm"):
            if n.startswith(self.prefix):
                try:
                    os.unlink("/dev/shm/" + n)
                except OSError:
                    pass


class ManagerContender(Contender):
    key, label = "manager", "Manager dict"

    def start(self):
        import multiprocessing
        import sys
        self.version = "Python " + sys.version.split()[0]
        ctx = multiprocessing.get_context("fork")
        self.mgr = ctx.Manager()
        self.authkey = bytes(multiprocessing.current_process().authkey)

    def server_pid(self) -> int:
        return self.mgr._process.pid

    def make_store(self, tag):
        return ManagerStore(self.mgr.dict(), self.authkey)

    def close(self):
        self.stores.clear()  # proxies go first, the server after
        try:
            self.mgr.shutdown()
        except Exception:
            pass


class RedisContender(Contender):
    key, label = "redis", "Redis"

    def start(self):
        self._dbs: dict[str, int] = {}
        from .redis_server import RedisServer
        import redis
        self.server = RedisServer()
        self.server.start()
        self.version = f"redis-server {self.server.version}, redis-py {redis.__version__}"

    def make_store(self, tag):
        db = self._dbs.setdefault(tag, len(self._dbs) + 1)  # one database per store
        return RedisStore(self.server.port, db)

    def close(self):
        super().close()
        if getattr(self, "server", None) is not None:
            self.server.stop()
            self.server = None


def python_contenders(scopes: list[str]) -> list[Contender]:
    """syn_mp first, then the peers, in the order of the table."""
    return [SynMpContender(scopes), DictContender(), UltraDictContender(), ManagerContender(),
            RedisContender()]
