"""syn_mp demo: a small worker pool with stable worker ids.

Four workers claim ids 0-3, register and join a group; one is SIGKILLed, the
manager removes it within milliseconds, a replacement claims the freed id, and
the admin CLI shows the state at each step. Run it with `./dev demo`.
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time

import syn_mp

SCOPE = "demo"
POOL = 4


def worker() -> None:
    """One pool worker: claim a stable id, name itself, join the pool, then wait to be stopped."""
    syn_mp.add_node_to_scopes([SCOPE])
    slot = syn_mp.claim_slot(SCOPE, "worker", POOL, meta={"started": time.strftime("%H:%M:%S")})
    syn_mp.join(SCOPE, "workers", meta={"slot": slot})
    print(slot, flush=True)
    sys.stdin.read()  # until the supervisor closes our stdin (or kills us)


def cli(*args: str) -> None:
    print(f"\n$ syn-mp {shlex.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "syn_mp", *args], check=False)


def start_worker() -> tuple[subprocess.Popen, int]:
    p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "worker"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    return p, int(p.stdout.readline())


def supervisor() -> None:
    # the demo's own node, so it never touches a real installation's registry
    rdir = tempfile.mkdtemp(prefix="syn_mp-demo-")
    os.environ["SYN_MP_RUNTIME_DIR"] = rdir
    print(f"== a node in runtime dir {rdir}; the first client starts its manager")
    syn_mp.add_node_to_scopes([SCOPE])
    print(f"   node {syn_mp.node_name()!r}, scopes {syn_mp.node_scopes()}")

    print(f"\n== starting {POOL} workers: each claims the lowest free id with claim_slot")
    workers: dict[int, subprocess.Popen] = {}
    for _ in range(POOL):
        p, slot = start_worker()
        workers[slot] = p
        print(f"   pid {p.pid} -> id {slot}")
    cli("registry", SCOPE)
    cli("members", SCOPE, "workers")

    victim = workers.pop(2)
    print(f"\n== SIGKILL worker id 2 (pid {victim.pid})")
    t0 = time.perf_counter()
    victim.send_signal(signal.SIGKILL)
    while syn_mp.whereis_name(SCOPE, ("worker", 2)) is not None:
        time.sleep(0.0005)
    print(f"   its name and membership were gone {1000 * (time.perf_counter() - t0):.1f} ms later")
    victim.wait()
    print(f"   members now: {[p.pid for p, _ in syn_mp.members(SCOPE, 'workers')]}")

    print("\n== a replacement worker starts")
    p, slot = start_worker()
    workers[slot] = p
    print(f"   pid {p.pid} -> id {slot} (the id of the worker that died)")
    print(f"   lookup(('worker', 2)) from the supervisor: {syn_mp.lookup(SCOPE, ('worker', 2))}")
    cli("--json-key", "lookup", SCOPE, '["worker", 2]')
    cli("members", SCOPE, "workers")
    cli("status")

    print("\n== stopping the workers and the manager")
    for p in workers.values():
        assert p.stdin is not None
        p.stdin.close()
        p.wait()
    while syn_mp.member_count(SCOPE, "workers"):
        time.sleep(0.001)
    cli("stop")
    _remove_node(rdir)
    print("done")


def _remove_node(rdir: str) -> None:
    import shutil

    import posix_ipc

    from syn_mp import _config
    for scope in syn_mp.node_scopes():
        try:
            posix_ipc.unlink_shared_memory(_config.segment_name(rdir, scope))
        except posix_ipc.ExistentialError:
            pass
    shutil.rmtree(rdir, ignore_errors=True)


if __name__ == "__main__":
    worker() if sys.argv[1:] == ["worker"] else supervisor()
