"""syn_mp.contrib.gunicorn with a real gunicorn master and 3 sync workers on 127.0.0.1."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import psutil

import syn_mp

from conftest import pid_alive, wait_for
from servers import require, free_port, get, ids, ids_when, stop


APP = '''
import json, os, time
from syn_mp.contrib.gunicorn import worker_id

def app(environ, start_response):
    if environ.get("QUERY_STRING") == "slow":
        time.sleep(0.2)  # a busy sync worker accepts nothing: concurrent requests spread over the workers
    body = json.dumps({"pid": os.getpid(), "id": worker_id(),
                       "env": os.environ.get("SYN_MP_WORKER_ID")}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
'''


def gunicorn_cmd(*args: str) -> list[str]:
    from gunicorn.config import KNOWN_SETTINGS
    cmd = [sys.executable, "-m", "gunicorn", "-c", "python:syn_mp.contrib.gunicorn", *args]
    if any(s.name == "control_socket_disable" for s in KNOWN_SETTINGS):
        cmd.insert(-1, "--no-control-socket")  # gunicorn >= 24 would share ~/.gunicorn/gunicorn.ctl
    return cmd


def spread(port: int, n: int) -> list[dict]:
    """n slow requests at once: each busy worker leaves the next request to another."""
    with ThreadPoolExecutor(n) as ex:
        return list(ex.map(lambda _: get(port, "slow"), range(n)))


def test_gunicorn_workers_get_stable_ids_and_a_replacement_reclaims_the_dead_ones(make_node, tmp_path):
    require("gunicorn")
    n = make_node().use()
    syn_mp.add_node_to_scopes(["web"])  # the test reads the scope; the workers would start the manager too
    (tmp_path / "wsgiapp.py").write_text(textwrap.dedent(APP))
    port = free_port()
    log = open(tmp_path / "gunicorn.log", "wb")
    env = dict(n.env, SYN_MP_SCOPE="web", SYN_MP_GROUP="workers")
    proc = subprocess.Popen(
        gunicorn_cmd("--workers", "3", "--bind", f"127.0.0.1:{port}", "--chdir", str(tmp_path),
                     "--graceful-timeout", "5", "wsgiapp:app"),
        env=env, stdout=log, stderr=subprocess.STDOUT)
    seen: set[int] = set()
    try:
        held = wait_for(lambda: proc.poll() is None and ids_when("web", [0, 1, 2]), timeout=20,
                        what=f"3 gunicorn workers with ids 0..2; log: {tmp_path / 'gunicorn.log'}")
        seen |= set(held.values())
        for i, pid in held.items():
            assert syn_mp.whereis_name("web", ("worker", i)) == syn_mp.Pid(n.name, pid)
            assert psutil.Process(pid).ppid() == proc.pid  # workers of this master
        meta = syn_mp.lookup("web", ("worker", 0))[1]
        assert meta == {"server": "gunicorn", "master": proc.pid}

        # the app answers with the id of the worker that served the request
        answers = [get(port) for _ in range(6)]
        for a in answers:
            assert held[a["id"]] == a["pid"] and a["env"] == str(a["id"])

        victim = held[1]
        os.kill(victim, signal.SIGKILL)
        new = wait_for(lambda: ids("web").get(1) not in (None, victim) and ids("web")[1], timeout=15,
                       what="gunicorn to replace worker 1 and the replacement to claim id 1")
        seen.add(new)
        after = wait_for(lambda: ids_when("web", [0, 1, 2]), what="ids 0..2 again")
        assert after == {**held, 1: new}
        assert psutil.Process(new).ppid() == proc.pid
        # the replacement serves and says it is worker 1
        answers = wait_for(lambda: [a for a in spread(port, 6) if a["pid"] == new], timeout=15,
                           what="a request served by the replacement worker")
        assert answers[0]["id"] == 1 and answers[0]["env"] == "1"
    finally:
        stop(proc, seen)
        log.close()
    # a graceful stop gives every id back ("normal"); nothing of the workers is left
    wait_for(lambda: not ids("web") and not syn_mp.members("web", "workers"), what="ids released")
    assert not any(pid_alive(p) for p in seen)


def test_gunicorn_refuses_to_start_with_a_bad_setting(make_node, tmp_path):
    require("gunicorn")
    n = make_node()
    (tmp_path / "wsgiapp.py").write_text(textwrap.dedent(APP))
    env = dict(n.env, SYN_MP_SLOTS="many")
    r = subprocess.run(gunicorn_cmd("--workers", "1", "--bind", f"127.0.0.1:{free_port()}", "--chdir", str(tmp_path),
                                    "wsgiapp:app"),
                       env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "SYN_MP_SLOTS='many' is not a valid int" in r.stderr


def test_the_config_module_sets_no_gunicorn_setting_but_its_hooks():
    require("gunicorn")
    from gunicorn.config import KNOWN_SETTINGS

    import syn_mp.contrib.gunicorn as hooks
    names = {s.name for s in KNOWN_SETTINGS}
    assert names & set(vars(hooks)) == {"on_starting", "post_fork", "worker_exit"}
