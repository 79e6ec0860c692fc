"""whats-my-ip: one server loop in the lab process answering on every pod's ports.

Each pod port is a listening socket created inside the pod's network namespace; one thread
multiplexes them all with a selector, because a process (or even a thread) per pod port
would cost seconds of start-up in the guest. TCP and SCTP (one-to-one style, a stream
socket): any HTTP request gets ``HOSTNAME:<pod name> IP:<pod ip>`` back, then the
connection closes; UDP: any datagram gets the same line back.
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import socket
import threading
from collections.abc import Callable
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field

from kube_router_lab.netns import socket_in

_HTTP_METHODS = (b"GET ", b"HEAD ", b"POST ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ")
_MAX_REQUEST = 16384
PROTOCOLS = ("TCP", "UDP", "SCTP")
#: What socket() says on a kernel built without SCTP.
_NO_PROTOCOL = (errno.EPROTONOSUPPORT, errno.ESOCKTNOSUPPORT, errno.EAFNOSUPPORT)


def proto_socket(netns: str | None, proto: str) -> socket.socket:
    """A fresh socket for ``proto`` (TCP, UDP or SCTP, one-to-one style) inside ``netns``."""
    proto = proto.upper()
    if proto == "UDP":
        return socket_in(netns, socket.AF_INET, socket.SOCK_DGRAM)
    if proto == "SCTP":
        return socket_in(netns, socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP)
    if proto == "TCP":
        return socket_in(netns, socket.AF_INET, socket.SOCK_STREAM)
    raise ValueError(f"unknown protocol {proto!r} (known: {', '.join(PROTOCOLS)})")


def answer_line(pod_name: str, pod_ip: str) -> str:
    return f"HOSTNAME:{pod_name} IP:{pod_ip}"


@dataclass
class _Pod:
    line: bytes
    listeners: list[socket.socket] = field(default_factory=list)
    conns: set[socket.socket] = field(default_factory=set)


@dataclass
class _Conn:
    pod: _Pod
    buf: bytes = b""


class WhatsMyIp:
    def __init__(self, *, log: Callable[[str], None] = print) -> None:
        self.log = log
        self._sel = selectors.DefaultSelector()
        self._pods: dict[str, _Pod] = {}
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._pending: list[Callable[[], None]] = []
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="whats-my-ip", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._stopping:  # stopped already (a failed bring-up, then the teardown)
            return
        self._stopping = True
        self._wake()
        if self._thread.ident is not None:  # a lab that failed before start() stops it too
            self._thread.join(timeout=5)
        for key in list(self._pods):
            self._close_pod(key)
        self._sel.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def add_pod(self, key: str, netns: str | None, pod_name: str, pod_ip: str,
                ports: Iterable[tuple[int, str]]) -> None:
        """Listen on ``ports`` ((number, "TCP"|"UDP"|"SCTP")) inside ``netns`` for pod ``key``.

        The sockets are made and bound here, in the caller's thread, so a port that cannot
        be bound is reported to the caller at once; the loop only starts watching them.
        A kernel without SCTP serves the pod's other ports and says which it skipped."""
        pod = _Pod(answer_line(pod_name, pod_ip).encode())
        try:
            for port, proto in ports:
                udp = proto.upper() == "UDP"
                try:
                    s = proto_socket(netns, proto)
                except OSError as exc:
                    if proto.upper() != "SCTP" or exc.errno not in _NO_PROTOCOL:
                        raise
                    self.log(f"event=whatsmyip_port_skipped pod={key} port={port}/SCTP "
                             f"error={exc.strerror or exc}")
                    continue
                pod.listeners.append(s)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("0.0.0.0", port))
                if not udp:
                    s.listen(128)
                s.setblocking(False)
        except OSError:
            for s in pod.listeners:
                s.close()
            raise
        self.remove_pod(key)
        self._call(lambda: self._register(key, pod))

    def remove_pod(self, key: str, *, drain: bool = False) -> None:
        """Stop answering for ``key``: its listeners close, and its open connections too,
        unless ``drain`` leaves them to answer the request they carry (a server that exits
        gracefully finishes what it accepted)."""
        self._call(lambda: self._close_pod(key, drain))

    def serving(self, key: str) -> bool:
        return key in self._pods

    # -- the loop ------------------------------------------------------------------------

    def _call(self, fn: Callable[[], None]) -> None:
        if not self._thread.is_alive():
            fn()
            return
        done = threading.Event()

        def run() -> None:
            try:
                fn()
            finally:
                done.set()

        with self._lock:
            self._pending.append(run)
        self._wake()
        done.wait(5)

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # already woken
            os.write(self._wake_w, b"x")

    def _register(self, key: str, pod: _Pod) -> None:
        self._pods[key] = pod
        for s in pod.listeners:
            self._sel.register(s, selectors.EVENT_READ, ("listen", pod))

    def _close_pod(self, key: str, drain: bool = False) -> None:
        pod = self._pods.pop(key, None)
        if pod is None:
            return
        for s in pod.listeners if drain else pod.listeners + list(pod.conns):
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(s)
            s.close()

    def _loop(self) -> None:
        while not self._stopping:
            for key, _ in self._sel.select(timeout=1.0):
                if key.data is None:
                    try:
                        while os.read(self._wake_r, 512):
                            pass
                    except BlockingIOError:
                        pass
                    with self._lock:
                        todo, self._pending = self._pending, []
                    for fn in todo:
                        fn()
                    continue
                try:
                    self._ready(key.fileobj, key.data)  # type: ignore[arg-type]
                except OSError as exc:
                    self.log(f"event=whatsmyip_error error={exc}")

    def _ready(self, s: socket.socket, data: object) -> None:
        if isinstance(data, _Conn):
            self._read_conn(s, data)
            return
        assert isinstance(data, tuple)  # ("listen", pod), as _register made it
        pod: _Pod = data[1]
        if s.type == socket.SOCK_DGRAM:
            try:
                _, addr = s.recvfrom(65535)
            except BlockingIOError:
                return
            s.sendto(pod.line + b"\n", addr)
            return
        try:
            conn, _ = s.accept()
        except BlockingIOError:
            return
        conn.setblocking(False)
        pod.conns.add(conn)
        self._sel.register(conn, selectors.EVENT_READ, _Conn(pod))

    def _read_conn(self, conn: socket.socket, c: _Conn) -> None:
        try:
            chunk = conn.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        c.buf += chunk
        http = c.buf[:8].upper().startswith(_HTTP_METHODS)
        complete = b"\r\n\r\n" in c.buf or b"\n\n" in c.buf
        if chunk and http and not complete and len(c.buf) < _MAX_REQUEST:
            return  # wait for the rest of the request's head
        try:
            if c.buf and http:
                body = c.pod.line + b"\n"
                conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                          b"Content-Length: " + str(len(body)).encode()
                          + b"\r\nConnection: close\r\n\r\n" + body)
            elif c.buf:
                conn.send(c.pod.line + b"\n")  # a bare TCP client (nc): just the line
        except OSError:
            pass
        self._sel.unregister(conn)
        c.pod.conns.discard(conn)
        conn.close()
