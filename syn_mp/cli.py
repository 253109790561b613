"""`syn-mp`: run a node's manager and look at what it holds.

Exit status: 0 success, 1 a looked-up key is absent, 2 bad usage or no manager, 3 (`status`) the
manager answers but is not doing its job (a failing loop, a scope it could not open or refuses).
"""
from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import sys
import time
from typing import Any, NoReturn, Sequence

from . import _client, _config
from .errors import EncodingError, InvalidScopeError, ManagerUnavailableError, SynError

EXIT_OK, EXIT_ABSENT, EXIT_USAGE, EXIT_UNHEALTHY = 0, 1, 2, 3


class UsageError(Exception):
    """Bad usage or an unreachable manager: one line on stderr, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse exits 2 too; keep it to one line
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="syn-mp", description="Syn's process registry for OS processes.")
    _global_options(p, default=None)
    # the global options are accepted after the command too (`syn-mp daemon --runtime-dir DIR`, as
    # unit files write it): each command repeats them with no default, so that one given before the
    # command is not overwritten by the command's parser
    common = _Parser(add_help=False)
    _global_options(common, default=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def command(name: str, **kw: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kw)

    d = command("daemon", help="run this node's manager in the foreground")
    d.add_argument("--node", help="node name (default: $SYN_MP_NODE, else the host name)")
    d.add_argument("--strict", action="store_true", default=None,
                   help="every write must name the calling process (also SYN_MP_STRICT=1)")
    d.add_argument("--watcher", choices=["auto", "pidfd", "psutil"], default=None,
                   help="how to watch processes for death (default: $SYN_MP_WATCHER or auto)")
    d.add_argument("--cluster", metavar="GROUP:PORT", help="sync with the nodes on this UDP multicast group")
    d.add_argument("--interface", metavar="ADDR", help="this node's address for the cluster (default 0.0.0.0)")
    d.add_argument("--peers", metavar="HOST:PORT,...", help="unicast peers, where multicast is blocked; every "
                   "node may get the same list: a node skips its own address")
    d.add_argument("--secret-file", metavar="PATH", help="the cluster secret (required with --cluster/--peers)")
    d.add_argument("--etcd", metavar="URL,...", help="run the cluster on etcd (its members' client URLs) "
                   "instead of --cluster/--peers: pip install 'syn_mp[etcd]'")
    d.add_argument("--etcd-prefix", metavar="PREFIX", default="/syn_mp/",
                   help="the key prefix of this cluster in etcd (default /syn_mp/)")
    d.add_argument("--etcd-ca", metavar="PATH", help="CA certificate that etcd's TLS certificate is checked against")
    d.add_argument("--etcd-cert", metavar="PATH", help="client certificate for etcd (with --etcd-key)")
    d.add_argument("--etcd-key", metavar="PATH", help="client certificate's key for etcd")
    d.add_argument("--etcd-user", metavar="NAME", help="etcd user (with --etcd-password-file)")
    d.add_argument("--etcd-password-file", metavar="PATH", help="file holding the etcd user's password")
    d.add_argument("--conflict-signal", metavar="NAME", default="SIGTERM",
                   help="signal a node sends its own process that lost a name conflict (default SIGTERM)")
    d.add_argument("--heartbeat-ms", type=int, default=100, metavar="N")
    d.add_argument("--node-timeout-ms", type=int, default=1000, metavar="N")
    d.add_argument("--event-handler", metavar="MOD:ATTR",
                   help="an object with Syn's callbacks (on_process_registered, ...), called in the manager")
    d.add_argument("--capacity", type=int, default=None,
                   help="entries per scope table for scopes this manager creates (also SYN_MP_CAPACITY)")
    d.add_argument("--metrics", metavar="HOST:PORT",
                   help="serve Prometheus metrics on http://HOST:PORT/metrics (needs syn_mp[metrics])")
    d.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    d.add_argument("--detach", action="store_true", help=argparse.SUPPRESS)

    command("stop", help="stop the manager (registrations stay in shared memory)")
    command("status", help="the manager's state; exit 3 when it is not doing its job (a health check)")
    command("scopes", help="the scopes of this node")
    lk = command("lookup", help="who holds NAME")
    lk.add_argument("scope")
    lk.add_argument("name")
    rg = command("registry", help="the names of a scope")
    rg.add_argument("scope")
    rg.add_argument("--node", help="only this node's names")
    gr = command("groups", help="the groups of a scope")
    gr.add_argument("scope")
    mb = command("members", help="the members of a group")
    mb.add_argument("scope")
    mb.add_argument("group")
    nd = command("nodes", help="this node and the nodes that share the scope")
    nd.add_argument("scope")
    wt = command("watch", help="stream the scope's events as they happen (Ctrl-C to stop)")
    wt.add_argument("scope")
    wt.add_argument("--timeout", type=float, default=None, help="stop after this many seconds without an event")
    return p


def _global_options(p: argparse.ArgumentParser, default: Any) -> None:
    p.add_argument("--runtime-dir", default=default, help="the node's runtime dir (default: $SYN_MP_RUNTIME_DIR, "
                   "$XDG_RUNTIME_DIR/syn_mp, /tmp/syn_mp-<uid>)")
    flag = False if default is None else default
    p.add_argument("--json", action="store_true", default=flag, help="print one JSON document")
    p.add_argument("--json-key", action="store_true", default=flag,
                   help="parse NAME and GROUP as JSON (arrays become tuples)")


# ------------------------------------------------------------------ output

def _jsonable(v: Any) -> Any:
    if isinstance(v, bytes):
        return {"$bytes": base64.b64encode(v).decode()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {(k if isinstance(k, str) else json.dumps(_jsonable(k))): _jsonable(x) for k, x in v.items()}
    return v


def _show(v: Any) -> str:
    return v if isinstance(v, str) else repr(v)


def _table(rows: list[list[str]], header: list[str]) -> str:
    cols = [header] + rows
    widths = [max(len(r[i]) for r in cols) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cols]
    return "\n".join(lines)


def _emit(args: argparse.Namespace, doc: Any, text: str) -> None:
    print(json.dumps(_jsonable(doc)) if args.json else text)


def _key(args: argparse.Namespace, raw: str) -> Any:
    if not args.json_key:
        return raw
    try:
        v = json.loads(raw)
    except ValueError as e:
        raise UsageError(f"--json-key: {raw[:60]!r} is not JSON ({e})") from None
    except RecursionError:
        raise UsageError("--json-key: the name is nested too deeply") from None

    def tup(x: Any) -> Any:
        if isinstance(x, list):
            return tuple(tup(i) for i in x)
        if isinstance(x, dict):
            raise UsageError("--json-key: a name can't be a JSON object")
        return x
    try:
        return tup(v)
    except RecursionError:
        raise UsageError("--json-key: the name is nested too deeply") from None


# ---------------------------------------------------------------- commands

def _cmd_daemon(args: argparse.Namespace) -> int:
    from . import _manager
    from ._etcd import EtcdRefused
    from ._metrics import MetricsError
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")
    strict = args.strict if args.strict is not None else os.environ.get("SYN_MP_STRICT", "") in ("1", "true", "yes")
    try:
        capacity = args.capacity or int(os.environ.get("SYN_MP_CAPACITY", _config.DEFAULT_CAPACITY))
        journal = int(os.environ.get("SYN_MP_JOURNAL_BYTES", _config.DEFAULT_JOURNAL))
    except ValueError as e:
        raise UsageError(f"SYN_MP_CAPACITY / SYN_MP_JOURNAL_BYTES: {e}") from None
    if capacity <= 0 or journal <= 0:
        raise UsageError("the capacity and the journal size must be positive")
    handler = None
    if args.event_handler:
        from ._handlers import HandlerError, load_handler
        try:
            handler = load_handler(args.event_handler)
        except HandlerError as e:
            raise UsageError(str(e)) from None
    cluster = _cluster_options(args)
    opts = _manager.Options(
        rdir=_config.runtime_dir(args.runtime_dir), node=_config.default_node_name(args.node), strict=strict,
        watcher=args.watcher or os.environ.get("SYN_MP_WATCHER", "auto"), capacity=capacity, journal=journal,
        event_handler=handler, cluster=cluster,
        metrics=_hostport(args.metrics, "--metrics") if args.metrics else None)
    if opts.metrics is not None:
        try:
            import prometheus_client  # noqa: F401  (said before the daemon starts, not in its log)
        except ImportError:
            raise UsageError("--metrics needs prometheus_client: pip install 'syn_mp[metrics]'") from None
    if args.detach and os.fork() > 0:
        return EXIT_OK  # the client that spawned us waits for the socket, not for this process
    if args.detach:
        os.setsid()
    try:
        _manager.serve(opts)
    except (_manager.AlreadyRunning, PermissionError, MetricsError, EtcdRefused) as e:
        print(f"syn-mp: {e}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def _hostport(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{what}: expected HOST:PORT, got {text!r}")
    return host, int(port)


def _cluster_options(args: argparse.Namespace) -> Any:
    """ClusterOptions from the daemon's flags, or None for a node alone."""
    import signal as _signal
    import socket as _socket

    from ._cluster import ClusterOptions
    if args.etcd:
        return _etcd_options(args)
    for flag in ("etcd_ca", "etcd_cert", "etcd_key", "etcd_user", "etcd_password_file"):
        if getattr(args, flag):
            raise UsageError(f"--{flag.replace('_', '-')} needs --etcd")
    if not args.cluster and not args.peers:
        for flag in ("interface", "secret_file"):
            if getattr(args, flag):
                raise UsageError(f"--{flag.replace('_', '-')} needs --cluster or --peers")
        return None
    if args.cluster and args.peers:
        raise UsageError("--cluster and --peers exclude each other")
    if not args.secret_file:
        raise UsageError("a cluster refuses to start without a secret: give --secret-file")
    try:
        with open(args.secret_file, "rb") as f:
            secret = f.read().strip()
    except OSError as e:
        raise UsageError(f"--secret-file: {e}") from None
    if len(secret) < 16:
        raise UsageError("--secret-file: the secret must be at least 16 bytes")
    try:
        sig = _signal.Signals[args.conflict_signal if args.conflict_signal.startswith("SIG")
                              else "SIG" + args.conflict_signal]
    except KeyError:
        raise UsageError(f"--conflict-signal: unknown signal {args.conflict_signal!r}") from None
    if args.heartbeat_ms <= 0 or args.node_timeout_ms <= args.heartbeat_ms:
        raise UsageError("--node-timeout-ms must be greater than --heartbeat-ms > 0")
    interface = args.interface or "0.0.0.0"
    try:
        _socket.inet_aton(interface)
    except OSError:
        raise UsageError(f"--interface: {interface!r} is not an IPv4 address") from None
    drop = float(os.environ.get("SYN_MP_TEST_DROP_RATE", "0") or 0)  # test-only loss hook
    o = ClusterOptions(secret=secret, interface=interface, heartbeat_ms=args.heartbeat_ms,
                       node_timeout_ms=args.node_timeout_ms, conflict_signal=sig, drop_rate=drop)
    if args.cluster:
        group, o.port = _hostport(args.cluster, "--cluster")
        try:
            if not 224 <= int(_socket.inet_aton(group)[0]) <= 239:
                raise OSError
        except OSError:
            raise UsageError(f"--cluster: {group!r} is not an IPv4 multicast group") from None
        o.group = group
    else:
        peers = [_hostport(p.strip(), "--peers") for p in args.peers.split(",") if p.strip()]
        own = [p for p in peers if p[0] == interface]
        o.port = own[0][1] if own else peers[0][1]
        o.peers = [p for p in peers if p[0] != interface]
    return o


def _signal_of(name: str) -> int:
    import signal as _signal
    try:
        return _signal.Signals[name if name.startswith("SIG") else "SIG" + name]
    except KeyError:
        raise UsageError(f"--conflict-signal: unknown signal {name!r}") from None


def _etcd_options(args: argparse.Namespace) -> Any:
    """EtcdOptions from the daemon's --etcd* flags (the cluster on etcd: see docs/operations.md)."""
    import socket as _socket
    if args.cluster or args.peers:
        raise UsageError("--etcd excludes --cluster and --peers: the cluster runs on etcd or on UDP, not both")
    if args.secret_file:
        raise UsageError("--secret-file is for --cluster/--peers: an etcd cluster uses etcd's TLS and auth")
    # gRPC's C core writes lines of its own on stderr (a failed TLS handshake: three); the daemon says
    # what failed itself, in one line. GRPC_VERBOSITY=ERROR in the environment shows them again.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    try:
        import aetcd  # noqa: F401
    except ImportError:
        raise UsageError("--etcd needs the etcd client: pip install 'syn_mp[etcd]'") from None
    from ._etcd import EtcdOptions
    endpoints = [u.strip() for u in args.etcd.split(",") if u.strip()]
    for u in endpoints:
        rest = u.split("://", 1)[1] if "://" in u else u
        if ("://" in u and not u.startswith(("http://", "https://"))) or not rest.rstrip("/").rpartition(":")[2].isdigit():
            raise UsageError(f"--etcd: expected http(s)://HOST:PORT, got {u!r}")
    if not endpoints:
        raise UsageError("--etcd: no URL given")
    prefix = args.etcd_prefix if args.etcd_prefix.endswith("/") else args.etcd_prefix + "/"
    if bool(args.etcd_cert) != bool(args.etcd_key):
        raise UsageError("--etcd-cert and --etcd-key go together")
    if bool(args.etcd_user) != bool(args.etcd_password_file):
        raise UsageError("--etcd-user and --etcd-password-file go together")
    for flag in ("etcd_ca", "etcd_cert", "etcd_key"):
        path = getattr(args, flag)
        if path and not os.access(path, os.R_OK):
            raise UsageError(f"--{flag.replace('_', '-')}: cannot read {path}")
    password = None
    if args.etcd_password_file:
        try:
            with open(args.etcd_password_file, encoding="utf-8") as f:
                password = f.read().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"--etcd-password-file: {e}") from None
    if args.node_timeout_ms <= 0:
        raise UsageError("--node-timeout-ms must be positive (the lease TTL, rounded up to seconds)")
    if args.interface:
        try:
            _socket.inet_aton(args.interface)
        except OSError:
            raise UsageError(f"--interface: {args.interface!r} is not an IPv4 address") from None
    # absolute: the files are read again at every connection to etcd (renewed certificates are taken)
    ca, cert, key = (os.path.abspath(p) if p else None for p in (args.etcd_ca, args.etcd_cert, args.etcd_key))
    return EtcdOptions(endpoints=endpoints, prefix=prefix, ca=ca, cert=cert, key=key,
                       user=args.etcd_user, password=password, interface=args.interface,
                       node_timeout_ms=args.node_timeout_ms, conflict_signal=_signal_of(args.conflict_signal))


def _cmd_stop(args: argparse.Namespace, node: _client.Node) -> int:
    pid = node.request("stop")["pid"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.01)
    _emit(args, {"stopped": pid}, f"manager {pid} stopped")
    return EXIT_OK


def _alive(pid: int) -> bool:
    from . import _procinfo
    return _procinfo.start_time(pid) is not None  # None for no process, and for a zombie


LOCK_SLOW_S = 1.0  # a writer holding a scope's lock longer than this stalls every other writer
_STATES = {"R": "running", "S": "sleeping", "D": "in I/O", "T": "stopped", "t": "stopped by a debugger",
           "Z": "dead (a zombie)"}


def _lock_holders(node: _client.Node) -> list[dict[str, Any]]:
    """Writers holding a scope's lock longer than LOCK_SLOW_S, read from the segments themselves:
    no manager is needed (one waiting behind the holder could not answer)."""
    from ._table import Table, TableError
    out = []
    for scope in node.state().get("scopes", []):
        try:
            t = Table.attach(_config.segment_name(node.rdir, scope), _config.segment_owner(node.rdir))
        except (TableError, OSError):
            continue
        if t is None:
            continue
        st = t.stats()
        held = (time.monotonic_ns() - st["lock_since"]) / 1e9
        if st["lock_holder"] and held > LOCK_SLOW_S:
            out.append({"scope": scope, "pid": st["lock_holder"], "state": _proc_state(st["lock_holder"]),
                        "held_s": round(held, 1)})
    return out


def _proc_state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            code = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone (the next writer repairs its work)"
    return _STATES.get(code, code)


def _holder_lines(holders: list[dict[str, Any]]) -> list[str]:
    return [f"writers of scope {h['scope']!r} wait: its lock is held by pid {h['pid']} ({h['state']}) "
            f"for {h['held_s']:.0f}s" for h in holders]


def _cmd_status(args: argparse.Namespace, node: _client.Node) -> int:
    try:
        st = node.request("status")
    except ManagerUnavailableError:
        # a manager waiting behind a stopped writer can't answer: say who holds it up
        waits = _holder_lines(_lock_holders(node))
        if not waits:
            raise
        print(f"syn-mp: the manager does not answer: {'; '.join(waits)}", file=sys.stderr)
        return EXIT_UNHEALTHY
    st.pop("ok", None)
    holders = _lock_holders(node)
    st["lock_holders"] = holders
    rows = [[s, str(v["reg_count"]), str(v["pg_count"]), f"{v['count']}/{v['capacity']}",
             f"{v['heap_used'] // 1024} KiB"] for s, v in st["scopes"].items()]
    health = st.get("health") or {"ok": True, "problems": [], "incidents": {}}
    if holders:  # readers never wait (csrc/view.h); writers do, and must be told why
        health = dict(health, ok=False, problems=[*health["problems"], *_holder_lines(holders)])
        st["health"] = health
    incidents = health.get("incidents", {})
    text = (f"node      {st['node']}\nmanager   pid {st['pid']}, up {st['uptime']:.0f}s\n"
            f"runtime   {st['runtime_dir']}\nwatcher   {st['watcher']} ({_watched(st)})\n"
            f"strict    {'yes' if st['strict'] else 'no'}\n"
            f"purged    {st['purged']['process_exit']} on exit, {st['purged']['manager_restart']} on restart\n"
            f"health    {'ok' if health['ok'] else 'FAILING: ' + '; '.join(health['problems'])}\n"
            + "".join(f"          {v['count']} x {k}: {v['last']}\n" for k, v in incidents.items())
            + "\n" + _table(rows, ["SCOPE", "NAMES", "MEMBERSHIPS", "ENTRIES", "HEAP"]))
    refused = st.get("refused") or {}
    if refused:  # the manager runs but can't serve these
        text += "\nrefused scopes:\n" + "".join(f"  {s}: {why}\n" for s, why in refused.items())
    _emit(args, st, text)
    if not health["ok"]:
        print(f"syn-mp: the manager is not doing its job: {'; '.join(health['problems'])}", file=sys.stderr)
        return EXIT_UNHEALTHY
    return EXIT_OK


def _watched(st: dict[str, Any]) -> str:
    """"12 processes", with how they are watched when not all by the usual means."""
    w = st.get("watch") or {}
    parts = [f"{st['watched']} processes"]
    if w.get("pidfd") is not None and w.get("polled"):
        parts.append(f"{w['pidfd']} by pidfd, {w['polled']} polled")
    if w.get("unknown"):
        parts.append(f"{w['unknown']} can't be read, kept")
    return ", ".join(parts)


def _cmd_scopes(args: argparse.Namespace, node: _client.Node) -> int:
    from . import node_scopes
    scopes = node_scopes()
    _emit(args, scopes, "\n".join(scopes))
    return EXIT_OK


def _cmd_lookup(args: argparse.Namespace, node: _client.Node) -> int:
    from . import lookup
    found = lookup(args.scope, _key(args, args.name))
    if found is None:
        print(f"syn-mp: {args.name!r} is not registered in scope {args.scope!r}", file=sys.stderr)
        return EXIT_ABSENT
    pid, meta = found
    _emit(args, {"node": pid.node, "pid": pid.pid, "meta": meta},
          _table([[pid.node, str(pid.pid), _show(meta)]], ["NODE", "PID", "META"]))
    return EXIT_OK


def _cmd_registry(args: argparse.Namespace, node: _client.Node) -> int:
    from . import registry_entries
    # by name, as people read a registry (a replacement's row where its name sorts, not last); names
    # of different types (str, tuple, ...) don't compare: ordered by type name first
    entries = sorted(registry_entries(args.scope, args.node), key=lambda e: _name_order(e[0]))
    doc = [{"name": n, "node": p.node, "pid": p.pid, "meta": m} for n, p, m in entries]
    rows = [[_show(n), p.node, str(p.pid), _show(m)] for n, p, m in entries]
    _emit(args, doc, _table(rows, ["NAME", "NODE", "PID", "META"]))
    return EXIT_OK


def _name_order(name: Any) -> tuple[Any, ...]:
    if isinstance(name, tuple):
        return ("tuple", tuple(_name_order(x) for x in name))
    if isinstance(name, (int, float)) and not isinstance(name, bool):
        return ("number", name)
    if isinstance(name, (str, bytes)):
        return (type(name).__name__, name)
    return (type(name).__name__, repr(name))


def _cmd_groups(args: argparse.Namespace, node: _client.Node) -> int:
    from . import group_names, local_member_count, member_count
    groups = sorted(group_names(args.scope), key=repr)
    doc = [{"group": g, "members": member_count(args.scope, g), "local": local_member_count(args.scope, g)}
           for g in groups]
    rows = [[_show(d["group"]), str(d["members"]), str(d["local"])] for d in doc]
    _emit(args, doc, _table(rows, ["GROUP", "MEMBERS", "LOCAL"]))
    return EXIT_OK


def _cmd_members(args: argparse.Namespace, node: _client.Node) -> int:
    from . import members
    ms = members(args.scope, _key(args, args.group))
    if not ms:
        print(f"syn-mp: group {args.group!r} has no members in scope {args.scope!r}", file=sys.stderr)
        return EXIT_ABSENT
    doc = [{"node": p.node, "pid": p.pid, "meta": m} for p, m in ms]
    _emit(args, doc, _table([[p.node, str(p.pid), _show(m)] for p, m in ms], ["NODE", "PID", "META"]))
    return EXIT_OK


def _cmd_nodes(args: argparse.Namespace, node: _client.Node) -> int:
    from . import node_name, registry_count, subcluster_nodes
    nodes = [node_name()] + subcluster_nodes(args.scope)
    doc = [{"node": n, "self": i == 0, "names": registry_count(args.scope, n)} for i, n in enumerate(nodes)]
    rows = [[f"{d['node']} (this node)" if d["self"] else f"{d['node']}", f"{d['names']}"] for d in doc]
    _emit(args, doc, _table(rows, ["NODE", "NAMES"]))
    return EXIT_OK


def _cmd_watch(args: argparse.Namespace, node: _client.Node) -> int:
    from .events import events, events_since_creation
    _config.check_scope(args.scope)
    try:
        stream = events(args.scope, timeout=args.timeout)
    except InvalidScopeError as err:
        if "not added" not in str(err):
            raise  # a scope that can't be used (another user's segment): no use waiting
        # not there yet: wait for it (to see the first workers join), then follow it from its start
        print(f"syn-mp: scope {args.scope!r} does not exist on this node yet: waiting for it (Ctrl-C to stop)",
              file=sys.stderr, flush=True)
        stream = _when_created(args.scope, args.timeout, events_since_creation)
        if stream is None:
            return EXIT_OK  # --timeout passed: no event, as for a quiet scope
    print(f"syn-mp: watching scope {args.scope!r} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    for e in stream:
        if args.json:
            doc = {"kind": e.kind, "scope": e.scope, "key": e.key, "node": e.pid.node, "pid": e.pid.pid,
                   "meta": e.meta, "reason": e.reason}
            print(json.dumps(_jsonable(doc)), flush=True)
        else:
            print(f"{e.kind:<16}  {_show(e.key)}  {e.pid.node}  {e.pid.pid}  meta={_show(e.meta)}  "
                  f"reason={_show(e.reason)}", flush=True)
    return EXIT_OK


def _when_created(scope: str, timeout: float | None, follow: Any) -> Any:
    """The scope's events from its creation on, once it exists; None if `timeout` s pass first."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            return follow(scope, timeout)
        except InvalidScopeError as err:
            if "not added" not in str(err):  # see _client.Node.table
                raise
        if deadline is not None and time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


_COMMANDS = {"stop": _cmd_stop, "status": _cmd_status, "scopes": _cmd_scopes, "lookup": _cmd_lookup,
             "registry": _cmd_registry, "groups": _cmd_groups, "members": _cmd_members, "nodes": _cmd_nodes, "watch": _cmd_watch}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        if args.command is None:
            raise UsageError("a COMMAND is required (try: syn-mp --help)")
        if args.command == "daemon":
            return _cmd_daemon(args)
        node = _client.use_runtime_dir(_config.runtime_dir(args.runtime_dir))
        node.check_dir()  # another user's node (or a squatted dir): one line, exit 2
        return _COMMANDS[args.command](args, node)
    except UsageError as e:
        print(f"syn-mp: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (ManagerUnavailableError, InvalidScopeError, EncodingError, ValueError) as e:
        print(f"syn-mp: {e}", file=sys.stderr)
        return EXIT_USAGE
    except SynError as e:
        print(f"syn-mp: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
