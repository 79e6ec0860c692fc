"""kube-router-py beside the original kube-router: the same workload on one node, run as
root inside the lab guest.

    python -m bench.peer --n 1000

From the checkout: ``kube-router-py lab exec --mem 3G -- .venv/bin/python -m bench.peer
--n 5000`` (the original is built first with ``make kube-router-original``). The original
runs here only as a measuring stick; this project does not ship or recommend it.

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
  it reports its first full sync done (ours: /readyz at the API's resourceVersion; the
  original: its "sync ipvs services took" log line), and every IPVS and address message it
  sent meanwhile, counted on an nlmon link (which sees all netlink traffic of the node);
- RSS: the agent's resident memory once synced (and its peak).
The last line printed is one JSON object: per measure ours, the original's and the ratio
``ours / original`` (``cold_sync_ratio``, ``event_p99_ratio``, ``restart_ratio``,
``rss_ratio``).
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


def agent_argv(agent: str, kubeconfig: Path) -> list[str]:
    common = ["--hostname-override", NODE, "--kubeconfig", str(kubeconfig),
              "--service-cluster-ip-range", SERVICE_RANGE, "--health-port", str(HEALTH_PORT)]
    if agent == OURS:
        exe = Path(sys.executable).parent / "kube-router-py"
        return [str(exe), "run", "--enable", "proxy", *common]
    # The same role: the service proxy alone. -v 1 makes it log the end of each sync,
    # which is how its restart is timed.
    return [str(original.binary()), "--run-service-proxy=true", "--run-router=false",
            "--run-firewall=false", *common, "-v", "1"]


class Agent:
    def __init__(self, agent: str, kubeconfig: Path, workdir: Path) -> None:
        self.agent = agent
        self.argv = agent_argv(agent, kubeconfig)
        self.workdir = workdir
        self.log_path = workdir / f"{agent}.log"
        self.env = dict(os.environ)
        if agent == ORIGINAL:
            self.env.update(original.env(workdir=workdir, cni_file=None))
            self.env["NODE_NAME"] = NODE
        self.proc: subprocess.Popen | None = None
        self.log_offset = 0

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
                return b"sync ipvs services took" in f.read()
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


def wait_table(agent: Agent, n: int, started: float, timeout: float) -> dict:
    """Poll the kernel until the table is complete; the poll interval grows with N so the
    reader's own work (a full read of /proc/net/ip_vs) stays a small share of one CPU."""
    interval = max(0.02, n / 50000)
    polls = 0
    while True:
        agent.alive()
        services, dests = ipvs_counts()
        polls += 1
        if services >= n and dests >= n * ENDPOINTS:
            ipvs_done = time.monotonic()
            while dummy_addresses() < n:
                agent.alive()
                if time.monotonic() - started > timeout:
                    raise SystemExit(f"{agent.agent}: VIPs incomplete after {timeout:g}s")
                time.sleep(interval)
            done = time.monotonic()
            return {"cold_sync_seconds": done - started, "ipvs_seconds": ipvs_done - started,
                    "poll_interval_seconds": interval, "polls": polls}
        if time.monotonic() - started > timeout:
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


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- one agent's run -------------------------------------------------------------------------


def phase(agent_name: str, n: int, changes: int, timeout: float) -> dict:
    import kube_router_proxy_ipvs.ipvs_netlink as nl

    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-peer-{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    _node_link()
    store, server, kubeconfig = _api(n, workdir)
    agent = Agent(agent_name, kubeconfig, workdir)
    out: dict = {"agent": agent_name}
    try:
        started = agent.start()
        out.update(wait_table(agent, n, started, timeout))
        _say(f"{agent_name}: table complete in {out['cold_sync_seconds']:.2f}s")
        out["first_sync_reported_seconds"] = wait_synced(agent, store, timeout) - started
        time.sleep(1.0)  # what it frees after its first sync
        out["rss_kib"], out["rss_peak_kib"] = agent.rss_kib()

        latencies = []
        with nl.IPVSSocket() as sock:
            current = {i: list(range(ENDPOINTS)) for i in range(n)}
            for c in range(changes):
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
        _say(f"{agent_name}: {len(latencies)} changes applied")
        latencies.sort()
        out["event_p50_ms"] = statistics.median(latencies) * 1000
        out["event_p99_ms"] = latencies[min(len(latencies) - 1,
                                            int(len(latencies) * 0.99))] * 1000
        out["event_max_ms"] = latencies[-1] * 1000
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


# -- driver ---------------------------------------------------------------------------------


def _in_netns(agent: str, n: int, changes: int, timeout: float) -> dict:
    ns = f"bench-peer-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        proc = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "bench.peer", "--phase", agent,
             "--n", str(n), "--changes", str(changes), "--timeout", str(timeout)],
            stdout=subprocess.PIPE, text=True, check=False, cwd=os.getcwd())
        if proc.returncode:
            raise SystemExit(f"{agent} run failed rc={proc.returncode}\n"
                             f"{proc.stdout[-2000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def _ratio(ours: float, theirs: float) -> float | None:
    return round(ours / theirs, 3) if theirs else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000, help="Services (each with 10 endpoints)")
    p.add_argument("--changes", type=int, default=200, help="endpoint changes, one at a time")
    p.add_argument("--timeout", type=float, default=900.0,
                   help="seconds any one wait may take before the run fails")
    p.add_argument("--original-changes", type=int,
                   help="fewer changes for the original (each of its changes is a full sync "
                        "that runs one `ip route` process per Service)")
    p.add_argument("--only", choices=[OURS, ORIGINAL], help="run one agent alone")
    p.add_argument("--phase", choices=[OURS, ORIGINAL], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phase:
        print(json.dumps(phase(args.phase, args.n, args.changes, args.timeout)))
        return
    if not original.binary().exists() and args.only != OURS:
        raise SystemExit(f"{original.binary()} is missing: run `make kube-router-original`")
    runs = {}
    for agent in (OURS, ORIGINAL):
        if args.only and agent != args.only:
            continue
        changes = args.changes
        if agent == ORIGINAL and args.original_changes is not None:
            changes = min(changes, args.original_changes)
        runs[agent] = _in_netns(agent, args.n, changes, args.timeout)
        print(json.dumps(runs[agent]), flush=True)
    result: dict = {"n": args.n, "endpoints_per_service": ENDPOINTS, "changes": args.changes,
                    "original_version": original.VERSION}
    measures = {"cold_sync": ("cold_sync_seconds", 1.0), "event_p50": ("event_p50_ms", 1.0),
                "event_p99": ("event_p99_ms", 1.0), "restart": ("restart_seconds", 1.0),
                "restart_ipvs_writes": ("restart_ipvs_writes", 1.0),
                "rss": ("rss_kib", 1 / 1024)}
    for name, (key, scale) in measures.items():
        unit = {"rss": "mib", "event_p50": "ms", "event_p99": "ms",
                "restart_ipvs_writes": "messages"}.get(name, "seconds")
        ours = runs.get(OURS, {}).get(key)
        orig = runs.get(ORIGINAL, {}).get(key)
        result[f"{name}_{unit}"] = {
            "ours": None if ours is None else round(ours * scale, 3),
            "original": None if orig is None else round(orig * scale, 3)}
        if name != "restart_ipvs_writes" and ours is not None and orig is not None:
            result[f"{name}_ratio"] = _ratio(ours, orig)
    result["restart_table_kept"] = {a: r.get("restart_table_kept") for a, r in runs.items()}
    result["changes_made"] = {a: r.get("changes") for a, r in runs.items()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
