"""IPVS proxy benchmark; run as root inside the lab guest (a kernel with IPVS).

    python -m bench.proxy_ipvs --n 1000

From the checkout: ``kube-router-py lab exec --mem 3G -- .venv/bin/python -m bench.proxy_ipvs
--n 10000``. Give the guest that memory for N in the thousands: in the default 1 GiB the
10,000-Service runs are short of memory and their timings wander (event p99 23 ms there,
8 ms with 3 GiB, on one machine).

S1, cold sync: N Services x 10 endpoints, decoded from API objects into the stores the
informers fill, synced by the proxy controller into an empty IPVS table (plus their VIPs on
kube-dummy-if). Compared, on the same machine in the same run, with
- the floor: exactly the messages the sync sends (VIP addresses and their local routes,
  IPVS services and dests), prebuilt, sent back to back by the codecs alone;
- ``ipvsadm -R`` applying the identical rules.
S2, event latency: 200 changes, each one endpoint added and one removed in one Service's
EndpointSlice: time from the event reaching the controller to the kernel state applied,
measured after each cold sync; the median of those runs' p50 and p99 is reported, and each
run's three slowest changes (``event_slowest``: the controller's parts, page faults, context
switches and cyclic collections they had).
pyroute2, the library this project uses wherever it is not slower, does the floor's work
and the restart's reading in its own phase (``--skip-pyroute2`` leaves it out): each
hand-written codec stands on these rows. ``pyroute2_ipvs_seconds``: the same IPVS services
and dests, one call each; ``pyroute2_addr_seconds``: the same VIP addresses and local
routes; ``pyroute2_read_seconds`` against ``codec_read_seconds``: that state read back
(IPVS services with every dest's weight, the link's addresses and local routes).
Also reported: ``resync_seconds``, a full resync (as every ``--ipvs-sync-period``) right after
the cold sync, when nothing has changed and no message is sent; and the agent restarted over
what a cold sync left (a second process): ``restart_load_seconds`` to read the kernel's state,
``restart_sync_seconds`` for the first full sync, ``restart_ops`` the messages it sent (0).

The floor and the sync run ``--repeat`` times each, alternating; the median run of each is
reported (with every sample). Every phase runs in its own fresh network namespace: IPVS state
(and its 120 s trash list of deleted real servers, which slows later adds) is per namespace,
so no phase taints another.
``--no-estimation`` turns IPVS rate estimation off in the sync runs (kernels before 6.2 walk
every virtual and real server every 2 s in timer context), to tell that timer's share of the
event latencies from the proxy's.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid

from kube_router import gc_policy
from kube_router import plugins
from kube_router.agent import Agent
from kube_router.kube.events import Event
from kube_router.kube.events import EventType
from kube_router.kube.records import decode_endpointslice
from kube_router.kube.records import decode_node
from kube_router.kube.records import decode_service
from kube_router.linux.memory import one_malloc_arena
from kube_router.settings import parse
from kube_router_proxy_ipvs import ipvs_netlink as nl
from kube_router_proxy_ipvs import plugin
from kube_router_proxy_ipvs import settings
from kube_router_proxy_ipvs.api import DEFAULT
from kube_router_proxy_ipvs.controller import ProxyController
from kube_router_proxy_ipvs.desired import Settings
from kube_router_proxy_ipvs.desired import service_state
from kube_router_proxy_ipvs.dummy_if import DummyInterface

ENDPOINTS = 10


def _svc_ip(i: int) -> str:
    return f"10.{96 + i // 65536}.{(i // 256) % 256}.{i % 256}"


def _ep_ip(i: int, j: int) -> str:
    n = i * ENDPOINTS + j
    return f"10.{128 + n // 65536}.{(n // 256) % 256}.{n % 256}"


def api_objects(n: int) -> tuple[list[dict], list[dict]]:
    services, slices = [], []
    for i in range(n):
        name = f"svc-{i}"
        services.append({
            "metadata": {"namespace": "bench", "name": name, "uid": name,
                         "resourceVersion": str(i)},
            "spec": {"clusterIP": _svc_ip(i), "clusterIPs": [_svc_ip(i)],
                     "ports": [{"name": "http", "protocol": "TCP", "port": 80,
                                "targetPort": 8080}]},
        })
        slices.append(_slice(i, range(ENDPOINTS)))
    return services, slices


def _slice(i: int, eps: range | list[int]) -> dict:
    name = f"svc-{i}"
    return {
        "metadata": {"namespace": "bench", "name": f"{name}-abc", "uid": f"{name}-abc",
                     "resourceVersion": "1",
                     "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [_ep_ip(i, j)], "conditions": {"ready": True},
                       "nodeName": "node-0"} for j in eps],
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
    }


def ipvsadm_rules(n: int) -> str:
    lines = []
    for i in range(n):
        vip = _svc_ip(i)
        lines.append(f"-A -t {vip}:80 -s rr")
        lines += [f"-a -t {vip}:80 -r {_ep_ip(i, j)}:8080 -m -w 1" for j in range(ENDPOINTS)]
    return "\n".join(lines) + "\n"


# -- phases, each run in its own network namespace -----------------------------------------


NODE_IP = "192.168.200.1"


def _node_link() -> None:
    """The node's address, on a link of its own in this phase's namespace: the sync sources
    every VIP's local route from it, so the floor sends those messages too."""
    for argv in (["ip", "link", "add", "bench-node", "type", "dummy"],
                 ["ip", "addr", "add", f"{NODE_IP}/24", "dev", "bench-node"],
                 ["ip", "link", "set", "bench-node", "up"]):
        subprocess.run(argv, check=True)


def _node_object() -> dict:
    return {"metadata": {"name": "node-0", "uid": "node-0", "resourceVersion": "1"},
            "spec": {"podCIDR": "10.128.0.0/16"},
            "status": {"addresses": [{"type": "InternalIP", "address": NODE_IP}]}}


def phase_floor(n: int) -> dict:
    """Exactly the messages a cold sync sends, prebuilt, then sent by the codecs alone: the
    VIP addresses and their local routes (rtnetlink), then the IPVS services and dests."""
    _node_link()
    services, slices = api_objects(n)
    proxy_settings = Settings(node_name="node-0", service_cidrs=())
    dummy = DummyInterface()
    asyncio.run(dummy.load())
    vips: dict[str, None] = {}  # in the order the controller binds them: by Service
    with nl.IPVSSocket() as sock:
        batch = sock.batch()
        for s, sl in zip(services, slices, strict=True):
            st = service_state(decode_service(s), [decode_endpointslice(sl)],
                               proxy_settings, DEFAULT, [])
            vips.update(dict.fromkeys(st.vips))
            for vs in st.servers:
                batch.service(nl.CMD_NEW_SERVICE, vs.key, vs.attrs)
                batch.dests(nl.CMD_NEW_DEST, vs.key, vs.dests.items())
        addresses = dummy.plan(vips.keys(), set(), {4: NODE_IP})
        started = time.perf_counter()
        failed = addresses.send()
        addr_seconds = time.perf_counter() - started
        failures = sock.send(batch)
        seconds = time.perf_counter() - started
    assert not failures and not failed, (failures[:3], list(failed.items())[:3])
    return {"floor_seconds": seconds, "floor_addr_seconds": addr_seconds,
            "messages": len(batch) + len(addresses)}


def phase_pyroute2(n: int) -> dict:
    """The floor's messages sent through pyroute2, one call each, then the state read back
    by pyroute2 and by the codecs (what a restarted agent reads first)."""
    from pyroute2 import IPVS
    from pyroute2 import IPRoute
    from pyroute2 import IPVSDest
    from pyroute2 import IPVSService

    from kube_router_proxy_ipvs import rtnl

    _node_link()
    services, slices = api_objects(n)
    proxy_settings = Settings(node_name="node-0", service_cidrs=())
    states = [service_state(decode_service(s), [decode_endpointslice(sl)], proxy_settings,
                            DEFAULT, []) for s, sl in zip(services, slices, strict=True)]
    vips = list(dict.fromkeys(v for st in states for v in st.vips))
    with IPRoute() as ipr:
        ipr.link("add", ifname="kube-dummy-if", kind="dummy")
        index = ipr.link_lookup(ifname="kube-dummy-if")[0]
        ipr.link("set", index=index, state="up")
        started = time.perf_counter()
        for vip in vips:
            ipr.addr("replace", index=index, address=vip, prefixlen=32)
            ipr.route("replace", dst=vip, dst_len=32, table=255, type="local", scope="host",
                      proto="kernel", oif=index, prefsrc=NODE_IP)
        addr_seconds = time.perf_counter() - started
    with IPVS() as ipvs:
        started = time.perf_counter()
        for st in states:
            for vs in st.servers:
                k = vs.key
                svc = IPVSService(af=k.af, protocol=k.protocol, addr=k.addr, port=k.port,
                                  sched_name=vs.attrs.scheduler, timeout=vs.attrs.timeout,
                                  flags={"flags": vs.attrs.flags, "mask": 0xFFFFFFFF},
                                  netmask="255.255.255.255")  # packed as an address
                ipvs.service("add", service=svc)
                for (ip, port), weight in vs.dests.items():
                    ipvs.dest("add", service=svc, dest=IPVSDest(addr=ip, port=port,
                                                                weight=weight, fwd_method=0))
        ipvs_seconds = time.perf_counter() - started
        started = time.perf_counter()
        read: list[dict] = []
        for s in ipvs.service("dump"):
            svc = IPVSService.from_message(s)
            read.append({(d.get("addr"), d.get("port")): d.get("weight")
                         for d in map(IPVSDest.from_message, ipvs.dest("dump", service=svc))})
        with IPRoute() as ipr:
            addrs = {a.get("IFA_LOCAL") for a in ipr.get_addr(index=index)}
            routes = {r.get("RTA_DST"): r.get("RTA_PREFSRC")
                      for r in ipr.get_routes(table=255, oif=index) if r["type"] == 2}
        pyroute2_read = time.perf_counter() - started
    started = time.perf_counter()
    with nl.IPVSSocket() as sock:
        ours = {s.key: sock.dest_weights(s.key) for s in sock.services(stats=False)
                if s.key is not None}
    our_addrs, our_routes = rtnl.addresses(index), rtnl.local_routes(index)
    codec_read = time.perf_counter() - started
    dests = sum(len(d) for d in read)
    assert dests == sum(len(d) for d in ours.values()) == n * ENDPOINTS, (dests, n)
    assert len(addrs) == len(our_addrs) and len(routes) == len(our_routes), \
        (len(addrs), len(our_addrs), len(routes), len(our_routes))
    return {"pyroute2_ipvs_seconds": ipvs_seconds, "pyroute2_addr_seconds": addr_seconds,
            "pyroute2_read_seconds": pyroute2_read, "codec_read_seconds": codec_read}


def phase_ipvsadm(n: int) -> dict:
    rules = ipvsadm_rules(n)
    started = time.perf_counter()
    proc = subprocess.run(["ipvsadm", "-R"], input=rules, capture_output=True, text=True,
                          check=False)
    seconds = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"ipvsadm -R failed rc={proc.returncode} stderr={proc.stderr[:500]}")
    return {"ipvsadm_seconds": seconds}


def _agent(n: int) -> tuple[Agent, float]:
    """An agent with the proxy, its stores filled as the informers fill them; and the
    seconds the decoding took."""
    config = parse(["--hostname-override", "node-0", "--service-cluster-ip-range",
                    "10.96.0.0/12"], settings.add_options)
    pm = plugins.new_manager()
    pm.register(plugin, "proxy")
    agent = Agent.from_flags(config, pm, ["proxy"])
    services, slices = api_objects(n)
    svc_store, sl_store = agent.store("Service"), agent.store("EndpointSlice")
    node = decode_node(_node_object())
    agent.store("Node").put(node.key, node)
    started = time.perf_counter()
    for obj in services:
        rec = decode_service(obj)
        svc_store.put(rec.key, rec)
    for obj in slices:
        rec = decode_endpointslice(obj)
        sl_store.put(rec.key, rec)
    # As the informer does, the parsed API objects are dropped once decoded.
    del services, slices, obj
    return agent, time.perf_counter() - started


def _controller(agent: Agent) -> ProxyController:
    return ProxyController(agent, agent.startup.of("proxy"), netfilter=None)


async def _sync_and_events(n: int, changes: int) -> dict:
    agent, decode_seconds = _agent(n)
    sl_store = agent.store("EndpointSlice")
    ctl = ProxyController(agent, agent.startup.of("proxy"), netfilter=None)
    await ctl.start()
    started = time.perf_counter()
    with gc_policy.bulk:  # as the core runs every full sync
        await ctl.sync(None)
    sync_seconds = time.perf_counter() - started
    assert not ctl.last_result.failures and not ctl.dummy.last_failures
    ops = ctl.last_result.ops + ctl.dummy.sent
    parts = {f"sync_{k}_seconds": v for k, v in ctl.last_timings.items()}
    # The periodic full resync (--ipvs-sync-period) with nothing changed: no message sent.
    started = time.perf_counter()
    with gc_policy.bulk:
        await ctl.sync(None)
    resync_seconds = time.perf_counter() - started
    assert ctl.last_result.ops == 0 and not ctl.dummy.last_failures, ctl.last_result
    parts.update({f"resync_{k}_seconds": v for k, v in ctl.last_timings.items()})

    # One record per change: its latency, the controller's parts, the page faults and
    # context switches of the process, and any cyclic collection that ran (for the tail).
    events: list[dict] = []
    collections: list[int] = []

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            collections.append(info["generation"])

    gc.callbacks.append(on_gc)
    for c in range(changes):
        i = (c * 7919) % n
        # endpoint j leaves and endpoint 10+c joins, in one slice update
        old = sl_store.get(f"bench/svc-{i}-abc")
        eps = [j for j in range(ENDPOINTS) if j != c % ENDPOINTS] + [ENDPOINTS + c]
        rec = decode_endpointslice(_slice(i, eps))
        collections.clear()
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        sl_store.put(rec.key, rec)
        ctl.on_event(Event("EndpointSlice", EventType.MODIFIED, rec.key, rec, old))
        keys = ctl.queue.take()
        await ctl.sync(keys)
        latency = time.perf_counter() - t0
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        assert ctl.last_result.ops == 2 and not ctl.last_result.failures, ctl.last_result
        events.append({"seconds": latency, "parts": dict(ctl.last_timings),
                       "minflt": ru1.ru_minflt - ru0.ru_minflt,
                       "nivcsw": ru1.ru_nivcsw - ru0.ru_nivcsw,
                       "nvcsw": ru1.ru_nvcsw - ru0.ru_nvcsw, "gc": list(collections)})
    gc.callbacks.remove(on_gc)
    await ctl.stop()
    events.sort(key=lambda e: e["seconds"])
    latencies = [e["seconds"] for e in events]
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    parts_p50 = {f"event_{k}_p50_ms": statistics.median(e["parts"][k] for e in events) * 1000
                 for k in events[0]["parts"]}
    slowest = [{"ms": round(e["seconds"] * 1000, 3),
                **{k: round(v * 1000, 3) for k, v in e["parts"].items()},
                **{k: e[k] for k in ("minflt", "nivcsw", "nvcsw", "gc")}}
               for e in reversed(events[-3:])]
    return {"sync_seconds": sync_seconds, "sync_ops": ops, **parts,
            "resync_seconds": resync_seconds,
            "decode_seconds": decode_seconds,
            "event_p50_ms": statistics.median(latencies) * 1000, "event_p99_ms": p99 * 1000,
            "event_slowest": slowest, **parts_p50}


def phase_sync(n: int, changes: int, estimation: bool = True) -> dict:
    one_malloc_arena()  # as `kube-router-py run` does first
    _node_link()
    if not estimation:
        # The kernel's rate estimator walks every virtual and real server every 2 s (in
        # timer context on kernels before 6.2): off, it cannot land in a change's latency.
        with open("/proc/sys/net/ipv4/vs/run_estimation", "w") as f:
            f.write("0")
    return asyncio.run(_sync_and_events(n, changes))


async def _cold_sync(n: int) -> None:
    ctl = _controller(_agent(n)[0])
    await ctl.start()
    with gc_policy.bulk:
        await ctl.sync(None)
    assert not ctl.last_result.failures and not ctl.dummy.last_failures
    await ctl.stop()


async def _restart(n: int) -> dict:
    """A new agent over the kernel state a previous one left: the time to read that state
    (IPVS with every real server, the link's addresses and routes) and the first full
    sync, which must find nothing to send."""
    ctl = _controller(_agent(n)[0])
    started = time.perf_counter()
    await ctl.start()
    loaded = time.perf_counter()
    with gc_policy.bulk:
        await ctl.sync(None)
    done = time.perf_counter()
    ops = ctl.last_result.ops + ctl.dummy.sent
    assert not ctl.last_result.failures and not ctl.dummy.last_failures
    await ctl.stop()
    return {"restart_load_seconds": loaded - started, "restart_sync_seconds": done - loaded,
            "restart_ops": ops}


def phase_restart(n: int) -> dict:
    """A cold sync by one process, then the agent restarted: a second process, timed."""
    _node_link()
    proc = subprocess.run([sys.executable, "-m", "bench.proxy_ipvs", "--phase", "coldsync",
                           "--n", str(n)], capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"cold sync failed rc={proc.returncode}\n{proc.stderr[-3000:]}")
    one_malloc_arena()
    return asyncio.run(_restart(n))


# -- driver -----------------------------------------------------------------------------


def _in_netns(phase: str, n: int, changes: int, extra: tuple[str, ...] = ()) -> dict:
    ns = f"bench-{phase}-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        proc = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "bench.proxy_ipvs",
             "--phase", phase, "--n", str(n), "--changes", str(changes), *extra],
            capture_output=True, text=True, check=False, cwd=os.getcwd())
        if proc.returncode:
            raise SystemExit(f"phase {phase} failed rc={proc.returncode}\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def _syscall_us() -> float:
    started = time.perf_counter()
    for _ in range(2000):
        os.getppid()
    return (time.perf_counter() - started) / 2000 * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000, help="Services (each with 10 endpoints)")
    p.add_argument("--changes", type=int, default=200, help="S2 endpoint changes")
    p.add_argument("--repeat", type=int, default=3, help="runs of the floor and the sync")
    p.add_argument("--skip-ipvsadm", action="store_true")
    p.add_argument("--skip-pyroute2", action="store_true")
    p.add_argument("--no-estimation", action="store_true",
                   help="turn IPVS rate estimation off in the sync runs (net.ipv4.vs."
                        "run_estimation=0), to tell its timer's cost from the proxy's")
    p.add_argument("--phase",
                   choices=["floor", "ipvsadm", "pyroute2", "sync", "coldsync", "restart"],
                   help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phase == "coldsync":  # the first half of "restart", in its namespace
        one_malloc_arena()
        asyncio.run(_cold_sync(args.n))
        return
    if args.phase == "restart":
        print(json.dumps(phase_restart(args.n)))
        return
    if args.phase == "floor":
        print(json.dumps(phase_floor(args.n)))
        return
    if args.phase == "ipvsadm":
        print(json.dumps(phase_ipvsadm(args.n)))
        return
    if args.phase == "pyroute2":
        print(json.dumps(phase_pyroute2(args.n)))
        return
    if args.phase == "sync":
        print(json.dumps(phase_sync(args.n, args.changes, not args.no_estimation)))
        return
    result: dict = {"n": args.n, "endpoints_per_service": ENDPOINTS,
                    "estimation": not args.no_estimation,
                    "syscall_us": round(_syscall_us(), 1), "repeat": args.repeat}
    # Floor and sync alternate, each run in a fresh process and namespace; the run with the
    # median time stands for each (this guest's timings wander from run to run).
    floors, syncs = [], []
    for _ in range(args.repeat):
        floors.append(_in_netns("floor", args.n, args.changes))
        syncs.append(_in_netns("sync", args.n, args.changes,
                               ("--no-estimation",) if args.no_estimation else ()))
    floors.sort(key=lambda r: r["floor_seconds"])
    syncs.sort(key=lambda r: r["sync_seconds"])
    result.update(floors[len(floors) // 2])
    result.update(syncs[len(syncs) // 2])
    result["floor_samples"] = [round(r["floor_seconds"], 4) for r in floors]
    result["sync_samples"] = [round(r["sync_seconds"], 4) for r in syncs]
    # Every sync run also measured the events: their median p50 and p99 stand (a p99 of
    # 200 changes is the second-slowest one, which one pause of the host can make).
    for stat in ("event_p50_ms", "event_p99_ms"):
        result[stat] = statistics.median(r[stat] for r in syncs)
        result[stat.replace("_ms", "_samples")] = [round(r[stat], 3) for r in syncs]
    result["event_slowest"] = [r["event_slowest"] for r in syncs]
    result.update(_in_netns("restart", args.n, args.changes))
    if not args.skip_ipvsadm:
        result.update(_in_netns("ipvsadm", args.n, args.changes))
    else:
        result["ipvsadm_seconds"] = None
    if not args.skip_pyroute2:
        result.update(_in_netns("pyroute2", args.n, args.changes))
        result["pyroute2_vs_floor"] = round(
            (result["pyroute2_ipvs_seconds"] + result["pyroute2_addr_seconds"])
            / result["floor_seconds"], 1)
    result["sync_vs_floor"] = round(result["sync_seconds"] / result["floor_seconds"], 2)
    result["same_messages"] = result["messages"] == result["sync_ops"]
    if result["ipvsadm_seconds"]:
        result["ipvsadm_vs_sync"] = round(result["ipvsadm_seconds"] / result["sync_seconds"], 1)
    for k, v in list(result.items()):
        if isinstance(v, float):
            result[k] = round(v, 4)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
