"""Docs that work as written (issue 15, 5): every shell and Python snippet of README.md and docs/ is run
here, or carries a visible marker in the doc source, on the line before its fence, saying why not or
what runs it:

    <!-- not run: REASON -->                  (it needs what a test machine has not: a cluster, systemd)
    <!-- run by tests/test_X.py -->           (a test runs it as written; that test names the doc)
    <!-- run after the page's first snippet --> (it continues the page's first snippet: run after it)
    <!-- run with env: K=V ... -->            (run here, with these environment variables)

An unmarked Python snippet runs as a script in a fresh node (its own runtime dir, its manager
stopped after); an unmarked shell snippet runs with `bash -e` the same way, syn-mp on PATH.
"""
from __future__ import annotations

import glob
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Iterator

import psutil
import pytest

from conftest import ROOT, unlink_segments_of

LANGS = {"python": "python", "sh": "sh", "bash": "sh", "shell": "sh", "console": "sh"}
MARKER = re.compile(r"^<!-- (not run: (?P<why>.+?)|run by (?P<by>tests/\S+\.py).*?|(?P<after>run after the page's "
                    r"first snippet)|run with env: (?P<env>.+?)) -->$")


@dataclass
class Snippet:
    doc: str      # path from the checkout's root
    line: int     # the fence's line, from 1
    lang: str     # "python" or "sh"
    code: str
    marker: str   # the marker line, or ""

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


def snippets() -> list[Snippet]:
    docs = ["README.md"] + sorted(os.path.relpath(p, ROOT)
                                  for p in glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True))
    out = []
    for doc in docs:
        with open(os.path.join(ROOT, doc), encoding="utf-8") as f:
            lines = f.read().split("\n")
        i = 0
        while i < len(lines):
            m = re.match(r"^```(\w+)\s*$", lines[i])
            if m is None:
                i += 1
                continue
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            if m.group(1) in LANGS:
                prev = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
                marker = prev if prev.startswith("<!--") else ""
                out.append(Snippet(doc, i + 1, LANGS[m.group(1)], "\n".join(lines[i + 1:end]) + "\n", marker))
            i = end + 1
    return out


SNIPPETS = snippets()
TO_RUN = [s for s in SNIPPETS if not s.marker or "run after" in s.marker or "run with env" in s.marker]


def test_every_snippet_is_run_or_marked() -> None:
    assert len(SNIPPETS) > 20, "the docs' snippets were not found"
    for s in SNIPPETS:
        if not s.marker:
            continue
        m = MARKER.match(s.marker)
        assert m, f"{s.id}: not a marker this test knows: {s.marker!r}"
        if m.group("by"):
            with open(os.path.join(ROOT, m.group("by")), encoding="utf-8") as f:
                assert os.path.basename(s.doc) in f.read(), f"{s.id}: {m.group('by')} does not name {s.doc}"
    for s in TO_RUN:
        assert not re.search(r"^\$ ", s.code, re.M), f"{s.id}: a sample session ($ prompts) can't run: mark it"


def _first_of_page(s: Snippet) -> Snippet:
    return next(x for x in SNIPPETS if x.doc == s.doc and x.lang == s.lang)


@pytest.fixture
def fresh_node() -> Iterator[tuple[str, dict[str, str]]]:
    rdir = tempfile.mkdtemp(prefix="synmp-", dir="/tmp")  # short: AF_UNIX paths
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYN_MP_")}
    env.update(SYN_MP_RUNTIME_DIR=os.path.join(rdir, "rt"), SYN_MP_NODE="docs",
               PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""))
    yield rdir, env
    subprocess.run([sys.executable, "-m", "syn_mp", "stop"], env=env, capture_output=True, timeout=30)
    for p in psutil.process_iter():  # whatever a snippet left running, by pid
        try:
            if p.pid != os.getpid() and p.environ().get("SYN_MP_RUNTIME_DIR") == env["SYN_MP_RUNTIME_DIR"]:
                p.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    unlink_segments_of(env["SYN_MP_RUNTIME_DIR"])
    subprocess.run(["rm", "-rf", rdir], check=False)


@pytest.mark.parametrize("snippet", TO_RUN, ids=lambda s: s.id)
def test_snippet_runs_as_written(snippet: Snippet, fresh_node: tuple[str, dict[str, str]]) -> None:
    rdir, env = fresh_node
    code = snippet.code
    m = MARKER.match(snippet.marker) if snippet.marker else None
    if m and m.group("after"):
        code = _first_of_page(snippet).code + code
    if m and m.group("env"):
        env.update(kv.split("=", 1) for kv in shlex.split(m.group("env")))
    path = os.path.join(rdir, "snippet.py" if snippet.lang == "python" else "snippet.sh")
    with open(path, "w", encoding="utf-8") as f:
        f.write(code)
    argv = [sys.executable, path] if snippet.lang == "python" else ["bash", "-e", path]
    r = subprocess.run(argv, cwd=rdir, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{snippet.id} failed as written:\n{code}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}"
