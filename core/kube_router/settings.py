"""The core's flags and the frozen settings built from them once, at start-up.

The core owns every flag more than one plugin reads (the node's name, the Service CIDRs,
the address families, the NodePort range) as well as its own (API access, health and
metrics addresses). Plugins read those from :class:`CoreSettings`, which they are handed
by the hooks; each plugin builds its own frozen settings from its own flags.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import FrozenInstanceError
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any
from typing import Protocol

import pluggy

from kube_router.errors import UsageError
from kube_router.flags import boolean
from kube_router.flags import cidr_list
from kube_router.flags import port_range
from kube_router.hookcall import one_by_one

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_SERVICE_CIDR = "10.96.0.0/12"


class Flags(argparse.Namespace):
    """The parsed command line, read-only.

    Settings are built from it once; a write after start-up would be seen by some readers
    and not others, so every write raises.
    """

    def __init__(self, parsed: argparse.Namespace | Mapping[str, Any]) -> None:
        values = parsed if isinstance(parsed, Mapping) else vars(parsed)
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot set {name!r}: the parsed flags are read-only")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete {name!r}: the parsed flags are read-only")


class ArgumentAdder(Protocol):
    """A parser or one of its argument groups."""

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action: ...


def add_options(parser: argparse.ArgumentParser) -> None:
    """The core's flags, in a group of their own (``kube-router-py --help`` lists them)."""
    add_to_group(parser.add_argument_group("core"))


def add_to_group(g: ArgumentAdder) -> None:
    """The core's flags, added to a group the caller made."""
    g.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"),
                   help="kubeconfig file (default: in-cluster config)")
    g.add_argument("--master", help="API server address, overriding the kubeconfig's")
    g.add_argument("--hostname-override",
                   help="this node's name (default: $NODE_NAME, else the hostname)")
    g.add_argument("--health-addr", default="0.0.0.0", help="health server address")
    g.add_argument("--health-port", type=int, default=20244,
                   help="/healthz, /readyz and /metrics port; 0 turns it off")
    g.add_argument("--metrics-addr", default="0.0.0.0")
    g.add_argument("--metrics-port", type=int, default=0,
                   help="a separate Prometheus port (0: /metrics on the health port only)")
    g.add_argument("--metrics-path", default="/metrics")
    g.add_argument("--cleanup-config", action="store_true",
                   help="remove every kernel object the installed plugins made, then exit")
    g.add_argument("-v", "--v", dest="verbose", action="count", default=0,
                   help="more logging; repeat for more")
    g.add_argument("--service-cluster-ip-range", type=cidr_list, action="append",
                   help=f"Service cluster IP CIDRs, comma-separated, repeatable "
                        f"(default {DEFAULT_SERVICE_CIDR})")
    g.add_argument("--service-node-port-range", type=port_range, default=(30000, 32767),
                   help="NodePort range (default 30000-32767)")
    g.add_argument("--enable-ipv4", type=boolean, nargs="?", const=True, default=True,
                   metavar="BOOL", help="serve IPv4 (default true)")
    g.add_argument("--enable-ipv6", type=boolean, nargs="?", const=True, default=False,
                   metavar="BOOL", help="serve IPv6 (default false)")


def _port(flag: str, value: int) -> int:
    if not 0 <= value <= 65535:
        raise UsageError(f"{flag} must be from 0 to 65535, got {value}")
    return value


def _flatten(values: Iterable[Any] | None) -> list[str]:
    # A repeatable comma-list flag parses to a list of lists.
    out: list[str] = []
    for v in values or ():
        out.extend(v if isinstance(v, list) else [v])
    return out


def networks(values: Iterable[Any] | None) -> tuple[Network, ...]:
    """The networks of a repeatable CIDR-list flag (already checked by its type)."""
    return tuple(ipaddress.ip_network(v, strict=False) for v in _flatten(values))


@dataclass(frozen=True, slots=True)
class CoreSettings:
    """What the core and every plugin share, from the core's flags."""

    node_name: str
    enabled: frozenset[str]  # the enabled plugins' names
    kubeconfig: str | None
    master: str | None
    health_addr: str
    health_port: int  # 0: no health server
    metrics_addr: str
    metrics_port: int  # 0: /metrics on the health port only
    metrics_path: str
    cleanup: bool  # --cleanup-config
    verbose: int
    service_cidrs: tuple[Network, ...]
    nodeport_range: tuple[int, int]
    ipv4: bool
    ipv6: bool

    @property
    def families(self) -> tuple[int, ...]:
        """The address families served: 4 and/or 6."""
        return tuple(f for f, on in ((4, self.ipv4), (6, self.ipv6)) if on)

    @classmethod
    def from_flags(cls, flags: argparse.Namespace, enabled: Iterable[str] = (),
                   environ: Mapping[str, str] = os.environ) -> CoreSettings:
        """Check the core's flags; a bad one raises :class:`UsageError` naming it."""
        if not (flags.enable_ipv4 or flags.enable_ipv6):
            raise UsageError("--enable-ipv4 and --enable-ipv6 are both false: "
                             "no address family left to serve")
        if not flags.metrics_path.startswith("/"):
            raise UsageError(f"--metrics-path must start with '/', got {flags.metrics_path!r}")
        cidrs = networks(flags.service_cluster_ip_range) or (
            ipaddress.ip_network(DEFAULT_SERVICE_CIDR),)
        return cls(
            node_name=(flags.hostname_override or environ.get("NODE_NAME")
                       or socket.gethostname()),
            enabled=frozenset(enabled),
            kubeconfig=flags.kubeconfig,
            master=flags.master,
            health_addr=flags.health_addr,
            health_port=_port("--health-port", flags.health_port),
            metrics_addr=flags.metrics_addr,
            metrics_port=_port("--metrics-port", flags.metrics_port),
            metrics_path=flags.metrics_path,
            cleanup=bool(flags.cleanup_config),
            verbose=int(flags.verbose),
            service_cidrs=cidrs,
            nodeport_range=(int(flags.service_node_port_range[0]),
                            int(flags.service_node_port_range[1])),
            ipv4=bool(flags.enable_ipv4),
            ipv6=bool(flags.enable_ipv6),
        )


@dataclass(frozen=True, slots=True)
class Startup:
    """Everything settled before the agent starts: the flags, the core's settings and each
    enabled plugin's, each built once."""

    flags: Flags
    core: CoreSettings
    enabled: tuple[str, ...]  # in the order given
    plugins: Mapping[str, Any]  # plugin name -> what its kube_router_settings returned

    def of(self, plugin: str) -> Any:
        return self.plugins.get(plugin)


def configure(pm: pluggy.PluginManager, flags: Flags, enabled: Iterable[str]) -> Startup:
    """The core's settings, then each enabled plugin's (its checks first, if it has any).

    Raises :class:`UsageError` naming the flag at fault."""
    names = tuple(enabled)
    core = CoreSettings.from_flags(flags, names)
    for _, check in one_by_one(pm, "kube_router_configure", among=names):
        check(config=flags, core=core)
    built: dict[str, Any] = {}
    for name, build in one_by_one(pm, "kube_router_settings", among=names):
        results = build(config=flags, core=core)
        built[name] = results[0] if results else None
    return Startup(flags, core, names, MappingProxyType(built))


def parse(argv: Iterable[str] = (), *options: Any) -> Flags:
    """The read-only flags of ``argv`` with the core's options and each given ``add_options``
    function's (tests, benchmarks and embedding build settings from this)."""
    parser = argparse.ArgumentParser(prog="kube-router-py")
    add_options(parser)
    for add in options:
        add(parser)
    return Flags(parser.parse_args(list(argv)))
