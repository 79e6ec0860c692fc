"""A third-party plugin: writes one line per Service event it receives to a file."""

from __future__ import annotations

import argparse

from kube_router import hookimpl
from kube_router.controller import Controller


@hookimpl
def kube_router_add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("hello")
    group.add_argument("--hello-record", metavar="FILE",
                       help="append every Service event seen to FILE")


class HelloController(Controller):
    name = "hello"
    kinds = ("Service",)

    def on_event(self, event) -> None:
        with open(self.agent.config.hello_record, "a") as f:
            f.write(f"{event.type.value} {event.key}\n")
        super().on_event(event)

    async def sync(self, keys) -> None:
        pass


@hookimpl
def kube_router_controllers(agent):
    return [HelloController(agent)] if agent.config.hello_record else []
