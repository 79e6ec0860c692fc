"""The gobgpd child process and the gRPC calls this plugin makes to it.

gobgpd runs with no configuration file: everything (global settings, peers, paths,
policies) is sent over its gRPC API, so a restarted gobgpd is simply configured again.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.any_pb2 import Any as AnyMsg

from kube_router_routing_bgp import gobgp_api

log = logging.getLogger(__name__)

# Paths per AddPathStream message: measured at ~1,000-1,500 paths/s in the guest with
# 1,000 per message against ~130/s with unary calls.
STREAM_BATCH = 1000


class GobgpError(Exception):
    """gobgpd refused a call or is not reachable."""


@dataclass(frozen=True)
class PeerConfig:
    address: str
    asn: int
    port: int = 179
    local_address: str = ""
    password: str = ""  # never logged: see __repr__
    multihop_ttl: int = 0
    external: bool = False  # an external router (not another node)
    rr_client_cluster_id: str = ""  # set on a route reflector for its clients
    graceful_restart: bool = False
    graceful_restart_time: int = 90
    hold_time: int = 90

    def __repr__(self) -> str:
        secret = "***" if self.password else ""
        return (f"PeerConfig(address={self.address}, asn={self.asn}, port={self.port}, "
                f"external={self.external}, password={secret!r})")


@dataclass(frozen=True)
class PeerStatus:
    address: str
    asn: int
    state: str  # like the gobgp CLI: Establ, Active, Idle, Connect, OpenSent, OpenConf
    uptime: float | None  # seconds since established
    received: int
    accepted: int
    external: bool


@dataclass(frozen=True)
class LearnedPath:
    prefix: str  # normalized network, e.g. "10.2.1.0/24"
    next_hop: str
    withdraw: bool
    neighbor: str  # "" for paths this gobgpd originated


_STATE_NAMES = {0: "Unknown", 1: "Idle", 2: "Connect", 3: "Active", 4: "OpenSent",
                5: "OpenConf", 6: "Establ"}


def _with_death_signal(argv: list[str]) -> list[str]:
    """``argv`` run through util-linux ``setpriv``, which sets the parent-death signal to
    KILL and execs it: gobgpd must not outlive the agent (an orphan would keep the API and
    BGP ports, and the next agent refuses to configure a gobgpd it did not start).

    KILL, not TERM: on TERM gobgpd stops BGP first and waits for every peer's session to
    wind down, which can take long; an orphan that lingers holds off the agent that
    replaces it. Killed, its sockets are closed by the kernel, so peers without graceful
    restart see the session end at once (as a Cease would tell them), and peers with it
    keep our routes through the restart (a Cease would make them drop them).

    Not a ``preexec_fn``: Python code between fork and exec in a process with threads can
    deadlock the child on a lock another thread held at the fork, and the agent with it
    while it waits for the exec.
    """
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        log.warning("setpriv (util-linux) not found: gobgpd may outlive the agent if the "
                    "agent is killed")
        return argv
    return [setpriv, "--pdeathsig=KILL", "--", *argv]


class Gobgpd:
    """A supervised gobgpd with a gRPC client. One per agent; lives on the agent's loop."""

    def __init__(self, *, api_host: str = "127.0.0.1:50051", binary: str = "gobgpd",
                 log_level: str = "warn", graceful_restart: bool = False,
                 netns: str | None = None) -> None:
        self.api_host = api_host
        self.netns = netns  # run it in this named namespace (tests, benchmarks, lab peers)
        self.binary = binary
        self.log_level = log_level
        self.graceful_restart = graceful_restart
        self.proc: asyncio.subprocess.Process | None = None
        self._channel: grpc.aio.Channel | None = None
        self._api = gobgp_api.load()
        self.stub: Any = None  # the generated GobgpApiStub, once connected
        self.starts = 0

    @property
    def pb(self):
        return self._api.gobgp

    @property
    def attr(self):
        return self._api.attribute

    # -- process ---------------------------------------------------------------------

    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def spawn(self, timeout: float = 30.0) -> None:
        """Start gobgpd and wait until its API answers."""
        if self.running():
            return
        await self._close_channel()
        argv = [self.binary, f"--api-hosts={self.api_host}", "--pprof-disable",
                "--log-plain", f"--log-level={self.log_level}"]
        if self.graceful_restart:
            argv.append("--graceful-restart")
        argv = _with_death_signal(argv)
        if self.netns:
            # `ip netns exec` execs the program: the pid we supervise is gobgpd's.
            argv = ["ip", "netns", "exec", self.netns, *argv]
        # An older gobgpd answering on our port would receive our configuration and then
        # fail us on StartBgp; tell the user rather than fight it.
        if await self._api_answers(self.api_host, timeout=0.5):
            raise GobgpError(f"something already serves the gobgpd API at {self.api_host}")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL)
        except OSError as exc:
            raise GobgpError(f"cannot start {self.binary}: {exc}") from exc
        self.starts += 1
        log.info("gobgpd started pid=%s api=%s", self.proc.pid, self.api_host)
        self.connect()
        deadline = time.monotonic() + timeout
        while True:
            if not self.running():
                rc = self.proc.returncode
                raise GobgpError(f"gobgpd exited rc={rc} during start-up")
            try:
                await self.stub.GetBgp(self.pb.GetBgpRequest(), timeout=2)
                return
            except grpc.aio.AioRpcError as exc:
                if time.monotonic() > deadline:
                    # A gobgpd that never answers would otherwise stay, and every later
                    # sync would find it "running": end it, so the next one starts afresh.
                    await self.stop()
                    raise GobgpError(f"gobgpd API not answering after {timeout:g} s: "
                                     f"{exc.details()}") from exc
                await asyncio.sleep(0.1)

    async def _api_answers(self, target: str, timeout: float) -> bool:
        async with grpc.aio.insecure_channel(target) as ch:
            stub = self._api.grpc.GobgpApiStub(ch)
            try:
                await stub.GetBgp(self.pb.GetBgpRequest(), timeout=timeout)
                return True
            except grpc.aio.AioRpcError:
                return False

    def connect(self) -> None:
        """Open the API channel: to the gobgpd this object started, or to one already
        running at ``api_host``."""
        self._channel = grpc.aio.insecure_channel(
            self.api_host, options=[("grpc.max_receive_message_length", 64 << 20)])
        self.stub = self._api.grpc.GobgpApiStub(self._channel)

    async def _close_channel(self) -> None:
        if self._channel is not None:
            with contextlib.suppress(Exception):
                await self._channel.close(grace=None)
        self._channel = None
        self.stub = None

    async def wait(self) -> int:
        """Wait for the process to exit; return its status."""
        assert self.proc is not None
        return await self.proc.wait()

    async def stop(self) -> None:
        await self._close_channel()
        if self.running():
            assert self.proc is not None
            if self.graceful_restart:
                self.proc.kill()  # no Cease: the peers keep our routes as stale
            else:
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
            log.info("gobgpd stopped pid=%s", self.proc.pid)

    # -- global --------------------------------------------------------------------

    async def _call(self, method: str, request: Any, timeout: float = 10.0) -> Any:
        if self.stub is None:
            raise GobgpError("gobgpd is not running")
        try:
            return await getattr(self.stub, method)(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise GobgpError(f"{method}: {exc.details() or exc.code().name}") from exc

    async def started(self) -> bool:
        """True when StartBgp has been applied (GetBgp shows a router id)."""
        resp = await self._call("GetBgp", self.pb.GetBgpRequest())
        return bool(getattr(resp, "global").router_id)

    async def start_bgp(self, *, asn: int, router_id: str, listen_addresses: Sequence[str],
                        listen_port: int = 179, graceful_restart: bool = False,
                        restart_time: int = 90) -> None:
        pb = self.pb
        glob = pb.Global(asn=asn, router_id=router_id, listen_port=listen_port,
                         listen_addresses=list(listen_addresses))
        if graceful_restart:
            # deferral_time is what stalls the first advertisement in the original when
            # nothing restarted; keep it short (the peers' End-of-RIB ends it anyway).
            glob.graceful_restart.CopyFrom(pb.GracefulRestart(
                enabled=True, restart_time=restart_time, deferral_time=1))
        await self._call("StartBgp", pb.StartBgpRequest(**{"global": glob}))

    # -- peers ---------------------------------------------------------------------

    def _peer_msg(self, p: PeerConfig) -> Any:
        pb = self.pb
        peer = pb.Peer(conf=pb.PeerConf(neighbor_address=p.address, peer_asn=p.asn,
                                        auth_password=p.password))
        if p.local_address:
            peer.transport.local_address = p.local_address
        if p.port and p.port != 179:
            peer.transport.remote_port = p.port
        peer.timers.config.connect_retry = 5
        peer.timers.config.hold_time = p.hold_time
        peer.timers.config.keepalive_interval = max(1, p.hold_time // 3)
        if p.multihop_ttl >= 2:
            peer.ebgp_multihop.enabled = True
            peer.ebgp_multihop.multihop_ttl = p.multihop_ttl
        if p.rr_client_cluster_id:
            peer.route_reflector.route_reflector_client = True
            peer.route_reflector.route_reflector_cluster_id = p.rr_client_cluster_id
        family = pb.Family(afi=pb.Family.AFI_IP, safi=pb.Family.SAFI_UNICAST)
        afi = pb.AfiSafi(config=pb.AfiSafiConfig(family=family, enabled=True))
        if p.graceful_restart:
            peer.graceful_restart.enabled = True
            peer.graceful_restart.restart_time = p.graceful_restart_time
            afi.mp_graceful_restart.config.enabled = True
        peer.afi_safis.append(afi)
        return peer

    async def add_peer(self, p: PeerConfig) -> None:
        await self._call("AddPeer", self.pb.AddPeerRequest(peer=self._peer_msg(p)))

    async def delete_peer(self, address: str) -> None:
        await self._call("DeletePeer", self.pb.DeletePeerRequest(address=address))

    async def list_peers(self) -> list[PeerStatus]:
        if self.stub is None:
            raise GobgpError("gobgpd is not running")
        out = []
        try:
            async for resp in self.stub.ListPeer(self.pb.ListPeerRequest(), timeout=10):
                out.append(peer_status(resp.peer))
        except grpc.aio.AioRpcError as exc:
            raise GobgpError(f"ListPeer: {exc.details()}") from exc
        return out

    # -- paths ---------------------------------------------------------------------

    def path_msg(self, prefix: str, next_hop: str, *, withdraw: bool = False) -> Any:
        """A GoBGP Path for an IPv4/IPv6 unicast prefix. Raises ValueError on a bad prefix
        (gobgpd would accept it and advertise 0.0.0.0/len)."""
        pb, attr = self.pb, self.attr
        net = ipaddress.ip_network(prefix, strict=False)
        ipaddress.ip_address(next_hop)
        afi = pb.Family.AFI_IP if net.version == 4 else pb.Family.AFI_IP6
        nlri, origin, nh = AnyMsg(), AnyMsg(), AnyMsg()
        nlri.Pack(attr.IPAddressPrefix(prefix_len=net.prefixlen,
                                       prefix=str(net.network_address)))
        origin.Pack(attr.OriginAttribute(origin=0))
        if net.version == 4:
            nh.Pack(attr.NextHopAttribute(next_hop=next_hop))
        else:
            nh.Pack(attr.MpReachNLRIAttribute(
                family=pb.Family(afi=afi, safi=pb.Family.SAFI_UNICAST),
                next_hops=[next_hop], nlris=[nlri]))
        return pb.Path(family=pb.Family(afi=afi, safi=pb.Family.SAFI_UNICAST),
                       nlri=nlri, pattrs=[origin, nh], is_withdraw=withdraw)

    async def add_path(self, prefix: str, next_hop: str) -> bytes:
        resp = await self._call("AddPath", self.pb.AddPathRequest(
            table_type=self.pb.GLOBAL, path=self.path_msg(prefix, next_hop)))
        return resp.uuid

    async def delete_path(self, prefix: str, next_hop: str) -> None:
        pb = self.pb
        path = self.path_msg(prefix, next_hop)
        await self._call("DeletePath", pb.DeletePathRequest(
            table_type=pb.GLOBAL, family=path.family, path=path))

    async def add_paths_stream(self, paths: Iterable[tuple[str, str]], *,
                               withdraw: bool = False, batch: int = STREAM_BATCH) -> int:
        """Send many (prefix, next hop) paths through AddPathStream, ``batch`` per message.
        Invalid ones are skipped with a warning. Returns how many were sent."""
        pb = self.pb
        msgs: list[Any] = []
        chunk: list[Any] = []
        for prefix, nh in paths:
            try:
                chunk.append(self.path_msg(prefix, nh, withdraw=withdraw))
            except ValueError as exc:
                log.warning("skipping invalid path prefix=%s next_hop=%s error=%s",
                            prefix, nh, exc)
                continue
            if len(chunk) >= batch:
                msgs.append(pb.AddPathStreamRequest(table_type=pb.GLOBAL, paths=chunk))
                chunk = []
        if chunk:
            msgs.append(pb.AddPathStreamRequest(table_type=pb.GLOBAL, paths=chunk))
        if self.stub is None:
            raise GobgpError("gobgpd is not running")
        try:
            await self.stub.AddPathStream(iter(msgs), timeout=600)
        except grpc.aio.AioRpcError as exc:
            raise GobgpError(f"AddPathStream: {exc.details()}") from exc
        return sum(len(m.paths) for m in msgs)

    async def count_paths(self) -> tuple[int, int]:
        """(destinations, paths) in the global IPv4 unicast table: cheap."""
        pb = self.pb
        resp = await self._call("GetTable", pb.GetTableRequest(
            table_type=pb.GLOBAL,
            family=pb.Family(afi=pb.Family.AFI_IP, safi=pb.Family.SAFI_UNICAST)))
        return resp.num_destination, resp.num_path

    async def best_paths(self) -> list[LearnedPath]:
        """Every best IPv4 unicast path in the global table."""
        pb = self.pb
        if self.stub is None:
            raise GobgpError("gobgpd is not running")
        out: list[LearnedPath] = []
        req = pb.ListPathRequest(
            table_type=pb.GLOBAL, family=pb.Family(afi=pb.Family.AFI_IP,
                                                   safi=pb.Family.SAFI_UNICAST))
        try:
            async for resp in self.stub.ListPath(req, timeout=60):
                for path in resp.destination.paths:
                    if path.best:
                        lp = self.learned(path)
                        if lp is not None:
                            out.append(lp)
        except grpc.aio.AioRpcError as exc:
            raise GobgpError(f"ListPath: {exc.details()}") from exc
        return out

    async def watch_best(self, on_peer: Callable[[PeerStatus], None] | None = None
                         ) -> AsyncIterator[list[LearnedPath]]:
        """Yield batches of best-path changes, starting with the current table; peer
        state changes go to ``on_peer``."""
        pb = self.pb
        if self.stub is None:
            raise GobgpError("gobgpd is not running")
        flt = pb.WatchEventRequest.Table.Filter(
            type=pb.WatchEventRequest.Table.Filter.BEST, init=True)
        req = pb.WatchEventRequest(table=pb.WatchEventRequest.Table(filters=[flt]))
        if on_peer is not None:
            req.peer.CopyFrom(pb.WatchEventRequest.Peer())
        call = self.stub.WatchEvent(req)
        try:
            async for resp in call:
                if resp.HasField("peer"):
                    if on_peer is not None and resp.peer.type == resp.peer.STATE:
                        on_peer(peer_status(resp.peer.peer))
                    continue
                if not resp.HasField("table"):
                    continue
                # The first event of an empty table carries no paths at all.
                batch = [lp for lp in map(self.learned, resp.table.paths) if lp is not None]
                if batch:
                    yield batch
        except grpc.aio.AioRpcError as exc:
            raise GobgpError(f"WatchEvent: {exc.details() or exc.code().name}") from exc
        finally:
            call.cancel()

    def learned(self, path: Any) -> LearnedPath | None:
        """Decode a Path's prefix and next hop; None for families we do not route."""
        attr = self.attr
        nlri = attr.IPAddressPrefix()
        if not path.nlri.Unpack(nlri):
            return None
        try:
            prefix = str(ipaddress.ip_network(f"{nlri.prefix}/{nlri.prefix_len}"))
        except ValueError:
            return None
        nh = ""
        for any_attr in path.pattrs:
            if any_attr.Is(attr.NextHopAttribute.DESCRIPTOR):
                msg = attr.NextHopAttribute()
                any_attr.Unpack(msg)
                nh = msg.next_hop
            elif any_attr.Is(attr.MpReachNLRIAttribute.DESCRIPTOR):
                msg = attr.MpReachNLRIAttribute()
                any_attr.Unpack(msg)
                if msg.next_hops:
                    nh = msg.next_hops[0]
        neighbor = path.neighbor_ip if path.neighbor_ip not in ("", "<nil>") else ""
        return LearnedPath(prefix=prefix, next_hop=nh, withdraw=path.is_withdraw,
                           neighbor=neighbor)


def peer_status(peer: Any) -> PeerStatus:
    st = peer.state
    uptime = None
    if st.session_state == 6 and peer.timers.state.uptime.seconds:
        uptime = max(0.0, time.time() - peer.timers.state.uptime.seconds)
    received = accepted = 0
    for afi in peer.afi_safis:
        received += afi.state.received
        accepted += afi.state.accepted
    return PeerStatus(
        address=peer.conf.neighbor_address or st.neighbor_address,
        asn=peer.conf.peer_asn or st.peer_asn,
        state=_STATE_NAMES.get(st.session_state, str(st.session_state)),
        uptime=uptime,
        received=received,
        accepted=accepted,
        external=peer.conf.peer_asn != peer.conf.local_asn if peer.conf.local_asn else False,
    )


def format_uptime(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    s = int(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def admin_target(address: str, port: int, runtime_dir: str) -> str:
    """The gRPC target for gobgpd's API: TCP when a port is given, else a unix socket
    private to this agent (port 0 turns the TCP admin API off, as in the original)."""
    if port:
        host = f"[{address}]" if ":" in address else address
        return f"{host}:{port}"
    return f"unix://{os.path.join(runtime_dir, 'gobgpd.sock')}"
