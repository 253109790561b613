"""`syn-mp` for one node: what people and scripts read, and the exit codes of API.md."""
from __future__ import annotations

import json
import os

import syn_mp

from conftest import wait_for


def test_no_manager_is_exit_2_with_one_line(make_node):
    n = make_node()
    for cmd in (["status"], ["stop"]):
        r = n.cli(*cmd)
        assert r.returncode == 2
        assert r.stderr.count("\n") == 1 and "unreachable" in r.stderr
        assert "Traceback" not in r.stderr


def test_bad_usage_is_exit_2_with_one_line(node):
    for cmd in ([], ["frobnicate"], ["lookup", "s"], ["registry", "bad/scope"], ["registry", "nosuchscope"],
                ["--json-key", "lookup", "s", "{not json"], ["--json-key", "lookup", "s", '{"a": 1}'],
                # nested past the recursion limit (issue #12, 6: a RecursionError traceback, exit 1)
                ["--json-key", "lookup", "s", "[" * 100000], ["--json-key", "lookup", "s", "[" * 5000 + "]" * 5000],
                ["--json-key", "members", "s", "[" * 900 + "1" + "]" * 900]):
        r = node.cli(*cmd)
        assert r.returncode == 2, (cmd, r)
        assert r.stderr.startswith("syn-mp: ") and r.stderr.count("\n") == 1, (cmd, r.stderr)


def test_status_and_scopes(node):
    syn_mp.add_node_to_scopes(["other"])
    syn_mp.register("s", "a")
    r = node.cli("status")
    assert r.returncode == 0, r.stderr
    assert "node      n1" in r.stdout and "SCOPE" in r.stdout
    row = next(line for line in r.stdout.splitlines() if line.startswith("s "))
    assert row.split()[1] == "1"
    st = json.loads(node.cli("--json", "status").stdout)
    assert st["node"] == "n1" and st["scopes"]["s"]["reg_count"] == 1 and st["pid"] == node.manager_pid()
    assert node.cli("scopes").stdout.split() == ["other", "s"]
    assert json.loads(node.cli("--json", "scopes").stdout) == ["other", "s"]


def test_lookup_found_and_absent(node):
    syn_mp.register("s", "web", meta={"port": 8080})
    r = node.cli("lookup", "s", "web")
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["NODE", "PID", "META"]
    assert lines[1].split()[:2] == ["n1", str(os.getpid())]
    doc = json.loads(node.cli("--json", "lookup", "s", "web").stdout)
    assert doc == {"node": "n1", "pid": os.getpid(), "meta": {"port": 8080}}
    r = node.cli("lookup", "s", "nope")
    assert r.returncode == 1 and r.stdout == "" and r.stderr.count("\n") == 1


def test_json_key_parses_tuples(node):
    syn_mp.register("s", ("web", 3), meta=[1, (2, 3)])
    assert node.cli("lookup", "s", '["web", 3]').returncode == 1  # a plain string is another name
    doc = json.loads(node.cli("--json", "--json-key", "lookup", "s", '["web", 3]').stdout)
    assert doc["pid"] == os.getpid() and doc["meta"] == [1, [2, 3]]


def test_registry_table_and_json(node):
    w = node.worker()
    w.call("register", "s", "b-worker", meta=7)
    syn_mp.register("s", "a-self")
    syn_mp.register("s", ("slot", 1), meta=b"\x00\x01")
    r = node.cli("registry", "s")
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["NAME", "NODE", "PID", "META"]
    assert len(lines) == 4
    # columns are aligned: every row starts its NODE column at the same offset
    col = lines[0].index("NODE")
    assert all(line[col:col + 2] == "n1" for line in lines[1:])
    doc = json.loads(node.cli("--json", "registry", "s").stdout)
    by_name = {json.dumps(d["name"]): d for d in doc}
    assert by_name['"b-worker"'] == {"name": "b-worker", "node": "n1", "pid": w.pid, "meta": 7}
    assert by_name['["slot", 1]']["meta"] == {"$bytes": "AAE="}
    assert json.loads(node.cli("--json", "registry", "s", "--node", "n1").stdout) == doc
    assert json.loads(node.cli("--json", "registry", "s", "--node", "elsewhere").stdout) == []


def test_groups_and_members(node):
    w = node.worker()
    w.call("join", "s", "web", meta="w")
    syn_mp.join("s", "web", meta="me")
    syn_mp.join("s", ("pool", 2))
    r = node.cli("groups", "s")
    assert r.returncode == 0
    rows = {line.split()[0]: line.split()[1:] for line in r.stdout.splitlines()[1:]}
    assert rows["web"] == ["2", "2"]
    doc = json.loads(node.cli("--json", "groups", "s").stdout)
    assert {"group": ["pool", 2], "members": 1, "local": 1} in doc
    ms = json.loads(node.cli("--json", "members", "s", "web").stdout)
    assert ms == sorted([{"node": "n1", "pid": w.pid, "meta": "w"}, {"node": "n1", "pid": os.getpid(), "meta": "me"}],
                        key=lambda d: d["pid"])
    assert node.cli("members", "s", "nobody").returncode == 1


def test_daemon_in_foreground_and_stop(make_node):
    n = make_node()
    p = n.daemon()
    r = n.cli("stop")
    assert r.returncode == 0 and str(p.pid) in r.stdout
    wait_for(lambda: p.poll() is not None, what="daemon exit")
    assert p.returncode == 0
    assert n.cli("status").returncode == 2


def test_python_dash_m_is_the_same_cli(node):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "syn_mp", "--help"], capture_output=True, text=True, env=node.env)
    assert r.returncode == 0 and "registry" in r.stdout
