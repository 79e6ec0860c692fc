"""The lab cluster: wires, API server, the cluster's controllers, kubelets, whats-my-ip,
external peers and one agent per node, behind one object a scenario drives.
"""

from __future__ import annotations

import base64
import contextlib
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kube_router_lab import netns as ns
from kube_router_lab import original
from kube_router_lab.agents import FAILURE_LOG_LINES
from kube_router_lab.agents import HEALTH_PORT
from kube_router_lab.agents import STACK_DUMP_BYTES
from kube_router_lab.agents import STACK_DUMP_WAIT
from kube_router_lab.agents import Agent
from kube_router_lab.agents import AgentSpec
from kube_router_lab.agents import agent_argv
from kube_router_lab.agents import agent_executable
from kube_router_lab.agents import installed_plugins
from kube_router_lab.agents import signal_gobgpd
from kube_router_lab.agents import tail
from kube_router_lab.api.server import VERSION as EMBEDDED_SERVER_VERSION
from kube_router_lab.apiserver import ApiError
from kube_router_lab.apiserver import ApiServer
from kube_router_lab.apiserver import ApiStore
from kube_router_lab.backend import substitute
from kube_router_lab.controllers import ClusterControllers
from kube_router_lab.controllers import kubernetes_service
from kube_router_lab.controllers import node_object
from kube_router_lab.controllers import resolve_target_port
from kube_router_lab.kubelet import LAB_CONF
from kube_router_lab.kubelet import Kubelet
from kube_router_lab.kubelet import bridge_conflist
from kube_router_lab.kubelet import reset_dir
from kube_router_lab.kubelet import write_conf
from kube_router_lab.spec import ClusterSpec
from kube_router_lab.topology import Topology
from kube_router_lab.versions import make_token
from kube_router_lab.versions import unsynced_reason
from kube_router_lab.whatsmyip import WhatsMyIp
from kube_router_lab.whatsmyip import proto_socket

API_PORT = 6443
#: What the report names the embedded server: the version it answers /version with.
EMBEDDED_VERSION = str(EMBEDDED_SERVER_VERSION["gitVersion"])
#: The DaemonSet whose ServiceAccount and RBAC the agents run with on a real control plane.
DAEMONSET_MANIFEST = Path(__file__).resolve().parents[2] / "daemonset" / \
    "kube-router-py-all-features.yaml"
CLUSTER_ASN = 64512


class LabError(RuntimeError):
    pass


class Lab:
    def __init__(self, spec: ClusterSpec, *, workdir: Path,
                 log: Callable[[str], None] = print, grace: float | None = None) -> None:
        self.spec = spec
        self.workdir = Path(workdir)
        self.log = log
        # seconds a deleted pod may take to end (the scenario's pod-termination.grace)
        self.grace = spec.termination.grace if grace is None else grace
        self.topology = Topology(spec, log=log)
        self.store = ApiStore()
        self.server: ApiServer | None = None
        self.controllers = ClusterControllers(self.store, spec, log=log, grace=self.grace)
        self.servers = WhatsMyIp(log=log)
        self.kubelets: dict[str, Kubelet] = {}
        self.agents: dict[str, Agent] = {}
        self.peers: dict[str, Any] = {}
        self.original = spec.agent == original.NAME
        # The original has the proxy, router and firewall built in (and reads the
        # scheduler annotations itself); anything else in `enable` is ours alone.
        installed = set(original.ROLES) if self.original else installed_plugins()
        if self.original and not original.binary().exists():
            raise LabError(f"{original.binary()} is missing: run `make kube-router-original`")
        missing = [e for e in spec.enable if e not in installed]
        if missing:
            log(f"event=plugins_missing names={','.join(missing)} "
                f"installed={','.join(sorted(installed)) or '-'}")
        self.enable = [e for e in spec.enable if e in installed]
        self.router = "router" in self.enable
        self.kubeconfig = self.workdir / "kubeconfig"
        self._up = False
        # On a real control plane (kube-apiserver, its controllers, etcd), self.store is a
        # client of it with the embedded store's methods, and the lab's own controllers stay
        # off: Deployments, EndpointSlices and pod CIDRs are the real controllers' work.
        self.control: Any = None
        self.heartbeats: Any = None
        self.agent_env: dict[str, str] = {}
        if spec.control_plane == "real":
            from kube_router_lab.realcp.control import RealControlPlane
            self.control = RealControlPlane(spec, workdir=self.workdir, log=log)

    # -- building and tearing down ---------------------------------------------------

    def up(self) -> None:
        started = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            # Without the router plugin nothing routes between nodes' pod CIDRs: the lab
            # installs static routes itself.
            self.topology.up(pod_routes=not self.router)
            self._up = True
            if self.control is not None:
                self._up_real()
                return
            self.controllers.install_admission()
            for name in ("default", "kube-system", "kube-public", "kube-node-lease"):
                self.store.create({"apiVersion": "v1", "kind": "Namespace",
                                   "metadata": {"name": name}})
            for i in range(self.spec.nodes):
                self.store.create(node_object(self.spec, i))
            for obj in kubernetes_service(self.spec):
                self.store.create(obj)
            self.server = ApiServer(self.store, host=self.spec.apiserver_ip(), port=API_PORT,
                                    bookmark_interval=self.spec.bookmark_interval)
            self.server.start()
            self.server.write_kubeconfig(self.kubeconfig)
            self.controllers.start()
            self.servers.start()
            self._start_nodes()
        except BaseException:
            self.down()
            raise
        self.log(f"event=lab_up nodes={self.spec.nodes} enable={','.join(self.enable) or '-'} "
                 f"seconds={time.monotonic() - started:.1f}")

    def _start_nodes(self) -> None:
        """What runs on the nodes, whichever control plane: kubelets, peers, agents."""
        for i, h in enumerate(self.topology.nodes):
            self.kubelets[h.name] = Kubelet(
                node=h.name, node_netns=h.netns, node_ip=h.ip, store=self.store,
                servers=self.servers, conf_dir=self._node_conf(h.name, i), log=self.log,
                termination=self.spec.termination)
        for k in self.kubelets.values():
            k.start()
        self._start_peers()
        self._start_agents()

    def _up_real(self) -> None:
        from kube_router_lab.realcp.nodes import NodeHeartbeats

        started = time.monotonic()
        self.control.start()
        self.store = self.control.store
        self.kubeconfig = self.control.kubeconfig
        self.heartbeats = NodeHeartbeats(self.control.store, [(h.name, h.ip)
                                                      for h in self.topology.nodes], log=self.log)
        cidrs = self.heartbeats.register(timeout=180.0)
        self.heartbeats.start()
        for i, h in enumerate(self.topology.nodes):
            if cidrs[h.name] == self.spec.pod_cidr(i):
                continue
            # Node IPAM skips a CIDR whose assignment failed (a slow API server): with the
            # router, the agents route what the Node says; without it, the lab's own
            # routes and CNI configuration assume the i-th /24.
            if not self.router:
                raise LabError(f"node IPAM gave {h.name} {cidrs[h.name]}, the lab's routes "
                               f"expect {self.spec.pod_cidr(i)}")
            self.log(f"event=pod_cidr_not_in_order node={h.name} pod_cidr={cidrs[h.name]} "
                     f"expected={self.spec.pod_cidr(i)}")
        self.agent_env = self.control.install_agent_identity(DAEMONSET_MANIFEST)
        self.servers.start()
        self._start_nodes()
        self.log(f"event=lab_up nodes={self.spec.nodes} enable={','.join(self.enable) or '-'} "
                 f"control_plane=real version={self.control.version} "
                 f"seconds={time.monotonic() - started:.1f}")

    def control_plane(self) -> dict[str, str]:
        """What the report says the lab ran on."""
        if self.control is not None:
            return {"kind": "real", "version": self.control.version}
        return {"kind": "embedded", "version": EMBEDDED_VERSION}

    def _node_conf(self, node: str, i: int) -> Path:
        base = self.workdir / node
        conf_dir = base / "cni" / "net.d"
        reset_dir(conf_dir)
        ipam = base / "cni" / "ipam"
        reset_dir(ipam)
        # With the router plugin enabled, it writes the node's config here
        # (--cni-conf-dir); the kubelet waits for it.
        if not self.router:
            write_conf(conf_dir, LAB_CONF, bridge_conflist(pod_cidr=self.spec.pod_cidr(i),
                                                           data_dir=ipam))
        elif self.original:
            # The original fills in the pod CIDR of a file it expects installed already.
            original.write_cni_template(conf_dir, ipam)
        return conf_dir

    def _start_peers(self) -> None:
        if not self.spec.peers:
            return
        try:
            from kube_router_lab.peers import start_peer
        except ImportError as exc:
            self.log(f"event=peers_unavailable error={exc}")
            return
        node_ips = [h.ip for h in self.topology.nodes]
        for peer, host in zip(self.spec.peers, self.topology.peers, strict=True):
            pdir = self.workdir / "peers" / peer.name
            pdir.mkdir(parents=True, exist_ok=True)
            self.peers[peer.name] = start_peer(peer, netns=host.netns, ip=host.ip,
                                               node_ips=node_ips, cluster_asn=CLUSTER_ASN,
                                               workdir=pdir)
            self.log(f"event=peer_started name={peer.name} software={peer.software} "
                     f"ip={host.ip} asn={peer.asn}")

    def _agent_extra_args(self) -> list[str]:
        extra: list[str] = []
        if self.router and self.spec.peers:
            extra += ["--peer-router-ips", ",".join(h.ip for h in self.topology.peers),
                      "--peer-router-asns", ",".join(str(p.asn) for p in self.spec.peers)]
            if any(p.password for p in self.spec.peers):
                # kube-router's form: base64, positional, empty for a peer without one
                extra += ["--peer-router-passwords", ",".join(
                    base64.b64encode(p.password.encode()).decode() if p.password else ""
                    for p in self.spec.peers)]
        return extra + list(self.spec.agent_args)

    def _start_agents(self) -> None:
        if not self.enable:
            return
        extra = self._agent_extra_args()
        for h in self.topology.nodes:
            cni = self.workdir / h.name / "cni"
            if self.original:
                self.agents[h.name] = self._original_agent(h, cni, extra)
                continue
            node_extra = (["--cni-conf-dir", str(cni / "net.d"),
                           "--cni-ipam-data-dir", str(cni / "ipam")] if self.router else [])
            argv = agent_argv(node=h.name, netns=h.netns, enable=self.enable,
                              kubeconfig=self.kubeconfig, extra=[*node_extra, *extra])
            if self.control is not None:
                # As the DaemonSet runs it: the pod's service account and --master.
                at = argv.index("--kubeconfig")
                argv[at:at + 2] = ["--master", self.control.url]
            spec = AgentSpec(
                node=h.name, netns=h.netns, ip=h.ip,
                argv=tuple(argv),
                env=(("NODE_NAME", h.name), ("PYTHONUNBUFFERED", "1"),
                     *sorted(self.agent_env.items())),
                log_path=self.workdir / h.name / "agent.log")
            self.agents[h.name] = Agent(spec, log=self.log)
        # Popen returns at once: the agents' slow Python start-ups overlap.
        for a in self.agents.values():
            a.start()

    def _original_agent(self, h: Any, cni: Path, extra: list[str]) -> Agent:
        log_path = self.workdir / h.name / "agent.log"
        cni_file = cni / "net.d" / original.CNI_FILE if self.router else None
        spec = AgentSpec(
            node=h.name, netns=h.netns, ip=h.ip,
            argv=tuple(original.argv(node=h.name, netns=h.netns, enable=self.enable,
                                     kubeconfig=self.kubeconfig,
                                     service_cidr=self.spec.service_cidr,
                                     health_port=HEALTH_PORT, extra=extra)),
            env=(("NODE_NAME", h.name),
                 *original.env(workdir=self.workdir, cni_file=cni_file)),
            log_path=log_path)
        agent = Agent(spec, log=self.log)
        agent.quiet = original.Quiet(log_path, h.ip, HEALTH_PORT)
        return agent

    def down(self) -> None:
        with ThreadPoolExecutor(max_workers=max(1, len(self.agents))) as pool:
            list(pool.map(lambda a: a.stop(), self.agents.values()))
        self.agents.clear()
        for name, peer in list(self.peers.items()):
            try:
                peer.stop()
            except Exception as exc:
                self.log(f"event=peer_stop_failed name={name} error={exc}")
        self.peers.clear()
        pod_netns = []
        for k in self.kubelets.values():
            k.stop(teardown=False)
            pod_netns += k.pod_namespaces()
        self.kubelets.clear()
        self.servers.stop()
        self.controllers.stop()
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.heartbeats is not None:
            self.heartbeats.stop()
            self.heartbeats = None
        if self.control is not None:
            self.control.stop()
        if self._up:
            self.topology.down(extra_netns=pod_netns)
            self._up = False

    def __enter__(self) -> Lab:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    # -- changing the API ----------------------------------------------------------

    def apply(self, docs: list[dict]) -> None:
        """Apply every document like kubectl; a bad one is reported and skipped, and the
        call raises at the end naming all of them."""
        failed = []
        for doc in docs:
            if doc is None:
                continue
            what = _describe(doc)
            try:
                if not isinstance(doc, dict):
                    raise LabError("not a mapping")
                self.store.apply(doc)
            except (ApiError, LabError) as exc:
                self.log(f"event=apply_failed object={what} error={exc}")
                failed.append(f"{what}: {exc}")
        if failed:
            raise LabError("apply failed for " + "; ".join(failed))

    def delete(self, kind: str, namespace: str | None, name: str) -> None:
        if kind == "Pod" and self.control is not None:
            # The API server marks it terminating; its kubelet ends it after the grace.
            self.control.store.delete("Pod", namespace or "default", name, grace=self.grace)
            return
        if kind == "Pod":
            if self.store.get("Pod", namespace or "default", name) is None:
                raise ApiError(404, "NotFound", f'pods "{name}" not found')
            self.controllers.delete_pod(namespace or "default", name)
            return
        self.store.delete(kind, namespace, name)

    def annotate(self, kind: str, namespace: str | None, name: str,
                 changes: dict[str, str | None]) -> None:
        self.store.patch(kind, namespace, name, {"metadata": {"annotations": dict(changes)}})

    def resource_version(self) -> str:
        """What a wait step waits for: the newest change of each kind, ``Kind=rv,...``."""
        if self.control is not None:
            return self.control.store.resource_version()
        return make_token(self.store.last_changes())

    # -- waiting ---------------------------------------------------------------------

    def settle(self, timeout: float = 60.0) -> bool:
        """Wait until every pod bound to a node runs with an IP and the controllers and
        kubelets have nothing queued; False on timeout."""
        deadline = time.monotonic() + timeout
        if self.control is not None:
            return self._settle_real(deadline)
        while time.monotonic() < deadline:
            if self.controllers.wait_idle(max(0.0, deadline - time.monotonic())) and all(
                    k.idle() for k in self.kubelets.values()):
                pods, _ = self.store.list("Pod")
                if all((p.get("status") or {}).get("podIP") or
                       (p.get("metadata") or {}).get("deletionTimestamp") or
                       (p.get("spec") or {}).get("nodeName") not in self.kubelets
                       for p in pods):
                    return True
            time.sleep(0.05)
        return False

    def _settle_real(self, deadline: float) -> bool:
        from kube_router_lab.realcp.gate import not_settled

        assert self.control is not None
        reason: str | None = "not checked"
        while time.monotonic() < deadline:
            if all(k.idle() for k in self.kubelets.values()):
                reason = not_settled(self.control.store, set(self.kubelets))
                if reason is None:
                    return True
            time.sleep(0.2)
        self.log(f"event=not_settled reason={reason}")
        return False

    def unsynced(self, resource_version: str) -> dict[str, str]:
        """Node -> reason for every agent that has not applied ``resource_version``."""
        if not self.agents:
            return {}
        with ThreadPoolExecutor(max_workers=len(self.agents)) as pool:
            docs = dict(zip(self.agents, pool.map(
                lambda a: a.quiet.reason(resource_version) if a.quiet else a.readiness(),
                self.agents.values()), strict=True))
        out = {}
        for node, doc in docs.items():
            if self.agents[node].quiet:
                if doc:
                    out[node] = doc
                continue
            placed = (self.control.store.placed if self.control is not None
                      else self.store.placed)
            reason = unsynced_reason(doc, resource_version, placed)
            if reason:
                out[node] = reason
        return out

    # -- where things are ------------------------------------------------------------

    def netns(self, where: str) -> str | None:
        if where == "host":
            return None
        if "/" in where:
            namespace, name = where.split("/", 1)
            for k in self.kubelets.values():
                found = k.pod_netns(namespace, name)
                if found:
                    return found
            raise KeyError(f"pod {where} is not running on any node")
        return self.topology.host(where).netns

    def substitute(self, key: str) -> str:
        return substitute(key, self.store.get, lambda node: self.topology.host(node).ip)

    def run(self, where: str, argv: list[str], timeout: float = 30.0) -> tuple[int, str, str]:
        # LAB_WORKDIR lets a command read what the lab keeps there (NODE/agent.log,
        # peers/NAME/), e.g. to show that an agent's log never holds a peer's password.
        # LAB_KUBE_ROUTER_PY: the agents' own command, for `status` and the like.
        env = {**os.environ, "LAB_WORKDIR": str(self.workdir),
               "LAB_KUBE_ROUTER_PY": agent_executable()}
        return ns.run_in(self.netns(where), argv, timeout=timeout, env=env)

    def restart(self, target: str, node: str | None = None, signal: str = "TERM",
                down: float | None = None, cleanup: bool = False) -> None:
        if target == "apiserver" and self.control is not None:
            self.control.restart_apiserver(down or 0.0)
            return
        if cleanup and target != "agent":
            raise LabError("only an agent's restart can clean up")
        if target == "apiserver":
            if self.server is None:
                raise LabError("the API server is not running")
            self.server.stop()
            self.log(f"event=apiserver_stopped down={down or 0:g}")
            time.sleep(down or 0.0)
            self.server.start()
            self.log("event=apiserver_started")
            return
        nodes = [node] if node else list(self.kubelets)
        for n in nodes:
            self.topology.host(n)  # a clear KeyError for an unknown node
        if target == "agent":
            for n in nodes:
                if n not in self.agents:
                    raise LabError(f"no agent runs on {n}")
                self.agents[n].restart(signal, down, cleanup=cleanup)
        elif target == "gobgpd":
            for n in nodes:
                pids = signal_gobgpd(self.topology.host(n).netns, signal)
                if not pids:
                    raise LabError(f"no gobgpd runs on {n}")
                self.log(f"event=gobgpd_signalled node={n} signal={signal} "
                         f"pids={','.join(map(str, pids))}")
        else:
            raise LabError(f"unknown restart target {target!r} (agent, gobgpd, apiserver)")

    def reach(self, src: str, target: str, timeout: float = 1.0) -> bool:
        """One TCP or SCTP connection carrying an HTTP GET, or one UDP datagram, from pod
        (or node) ``src`` to ``target``; True when whats-my-ip (or anything) answers."""
        where = self.netns(src)
        addr, port, proto = self._target(target)
        s = proto_socket(where, proto)  # made in the source namespace
        try:
            s.settimeout(timeout)
            deadline = time.monotonic() + timeout
            if proto == "UDP":
                s.sendto(b"ping\n", (addr, port))
                data, _ = s.recvfrom(4096)
                return bool(data)
            s.connect((addr, port))
            s.sendall(f"GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n".encode())
            data = b""
            while time.monotonic() < deadline:
                s.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    chunk = s.recv(4096)
                except TimeoutError:
                    break
                if not chunk:
                    break
                data += chunk
            return b"HOSTNAME:" in data or data.startswith(b"HTTP/")
        except OSError:
            return False
        finally:
            s.close()

    def _target(self, target: str) -> tuple[str, int, str]:
        """(address, port, protocol) of ``NS/POD:PORT[/proto]`` or ``svc:NS/NAME:PORT[/proto]``;
        a pod's PORT may be the name one of its containerPorts declares."""
        body, _, suffix = _split_proto(target)
        proto = suffix.upper() if suffix else "TCP"
        ref, _, port_s = body.rpartition(":")
        if not ref or not port_s:
            raise KeyError(f"reach target {target!r}: expected NS/POD:PORT[/udp|/sctp] or "
                           "svc:NS/NAME:PORT[/udp|/sctp]")
        if ref.startswith("svc:"):
            if not port_s.isdigit():
                raise KeyError(f"reach target {target!r}: a Service's port is a number")
            return self.substitute(ref), int(port_s), proto
        addr = self.substitute(f"pod:{ref}")
        if port_s.isdigit():
            return addr, int(port_s), proto
        namespace, _, name = ref.partition("/")
        number = resolve_target_port(self.store.get("Pod", namespace, name) or {}, port_s,
                                     proto)
        if number is None:
            raise KeyError(f"reach target {target!r}: pod {ref} declares no {proto} port "
                           f"named {port_s!r}")
        return addr, number, proto

    # -- when a step fails -------------------------------------------------------------

    def diagnostics(self, say: Callable[[str], None]) -> None:
        """Show the last lines of every agent's log, then each running agent's threads.

        The guest and its files go when the run ends: what the agents said is only kept
        if it is in the transcript. A stuck agent shows where it is stuck.
        """
        ends: dict[str, int] = {}
        for name, agent in self.agents.items():
            path = agent.spec.log_path
            text = tail(path, FAILURE_LOG_LINES)
            if text:
                say(f"  last lines of {name}'s agent log:")
                for line in text.splitlines():
                    say(f"    {line}")
            with contextlib.suppress(OSError):
                ends[name] = path.stat().st_size
        dumped = [name for name, agent in self.agents.items()
                  if name in ends and agent.dump_stacks()]
        if dumped:
            time.sleep(STACK_DUMP_WAIT)
        for name in dumped:
            with contextlib.suppress(OSError), open(self.agents[name].spec.log_path,
                                                    "rb") as f:
                f.seek(ends[name])
                stacks = f.read(STACK_DUMP_BYTES).decode(errors="replace")
                say(f"  {name}'s agent threads:")
                for line in stacks.splitlines():
                    say(f"    {line}")


def _split_proto(target: str) -> tuple[str, str, str]:
    """``x/a:80/udp`` -> (``x/a:80``, ``/``, ``udp``); no protocol suffix -> TCP."""
    for suffix in ("/udp", "/tcp", "/sctp"):
        if target.endswith(suffix):
            return target[: -len(suffix)], "/", suffix[1:]
    return target, "", ""


def _describe(doc: Any) -> str:
    if not isinstance(doc, dict):
        return repr(doc)[:60]
    m = doc.get("metadata") or {}
    ns_ = m.get("namespace")
    return f"{doc.get('kind', '?')} {ns_ + '/' if ns_ else ''}{m.get('name', '?')}"
