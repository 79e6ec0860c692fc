"""How fast learned BGP routes reach the kernel (S4), against ``ip -batch``.

Two namespaces joined by a veth, a gobgpd in each: the feeder announces N /24 paths through
gRPC AddPathStream (1,000 per message); the node's gobgpd learns them, and the router's own
watcher and installer (the code the agent runs) write them as proto 17 routes. Then one
path is withdrawn and timed until its route is gone. Finally ``ip -batch`` adds the same N
routes in a fresh namespace, and the installer's bare kernel writer does the same, for the
ratios. Run it inside the lab guest, as root:

    kube-router-py lab exec -- .venv/bin/python -m bench.routing_bgp --n 5000

The last line printed is one JSON object: ``n``, ``install_seconds`` (last path delivered
by the node's gobgpd to all N routes in the kernel), ``ip_batch_seconds``, ``ratio``,
``withdraw_ms``, and the details: ``feed_seconds`` (AddPathStream on the feeder),
``first_to_kernel_seconds`` (first path delivered to all N in the kernel),
``kernel_write_seconds`` (our batched writer alone, N routes, fresh namespace). pyroute2,
which this project uses wherever it is not slower, does the writer's work in a fresh
namespace too: ``pyroute2_write_seconds`` (one call per route), and reads the N routes back,
``pyroute2_dump_seconds`` against ``kernel_dump_seconds`` (our dump); ``--skip-pyroute2``
leaves those out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import uuid

from kube_router_routing_bgp.gobgpd import Gobgpd
from kube_router_routing_bgp.gobgpd import PeerConfig
from kube_router_routing_bgp.kernel_routes import Route
from kube_router_routing_bgp.kernel_routes import RouteTable
from kube_router_routing_bgp.route_sync import RouteInstaller

ASN = 64512
IP_A, IP_B = "192.168.77.1", "192.168.77.2"


def ip(*args: str) -> str:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: rc={proc.returncode} {proc.stderr.strip()}")
    return proc.stdout


def prefixes(n: int) -> list[str]:
    return [f"10.{100 + i // 256}.{i % 256}.0/24" for i in range(n)]


def make_pair(tag: str) -> tuple[str, str]:
    a, b = f"bench-a-{tag}", f"bench-b-{tag}"
    ip("netns", "add", a)
    ip("netns", "add", b)
    ip("-n", a, "link", "add", "name", "eth0", "type", "veth", "peer", "name", "eth0",
       "netns", b)
    for ns, addr in ((a, IP_A), (b, IP_B)):
        ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        ip("-n", ns, "link", "set", "lo", "up")
    return a, b


def count_proto17(ns: str) -> int:
    return len(ip("-n", ns, "route", "show", "proto", "17").splitlines())


async def bench_bgp(n: int, a: str, b: str, tmp: str) -> dict[str, float]:
    feeder = Gobgpd(api_host=f"unix://{tmp}/a.sock", netns=a, log_level="error")
    node = Gobgpd(api_host=f"unix://{tmp}/b.sock", netns=b, log_level="error")
    table = RouteTable(netns=b)
    installer = RouteInstaller(table)
    tasks: list[asyncio.Task[None]] = []
    delivered: dict[str, float] = {}
    events = [0]
    try:
        for g, addr, other in ((feeder, IP_A, IP_B), (node, IP_B, IP_A)):
            await g.spawn()
            await g.start_bgp(asn=ASN, router_id=addr, listen_addresses=[addr])
            await g.add_peer(PeerConfig(address=other, asn=ASN, local_address=addr))
        await installer.load()

        async def watch() -> None:
            async for batch in node.watch_best():
                now = time.monotonic()
                events[0] += 1
                for p in batch:
                    delivered.setdefault(p.prefix, now)
                installer.update(batch)

        tasks = [asyncio.create_task(installer.run()), asyncio.create_task(watch())]
        deadline = time.monotonic() + 120
        while not any(p.state == "Establ" for p in await node.list_peers()):
            if time.monotonic() > deadline:
                raise RuntimeError("the two gobgpd never established")
            await asyncio.sleep(0.2)

        names = prefixes(n)
        table_full: list[float] = []

        async def poll_table() -> None:
            while True:
                dests, _ = await node.count_paths()
                if dests >= n:
                    table_full.append(time.monotonic())
                    return
                await asyncio.sleep(0.1)

        tasks.append(asyncio.create_task(poll_table()))
        t_feed = time.monotonic()
        await feeder.add_paths_stream([(p, IP_A) for p in names])
        feed_s = time.monotonic() - t_feed
        deadline = time.monotonic() + 600
        while len(installer.actual) < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(installer.actual)} of {n} routes installed")
            await asyncio.sleep(0.001)
        t_done = installer.last_install
        first = min(delivered[p] for p in names)
        last = max(delivered[p] for p in names)
        in_kernel = count_proto17(b)
        if in_kernel != n:
            raise RuntimeError(f"kernel holds {in_kernel} proto 17 routes, expected {n}")

        # one withdrawal at that size, from the feeder's DeletePath to the route gone
        victim = names[n // 2]
        t0 = time.monotonic()
        await feeder.delete_path(victim, IP_A)
        while victim in installer.actual:
            await asyncio.sleep(0.0005)
        withdraw_ms = (installer.last_install - t0) * 1000
        if victim in ip("-n", b, "route", "show", "proto", "17", victim):
            raise RuntimeError(f"{victim} still in the kernel after its withdrawal")
        return {"feed_seconds": round(feed_s, 3),
                "install_seconds": round(max(0.0, t_done - last), 4),
                "first_to_kernel_seconds": round(t_done - first, 3),
                "batches": installer.batches,
                "watch_events": events[0],
                "delivery_spread_seconds": round(last - first, 3),
                "node_table_full_after_feed_start": round(table_full[0] - t_feed, 3)
                if table_full else None,
                "withdraw_ms": round(withdraw_ms, 2)}
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        table.close()
        await feeder.stop()
        await node.stop()


def bench_ip_batch(n: int, tag: str, tmp: str) -> float:
    a, b = make_pair(tag + "i")
    try:
        path = f"{tmp}/routes.batch"
        with open(path, "w") as fh:
            for p in prefixes(n):
                fh.write(f"route add {p} via {IP_A} proto 17\n")
        t0 = time.monotonic()
        ip("-n", b, "-batch", path)
        elapsed = time.monotonic() - t0
        if count_proto17(b) != n:
            raise RuntimeError("ip -batch did not add every route")
        return elapsed
    finally:
        ip("netns", "del", a)
        ip("netns", "del", b)


def bench_kernel_writer(n: int, tag: str) -> float:
    a, b = make_pair(tag + "k")
    try:
        table = RouteTable(netns=b)
        routes = [Route(dst=p, gateway=IP_A) for p in prefixes(n)]
        t0 = time.monotonic()
        errors = table.apply(add=routes)
        elapsed = time.monotonic() - t0
        table.close()
        if errors or count_proto17(b) != n:
            raise RuntimeError(f"kernel writer: {len(errors)} errors")
        return elapsed
    finally:
        ip("netns", "del", a)
        ip("netns", "del", b)


def bench_pyroute2(n: int, tag: str) -> dict[str, float]:
    """pyroute2 writing the same N routes one call each, then reading them back beside our
    dump of the same table."""
    from pyroute2 import IPRoute

    a, b = make_pair(tag + "p")
    try:
        with IPRoute(netns=b) as ipr:
            t0 = time.monotonic()
            for p in prefixes(n):
                net, plen = p.split("/")
                ipr.route("add", dst=net, dst_len=int(plen), gateway=IP_A, proto=17)
            write_s = time.monotonic() - t0
            t0 = time.monotonic()
            theirs = [r for r in ipr.get_routes(family=2) if r["proto"] == 17]
            pyroute2_dump_s = time.monotonic() - t0
        table = RouteTable(netns=b)
        try:
            t0 = time.monotonic()
            ours = table.dump()
            dump_s = time.monotonic() - t0
        finally:
            table.close()
        if len(theirs) != n or len(ours) != n:
            raise RuntimeError(f"pyroute2 read {len(theirs)} routes, ours {len(ours)}, of {n}")
        return {"pyroute2_write_seconds": round(write_s, 4),
                "pyroute2_dump_seconds": round(pyroute2_dump_s, 4),
                "kernel_dump_seconds": round(dump_s, 4)}
    finally:
        ip("netns", "del", a)
        ip("netns", "del", b)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.routing_bgp")
    parser.add_argument("--n", type=int, default=5000, help="paths/routes (default 5000)")
    parser.add_argument("--skip-pyroute2", action="store_true",
                        help="leave out pyroute2's rows (writing and reading the routes)")
    args = parser.parse_args(argv)
    if not 1 <= args.n <= 60000:
        parser.error("--n must be from 1 to 60000")
    tag = uuid.uuid4().hex[:6]
    with tempfile.TemporaryDirectory() as tmp:
        a, b = make_pair(tag)
        try:
            result = asyncio.run(bench_bgp(args.n, a, b, tmp))
        finally:
            ip("netns", "del", a)
            ip("netns", "del", b)
        ip_batch_s = bench_ip_batch(args.n, tag, tmp)
    writer_s = bench_kernel_writer(args.n, tag)
    out = {"n": args.n, **result, "ip_batch_seconds": round(ip_batch_s, 4),
           "kernel_write_seconds": round(writer_s, 4)}
    out["ratio"] = round(out["install_seconds"] / ip_batch_s, 3) if ip_batch_s else None
    out["kernel_write_ratio"] = round(writer_s / ip_batch_s, 3) if ip_batch_s else None
    if not args.skip_pyroute2:
        out.update(bench_pyroute2(args.n, tag))
        out["pyroute2_write_vs_ours"] = round(out["pyroute2_write_seconds"] / writer_s, 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
