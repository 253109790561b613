"""syn_mp.contrib.uvicorn with a real `uvicorn --workers 2` on 127.0.0.1, and the lifespan wrapper alone."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

import syn_mp
from syn_mp.contrib import SettingsError
from syn_mp.contrib.uvicorn import slots_from_environment, wrap

from conftest import pid_alive, wait_for
from servers import require, free_port, get, ids, ids_when, stop


# a bare ASGI app that does not speak the lifespan protocol: the wrapper speaks it for it
APP = '''
import json, os, time
from syn_mp.contrib.uvicorn import wrap, worker_id

async def inner(scope, receive, send):
    assert scope["type"] == "http", "no lifespan here"
    if scope["query_string"] == b"slow":
        time.sleep(0.2)  # blocks this worker's loop: concurrent requests spread over the workers
    body = json.dumps({"pid": os.getpid(), "id": worker_id(), "env": os.environ.get("SYN_MP_WORKER_ID")}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})

app = wrap(inner)
'''


def spread(port: int, n: int) -> list[dict]:
    """n slow requests at once: a blocked worker leaves the next request to another."""
    with ThreadPoolExecutor(n) as ex:
        return [a for a in ex.map(lambda _: _answers(port, "slow"), range(n)) if a]


def test_uvicorn_workers_get_stable_ids_and_a_replacement_reclaims_the_dead_ones(make_node, tmp_path):
    require("uvicorn")
    n = make_node().use()
    syn_mp.add_node_to_scopes(["web"])
    (tmp_path / "asgiapp.py").write_text(textwrap.dedent(APP))
    port = free_port()
    log = open(tmp_path / "uvicorn.log", "wb")
    env = {k: v for k, v in n.env.items() if k not in ("SYN_MP_SLOTS", "WEB_CONCURRENCY")}
    # the number of slots comes from uvicorn's own --workers
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "asgiapp:app", "--workers", "2", "--host", "127.0.0.1",
                             "--port", str(port), "--app-dir", str(tmp_path), "--timeout-graceful-shutdown", "5"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    seen: set[int] = set()
    try:
        held = wait_for(lambda: proc.poll() is None and ids_when("web", [0, 1]), timeout=30,
                        what=f"2 uvicorn workers with ids 0, 1; log: {tmp_path / 'uvicorn.log'}")
        seen |= set(held.values())
        for i, pid in held.items():
            assert psutil.Process(pid).ppid() == proc.pid
            assert syn_mp.lookup("web", ("worker", i)) == (syn_mp.Pid(n.name, pid), {"server": "uvicorn"})
        wait_for(lambda: _answers(port), timeout=15, what="uvicorn serving")
        for a in [get(port) for _ in range(6)]:
            assert held[a["id"]] == a["pid"] and a["env"] == str(a["id"])

        victim = held[0]
        os.kill(victim, signal.SIGKILL)
        new = wait_for(lambda: ids("web").get(0) not in (None, victim) and ids("web")[0], timeout=30,
                       what="uvicorn to restart worker 0 and the new worker to claim id 0")
        seen.add(new)
        assert wait_for(lambda: ids_when("web", [0, 1]), what="ids 0, 1 again") == {**held, 0: new}
        assert psutil.Process(new).ppid() == proc.pid
        answers = wait_for(lambda: [a for a in spread(port, 4) if a["pid"] == new], timeout=15,
                           what="a request served by the new worker")
        assert answers[0]["id"] == 0 and answers[0]["env"] == "0"
    finally:
        stop(proc, seen)
        log.close()
    # lifespan shutdown gave the ids back
    wait_for(lambda: not ids("web") and not syn_mp.members("web", "workers"), what="ids released")
    assert not any(pid_alive(p) for p in seen)


def _answers(port: int, query: str = "") -> dict | None:
    try:
        return get(port, query)
    except OSError:
        return None


def _lifespan(app, messages: list[dict]) -> list[dict]:
    """Drive an ASGI app through startup and shutdown as a server does; what it sent back."""
    sent: list[dict] = []

    async def run() -> None:
        inbox: asyncio.Queue = asyncio.Queue()
        for m in messages:
            inbox.put_nowait(m)

        async def receive() -> dict:
            return await inbox.get()

        async def send(m: dict) -> None:
            sent.append(m)
        await asyncio.wait_for(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send), 10)
    asyncio.run(run())
    return sent


def test_wrapper_claims_at_startup_and_releases_at_shutdown_around_a_lifespan_app(node):
    seen: list[object] = []

    async def inner(scope, receive, send):  # an app that speaks the lifespan protocol (as Starlette does)
        assert (await receive())["type"] == "lifespan.startup"
        seen.append(syn_mp.whereis_name("s", ("api", 0)))
        await send({"type": "lifespan.startup.complete"})
        assert (await receive())["type"] == "lifespan.shutdown"
        seen.append(syn_mp.whereis_name("s", ("api", 0)))
        await send({"type": "lifespan.shutdown.complete"})

    app = wrap(inner, scope="s", prefix="api", group=None, slots=1)
    sent = _lifespan(app, [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert seen == [syn_mp.Pid(node.name, os.getpid()), None]  # claimed before the app's startup, freed at shutdown


def test_wrapper_reports_a_failed_claim_as_a_failed_startup(node):
    other = node.worker()
    other.call("claim_slot", "s", "api", 1)  # the only slot is taken
    os.environ["SYN_MP_CLAIM_TIMEOUT"] = "0.2"
    try:
        app = wrap(lambda *a: None, scope="s", prefix="api", slots=1)
    finally:
        del os.environ["SYN_MP_CLAIM_TIMEOUT"]
    sent = _lifespan(app, [{"type": "lifespan.startup"}])
    assert sent[0]["type"] == "lifespan.startup.failed" and "no free id" in sent[0]["message"]


def test_slots_come_from_the_environment_or_uvicorns_command_line(monkeypatch):
    monkeypatch.delenv("SYN_MP_SLOTS", raising=False)
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    assert slots_from_environment(["/venv/bin/uvicorn", "app:app", "--workers", "3"]) == 3
    assert slots_from_environment(["/venv/bin/uvicorn", "app:app", "--workers=5"]) == 5
    assert slots_from_environment(["/usr/lib/python3/site-packages/uvicorn/__main__.py", "app:app"]) == 1
    with pytest.raises(SettingsError, match="SYN_MP_SLOTS"):
        slots_from_environment(["serve.py"])
    monkeypatch.setenv("WEB_CONCURRENCY", "4")
    assert slots_from_environment(["serve.py"]) == 4
    monkeypatch.setenv("SYN_MP_SLOTS", "0")
    with pytest.raises(SettingsError, match="SYN_MP_SLOTS='0'"):
        slots_from_environment(["serve.py"])
    with pytest.raises(SettingsError, match="SYN_MP_SLOTS"):  # a wrapped app checks the settings at import
        wrap(lambda *a: None)
    monkeypatch.delenv("SYN_MP_SLOTS")
    with pytest.raises(SettingsError, match="scope"):
        wrap(lambda *a: None, scope="no such scope!")
