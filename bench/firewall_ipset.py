"""Firewall benchmark (S3); run as root inside the lab guest.

    kube-router-py lab exec --mem 3G -- .venv/bin/python -m bench.firewall_ipset

1,000 NetworkPolicies over 5,000 pods in 100 namespaces (``--policies``, ``--pods``,
``--namespaces``), their peers a mix of pod selectors, namespace selectors (matchLabels and
matchExpressions), both in one peer, and ipBlocks with exceptions; ports numeric, ranges
and named. ``--local`` of the pods run on the benchmarked node (they get chains), the rest
elsewhere (they are only set members).

- ``full_seconds``: the controller's first full sync into an empty filter table and no sets:
  compiling every policy, the set members, the chains, and writing them.
- ``full_floor_seconds``: ``ipset restore`` plus ``iptables-restore`` of exactly the sets
  and rules that sync wrote, prebuilt as text, in a fresh namespace.
- ``pod_add_ms``: a pod of another node appears whose labels several policies' peers
  select: from the event to its address in the sets (ipset members only); the median of
  ``--changes`` pods. ``local_pod_add_ms``: the same for a pod of this node (its own chain
  and the top chains are written too).
- ``policy_change_seconds``: one policy's port changed: recompiling it and rewriting its
  chain; the median of ``--changes`` changes.
- ``chain_floor_seconds``: one ``iptables-restore --noflush`` of that single chain at the
  table's size (iptables-legacy replaces the whole table on every commit).

With ``--resyncs N`` it measures memory instead: a full sync, then N rounds of churn
(``--churn`` pods replaced by new ones of new names and addresses, one policy's port
changed, each as the event sync the agent would run) each followed by a periodic full sync
(which re-reads the kernel), with glibc's free pages returned after each as the agent does.
``rss_before_mib`` is after the first round, ``rss_after_mib`` after the last;
``blocks_*`` are Python's allocated blocks at the same points (object counts stay flat,
so a growing RSS is fragmentation).

Each phase runs in its own network namespace (iptables and ipsets are per namespace). The
last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

from kube_router import plugins
from kube_router.agent import Agent
from kube_router.kube.records import decode_namespace
from kube_router.kube.records import decode_networkpolicy
from kube_router.kube.records import decode_node
from kube_router.kube.records import decode_pod
from kube_router.linux import iptables
from kube_router.linux.memory import one_malloc_arena
from kube_router.linux.memory import trim
from kube_router.settings import parse
from kube_router_firewall_ipset import naming as nm
from kube_router_firewall_ipset import plugin
from kube_router_firewall_ipset import settings
from kube_router_firewall_ipset.controller import FirewallController

NODE = "bench-node"
APPS = 10  # distinct app labels per namespace
TEAMS = 10


def _pod_ip(i: int) -> str:
    return f"10.{64 + i // 65536}.{(i // 256) % 256}.{i % 256 or 1}"


def api_objects(args: argparse.Namespace) -> dict[str, list[dict]]:
    nss = [{"metadata": {"name": f"ns{n}", "uid": f"ns{n}", "resourceVersion": "1",
                         "labels": {"team": f"t{n % TEAMS}", "env": "prod" if n % 3 else
                                    "dev"}}}
           for n in range(args.namespaces)]
    pods = []
    for i in range(args.pods):
        n = i % args.namespaces
        pods.append(_pod(i, f"ns{n}", f"p{i}", i % args.pods_per_local == 0))
    pols = [_policy(k, args.namespaces) for k in range(args.policies)]
    node = {"metadata": {"name": NODE, "uid": NODE, "resourceVersion": "1"},
            "spec": {"podCIDR": "10.64.0.0/12", "podCIDRs": ["10.64.0.0/12"]}}
    return {"Namespace": nss, "Pod": pods, "NetworkPolicy": pols, "Node": [node]}


def _pod(i: int, ns: str, name: str, local: bool, ip_index: int | None = None) -> dict:
    """Pod ``i``'s labels and ports; its address is ``ip_index``'s (default ``i``)."""
    ip = _pod_ip(i if ip_index is None else ip_index)
    return {"metadata": {"namespace": ns, "name": name, "uid": name, "resourceVersion": "1",
                         "labels": {"app": f"a{i % APPS}", "tier": ("web", "db", "cache")[i % 3]}},
            "spec": {"nodeName": NODE if local else "other-node",
                     "containers": [{"name": "c", "ports": [
                         {"name": "http", "containerPort": 8080 + i % 2},
                         {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}


def _policy(k: int, namespaces: int, port: int = 80) -> dict:
    """Policy ``k`` of namespace k % namespaces; each namespace gets every kind in turn."""
    ns, idx = f"ns{k % namespaces}", k // namespaces
    app = f"a{idx % APPS}"
    peer_app = f"a{(idx + 1) % APPS}"
    kind = idx % 5
    spec: dict[str, Any] = {"podSelector": {"matchLabels": {"app": app}}}
    if kind == 0:  # pods of the namespace, numeric port
        spec["ingress"] = [{"from": [{"podSelector": {"matchLabels": {"app": peer_app}}}],
                            "ports": [{"port": port}]}]
    elif kind == 1:  # namespace AND pod selector, named port
        spec["ingress"] = [{"from": [{"namespaceSelector": {"matchLabels": {
            "team": f"t{idx % TEAMS}"}}, "podSelector": {"matchLabels": {"tier": "web"}}}],
            "ports": [{"port": "http"}, {"port": port}]}]
    elif kind == 2:  # ipBlock with exceptions, a port range
        spec["ingress"] = [{"from": [{"ipBlock": {"cidr": f"172.{16 + k % 16}.0.0/16",
                                                  "except": [f"172.{16 + k % 16}.1.0/24"]}}],
                            "ports": [{"protocol": "TCP", "port": port, "endPort": port + 20}]}]
    elif kind == 3:  # egress: expressions over namespaces, and the world but the cluster
        spec["policyTypes"] = ["Egress"]
        spec["egress"] = [
            {"to": [{"namespaceSelector": {"matchExpressions": [
                {"key": "env", "operator": "In", "values": ["prod"]}]},
                "podSelector": {"matchExpressions": [
                    {"key": "tier", "operator": "NotIn", "values": ["cache"]}]}}],
             "ports": [{"port": port}]},
            {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}]},
            {"ports": [{"protocol": "UDP", "port": 53}]}]
    else:  # both directions, several peers (a union)
        spec["policyTypes"] = ["Ingress", "Egress"]
        spec["ingress"] = [{"from": [{"podSelector": {"matchLabels": {"app": peer_app}}},
                                     {"podSelector": {"matchLabels": {"tier": "db"}}},
                                     {"ipBlock": {"cidr": "192.168.0.0/16"}}],
                            "ports": [{"port": port}, {"protocol": "UDP", "port": port}]}]
        spec["egress"] = [{"to": [{"podSelector": {}}]}]
    return {"metadata": {"namespace": ns, "name": f"pol{k}", "uid": f"pol{k}",
                         "resourceVersion": "1"}, "spec": spec}


DECODE = {"Pod": decode_pod, "Namespace": decode_namespace,
          "NetworkPolicy": decode_networkpolicy, "Node": decode_node}


def _controller(objs: dict[str, list[dict]]) -> FirewallController:
    config = parse(["--hostname-override", NODE], settings.add_options)
    pm = plugins.new_manager()
    pm.register(plugin, "firewall")
    agent = Agent.from_flags(config, pm, ["firewall"])
    ctl = FirewallController(agent, agent.startup.of("firewall"))
    for kind, items in objs.items():
        store = agent.store(kind)
        for obj in items:
            rec = DECODE[kind](obj)
            store.put(rec.key, rec)  # type: ignore[attr-defined]
    return ctl


def _table_size() -> dict[str, int]:
    saved = iptables.save_sync("filter")
    return {"chains": sum(1 for line in saved.splitlines() if line.startswith(":")),
            "rules": sum(1 for line in saved.splitlines() if line.startswith("-A"))}


def _restore_texts(ctl: FirewallController) -> tuple[str, str]:
    chains, sets = ctl.desired(4)
    ipset_lines = []
    for name, (stype, members) in sets.items():
        ipset_lines.append(f"create {name} {stype} family inet")
        ipset_lines += [f"add {name} {m}" for m in sorted(members)]
    ipt = ["*filter", *(f":{c} - [0:0]" for c in chains)]
    for c, rules in chains.items():
        ipt += [f"-A {c} {r}" for r in rules]
    ipt += [f"-I {b} 1 -m comment --comment \"{nm.COMMENT}\" -j {c}"
            for b, c in nm.TOP_CHAINS.items()]
    ipt.append("COMMIT")
    return "\n".join(ipset_lines) + "\n", "\n".join(ipt) + "\n"


def phase_floor(args: argparse.Namespace) -> dict:
    ctl = _controller(api_objects(args))
    ctl._full()  # the desired state only; nothing is written by the controller here
    ipset_text, ipt_text = _restore_texts(ctl)
    started = time.perf_counter()
    subprocess.run(["ipset", "restore"], input=ipset_text, text=True, check=True)
    mid = time.perf_counter()
    subprocess.run([iptables.tool("iptables-restore"), "-w", "5", "--noflush"],
                   input=ipt_text, text=True, check=True)
    done = time.perf_counter()
    return {"full_floor_seconds": done - started, "floor_ipset_seconds": mid - started,
            "floor_iptables_seconds": done - mid, **_table_size()}


def phase_sync(args: argparse.Namespace) -> dict:
    ctl = _controller(api_objects(args))
    started = time.perf_counter()
    asyncio.run(ctl.sync(None))
    full = time.perf_counter() - started
    w = ctl.last[4]
    out: dict[str, Any] = {"full_seconds": full, "full_ipset_seconds": w.ipset_seconds,
                           "full_iptables_seconds": w.iptables_seconds,
                           "sets": len(ctl.planes[4].sets), **_table_size()}
    started = time.perf_counter()
    asyncio.run(ctl.sync(None))
    out["resync_seconds"] = time.perf_counter() - started
    out["resync_wrote_nothing"] = ctl.last[4].empty

    async def changes() -> None:
        agent = ctl.agent
        pods = agent.store("Pod")
        remote, local, pol = [], [], []
        for j in range(args.changes):
            # a pod of another node, a twin of an existing one (so pod-, namespace- and
            # expression-selectors match it and its named ports add no number)
            twin = (j * 7919) % args.pods
            obj = _pod(twin, f"ns{twin % args.namespaces}", f"new{j}", False,
                       args.pods + j)
            rec = decode_pod(obj)
            t0 = time.perf_counter()
            pods.put(rec.key, rec)
            await ctl.sync(frozenset({("Pod", rec.key)}))
            remote.append(time.perf_counter() - t0)
            assert ctl.last[4].chains == 0 and ctl.last[4].sets > 0, ctl.last[4]
        for j in range(args.changes):
            twin = (j * 7919 + 3) % args.pods
            obj = _pod(twin, f"ns{twin % args.namespaces}", f"newlocal{j}", True,
                       args.pods + args.changes + j)
            rec = decode_pod(obj)
            t0 = time.perf_counter()
            pods.put(rec.key, rec)
            await ctl.sync(frozenset({("Pod", rec.key)}))
            local.append(time.perf_counter() - t0)
        policies = agent.store("NetworkPolicy")
        for j in range(args.changes):
            k = (j * 37) % args.policies
            rec = decode_networkpolicy(_policy(k, args.namespaces, port=1000 + j))
            t0 = time.perf_counter()
            policies.put(rec.key, rec)
            await ctl.sync(frozenset({("NetworkPolicy", rec.key)}))
            pol.append(time.perf_counter() - t0)
            assert ctl.last[4].chains == 1, ctl.last[4]
        out["pod_add_ms"] = statistics.median(remote) * 1000
        out["pod_add_max_ms"] = max(remote) * 1000
        out["local_pod_add_ms"] = statistics.median(local) * 1000
        out["policy_change_seconds"] = statistics.median(pol)
        out["policy_change_samples"] = [round(x, 4) for x in pol]
        # the floor of a policy change: its chain alone, written once more as it stands
        chain = next(iter(ctl.renders[(4, rec.key)].chains))
        rules = ctl.planes[4].chains[chain]
        text = "\n".join(["*filter", f":{chain} - [0:0]", *(f"-A {chain} {r}" for r in rules),
                          "COMMIT", ""])
        floors = []
        for _ in range(args.changes):
            t0 = time.perf_counter()
            subprocess.run([iptables.tool("iptables-restore"), "-w", "5", "--noflush"],
                           input=text, text=True, check=True)
            floors.append(time.perf_counter() - t0)
        out["chain_floor_seconds"] = statistics.median(floors)

    asyncio.run(changes())
    return out


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def phase_resync(args: argparse.Namespace) -> dict:
    ctl = _controller(api_objects(args))
    pods = ctl.agent.store("Pod")
    policies = ctl.agent.store("NetworkPolicy")
    names = {i: f"p{i}" for i in range(args.pods)}
    rss: list[float] = []
    blocks: list[int] = []

    async def run() -> None:
        await ctl.sync(None)
        for r in range(args.resyncs + 1):
            keys: set[tuple[str, str]] = set()
            for j in range(args.churn):
                i = (r * args.churn + j) * 7919 % args.pods
                ns = f"ns{i % args.namespaces}"
                pods.remove(f"{ns}/{names[i]}")
                keys.add(("Pod", f"{ns}/{names[i]}"))
                names[i] = f"p{i}-r{r}"
                rec = decode_pod(_pod(i, ns, names[i], i % args.pods_per_local == 0,
                                      args.pods + (r * args.churn + j) % 60000))
                pods.put(rec.key, rec)
                keys.add(("Pod", rec.key))
            k = (r * 37) % args.policies
            pol = decode_networkpolicy(_policy(k, args.namespaces, port=1000 + r % 2))
            policies.put(pol.key, pol)
            keys.add(("NetworkPolicy", pol.key))
            await ctl.sync(frozenset(keys))
            await ctl.sync(None)
            trim()
            rss.append(_rss_mib())
            blocks.append(sys.getallocatedblocks())

    started = time.perf_counter()
    asyncio.run(run())
    return {"resync_round_seconds": (time.perf_counter() - started) / (args.resyncs + 1),
            "rss_before_mib": rss[0], "rss_after_mib": rss[-1],
            "rss_growth": rss[-1] / rss[0] - 1, "rss_mib": [round(x, 1) for x in rss],
            "blocks_before": blocks[0], "blocks_after": blocks[-1]}


def _in_netns(phase: str, argv: list[str]) -> dict:
    ns = f"bench-fw-{phase}-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m",
                               "bench.firewall_ipset", "--phase", phase, *argv],
                              capture_output=True, text=True, check=False, cwd=os.getcwd())
        if proc.returncode:
            raise SystemExit(f"phase {phase} failed rc={proc.returncode}\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--policies", type=int, default=1000)
    p.add_argument("--pods", type=int, default=5000)
    p.add_argument("--namespaces", type=int, default=100)
    p.add_argument("--pods-per-local", type=int, default=10,
                   help="one pod in this many runs on the benchmarked node (default 10)")
    p.add_argument("--changes", type=int, default=20)
    p.add_argument("--resyncs", type=int, default=0,
                   help="measure memory over this many churn rounds and full syncs")
    p.add_argument("--churn", type=int, default=50,
                   help="pods replaced per round with --resyncs (default 50)")
    p.add_argument("--phase", choices=["floor", "sync", "resync"], help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ.setdefault("KUBE_ROUTER_IPTABLES", "legacy")
    if args.phase:
        one_malloc_arena()
        fn = {"floor": phase_floor, "sync": phase_sync, "resync": phase_resync}[args.phase]
        print(json.dumps(fn(args)))
        return
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
            if k != "phase"]
    result: dict[str, Any] = {k: v for k, v in vars(args).items() if k != "phase"}
    result["local_pods"] = len(range(0, args.pods, args.pods_per_local))
    if args.resyncs:
        result.update(_in_netns("resync", argv))
        print(json.dumps(result))
        return
    floor = _in_netns("floor", argv)
    sync = _in_netns("sync", argv)
    result["floor_table"] = {"chains": floor.pop("chains"), "rules": floor.pop("rules")}
    result["sync_table"] = {"chains": sync.pop("chains"), "rules": sync.pop("rules")}
    result.update(floor)
    result.update(sync)
    result["full_vs_floor"] = result["full_seconds"] / result["full_floor_seconds"]
    result["policy_change_vs_chain_floor"] = (result["policy_change_seconds"]
                                              / result["chain_floor_seconds"])
    for k, v in list(result.items()):
        if isinstance(v, float):
            result[k] = round(v, 4)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
