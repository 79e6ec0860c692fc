"""Mirror a running gobgpd's best paths into this network namespace's kernel table.

gobgpd cannot write kernel routes by itself (that takes zebra). Run beside one, as
``python -m kube_router_routing_bgp.mirror_routes HOST:PORT``, it installs every best path
as a route of protocol 17, as the agent does, and follows the changes until it is ended.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from kube_router_routing_bgp.gobgpd import Gobgpd
from kube_router_routing_bgp.kernel_routes import RouteTable
from kube_router_routing_bgp.route_sync import RouteInstaller


async def mirror(api_host: str) -> None:
    client = Gobgpd(api_host=api_host)
    client.connect()
    installer = RouteInstaller(RouteTable())
    await installer.load()
    writer = asyncio.create_task(installer.run())
    while not writer.done():
        try:
            async for batch in client.watch_best():
                installer.update(batch)
        except Exception as exc:  # gobgpd restarting, or not up yet: watch again
            print(f"event=watch_failed error={exc}", flush=True)
        await asyncio.sleep(1)
    await writer


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kube_router_routing_bgp.mirror_routes",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("api", metavar="HOST:PORT", help="the gobgpd API address")
    args = parser.parse_args(argv)
    asyncio.run(mirror(args.api))
    return 0


if __name__ == "__main__":
    sys.exit(main())
