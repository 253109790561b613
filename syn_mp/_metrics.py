"""`syn-mp daemon --metrics HOST:PORT`: the manager's state as Prometheus metrics, on /metrics.

prometheus_client serves HTTP in a thread of its own; each scrape asks the manager's loop for its
`status` (the one snapshot `syn-mp status` shows too), so nothing is read while the loop changes it.
Names and units follow Prometheus' conventions (`promtool check metrics` is run on them by the tests).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Iterator

log = logging.getLogger("syn_mp.metrics")

SCRAPE_TIMEOUT = 5.0  # seconds a scrape waits for the manager's loop


class MetricsError(Exception):
    """--metrics can't be served (prometheus_client missing, the address taken): one line, exit 2."""


def cluster_counters(cluster: dict[str, Any] | None) -> dict[str, int]:
    """The counters a cluster keeps (`status`'s "cluster" section), whatever else it holds: only the
    integer ones, so that a counter the cluster layer adds or drops changes no code here."""
    if not cluster:
        return {}
    return {k: v for k, v in cluster.items() if isinstance(v, int) and not isinstance(v, bool)}


# cluster counters by metric: (metric, help, label, {counter: label value})
_CLUSTER_FAMILIES = [
    ("syn_mp_cluster_datagrams", "Cluster datagrams, by kind (forged, replayed and malformed ones are dropped).",
     "kind", {"sent": "sent", "received": "received", "forged": "forged", "replayed": "replayed",
              "malformed": "malformed"}),
    ("syn_mp_cluster_snapshots", "Scope snapshots exchanged with other nodes, by kind.", "kind",
     {"snapshots_fetched": "fetched", "snapshots_served": "served"}),
]


class ManagerCollector:
    """A prometheus_client collector over the manager's status."""

    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self._status = status

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
        st = self._status()

        def gauge(name: str, doc: str, labels: list[str] | None = None) -> Any:
            return GaugeMetricFamily(name, doc, labels=labels or [])

        def counter(name: str, doc: str, labels: list[str] | None = None) -> Any:
            return CounterMetricFamily(name, doc, labels=labels or [])

        start = gauge("syn_mp_manager_start_time_seconds", "When the manager started, as a Unix time.")
        start.add_metric([], st["started"])
        yield start

        per_scope = {
            "names": gauge("syn_mp_registry_names", "Names registered in the scope (every node).", ["scope"]),
            "members": gauge("syn_mp_group_memberships", "Group memberships in the scope (every node).", ["scope"]),
            "entries": gauge("syn_mp_table_entries", "Entries (names and memberships) in the scope's table.",
                             ["scope"]),
            "capacity": gauge("syn_mp_table_capacity_entries", "Entries the scope's table can hold.", ["scope"]),
            "heap_used": gauge("syn_mp_table_heap_used_bytes", "Bytes of the scope's heap in use.", ["scope"]),
            "heap_size": gauge("syn_mp_table_heap_size_bytes", "Bytes of the scope's heap.", ["scope"]),
            "chunks": gauge("syn_mp_table_heap_chunks", "Chunks of the scope's heap.", ["scope"]),
            "chunks_free": gauge("syn_mp_table_heap_free_chunks", "Free chunks of the scope's heap.", ["scope"]),
        }
        fields = {"names": "reg_count", "members": "pg_count", "entries": "count", "capacity": "capacity",
                  "heap_used": "heap_used", "heap_size": "heap_size", "chunks": "chunks", "chunks_free": "chunks_free"}
        for scope, s in st["scopes"].items():
            for key, fam in per_scope.items():
                if fields[key] in s:
                    fam.add_metric([scope], s[fields[key]])
        yield from per_scope.values()

        refused = gauge("syn_mp_refused_scopes", "Scopes the manager could not open or rebuild.")
        refused.add_metric([], len(st.get("refused") or {}))
        yield refused

        watched = gauge("syn_mp_watched_processes", "Processes the manager watches for death, by method.", ["method"])
        w = st.get("watch") or {}
        if w.get("pidfd") is not None:
            watched.add_metric(["pidfd"], w["pidfd"])
        watched.add_metric(["polled"], w.get("polled", 0))
        yield watched
        unreadable = gauge("syn_mp_unreadable_processes",
                           "Watched processes whose liveness can't be read (kept until they can).")
        unreadable.add_metric([], w.get("unknown", 0))
        yield unreadable

        purges = counter("syn_mp_purges", "Dead processes' entries purged, by reason.", ["reason"])
        for reason, n in sorted(st["purged"].items()):
            purges.add_metric([reason], n)
        yield purges

        health = st["health"]
        healthy = gauge("syn_mp_healthy", "1 while the manager does its job (what `syn-mp status` checks).")
        healthy.add_metric([], 1 if health["ok"] else 0)
        yield healthy
        failing = gauge("syn_mp_loop_failing", "1 while a supervised loop of the manager keeps failing.", ["loop"])
        restarts = counter("syn_mp_loop_restarts", "Restarts of a supervised loop of the manager.", ["loop"])
        for name, loop in sorted(health.get("loops", {}).items()):
            failing.add_metric([name], 1 if loop["failing"] else 0)
            restarts.add_metric([name], loop["restarts"])
        yield failing
        yield restarts
        incidents = counter("syn_mp_incidents", "Errors the manager survived, by kind.", ["kind"])
        for kind, rec in sorted(health.get("incidents", {}).items()):
            incidents.add_metric([kind], rec["count"])
        yield incidents

        cb = st.get("callbacks")
        if cb:
            fam = counter("syn_mp_event_handler_calls", "Event handler calls that failed or hung.", ["outcome"])
            fam.add_metric(["failed"], cb["failed"])
            fam.add_metric(["hung"], cb["hung"])
            yield fam

        lag = st.get("propagation")
        if lag is not None:
            fam = HistogramMetricFamily(
                "syn_mp_cluster_propagation_lag_seconds",
                "From another node's write of an entry to this node applying it (clocks kept in step by NTP).",
                buckets=[("+Inf" if le is None else repr(float(le)), n) for le, n in lag["buckets"]],
                sum_value=lag["sum"])
            yield fam

        cluster = st.get("cluster")
        if cluster is not None:
            up = gauge("syn_mp_cluster_nodes_up", "Other nodes this node hears from.")
            up.add_metric([], len(cluster.get("nodes", [])))
            yield up
            counters = cluster_counters(cluster)
            for name, doc, label, kinds in _CLUSTER_FAMILIES:
                fam = counter(name, doc, [label])
                for key, value in kinds.items():
                    if key in counters:
                        fam.add_metric([value], counters[key])
                yield fam
            for key, name, doc in (("conflicts", "syn_mp_cluster_conflicts", "Name conflicts resolved."),
                                   ("relayed", "syn_mp_cluster_relayed_messages", "Messages relayed to other nodes.")):
                if key in counters:
                    fam = counter(name, doc)
                    fam.add_metric([], counters[key])
                    yield fam


class MetricsServer:
    def __init__(self, host: str, port: int, status: Callable[[], dict[str, Any]]) -> None:
        try:
            from prometheus_client import CollectorRegistry, start_http_server
        except ImportError:
            raise MetricsError("--metrics needs prometheus_client: pip install 'syn_mp[metrics]'") from None
        loop = asyncio.get_running_loop()

        async def snapshot() -> dict[str, Any]:
            return status()

        def from_loop() -> dict[str, Any]:  # in the HTTP thread: the status is made in the loop
            return asyncio.run_coroutine_threadsafe(snapshot(), loop).result(SCRAPE_TIMEOUT)

        registry = CollectorRegistry(auto_describe=False)
        registry.register(ManagerCollector(from_loop))
        try:
            self._server, self._thread = start_http_server(port, host, registry=registry)
        except OSError as e:
            raise MetricsError(f"--metrics {host}:{port}: {e.strerror or e}") from None
        self.address = self._server.server_address[:2]
        log.info("metrics on http://%s:%d/metrics", host, self.address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
