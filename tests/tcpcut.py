"""A TCP forwarder on loopback that a test can cut: one node reaches etcd through it, so that node
alone loses etcd while the others keep it (real sockets, real connections torn down).

    cut = CutLink(["127.0.0.1:2379", ...])   # one listening port per upstream
    cut.endpoints                             # "http://127.0.0.1:P1,..." for that node's --etcd
    cut.cut("blackhole")                      # connections reset; new ones accepted, nothing carried
    cut.cut("refuse")                         # connections reset; new ones closed at once
    cut.heal()
    cut.close()
"""
from __future__ import annotations

import socket
import threading
from urllib.parse import urlsplit


class CutLink:
    def __init__(self, upstreams: list[str]) -> None:
        self.mode = "pass"
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._closed = False
        self._listeners = []
        ports = []
        for up in upstreams:
            u = urlsplit(up if "://" in up else "http://" + up)
            ls = socket.create_server(("127.0.0.1", 0))
            ls.settimeout(0.2)
            self._listeners.append(ls)
            ports.append(ls.getsockname()[1])
            threading.Thread(target=self._accept, args=(ls, (u.hostname, u.port)), daemon=True).start()
        self.endpoints = ",".join(f"http://127.0.0.1:{p}" for p in ports)

    def _accept(self, ls: socket.socket, up: tuple) -> None:
        while not self._closed:
            try:
                c, _ = ls.accept()
            except (socket.timeout, OSError):
                continue
            mode = self.mode
            if mode == "refuse":
                _reset(c)
                continue
            if mode == "blackhole":
                with self._lock:
                    self._conns.append(c)  # held open, never read: what a partition looks like
                continue
            try:
                u = socket.create_connection(up, timeout=2)
            except OSError:
                _reset(c)
                continue
            with self._lock:
                self._conns += [c, u]
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                data = a.recv(65536)
                if not data or self.mode != "pass":
                    break
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            _reset(s)

    def cut(self, mode: str = "blackhole") -> None:
        assert mode in ("blackhole", "refuse")
        self.mode = mode
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            _reset(s)

    def heal(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:  # the connections held in the black hole
            _reset(s)
        self.mode = "pass"

    def close(self) -> None:
        self._closed = True
        self.cut("refuse")
        for ls in self._listeners:
            ls.close()


def _reset(s: socket.socket) -> None:
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass
