"""events(), the manager's event handler, strict mode and `syn-mp watch`."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import syn_mp
from syn_mp import Event, Pid

from conftest import ROOT, wait_for


def _take(it, n: int) -> list[Event]:
    out = []
    for e in it:
        out.append(e)
        if len(out) == n:
            break
    return out


def test_events_from_the_moment_of_the_call_with_kinds_and_reasons(node):
    syn_mp.register("s", "before")  # not seen: it happened before the subscription
    ev = syn_mp.events("s", timeout=5)
    me = Pid("n1", os.getpid())
    syn_mp.register("s", "a", meta=1)
    syn_mp.register("s", "a", meta=2)
    syn_mp.unregister("s", "a")
    syn_mp.join("s", "g", meta="x")
    syn_mp.join("s", "g", meta="y")
    syn_mp.leave("s", "g")
    got = _take(ev, 6)
    assert got == [
        Event("registered", "s", "a", me, 1, "normal"),
        Event("registry_updated", "s", "a", me, 2, "normal"),
        Event("unregistered", "s", "a", me, 2, "normal"),
        Event("joined", "s", "g", me, "x", "normal"),
        Event("group_updated", "s", "g", me, "y", "normal"),
        Event("left", "s", "g", me, "y", "normal"),
    ]


def test_events_of_other_processes_and_of_death(node):
    ev = syn_mp.events("s", timeout=5)
    w = node.worker()
    w.call("register", "s", ("w", 1), meta={"k": (1,)})
    w.call("join", "s", "pool")
    w.kill()
    got = _take(ev, 4)
    pid = Pid("n1", w.pid)
    assert got[:2] == [Event("registered", "s", ("w", 1), pid, {"k": (1,)}, "normal"),
                       Event("joined", "s", "pool", pid, None, "normal")]
    assert sorted((e.kind, e.reason) for e in got[2:]) == [("left", "process_exit"), ("unregistered", "process_exit")]


def test_events_iterator_ends_after_timeout_without_events(node):
    t0 = time.monotonic()
    assert list(syn_mp.events("s", timeout=0.2)) == []
    assert 0.2 <= time.monotonic() - t0 < 3


def test_a_subscriber_does_not_slow_or_block_writers(node):
    ev = syn_mp.events("s", timeout=0.5)  # subscribed but never read: writers go on regardless
    for i in range(20000):
        syn_mp.register("s", ("n", i))
    assert syn_mp.registry_count("s") == 20000
    # a subscriber that fell behind the ring skips what was overwritten, and goes on
    syn_mp.register("s", "last")
    kinds = [e.key for e in ev]
    assert kinds and kinds[-1] == "last"


HANDLER = '''
import json, os, threading
LOG = os.environ["HANDLER_LOG"]

def _log(*args):
    with open(LOG, "a") as f:
        f.write(json.dumps([repr(a) for a in args]) + "\\n")

class Recorder:
    def on_process_registered(self, scope, name, pid, meta, reason): _log("registered", scope, name, pid, meta, reason)
    def on_registry_process_updated(self, scope, name, pid, meta, reason): _log("updated", scope, name, pid, meta, reason)
    def on_process_unregistered(self, scope, name, pid, meta, reason): _log("unregistered", scope, name, pid, meta, reason)
    def on_process_joined(self, scope, group, pid, meta, reason): _log("joined", scope, group, pid, meta, reason)
    def on_group_process_updated(self, scope, group, pid, meta, reason): _log("group_updated", scope, group, pid, meta, reason)
    def on_process_left(self, scope, group, pid, meta, reason): _log("left", scope, group, pid, meta, reason)

class Raiser:
    def on_process_registered(self, *a): raise RuntimeError("boom")
    def on_process_unregistered(self, *a): raise RuntimeError("boom")
    def on_process_joined(self, *a): raise ValueError("boom")

class Hanger:
    def on_process_registered(self, scope, name, pid, meta, reason):
        if name == "hang":
            threading.Event().wait()  # hangs for good: the manager must abandon it
        _log("registered", scope, name)
'''


@pytest.fixture
def handler_node(make_node, tmp_path):
    (tmp_path / "synhandlers.py").write_text(HANDLER)
    log = tmp_path / "log.jsonl"

    def start(attr: str):
        n = make_node(PYTHONPATH=f"{tmp_path}:{ROOT}", HANDLER_LOG=str(log))
        n.daemon("--event-handler", f"synhandlers:{attr}")
        n.use()
        syn_mp.add_node_to_scopes(["s"])
        return n
    start.log = log
    return start


def _lines(log) -> list[list[str]]:
    return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []


def test_handler_gets_syns_callbacks_with_reasons(handler_node):
    n = handler_node("Recorder")
    w = n.worker()
    w.call("register", "s", "web", meta=1)
    w.call("register", "s", "web", meta=2)
    w.call("join", "s", "g")
    w.kill()
    wait_for(lambda: len(_lines(handler_node.log)) == 5, what="5 callbacks")
    got = _lines(handler_node.log)
    pid = repr(Pid("n1", w.pid))
    assert got[:3] == [["'registered'", "'s'", "'web'", pid, "1", "'normal'"],
                       ["'updated'", "'s'", "'web'", pid, "2", "'normal'"],
                       ["'joined'", "'s'", "'g'", pid, "None", "'normal'"]]
    assert sorted((x[0], x[-1]) for x in got[3:]) == [("'left'", "'process_exit'"), ("'unregistered'", "'process_exit'")]


def test_handler_that_raises_on_every_call_never_stops_the_manager(handler_node):
    n = handler_node("Raiser")
    for i in range(20):
        syn_mp.register("s", ("x", i))
        syn_mp.join("s", "g")
        syn_mp.unregister("s", ("x", i))
    w = n.worker()
    w.call("register", "s", "dies")
    w.kill()
    wait_for(lambda: syn_mp.lookup("s", "dies") is None, what="manager still purging")
    wait_for(lambda: json.loads(n.cli("--json", "status").stdout)["callbacks"]["failed"] >= 41, what="failures")
    log = open(n.daemon_log).read()
    assert "on_process_registered" in log and "RuntimeError: boom" in log  # logged, not fatal


def test_handler_that_hangs_is_abandoned_and_the_manager_goes_on(handler_node):
    n = handler_node("Hanger")
    syn_mp.register("s", "hang")
    w = n.worker()
    w.call("register", "s", "dies")
    w.kill()
    wait_for(lambda: syn_mp.lookup("s", "dies") is None, what="death handled while a callback hangs")
    syn_mp.register("s", "after")
    wait_for(lambda: ["'registered'", "'s'", "'after'"] in _lines(handler_node.log), timeout=20,
             what="callbacks resume after the hung one is abandoned")
    assert json.loads(n.cli("--json", "status").stdout)["callbacks"]["hung"] == 1


def test_bad_event_handler_spec_is_a_usage_error(make_node):
    n = make_node()
    for spec in ("nomodule", "no_such_module_xyz:A", "json:no_such_attr", "json:dumps"):
        r = n.cli("daemon", "--event-handler", spec)
        assert r.returncode == 2 and r.stderr.startswith("syn-mp: ") and r.stderr.count("\n") == 1, (spec, r.stderr)


def test_strict_mode_allows_only_the_caller(make_node):
    n = make_node(SYN_MP_STRICT="1").use()
    syn_mp.add_node_to_scopes(["s"])
    w = n.worker()
    syn_mp.register("s", "me")
    syn_mp.join("s", "g")
    for fn, args in [("register", ("s", "x", w.pid)), ("join", ("s", "g", w.pid))]:
        with pytest.raises(syn_mp.NotSelfError) as e:
            getattr(syn_mp, fn)(*args)
        assert e.value.reason == "not_self"
    w.call("register", "s", "theirs")
    w.call("join", "s", "g")
    with pytest.raises(syn_mp.NotSelfError):
        syn_mp.unregister("s", "theirs")
    with pytest.raises(syn_mp.NotSelfError):
        syn_mp.leave("s", "g", w.pid)
    with pytest.raises(syn_mp.NotSelfError):
        syn_mp.update_registry("s", "theirs", lambda p, m: 1)
    with pytest.raises(syn_mp.NotSelfError):
        syn_mp.update_member("s", "g", w.pid, lambda m: 1)
    assert syn_mp.lookup("s", "theirs") == (Pid("n1", w.pid), None)
    syn_mp.update_registry("s", "me", lambda p, m: 5)
    assert syn_mp.lookup("s", "me")[1] == 5
    syn_mp.unregister("s", "me")
    syn_mp.leave("s", "g")


def test_strict_flag_via_daemon_option(make_node):
    n = make_node()
    n.daemon("--strict")
    n.use()
    syn_mp.add_node_to_scopes(["s"])
    w = n.worker()
    with pytest.raises(syn_mp.NotSelfError):
        syn_mp.register("s", "x", w.pid)
    assert json.loads(n.cli("--json", "status").stdout)["strict"] is True


@pytest.mark.parametrize("as_json", [True, False])
def test_watch_streams_events_live(node, as_json):
    args = ["--json"] if as_json else []
    p = subprocess.Popen([sys.executable, "-m", "syn_mp", *args, "watch", "s"], env=node.env, cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    node.procs.append(p)
    assert "watching scope 's'" in p.stderr.readline()  # subscribed from here on
    syn_mp.register("s", "web", meta=1)
    syn_mp.join("s", ("grp", 1), meta={"m": 1})
    lines = [p.stdout.readline() for _ in range(2)]
    if as_json:
        docs = [json.loads(x) for x in lines]
        assert docs[0] == {"kind": "registered", "scope": "s", "key": "web", "node": "n1", "pid": os.getpid(),
                           "meta": 1, "reason": "normal"}
        assert docs[1]["kind"] == "joined" and docs[1]["key"] == ["grp", 1] and docs[1]["meta"] == {"m": 1}
    else:
        assert lines[0].split() == ["registered", "web", "n1", str(os.getpid()), "meta=1", "reason=normal"]
        assert lines[1].startswith("joined") and "('grp', 1)" in lines[1]
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=10) == 130
