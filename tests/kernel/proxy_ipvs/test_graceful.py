"""Removed and terminating endpoints in the kernel: graceful drain at weight 0, the
UDP conntrack flush, and the choice of endpoints while pods terminate."""

from __future__ import annotations

import asyncio
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from kube_router_proxy_ipvs.controller import ProxyController
from kube_router_proxy_ipvs.service_netfilter import ServiceNetfilter

pytestmark = pytest.mark.kernel

VIP = "10.96.0.90"
PODS = {"px-g1": "10.251.1.2", "px-g2": "10.251.2.2"}

# Each pod says who it is: TCP sends its IP on accept then echoes; UDP answers with its IP.
POD_SERVER = """
import socket, sys, threading
me = sys.argv[1]
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", 8080))
srv.listen(64)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("0.0.0.0", 5353))
def udp_loop():
    while True:
        _, peer = udp.recvfrom(2048)
        udp.sendto(me.encode(), peer)
def echo(c):
    c.sendall((me + "\\n").encode())
    while True:
        data = c.recv(4096)
        if not data:
            break
        c.sendall(data)
    c.close()
threading.Thread(target=udp_loop, daemon=True).start()
print("ready", flush=True)
while True:
    conn, _ = srv.accept()
    threading.Thread(target=echo, args=(conn,), daemon=True).start()
"""


@pytest.fixture
def pods(clean_ipvs: None, sh: Callable[..., str], k8s: SimpleNamespace) -> Iterator[list[str]]:
    """The node IP on a dummy link, and two pod namespaces behind veths running POD_SERVER."""
    sh(["ip", "link", "add", "px-node0", "type", "dummy"])
    sh(["ip", "addr", "add", f"{k8s.NODE_IP}/24", "dev", "px-node0"])
    sh(["ip", "link", "set", "px-node0", "up"])
    servers: list[subprocess.Popen[str]] = []
    try:
        for i, (ns, ip) in enumerate(PODS.items(), start=1):
            host_if, gw = f"px-gv{i}", ip.rsplit(".", 1)[0] + ".1"
            sh(["ip", "netns", "add", ns])
            sh(["ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0",
                "netns", ns])
            sh(["ip", "addr", "add", f"{gw}/24", "dev", host_if])
            sh(["ip", "link", "set", host_if, "up"])
            for argv in (["addr", "add", f"{ip}/24", "dev", "eth0"],
                         ["link", "set", "eth0", "up"], ["link", "set", "lo", "up"],
                         ["route", "add", "default", "via", gw]):
                sh(["ip", "-n", ns, *argv])
            proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c",
                                     POD_SERVER, ip], stdout=subprocess.PIPE, text=True)
            servers.append(proc)
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield list(PODS.values())
    finally:
        for proc in servers:
            proc.kill()
            proc.wait()
        for ns in PODS:
            subprocess.run(["ip", "netns", "del", ns], check=False)
        subprocess.run(["ip", "link", "del", "px-node0"], check=False)
        subprocess.run(["conntrack", "-F"], capture_output=True, check=False)


async def controller(k8s: SimpleNamespace, ports: list[tuple[str, str, int]],
                     target: list[tuple[str, str, int]], ips: list[str],
                     *args: str) -> ProxyController:
    agent = k8s.make_agent(*args)
    proxy = agent.startup.of("proxy")
    ctl = ProxyController(agent, proxy, ServiceNetfilter(proxy))
    k8s.put(agent, k8s.node())
    k8s.put(agent, k8s.service("drain", VIP, ports))
    k8s.put(agent, k8s.endpointslice("drain", ips, target))
    await ctl.start()
    await ctl.sync(None)
    return ctl


def dest_lines(rules: list[str], proto: str = "-t") -> dict[str, str]:
    """Real server ip -> its weight for the test's virtual server."""
    out = {}
    for line in rules:
        words = line.split()
        if words[:3] == ["-a", proto, f"{VIP}:80" if proto == "-t" else f"{VIP}:53"]:
            out[words[4].split(":")[0]] = words[words.index("-w") + 1]
    return out


class Conn:
    """A TCP connection through the VIP that knows which pod answered."""

    def __init__(self) -> None:
        self.sock = socket.create_connection((VIP, 80), timeout=5)
        self.pod = self._line()

    def _line(self) -> str:
        got = b""
        while not got.endswith(b"\n"):
            chunk = self.sock.recv(4096)
            assert chunk, "connection closed"
            got += chunk
        return got.decode().strip()

    def roundtrip(self, msg: str) -> None:
        self.sock.sendall(msg.encode() + b"\n")
        assert self._line() == msg

    def close(self) -> None:
        self.sock.close()


TCP = [("http", "TCP", 80)]
TCP_TARGET = [("http", "TCP", 8080)]


def test_graceful_drain_keeps_held_connection(pods: list[str], k8s: SimpleNamespace,
                                              ipvs_rules: Callable[[], list[str]]) -> None:
    async def main() -> None:
        ctl = await controller(k8s, TCP, TCP_TARGET, pods, "--ipvs-graceful-termination",
                               "--ipvs-graceful-period", "4s")
        agent = ctl.agent
        assert dest_lines(ipvs_rules()) == {pods[0]: "1", pods[1]: "1"}
        held = Conn()
        gone = held.pod
        stay = pods[1] if gone == pods[0] else pods[0]
        k8s.put(agent, k8s.endpointslice("drain", [stay], TCP_TARGET))
        await ctl.sync(frozenset({"default/drain"}))
        # drained, not deleted: weight 0 while it holds a connection
        assert dest_lines(ipvs_rules()) == {gone: "0", stay: "1"}
        held.roundtrip("during drain")
        # new connections never go to it
        for _ in range(6):
            c = Conn()
            assert c.pod == stay
            c.close()
        # a check before the period ends keeps it (it has a connection)
        await ctl.ipvs.reap()
        assert dest_lines(ipvs_rules()) == {gone: "0", stay: "1"}
        held.roundtrip("still draining")
        # the period passes with the connection still open: removed
        await asyncio.sleep(4.2)
        await ctl.ipvs.reap()
        assert dest_lines(ipvs_rules()) == {stay: "1"}
        assert not ctl.ipvs.draining
        held.close()
        # a later sync does not bring it back, and has nothing to do
        await ctl.sync(frozenset({"default/drain"}))
        assert ctl.last_result.ops == 0
        assert dest_lines(ipvs_rules()) == {stay: "1"}
        await ctl.stop()

    asyncio.run(main())


def test_graceful_drain_without_connections_removed_at_first_check(
        pods: list[str], k8s: SimpleNamespace, ipvs_rules: Callable[[], list[str]]) -> None:
    async def main() -> None:
        ctl = await controller(k8s, TCP, TCP_TARGET, pods, "--ipvs-graceful-termination",
                               "--ipvs-graceful-period", "60s")
        k8s.put(ctl.agent, k8s.endpointslice("drain", [pods[1]], TCP_TARGET))
        await ctl.sync(frozenset({"default/drain"}))
        assert dest_lines(ipvs_rules()) == {pods[0]: "0", pods[1]: "1"}
        # no connection ever went to it: the first check removes it, long before 60 s
        await ctl.ipvs.reap()
        assert dest_lines(ipvs_rules()) == {pods[1]: "1"}
        assert not ctl.ipvs.draining
        await ctl.stop()

    asyncio.run(main())


def test_graceful_endpoint_back_during_drain(pods: list[str], k8s: SimpleNamespace,
                                             ipvs_rules: Callable[[], list[str]]) -> None:
    async def main() -> None:
        ctl = await controller(k8s, TCP, TCP_TARGET, pods, "--ipvs-graceful-termination",
                               "--ipvs-graceful-period", "60s")
        held = Conn()
        other = pods[1] if held.pod == pods[0] else pods[0]
        k8s.put(ctl.agent, k8s.endpointslice("drain", [other], TCP_TARGET))
        await ctl.sync(frozenset({"default/drain"}))
        assert dest_lines(ipvs_rules())[held.pod] == "0"
        k8s.put(ctl.agent, k8s.endpointslice("drain", pods, TCP_TARGET))
        await ctl.sync(frozenset({"default/drain"}))
        assert dest_lines(ipvs_rules()) == {pods[0]: "1", pods[1]: "1"}
        assert not ctl.ipvs.draining
        await ctl.ipvs.reap()
        assert dest_lines(ipvs_rules()) == {pods[0]: "1", pods[1]: "1"}
        held.roundtrip("back")
        held.close()
        await ctl.stop()

    asyncio.run(main())


def test_without_graceful_removed_at_once(pods: list[str], k8s: SimpleNamespace,
                                          ipvs_rules: Callable[[], list[str]]) -> None:
    async def main() -> None:
        ctl = await controller(k8s, TCP, TCP_TARGET, pods)
        held = Conn()
        other = pods[1] if held.pod == pods[0] else pods[0]
        k8s.put(ctl.agent, k8s.endpointslice("drain", [other], TCP_TARGET))
        await ctl.sync(frozenset({"default/drain"}))
        assert dest_lines(ipvs_rules()) == {other: "1"}
        assert not ctl.ipvs.draining
        held.close()
        for _ in range(4):
            c = Conn()
            assert c.pod == other
            c.close()
        await ctl.stop()

    asyncio.run(main())


UDP = [("dns", "UDP", 53)]
UDP_TARGET = [("dns", "UDP", 5353)]


def udp_flows(sh: Callable[..., str]) -> dict[str, int]:
    """Pod ip -> how many UDP conntrack entries to the VIP it answers."""
    out = subprocess.run(["conntrack", "-L", "-p", "udp", "--orig-dst", VIP],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    counts: dict[str, int] = {}
    for line in out.stdout.splitlines():
        srcs = [w.split("=", 1)[1] for w in line.split() if w.startswith("src=")]
        if len(srcs) == 2:  # the reply direction's source is the real server
            counts[srcs[1]] = counts.get(srcs[1], 0) + 1
    return counts


def test_udp_removal_flushes_only_that_endpoints_conntrack(
        pods: list[str], k8s: SimpleNamespace, sh: Callable[..., str],
        ipvs_rules: Callable[[], list[str]]) -> None:
    async def main() -> None:
        ctl = await controller(k8s, UDP, UDP_TARGET, pods)
        assert dest_lines(ipvs_rules(), "-u") == {pods[0]: "1", pods[1]: "1"}
        socks = []
        answered: dict[str, int] = {}
        # round robin over new flows (a new source port each): both pods get some
        for _ in range(8):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(5)
            s.sendto(b"q", (VIP, 53))
            who = s.recv(64).decode()
            answered[who] = answered.get(who, 0) + 1
            socks.append(s)
        assert answered == {pods[0]: 4, pods[1]: 4}
        assert udp_flows(sh) == {pods[0]: 4, pods[1]: 4}
        k8s.put(ctl.agent, k8s.endpointslice("drain", [pods[1]], UDP_TARGET))
        await ctl.sync(frozenset({"default/drain"}))
        assert dest_lines(ipvs_rules(), "-u") == {pods[1]: "1"}
        # only the removed endpoint's flows went; the other pod's clients keep theirs
        assert udp_flows(sh) == {pods[1]: 4}
        for s in socks:
            s.close()
        await ctl.stop()

    asyncio.run(main())


# -- endpoints that terminate (KEP-1669) -------------------------------------------------------


def terminating(svc: str, ready: list[str], ending: list[str], target: list[tuple[str, str, int]],
                k8s: SimpleNamespace, *, serving: bool = True) -> dict:
    """An EndpointSlice with ``ready`` endpoints and ``ending`` ones marked as a deleted
    pod's are: not ready, terminating, serving while its server still answers."""
    sl = k8s.endpointslice(svc, ready + ending, target)
    for ep in sl["endpoints"]:
        if ep["addresses"][0] in ending:
            ep["conditions"] = {"ready": False, "serving": serving, "terminating": True}
    return sl


def test_terminating_endpoint_holds_its_connections_at_weight_0(
        pods: list[str], k8s: SimpleNamespace, ipvs_rules: Callable[[], list[str]]) -> None:
    """A pod being deleted beside a ready one: no new connection, but the one it holds goes
    on until the pod is gone; then it is deleted (without the graceful flag) at once."""
    async def main() -> None:
        ctl = await controller(k8s, TCP, TCP_TARGET, pods)
        held = Conn()
        ending = held.pod
        ready = pods[1] if ending == pods[0] else pods[0]
        k8s.put(ctl.agent, terminating("drain", [ready], [ending], TCP_TARGET, k8s))
        await ctl.sync(frozenset({"default/drain"}))
        assert dest_lines(ipvs_rules()) == {ending: "0", ready: "1"}
        held.roundtrip("while terminating")
        for _ in range(6):
            c = Conn()
            assert c.pod == ready
            c.close()
        held.roundtrip("still held")
        # the reaper of graceful termination has nothing to do with it: it is desired
        assert not ctl.ipvs.draining
        # its server stops serving: not a real server any more
        k8s.put(ctl.agent, terminating("drain", [ready], [ending], TCP_TARGET, k8s,
                                       serving=False))
        await ctl.sync(frozenset({"default/drain"}))
        assert dest_lines(ipvs_rules()) == {ready: "1"}
        held.close()
        await ctl.stop()

    asyncio.run(main())


def test_terminating_endpoints_take_new_connections_when_none_is_ready(
        pods: list[str], k8s: SimpleNamespace, ipvs_rules: Callable[[], list[str]]) -> None:
    async def main() -> None:
        ctl = await controller(k8s, TCP, TCP_TARGET, pods)
        k8s.put(ctl.agent, terminating("drain", [], pods, TCP_TARGET, k8s))
        await ctl.sync(frozenset({"default/drain"}))
        assert dest_lines(ipvs_rules()) == {pods[0]: "1", pods[1]: "1"}
        got = set()
        for _ in range(4):
            c = Conn()
            got.add(c.pod)
            c.close()
        assert got == set(pods)
        # one turns ready (a replacement): the terminating one drops to weight 0
        k8s.put(ctl.agent, terminating("drain", [pods[1]], [pods[0]], TCP_TARGET, k8s))
        await ctl.sync(frozenset({"default/drain"}))
        assert dest_lines(ipvs_rules()) == {pods[0]: "0", pods[1]: "1"}
        await ctl.stop()

    asyncio.run(main())


def test_udp_client_of_a_terminating_endpoint_moves_on_when_it_is_gone(
        pods: list[str], k8s: SimpleNamespace, sh: Callable[..., str],
        ipvs_rules: Callable[[], list[str]]) -> None:
    """A UDP client's flow stays with a terminating endpoint while it serves (weight 0 keeps
    the flow); once the endpoint is gone its conntrack entries are flushed, so the same
    client socket's next datagram reaches the ready endpoint instead of a dead one."""
    async def main() -> None:
        ctl = await controller(k8s, UDP, UDP_TARGET, pods)
        clients: dict[str, socket.socket] = {}
        while len(clients) < 2:  # one client flow on each pod
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(5)
            s.sendto(b"q", (VIP, 53))
            who = s.recv(64).decode()
            if who in clients:
                s.close()
            else:
                clients[who] = s
        ending, ready = pods
        k8s.put(ctl.agent, terminating("drain", [ready], [ending], UDP_TARGET, k8s))
        await ctl.sync(frozenset({"default/drain"}))
        assert dest_lines(ipvs_rules(), "-u") == {ending: "0", ready: "1"}
        clients[ending].sendto(b"q", (VIP, 53))
        assert clients[ending].recv(64).decode() == ending  # its flow goes on
        fresh = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        fresh.settimeout(5)
        fresh.sendto(b"q", (VIP, 53))
        assert fresh.recv(64).decode() == ready  # a new flow: the ready one
        fresh.close()
        # the pod is gone: the endpoint leaves the slice, its flows are forgotten
        k8s.put(ctl.agent, k8s.endpointslice("drain", [ready], UDP_TARGET))
        await ctl.sync(frozenset({"default/drain"}))
        assert dest_lines(ipvs_rules(), "-u") == {ready: "1"}
        assert ending not in udp_flows(sh)
        clients[ending].sendto(b"q", (VIP, 53))
        assert clients[ending].recv(64).decode() == ready
        for s in clients.values():
            s.close()
        await ctl.stop()

    asyncio.run(main())


# Fixed client ports above the kernel's ephemeral range (32768-60999): a port inside it may
# be held at that moment by any other connection in the guest, and the bind would fail.
REUSED_PORTS = (61000, 61100, 61200, 61300)


def _ipvs_conn_dest(client_port: int) -> str | None:
    """The real server IPVS holds for a client port's connection to the VIP, if any."""
    with open("/proc/net/ip_vs_conn") as f:
        for line in f.read().splitlines()[1:]:
            w = line.split()
            # Pro FromIP FPrt ToIP TPrt DestIP DPrt State Expires (addresses in hex)
            if len(w) >= 8 and int(w[2], 16) == client_port and int(w[4], 16) == 80:
                return socket.inet_ntoa(bytes.fromhex(w[5]))
    return None


def _conn_from(port: int) -> Conn:
    """A connection through the VIP from a fixed source port (the same client reusing it)."""
    c = Conn.__new__(Conn)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.settimeout(5)
    s.bind(("0.0.0.0", port))
    s.connect((VIP, 80))
    c.sock = s
    c.pod = c._line()
    return c


def _reset(c: Conn) -> None:
    """Close with a reset: the client keeps no TIME_WAIT, so it may reuse the port at once,
    while IPVS still holds the connection's entry (state CLOSE) for that port."""
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.sock.close()


def test_reused_source_port_goes_to_a_ready_endpoint_not_the_terminating_one(
        pods: list[str], k8s: SimpleNamespace, ipvs_rules: Callable[[], list[str]]) -> None:
    """A client reusing a source port whose last connection went to a pod now terminating:
    IPVS still holds that connection's entry; with the proxy's sysctls the new connection
    is scheduled again (to the ready pod), neither sent to the terminating one nor held up."""
    async def main() -> None:
        ctl = await controller(k8s, TCP, TCP_TARGET, pods)
        port = REUSED_PORTS[0]
        first = _conn_from(port)
        ending = first.pod
        ready = pods[1] if ending == pods[0] else pods[0]
        _reset(first)
        assert _ipvs_conn_dest(port) == ending  # the entry a reused port meets
        k8s.put(ctl.agent, terminating("drain", [ready], [ending], TCP_TARGET, k8s))
        await ctl.sync(frozenset({"default/drain"}))
        assert dest_lines(ipvs_rules()) == {ending: "0", ready: "1"}
        started = time.monotonic()
        again = _conn_from(port)
        took = time.monotonic() - started
        assert again.pod == ready
        assert took < 2.5, f"the reused port's SYN was held up {took:.1f}s"
        _reset(again)
        await ctl.stop()

    asyncio.run(main())


def test_reused_source_port_is_scheduled_again(
        pods: list[str], k8s: SimpleNamespace, ipvs_rules: Callable[[], list[str]]) -> None:
    """Ephemeral ports come round well within the two minutes IPVS keeps a closed
    connection: a new connection from such a port is scheduled like any other (here round
    robin moves it to the other pod), not pinned to the real server of the old one, which
    may be gone by then or shutting down."""
    async def main() -> None:
        ctl = await controller(k8s, TCP, TCP_TARGET, pods)
        port = REUSED_PORTS[1]
        first = _conn_from(port)
        _reset(first)
        assert _ipvs_conn_dest(port) == first.pod
        again = _conn_from(port)
        assert again.pod != first.pod
        _reset(again)
        await ctl.stop()

    asyncio.run(main())


def test_reused_source_port_after_its_real_server_is_removed(
        pods: list[str], k8s: SimpleNamespace, ipvs_rules: Callable[[], list[str]]) -> None:
    """A client reusing a source port whose last connection went to a pod that is gone
    (its real server deleted, without graceful termination): IPVS still holds that entry;
    the new connection must reach the pod that is left without being held up."""
    async def main() -> None:
        ctl = await controller(k8s, TCP, TCP_TARGET, pods)
        port = REUSED_PORTS[2]
        first = _conn_from(port)
        gone = first.pod
        left = pods[1] if gone == pods[0] else pods[0]
        _reset(first)
        assert _ipvs_conn_dest(port) == gone
        k8s.put(ctl.agent, k8s.endpointslice("drain", [left], TCP_TARGET))
        await ctl.sync(frozenset({"default/drain"}))
        assert dest_lines(ipvs_rules()) == {left: "1"}
        started = time.monotonic()
        try:
            again = _conn_from(port)
        except OSError as exc:
            raise AssertionError(f"reused port: {exc!r} after "
                                 f"{time.monotonic() - started:.1f}s") from None
        took = time.monotonic() - started
        assert again.pod == left
        assert took < 2.5, f"the reused port's SYN was held up {took:.1f}s"
        _reset(again)
        await ctl.stop()

    asyncio.run(main())


# Like whats-my-ip: the server writes its line and closes first; the client, reading the
# end, closes too and keeps no TIME_WAIT, so its port is free again at once.
CLOSER = """
import socket, sys
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", 8081))
srv.listen(64)
print("ready", flush=True)
while True:
    c, _ = srv.accept()
    c.sendall((sys.argv[1] + "\\n").encode())
    c.close()
"""


def _closed_by_server_from(port: int) -> str:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.settimeout(12)
    s.bind(("0.0.0.0", port))
    s.connect((VIP, 80))
    got = b""
    while chunk := s.recv(4096):
        got += chunk
    s.close()
    return got.decode().strip()


def test_reused_source_port_after_server_closed_and_real_server_removed(
        pods: list[str], k8s: SimpleNamespace, ipvs_rules: Callable[[], list[str]]) -> None:
    """As the lab's request loops meet it: the pod closed first (IPVS keeps the entry in
    TIME_WAIT two minutes), the pod is gone, and the client's next connection happens to
    get the same source port."""
    closers = [subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", CLOSER, ip],
                                stdout=subprocess.PIPE, text=True) for ns, ip in PODS.items()]
    try:
        for proc in closers:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"

        async def main() -> None:
            target = [("http", "TCP", 8081)]
            ctl = await controller(k8s, TCP, target, pods)
            port = REUSED_PORTS[3]
            gone = _closed_by_server_from(port)
            left = pods[1] if gone == pods[0] else pods[0]
            entry = subprocess.run(["ipvsadm", "-Lnc"], capture_output=True, text=True).stdout
            assert any(f":{port} " in ln and "TIME_WAIT" in ln for ln in entry.splitlines()), entry
            k8s.put(ctl.agent, k8s.endpointslice("drain", [left], target))
            await ctl.sync(frozenset({"default/drain"}))
            assert dest_lines(ipvs_rules()) == {left: "1"}
            started = time.monotonic()
            try:
                got = _closed_by_server_from(port)
            except OSError as exc:
                ct = subprocess.run(["conntrack", "-L", "--orig-dst", VIP], capture_output=True,
                                    text=True).stdout
                lc = subprocess.run(["ipvsadm", "-Lnc"], capture_output=True, text=True).stdout
                raise AssertionError(f"reused port: {exc!r} after "
                                     f"{time.monotonic() - started:.1f}s\n{ct}\n{lc}") from None
            took = time.monotonic() - started
            assert got == left
            assert took < 2.5, f"the reused port's SYN was held up {took:.1f}s"
            await ctl.stop()

        asyncio.run(main())
    finally:
        for proc in closers:
            proc.kill()
            proc.wait()
