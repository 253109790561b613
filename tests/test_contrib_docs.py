"""The docs: every public name in docs/api.md with its real parameters, the README's links, and the
one-machine cluster walk-through of docs/operations.md run as written."""
from __future__ import annotations

import inspect
import os
import re
import signal
import socket
import subprocess
import sys

import psutil

import syn_mp

from conftest import ROOT, wait_for

DOCS = os.path.join(ROOT, "docs")


def read(*path: str) -> str:
    with open(os.path.join(ROOT, *path), encoding="utf-8") as f:
        return f.read()


def test_api_md_documents_every_public_name_with_its_parameters():
    api = read("docs", "api.md")
    headings = {m.group(1): m.group(2) for m in re.finditer(r"^### `(\w+)(\(.*?\))?", api, re.M)}
    missing = [n for n in syn_mp.__all__ if n not in headings and not re.search(rf"`{n}`", api)]
    assert not missing, f"not in docs/api.md: {missing}"
    for name in syn_mp.__all__:
        obj = getattr(syn_mp, name)
        if not inspect.isfunction(obj):
            continue
        assert name in headings, f"docs/api.md has no heading for {name}"
        documented = [p.split(":")[0].split("=")[0].strip().lstrip("*")
                      for p in re.split(r",\s*(?![^\[]*\])", headings[name][1:-1])
                      if p.strip() not in ("", "*", "/")]  # a bare * or / marks keyword-only or positional-only
        assert documented == list(inspect.signature(obj).parameters), f"{name}{headings[name]}"


def test_readme_links_every_docs_page():
    readme = read("README.md")
    pages = ["docs/api.md", "docs/operations.md"] + [f"docs/integrations/{p}.md" for p in
                                                      ("gunicorn", "uvicorn", "hypercorn", "celery", "pools")]
    for page in pages:
        assert os.path.exists(os.path.join(ROOT, page)), page
        assert page in readme or page.replace("docs/integrations/", "") in readme, f"README does not link {page}"
    for link in re.findall(r"\]\(([^)#]+\.md)\)", readme):
        assert os.path.exists(os.path.join(ROOT, link)), f"README links a missing page: {link}"


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_one_machine_cluster_walk_through_runs_as_written(make_node, tmp_path):
    doc = read("docs", "operations.md")
    script = doc.split("Try it on one machine", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    a, b = make_node("a"), make_node("b")  # their runtime dirs stand in for /tmp/node-a and /tmp/node-b
    port = str(_free_udp_port())
    script = (script.replace("/tmp/node-a", a.rdir).replace("/tmp/node-b", b.rdir)
              .replace("/tmp/secret", str(tmp_path / "secret")).replace("47370", port))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYN_MP_")}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")  # syn-mp and python3
    try:
        r = subprocess.run(["bash", "-e", "-c", script], env=env, capture_output=True, text=True, timeout=40)
    finally:
        for p in _processes_of(a.rdir, b.rdir):  # whatever the script left behind, by pid
            p.send_signal(signal.SIGKILL)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    headers = [i for i, line in enumerate(lines) if line.split()[:4] == ["NAME", "NODE", "PID", "META"]]
    assert len(headers) == 2, r.stdout
    # node b sees node a's process, and the nodes of the scope
    assert re.fullmatch(r"hello\s+a\s+\d+\s+\{'from': 'a'\}", lines[headers[0] + 1]), r.stdout
    assert re.search(r"^b \(this node\)\s+0\na\s+1$", r.stdout, re.M), r.stdout
    # after the kill, node b's registry is empty: node a saw the death and told node b at once
    assert lines[headers[1] + 1].startswith("manager "), r.stdout
    wait_for(lambda: a.manager_pid() is None and b.manager_pid() is None, what="both managers stopped")


def _processes_of(*rdirs: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter():
        try:
            if p.pid != os.getpid() and (p.environ().get("SYN_MP_RUNTIME_DIR") in rdirs
                                         or any(d in arg for arg in p.cmdline() for d in rdirs)):
                found.append(p)
        except psutil.Error:
            pass
    return found
