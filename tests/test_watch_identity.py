"""Processes are watched by identity (pid, start time), and "can't tell" is never "dead".

- An older identity of a pid that arrives after the live one (a stale entry, a register(pid=P) that
  read P's start just before P died) is purged alone; the live process keeps its names.
- A manager that can't read a process's /proc entry (a private /proc mounted hidepid=2, the manager
  running as another user) keeps that process's names, and purges them once the process is gone.
- psutil's exceptions, raised by real calls, are classified: a zombie or a vanished pid is dead,
  AccessDenied is "can't tell".
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import psutil
import pytest

import syn_mp
from syn_mp._client import table_of as _table
from syn_mp._procinfo import start_time
from syn_mp._table import REG
from syn_mp._watch import Liveness, classify_psutil_error, liveness
from syn_mp.codec import encode_meta, encode_name

from conftest import ROOT, checked, pid_alive, wait_for

NOBODY = 65534


def _need_root(what: str) -> None:
    """Root-only tests fail under CI=true rather than skip (the project's rule)."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"needs root: {what}")
        pytest.skip(f"needs root: {what}")


def _status(node) -> dict:
    r = node.cli("--json", "status")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize("watcher", ["pidfd", "psutil"])
def test_an_older_identity_arriving_after_the_live_one_purges_only_itself(make_node, watcher):
    n = make_node(SYN_MP_WATCHER=watcher).use()
    syn_mp.add_node_to_scopes(["s", "t"])
    w = n.worker()
    w.call("register", "s", "real", meta=1)
    w.call("join", "t", "g")
    wait_for(lambda: _status(n)["watched"] == 1, what="the live process watched")
    # an older process that had the same pid: started one tick before the live one
    old = start_time(w.pid) - 1
    rc, _ = _table("s").put(REG, encode_name("ghost"), 0, w.pid, old, time.time_ns(), encode_meta(None))
    assert rc == 1
    wait_for(lambda: syn_mp.lookup("s", "ghost") is None, what="the older identity purged")
    # the live process was not taken for the dead one: its names and memberships stay, it is watched
    assert syn_mp.lookup("s", "real") == (syn_mp.Pid("n1", w.pid), 1)
    assert syn_mp.members("t", "g") == [(syn_mp.Pid("n1", w.pid), None)]
    assert _status(n)["watched"] == 1
    w.kill()
    wait_for(lambda: syn_mp.lookup("s", "real") is None and syn_mp.members("t", "g") == [],
             what="the live process purged when it dies")
    checked("s")
    checked("t")


def test_a_register_for_a_pid_whose_process_was_replaced_keeps_the_new_one(node):
    """register(name, pid=P) read P's start, P died, P was reused and the new process registered
    first: the late stale identity loses, the new one keeps its name."""
    w = node.worker()
    w.call("register", "s", "new")
    wait_for(lambda: _status(node)["watched"] == 1, what="the new process watched")
    # what the late register writes: the same pid, the start of the process that had it before
    rc, _ = _table("s").put(REG, encode_name("late"), 0, w.pid, start_time(w.pid) - 7, time.time_ns(),
                            encode_meta("stale"))
    assert rc == 1
    wait_for(lambda: syn_mp.lookup("s", "late") is None, what="the stale identity purged")
    assert syn_mp.whereis_name("s", "new") == syn_mp.Pid("n1", w.pid)
    assert pid_alive(w.pid)


def test_liveness_of_real_processes():
    p = subprocess.Popen(["sleep", "30"])
    try:
        st = start_time(p.pid)
        assert liveness(p.pid, st) is Liveness.ALIVE
        assert liveness(p.pid, st - 1) is Liveness.DEAD  # the pid names another process now
        p.kill()
        wait_for(lambda: liveness(p.pid, st) is Liveness.DEAD, what="a zombie is dead")
        p.wait()
        assert liveness(p.pid, st) is Liveness.DEAD
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_psutil_errors_from_real_calls_are_classified():
    # a zombie: exited, not reaped
    z = subprocess.Popen(["true"])
    wait_for(lambda: psutil.Process(z.pid).status() == psutil.STATUS_ZOMBIE, what="zombie")
    with pytest.raises(psutil.ZombieProcess) as zi:
        psutil.Process(z.pid).cwd()
    assert classify_psutil_error(zi.value, z.pid) is Liveness.DEAD
    z.wait()
    # gone and reaped
    with pytest.raises(psutil.NoSuchProcess) as ni:
        psutil.Process(z.pid).status()
    assert classify_psutil_error(ni.value, z.pid) is Liveness.DEAD
    # AccessDenied and a hidden live process: from another user's view, see the next test
    assert classify_psutil_error(OSError("no fd"), os.getpid()) is Liveness.UNKNOWN


def test_psutil_access_denied_as_another_user_is_cant_tell():
    _need_root("acts as uid 65534")
    target = subprocess.Popen(["sleep", "30"])
    try:
        code = f"""
import json, os, psutil
from syn_mp._watch import classify_psutil_error
out = {{}}
try:
    psutil.Process({target.pid}).environ()
except psutil.Error as e:
    out["environ"] = [type(e).__name__, classify_psutil_error(e, {target.pid}).value]
print(json.dumps(out))
"""
        r = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", sys.executable,
                            "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) == {"environ": ["AccessDenied", "unknown"]}
    finally:
        target.kill()
        target.wait()


# ------------------------------------------------------------------ hidepid

def _hidepid_node(make_node, watcher: str):
    """A node whose manager runs as nobody in a private /proc mounted hidepid=2: the test's (root's)
    processes are invisible to it. The runtime dir is nobody's, under a root dir that others can't
    write, so root's clients accept nobody's segments (see _config.segment_owner)."""
    _need_root("mounts a private /proc and runs the manager as uid 65534")
    n = make_node()
    shutil.rmtree(n.rdir)
    parent = tempfile.mkdtemp(prefix="synmp-h", dir="/tmp")
    os.chmod(parent, 0o755)
    rdir = os.path.join(parent, "r")
    os.mkdir(rdir, 0o700)
    os.chown(rdir, NOBODY, NOBODY)
    n.rdir = rdir
    n.paths = syn_mp._config.Paths(rdir)
    n.extra_env.update(SYN_MP_RUNTIME_DIR=rdir)
    n.env.update(SYN_MP_RUNTIME_DIR=rdir)
    n.use()
    log_path = os.path.join(parent, "daemon.log")
    n.daemon_log = log_path
    inner = (f"mount -t proc -o hidepid=2 proc /proc && exec setpriv --reuid={NOBODY} --regid={NOBODY} "
             f"--clear-groups {sys.executable} -m syn_mp --runtime-dir {rdir} daemon --node n1 --watcher {watcher}")
    with open(log_path, "ab") as log:
        p = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", inner], env=n.env, cwd=ROOT,
                             stdout=log, stderr=log)
    n.procs.append(p)
    wait_for(lambda: os.path.exists(n.paths.ctl) or p.poll() is not None, what="hidepid daemon up")
    if p.poll() is not None:
        msg = open(log_path).read()
        if os.environ.get("CI") == "true":
            pytest.fail(f"can't run a manager in a private hidepid /proc: {msg}")
        pytest.skip(f"can't run a manager in a private hidepid /proc: {msg}")
    return n, p, parent


@pytest.mark.parametrize("watcher", ["pidfd", "psutil"])
def test_a_process_the_manager_cannot_see_is_kept_then_purged_when_it_dies(make_node, watcher):
    n, daemon, parent = _hidepid_node(make_node, watcher)
    try:
        syn_mp.add_node_to_scopes(["s"])
        # the manager really can't read our processes' /proc entries
        probe = subprocess.run(["nsenter", "-t", str(daemon.pid), "-m", "setpriv", f"--reuid={NOBODY}",
                                f"--regid={NOBODY}", "--clear-groups", "cat", f"/proc/{os.getpid()}/stat"],
                               capture_output=True, text=True, timeout=30)
        assert probe.returncode != 0, "hidepid=2 should hide root's processes from nobody"
        w = n.worker()
        w.call("register", "s", "hidden", meta="m")
        w.call("join", "s", "g")
        # seen, and kept as "can't tell", not purged as dead
        wait_for(lambda: _status(n).get("watch", {}).get("unknown") == 1 or syn_mp.lookup("s", "hidden") is None,
                 what="the manager to look at the hidden process")
        assert syn_mp.lookup("s", "hidden") == (syn_mp.Pid("n1", w.pid), "m")
        time.sleep(0.3)  # several polls: still kept
        assert syn_mp.lookup("s", "hidden") is not None and syn_mp.members("s", "g") != []
        st = _status(n)
        assert st["health"]["ok"], st["health"]
        assert "can't be read" in n.cli("status").stdout
        # once it is gone (kill(pid, 0): no such process), its names go
        w.kill()
        wait_for(lambda: syn_mp.lookup("s", "hidden") is None and syn_mp.members("s", "g") == [],
                 what="the hidden process purged once dead")
        assert _status(n)["purged"]["process_exit"] == 2
    finally:
        pid = n.manager_pid()
        if pid:
            os.kill(pid, signal.SIGTERM)
            wait_for(lambda: not pid_alive(pid), what="manager exit")
        shutil.rmtree(parent, ignore_errors=True)
