"""The etcd harness itself (tests/etcd.py): a real 3-member cluster on loopback, its failures on demand."""
from __future__ import annotations

import pytest


def test_three_members_survive_one_killed_and_all_restarted(etcd):
    e = etcd()
    assert len(e.endpoints.split(",")) == 3 and all(m.alive() for m in e.members)
    e.put("/h/a", b"1")
    e.kill(0)
    e.put("/h/b", b"2")  # a quorum of two still writes
    assert e.get("/h/a") == b"1"
    e.restart(0)
    e.stop_all()
    assert not any(m.alive() for m in e.members)
    e.start_all()  # on their data: nothing lost
    assert e.keys("/h/") == ["/h/a", "/h/b"]
    rev = e.compact()
    assert rev == e.revision()


def test_a_compacted_revision_is_refused(etcd):
    e = etcd()
    e.put("/c/x", b"1")
    e.put("/c/x", b"2")
    rev = e.compact()
    with pytest.raises(AssertionError, match="compacted"):
        e._v3("kv/range", {"key": b"/c/x", "revision": rev - 1})
