"""What a scenario runs against: the interface every backend implements, and the parts of
a run that do not depend on which cluster is behind it.

Two backends implement :class:`Backend`: the lab (:class:`kube_router_lab.cluster.Lab`, a
cluster in network namespaces) and a kind cluster (:class:`kube_router_lab.kind.KindCluster`,
Kubernetes in containers). The runner, the substitutions, the readiness check (the
convergence gate of :mod:`kube_router_lab.versions`) and the report are shared, so a backend
only says how to reach its cluster.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from collections.abc import Mapping
from typing import Any
from typing import Protocol

#: Returns an API object as a dict, or None when it does not exist.
ObjectGetter = Callable[[str, str | None, str], Mapping[str, Any] | None]


class Backend(Protocol):
    """A cluster a scenario's steps run against."""

    def up(self) -> None: ...
    def down(self) -> None: ...
    def apply(self, docs: list[dict]) -> None: ...
    def delete(self, kind: str, namespace: str | None, name: str) -> None: ...
    def annotate(self, kind: str, namespace: str | None, name: str,
                 changes: dict[str, str | None]) -> None: ...
    #: The newest change of each kind, a token ``Kind=rv,...`` (kube_router_lab.versions).
    def resource_version(self) -> str: ...
    def settle(self, timeout: float = 60.0) -> bool: ...
    #: Node -> why its agent has not applied every change in the token (the versions
    #: placed kind by kind, never read as numbers); empty when all have.
    def unsynced(self, resource_version: str) -> dict[str, str]: ...
    def substitute(self, key: str) -> str: ...
    def run(self, where: str, argv: list[str], timeout: float = 30.0) -> tuple[int, str, str]: ...
    def restart(self, target: str, node: str | None = None, signal: str = "TERM",
                down: float | None = None, cleanup: bool = False) -> None: ...
    def reach(self, src: str, target: str, timeout: float = 1.0) -> bool: ...
    def diagnostics(self, say: Callable[[str], None]) -> None: ...


def substitute(key: str, get: ObjectGetter, node_ip: Callable[[str], str],
               node_name: Callable[[str], str] = str) -> str:
    """Resolve ``svc:NS/NAME``, ``nodeport:NS/NAME:PORT``, ``pod:NS/NAME``, ``node:NAME``
    or ``podcidr:NAME`` from the cluster's objects; KeyError with the reason when it cannot.
    ``node_name`` maps a lab node's name to its Node object's."""
    kind, _, ref = key.partition(":")
    if kind == "node":
        return node_ip(ref)
    if kind == "podcidr":
        # Node IPAM hands out CIDRs in the order it sees the Nodes, which a busy API server
        # can shuffle: a scenario names the node, never the /24 it expects it to hold.
        node = get("Node", None, node_name(ref))
        cidr = ((node or {}).get("spec") or {}).get("podCIDR")
        if not cidr:
            raise KeyError(f"node {ref} has no pod CIDR")
        return str(cidr)
    if kind == "pod":
        namespace, _, name = ref.partition("/")
        pod = get("Pod", namespace, name)
        ip = ((pod or {}).get("status") or {}).get("podIP")
        if not ip:
            raise KeyError(f"pod {ref} has no IP")
        return ip
    if kind in ("svc", "nodeport"):
        svc_ref, _, port = ref.partition(":") if kind == "nodeport" else (ref, "", "")
        namespace, _, name = svc_ref.partition("/")
        svc = get("Service", namespace, name)
        if svc is None:
            raise KeyError(f"service {svc_ref} does not exist")
        spec = svc.get("spec") or {}
        if kind == "svc":
            if spec.get("clusterIP") in (None, "", "None"):
                raise KeyError(f"service {svc_ref} has no cluster IP")
            return spec["clusterIP"]
        for p in spec.get("ports") or []:
            if str(p.get("port")) == port and p.get("nodePort"):
                return str(p["nodePort"])
        raise KeyError(f"service {svc_ref} has no node port for port {port!r}")
    raise KeyError(f"unknown substitution {key!r} (svc:, nodeport:, pod:, node:, podcidr:)")


def reach_target(target: str, resolve: Callable[[str], str]) -> tuple[str, int, bool]:
    """``NS/POD:PORT[/udp]`` or ``svc:NS/NAME:PORT[/udp]`` -> (address, port, udp)."""
    udp = target.endswith("/udp")
    body = target.removesuffix("/udp").removesuffix("/tcp")
    ref, _, port_s = body.rpartition(":")
    if not port_s.isdigit() or not ref:
        raise KeyError(f"reach target {target!r}: expected NS/POD:PORT[/udp] or "
                       "svc:NS/NAME:PORT[/udp]")
    addr = resolve(ref) if ref.startswith("svc:") else resolve(f"pod:{ref}")
    return addr, int(port_s), udp


def execute(backend: Backend, run_steps: Callable[[], dict[str, Any]], *, name: str,
            say: Callable[[str], None], what: str = "cluster") -> dict[str, Any]:
    """Bring ``backend`` up, run the steps, always take it down; the report's dict.

    A backend that fails to come up (or a runner that crashes) gives a failed report with
    the error, never an exception: the caller still writes its report.
    """
    started = time.monotonic()
    result: dict[str, Any]
    try:
        say(f"\nbringing the {what} up")
        t0 = time.monotonic()
        backend.up()
        say(f"{what} up in {time.monotonic() - t0:.1f}s")
        result = run_steps()
        result["seconds"] = round(time.monotonic() - started, 3)  # the start-up too
    except Exception as exc:
        msg = f"{what} failed: {type(exc).__name__}: {exc}"
        say(f"\nFAILED: {name}: {msg}")
        result = {"scenario": name, "passed": False,
                  "seconds": round(time.monotonic() - started, 3), "steps": [], "error": msg}
    finally:
        try:
            backend.down()
        except Exception as exc:
            say(f"{what}: teardown failed: {type(exc).__name__}: {exc}")
    return result
