"""A small supervisor: N workers with stable ids, restarted when they die, found through events().

    python examples/supervisor.py --workers 3 --duration 60

It starts N worker processes (this same file, `worker` mode). Each claims the lowest free id
with claim_slot and joins the group "workers" with meta {"id": id}, then serves: it answers
every multi_call with its id. The supervisor follows syn_mp.events(scope): a "left" event of
one of its workers with reason "process_exit" (the node's manager saw the process die) makes
it start a replacement, which claims the dead worker's id. A worker that leaves with reason
"normal" (it left on purpose) is not restarted.

The supervisor stops after --duration seconds or on SIGTERM/SIGINT: it sends its workers
SIGTERM, waits for them (SIGKILL after 5 s) and exits 0. Try, from another shell:

    syn-mp members jobs workers
    kill -9 <a worker's pid>          # and watch it come back with the same id
    syn-mp watch jobs
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from typing import Optional

import syn_mp

GROUP = "workers"


# ------------------------------------------------------------------ the worker

def worker(scope: str, slots: int) -> None:
    syn_mp.add_node_to_scopes([scope])
    i = syn_mp.claim_slot(scope, "worker", slots)
    syn_mp.join(scope, GROUP, meta={"id": i})
    parent = os.getppid()
    while os.getppid() == parent:  # a worker never outlives its supervisor
        try:
            msg = syn_mp.receive(timeout=0.5)
        except TimeoutError:
            continue
        if isinstance(msg, syn_mp.MultiCall):
            msg.reply({"id": i, "pid": os.getpid()})


# ------------------------------------------------------------------ the supervisor

class Stop(Exception):
    """Raised by the signal handler to leave the event loop."""


class Supervisor:
    def __init__(self, scope: str, size: int) -> None:
        self.scope, self.size = scope, size
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self.stopping = False
        self.waiting = False  # True while blocked in the event stream: a signal may interrupt it

    def log(self, text: str) -> None:
        print(f"supervisor: {text}", flush=True)

    def on_signal(self, signum: int, _frame: object) -> None:
        self.stopping = True
        if self.waiting:
            raise Stop(signal.Signals(signum).name)

    def start_worker(self) -> subprocess.Popen[bytes]:
        p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "worker", "--scope", self.scope,
                              "--workers", str(self.size)])
        self.children[p.pid] = p
        return p

    def run(self, duration: float) -> None:
        syn_mp.add_node_to_scopes([self.scope])
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM):
            signal.signal(sig, self.on_signal)
        signal.setitimer(signal.ITIMER_REAL, duration)  # the bound on our lifetime: SIGALRM
        stream = syn_mp.events(self.scope)  # from now on: no death of our workers is missed
        for _ in range(self.size):
            p = self.start_worker()
            self.log(f"started worker pid {p.pid}")
        try:
            while True:
                self.waiting = True
                if self.stopping:
                    break
                event = next(stream)
                self.waiting = False
                self.handle(event)
        except Stop as e:
            self.log(f"{e}: stopping")
        finally:
            self.waiting = False
            signal.setitimer(signal.ITIMER_REAL, 0)
            self.stop_all()

    def handle(self, e: syn_mp.Event) -> None:
        if e.kind == "joined" and e.key == GROUP and e.pid.pid in self.children:
            self.log(f"worker pid {e.pid.pid} has id {e.meta['id']}")
        if e.kind != "left" or e.key != GROUP or e.pid.pid not in self.children:
            return
        dead = self.children.pop(e.pid.pid)
        if e.reason != "process_exit":
            self.log(f"worker id {e.meta['id']} (pid {e.pid.pid}) left ({e.reason}): not restarted")
            return
        dead.wait()  # reap it
        self.log(f"worker id {e.meta['id']} (pid {e.pid.pid}) died ({_exit(dead.returncode)}): restarting")
        self.start_worker()

    def stop_all(self) -> None:
        for p in self.children.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for p in self.children.values():
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.log(f"stopped {len(self.children)} workers")


def _exit(code: Optional[int]) -> str:
    if code is not None and code < 0:
        return signal.Signals(-code).name
    return f"exit status {code}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", nargs="?", choices=["supervise", "worker"], default="supervise")
    ap.add_argument("--scope", default="jobs")
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--duration", type=float, default=60.0, help="stop after this many seconds (default 60)")
    args = ap.parse_args()
    if args.workers <= 0 or args.duration <= 0:
        ap.error("--workers and --duration must be positive")
    if args.mode == "worker":
        worker(args.scope, args.workers)
    else:
        Supervisor(args.scope, args.workers).run(args.duration)


if __name__ == "__main__":
    main()
