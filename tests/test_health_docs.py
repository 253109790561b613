"""The health checks of docs/operations.md as written (issue 15, 4): the systemd unit's ExecStart and
the Kubernetes liveness probe's command, run against a healthy manager (exit 0), a manager whose
journal pump keeps crashing (exit 3) and no manager (exit 2)."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

from conftest import ROOT, wait_for

DOC = open(os.path.join(ROOT, "docs", "operations.md"), encoding="utf-8").read()


def commands() -> dict[str, list[str]]:
    exec_start = re.search(r"^# /etc/systemd/system/syn-mp-health\.service\n(?:.*\n)*?ExecStart=(.+)$", DOC, re.M)
    probe = re.search(r"^livenessProbe:\n  exec:\n    command: (\[.*\])$", DOC, re.M)
    assert exec_start and probe, "the health check examples are not in docs/operations.md"
    return {"systemd": shlex.split(exec_start.group(1)), "kubernetes": json.loads(probe.group(1))}


def run(argv: list[str], rdir: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    venv_bin = os.path.dirname(sys.executable)  # where /opt/syn_mp/bin, and the image's PATH, would have syn-mp
    argv = [a.replace("/opt/syn_mp/bin", venv_bin).replace("/run/syn_mp", rdir) for a in argv]
    argv[0] = argv[0] if os.path.isabs(argv[0]) else os.path.join(venv_bin, argv[0])
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)


def test_the_documented_health_checks_tell_healthy_failing_and_down(make_node):
    cmds = commands()
    healthy, failing = make_node("ok"), make_node("bad", SYN_MP_TEST_FAULT="pump")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYN_MP_")}  # only the doc's options
    for name, argv in cmds.items():
        assert run(argv, healthy.rdir, env).returncode == 2, name  # no manager yet
    healthy.daemon()
    failing.daemon()
    wait_for(lambda: run(cmds["systemd"], failing.rdir, env).returncode == 3, what="the failing pump seen")
    for name, argv in cmds.items():
        ok, bad = run(argv, healthy.rdir, env), run(argv, failing.rdir, env)
        assert ok.returncode == 0 and "health    ok" in ok.stdout, (name, ok)
        assert bad.returncode == 3 and "journal pump" in bad.stderr and bad.stderr.count("\n") == 1, (name, bad)
