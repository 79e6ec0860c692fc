"""The scenario backend for a real cluster made by kind: Kubernetes nodes in containers.

Everything a scenario does goes where it would on any cluster: objects through the API
(server-side apply), commands on a node through ``docker exec`` into its container (or, for
the agent's tools the node lacks, such as ``ipvsadm`` and ``gobgp``, in the agent's pod on that
node, which shares the node's network), commands in a pod and ``reach`` through a client
container added to that pod (an ephemeral container: the pod's own address and labels, so
NetworkPolicies see the pod). The cluster, the image and the DaemonSet are made by the caller
(``tests/e2e``); this adapter only drives a scenario on them.

The lab's names map onto the kind cluster: ``node-I`` is the node holding the I-th /24 of
the cluster CIDR (so the scenarios' pod CIDRs hold), ``image: whats-my-ip`` the real image.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import subprocess
import time
from collections.abc import Callable
from collections.abc import Iterator
from typing import Any

from kube_router_lab.backend import reach_target
from kube_router_lab.backend import substitute
from kube_router_lab.realcp.remote import RemoteStore
from kube_router_lab.spec import ClusterSpec
from kube_router_lab.versions import unsynced_reason

WHATSMYIP_IMAGE = "cloudnativelabs/whats-my-ip"
AGENT_SELECTOR = "k8s-app=kube-router-py"
AGENT_NAMESPACE = "kube-system"
AGENT_CONTAINER = "kube-router-py"
HEALTH_PORT = 20244
CLIENT_CONTAINER = "lab-client"
FIELD_MANAGER = "kube-router-lab"
#: The kinds whose newest change a wait step waits for every agent to have applied.
GATE_KINDS = ("Pod", "Service", "EndpointSlice", "Node", "Namespace", "NetworkPolicy")
#: What a reach probe runs in the client container: the lab's own probe (one HTTP GET or
#: one UDP datagram), exit 0 when something answered.
REACH_PROBE = r"""
import socket, sys, time
addr, port, udp, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
s.settimeout(timeout)
try:
    if udp:
        s.sendto(b"ping\n", (addr, port))
        sys.exit(0 if s.recvfrom(4096)[0] else 1)
    s.connect((addr, port))
    s.sendall(b"GET / HTTP/1.0\r\nHost: " + addr.encode() + b"\r\n\r\n")
    data, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    sys.exit(0 if b"HOSTNAME:" in data or data.startswith(b"HTTP/") else 1)
except OSError:
    sys.exit(1)
"""


class KindError(RuntimeError):
    pass


def node_names_by_cidr(spec: ClusterSpec, nodes: list[dict]) -> dict[str, str]:
    """Lab node name -> kind node name: ``node-I`` is the node whose pod CIDR is the I-th
    /24 of the scenario's cluster CIDR; nodes with other CIDRs fill the rest in name order."""
    by_cidr = {(n.get("spec") or {}).get("podCIDR"): n["metadata"]["name"] for n in nodes}
    out: dict[str, str] = {}
    for i in range(spec.nodes):
        name = by_cidr.get(spec.pod_cidr(i))
        if name:
            out[spec.node_name(i)] = name
    rest = sorted(n["metadata"]["name"] for n in nodes if n["metadata"]["name"]
                  not in out.values())
    for i in range(spec.nodes):
        if spec.node_name(i) not in out and rest:
            out[spec.node_name(i)] = rest.pop(0)
    if len(out) < spec.nodes:
        raise KindError(f"the scenario needs {spec.nodes} nodes, the cluster has {len(nodes)}")
    return out


def translate(doc: dict, nodes: dict[str, str], image: str = WHATSMYIP_IMAGE) -> dict:
    """A scenario's object as the real cluster needs it: lab node names become the kind
    nodes', the lab's ``whats-my-ip`` image the real one."""
    doc = copy.deepcopy(doc)
    for pod_spec in _pod_specs(doc):
        if pod_spec.get("nodeName") in nodes:
            pod_spec["nodeName"] = nodes[pod_spec["nodeName"]]
        for c in pod_spec.get("containers") or []:
            if c.get("image") == "whats-my-ip":
                c["image"] = image
    return doc


def _pod_specs(doc: dict) -> Iterator[dict]:
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        return
    if doc.get("kind") == "Pod":
        yield spec
    template = (spec.get("template") or {}).get("spec")
    if isinstance(template, dict):
        yield template


def gate_watch(cfg: Any) -> RemoteStore:
    """The lab's own list-and-watch of the cluster's kinds, which the convergence gate
    (:mod:`kube_router_lab.versions`) takes each kind's newest change from and places the
    agents' versions with, never reading one as a number. It signs in with the client
    certificate of ``cfg``, the kubeconfig's client configuration (the client writes
    inline certificates to files)."""
    if not (cfg.cert_file and cfg.key_file):
        raise KindError("the kubeconfig's user has no client certificate, which the lab's "
                        "watch of the cluster signs in with")
    return RemoteStore(cfg.host, ca=cfg.ssl_ca_cert or "", cert=cfg.cert_file,
                       key=cfg.key_file, watch_kinds=GATE_KINDS)


class KindCluster:
    """One scenario's view of a kind cluster (see the module's docstring)."""

    def __init__(self, spec: ClusterSpec, *, kubeconfig: str,
                 log: Callable[[str], None] = print, docker: str = "docker") -> None:
        self.spec = spec
        self.kubeconfig = kubeconfig
        self.log = log
        self.docker = docker
        self.nodes: dict[str, str] = {}  # lab name -> kind node (= container) name
        self.applied: list[tuple[str, str, str | None, str]] = []
        self._has: dict[tuple[str, str], bool] = {}
        self.versions: RemoteStore | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def up(self) -> None:
        from kubernetes import client
        from kubernetes import config as kconfig
        from kubernetes import dynamic

        self.api = kconfig.new_client_from_config(config_file=self.kubeconfig)
        # Any: the models type every field Optional, and the API fills what is read here
        self.core: Any = client.CoreV1Api(self.api)
        self.dyn = dynamic.DynamicClient(self.api)
        nodes = self.api.sanitize_for_serialization(self.core.list_node().items)
        self.nodes = node_names_by_cidr(self.spec, nodes)
        self.log("nodes " + ", ".join(f"{k}={v}" for k, v in sorted(self.nodes.items())))
        self.versions = gate_watch(self.api.configuration)
        self.versions.start()

    def down(self) -> None:
        """Delete what the scenario applied, newest first, so the next one starts clean."""
        for api_version, kind, namespace, name in reversed(self.applied):
            try:
                self._resource(api_version, kind).delete(name=name, namespace=namespace)
            except Exception as exc:  # gone already, or the cluster is: say so, go on
                self.log(f"event=cleanup_failed object={kind} {namespace}/{name} error={exc}")
        self.applied.clear()
        if self.versions is not None:
            self.versions.stop()
            self.versions = None

    # -- the API ------------------------------------------------------------------------

    def _resource(self, api_version: str, kind: str) -> Any:
        return self.dyn.resources.get(api_version=api_version, kind=kind)

    def _find(self, kind: str) -> Any:
        return self.dyn.resources.get(kind=kind)

    def apply(self, docs: list[dict]) -> None:
        failed = []
        for doc in docs:
            doc = translate(doc, self.nodes)
            meta = doc.get("metadata") or {}
            namespace = meta.get("namespace") or (
                None if doc["kind"] in ("Namespace", "Node") else "default")
            try:
                self._resource(doc["apiVersion"], doc["kind"]).server_side_apply(
                    body=doc, name=meta["name"], namespace=namespace,
                    field_manager=FIELD_MANAGER, force_conflicts=True)
            except Exception as exc:
                failed.append(f"{doc['kind']} {meta.get('name')}: {exc}")
                continue
            key = (doc["apiVersion"], doc["kind"], namespace, meta["name"])
            if key not in self.applied:
                self.applied.append(key)
        if failed:
            raise KindError("apply failed for " + "; ".join(failed))

    def delete(self, kind: str, namespace: str | None, name: str) -> None:
        self._find(kind).delete(name=name, namespace=namespace)

    def annotate(self, kind: str, namespace: str | None, name: str,
                 changes: dict[str, str | None]) -> None:
        self._find(kind).patch(name=name, namespace=namespace,
                               body={"metadata": {"annotations": dict(changes)}},
                               content_type="application/merge-patch+json")

    def _get(self, kind: str, namespace: str | None, name: str) -> dict | None:
        from kubernetes.dynamic.exceptions import NotFoundError

        try:
            return self._find(kind).get(name=name, namespace=namespace).to_dict()
        except NotFoundError:
            return None

    def resource_version(self) -> str:
        """What a wait step waits for: the newest change of each kind, ``Kind=rv,...``."""
        assert self.versions is not None, "the cluster is not up"
        return self.versions.resource_version()

    def settle(self, timeout: float = 60.0) -> bool:
        """Every workload's pods exist and run with an IP (or are going away)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pods = self.core.list_pod_for_all_namespaces().items
            deployments = self._find("Deployment").get().to_dict()["items"]
            if all((p.status.pod_ip and p.status.phase == "Running")
                   or p.metadata.deletion_timestamp for p in pods) and all(
                    (d.get("status") or {}).get("readyReplicas", 0)
                    == (d.get("spec") or {}).get("replicas", 1) for d in deployments):
                return True
            time.sleep(1.0)
        return False

    def unsynced(self, resource_version: str) -> dict[str, str]:
        out = {}
        for lab_name, node in self.nodes.items():
            rc, body, err = self._docker_exec(
                node, ["curl", "-s", "--max-time", "3",
                       f"http://127.0.0.1:{HEALTH_PORT}/readyz"], timeout=10)
            try:
                doc: dict | str = json.loads(body) if rc == 0 else (err or f"curl exit {rc}")
            except ValueError:
                doc = f"not JSON: {body[:80]!r}"
            assert self.versions is not None, "the cluster is not up"
            reason = unsynced_reason(doc, resource_version, self.versions.placed)
            if reason:
                out[lab_name] = reason
        return out

    # -- where things are -------------------------------------------------------------

    def node_ip(self, lab_name: str) -> str:
        node = self.core.read_node(self._node(lab_name))
        for a in node.status.addresses or ():
            if a.type == "InternalIP" and ipaddress.ip_address(a.address).version == 4:
                return a.address
        raise KeyError(f"node {lab_name} has no InternalIP")

    def _node(self, lab_name: str) -> str:
        if lab_name not in self.nodes:
            raise KeyError(f"no node {lab_name} (nodes: {', '.join(sorted(self.nodes))})")
        return self.nodes[lab_name]

    def substitute(self, key: str) -> str:
        return substitute(key, self._get, self.node_ip, self._node)

    # -- commands -----------------------------------------------------------------------

    def run(self, where: str, argv: list[str], timeout: float = 30.0) -> tuple[int, str, str]:
        if where == "host":  # outside the cluster: this machine, as the lab's host
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                  check=False)
            return proc.returncode, proc.stdout, proc.stderr
        if "/" in where:
            namespace, name = where.split("/", 1)
            return self._pod_exec(namespace, name, self._client(namespace, name), argv,
                                  timeout)
        node = self._node(where)
        if self._node_has(node, argv[0]):
            return self._docker_exec(node, argv, timeout)
        # the agent's tools (ipvsadm, gobgp, kube-router-py): its pod shares the node's
        # network, so they see what the node sees
        return self._pod_exec(AGENT_NAMESPACE, self._agent_pod(node), AGENT_CONTAINER, argv,
                              timeout)

    def _docker_exec(self, node: str, argv: list[str],
                     timeout: float = 30.0) -> tuple[int, str, str]:
        proc = subprocess.run([self.docker, "exec", node, *argv], capture_output=True,
                              text=True, timeout=timeout, check=False)
        return proc.returncode, proc.stdout, proc.stderr

    def _node_has(self, node: str, program: str) -> bool:
        if (node, program) not in self._has:
            rc, _, _ = self._docker_exec(node, ["sh", "-c", f"command -v {program}"])
            self._has[(node, program)] = rc == 0
        return self._has[(node, program)]

    def _agent_pod(self, node: str) -> str:
        pods = self.core.list_namespaced_pod(
            AGENT_NAMESPACE, label_selector=AGENT_SELECTOR,
            field_selector=f"spec.nodeName={node}").items
        running = [p for p in pods if p.status.phase == "Running"
                   and not p.metadata.deletion_timestamp]
        if not running:
            raise KeyError(f"no agent pod runs on {node}")
        return running[0].metadata.name

    def _client(self, namespace: str, name: str) -> str:
        """Add the client container to the pod once; wait until it runs."""
        pod = self.core.read_namespaced_pod(name, namespace)
        names = {c.name for c in pod.spec.ephemeral_containers or ()}
        if CLIENT_CONTAINER not in names:
            image = self._agent_image()
            self.core.patch_namespaced_pod_ephemeralcontainers(name, namespace, {
                "spec": {"ephemeralContainers": [{
                    "name": CLIENT_CONTAINER, "image": image, "imagePullPolicy": "Never",
                    "command": ["sleep", "infinity"]}]}})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pod = self.core.read_namespaced_pod(name, namespace)
            for s in pod.status.ephemeral_container_statuses or ():
                if s.name == CLIENT_CONTAINER and s.state.running:
                    return CLIENT_CONTAINER
            time.sleep(0.5)
        raise KindError(f"the client container in pod {namespace}/{name} did not start")

    def _agent_image(self) -> str:
        ds = self._find("DaemonSet").get(name="kube-router-py", namespace=AGENT_NAMESPACE)
        return ds.to_dict()["spec"]["template"]["spec"]["containers"][0]["image"]

    def _pod_exec(self, namespace: str, pod: str, container: str, argv: list[str],
                  timeout: float) -> tuple[int, str, str]:
        from kubernetes.stream import stream

        resp = stream(self.core.connect_get_namespaced_pod_exec, pod, namespace,
                      container=container, command=argv, stderr=True, stdin=False,
                      stdout=True, tty=False, _preload_content=False)
        out, err = [], []
        deadline = time.monotonic() + timeout
        while resp.is_open() and time.monotonic() < deadline:
            resp.update(timeout=min(1.0, max(0.01, deadline - time.monotonic())))
            if resp.peek_stdout():
                out.append(resp.read_stdout())
            if resp.peek_stderr():
                err.append(resp.read_stderr())
        if resp.is_open():
            resp.close()
            raise TimeoutError(f"{argv[0]} in {namespace}/{pod} ran past {timeout:g}s")
        rc = resp.returncode
        return (rc if rc is not None else 1), "".join(out), "".join(err)

    # -- restarts and reachability ---------------------------------------------------

    def restart(self, target: str, node: str | None = None, signal: str = "TERM",
                down: float | None = None) -> None:
        if down:
            raise KindError("restart with down: a DaemonSet's pod is replaced at once")
        nodes = [self._node(node)] if node else list(self.nodes.values())
        if target == "agent":
            for n in nodes:
                pod = self._agent_pod(n)
                self.core.delete_namespaced_pod(pod, AGENT_NAMESPACE,
                                                grace_period_seconds=0 if signal == "KILL"
                                                else None)
                self.log(f"event=agent_pod_deleted node={n} pod={pod} signal={signal}")
        elif target == "gobgpd":
            for n in nodes:
                # the node container's own process list: only that node's gobgpd
                rc, _, err = self._docker_exec(n, ["sh", "-c", f"pids=$(pgrep -x gobgpd) && "
                                                               f"kill -{signal} $pids"])
                if rc:
                    raise KindError(f"no gobgpd runs on {n} ({err.strip()})")
        elif target == "apiserver":
            plane = next(n for n in sorted(self.nodes.values()) if "control-plane" in n)
            rc, _, err = self._docker_exec(plane, ["sh", "-c",
                                                     "crictl stop $(crictl ps -q --name "
                                                     "kube-apiserver)"])
            if rc:
                raise KindError(f"stopping the API server failed: {err.strip()}")
        else:
            raise KindError(f"unknown restart target {target!r} (agent, gobgpd, apiserver)")

    def reach(self, src: str, target: str, timeout: float = 1.0) -> bool:
        addr, port, udp = reach_target(target, self.substitute)
        namespace, name = src.split("/", 1)
        rc, _, _ = self._pod_exec(namespace, name, self._client(namespace, name),
                                  ["python3", "-c", REACH_PROBE, addr, str(port),
                                   "1" if udp else "0", str(timeout)], timeout + 10)
        return rc == 0

    def diagnostics(self, say: Callable[[str], None]) -> None:
        for lab_name, node in sorted(self.nodes.items()):
            try:
                pod = self._agent_pod(node)
                text = self.core.read_namespaced_pod_log(pod, AGENT_NAMESPACE, tail_lines=40)
            except Exception as exc:
                say(f"  {lab_name}'s agent log: unavailable ({exc})")
                continue
            say(f"  last lines of {lab_name}'s agent log ({pod}):")
            for line in text.splitlines():
                say(f"    {line}")
