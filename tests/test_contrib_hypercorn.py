"""syn_mp.contrib.hypercorn with a real `hypercorn --workers 2` on 127.0.0.1 (issue 15, 6)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import psutil
import pytest

import syn_mp
from syn_mp.contrib import SettingsError

from conftest import pid_alive, wait_for
from servers import require, free_port, get, ids, ids_when, stop

APP = '''
import json, os
from syn_mp.contrib.hypercorn import wrap, worker_id

async def inner(scope, receive, send):
    assert scope["type"] == "http", "no lifespan here"
    body = json.dumps({"pid": os.getpid(), "id": worker_id(), "env": os.environ.get("SYN_MP_WORKER_ID")}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})

app = wrap(inner)
'''


def _answers(port: int) -> dict | None:
    try:
        return get(port)
    except OSError:
        return None


def _hypercorn(n, tmp_path, port: int, *args: str) -> tuple[subprocess.Popen, object]:
    (tmp_path / "asgiapp.py").write_text(textwrap.dedent(APP))
    log = open(tmp_path / "hypercorn.log", "wb")
    env = {k: v for k, v in n.env.items() if k not in ("SYN_MP_SLOTS", "WEB_CONCURRENCY")}
    env["PYTHONPATH"] = str(tmp_path)
    # the number of slots comes from hypercorn's own --workers
    proc = subprocess.Popen([sys.executable, "-m", "hypercorn", "asgiapp:app", "--bind", f"127.0.0.1:{port}",
                             *args], env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    return proc, log


def test_hypercorn_workers_get_stable_ids_given_back_at_shutdown(make_node, tmp_path):
    require("hypercorn")
    n = make_node().use()
    syn_mp.add_node_to_scopes(["web"])
    port = free_port()
    proc, log = _hypercorn(n, tmp_path, port, "--workers", "2")
    seen: set[int] = set()
    try:
        held = wait_for(lambda: proc.poll() is None and ids_when("web", [0, 1]), timeout=30,
                        what=f"2 hypercorn workers with ids 0, 1; log: {tmp_path / 'hypercorn.log'}")
        seen |= set(held.values())
        for i, pid in held.items():
            assert psutil.Process(pid).ppid() == proc.pid
            assert syn_mp.lookup("web", ("worker", i)) == (syn_mp.Pid(n.name, pid), {"server": "hypercorn"})
        wait_for(lambda: _answers(port), timeout=15, what="hypercorn serving")
        for a in [get(port) for _ in range(4)]:
            assert held[a["id"]] == a["pid"] and a["env"] == str(a["id"])
        proc.send_signal(signal.SIGTERM)  # a clean stop: the lifespan shutdown gives the ids back
        proc.wait(timeout=30)
    finally:
        stop(proc, seen)
        log.close()  # type: ignore[attr-defined]
    assert not ids("web") and not syn_mp.members("web", "workers")  # given back, not purged
    assert not any(pid_alive(p) for p in seen)


def test_a_killed_worker_stops_hypercorn_and_every_id_goes(make_node, tmp_path):
    """hypercorn ends all its workers when one dies of a signal: the dead one's id is purged by the
    manager, the others are given back, and nothing is left held."""
    require("hypercorn")
    n = make_node().use()
    syn_mp.add_node_to_scopes(["web"])
    port = free_port()
    proc, log = _hypercorn(n, tmp_path, port, "-w", "2")
    seen: set[int] = set()
    try:
        held = wait_for(lambda: proc.poll() is None and ids_when("web", [0, 1]), timeout=30,
                        what=f"2 hypercorn workers with ids 0, 1; log: {tmp_path / 'hypercorn.log'}")
        seen |= set(held.values())
        os.kill(held[0], signal.SIGKILL)
        proc.wait(timeout=30)
        wait_for(lambda: not ids("web") and not syn_mp.members("web", "workers"), what="every id gone")
    finally:
        stop(proc, seen)
        log.close()  # type: ignore[attr-defined]


def test_slots_from_hypercorns_command_line(monkeypatch):
    from syn_mp.contrib.hypercorn import slots_from_environment as slots
    monkeypatch.delenv("SYN_MP_SLOTS", raising=False)
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    assert slots(["/usr/bin/hypercorn", "app:app", "--workers", "3"]) == 3
    assert slots(["/x/hypercorn/__main__.py", "app:app", "-w", "4"]) == 4
    assert slots(["hypercorn", "-w5", "app:app"]) == 5
    assert slots(["hypercorn", "--workers=6", "app:app"]) == 6
    assert slots(["hypercorn", "app:app"]) == 1
    with pytest.raises(SettingsError, match="not a positive integer"):
        slots(["hypercorn", "--workers", "zero", "app:app"])
    with pytest.raises(SettingsError, match="SYN_MP_SLOTS"):
        slots(["python", "serve.py"])
    monkeypatch.setenv("SYN_MP_SLOTS", "8")
    assert slots(["python", "serve.py"]) == 8
