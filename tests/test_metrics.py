"""`syn-mp daemon --metrics HOST:PORT` (issue 15, 3): a real daemon's /metrics, checked by promtool and
scraped by a real Prometheus server (Debian's `prometheus`, which ./dev test installs), all on loopback.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.parse
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, wait_for


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need(tool: str) -> str:
    path = shutil.which(tool)
    assert path, f"{tool} is missing: ./dev test installs it (Debian package prometheus)"
    return path


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.status == 200
        return r.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def metrics_daemon(n, port: int, *extra: str) -> subprocess.Popen:
    return n.daemon("--metrics", f"127.0.0.1:{port}", *extra)


def test_metrics_of_a_daemon_follow_its_state_and_pass_promtool(make_node):
    n = make_node()
    port = free_port()
    metrics_daemon(n, port)
    n.use()
    w = n.worker()
    w.call("add_node_to_scopes", ["web"])
    w.call("register", "web", "a")
    w.call("join", "web", "workers")
    doomed = n.worker()
    doomed.call("add_node_to_scopes", ["web"])
    doomed.call("register", "web", "b")
    doomed.kill()
    wait_for(lambda: samples(scrape(port)).get(("syn_mp_purges_total", (("reason", "process_exit"),))) == 1,
             what="the purge counted")
    text = scrape(port)
    got = samples(text)
    web = (("scope", "web"),)
    assert got[("syn_mp_registry_names", web)] == 1
    assert got[("syn_mp_group_memberships", web)] == 1
    assert got[("syn_mp_table_entries", web)] == 2
    assert got[("syn_mp_table_capacity_entries", web)] > 2
    assert 0 < got[("syn_mp_table_heap_used_bytes", web)] < got[("syn_mp_table_heap_size_bytes", web)]
    assert got[("syn_mp_table_heap_free_chunks", web)] < got[("syn_mp_table_heap_chunks", web)]
    assert got[("syn_mp_watched_processes", (("method", "pidfd"),))] + \
        got[("syn_mp_watched_processes", (("method", "polled"),))] == 1  # the living worker
    assert got[("syn_mp_healthy", ())] == 1
    assert got[("syn_mp_loop_failing", (("loop", "journal pump"),))] == 0
    assert got[("syn_mp_refused_scopes", ())] == 0
    assert not any(name.startswith("syn_mp_cluster") for name, _ in got)  # a node alone
    r = subprocess.run([need("promtool"), "check", "metrics"], input=text, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr


def test_pump_health_and_cluster_counters(make_node, tmp_path):
    """A crashing pump shows as failing with its restarts; a cluster node counts what it receives: a
    malformed datagram sent to its port is counted under kind="malformed"."""
    n = make_node()
    port, udp = free_port(), free_port(socket.SOCK_DGRAM)
    secret = tmp_path / "secret"
    secret.write_bytes(b"0123456789abcdef0123")
    n.env["SYN_MP_TEST_FAULT"] = "pump"
    metrics_daemon(n, port, "--peers", f"127.0.0.1:{udp}", "--interface", "127.0.0.1", "--secret-file", str(secret))
    wait_for(lambda: samples(scrape(port)).get(("syn_mp_loop_restarts_total", (("loop", "journal pump"),)), 0) >= 1,
             what="the pump's restarts counted")
    got = samples(scrape(port))
    assert got[("syn_mp_loop_failing", (("loop", "journal pump"),))] == 1
    assert got[("syn_mp_healthy", ())] == 0
    assert got[("syn_mp_cluster_nodes_up", ())] == 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"not a datagram of ours", ("127.0.0.1", udp))
    wait_for(lambda: samples(scrape(port)).get(("syn_mp_cluster_datagrams_total", (("kind", "malformed"),))) == 1,
             what="the malformed datagram counted")
    got = samples(scrape(port))
    assert ("syn_mp_cluster_snapshots_total", (("kind", "fetched"),)) in got
    r = subprocess.run([need("promtool"), "check", "metrics"], input=scrape(port), capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr


def test_a_real_prometheus_scrapes_the_daemon(make_node, tmp_path):
    n = make_node()
    port, prom_port = free_port(), free_port()
    metrics_daemon(n, port)
    n.use()
    w = n.worker()
    w.call("add_node_to_scopes", ["web"])
    w.call("register", "web", "a")
    config = tmp_path / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 200ms\n  scrape_timeout: 150ms\n"
                      f"scrape_configs:\n  - job_name: syn_mp\n    static_configs:\n"
                      f"      - targets: ['127.0.0.1:{port}']\n")
    with open(tmp_path / "prometheus.log", "wb") as log:
        prom = subprocess.Popen([need("prometheus"), f"--config.file={config}",
                                 f"--storage.tsdb.path={tmp_path / 'data'}",
                                 f"--web.listen-address=127.0.0.1:{prom_port}"],
                                cwd=tmp_path, stdout=log, stderr=log)
    try:
        def query() -> list:
            q = urllib.parse.quote('syn_mp_registry_names{scope="web",job="syn_mp"}')
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{prom_port}/api/v1/query?query={q}", timeout=5) as r:
                    return json.load(r)["data"]["result"]
            except OSError:
                return []
        result = wait_for(query, timeout=60, interval=0.2, what="Prometheus to scrape the daemon")
        assert result[0]["metric"]["instance"] == f"127.0.0.1:{port}" and result[0]["value"][1] == "1", result
    finally:
        prom.send_signal(signal.SIGTERM)
        try:
            prom.wait(timeout=20)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait()


def test_metrics_usage_errors_are_one_line(make_node):
    n = make_node()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        for arg, says in ((f"127.0.0.1:{taken.getsockname()[1]}", "Address already in use"),
                          ("nohostport", "expected HOST:PORT")):
            r = subprocess.run([sys.executable, "-m", "syn_mp", "daemon", "--runtime-dir", n.rdir, "--metrics", arg],
                               env=n.env, cwd=ROOT, capture_output=True, text=True, timeout=30)
            assert r.returncode == 2 and says in r.stderr and r.stderr.startswith("syn-mp: "), r.stderr
            assert r.stderr.count("\n") == 1, r.stderr
    finally:
        taken.close()
    assert not os.path.exists(n.paths.ctl)


def test_propagation_lag_of_another_nodes_writes_is_a_histogram(make_node, tmp_path):
    """Two nodes on loopback peers: each registration made on n3 lands in n2's lag histogram
    (from n3's write to n2 applying it), a well-formed Prometheus histogram."""
    from test_cluster_churn import LoNet
    secret = tmp_path / "secret"
    secret.write_bytes(b"0123456789abcdef0123456789abcdef")
    secret.chmod(0o600)
    port = free_port()
    net = LoNet(make_node, str(secret), free_port(socket.SOCK_DGRAM), 2)
    n2, n3 = net.nodes
    metrics_daemon_args = ("--metrics", f"127.0.0.1:{port}")
    net.start(n2, *metrics_daemon_args)
    net.start(n3)
    w2, w3 = n2.worker(), n3.worker()
    w2.call("add_node_to_scopes", ["s"])
    w3.call("add_node_to_scopes", ["s"])
    # n2 knows n3 (and its snapshot): from now on n3's writes come one by one
    wait_for(lambda: samples(scrape(port)).get(("syn_mp_cluster_nodes_up", ()), 0) == 1, timeout=20, what="n2 sees n3")
    w3.call("register", "s", "first")
    wait_for(lambda: syn_mp_lookup(n2, "first"), timeout=20, what="n3's first write on n2")
    for i in range(5):
        w3.call("register", "s", f"lag-{i}")
    key = ("syn_mp_cluster_propagation_lag_seconds_count", ())
    wait_for(lambda: samples(scrape(port)).get(key, 0) >= 5, timeout=20, what="5 remote writes in n2's histogram")
    got = samples(scrape(port))
    assert got[("syn_mp_cluster_propagation_lag_seconds_bucket", (("le", "+Inf"),))] == got[key]
    assert 0 <= got[("syn_mp_cluster_propagation_lag_seconds_sum", ())] < 5 * got[key]  # seconds, not ns
    r = subprocess.run([need("promtool"), "check", "metrics"], input=scrape(port), capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr


def syn_mp_lookup(n, name: str) -> bool:
    r = n.cli("lookup", "s", name)
    return r.returncode == 0
