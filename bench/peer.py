"""kube-router-py beside the original kube-router: the same workload on one node, run as
root inside the lab guest.

    python -m bench.peer --n 1000

From the checkout: ``kube-router-py lab exec --mem 3G -- .venv/bin/python -m bench.peer
--n 5000 [--firewall]`` (the original is built first with ``make kube-router-original``).
The original runs here only as a measuring stick; this project does not ship or recommend
it.

Each agent runs as its own process on a clean node (a fresh network namespace: IPVS, the
dummy link, ipsets and iptables start empty), one after the other in the same guest boot,
against the lab's embedded API server serving N Services x 10 endpoints, with only the
service proxy enabled (``--run-service-proxy``, router and firewall off). Measured from
outside the agents, by the kernel's state:
- cold sync: from the agent's start to the complete IPVS table (every service with its 10
  real servers) and every VIP on kube-dummy-if;
- event to kernel: one EndpointSlice update (one endpoint leaves, one joins) written to the
  API server, until that service's real servers in IPVS match, over ``--changes`` changes
  made one at a time: p50 and p99;
- restart: the agent stopped (TERM) and started again over the table it left; the time until
  it reports its first full sync done (ours: /readyz at each kind's newest version; the
  original: its "sync ipvs services took" log line), and every IPVS and address message it
  sent meanwhile, counted on an nlmon link (which sees all netlink traffic of the node);
- RSS: the agent's resident memory once synced (and its peak).
With ``--firewall``, the firewall alone (``--enable firewall``; the original's
``--run-firewall``), 1,000 NetworkPolicies over 5,000 pods in 100 namespaces (the workload of
``bench.firewall_ipset``; every 10th pod on the benchmarked node):
- full sync: from the agent's start to its first full sync reported done (ours: /readyz;
  the original: its "sync iptables took" log line);
- a pod added: a pod of another node, a twin of an existing one (same namespace and labels),
  written to the API server, until its address is in every hash:ip set that holds its twin's
  (tested over netlink): the median of ``--fw-changes`` pods.

The original's every endpoint change and every pod event is a full sync, and its proxy's
full sync starts one ``ip route replace`` process per Service, which in the UML guest costs
hundreds of milliseconds (``ip_route_exec_ms`` says how much in the run). So that a run fits
in a given time: ``--original-cap S`` reports a first sync still running after S seconds as
such (``..._incomplete_after_seconds``, how far it got, and ``..._ratio_at_most``, a bound
on the ratio) instead of failing; ``--original-changes K`` and ``--original-budget S`` make
it fewer changes (``changes_made`` says how many; 0 measures its cold sync alone).

The last line printed is one JSON object: per measure ours, the original's and the ratio
``ours / original`` (``cold_sync_ratio``, ``event_p99_ratio``, ``restart_ratio``,
``rss_ratio``; ``firewall_full_ratio``, ``firewall_pod_add_ratio``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from kube_router_lab import original

ENDPOINTS = 10
NODE = "node-0"
NODE_IP = "192.168.200.1"
SERVICE_RANGE = "10.96.0.0/12"
POD_CIDR = "10.128.0.0/16"
API = "127.0.0.1:6443"
HEALTH_PORT = 20244
OURS, ORIGINAL = "kube-router-py", original.NAME

# nlmon: the netlink tap hands over whole messages; a request carries NLM_F_REQUEST (the
# packet type a packet socket reports on that link does not tell the direction).
NLM_F_REQUEST = 1
NETLINK_ROUTE, NETLINK_GENERIC = 0, 16
RTM_NEWADDR, RTM_DELADDR = 20, 21
PACKET_STATISTICS = 6


def _svc_ip(i: int) -> str:
    return f"10.{96 + i // 65536}.{(i // 256) % 256}.{i % 256}"


def _ep_ip(i: int, j: int) -> str:
    n = i * ENDPOINTS + j
    return f"10.{128 + n // 65536}.{(n // 256) % 256}.{n % 256}"


def service(i: int) -> dict:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": "bench", "name": f"svc-{i}"},
            # With the fields a real API server defaults (the original needs them).
            "spec": {"type": "ClusterIP", "clusterIP": _svc_ip(i), "clusterIPs": [_svc_ip(i)],
                     "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                     "internalTrafficPolicy": "Cluster", "sessionAffinity": "None",
                     "ports": [{"name": "http", "protocol": "TCP", "port": 80,
                                "targetPort": 8080}]}}


def endpoint_slice(i: int, eps: list[int]) -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"namespace": "bench", "name": f"svc-{i}-abc",
                         "labels": {"kubernetes.io/service-name": f"svc-{i}"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [_ep_ip(i, j)], "nodeName": NODE,
                           "conditions": {"ready": True, "serving": True,
                                          "terminating": False}} for j in eps],
            "ports": [{"name": "http", "protocol": "TCP", "port": 8080}]}


def node_object() -> dict:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}},
            "spec": {"podCIDR": POD_CIDR, "podCIDRs": [POD_CIDR]},
            "status": {"addresses": [{"type": "InternalIP", "address": NODE_IP},
                                     {"type": "Hostname", "address": NODE}],
                       "conditions": [{"type": "Ready", "status": "True"}]}}


# -- the node and its API server (inside the phase's namespace) -----------------------------


def _node_link() -> None:
    for argv in (["ip", "link", "set", "lo", "up"],
                 ["ip", "link", "add", "bench-node", "type", "dummy"],
                 ["ip", "addr", "add", f"{NODE_IP}/24", "dev", "bench-node"],
                 ["ip", "link", "set", "bench-node", "up"],
                 ["ip", "route", "add", "default", "via", "192.168.200.254"]):
        subprocess.run(argv, check=True)


def _api(n: int, workdir: Path):
    from kube_router_lab.apiserver import ApiServer
    from kube_router_lab.apiserver import ApiStore

    store = ApiStore()
    for name in ("default", "kube-system", "bench"):
        store.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    store.create(node_object())
    for i in range(n):
        store.create(service(i))
        store.create(endpoint_slice(i, list(range(ENDPOINTS))))
    host, port = API.split(":")
    server = ApiServer(store, host=host, port=int(port))
    server.start()
    kubeconfig = server.write_kubeconfig(workdir / "kubeconfig")
    return store, server, kubeconfig


def agent_argv(agent: str, kubeconfig: Path, role: str = "proxy") -> list[str]:
    common = ["--hostname-override", NODE, "--kubeconfig", str(kubeconfig),
              "--service-cluster-ip-range", SERVICE_RANGE, "--health-port", str(HEALTH_PORT)]
    if agent == OURS:
        exe = Path(sys.executable).parent / "kube-router-py"
        return [str(exe), "run", "--enable", role, *common]
    # The same role alone (the service proxy, or the firewall). -v 1 makes it log the end
    # of each sync, which is how its syncs are timed.
    roles = [f"{flag}={'true' if name == role else 'false'}"
             for name, flag in original.ROLES.items()]
    return [str(original.binary()), *roles, *common, "-v", "1"]


#: The original's log line at the end of a full sync, per role.
DONE_LINE = {"proxy": b"sync ipvs services took", "firewall": b"sync iptables took"}


class Agent:
    def __init__(self, agent: str, kubeconfig: Path, workdir: Path,
                 role: str = "proxy") -> None:
        self.agent = agent
        self.role = role
        self.argv = agent_argv(agent, kubeconfig, role)
        self.workdir = workdir
        self.log_path = workdir / f"{agent}-{role}.log"
        self.env = dict(os.environ)
        if agent == ORIGINAL:
            self.env.update(original.env(workdir=workdir, cni_file=None))
            self.env["NODE_NAME"] = NODE
        self.proc: subprocess.Popen | None = None
        self.log_offset = 0

    def errors(self, limit: int = 5) -> list[str]:
        """The first error lines of its log (klog's "E" lines; our level=error)."""
        lines = self.log_path.read_text(errors="replace").splitlines()
        found = [x for x in lines if x.startswith("E") or "level=error" in x]
        return [x[:300] for x in found[:limit]]

    def reported_syncs(self, limit: int = 5) -> list[str]:
        """How long the original says its first full syncs took (its own log line)."""
        if self.agent != ORIGINAL:
            return []
        found = []
        for line in self.log_path.read_bytes().splitlines():
            _head, sep, took = line.partition(DONE_LINE[self.role])
            if sep:
                found.append(took.decode(errors="replace").strip())
        return found[:limit]

    def mark(self) -> None:
        """Only syncs the log reports from now on count for :meth:`synced`."""
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0

    def start(self) -> float:
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            started = time.monotonic()
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=self.env)
        return started

    def alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise SystemExit(f"{self.agent} exited rc={self.proc.returncode}:\n"
                             + self.log_path.read_text(errors="replace")[-3000:])

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def rss_kib(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) of the agent process in KiB."""
        assert self.proc is not None
        fields = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0])
        return fields["VmRSS"], fields["VmHWM"]

    def synced(self, resource_version: str, placed=None) -> bool:
        """The agent says it finished a full sync since it started."""
        if self.agent == ORIGINAL:
            with open(self.log_path, "rb") as f:
                f.seek(self.log_offset)
                return DONE_LINE[self.role] in f.read()
        import http.client

        from kube_router_lab.versions import unsynced_reason
        conn = http.client.HTTPConnection("127.0.0.1", HEALTH_PORT, timeout=2)
        try:
            conn.request("GET", "/readyz")
            doc = json.loads(conn.getresponse().read())
        except (OSError, ValueError):
            return False
        finally:
            conn.close()
        return unsynced_reason(doc, resource_version, placed) is None


# -- reading the kernel ---------------------------------------------------------------------


def ipvs_counts() -> tuple[int, int]:
    """(virtual services, real servers) from /proc/net/ip_vs: one read of the whole table."""
    services = dests = 0
    with open("/proc/net/ip_vs", "rb") as f:
        for line in f:
            if line.startswith(b"  -> ") and not line.startswith(b"  -> RemoteAddress"):
                dests += 1
            elif line[:3] in (b"TCP", b"UDP"):
                services += 1
    return services, dests


def dummy_addresses() -> int:
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", "kube-dummy-if"],
                         capture_output=True, text=True, check=False).stdout
    return out.count(" inet ")


def wait_table(agent: Agent, n: int, started: float, timeout: float,
               cap: float | None = None) -> dict:
    """Poll the kernel until the table is complete; the poll interval grows with N so the
    reader's own work (a full read of /proc/net/ip_vs) stays a small share of one CPU.
    With ``cap``, a table still incomplete after ``cap`` seconds is reported as such (how
    far it got) instead of failing the run: the cold sync then took longer than ``cap``."""
    interval = max(0.02, n / 50000)
    polls = 0
    ipvs_done = None
    while True:
        agent.alive()
        elapsed = time.monotonic() - started
        if cap is not None and elapsed > cap:
            services, dests = ipvs_counts()
            return {"cold_sync_incomplete_after_seconds": round(elapsed, 1),
                    "ipvs_seconds": None if ipvs_done is None else ipvs_done - started,
                    "at_cap": {"services": services, "real_servers": dests,
                               "vips": dummy_addresses()}}
        if ipvs_done is None:
            services, dests = ipvs_counts()
            polls += 1
            if services >= n and dests >= n * ENDPOINTS:
                ipvs_done = time.monotonic()
        if ipvs_done is not None:
            if dummy_addresses() >= n:
                done = time.monotonic()
                return {"cold_sync_seconds": done - started,
                        "ipvs_seconds": ipvs_done - started,
                        "poll_interval_seconds": interval, "polls": polls}
            if elapsed > timeout:
                raise SystemExit(f"{agent.agent}: VIPs incomplete after {timeout:g}s")
            time.sleep(interval)
            continue
        if elapsed > timeout:
            raise SystemExit(f"{agent.agent}: table incomplete after {timeout:g}s "
                             f"(services={services} dests={dests})\n"
                             + agent.log_path.read_text(errors="replace")[-2000:])
        time.sleep(interval)


def wait_synced(agent: Agent, store, timeout: float) -> float:
    started = time.monotonic()
    from kube_router_lab.versions import make_token
    rv = make_token(store.last_changes())  # the newest change of each kind
    while not agent.synced(rv, store.placed):
        agent.alive()
        if time.monotonic() - started > timeout:
            raise SystemExit(f"{agent.agent}: no completed sync after {timeout:g}s\n"
                             + agent.log_path.read_text(errors="replace")[-2000:])
        time.sleep(0.05)
    return time.monotonic()


class NetlinkTap:
    """Counts the netlink requests every process of this namespace sends to the kernel,
    seen on an nlmon link: IPVS messages by command, and address changes."""

    def __init__(self, ipvs_family: int) -> None:
        self.ipvs_family = ipvs_family
        subprocess.run(["ip", "link", "add", "nlmon0", "type", "nlmon"], check=True)
        subprocess.run(["ip", "link", "set", "nlmon0", "up"], check=True)
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
        self.sock.setsockopt(socket.SOL_SOCKET, 33, 64 * 1024 * 1024)  # SO_RCVBUFFORCE
        self.sock.bind(("nlmon0", 3))  # ETH_P_ALL: every captured message
        self.sock.settimeout(0.2)
        self.counts: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.sock.getsockopt(263, PACKET_STATISTICS, 8)  # reading resets the drop counter
        self._thread.start()

    def _run(self) -> None:
        import kube_router_proxy_ipvs.ipvs_netlink as nl
        names = {nl.CMD_NEW_SERVICE: "ipvs_new_service", nl.CMD_SET_SERVICE: "ipvs_set_service",
                 nl.CMD_DEL_SERVICE: "ipvs_del_service", nl.CMD_NEW_DEST: "ipvs_new_dest",
                 nl.CMD_SET_DEST: "ipvs_set_dest", nl.CMD_DEL_DEST: "ipvs_del_dest",
                 nl.CMD_FLUSH: "ipvs_flush", nl.CMD_SET_CONFIG: "ipvs_set_config"}
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(1 << 20)
            except TimeoutError:
                continue
            proto = addr[1]  # the netlink protocol of the captured message
            off = 0
            while off + 16 <= len(data):
                length, mtype, flags = struct.unpack_from("=IHH", data, off)
                if length < 16:
                    break
                if not flags & NLM_F_REQUEST:
                    pass  # a reply or an ack from the kernel
                elif proto == NETLINK_GENERIC and mtype == self.ipvs_family:
                    cmd = data[off + 16]
                    name = names.get(cmd, "ipvs_read")
                    self.counts[name] = self.counts.get(name, 0) + 1
                elif proto == NETLINK_ROUTE and mtype in (RTM_NEWADDR, RTM_DELADDR):
                    name = "addr_new" if mtype == RTM_NEWADDR else "addr_del"
                    self.counts[name] = self.counts.get(name, 0) + 1
                off += (length + 3) & ~3

    def stop(self) -> dict:
        time.sleep(0.3)  # what the kernel already queued for the socket
        self._stop.set()
        self._thread.join()
        _packets, drops = struct.unpack("=II", self.sock.getsockopt(263, PACKET_STATISTICS, 8))
        self.sock.close()
        subprocess.run(["ip", "link", "del", "nlmon0"], check=False)
        writes = sum(v for k, v in self.counts.items() if k != "ipvs_read")
        return {"restart_ipvs_writes": writes - self.counts.get("addr_new", 0)
                - self.counts.get("addr_del", 0),
                "restart_messages": dict(sorted(self.counts.items())),
                "restart_tap_drops": drops}


def forks() -> int:
    """Processes the guest has created since it booted (/proc/stat): the agents' own
    ``ip``/``iptables``/``ipset`` children show up here."""
    with open("/proc/stat", "rb") as f:
        for line in f:
            if line.startswith(b"processes "):
                return int(line.split()[1])
    return 0


def ip_route_exec_ms(samples: int = 10) -> float:
    """What one ``ip route replace`` process costs on this machine (median, ms): the command
    the original runs for every ClusterIP on every sync, here on a spare address."""
    times = []
    for k in range(samples):
        argv = ["ip", "route", "replace", "local", f"10.255.0.{k + 1}", "dev", "bench-node",
                "table", "local", "proto", "kernel", "scope", "host", "src", NODE_IP]
        t0 = time.perf_counter()
        subprocess.run(argv, check=True)
        times.append(time.perf_counter() - t0)
    for k in range(samples):
        subprocess.run(["ip", "route", "del", "local", f"10.255.0.{k + 1}", "table", "local"],
                       check=False)
    return statistics.median(times) * 1000


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- one agent's run -------------------------------------------------------------------------


def phase(agent_name: str, n: int, changes: int, timeout: float,
          cold_cap: float | None = None, budget: float | None = None) -> dict:
    import kube_router_proxy_ipvs.ipvs_netlink as nl

    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-peer-{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    _node_link()
    store, server, kubeconfig = _api(n, workdir)
    agent = Agent(agent_name, kubeconfig, workdir)
    out: dict = {"agent": agent_name, "ip_route_exec_ms": ip_route_exec_ms()}
    try:
        forks0 = forks()
        started = agent.start()
        out.update(wait_table(agent, n, started, timeout, cold_cap))
        out["processes_started_cold"] = forks() - forks0
        out["log_errors"] = agent.errors()
        out["reported_syncs"] = agent.reported_syncs()
        if "cold_sync_seconds" not in out:
            _say(f"{agent_name}: table incomplete after {cold_cap:g}s: {out['at_cap']}")
            out["rss_kib"], out["rss_peak_kib"] = agent.rss_kib()
            return out
        _say(f"{agent_name}: table complete in {out['cold_sync_seconds']:.2f}s")
        out["first_sync_reported_seconds"] = wait_synced(agent, store, timeout) - started
        time.sleep(1.0)  # what it frees after its first sync
        out["rss_kib"], out["rss_peak_kib"] = agent.rss_kib()

        if changes == 0:
            return out  # asked for its cold sync alone: each change would be a full sync
        latencies = []
        forks0 = forks()
        loop_start = time.monotonic()
        with nl.IPVSSocket() as sock:
            current = {i: list(range(ENDPOINTS)) for i in range(n)}
            for c in range(changes):
                if budget is not None and time.monotonic() - loop_start > budget:
                    break  # the changes made so far are the sample
                i = (c * 7919) % n
                eps = [j for j in current[i] if j != current[i][c % ENDPOINTS]]
                eps.append(ENDPOINTS + c)
                current[i] = eps
                want = {(_ep_ip(i, j), 8080) for j in eps}
                key = nl.service_key(socket.AF_INET, "TCP", _svc_ip(i), 80)
                t0 = time.monotonic()
                store.apply(endpoint_slice(i, eps))
                while True:
                    got = {(d.addr, d.port) for d in sock.dests(key, stats=False)}
                    if got == want:
                        break
                    if time.monotonic() - t0 > timeout:
                        raise SystemExit(f"{agent_name}: change {c} not applied after "
                                         f"{timeout:g}s")
                    time.sleep(0.0005)
                latencies.append(time.monotonic() - t0)
            ipvs_family = sock.family
        out["processes_started_per_change"] = (forks() - forks0) / max(1, len(latencies))
        _say(f"{agent_name}: {len(latencies)} changes applied")
        latencies.sort()
        out["event_p50_ms"] = statistics.median(latencies) * 1000
        out["event_p99_ms"] = latencies[min(len(latencies) - 1,
                                            int(len(latencies) * 0.99))] * 1000
        out["event_max_ms"] = latencies[-1] * 1000
        out["event_samples_ms"] = [round(x * 1000, 1) for x in latencies] \
            if len(latencies) <= 20 else None
        out["changes"] = len(latencies)
        wait_synced(agent, store, timeout)
        out["rss_after_events_kib"] = agent.rss_kib()[0]

        agent.stop()
        before = ipvs_counts()
        tap = NetlinkTap(ipvs_family)
        tap.start()
        started = agent.start()
        out["restart_seconds"] = wait_synced(agent, store, timeout) - started
        time.sleep(1.0)  # anything it still sends right after reporting
        out.update(tap.stop())
        after = ipvs_counts()
        out["restart_table_kept"] = before == after == (n, n * ENDPOINTS)
    finally:
        agent.stop()
        server.stop()
    return out


# -- the firewall workload ------------------------------------------------------------------

FW_POD_CIDR = "10.64.0.0/12"
OTHER_NODE, OTHER_NODE_IP = "node-1", "192.168.200.2"


def fw_pod(i: int, namespaces: int, per_local: int, name: str | None = None,
           ip_index: int | None = None, local: bool | None = None) -> dict:
    """Pod ``i`` of the firewall benchmark's workload (its labels and named ports), as the
    API server holds it; every ``per_local``-th pod runs on the benchmarked node."""
    from bench import firewall_ipset as fw

    if local is None:
        local = i % per_local == 0
    obj = fw._pod(i, f"ns{i % namespaces}", name or f"p{i}", local, ip_index)
    obj.update({"apiVersion": "v1", "kind": "Pod"})
    for key in ("uid", "resourceVersion"):
        obj["metadata"].pop(key)
    obj["spec"]["nodeName"] = NODE if local else OTHER_NODE
    obj["spec"]["containers"][0]["image"] = "bench"
    obj["status"]["hostIP"] = NODE_IP if local else OTHER_NODE_IP
    return obj


def _fw_api(args: argparse.Namespace, workdir: Path):
    from bench import firewall_ipset as fw
    from kube_router_lab.apiserver import ApiServer
    from kube_router_lab.apiserver import ApiStore

    store = ApiStore()
    for name in ("default", "kube-system"):
        store.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    for n in range(args.fw_namespaces):
        store.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": f"ns{n}", "labels": {"team": f"t{n % fw.TEAMS}",
                                         "env": "prod" if n % 3 else "dev"}}})
    for name, ip, cidr in ((NODE, NODE_IP, FW_POD_CIDR),
                           (OTHER_NODE, OTHER_NODE_IP, "10.80.0.0/16")):
        node = node_object()
        node["metadata"] = {"name": name, "labels": {"kubernetes.io/hostname": name}}
        node["spec"] = {"podCIDR": cidr, "podCIDRs": [cidr]}
        node["status"]["addresses"] = [{"type": "InternalIP", "address": ip},
                                       {"type": "Hostname", "address": name}]
        store.create(node)
    for i in range(args.fw_pods):
        store.create(fw_pod(i, args.fw_namespaces, args.fw_pods_per_local))
    for k in range(args.fw_policies):
        pol = fw._policy(k, args.fw_namespaces)
        for key in ("uid", "resourceVersion"):
            pol["metadata"].pop(key)
        # what a real API server defaults (the original writes `--dport` without `-p`
        # otherwise, and iptables-restore refuses its whole batch)
        for rule in [*pol["spec"].get("ingress", ()), *pol["spec"].get("egress", ())]:
            for port in rule.get("ports", ()):
                port.setdefault("protocol", "TCP")
        store.create({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", **pol})
    host, port = API.split(":")
    server = ApiServer(store, host=host, port=int(port))
    server.start()
    return store, server, server.write_kubeconfig(workdir / "kubeconfig")


def _ip_sets_holding() -> dict[str, set[str]]:
    """address -> the hash:ip sets that hold it, from one ``ipset save``."""
    text = subprocess.run(["ipset", "save"], capture_output=True, text=True,
                          check=True).stdout
    kinds: dict[str, str] = {}
    holding: dict[str, set[str]] = {}
    for line in text.splitlines():
        verb, name, rest = [*line.split(" ", 2), "", ""][:3]
        if verb == "create":
            kinds[name] = rest.split(" ", 1)[0]
        elif verb == "add" and kinds.get(name) == "hash:ip":
            holding.setdefault(rest.split(" ", 1)[0], set()).add(name)
    return holding


def _filter_size() -> dict[str, int]:
    text = subprocess.run(["iptables-legacy-save", "-t", "filter"], capture_output=True,
                          text=True, check=False).stdout
    return {"chains": sum(1 for line in text.splitlines() if line.startswith(":")),
            "rules": sum(1 for line in text.splitlines() if line.startswith("-A"))}


def fw_phase(agent_name: str, args: argparse.Namespace, changes: int) -> dict:
    """The firewall alone: from the agent's start to its first full sync reported done
    (ours: /readyz at each kind's newest version; the original: "sync iptables took"), then
    ``changes`` pods of another node added one at a time, each a twin of an existing pod
    (same namespace and labels): from the API write until its address is in every set
    that holds its twin's address."""
    from pyroute2.ipset import IPSet

    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-peer-fw-{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    _node_link()
    store, server, kubeconfig = _fw_api(args, workdir)
    agent = Agent(agent_name, kubeconfig, workdir, role="firewall")
    out: dict = {"agent": agent_name, "policies": args.fw_policies, "pods": args.fw_pods,
                 "local_pods": len(range(0, args.fw_pods, args.fw_pods_per_local))}
    try:
        forks0 = forks()
        started = agent.start()
        cap = args.original_cap if agent_name == ORIGINAL else None
        try:
            out["fw_full_seconds"] = wait_synced(agent, store, cap or args.timeout) - started
        except SystemExit:
            if cap is None or agent.proc is None or agent.proc.poll() is not None:
                raise
            out["fw_full_incomplete_after_seconds"] = round(time.monotonic() - started, 1)
            out.update(_filter_size())
            _say(f"{agent_name}: firewall sync not done after {cap:g}s")
            return out
        out["fw_processes_started"] = forks() - forks0
        out.update(_filter_size())
        out["log_errors"] = agent.errors()
        out["reported_syncs"] = agent.reported_syncs()
        _say(f"{agent_name}: firewall synced in {out['fw_full_seconds']:.2f}s {out}")
        time.sleep(1.0)
        out["fw_rss_kib"] = agent.rss_kib()[0]
        holding = _ip_sets_holding()
        out["sets_holding_pods"] = len({s for sets in holding.values() for s in sets})
        from bench import firewall_ipset as fw
        if changes == 0:
            return out
        latencies = []
        # remote pods with an address of their own (the workload gives x.x.x.0 and x.x.x.1
        # the same one)
        twins = [i for i in range(args.fw_pods)
                 if i % args.fw_pods_per_local and i % 256 > 1 and holding.get(fw._pod_ip(i))]
        budget = args.original_budget if agent_name == ORIGINAL else None
        loop_start = time.monotonic()
        with IPSet() as ipset:
            for c in range(changes):
                if budget is not None and time.monotonic() - loop_start > budget:
                    break  # the pods added so far are the sample
                twin = twins[(c * 7919) % len(twins)]
                want = holding[fw._pod_ip(twin)]
                ip_index = args.fw_pods + c
                ip = fw._pod_ip(ip_index)
                obj = fw_pod(twin, args.fw_namespaces, args.fw_pods_per_local,
                             name=f"new{c}", ip_index=ip_index, local=False)
                agent.mark()
                t0 = time.monotonic()
                store.create(obj)
                while not all(ipset.test(name, ip) for name in want):
                    agent.alive()
                    if time.monotonic() - t0 > args.timeout:
                        missing = sorted(n for n in want if not ipset.test(n, ip))
                        raise SystemExit(f"{agent_name}: pod {c} ({ip}, twin of "
                                         f"{fw._pod_ip(twin)}) not in {missing} after "
                                         f"{args.timeout:g}s; the sets holding it: "
                                         f"{sorted(_ip_sets_holding().get(ip, ()))}")
                    time.sleep(0.002)
                latencies.append(time.monotonic() - t0)
                wait_synced(agent, store, args.timeout)  # the sync it started is over
        latencies.sort()
        out["fw_pod_add_p50_ms"] = statistics.median(latencies) * 1000
        out["fw_pod_add_max_ms"] = latencies[-1] * 1000
        out["fw_pod_add_samples_ms"] = [round(x * 1000, 1) for x in latencies]
        out["fw_pod_adds"] = len(latencies)
    finally:
        agent.stop()
        server.stop()
    return out


# -- driver ---------------------------------------------------------------------------------


def _in_netns(agent: str, role: str, argv: list[str]) -> dict:
    ns = f"bench-peer-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        proc = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "bench.peer", "--phase", agent,
             "--role", role, *argv],
            stdout=subprocess.PIPE, text=True, check=False, cwd=os.getcwd())
        if proc.returncode:
            raise SystemExit(f"{agent} {role} run failed rc={proc.returncode}\n"
                             f"{proc.stdout[-2000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def _ratio(ours: float | None, theirs: float | None) -> float | None:
    return round(ours / theirs, 4) if ours is not None and theirs else None


def _compare(result: dict, runs: dict, measures: dict) -> None:
    for name, (key, scale, unit, ratio) in measures.items():
        ours = runs.get(OURS, {}).get(key)
        orig = runs.get(ORIGINAL, {}).get(key)
        result[f"{name}_{unit}"] = {
            "ours": None if ours is None else round(ours * scale, 3),
            "original": None if orig is None else round(orig * scale, 3)}
        if ratio and ours is not None and orig is not None:
            result[f"{name}_ratio"] = _ratio(ours, orig)


def _bound(result: dict, runs: dict, name: str, incomplete_key: str, ours_key: str) -> None:
    """The original did not finish within its cap: its time is only known to exceed the cap,
    so ours / original is only known to be below ours / cap."""
    cap = runs.get(ORIGINAL, {}).get(incomplete_key)
    ours = runs.get(OURS, {}).get(ours_key)
    if cap is None:
        return
    result[f"{name}_seconds"]["original"] = None
    result[f"{name}_seconds"]["original_not_done_after"] = cap
    result[f"{name}_ratio"] = None
    if ours is not None:
        result[f"{name}_ratio_at_most"] = _ratio(ours, cap)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000, help="Services (each with 10 endpoints)")
    p.add_argument("--changes", type=int, default=200, help="endpoint changes, one at a time")
    p.add_argument("--timeout", type=float, default=900.0,
                   help="seconds any one wait may take before the run fails")
    p.add_argument("--original-changes", type=int,
                   help="fewer changes (and pods added) for the original: each of its "
                        "changes is a full sync, which runs one `ip route` process per "
                        "Service (the proxy)")
    p.add_argument("--original-cap", type=float,
                   help="seconds the original's first full sync (proxy table, firewall) may "
                        "take; past it the run reports that it did not finish (a bound) and "
                        "skips that role's later measures for the original")
    p.add_argument("--original-budget", type=float,
                   help="seconds the original's changes (and pods added) may take together; "
                        "no new change starts past it, and the ones made are the sample")
    p.add_argument("--only", choices=[OURS, ORIGINAL], help="run one agent alone")
    p.add_argument("--no-proxy", action="store_true", help="skip the service proxy rows")
    p.add_argument("--firewall", action="store_true",
                   help="also the firewall rows: --fw-policies over --fw-pods")
    p.add_argument("--fw-policies", type=int, default=1000)
    p.add_argument("--fw-pods", type=int, default=5000)
    p.add_argument("--fw-namespaces", type=int, default=100)
    p.add_argument("--fw-pods-per-local", type=int, default=10,
                   help="every k-th pod runs on the benchmarked node (gets its own chain)")
    p.add_argument("--fw-changes", type=int, default=20, help="pods added, one at a time")
    p.add_argument("--phase", choices=[OURS, ORIGINAL], help=argparse.SUPPRESS)
    p.add_argument("--role", choices=["proxy", "firewall"], default="proxy",
                   help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phase:
        original_run = args.phase == ORIGINAL
        if args.role == "firewall":
            changes = args.fw_changes
            if original_run and args.original_changes is not None:
                changes = min(changes, args.original_changes)
            print(json.dumps(fw_phase(args.phase, args, changes)))
        else:
            print(json.dumps(phase(args.phase, args.n, args.changes, args.timeout,
                                   args.original_cap if original_run else None,
                                   args.original_budget if original_run else None)))
        return
    if not original.binary().exists() and args.only != OURS:
        raise SystemExit(f"{original.binary()} is missing: run `make kube-router-original`")
    agents = [a for a in (OURS, ORIGINAL) if not args.only or a == args.only]
    caps = [*(["--original-cap", str(args.original_cap)] if args.original_cap else []),
            *(["--original-budget", str(args.original_budget)]
              if args.original_budget else [])]
    common = ["--timeout", str(args.timeout), "--n", str(args.n), *caps]
    result: dict = {"n": args.n, "endpoints_per_service": ENDPOINTS, "changes": args.changes,
                    "original_version": original.VERSION}
    if not args.no_proxy:
        runs = {}
        for agent in agents:
            changes = args.changes
            if agent == ORIGINAL and args.original_changes is not None:
                changes = min(changes, args.original_changes)
            runs[agent] = _in_netns(agent, "proxy", [*common, "--changes", str(changes)])
            print(json.dumps(runs[agent]), flush=True)
        _compare(result, runs, {
            "cold_sync": ("cold_sync_seconds", 1.0, "seconds", True),
            "event_p50": ("event_p50_ms", 1.0, "ms", True),
            "event_p99": ("event_p99_ms", 1.0, "ms", True),
            "restart": ("restart_seconds", 1.0, "seconds", True),
            "restart_ipvs_writes": ("restart_ipvs_writes", 1.0, "messages", False),
            "rss": ("rss_kib", 1 / 1024, "mib", True)})
        _bound(result, runs, "cold_sync", "cold_sync_incomplete_after_seconds",
               "cold_sync_seconds")
        result["restart_table_kept"] = {a: r.get("restart_table_kept") for a, r in runs.items()}
        result["changes_made"] = {a: r.get("changes") for a, r in runs.items()}
        result["processes_started_cold"] = {a: r.get("processes_started_cold")
                                            for a, r in runs.items()}
        result["processes_started_per_change"] = {
            a: r.get("processes_started_per_change") for a, r in runs.items()}
        result["ip_route_exec_ms"] = runs.get(ORIGINAL, runs.get(OURS, {})).get(
            "ip_route_exec_ms")
    if args.firewall:
        fw_args = ["--timeout", str(args.timeout), *caps,
                   *(["--original-changes", str(args.original_changes)]
                     if args.original_changes is not None else []),
                   "--fw-policies", str(args.fw_policies), "--fw-pods", str(args.fw_pods),
                   "--fw-namespaces", str(args.fw_namespaces),
                   "--fw-pods-per-local", str(args.fw_pods_per_local),
                   "--fw-changes", str(args.fw_changes)]
        fw_runs = {}
        for agent in agents:
            fw_runs[agent] = _in_netns(agent, "firewall", fw_args)
            print(json.dumps(fw_runs[agent]), flush=True)
        result["firewall"] = {"policies": args.fw_policies, "pods": args.fw_pods,
                              "local_pods": fw_runs[agents[0]].get("local_pods")}
        _compare(result, fw_runs, {
            "firewall_full": ("fw_full_seconds", 1.0, "seconds", True),
            "firewall_pod_add": ("fw_pod_add_p50_ms", 1.0, "ms", True),
            "firewall_rss": ("fw_rss_kib", 1 / 1024, "mib", False)})
        _bound(result, fw_runs, "firewall_full", "fw_full_incomplete_after_seconds",
               "fw_full_seconds")
        result["firewall_pod_adds"] = {a: r.get("fw_pod_adds") for a, r in fw_runs.items()}
        result["firewall_table"] = {a: {"chains": r.get("chains"), "rules": r.get("rules")}
                                    for a, r in fw_runs.items()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
