"""A third-party plugin: writes one line per Service event it receives to a file."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from kube_router import hookimpl
from kube_router.controller import Controller


@dataclass(frozen=True)
class HelloSettings:
    record: str | None  # the file events are appended to; None: the plugin does nothing


@hookimpl
def kube_router_add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("hello")
    group.add_argument("--hello-record", metavar="FILE",
                       help="append every Service event seen to FILE")


@hookimpl
def kube_router_settings(config: argparse.Namespace) -> HelloSettings:
    return HelloSettings(record=config.hello_record)


class HelloController(Controller):
    name = "hello"
    kinds = ("Service",)

    def __init__(self, agent, record: str) -> None:
        super().__init__(agent)
        self.record = record

    def on_event(self, event) -> None:
        with open(self.record, "a") as f:
            f.write(f"{event.type.value} {event.key}\n")
        super().on_event(event)

    async def sync(self, keys) -> None:
        pass


@hookimpl
def kube_router_controllers(agent, settings: HelloSettings):
    return [HelloController(agent, settings.record)] if settings.record else []
