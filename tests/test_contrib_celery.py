"""syn_mp.contrib.celery with a real `celery worker --pool prefork` and a real redis-server on 127.0.0.1."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from typing import Iterator

import psutil
import pytest

import syn_mp

from conftest import pid_alive, wait_for
from servers import require, free_port, ids, ids_when, stop


def ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


TASKS = '''
import os, time
from celery import Celery
from syn_mp.contrib import celery as syn_celery

app = Celery("tasks", broker=os.environ["TEST_BROKER"], backend=os.environ["TEST_BROKER"])
app.conf.broker_connection_retry_on_startup = True
syn_celery.install()

@app.task
def whoami(busy=0.0):
    time.sleep(busy)  # a busy child takes no other task: tasks sent at once spread over the children
    return {"pid": os.getpid(), "id": syn_celery.worker_id(), "env": os.environ.get("SYN_MP_WORKER_ID")}
'''


@pytest.fixture
def redis_url(tmp_path) -> Iterator[str]:
    """A redis-server of this test alone on 127.0.0.1 (no persistence); stopped by its pid."""
    server = shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if os.path.exists(p)), None)
    if server is None:
        msg = "redis-server is not installed (apt-get install redis-server; ./dev test does)"
        pytest.fail(msg) if ci() else pytest.skip(msg)
    require("redis")
    import redis
    port = free_port()
    proc = subprocess.Popen([server, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        def up() -> bool:
            assert proc.poll() is None, "redis-server exited"
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False
        wait_for(up, timeout=10, what="redis-server up")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def test_celery_prefork_children_get_stable_ids_and_a_replacement_reclaims_the_dead_ones(make_node, tmp_path,
                                                                                         redis_url):
    require("celery")
    from celery import Celery
    n = make_node().use()
    syn_mp.add_node_to_scopes(["celery"])
    (tmp_path / "tasks.py").write_text(textwrap.dedent(TASKS))
    env = dict(n.env, TEST_BROKER=redis_url, PYTHONPATH=str(tmp_path))
    env.pop("SYN_MP_SLOTS", None)  # the pool size comes from --concurrency
    log = open(tmp_path / "celery.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "tasks", "worker", "--pool", "prefork",
                             "--concurrency", "2", "--loglevel", "INFO", "--without-gossip", "--without-mingle",
                             "--without-heartbeat", "-n", f"synmp-test-{os.getpid()}@%h"],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    client = Celery("client", broker=redis_url, backend=redis_url)
    seen: set[int] = set()

    def ask() -> dict:
        return client.send_task("tasks.whoami").get(timeout=10)

    def spread(n: int) -> list[dict]:
        pending = [client.send_task("tasks.whoami", args=(0.2,)) for _ in range(n)]
        return [r.get(timeout=10) for r in pending]
    try:
        held = wait_for(lambda: proc.poll() is None and ids_when("celery", [0, 1]), timeout=30,
                        what=f"2 celery pool children with ids 0, 1; log: {tmp_path / 'celery.log'}")
        seen |= set(held.values())
        for i, pid in held.items():
            assert psutil.Process(pid).ppid() == proc.pid  # children of the celery worker
            meta = syn_mp.lookup("celery", ("worker", i))[1]
            assert meta["server"] == "celery" and meta["hostname"].startswith("synmp-test-")
        # a task answers with the id of the child that ran it
        for a in [ask() for _ in range(4)]:
            assert held[a["id"]] == a["pid"] and a["env"] == str(a["id"])

        victim = held[1]
        os.kill(victim, signal.SIGKILL)
        new = wait_for(lambda: ids("celery").get(1) not in (None, victim) and ids("celery")[1], timeout=20,
                       what="celery to replace child 1 and the replacement to claim id 1")
        seen.add(new)
        assert wait_for(lambda: ids_when("celery", [0, 1]), what="ids 0, 1 again") == {**held, 1: new}
        assert psutil.Process(new).ppid() == proc.pid
        # tasks run on both children; the replacement says it is worker 1
        answers = wait_for(lambda: [a for a in spread(4) if a["pid"] == new], timeout=20,
                           what="a task run by the replacement child")
        assert answers[0]["id"] == 1 and answers[0]["env"] == "1"
    finally:
        client.close()
        stop(proc, seen, grace=20)  # warm shutdown: the children leave cleanly
        log.close()
    wait_for(lambda: not ids("celery") and not syn_mp.members("celery", "workers"), what="ids freed")
    assert not any(pid_alive(p) for p in seen)


def test_celery_install_checks_the_settings(monkeypatch):
    require("celery")
    from syn_mp.contrib import SettingsError
    from syn_mp.contrib import celery as syn_celery
    monkeypatch.setenv("SYN_MP_GROUP", "")
    s = syn_celery.install(scope="jobs", prefix="child", slots=3)
    assert (s.scope, s.prefix, s.group, s.slots) == ("jobs", "child", None, 3)
    with pytest.raises(SettingsError, match="scope"):
        syn_celery.install(scope="a scope with spaces")
    monkeypatch.setenv("SYN_MP_CLAIM_TIMEOUT", "soon")
    with pytest.raises(SettingsError, match="SYN_MP_CLAIM_TIMEOUT"):
        syn_celery.install()
