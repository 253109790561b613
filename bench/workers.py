"""Worker processes of the bench: `python -m bench.workers ROLE SPEC_JSON`.

Each attaches to the store that SPEC (a Store.spec() plus role options) names, prints
"ready", then answers one line per command line on stdin:

  poke    "p TAG"      -> one write of the name "poke" in store TAG (elsewhere in the table); "k" once done
          "c TAG KEY"  -> a new meta for the name KEY itself in store TAG (its holder kept); "k" once done
  reader  "read S"     -> lookups of the spec's names for S seconds; "N SECONDS"
          "lat S"      -> (syn_mp) each lookup timed alone, cache emptied before it, for S seconds;
                          "N P50 P99 P99.9 MAX ODD CPU99.9 CPUMAX VCSW IVCSW" (ns; ODD: lookups begun
                          with the seq word odd; CPU: the lookups' thread CPU time; VCSW, IVCSW: the
                          reader's voluntary (it blocked) and involuntary (preempted) context switches)
  writer  "write S"    -> register+unregister of its own names for S seconds; "N SECONDS"
          "stall N"    -> (syn_mp) one register+unregister that SIGSTOPs this process at its N-th
                          logged store (C test hook); "k" once continued (SIGCONT) and done
  death   "spawn N"    -> forks N children that each register ("victim", i) and wait; "ready"
          "spawn N plain" -> the same children registering nothing (a control for the kernel's part)
          "kill"       -> SIGKILLs them all at once; polls registry_count until 0; "SECONDS"
"""
from __future__ import annotations

import json
import os
import random
import signal
import sys
import time


def reader_keys(n_names: int, count: int, seed: int) -> list:
    rnd = random.Random(seed)
    return [f"name-{rnd.randrange(n_names)}" for _ in range(count)]


def _say(*parts: object) -> None:
    sys.stdout.write(" ".join(str(p) for p in parts) + "\n")
    sys.stdout.flush()


def _death(spec: dict) -> None:
    import syn_mp
    from syn_mp import _client
    scope = spec["scope"]
    children: list[int] = []
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "spawn":
            n = int(cmd[1])
            # controls: "plain" children register nothing; "nomailbox" ones register with an explicit pid,
            # which (unlike pid=None) does not open the process's mailbox (a socket and a drain thread)
            variant = cmd[2] if len(cmd) > 2 else ""
            plain = variant == "plain"
            base = _client.node().request("status")["watched"]
            r, w = os.pipe()
            for i in range(n):
                pid = os.fork()
                if pid == 0:  # the child: register, report, wait to be killed
                    os.close(r)
                    try:
                        if variant == "nomailbox":
                            syn_mp.register(scope, ("victim", i), pid=os.getpid())
                        elif not plain:
                            syn_mp.register(scope, ("victim", i))
                        os.write(w, b".")
                    except BaseException:
                        os.write(w, b"E")
                        os._exit(1)
                    while True:
                        signal.pause()
                children.append(pid)
            os.close(w)
            got = b""
            while len(got) < n:
                chunk = os.read(r, n)
                if not chunk:
                    break
                got += chunk
            os.close(r)
            if got != b"." * n:
                _say("error", "children failed to register")
                continue
            # wait until the manager watches every child: a kill must not race the registration
            deadline = time.monotonic() + 30
            while (not plain and _client.node().request("status")["watched"] < base + n
                   and time.monotonic() < deadline):
                time.sleep(0.005)
            _say("ready", syn_mp.registry_count(scope))
        elif cmd[0] == "kill":
            # besides the registry, watch the children's own pidfds: the time the kernel reports the
            # last of them exited is the floor nothing in user space can beat
            import select
            ep = select.epoll()
            fds = {}
            for pid in children:
                fd = os.pidfd_open(pid)
                fds[fd] = pid
                ep.register(fd, select.EPOLLIN)
            count = syn_mp.registry_count
            t0 = time.perf_counter()
            for pid in children:
                os.kill(pid, signal.SIGKILL)
            t_sent = time.perf_counter() - t0
            deadline = t0 + 30
            exited = 0
            t_exit = t_empty = None
            while t_exit is None or t_empty is None:
                now = time.perf_counter()
                if now > deadline:
                    break
                if t_exit is None:
                    for fd, _ in ep.poll(0):
                        ep.unregister(fd)
                        exited += 1
                    if exited == len(children):
                        t_exit = time.perf_counter() - t0
                if t_empty is None and count(scope) == 0:
                    t_empty = time.perf_counter() - t0
                time.sleep(0.0002)
            left = count(scope)
            ep.close()
            for fd in fds:
                os.close(fd)
            for pid in children:
                os.waitpid(pid, 0)
            children.clear()
            _say(t_empty if t_empty is not None else -1, t_sent, left, t_exit if t_exit is not None else -1)


def main() -> None:
    role, spec = sys.argv[1], json.loads(sys.argv[2])
    if role == "death":
        _say("ready")
        _death(spec)
        return
    from .contenders import attach
    from .stats import percentile
    if role == "poke":
        stores = {tag: attach(s) for tag, s in spec["stores"].items()}
        _say("ready")
        i = 0
        for line in sys.stdin:
            cmd = line.split()
            if cmd and cmd[0] == "p":
                i += 1
                stores[cmd[1]].put("poke", i)
                _say("k")
            elif cmd and cmd[0] == "c":
                i += 1
                stores[cmd[1]].change(cmd[2], i)
                _say("k")
            elif cmd and cmd[0] == "quit":
                break
        for s in stores.values():
            s.close()
        return
    store = attach(spec)
    if role == "reader":
        keys = reader_keys(spec["names"], spec.get("count", 128), spec.get("seed", 7))
        if spec.get("nocache"):  # diagnostics: every lookup reads the table
            store.lookup_loop = store.lookup_loop_nocache
        store.lookup_loop(keys)  # warm: attach, caches
    elif role == "writer":
        keys = [f"w-{os.getpid()}-{i}" for i in range(spec.get("count", 64))]
    _say("ready")
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "read":
            n, dt = store.read_for(keys, float(cmd[1]))
            _say(n, dt)
        elif cmd[0] == "lat":
            import resource
            r0 = resource.getrusage(resource.RUSAGE_THREAD)
            wall, cpu, odd = store.latency_for(keys, float(cmd[1]))
            r1 = resource.getrusage(resource.RUSAGE_THREAD)
            wall.sort()
            cpu.sort()
            q = [percentile(wall, x) for x in (0.5, 0.99, 0.999)]
            _say(len(wall), *q, wall[-1], odd, percentile(cpu, 0.999), cpu[-1],
                 r1.ru_nvcsw - r0.ru_nvcsw, r1.ru_nivcsw - r0.ru_nivcsw)
        elif cmd[0] == "write":
            n, dt = store.write_for(keys, float(cmd[1]))
            _say(n, dt)
        elif cmd[0] == "stall":
            from syn_mp._native import lib
            lib.synt_test_sigstop_after(int(cmd[1]))
            try:
                store.regunreg_loop(keys[:1])
            finally:
                lib.synt_test_sigstop_after(-1)  # disarmed, whether it fired or not
            _say("k")
        elif cmd[0] == "quit":
            break
    store.close()


if __name__ == "__main__":
    main()


class WorkerProc:
    """The bench's side of one worker: start it, send a command, read its one-line answer."""

    def __init__(self, role: str, spec: dict, env: dict | None = None, timeout: float = 120.0,
                 wait: bool = True) -> None:
        import subprocess
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        e = dict(env if env is not None else os.environ)
        e["PYTHONPATH"] = root + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
        self.timeout = timeout
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.workers", role, json.dumps(spec)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=e, cwd=root, bufsize=1)
        self.role = role
        if wait:
            self.ready()

    def ready(self) -> "WorkerProc":
        """Wait for the worker's "ready" (start several with wait=False, then call this on each)."""
        first = self._line()
        if first.split()[:1] != ["ready"]:
            raise RuntimeError(f"worker {self.role} did not start: {first!r} {self._stderr()}")
        return self

    def _stderr(self) -> str:
        if self.proc.poll() is None:
            return ""
        return self.proc.stderr.read() if self.proc.stderr else ""

    def _line(self) -> str:
        import select
        r, _, _ = select.select([self.proc.stdout], [], [], self.timeout)
        line = self.proc.stdout.readline() if r else ""
        if not line:
            raise RuntimeError(f"worker {self.proc.pid} gave no answer: {self._stderr()[-2000:]}")
        return line.strip()

    def send(self, cmd: str) -> None:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()

    def ask(self, cmd: str) -> list[str]:
        self.send(cmd)
        return self._line().split()

    def close(self) -> None:
        import subprocess
        p = self.proc
        if p.poll() is None:
            try:
                p.stdin.write("quit\n")
                p.stdin.flush()
                p.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
        for f in (p.stdout, p.stderr):
            if f:
                f.close()
