"""Security against another local user, continued (issue #12): what a second Unix user could still do
with the tree of issue #7, each tried for real (a forked child drops to `nobody`; a node of a
non-root user runs as a user `useradd` made, `synmp-victim`), and what must hold instead:

- it can't work out, take or keep a process's mailbox (before it opens, or after it dies), and
  nothing it binds receives our mail;
- a squatted runtime dir with a fake `ctl.sock` hears nothing from a client, nor does a socket in
  our dir served by another user (SO_PEERCRED); the manager answers no other user;
- nothing of ours is written through a symlink it planted, or in a dir it controls;
- a segment name it squatted with mode 0600 is refused in one clear error, the manager survives;
- the CLI run by it against our node says one line and exits 2;
- the manager a client spawns never imports a `syn_mp` planted in the client's working dir.
"""
from __future__ import annotations

import json
import os
import pwd
import secrets
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import textwrap
import time
from typing import Any, Callable

import posix_ipc
import pytest

import syn_mp
from syn_mp import _config
from syn_mp._procinfo import start_time
from syn_mp._table import Table, iter_segments

from conftest import ROOT, NodeHandle, wait_for
from test_reliability_security import NOBODY, as_nobody

S = "s"
VICTIM = "synmp-victim"
CI = os.environ.get("CI") == "true"

# root is needed to act as other users; without it, these are skipped, except under CI, where they fail
pytestmark = pytest.mark.skipif(os.geteuid() != 0 and not CI, reason="needs root to act as other users")


def _world_runnable(exe: str) -> bool:
    path = os.path.realpath(exe)
    dirs = [path]
    while dirs[-1] != "/":
        dirs.append(os.path.dirname(dirs[-1]))
    return all(os.stat(d).st_mode & stat.S_IXOTH for d in dirs)


def other_users_python() -> tuple[str, dict[str, str]]:
    """An interpreter another user can run (the venv's may live under a 0700 /root), with this tree and the
    venv's packages on its path: the same Python version, so the compiled modules load."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, sysconfig.get_paths()["purelib"]]), HOME="/")
    for exe in (sys.executable, f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"):
        if os.path.exists(exe) and _world_runnable(exe):
            return exe, env
    pytest.fail(f"no Python {sys.version_info.major}.{sys.version_info.minor} that other users can run")


def _drop_to_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


class Attacker:
    """A forked child running as nobody that talks with the test over two pipes, one JSON line each
    way: for attacks that must happen between two steps of the victim."""

    def __init__(self, fn: Callable[["Attacker"], Any]) -> None:
        self._buf = b""
        r1, self._w = os.pipe()  # test -> child
        self._r, w2 = os.pipe()  # child -> test
        self.pid = os.fork()
        if self.pid == 0:
            try:
                os.close(self._w)
                os.close(self._r)
                self._r, self._w = r1, w2
                _drop_to_nobody()
                self.say(fn(self))
            except BaseException as e:
                self.say({"__error__": repr(e)})
            finally:
                os._exit(0)
        os.close(r1)
        os.close(w2)

    def say(self, obj: Any) -> None:
        os.write(self._w, json.dumps(obj).encode() + b"\n")

    def hear(self, timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            assert left > 0, "the other side did not answer"
            if select.select([self._r], [], [], left)[0]:
                chunk = os.read(self._r, 65536)
                assert chunk, "the other side is gone"
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        out = json.loads(line)
        if isinstance(out, dict) and "__error__" in out:
            raise AssertionError("the attacker failed: " + out["__error__"])
        return out

    def close(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(self.pid, 0)
        os.close(self._r)
        os.close(self._w)


def _listed_sockets() -> list[str]:
    """Every Unix socket name in /proc/net/unix (readable by anyone): '@...' abstract, '/...' paths."""
    with open("/proc/net/unix") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return [r[-1] for r in rows if len(r) >= 8]


def _bind_everything(names: list[str]) -> list[socket.socket]:
    """Bind each name as an abstract name, as a path, and by its last part in every dir of a listed
    ctl.sock (a node's runtime dir, public that way); the sockets that got one."""
    dirs = {os.path.dirname(x) for x in _listed_sockets() if x.endswith("/ctl.sock")}
    got = []
    for name in names:
        for addr in ["\0" + name.lstrip("@"), name] + [os.path.join(d, os.path.basename(name)) for d in dirs]:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                s.bind(addr)
                got.append(s)
            except OSError:
                s.close()
    return got


def _drain(socks: list[socket.socket]) -> list[str]:
    out = []
    for s in socks:
        s.setblocking(False)
        try:
            while True:
                out.append(s.recv(1 << 16).decode(errors="replace"))
        except OSError:
            pass
    return out


@pytest.fixture
def ours(make_node) -> NodeHandle:
    n = make_node("sec2").use()
    syn_mp.add_node_to_scopes([S])
    return n


# ------------------------------------------------------------------ mailboxes (item 1, and after death)

def test_another_user_cannot_work_out_the_next_workers_mailbox(ours: NodeHandle) -> None:
    """Issue #12, 1: every mailbox name is listed in /proc/net/unix. With a node-wide tag in it, a name
    with one process's (pid, start) swapped for another's (both public in /proc) is the other's mailbox:
    bound first, that process's register failed after its entry was written and its mail went to the
    squatter. Each name must be unknowable or unbindable to another user."""
    seen = ours.worker()
    seen.call("register", S, "seen")  # a mailbox the attacker can see
    victim = ours.worker()  # alive, no mailbox yet
    seen_id = f"{seen.pid}.{start_time(seen.pid)}"
    victim_id = f"{victim.pid}.{start_time(victim.pid)}"

    def attack(a: Attacker) -> Any:
        names = [x.replace(seen_id, victim_id) for x in _listed_sockets() if seen_id in x]
        socks = _bind_everything(names)
        a.say({"listed": len(names), "bound": len(socks)})
        a.hear()  # the victim registered and was sent its mail
        return _drain(socks)
    a = Attacker(attack)
    try:
        first = a.hear()
        assert first["listed"] >= 1, first  # its mailbox is listed; what that tells is the question
        victim.call("register", S, "victim")  # EADDRINUSE, its entry already written, on the old tree
        syn_mp.send(S, "victim", "for the victim only")
        a.say("sent")
        stolen = a.hear()
        assert victim.call("receive", timeout=5) == "for the victim only"
    finally:
        a.close()
    # (it may bind a look-alike abstract name: harmless, nobody sends there)
    assert stolen == [], f"the squatter received the victim's mail: {stolen} ({first})"


def test_a_dead_processs_mailbox_cant_be_taken_over(ours: NodeHandle) -> None:
    """Beyond the list: a name seen in /proc/net/unix while the process lived is free once it died.
    Until its entry is purged (at once by the manager; not while no manager runs), a send goes to
    that name: whoever bound it meanwhile got the message."""
    w = ours.worker()
    w.call("register", S, "gone-soon")
    wid = f"{w.pid}.{start_time(w.pid)}"
    ours.kill_manager()  # no manager: the dead process's entry stays until someone trips on it

    def attack(a: Attacker) -> Any:
        names = [x for x in _listed_sockets() if wid in x]
        a.say(len(names))
        a.hear()  # the process is dead
        socks = _bind_everything(names)
        a.say(len(socks))
        a.hear()  # we sent to its entry
        return _drain(socks)
    a = Attacker(attack)
    try:
        assert a.hear() >= 1
        w.kill()
        a.say("dead")
        bound = a.hear()
        assert syn_mp.lookup(S, "gone-soon") is not None  # the stale entry, no manager to purge it
        syn_mp.send(S, "gone-soon", "secret for a dead process")
        a.say("sent")
        stolen = a.hear()
    finally:
        a.close()
    assert stolen == [], f"the squatter received a dead process's mail: {stolen} ({bound} names bound)"


def test_mailbox_files_are_private_and_go_with_their_process(ours: NodeHandle) -> None:
    """A mailbox is RDIR/mb.<pid>.<start>, 0600: nobody can send to it; with the dir and the socket
    opened up the credential check still drops another user's datagram; it goes when the process
    exits, and the manager unlinks a killed one's."""
    w = ours.worker()
    w.call("register", S, "w")
    path = ours.paths.mailbox(w.pid, start_time(w.pid))
    assert os.stat(path).st_mode & 0o777 == 0o600

    def send_as_nobody() -> str:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.sendto(b"\x00\x00\x00\x00\x05\xa5nobody", path)
            return "sent"
        except OSError as e:
            return e.strerror
    assert as_nobody(send_as_nobody) == "Permission denied"
    os.chmod(ours.rdir, 0o711)
    os.chmod(path, 0o666)
    try:
        assert as_nobody(send_as_nobody) == "sent"  # the kernel lets it through now...
    finally:
        os.chmod(ours.rdir, 0o700)
        os.chmod(path, 0o600)
    syn_mp.send(S, "w", "ours")
    assert w.call("receive", timeout=5) == "ours"  # ...and the mailbox dropped it
    with pytest.raises(RuntimeError, match="no message"):
        w.call("receive", timeout=0.3)
    w.kill()
    wait_for(lambda: not os.path.exists(path), what="the manager unlinks a killed process's mailbox")
    p = ours.python("import syn_mp, os; syn_mp.register('s', 'clean'); print(os.getpid(), flush=True)")
    pid = int(p.stdout.readline())
    p.wait(timeout=10)
    assert not [x for x in os.listdir(ours.rdir) if x.startswith(f"mb.{pid}.")]


# ------------------------------------------------------------------ a fake manager (item 2)

def _fake_manager(path: str, bind_first: Callable[[], None] | None = None) -> Attacker:
    """As nobody: a ctl.sock at `path` that answers every line as a manager would, and reports what it
    heard. `bind_first`: run before dropping to nobody (bind in a dir of ours, as a stand-in for any
    way of getting a socket there); the listen() that fixes its credentials happens as nobody."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if bind_first is not None:
        srv.bind(path)
        os.chmod(path, 0o777)

    def serve(a: Attacker) -> Any:
        if bind_first is None:
            srv.bind(path)
        srv.listen(8)
        a.say("listening")
        heard: list[str] = []
        srv.settimeout(0.2)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            r = select.select([a._r], [], [], 0)[0]
            if r:
                break  # the test is done
            try:
                c, _ = srv.accept()
            except OSError:
                continue
            with c:
                c.settimeout(2)
                try:
                    line = c.recv(65536)
                    if line:
                        heard.append(line.decode(errors="replace"))
                        c.sendall(b'{"ok": true, "node": "fake", "pid": 1, "scopes": []}\n')
                except OSError:
                    pass
        return heard
    a = Attacker(serve)
    srv.close()
    return a


def test_a_client_says_nothing_to_a_fake_manager_in_a_squatted_dir(make_node) -> None:
    """Issue #12, 2: a runtime dir another user made first, with its own ctl.sock in it: the client used
    to ping it and send add_scopes before looking whose dir it was."""
    rdir = f"/tmp/synmp-fake-{secrets.token_hex(4)}"
    assert as_nobody(lambda: os.mkdir(rdir, 0o755)) is None
    a = _fake_manager(os.path.join(rdir, "ctl.sock"))
    try:
        assert a.hear() == "listening"
        n = make_node("victim")
        os.environ.update(SYN_MP_RUNTIME_DIR=rdir, SYN_MP_NODE="victim")
        syn_mp._client.set_node(None)
        with pytest.raises(syn_mp.ManagerUnavailableError, match="not a private directory") as e:
            syn_mp.add_node_to_scopes([S])
        assert "\n" not in str(e.value)
        a.say("done")
        heard = a.hear()
    finally:
        a.close()
        shutil.rmtree(rdir, ignore_errors=True)
        n.close()
    assert heard == [], f"the client talked to another user's socket: {heard}"


def test_a_client_says_nothing_to_a_socket_another_user_serves(make_node) -> None:
    """SO_PEERCRED on every connection to ctl.sock: should a socket served by another user ever be
    there (here the test binds it for that user), the client refuses it before saying a word."""
    n = make_node("victim")
    os.chmod(n.rdir, 0o700)
    a = _fake_manager(n.paths.ctl, bind_first=lambda: None)
    try:
        assert a.hear() == "listening"
        n.use()
        with pytest.raises(syn_mp.ManagerUnavailableError, match="served by uid 65534"):
            syn_mp.add_node_to_scopes([S])
        a.say("done")
        heard = a.hear()
    finally:
        a.close()
    assert heard == [], f"the client talked to another user's socket: {heard}"


def test_the_manager_answers_no_other_user(ours: NodeHandle) -> None:
    """With the dir and ctl.sock opened up (a mistake), another user's connection gets no answer and
    can't stop the manager: the manager checks SO_PEERCRED on every connection."""
    def ask(op: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(ours.paths.ctl)
            try:
                s.sendall(json.dumps({"op": op}).encode() + b"\n")
                return s.recv(1000).decode()
            except (BrokenPipeError, ConnectionResetError):  # closed on us, unanswered
                return ""
    manager = ours.manager_pid()
    os.chmod(ours.rdir, 0o711)
    os.chmod(ours.paths.ctl, 0o666)
    try:
        got = [as_nobody(lambda: ask("status")), as_nobody(lambda: ask("stop"))]
        assert as_nobody(lambda: ask("ping")) == ""
    finally:
        os.chmod(ours.rdir, 0o700)
        os.chmod(ours.paths.ctl, 0o600)
    assert got == ["", ""], got
    time.sleep(0.2)  # (a stop would be immediate; this only lets one be seen)
    assert ours.manager_pid() == manager and ours.cli("status").returncode == 0


# ------------------------------------------------------------------ symlinks (item 3)

def _precious(tmp_path: Any, k: int) -> list[str]:
    out = []
    for i in range(k):
        p = tmp_path / f"precious-{i}"
        p.write_bytes(b"precious")
        p.chmod(0o600)
        out.append(str(p))
    return out


def test_a_squatted_dir_with_planted_symlinks_gets_nothing_written(make_node, tmp_path) -> None:
    """Issue #12, 3: /tmp cleaners remove an idle runtime dir; its segments (in /dev/shm) stay. Another
    user makes the dir again and plants symlinks under every name we might create. A worker of the
    node that still has its tables registers: nothing may be written through a link or in the dir."""
    n = make_node("victim").use()
    syn_mp.add_node_to_scopes([S])
    w = n.worker()
    w.call("lookup", S, "x")  # attached to the table, no mailbox yet
    n.kill_manager()
    shutil.rmtree(n.rdir)
    wid = f"{w.pid}.{start_time(w.pid)}"
    names = ["start.lock", "manager.lock", "manager.log", "state.json.tmp", "state.json", f"mb.{wid}",
             f"mailbox.key.{w.pid}.tmp", "mailbox.key.tmp", "ctl.sock"]
    targets = _precious(tmp_path, len(names))

    def squat() -> None:
        os.mkdir(n.rdir)
        os.chmod(n.rdir, 0o777)
        for name, target in zip(names, targets):
            os.symlink(target, os.path.join(n.rdir, name))
    assert as_nobody(squat) is None
    before = sorted(os.listdir(n.rdir))
    with pytest.raises(syn_mp.ManagerUnavailableError, match="not a private directory"):
        w.call("register", S, "victim")
    assert syn_mp.lookup(S, "victim") is None  # refused before its entry was written
    with pytest.raises(syn_mp.ManagerUnavailableError, match="not a private directory"):
        syn_mp.add_node_to_scopes([S])
    r = n.cli("status")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not a private directory" in r.stderr
    assert [open(t, "rb").read() for t in targets] == [b"precious"] * len(targets)
    assert sorted(os.listdir(n.rdir)) == before
    assert all(os.lstat(os.path.join(n.rdir, x)).st_uid == NOBODY for x in before)


def test_no_file_is_created_through_a_symlink_in_our_own_dir(make_node, tmp_path) -> None:
    """Defence in depth: every file the library creates is opened O_NOFOLLOW, so even a link in our own
    private dir (left by anything) is never written through."""
    n = make_node("n1").use()
    names = ["start.lock", "manager.log", "manager.lock", "state.json.tmp"]
    targets = _precious(tmp_path, len(names))
    for name, target in zip(names, targets):
        os.symlink(target, os.path.join(n.rdir, name))
    with pytest.raises(syn_mp.ManagerUnavailableError):
        syn_mp.add_node_to_scopes([S])
    assert [open(t, "rb").read() for t in targets] == [b"precious"] * len(targets)


# ------------------------------------------------------------------ a non-root node's user (items 4, 6)

@pytest.fixture(scope="session")
def victim_uid() -> int:
    """A real second, non-root user for the node (nobody is the attacker)."""
    try:
        return pwd.getpwnam(VICTIM).pw_uid
    except KeyError:
        pass
    r = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", VICTIM],
                       capture_output=True, text=True)
    if r.returncode != 0:
        msg = f"useradd {VICTIM} failed: {r.stderr.strip()}"
        if CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return pwd.getpwnam(VICTIM).pw_uid


def _as_user(uid: int, code: str, rdir: str, timeout: float = 60) -> subprocess.CompletedProcess:
    exe, env = other_users_python()
    env.update(SYN_MP_RUNTIME_DIR=rdir, SYN_MP_NODE="victim")
    return subprocess.run([exe, "-c", textwrap.dedent(code)], user=uid, group=uid, extra_groups=[],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _stop_node(rdir: str) -> None:
    try:
        with open(os.path.join(rdir, "state.json")) as f:
            pid = json.load(f)["pid"]
        if start_time(pid) is not None:
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: start_time(pid) is None, what="manager exit")
    except (OSError, ValueError, KeyError):
        pass
    for seg in iter_segments(_config.segment_name(rdir, "")):
        posix_ipc.unlink_shared_memory(seg)
    shutil.rmtree(rdir, ignore_errors=True)


def test_a_segment_squatted_with_mode_0600_is_refused_cleanly(victim_uid: int) -> None:
    """Issue #12, 4: another user creates a scope's segment first with mode 0600 (0666 was refused
    cleanly already): the node's user can't even open it. The manager used to let a raw
    posix_ipc.PermissionsError escape its loop, and the client got it."""
    rdir = f"/tmp/synmp-vic-{secrets.token_hex(4)}"
    name = _config.segment_name(rdir, "squat")
    try:
        assert as_nobody(lambda: Table.create(name, "evil", 64, 1 << 20, 1 << 16, mode=0o600).name) == name
        r = _as_user(victim_uid, """
            import syn_mp
            syn_mp.add_node_to_scopes(["ok"])
            for what, call in (("add", lambda: syn_mp.add_node_to_scopes(["squat"])),
                               ("register", lambda: syn_mp.register("squat", "me"))):
                try:
                    call()
                    print(what, "ok")
                except syn_mp.SynError as e:
                    print(what, type(e).__name__, e)
            syn_mp.register("ok", "me")  # the manager is up and the node works
            print("scopes", syn_mp.node_scopes(), syn_mp.lookup("ok", "me")[0].pid > 0)
        """, rdir)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0].startswith("add ManagerUnavailableError") and "owned by uid 65534" in lines[0], lines
        assert lines[1].startswith("register InvalidScopeError") and "owned by uid 65534" in lines[1], lines
        assert lines[2] == "scopes ['ok'] True", lines
        log = open(os.path.join(rdir, "manager.log")).read()
        assert "Traceback" not in log and "exception" not in log.lower(), log
        assert os.stat("/dev/shm" + name).st_uid == NOBODY
    finally:
        posix_ipc.unlink_shared_memory(name)
        _stop_node(rdir)


def test_the_cli_run_by_another_user_says_one_line(ours: NodeHandle) -> None:
    """Issue #12, 6: `syn-mp` run by another user against our node: a posix_ipc traceback and exit 1
    (documented as "absent"), `scopes` exit 0 with nothing. Each must be one line and exit 2."""
    syn_mp.register(S, "web")
    syn_mp.join(S, "g")

    exe, env = other_users_python()

    def run_all() -> list[Any]:
        out = []
        for cmd in (["lookup", S, "web"], ["registry", S], ["members", S, "g"], ["groups", S], ["scopes"],
                    ["status"], ["nodes", S], ["stop"]):
            r = subprocess.run([exe, "-m", "syn_mp", "--runtime-dir", ours.rdir, *cmd], cwd=ROOT,
                               env=env, capture_output=True, text=True, timeout=30)
            out.append([cmd, r.returncode, r.stdout, r.stderr])
        return out
    for cmd, rc, out, err in as_nobody(run_all, timeout=120):
        assert rc == 2 and out == "" and err.startswith("syn-mp: ") and err.count("\n") == 1, (cmd, rc, out, err)
        assert "not a private directory of uid 65534" in err, (cmd, err)
    assert ours.manager_pid() and syn_mp.lookup(S, "web") is not None


# ------------------------------------------------------------------ the spawned manager's imports

def test_the_spawned_manager_never_imports_from_the_clients_cwd(make_node) -> None:
    """Beyond the list: `python -m syn_mp` puts its working dir first on sys.path. The client used to
    spawn the manager in its own cwd: run from a dir another user can write to (say /tmp), it ran that
    user's syn_mp/__main__.py as the node's user."""
    trap = f"/tmp/synmp-trap-{secrets.token_hex(4)}"
    marker = os.path.join(trap, "ran")

    def plant() -> None:
        os.mkdir(trap)
        os.chmod(trap, 0o777)
        os.mkdir(os.path.join(trap, "syn_mp"))
        for f in ("__init__.py", "__main__.py"):
            with open(os.path.join(trap, "syn_mp", f), "w") as fh:
                fh.write(f"import os\nopen({marker!r}, 'a').write('uid %d\\n' % os.getuid())\n")
    assert as_nobody(plant) is None
    n = make_node("n1")
    try:
        code = (f"import sys; sys.path[0] = {ROOT!r}\n"  # the program itself imports the real syn_mp
                "import syn_mp\nsyn_mp.add_node_to_scopes(['s'])\nprint(syn_mp.node_name())\n")
        r = subprocess.run([sys.executable, "-c", code], cwd=trap, env=n.env, capture_output=True, text=True,
                           timeout=60)
        assert not os.path.exists(marker), f"the manager ran another user's code: {open(marker).read()}"
        assert r.returncode == 0 and r.stdout.strip() == "n1", r.stderr
        assert n.manager_pid()
    finally:
        shutil.rmtree(trap, ignore_errors=True)
