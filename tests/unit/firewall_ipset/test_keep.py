"""A full sync that finds nothing changed keeps the long-lived objects it holds (compiled
policies, renders, chains, member sets): the equal copies it rebuilt die at once."""

from __future__ import annotations

from typing import Any

from kube_router import plugins
from kube_router.agent import Agent
from kube_router.kube.records import decode_namespace
from kube_router.kube.records import decode_networkpolicy
from kube_router.kube.records import decode_node
from kube_router.kube.records import decode_pod
from kube_router.settings import parse
from kube_router_firewall_ipset import naming as nm
from kube_router_firewall_ipset import plugin
from kube_router_firewall_ipset import settings
from kube_router_firewall_ipset.controller import FirewallController

NODE = "n0"


def controller() -> FirewallController:
    config = parse(["--hostname-override", NODE], settings.add_options)
    pm = plugins.new_manager()
    pm.register(plugin, "firewall")
    agent = Agent.from_flags(config, pm, ["firewall"])
    return FirewallController(agent, agent.startup.of("firewall"))


def put(ctl: FirewallController, kind: str, decode: Any, obj: dict[str, Any]) -> str:
    rec = decode(obj)
    ctl.agent.store(kind).put(rec.key, rec)
    return str(rec.key)


def pod(ctl: FirewallController, name: str, ns: str, ip: str, labels: dict[str, str],
        node: str = NODE) -> str:
    return put(ctl, "Pod", decode_pod, {
        "metadata": {"namespace": ns, "name": name, "uid": name, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [
            {"name": "http", "containerPort": 8080}]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})


def policy(ctl: FirewallController, name: str, spec: dict[str, Any]) -> str:
    return put(ctl, "NetworkPolicy", decode_networkpolicy,
               {"metadata": {"namespace": "x", "name": name, "uid": name}, "spec": spec})


def world(ctl: FirewallController) -> None:
    put(ctl, "Node", decode_node, {"metadata": {"name": NODE, "uid": NODE},
                                   "spec": {"podCIDR": "10.77.0.0/24",
                                            "podCIDRs": ["10.77.0.0/24"]}})
    for ns in ("x", "y"):
        put(ctl, "Namespace", decode_namespace,
            {"metadata": {"name": ns, "uid": ns, "labels": {"ns": ns}}})
    pod(ctl, "a", "x", "10.77.0.11", {"app": "a"})
    pod(ctl, "b", "x", "10.77.0.12", {"app": "b"})
    pod(ctl, "c", "y", "10.77.0.13", {"app": "c"}, node="other")
    policy(ctl, "sel", {"podSelector": {"matchLabels": {"app": "a"}},
                        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "b"}}}],
                                     "ports": [{"port": "http"}, {"port": 80}]}]})
    policy(ctl, "ns", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
                       "ingress": [{"from": [{"namespaceSelector": {
                           "matchLabels": {"ns": "y"}}}]}],
                       "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0",
                                                       "except": ["10.0.0.0/8"]}}]}]})


def snapshot(ctl: FirewallController) -> dict[str, Any]:
    chains, sets = ctl.desired(4)
    return {"policies": dict(ctl.policies), "renders": dict(ctl.renders),
            "render_chains": {k: dict(r.chains) for k, r in ctl.renders.items()},
            "specs": dict(ctl.specs[4]), "members": dict(sets),
            "pod_chains": dict(ctl.pod_chains[4]), "chains": chains,
            "containers": [ctl.policies, ctl.renders, ctl.members[4], ctl.specs[4],
                           ctl.pod_chains[4], ctl.local, ctl.seen]}


def full(ctl: FirewallController) -> None:
    ctl.cluster.begin()
    ctl._full()


def same(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Keys whose values are not the very same objects."""
    return [k for k in before.keys() | after.keys() if before.get(k) is not after.get(k)]


def test_a_full_sync_with_nothing_changed_keeps_every_object() -> None:
    ctl = controller()
    world(ctl)
    full(ctl)
    s1 = snapshot(ctl)
    assert s1["members"] and s1["pod_chains"] and len(s1["renders"]) == 2
    full(ctl)
    s2 = snapshot(ctl)
    for part in ("policies", "renders", "specs", "members", "pod_chains", "chains"):
        assert not same(s1[part], s2[part]), part
    for key in s1["render_chains"]:
        assert not same(s1["render_chains"][key], s2["render_chains"][key])
    assert all(a is b for a, b in zip(s1["containers"], s2["containers"], strict=True))


def test_a_full_sync_replaces_only_what_changed() -> None:
    ctl = controller()
    world(ctl)
    full(ctl)
    s1 = snapshot(ctl)
    # b leaves the peers of "sel": that set and a's chain stay; the set's members change
    pod(ctl, "b", "x", "10.77.0.12", {"app": "z"})
    full(ctl)
    s2 = snapshot(ctl)
    changed = same(s1["members"], s2["members"])
    assert changed and len(changed) < len(s1["members"])
    assert all(s2["members"][n][1] != s1["members"][n][1] for n in changed)
    assert not same(s1["policies"], s2["policies"])
    # a policy's port changes: that policy alone is recompiled into new objects
    policy(ctl, "sel", {"podSelector": {"matchLabels": {"app": "a"}},
                        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "b"}}}],
                                     "ports": [{"port": "http"}, {"port": 81}]}]})
    full(ctl)
    s3 = snapshot(ctl)
    assert same(s2["policies"], s3["policies"]) == ["x/sel"]
    assert sorted(k for _, k in same(s2["renders"], s3["renders"])) == ["x/sel"]
    assert s3["chains"] == {**s2["chains"], **s3["chains"]}


def test_a_full_sync_forgets_the_names_of_deleted_objects() -> None:
    ctl = controller()
    world(ctl)
    full(ctl)
    gone = nm.policy_chain("x", "sel", "ingress")
    held = len(nm._hashes)
    ctl.agent.store("NetworkPolicy").remove("x/sel")
    ctl.agent.store("Pod").remove("x/b")
    full(ctl)
    assert gone not in ctl.desired(4)[0]
    assert "x/sel/ingress" not in nm._hashes and "x/b" not in nm._hashes
    assert len(nm._hashes) < held
