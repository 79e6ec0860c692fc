"""What a kubelet does for its Node on a real control plane: register it, keep its Lease
renewed (the node lifecycle controller marks a node whose Lease goes stale NotReady and
taints it), and post a Ready status now and then."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from kube_router_lab.api.errors import ApiError
from kube_router_lab.realcp.remote import RemoteStore

LEASE_SECONDS = 40
#: A kubelet renews its Lease every quarter of its duration.
RENEW_EVERY = LEASE_SECONDS / 4
STATUS_EVERY = 60.0


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _micro_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())


def node_status(ip: str, name: str) -> dict[str, Any]:
    stamp = _now()
    return {
        "addresses": [{"type": "InternalIP", "address": ip},
                      {"type": "Hostname", "address": name}],
        "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
        "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "message": "lab kubelet is posting ready status",
                        "lastHeartbeatTime": stamp, "lastTransitionTime": stamp}],
        "nodeInfo": {"kubeletVersion": "v0.0.0-lab", "operatingSystem": "linux",
                     "architecture": "amd64", "containerRuntimeVersion": "lab://0",
                     "kernelVersion": "", "osImage": "lab", "kubeProxyVersion": "",
                     "machineID": "", "systemUUID": "", "bootID": ""},
    }


class NodeHeartbeats:
    """Registers the lab's nodes one by one (so node IPAM hands out the pod CIDRs in node
    order) and keeps them alive."""

    def __init__(self, store: RemoteStore, nodes: list[tuple[str, str]], *,
                 log: Callable[[str], None] = print) -> None:
        self.store = store
        self.nodes = nodes  # (name, ip)
        self.log = log
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def register(self, timeout: float = 60.0) -> dict[str, str]:
        """Create every Node, each once the one before has its pod CIDR; return them."""
        cidrs: dict[str, str] = {}
        for name, ip in self.nodes:
            obj = {"apiVersion": "v1", "kind": "Node",
                   "metadata": {"name": name, "labels": {
                       "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                       "kubernetes.io/arch": "amd64"}}}
            try:
                self.store.create(obj)
            except ApiError as exc:
                if exc.code != 409:
                    raise
            # Status and Lease only once the pod CIDR is set: node IPAM queues a Node on every
            # update, and an update seen before its own CIDR patch makes it allocate a second
            # CIDR, release it, and give the next Node the one after (out of order).
            deadline = time.monotonic() + timeout
            while True:
                node = self.store.get("Node", None, name) or {}
                cidr = (node.get("spec") or {}).get("podCIDR")
                if cidr:
                    cidrs[name] = cidr
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"node {name} got no pod CIDR in {timeout:g}s "
                                       "(kube-controller-manager's node IPAM)")
                time.sleep(0.1)
            self._post_status(name, ip)
            self._renew(name)
            self.log(f"event=node_registered node={name} ip={ip} pod_cidr={cidr}")
        return cidrs

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lab-node-heartbeats",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        last_status = time.monotonic()
        while not self._stopping.wait(RENEW_EVERY):
            post = time.monotonic() - last_status >= STATUS_EVERY
            for name, ip in self.nodes:
                try:
                    self._renew(name)
                    # as a kubelet's status loop: post at once when the Node no longer
                    # says Ready (the node lifecycle controller marks it Unknown after
                    # its Lease went stale, as during an API server outage)
                    if post or not self._says_ready(name):
                        self._post_status(name, ip)
                except Exception as exc:  # the next round tries again
                    self.log(f"event=node_heartbeat_failed node={name} error={exc}")
            if post:
                last_status = time.monotonic()

    def _says_ready(self, name: str) -> bool:
        node = self.store.get("Node", None, name) or {}
        return any(c.get("type") == "Ready" and c.get("status") == "True"
                   for c in (node.get("status") or {}).get("conditions") or [])

    def _post_status(self, name: str, ip: str) -> None:
        self.store.patch("Node", None, name, {"status": node_status(ip, name)})

    def _renew(self, name: str) -> None:
        spec = {"holderIdentity": name, "leaseDurationSeconds": LEASE_SECONDS,
                "renewTime": _micro_now()}
        try:
            self.store.patch("Lease", "kube-node-lease", name, {"spec": spec})
        except ApiError as exc:
            if exc.code != 404:
                raise
            self.store.create({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                               "metadata": {"name": name, "namespace": "kube-node-lease"},
                               "spec": spec})
