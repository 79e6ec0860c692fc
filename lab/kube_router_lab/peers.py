"""External BGP routers on the lab's underlay: BIRD (bird2) or GoBGP.

A peer runs in its own namespace, peers with every node (eBGP: its ASN against the
cluster's), and puts every route it learns into its namespace's kernel table, so ``ip
route`` and ``curl`` there show what the cluster advertised. Its own tool works with no
extra arguments inside its namespace: ``birdc show route`` (the control socket sits at
BIRD's default path when that is free, and ``Peer.env`` puts a wrapper first on PATH
otherwise), ``gobgp global rib`` (gobgpd's API on 127.0.0.1:50051 in the namespace).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from kube_router_lab import netns as ns
from kube_router_lab.spec import PeerSpec

BIRD_DEFAULT_SOCKET = Path("/run/bird/bird.ctl")
GOBGP_API = "127.0.0.1:50051"


class PeerError(RuntimeError):
    pass


class Peer:
    """A running external router; ``stop()`` ends every process it started."""

    def __init__(self, spec: PeerSpec, *, netns: str, ip: str, workdir: Path) -> None:
        self.spec = spec
        self.netns = netns
        self.ip = ip
        self.workdir = workdir
        self.bin_dir = workdir / "bin"
        self.procs: list[subprocess.Popen] = []
        self._cleanup_paths: list[Path] = []

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def env(self) -> dict[str, str]:
        """Environment for commands run in the peer's namespace (its wrappers first)."""
        return {**os.environ, "PATH": f"{self.bin_dir}:{os.environ.get('PATH', '')}"}

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def stop(self, timeout: float = 5.0) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()
        for path in self._cleanup_paths:
            with contextlib.suppress(OSError):
                path.unlink()
        self._cleanup_paths.clear()

    def _spawn(self, argv: list[str], log_name: str) -> subprocess.Popen:
        with open(self.workdir / log_name, "ab") as logf:
            proc = ns.popen_in(self.netns, argv, stdin=subprocess.DEVNULL, stdout=logf,
                               stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc


def _wrapper(path: Path, argv: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    quoted = " ".join("'" + a.replace("'", "'\\''") + "'" for a in argv)
    path.write_text(f"#!/bin/sh\nexec {quoted} \"$@\"\n")
    path.chmod(0o755)


def bird_config(*, ip: str, asn: int, node_ips: list[str], cluster_asn: int,
                log_file: Path, password: str = "") -> str:
    """BIRD's configuration; with ``password`` every session is TCP MD5 protected (the
    spec refused quotes and backslashes, so it sits between quotes as it is)."""
    lines = [
        f"router id {ip};",
        f'log "{log_file}" all;',
        "protocol device { scan time 10; }",
        "protocol direct { ipv4; }",
        # Everything learned over BGP goes into the namespace's main table.
        "protocol kernel { ipv4 { import none; export where source = RTS_BGP; }; }",
    ]
    auth = f'password "{password}"; ' if password else ""
    for i, node in enumerate(node_ips):
        lines.append(
            f"protocol bgp node{i} {{ local {ip} as {asn}; neighbor {node} as {cluster_asn}; "
            f"hold time 30; connect retry time 2; {auth}"
            "ipv4 { import all; export none; }; }")
    return "\n".join(lines) + "\n"


def _start_bird(peer: Peer, node_ips: list[str], cluster_asn: int) -> None:
    bird = shutil.which("bird")
    birdc = shutil.which("birdc")
    if not bird or not birdc:
        raise PeerError("bird2 is not installed (bird, birdc)")
    conf = peer.workdir / "bird.conf"
    conf.write_text(bird_config(ip=peer.ip, asn=peer.spec.asn, node_ips=node_ips,
                                cluster_asn=cluster_asn, log_file=peer.workdir / "bird.log",
                                password=peer.spec.password))
    conf.chmod(0o600)  # it may hold a password
    sock = peer.workdir / "bird.ctl"
    # A unix socket is reachable from every network namespace: at BIRD's default path,
    # plain `birdc show route` works in the peer's namespace (and anywhere else).
    default_free = not BIRD_DEFAULT_SOCKET.exists()
    if default_free:
        with contextlib.suppress(OSError):
            BIRD_DEFAULT_SOCKET.parent.mkdir(parents=True, exist_ok=True)
            sock = BIRD_DEFAULT_SOCKET
            peer._cleanup_paths.append(sock)
    _wrapper(peer.bin_dir / "birdc", [birdc, "-s", str(sock)])
    proc = peer._spawn([bird, "-f", "-c", str(conf), "-s", str(sock)], "bird.out")
    deadline = time.monotonic() + 10
    while not sock.exists():
        if proc.poll() is not None:
            raise PeerError(f"bird exited rc={proc.returncode}: "
                            f"{(peer.workdir / 'bird.out').read_text()[-500:]}")
        if time.monotonic() > deadline:
            raise PeerError("bird did not open its control socket in 10 s")
        time.sleep(0.05)


def gobgp_config(*, ip: str, asn: int, node_ips: list[str], cluster_asn: int,
                 password: str = "") -> str:
    """gobgpd's TOML; with ``password`` every neighbor is TCP MD5 protected."""
    lines = ["[global.config]", f"  as = {asn}", f'  router-id = "{ip}"',
             f'  local-address-list = ["{ip}"]', ""]
    for node in node_ips:
        lines += ["[[neighbors]]", "  [neighbors.config]",
                  f'    neighbor-address = "{node}"', f"    peer-as = {cluster_asn}",
                  *([f'    auth-password = "{password}"'] if password else []),
                  "  [neighbors.timers.config]", "    connect-retry = 2", ""]
    return "\n".join(lines)


def _start_gobgp(peer: Peer, node_ips: list[str], cluster_asn: int) -> None:
    gobgpd = shutil.which("gobgpd")
    if not gobgpd:
        raise PeerError("gobgpd is not installed")
    if importlib.util.find_spec("kube_router_routing_bgp") is None:
        raise PeerError("a gobgp peer needs the router plugin installed (its route mirror)")
    conf = peer.workdir / "gobgpd.toml"
    conf.write_text(gobgp_config(ip=peer.ip, asn=peer.spec.asn, node_ips=node_ips,
                                 cluster_asn=cluster_asn, password=peer.spec.password))
    conf.chmod(0o600)  # it may hold a password
    peer._spawn([gobgpd, "-f", str(conf), "-t", "toml", f"--api-hosts={GOBGP_API}",
                 "--pprof-disable", "--log-plain"], "gobgpd.out")
    # gobgpd cannot write the kernel table by itself (that takes zebra): the router plugin's
    # route mirror, a process in the same namespace, writes its best paths as routes.
    peer._spawn([sys.executable, "-m", "kube_router_routing_bgp.mirror_routes", GOBGP_API],
                "routes.out")


def start_peer(peer: PeerSpec, *, netns: str, ip: str, node_ips: list[str], cluster_asn: int,
               workdir: Path) -> Peer:
    """Start ``peer``'s router in ``netns`` (already on the underlay at ``ip``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    p = Peer(peer, netns=netns, ip=ip, workdir=workdir)
    # Routes learned from one node point at that node: the peer forwards towards pods.
    with contextlib.suppress(OSError):
        ns.write_sysctl(netns, "net.ipv4.ip_forward", "1")
    try:
        if peer.software == "bird":
            _start_bird(p, node_ips, cluster_asn)
        elif peer.software == "gobgp":
            _start_gobgp(p, node_ips, cluster_asn)
        else:
            raise PeerError(f"peer {peer.name}: unknown software {peer.software!r}")
    except BaseException:
        p.stop()
        raise
    return p
