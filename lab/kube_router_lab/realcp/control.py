"""The real control plane of one lab run, behind the few methods the lab uses.

Layout of its directory: ``pki/`` (CA, certificates, service account key), ``etcd/`` (its
data), ``*.log`` (each program's output), ``*.kubeconfig`` (the lab's, the controller
manager's, the scheduler's).
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from kube_router_lab.realcp import binaries
from kube_router_lab.realcp.pki import Pki
from kube_router_lab.realcp.pki import kubeconfig
from kube_router_lab.realcp.processes import Process
from kube_router_lab.realcp.processes import ProcessError
from kube_router_lab.realcp.processes import http_ok
from kube_router_lab.realcp.processes import wait_until
from kube_router_lab.realcp.remote import RemoteStore
from kube_router_lab.spec import ClusterSpec

API_PORT = 6443
ETCD_PORT = 2379
#: Where a pod finds its service account (the Kubernetes client's fixed paths).
SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
#: The kinds the lab follows: the kubelets need Pods, the convergence gate the others.
WATCHED = ("Pod", "Service", "EndpointSlice", "Node", "Namespace", "NetworkPolicy")
#: On a machine shared with other heavy jobs kube-apiserver took over 120 s to be ready.
START_TIMEOUT = 300.0
HOSTNAME = "lab-control-plane"


class RealControlPlane:
    kind = "real"

    def __init__(self, spec: ClusterSpec, *, workdir: Path,
                 log: Callable[[str], None] = print) -> None:
        self.spec = spec
        self.dir = Path(workdir) / "control-plane"
        self.log = log
        self.bins = binaries.find()
        self.version = binaries.version()
        self.pki = Pki(self.dir / "pki")
        self.host = spec.apiserver_ip()
        self.url = f"https://{self.host}:{API_PORT}"
        self.procs: list[Process] = []
        self.store: RemoteStore | None = None
        self.apiserver: Process | None = None
        self.kubeconfig = self.dir / "lab.kubeconfig"

    # -- starting ---------------------------------------------------------------------

    def start(self) -> None:
        started = time.monotonic()
        self.dir.mkdir(parents=True, exist_ok=True)
        self._certificates()
        self._etcd()
        self._apiserver()
        admin = self.pki.issue("lab-admin", cn="kube-router-lab", org="system:masters")
        kubeconfig(self.kubeconfig, server=self.url, ca=self.pki.ca.cert, client=admin,
                   user="kube-router-lab")
        self.store = RemoteStore(self.url, ca=str(self.pki.ca.cert), cert=str(admin.cert),
                                 key=str(admin.key), watch_kinds=WATCHED,
                                 pod_grace=self.spec.termination.grace)
        self._controller_manager()
        self._scheduler()
        self.store.start()
        self.log(f"event=control_plane_up kind=real version={self.version} url={self.url} "
                 f"seconds={time.monotonic() - started:.1f}")

    def _certificates(self) -> None:
        self.pki.make_ca()
        svc_ip = self.spec.kubernetes_service_ip()
        names = ("kubernetes", "kubernetes.default", "kubernetes.default.svc",
                 "kubernetes.default.svc.cluster.local", "localhost")
        self.serving = self.pki.issue("apiserver", cn="kube-apiserver", server=True,
                                      ips=(self.host, svc_ip, "127.0.0.1"), dns=names)

    def _run(self, name: str, argv: list[str]) -> Process:
        # In a host name of its own: the guest has none ("(none)"), and kube-apiserver puts
        # its host name in a label of its identity Lease, which that value fails, so
        # /readyz never passes.
        argv = ["unshare", "--uts", "--", "sh", "-c", 'hostname "$0" && exec "$@"',
                HOSTNAME, *argv]
        p = Process(name, argv, self.dir / f"{name}.log")
        p.start()
        self.procs.append(p)
        return p

    def _etcd(self) -> None:
        client = f"http://127.0.0.1:{ETCD_PORT}"
        peer = f"http://127.0.0.1:{ETCD_PORT + 1}"
        p = self._run("etcd", [
            str(self.bins["etcd"]), "--name", "lab", "--data-dir", str(self.dir / "etcd"),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"lab={peer}", "--unsafe-no-fsync", "--log-level", "warn"])
        took = wait_until(http_ok(f"{client}/health"), "healthy", p, START_TIMEOUT)
        self.log(f"event=etcd_up seconds={took:.1f}")

    def _apiserver(self) -> None:
        pki = self.pki
        p = self._run("kube-apiserver", [
            str(self.bins["kube-apiserver"]),
            f"--etcd-servers=http://127.0.0.1:{ETCD_PORT}",
            f"--bind-address={self.host}", f"--advertise-address={self.host}",
            f"--secure-port={API_PORT}",
            f"--tls-cert-file={self.serving.cert}", f"--tls-private-key-file={self.serving.key}",
            f"--client-ca-file={pki.ca.cert}",
            f"--service-cluster-ip-range={self.spec.service_cidr}",
            "--authorization-mode=Node,RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            "--allow-privileged=true", "--profiling=false", "--v=1",
        ])
        self.apiserver = p
        took = self._wait_apiserver_ready()
        self.log(f"event=apiserver_up version={self.version} seconds={took:.1f}")

    def _wait_apiserver_ready(self) -> float:
        """Seconds until kube-apiserver's /readyz passes. It exits by design when a start-up
        hook times out (etcd too slow to answer on a loaded machine); as a kubelet restarts
        a static pod that exits, the lab starts it again, within START_TIMEOUT in all."""
        assert self.apiserver is not None
        ca = {"ca_certs": str(self.pki.ca.cert), "cert_reqs": "CERT_REQUIRED"}
        # /readyz needs credentials once RBAC is on: ask as the lab's administrator.
        admin = self.pki.issue("probe", cn="kube-router-lab-probe", org="system:masters")
        ready = http_ok(f"{self.url}/readyz", cert_file=str(admin.cert),
                        key_file=str(admin.key), **ca)
        started = time.monotonic()
        while True:
            left = START_TIMEOUT - (time.monotonic() - started)
            try:
                wait_until(ready, "ready", self.apiserver, max(left, 1.0))
                return time.monotonic() - started
            except ProcessError:
                if self.apiserver.alive() or left <= 10:
                    raise
            self.log(f"event=apiserver_exited rc={self.apiserver.returncode()} "
                     f"after={time.monotonic() - started:.1f} restarting=true")
            self.apiserver.start()

    def restart_apiserver(self, down: float) -> float:
        """Stop kube-apiserver (SIGTERM, as a rolling control-plane update does), keep it
        down ``down`` s, start it again with the same flags; the seconds it took to be
        ready. etcd keeps running, so the data stays; the new server's watch cache starts
        empty at etcd's current revision, and a watch from an older version gets 410."""
        if self.apiserver is None:
            raise RuntimeError("kube-apiserver is not running")
        self.apiserver.stop()
        self.log(f"event=apiserver_stopped down={down:g}")
        time.sleep(down)
        self.apiserver.start()
        took = self._wait_apiserver_ready()
        self.log(f"event=apiserver_started seconds={took:.1f}")
        return took

    def _component_kubeconfig(self, name: str, user: str) -> Path:
        pair = self.pki.issue(name, cn=user)
        return kubeconfig(self.dir / f"{name}.kubeconfig", server=self.url,
                          ca=self.pki.ca.cert, client=pair, user=user)

    def _controller_manager(self) -> None:
        kc = self._component_kubeconfig("controller-manager", "system:kube-controller-manager")
        mask = 24 if ipaddress.ip_network(self.spec.cluster_cidr).prefixlen < 24 else \
            ipaddress.ip_network(self.spec.cluster_cidr).prefixlen
        self._run("kube-controller-manager", [
            str(self.bins["kube-controller-manager"]), f"--kubeconfig={kc}",
            "--leader-elect=false", "--use-service-account-credentials=true",
            f"--service-account-private-key-file={self.pki.sa_key}",
            f"--root-ca-file={self.pki.ca.cert}",
            "--allocate-node-cidrs=true", f"--cluster-cidr={self.spec.cluster_cidr}",
            f"--node-cidr-mask-size={mask}",
            f"--service-cluster-ip-range={self.spec.service_cidr}",
            "--controllers=*", "--secure-port=0", "--v=1",
        ])

    def _scheduler(self) -> None:
        kc = self._component_kubeconfig("scheduler", "system:kube-scheduler")
        self._run("kube-scheduler", [
            str(self.bins["kube-scheduler"]), f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
            "--leader-elect=false", "--secure-port=0", "--v=1",
        ])

    # -- the agents' identity ------------------------------------------------------------

    def install_agent_identity(self, manifest: Path) -> dict[str, str]:
        """Apply the DaemonSet manifest's ServiceAccount and RBAC, put a token of that
        account and the CA where a pod of the DaemonSet finds them, and return the
        environment the kubelet would give it."""
        assert self.store is not None
        account: dict[str, Any] | None = None
        for doc in yaml.safe_load_all(manifest.read_text()):
            if not isinstance(doc, dict):
                continue
            if doc.get("kind") in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                                   "Role", "RoleBinding"):
                self.store.apply(doc)
                if doc["kind"] == "ServiceAccount":
                    account = doc
        if account is None:
            raise RuntimeError(f"{manifest}: no ServiceAccount to run the agents as")
        ns_ = account["metadata"].get("namespace") or "default"
        name = account["metadata"]["name"]
        token = self.store.request(
            "POST", self.store.path("ServiceAccount", ns_, name, "token"),
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
             "spec": {"expirationSeconds": 86400}})["status"]["token"]
        if not os.environ.get("KUBE_ROUTER_LAB_OUT"):
            # Only the guest's /run is the lab's own; never write a host's.
            raise RuntimeError("the agents' service account files need the lab's guest")
        SA_DIR.mkdir(parents=True, exist_ok=True)
        (SA_DIR / "token").write_text(token)
        (SA_DIR / "ca.crt").write_bytes(self.pki.ca.cert.read_bytes())
        (SA_DIR / "namespace").write_text(ns_)
        self.log(f"event=agent_identity serviceaccount={ns_}/{name} dir={SA_DIR}")
        return {"KUBERNETES_SERVICE_HOST": self.spec.kubernetes_service_ip(),
                "KUBERNETES_SERVICE_PORT": "443"}

    # -- stopping -------------------------------------------------------------------------

    def stop(self) -> None:
        if self.store is not None:
            self.store.stop()
        for p in reversed(self.procs):
            p.stop()
        self.procs.clear()

    def logs(self) -> dict[str, str]:
        return {p.name: p.tail() for p in self.procs}
