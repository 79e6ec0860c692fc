"""S6, memory: the agent's resident set at scale and after a long churn; run as root inside
the lab guest.

    kube-router-py lab exec --mem 3G -- .venv/bin/python -m bench.memory

A real ``kube-router-py run`` process (every installed agent plugin of proxy, router and
firewall) in a network namespace of its own, against the lab's embedded API server on
loopback holding 10,000 Services x 10 endpoints, 5,000 Pods over 50 Nodes (and 1,000
NetworkPolicies when the firewall plugin is installed). Its RSS is read from /proc:
- ``rss_synced_mib``: once every controller has applied the API's state (and the heap has
  settled);
- ``rss_peak_mib``: the high-water mark (VmHWM) over the whole run;
- ``rss_after_churn_mib``: after a churn phase that replaces Services, endpoints, Pods (and
  policies) at a steady rate for as long as ``--resyncs`` full resyncs take at the
  ``--sync-period`` given to the agent, then lets it apply the last of them.
Goals: peak <= 250 MiB, after churn within 5% of synced. The last line printed is one JSON
object.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from importlib.metadata import entry_points
from pathlib import Path

ENDPOINTS = 10
NODES = 50
NODE_IP = "192.168.200.1"
HEALTH_PORT = 20299
NS = "bench"
HISTORY = 20_000
COMPACT_SECONDS = 300.0  # kube-apiserver's default --etcd-compaction-interval
PEAK_GOAL_MIB = 250.0
CHURN_GOAL = 0.05


def _svc_ip(i: int) -> str:
    return f"10.{96 + i // 65536}.{(i // 256) % 256}.{i % 256}"


def _ep_ip(i: int, j: int, gen: int = 0) -> str:
    n = (i * ENDPOINTS + j + gen * 7) % (1 << 21)
    return f"10.{128 + n // 65536}.{(n // 256) % 256}.{n % 256}"


# Run as the agent's process with --diagnose: the agent itself, plus a SIGUSR2 handler that
# appends to PROBE_OUT where memory went: tracemalloc's largest growth since the previous
# report, objects by type (frozen ones included), and how much of the frozen heap was
# unreachable cycles that only an unfreeze and a collection give back.
PROBE = r"""
import collections, ctypes, ctypes.util, gc, os, signal, sys, tempfile, threading, time
import traceback, tracemalloc
from kube_router.linux.memory import trim
frames = int(os.environ.get("PROBE_FRAMES", "0"))
if frames:
    tracemalloc.start(frames)
state = {"snap": None, "reports": 0, "windows": []}
def _watch_peaks():
    # With PROBE_PEAKS=1: the moments the most small objects were alive (a full sync's
    # temporaries open arenas that the objects allocated beside them keep), each second's
    # highest count of pymalloc blocks and what every other thread was doing then.
    me = threading.get_ident()
    while True:
        end = time.monotonic() + 1.0
        top, stacks = -1, None
        while time.monotonic() < end:
            n = sys.getallocatedblocks()
            if n > top:
                top = n
                stacks = {tid: traceback.extract_stack(f)[-7:]
                          for tid, f in sys._current_frames().items() if tid != me}
            time.sleep(0.005)
        windows = [*state["windows"], (top, time.strftime("%H:%M:%S"), stacks)]
        state["windows"] = sorted(windows, key=lambda w: w[0], reverse=True)[:6]
if os.environ.get("PROBE_PEAKS") == "1":
    threading.Thread(target=_watch_peaks, daemon=True).start()
def _peaks(out):
    windows, state["windows"] = state["windows"], []
    now = sys.getallocatedblocks()
    for top, when, stacks in windows:
        print(f"peak {when}: blocks={top} (+{top - now} over now)", file=out)
        for tid, st in (stacks or {}).items():
            where = (f"{os.path.basename(fr.filename)}:{fr.name}:{fr.lineno}"
                     for fr in reversed(st))
            print("   thread", tid, " <- ".join(where), file=out)
def _rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024
class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
try:
    _mallinfo2 = ctypes.CDLL(ctypes.util.find_library("c")).mallinfo2
    _mallinfo2.restype = _MallInfo2
except (OSError, AttributeError):
    _mallinfo2 = None
def _pymalloc():
    # sys._debugmallocstats writes to the C stderr: read it back through a temporary file
    keep = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(keep, 2)
            os.close(keep)
        tmp.seek(0)
        text = tmp.read().decode(errors="replace")
    out = {}
    for line in text.splitlines():
        for key in ("arenas allocated current", "bytes in allocated blocks",
                    "bytes in available blocks", "bytes in unused pools"):
            if key in line:
                out[key.replace(" ", "_")] = int(line.split("=")[-1].replace(",", ""))
    return out
def _smaps():
    # resident KiB by kind of mapping: the brk heap, anonymous mmaps, file-backed
    rss = collections.Counter()
    big = []
    kind = None
    for line in open("/proc/self/smaps"):
        first = line.split()
        if "-" in first[0] and not first[0].endswith(":"):
            path = first[5] if len(first) > 5 else ""
            kind = "heap" if path == "[heap]" else ("anon" if not path or path.startswith("[anon")
                                                    else ("stack" if path.startswith("[stack")
                                                          else "file"))
            rng = first[0]
        elif first[0] == "Rss:":
            kb = int(first[1])
            rss[kind] += kb
            if kind == "anon" and kb >= 4096:
                big.append((rng, kb))
    return dict(rss), big
def _mem_report(out):
    rss, big = _smaps()
    print("smaps_rss_kib:", rss, "anon_maps>=4MiB:", big, file=out)
    if _mallinfo2 is not None:
        m = _mallinfo2()
        print(f"mallinfo2_kib: arena={m.arena >> 10} inuse={m.uordblks >> 10} "
              f"free={m.fordblks >> 10} mmapped={m.hblkhd >> 10} n_mmaps={m.hblks} "
              f"topfree={m.keepcost >> 10}", file=out)
    print("pymalloc:", _pymalloc(), "allocated_blocks:", sys.getallocatedblocks(), file=out)
def _tables(out):
    # the records module's sharing tables: entries, and the bytes only the table keeps
    # (values no record holds; a string's table key is its value, so two references)
    rec = sys.modules.get("kube_router.kube.records")
    if rec is None:
        return
    for name in ("_STRINGS", "_MAPS", "_PORTS"):
        table = getattr(rec, name, None)
        if not isinstance(table, dict):
            continue
        only = only_bytes = 0
        for key in list(table):  # a copy: the informers' threads may add meanwhile
            value = table.get(key)
            if name == "_STRINGS":  # the table's key and value, the copy's, key, value, the call's
                alone = sys.getrefcount(value) <= 6
                size = sys.getsizeof(value)
            else:  # the table's value, ours, the call's
                alone = sys.getrefcount(value) <= 3
                size = (sys.getsizeof(key) + sum(sys.getsizeof(i) for i in key)
                        + sum(sys.getsizeof(i) for i in gc.get_referents(value))
                        + sys.getsizeof(value))
            if alone:
                only += 1
                only_bytes += size
        print(f"table {name}: entries={len(table)} dict_kib={sys.getsizeof(table) >> 10} "
              f"only_in_table={only} only_in_table_kib={only_bytes >> 10}", file=out)
def _report(signum, frame):
    was = gc.isenabled()
    gc.disable()  # no collection of its own while it looks
    out = open(os.environ["PROBE_OUT"], "a")
    frozen = gc.get_freeze_count()
    gc.unfreeze()
    types = collections.Counter(type(o).__name__ for o in gc.get_objects())
    print(f"== {time.strftime('%H:%M:%S')} rss_mib={_rss()} frozen={frozen} "
          f"tracked={sum(types.values())}", file=out)
    print("types:", types.most_common(20), file=out)
    _tables(out)
    # A dict or set that has lost and gained entries resizes for its entries and the
    # deleted ones: one of 10,000 entries doubles its table under churn.
    # (A dict of atomic values is not tracked: found through what refers to it.)
    big = collections.Counter()
    each = []
    seen = set()
    for o in gc.get_objects():
        for c in (o, *gc.get_referents(o)):
            if type(c) in (dict, set) and id(c) not in seen:
                seen.add(id(c))
                size = sys.getsizeof(c)
                if size >= 65536:
                    big[type(c).__name__ + "_n"] += 1
                    big[type(c).__name__ + "_kib"] += size >> 10
                    each.append((type(c).__name__, len(c), size >> 10))
    del seen
    print("dicts and sets >= 64 KiB:", dict(big), "(kind, entries, KiB):", sorted(each),
          file=out)
    _mem_report(out)
    _peaks(out)
    if frames:
        snap = tracemalloc.take_snapshot()
        if state["snap"] is not None:
            for st in snap.compare_to(state["snap"], "traceback")[:12]:
                print(f"+{st.size_diff >> 10} KiB count={st.count_diff:+d}", file=out)
                for line in st.traceback.format()[-8:]:
                    print("   ", line, file=out)
        state["snap"] = snap
    del types
    state["reports"] += 1
    if state["reports"] > 1:  # the first report leaves the heap as it was
        found = gc.collect()
        trim()
        print(f"unreachable_collected={found} rss_after_collect_mib={_rss()}", file=out)
        _mem_report(out)
    else:
        print("unreachable_collected=not-looked", file=out)
    gc.freeze()
    if was:
        gc.enable()
    out.close()
signal.signal(signal.SIGUSR2, _report)
from kube_router.cli import main
sys.argv[0] = "kube-router-py"
sys.exit(main())
"""


def _node(k: int) -> dict:
    ip = NODE_IP if k == 0 else f"192.168.201.{k}"
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": f"node-{k}", "labels": {"kubernetes.io/hostname": f"node-{k}"}},
            "spec": {"podCIDR": f"10.244.{k}.0/24", "podCIDRs": [f"10.244.{k}.0/24"]},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}


def _service(i: int, gen: int = 0) -> dict:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": NS, "name": f"svc-{i}-{gen}",
                         "labels": {"app": f"app-{i % 500}"}},
            "spec": {"clusterIP": _svc_ip(i), "clusterIPs": [_svc_ip(i)], "type": "ClusterIP",
                     "selector": {"app": f"app-{i % 500}"},
                     "ports": [{"name": "http", "protocol": "TCP", "port": 80,
                                "targetPort": 8080}]}}


def _slice(i: int, svc_gen: int = 0, gen: int = 0) -> dict:
    name = f"svc-{i}-{svc_gen}"
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"namespace": NS, "name": f"{name}-abc",
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [_ep_ip(i, j, gen)], "conditions": {"ready": True},
                           "nodeName": f"node-{1 + (i + j) % (NODES - 1)}"}
                          for j in range(ENDPOINTS)],
            "ports": [{"name": "http", "protocol": "TCP", "port": 8080}]}


def _pod(p: int, gen: int = 0) -> dict:
    k = p % NODES
    n = p + gen * 5000
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"namespace": NS, "name": f"pod-{p}-{gen}",
                         "labels": {"app": f"app-{p % 500}", "tier": f"t{p % 7}"}},
            "spec": {"nodeName": f"node-{k}",
                     "containers": [{"name": "c", "image": "whats-my-ip",
                                     "ports": [{"containerPort": 8080, "name": "http"}]}]},
            "status": {"phase": "Running", "podIP": f"10.244.{k}.{2 + (n // NODES) % 250}",
                       "podIPs": [{"ip": f"10.244.{k}.{2 + (n // NODES) % 250}"}]}}


def _policy(q: int, gen: int = 0) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"namespace": NS, "name": f"pol-{q}-{gen}"},
            "spec": {"podSelector": {"matchLabels": {"app": f"app-{q % 500}"}},
                     "policyTypes": ["Ingress"],
                     "ingress": [{"from": [{"podSelector": {"matchLabels":
                                                             {"tier": f"t{q % 7}"}}}],
                                  "ports": [{"protocol": "TCP", "port": 8080}]}]}}


# -- the agent and its numbers ------------------------------------------------------------


def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid``, in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def _mib(kib: int) -> float:
    return round(kib / 1024, 1)


def _readyz() -> dict | None:
    conn = http.client.HTTPConnection("127.0.0.1", HEALTH_PORT, timeout=5)
    try:
        conn.request("GET", "/readyz")
        return json.loads(conn.getresponse().read())
    except (OSError, ValueError):
        return None
    finally:
        conn.close()


def _applied(token: str, placed) -> bool:
    """Every controller has applied the newest change of each kind (``Kind=rv,...``),
    each kind's version placed by the store that issued it, never read as a number."""
    from kube_router_lab.versions import unsynced_reason

    doc = _readyz()
    return doc is not None and unsynced_reason(doc, token, placed) is None


def _say(msg: str) -> None:
    print(f"bench.memory: {msg}", file=sys.stderr, flush=True)


def _died(proc: subprocess.Popen, log_path: Path) -> SystemExit:
    kernel = subprocess.run(["dmesg"], capture_output=True, text=True, check=False).stdout
    text = log_path.read_text(errors="replace").splitlines()
    return SystemExit(f"the agent exited rc={proc.returncode}\nagent log:\n"
                      + "\n".join(text[-15:]) + "\nkernel:\n"
                      + "\n".join(kernel.splitlines()[-15:]))


def _wait_applied(store, proc: subprocess.Popen, timeout: float, log_path: Path) -> float:
    from kube_router_lab.versions import make_token

    rv = make_token(store.last_changes())
    started = time.monotonic()
    while not _applied(rv, store.placed):
        if proc.poll() is not None:
            raise _died(proc, log_path)
        if time.monotonic() - started > timeout:
            raise SystemExit(f"the agent did not apply rv {rv} in {timeout:g}s: {_readyz()}")
        time.sleep(0.5)
    return time.monotonic() - started


def _settled_rss(pid: int, seconds: float = 10.0) -> int:
    """The lowest RSS over a few seconds of quiet: what stays, not a sync's transient."""
    low = None
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        rss = _status(pid)["VmRSS"]
        low = rss if low is None else min(low, rss)
        time.sleep(0.5)
    assert low is not None
    return low


def _full_syncs(log_path: Path) -> int:
    """Full syncs the proxy has logged so far."""
    return log_path.read_text(errors="replace").count("proxy sync full=True")


def _probe(pid: int, out: Path) -> None:
    """Ask the --diagnose launcher for a report and wait until it is written."""
    before = out.stat().st_size if out.exists() else 0
    os.kill(pid, signal.SIGUSR2)
    for _ in range(1200):
        if out.exists() and out.stat().st_size > before and \
                "unreachable_collected" in out.read_text()[before:]:
            return
        time.sleep(0.5)
    _say("the diagnose report did not come")


def run(args: argparse.Namespace) -> dict:
    from kube_router_lab.apiserver import ApiServer
    from kube_router_lab.apiserver import ApiStore

    for argv in (["ip", "link", "set", "lo", "up"],
                 ["ip", "link", "add", "bench-node", "type", "dummy"],
                 ["ip", "addr", "add", f"{NODE_IP}/16", "dev", "bench-node"],
                 ["ip", "link", "set", "bench-node", "up"]):
        subprocess.run(argv, check=True)
    installed = {ep.name for ep in entry_points(group="kube_router.plugins")}
    enable = [p for p in ("proxy", "router", "firewall") if p in installed
              and (not args.enable or p in args.enable.split(","))]
    policies = args.policies if "firewall" in enable else 0

    # A window of recent events, as the API server's watch cache keeps (etcd's history
    # is the bench process's memory, not the agent's, and the guest is small).
    store = ApiStore(history=HISTORY)
    started = time.monotonic()
    for k in range(NODES):
        store.create(_node(k))
    for i in range(args.services):
        store.create(_service(i))
        store.create(_slice(i))
    for p in range(args.pods):
        store.create(_pod(p))
    for q in range(policies):
        store.create(_policy(q))
    store.compact()  # the history of the load is not what a cluster's server holds
    load_seconds = time.monotonic() - started
    objects = NODES + 2 * args.services + args.pods + policies
    server = ApiServer(store, "127.0.0.1", 0, bookmark_interval=5.0)
    server.start()
    work = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    kubeconfig = server.write_kubeconfig(work / "kubeconfig")
    period = f"{args.sync_period:g}s"
    probe_out = work / "probe.txt"
    launcher = ([sys.executable, "-c", PROBE] if args.diagnose
                else [str(Path(sys.executable).parent / "kube-router-py")])
    argv = [*launcher, "run",
            "--enable", ",".join(enable), "--hostname-override", "node-0",
            "--kubeconfig", str(kubeconfig), "--health-port", str(HEALTH_PORT),
            "--service-cluster-ip-range", "10.96.0.0/12",
            "--ipvs-sync-period", period, "--routes-sync-period", period,
            "--cni-conf-dir", str(work / "net.d"), "--cni-ipam-data-dir", str(work / "ipam")]
    if "firewall" in enable:
        argv += ["--iptables-sync-period", period]
    log_path = work / "agent.log"
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PROBE_OUT": str(probe_out)})
    try:
        _say(f"loaded {objects} objects in {load_seconds:.1f}s; agent pid={proc.pid} "
             f"plugins={','.join(enable)}")
        sync_seconds = _wait_applied(store, proc, args.timeout, log_path)
        rss_synced = _settled_rss(proc.pid)
        _say(f"synced in {sync_seconds:.1f}s rss={_mib(rss_synced)} MiB "
             f"peak={_mib(_status(proc.pid)['VmHWM'])} MiB")
        if args.diagnose:
            _probe(proc.pid, probe_out)

        # Churn: each second, `rate` Services are replaced (a new name, so per-object state
        # comes and goes) with their slices, `rate` other slices change endpoints, `rate`
        # Pods and rate/10 policies are replaced.
        # It lasts until the proxy has made --resyncs full syncs under it (a full sync of
        # this many Services can take longer than the period: time alone is not enough).
        churn_seconds = args.resyncs * args.sync_period + args.sync_period
        fulls_before = _full_syncs(log_path)
        churn_fulls = 0
        t0 = time.monotonic()
        tick = 0
        svc_gen = [0] * args.services
        pod_gen = [0] * args.pods
        pol_gen = [0] * max(1, policies)
        changes = 0
        compacted_at, compact_point = time.monotonic(), store.revision
        while time.monotonic() - t0 < churn_seconds or churn_fulls < args.resyncs:
            if time.monotonic() - t0 > args.max_churn:
                raise SystemExit(f"only {churn_fulls} full syncs in {args.max_churn:g}s "
                                 "of churn")
            if proc.poll() is not None:
                raise _died(proc, log_path)
            for r in range(args.rate):
                i = (tick * args.rate + r) % args.services
                store.delete("Service", NS, f"svc-{i}-{svc_gen[i]}")
                store.delete("EndpointSlice", NS, f"svc-{i}-{svc_gen[i]}-abc")
                svc_gen[i] += 1
                store.create(_service(i, svc_gen[i]))
                store.create(_slice(i, svc_gen[i]))
                j = (i + args.services // 2) % args.services
                store.update(_slice(j, svc_gen[j], tick + 1))
                p = (tick * args.rate + r) % args.pods
                store.delete("Pod", NS, f"pod-{p}-{pod_gen[p]}")
                pod_gen[p] += 1
                store.create(_pod(p, pod_gen[p]))
                changes += 6
            for r in range(args.rate // 10 if policies else 0):
                q = (tick * (args.rate // 10) + r) % policies
                store.delete("NetworkPolicy", NS, f"pol-{q}-{pol_gen[q]}")
                pol_gen[q] += 1
                store.create(_policy(q, pol_gen[q]))
                changes += 2
            tick += 1
            if tick % 5 == 0:
                churn_fulls = _full_syncs(log_path) - fulls_before
            if time.monotonic() - compacted_at >= COMPACT_SECONDS:
                # as the API server's periodic compaction: up to the revision of the last
                # one, so that only a watch behind by more than the interval relists
                store.compact(upto=compact_point)
                compacted_at, compact_point = time.monotonic(), store.revision
            time.sleep(max(0.0, t0 + tick - time.monotonic()))
        churn_elapsed = time.monotonic() - t0
        _say(f"churned {changes} changes in {time.monotonic() - t0:.1f}s "
             f"over {churn_fulls} full syncs "
             f"rss={_mib(_status(proc.pid)['VmRSS'])} MiB")
        settle_seconds = _wait_applied(store, proc, args.timeout, log_path)
        # one more full resync with nothing changing, as a quiet cluster would see
        time.sleep(args.sync_period)
        rss_after = _settled_rss(proc.pid)
        status = _status(proc.pid)
        if args.diagnose:
            _probe(proc.pid, probe_out)
            sys.stderr.write(probe_out.read_text())
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        server.stop()
    text = log_path.read_text(errors="replace")
    full_syncs = len(re.findall(r"proxy sync full=True", text))
    churn_fulls = _full_syncs(log_path) - fulls_before  # up to the settling
    tracebacks = text.count("Traceback")
    if tracebacks:  # what failed, for the reader of the run (the log is in the guest)
        lines = text.splitlines()
        for i, line in enumerate(lines):
            if "Traceback" in line:
                _say("agent traceback:\n" + "\n".join(lines[max(0, i - 2):i + 30]))
    return {
        "plugins": enable, "services": args.services, "endpoints_per_service": ENDPOINTS,
        "pods": args.pods, "policies": policies, "nodes": NODES, "objects": objects,
        "load_seconds": round(load_seconds, 1), "sync_seconds": round(sync_seconds, 1),
        "churn_seconds": round(churn_elapsed, 1), "churn_changes": changes,
        "settle_seconds": round(settle_seconds, 1), "sync_period_seconds": args.sync_period,
        "proxy_full_syncs": full_syncs, "churn_full_syncs": churn_fulls,
        "agent_tracebacks": tracebacks,
        "rss_synced_mib": _mib(rss_synced), "rss_peak_mib": _mib(status["VmHWM"]),
        "rss_after_churn_mib": _mib(rss_after),
        "churn_growth": round(rss_after / rss_synced - 1, 4),
        "peak_goal_met": _mib(status["VmHWM"]) <= PEAK_GOAL_MIB,
        "churn_goal_met": abs(rss_after / rss_synced - 1) <= CHURN_GOAL,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--services", type=int, default=10_000)
    p.add_argument("--pods", type=int, default=5_000)
    p.add_argument("--policies", type=int, default=1_000, help="(with the firewall plugin)")
    p.add_argument("--sync-period", type=float, default=5.0,
                   help="the agent's full resync period, seconds")
    p.add_argument("--resyncs", type=int, default=20, help="full resyncs the churn lasts")
    p.add_argument("--rate", type=int, default=20, help="objects of each kind replaced a second")
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--max-churn", type=float, default=3600.0,
                   help="seconds the churn may last while waiting for --resyncs full syncs")
    p.add_argument("--diagnose", action="store_true",
                   help="print the agent's tracked objects by type at synced and after "
                        "churn, and how much a collection of its frozen heap gives back "
                        "(PROBE_FRAMES=N also traces allocations: far slower; PROBE_PEAKS=1 prints "
                        "the seconds with the most small objects alive and what ran then)")
    p.add_argument("--enable", default="",
                   help="a subset of the installed plugins to run, comma separated "
                        "(default: every installed one of proxy, router, firewall)")
    p.add_argument("--phase", choices=["run"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phase == "run":
        print(json.dumps(run(args)))
        return
    # a namespace of its own: the agent's IPVS table, links and routes go with it
    ns = f"bench-mem-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "bench.memory",
                               "--phase", "run", *sys.argv[1:]], stdout=subprocess.PIPE,
                              text=True, check=False, cwd=os.getcwd())  # progress on stderr
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    if proc.returncode:
        raise SystemExit(f"bench failed rc={proc.returncode}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for k in ("rss_synced_mib", "rss_peak_mib", "rss_after_churn_mib"):
        print(f"{k}={result[k]}", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
