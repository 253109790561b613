"""Erlang Syn as a contender: built from the user's checkout (--syn-path) in a temp dir, driven
by bench/syn_driver.erl over stdin/stdout. Nothing of Syn is vendored here."""
from __future__ import annotations

import glob
import os
import select
import shutil
import signal
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def erlang_missing() -> str | None:
    """Why Syn cannot run here, or None."""
    for exe in ("erl", "erlc"):
        if shutil.which(exe) is None:
            return "Erlang not installed"
    return None


class SynErlang:
    key, label, shared = "syn", "Syn (Erlang)", True

    def __init__(self, syn_path: str, schedulers: int | None = None) -> None:
        """schedulers: the VM's `+S N` (None: its default, one per core). DESIGN.md measures Syn
        both ways and holds the goals against the faster: one scheduler often is, here."""
        self.syn_path = os.path.abspath(syn_path)
        self.schedulers = schedulers
        if schedulers is not None:
            self.key, self.label = f"syn{schedulers}", f"Syn +S {schedulers}"
        self.tmp = ""
        self.proc: subprocess.Popen | None = None
        self.version = ""
        self.build_log = ""

    # ------------------------------------------------------------- build

    def build(self) -> str:
        """Compile Syn (rebar3 if there is one, else erlc) and the driver; returns the ebin dirs."""
        src = os.path.join(self.syn_path, "src")
        if not os.path.isdir(src) or not glob.glob(os.path.join(src, "syn*.erl")):
            raise RuntimeError(f"{self.syn_path} is not a Syn checkout (no src/syn*.erl)")
        self.tmp = tempfile.mkdtemp(prefix=f"synbench-{os.getpid()}-erl-")
        ebin = os.path.join(self.tmp, "ebin")
        os.makedirs(ebin)
        copy = os.path.join(self.tmp, "syn")
        shutil.copytree(self.syn_path, copy, ignore=shutil.ignore_patterns(".git", "_build", "test", "doc"))
        built = None
        if shutil.which("rebar3") and os.path.exists(os.path.join(copy, "rebar.config")):
            r = subprocess.run(["rebar3", "compile"], cwd=copy, capture_output=True, text=True, timeout=600)
            self.build_log += r.stdout + r.stderr
            cand = os.path.join(copy, "_build", "default", "lib", "syn", "ebin")
            if r.returncode == 0 and glob.glob(os.path.join(cand, "*.beam")):
                for f in glob.glob(os.path.join(cand, "*.beam")):
                    shutil.copy(f, ebin)
                built = "rebar3"
        if built is None:
            files = sorted(glob.glob(os.path.join(copy, "src", "*.erl")))
            # behaviours first, so that their users compile without warnings
            files.sort(key=lambda f: 0 if "behaviour_info" in open(f).read() or "-callback" in open(f).read() else 1)
            for f in files:
                r = subprocess.run(["erlc", "-o", ebin, "-pa", ebin, "-I", os.path.join(copy, "src"),
                                    "-I", os.path.join(copy, "include"), f],
                                   capture_output=True, text=True, timeout=600)
                self.build_log += r.stdout + r.stderr
                if r.returncode != 0:
                    raise RuntimeError(f"erlc {os.path.basename(f)} failed: {r.stderr[-2000:]}")
            built = "erlc"
        r = subprocess.run(["erlc", "-o", ebin, os.path.join(HERE, "syn_driver.erl")],
                           capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise RuntimeError(f"erlc syn_driver.erl failed: {r.stderr[-2000:]}")
        self.built_with = built
        self.app_src = os.path.join(copy, "src", "syn.app.src")
        return ebin

    # ------------------------------------------------------------- run

    def start(self) -> None:
        ebin = self.build()
        self.proc = subprocess.Popen(
            ["erl"] + (["+S", str(self.schedulers)] if self.schedulers else []) +
            ["-noshell", "-pa", ebin, "-run", "syn_driver", "main", self.app_src, ebin],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        words = self._answer(120)
        if words[:1] != ["ready"]:
            raise RuntimeError(f"Syn driver did not start: {words}")
        self.version = f"Syn {words[1]}, Erlang/OTP {words[2]} ({self.built_with})"

    def _answer(self, timeout: float) -> list[str]:
        assert self.proc and self.proc.stdout
        while True:
            r, _, _ = select.select([self.proc.stdout], [], [], timeout)
            line = self.proc.stdout.readline() if r else ""
            if not line:
                err = self.proc.stderr.read() if self.proc.poll() is not None and self.proc.stderr else ""
                raise RuntimeError(f"Syn driver gave no answer {err[-2000:]}")
            if line.startswith("@@ "):
                return line[3:].split()
            # anything else is the VM's own output: ignore

    def cmd(self, *words: object, timeout: float = 300) -> list[float]:
        assert self.proc and self.proc.stdin
        self.proc.stdin.write(" ".join(str(w) for w in words) + "\n")
        self.proc.stdin.flush()
        out = self._answer(timeout)
        if out[:1] != ["ok"]:
            raise RuntimeError(f"Syn driver: {' '.join(words_ for words_ in map(str, words))}: {' '.join(out)[:2000]}")
        return [float(x) for x in out[1:]]

    def close(self) -> None:
        p = self.proc
        if p is not None:
            if p.poll() is None:
                try:
                    p.stdin.write("quit\n")
                    p.stdin.flush()
                    p.wait(timeout=10)
                except (OSError, subprocess.TimeoutExpired):
                    os.kill(p.pid, signal.SIGKILL)
                    p.wait()
            for f in (p.stdin, p.stdout, p.stderr):
                if f:
                    f.close()
            self.proc = None
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = ""
