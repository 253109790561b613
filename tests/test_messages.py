"""Mailboxes: send, publish, receive, areceive and multi_call between real processes."""
from __future__ import annotations

import asyncio
import os
import subprocess
import time

import pytest

import syn_mp
from syn_mp import mailbox

from conftest import wait_for

# A member process: registers ("w", i), joins "g" with meta i, then serves its mailbox.
MEMBER = """
import sys, syn_mp
i = int(sys.argv[1]); mode = sys.argv[2]
syn_mp.register("s", ("w", i))
syn_mp.join("s", "g", meta=i)
print("ready", flush=True)
while True:
    m = syn_mp.receive()
    if isinstance(m, syn_mp.MultiCall):
        if mode == "silent":
            continue                                   # never answers
        if mode == "func":
            syn_mp.multi_call_reply(m.caller, ("func", m.message, m.meta))
        else:
            m.reply(("pong", m.message, m.meta, m.caller.pid))
    else:
        print(repr(m), flush=True)
"""


def _members(node, modes: list[str]) -> list[subprocess.Popen]:
    ps = [node.python(MEMBER, str(i), mode) for i, mode in enumerate(modes)]
    for p in ps:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
    return ps


def test_send_reaches_the_registered_process_and_keeps_types(node):
    (p,) = _members(node, ["echo"])
    msg = {"a": (1, 2.5, b"\x00"), ("k", 1): [None, True]}
    assert syn_mp.send("s", ("w", 0), msg) == syn_mp.Pid("n1", p.pid)
    assert eval(p.stdout.readline()) == msg


def test_send_to_an_unregistered_name_is_undefined(node):
    with pytest.raises(syn_mp.UndefinedError):
        syn_mp.send("s", "nobody", 1)
    with pytest.raises(syn_mp.EncodingError):
        syn_mp.send("s", "nobody", {1, 2})


def test_publish_counts_every_member_and_reaches_each(node):
    ps = _members(node, ["echo", "echo", "echo"])
    assert syn_mp.publish("s", "g", "hi") == 3
    assert syn_mp.local_publish("s", "g", ("again",)) == 3
    for p in ps:
        assert p.stdout.readline().strip() == "'hi'"
        assert p.stdout.readline().strip() == "('again',)"
    assert syn_mp.publish("s", "empty", "x") == 0


def test_publish_to_a_dead_member_counts_it_and_does_not_block(node):
    """As Syn counts a send to a dead pid: the member is still in the table until purged."""
    node.kill_manager()  # nobody purges the dead member meanwhile
    ps = _members(node, ["echo", "echo"])
    ps[0].kill()
    ps[0].wait()
    t0 = time.monotonic()
    assert syn_mp.publish("s", "g", "x") == 2
    assert time.monotonic() - t0 < mailbox.SEND_TIMEOUT * 5
    assert ps[1].stdout.readline().strip() == "'x'"


def test_receive_times_out(node):
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        syn_mp.receive(timeout=0.05)
    assert time.monotonic() - t0 >= 0.05


def test_a_process_receives_what_it_sends_itself(node):
    syn_mp.register("s", "me")
    syn_mp.send("s", "me", [1, 2])
    assert syn_mp.receive(timeout=5) == [1, 2]


def test_areceive_awaits_without_blocking_the_loop(node):
    syn_mp.register("s", "me")

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)
        tk = asyncio.create_task(ticker())
        w = node.worker()
        later = asyncio.get_running_loop().run_in_executor(None, lambda: (time.sleep(0.1), w.call("send", "s", "me", "async hi")))
        got = await syn_mp.areceive(timeout=10)
        await later
        tk.cancel()
        with pytest.raises(TimeoutError):
            await syn_mp.areceive(timeout=0.02)
        return got, ticks
    got, ticks = asyncio.run(main())
    assert got == "async hi"
    assert ticks > 10  # the loop kept running while we waited


def test_multi_call_collects_replies_and_bad_replies(node):
    ps = _members(node, ["echo", "silent", "func", "echo"])
    ps[3].kill()
    ps[3].wait()  # gone, but still a member until the manager purges it: may be either kind of bad
    t0 = time.monotonic()
    replies, bad = syn_mp.multi_call("s", "g", "ping", timeout=0.5)
    took = time.monotonic() - t0
    me = syn_mp.Pid("n1", os.getpid())
    got = {who[0].pid: r for who, r in replies}
    assert got == {ps[0].pid: ("pong", "ping", 0, me), ps[2].pid: ("func", "ping", 2)}
    assert [who for who, _ in replies] == sorted(who for who, _ in replies)
    assert (syn_mp.Pid("n1", ps[1].pid), 1) in bad
    assert all(pid.pid != ps[0].pid for pid, _ in bad)
    assert 0.5 <= took < 5
    assert len(replies) + len(bad) in (3, 4)


def test_multi_call_returns_early_when_all_answered(node):
    _members(node, ["echo", "echo"])
    t0 = time.monotonic()
    replies, bad = syn_mp.multi_call("s", "g", 1, timeout=30)
    assert len(replies) == 2 and bad == []
    assert time.monotonic() - t0 < 10


def test_flooded_mailbox_never_blocks_the_sender_for_long(node):
    """A reader that does not read: sends wait at most SEND_TIMEOUT each, then drop (documented)."""
    sleeper = node.python("""
import syn_mp, sys, os, signal
syn_mp.register("s", "sleeper")
print("ready", flush=True)
os.kill(os.getpid(), signal.SIGSTOP)   # its drain thread stops too: nothing is read
""")
    assert sleeper.stdout.readline().strip() == "ready"
    wait_for(lambda: open(f"/proc/{sleeper.pid}/stat").read().split(") ")[1][0] == "T", what="stopped")
    payload = "x" * 4000
    t0 = time.monotonic()
    n = 40  # the kernel queue holds a few; every further send waits its SEND_TIMEOUT
    for _ in range(n):
        syn_mp.send("s", "sleeper", payload)
    elapsed = time.monotonic() - t0
    # each send waits at most SEND_TIMEOUT: bounded, never forever
    assert elapsed < n * mailbox.SEND_TIMEOUT + 5
    # and the sender still works for everyone else
    syn_mp.register("s", "me")
    syn_mp.send("s", "me", "still fine")
    assert syn_mp.receive(timeout=5) == "still fine"
    sleeper.kill()


def test_mailbox_drains_a_burst_faster_than_the_kernel_queue(node):
    """The drain thread moves datagrams into the process: a burst of 2,000 arrives whole."""
    reader = node.python("""
import syn_mp, time
syn_mp.register("s", "reader")
print("ready", flush=True)
n = 0
while True:
    try:
        syn_mp.receive(timeout=3)
        n += 1
    except TimeoutError:
        break
print(n, flush=True)
""")
    assert reader.stdout.readline().strip() == "ready"
    for i in range(2000):
        syn_mp.send("s", "reader", i)
    assert int(reader.stdout.readline()) == 2000


def test_mailbox_is_gone_with_its_process_and_a_new_process_gets_none_of_its_mail(node):
    w = node.worker()
    w.call("register", "s", "x")
    addr = mailbox._address(node.rdir, w.pid, __import__("syn_mp._procinfo")._procinfo.start_time(w.pid))
    w.kill()
    assert not mailbox._send_raw(addr, b"\x00")  # nobody is bound there any more

def test_publish_counts_a_member_that_never_opened_a_mailbox(node):
    # a process joined by another (it never called register, join or receive itself)
    sleeper = node.python("import sys; sys.stdin.read()")
    syn_mp.join("s", "g", pid=sleeper.pid)
    syn_mp.register("s", "silent", pid=sleeper.pid)
    t0 = time.monotonic()
    assert syn_mp.publish("s", "g", "x") == 1
    assert syn_mp.send("s", "silent", "y") == syn_mp.Pid("n1", sleeper.pid)
    replies, bad = syn_mp.multi_call("s", "g", "q", timeout=2)
    assert replies == [] and bad == [(syn_mp.Pid("n1", sleeper.pid), None)]
    # no mailbox: nothing to wait for, the sends return at once and the call does not wait its timeout
    assert time.monotonic() - t0 < 2 + mailbox.SEND_TIMEOUT * 3


def test_a_process_that_moves_to_another_node_registers_there_with_a_mailbox_there(make_node):
    """register() opens the caller's mailbox only on its first self write (C knows the caller from
    then on): a move to another node (set_node) must unset that, or the process would be
    registered on the new node with its mailbox still on the old one, and never get a message."""
    n1 = make_node("n1").use()
    syn_mp.add_node_to_scopes(["s"])
    syn_mp.register("s", "me")
    syn_mp.send("s", "me", "on n1")
    assert syn_mp.receive(timeout=5) == "on n1"
    n2 = make_node("n2").use()
    syn_mp.add_node_to_scopes(["s"])
    syn_mp.register("s", "me")
    assert os.path.exists(mailbox._address(n2.rdir, os.getpid(), __import__("syn_mp._procinfo")._procinfo.start_time(os.getpid())))
    syn_mp.send("s", "me", "on n2")
    assert syn_mp.receive(timeout=5) == "on n2"
    n1.use()
    syn_mp.unregister("s", "me")  # n1's entry, written before the move
