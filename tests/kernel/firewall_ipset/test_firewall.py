"""The firewall controller against the kernel: packets, idempotence, foreign objects,
refused restores, cleanup."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from kube_router.linux.run import RestoreError
from kube_router_firewall_ipset import naming as nm
from kube_router_firewall_ipset.cleanup import cleanup_sync
from kube_router_firewall_ipset.controller import FirewallController

pytestmark = pytest.mark.kernel


def controller(fw: SimpleNamespace, *args: str) -> FirewallController:
    agent = fw.make_agent(*args)
    return FirewallController(agent, agent.startup.of("firewall"))


def sync(ctl: FirewallController, *keys: tuple[str, str]) -> None:
    asyncio.run(ctl.sync(frozenset(keys) if keys else None))


def world(fw: SimpleNamespace, ctl: FirewallController, pods, v6: bool = False) -> None:
    """x/a (app=a, port name http=8080), x/b (app=b), y/c (app=c); namespaces labelled."""
    a = ctl.agent
    fw.put(a, fw.node([*( ["10.77.0.0/24"]), *(["fd77::/64"] if v6 else [])]))
    fw.put(a, fw.namespace("x", {"ns": "x"}))
    fw.put(a, fw.namespace("y", {"ns": "y"}))
    for name, ns, octet in (("a", "x", 11), ("b", "x", 12), ("c", "y", 13)):
        pods.add(name, octet)
        ips = [pods.ip[name], pods.ip6[name]] if v6 else pods.ip[name]
        fw.put(a, fw.pod(name, ns, ips, {"app": name},
                         [{"name": "http", "containerPort": 8080}]))


def matrix(pods, srcs: str, dsts: str, port: int = 8080, proto: str = "tcp",
           v6: bool = False) -> list[str]:
    return ["".join("1" if pods.reach(s, d, port, proto, v6) else "0" for d in dsts)
            for s in srcs]


def test_policies_on_real_packets(fw: SimpleNamespace, pods) -> None:
    ctl = controller(fw)
    world(fw, ctl, pods)
    a = ctl.agent
    sync(ctl)
    assert matrix(pods, "abc", "abc") == ["111", "111", "111"]

    # x/a admits app=b of its namespace on TCP 8080 (by name) and UDP 9090
    key = fw.put(a, fw.policy("a-in", "x", {
        "podSelector": {"matchLabels": {"app": "a"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "b"}}}],
                     "ports": [{"port": "http"}, {"protocol": "UDP", "port": 9090}]}]}))
    sync(ctl, ("NetworkPolicy", key))
    assert matrix(pods, "abc", "a") == ["1", "1", "0"]
    assert not pods.reach("b", "a", 9090)
    assert pods.reach("b", "a", 9090, "udp") and not pods.reach("c", "a", 9090, "udp")
    assert pods.reach("node", "a", 9090), "the node always reaches its own pods"
    assert matrix(pods, "a", "bc") == ["11"], "egress is open without an egress policy"

    # y/* admit x/a only: namespaceSelector AND podSelector in one peer; matchExpressions
    key2 = fw.put(a, fw.policy("from-x-a", "y", {
        "podSelector": {},
        "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [
            {"key": "ns", "operator": "In", "values": ["x"]}]},
            "podSelector": {"matchExpressions": [
                {"key": "app", "operator": "NotIn", "values": ["b"]}]}}]}]}))
    sync(ctl, ("NetworkPolicy", key2))
    assert matrix(pods, "ab", "c") == ["1", "0"]

    # b relabelled: it loses x/a (pod selector) and gains y/c (NotIn b)
    fw.put(a, fw.pod("b", "x", pods.ip["b"], {"app": "z"}))
    sync(ctl, ("Pod", "x/b"))
    assert matrix(pods, "b", "ac") == ["01"]

    # namespace y relabelled: no longer matched by anything, nothing changes for c's own
    # ingress; x/a's second policy by namespace now admits y
    key3 = fw.put(a, fw.policy("a-from-ns-y", "x", {
        "podSelector": {"matchLabels": {"app": "a"}},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "blue"}}}]}]}))
    sync(ctl, ("NetworkPolicy", key3))
    assert not pods.reach("c", "a")
    fw.put(a, fw.namespace("y", {"ns": "y", "team": "blue"}))
    sync(ctl, ("Namespace", "y"))
    assert pods.reach("c", "a") and pods.reach("c", "a", 9090), "a union of policies"

    # egress of c: only to an ipBlock that excepts a
    key4 = fw.put(a, fw.policy("c-out", "y", {
        "podSelector": {"matchLabels": {"app": "c"}}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"ipBlock": {"cidr": "10.77.0.0/24",
                                        "except": [pods.ip["a"] + "/32"]}}]}]}))
    sync(ctl, ("NetworkPolicy", key4))
    assert matrix(pods, "c", "ab") == ["01"]

    # a pod the API has not reported is held: not reachable, cannot reach open pods
    pods.add("d", 14)
    assert not pods.reach("d", "b") and not pods.reach("b", "d")
    fw.put(a, fw.pod("d", "x", pods.ip["d"], {"app": "d"}))
    sync(ctl, ("Pod", "x/d"))
    assert pods.reach("d", "b") and pods.reach("b", "d")

    # policies deleted: open again
    for k in (key, key2, key3, key4):
        fw.remove(a, "NetworkPolicy", k)
        sync(ctl, ("NetworkPolicy", k))
    assert matrix(pods, "abcd", "abcd") == ["1111"] * 4
    assert not [c for c in ctl.planes[4].chains if c.startswith(nm.POLICY_PREFIX)
                and c != nm.TAIL]


def test_second_sync_and_restart_write_nothing(fw: SimpleNamespace, pods) -> None:
    ctl = controller(fw)
    world(fw, ctl, pods)
    fw.put(ctl.agent, fw.policy("mixed", "x", {
        "podSelector": {"matchLabels": {"app": "a"}}, "policyTypes": ["Ingress", "Egress"],
        "ingress": [{"from": [{"podSelector": {}}, {"ipBlock": {
            "cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "192.168.1.1/32"]}}],
            "ports": [{"port": "http"}, {"protocol": "SCTP", "port": 80, "endPort": 90},
                      {"protocol": "UDP"}]}],
        "egress": [{"to": [{"namespaceSelector": {}}]}, {"ports": [{"port": 53,
                                                                   "protocol": "UDP"}]}]}))
    sync(ctl)
    assert not ctl.last[4].empty
    sync(ctl)
    assert ctl.last[4].empty
    # an agent restart reads the kernel and finds every chain and set as it would write it
    ctl2 = controller(fw)
    for kind in ("Pod", "Namespace", "NetworkPolicy", "Node"):
        for k, rec in ctl.agent.store(kind).items():
            ctl2.agent.store(kind).put(k, rec)
    sync(ctl2)
    assert ctl2.last[4].empty, ctl2.last[4]
    assert pods.reach("b", "a") and not pods.reach("b", "a", 9090)


def test_periodic_full_sync_keeps_the_objects_it_holds(fw: SimpleNamespace, pods) -> None:
    """A periodic sync re-reads the kernel and recomputes everything; what comes out equal
    stays the same objects, and the kernel's record shares the controller's copies."""
    ctl = controller(fw)
    world(fw, ctl, pods)
    fw.put(ctl.agent, fw.policy("p", "x", {
        "podSelector": {"matchLabels": {"app": "a"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "b"}}},
                              {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
                     "ports": [{"port": "http"}]}]}))
    sync(ctl)
    plane = ctl.planes[4]
    policies, renders = dict(ctl.policies), dict(ctl.renders)
    chains, sets = dict(plane.chains), dict(plane.sets)
    assert sets and any(c.startswith(nm.POD_PREFIX) for c in chains)
    for _ in range(2):
        sync(ctl)  # periodic: plane.known is dropped and the kernel read again
        assert ctl.last[4].empty and ctl.last[4].save_seconds > 0
    assert all(ctl.policies[k] is v for k, v in policies.items())
    assert all(ctl.renders[k] is v for k, v in renders.items())
    assert [c for c, r in plane.chains.items() if chains[c] is not r] == []
    assert [n for n, m in plane.sets.items() if sets[n] is not m] == []
    desired_chains, desired_sets = ctl.desired(4)
    assert all(plane.chains[c] is r for c, r in desired_chains.items())
    assert all(plane.sets[n] is m for n, m in desired_sets.items())
    # drift is still repaired: a member taken out behind our back comes back
    name = next(n for n, (t, m) in plane.sets.items() if pods.ip["b"] in m)
    fw.run(["ipset", "del", name, pods.ip["b"]])
    sync(ctl)
    assert not ctl.last[4].empty
    assert pods.ip["b"] in fw.run(["ipset", "list", name])


FOREIGN_SET = "foreign-set"


def test_foreign_objects_survive_syncs_and_cleanup(fw: SimpleNamespace, pods) -> None:
    run = fw.run
    run(["ipset", "create", FOREIGN_SET, "hash:ip"])
    run(["ipset", "add", FOREIGN_SET, "1.2.3.4"])
    run(["iptables", "-N", "FOREIGN-CHAIN"])
    run(["iptables", "-A", "FOREIGN-CHAIN", "-s", "1.2.3.4/32", "-j", "ACCEPT"])
    run(["iptables", "-A", "FORWARD", "-m", "set", "--match-set", FOREIGN_SET, "src",
         "-j", "FOREIGN-CHAIN"])

    def intact() -> None:
        saved = run(["iptables-save", "-t", "filter"])
        assert "-A FOREIGN-CHAIN -s 1.2.3.4/32 -j ACCEPT" in saved
        assert f"-A FORWARD -m set --match-set {FOREIGN_SET} src -j FOREIGN-CHAIN" in saved
        assert "1.2.3.4" in run(["ipset", "list", FOREIGN_SET])

    try:
        ctl = controller(fw)
        world(fw, ctl, pods)
        key = fw.put(ctl.agent, fw.policy("p", "x", {"podSelector": {}, "ingress": []}))
        sync(ctl)
        intact()
        fw.remove(ctl.agent, "NetworkPolicy", key)
        sync(ctl, ("NetworkPolicy", key))
        intact()
        sync(ctl)
        saved = run(["iptables-save", "-t", "filter"])
        assert "-A FORWARD -m comment --comment \"kube-router netpol\" -j " \
               "KUBE-ROUTER-FORWARD" in saved
        chains, sets = cleanup_sync()
        assert chains and sets
        intact()
        saved = run(["iptables-save", "-t", "filter"])
        assert "KUBE-" not in saved
        assert not [n for n in run(["ipset", "list", "-n"]).split() if nm.owned_set(n)]
        assert cleanup_sync() == (0, 0), "a second cleanup finds nothing"
    finally:
        run(["iptables", "-D", "FORWARD", "-m", "set", "--match-set", FOREIGN_SET, "src",
             "-j", "FOREIGN-CHAIN"], check=False)
        run(["iptables", "-F", "FOREIGN-CHAIN"], check=False)
        run(["iptables", "-X", "FOREIGN-CHAIN"], check=False)
        run(["ipset", "destroy", FOREIGN_SET], check=False)


def test_refused_restore_names_lines_and_keeps_rules(fw: SimpleNamespace, pods) -> None:
    ctl = controller(fw)
    world(fw, ctl, pods)
    a = ctl.agent
    key = fw.put(a, fw.policy("a-in", "x", {
        "podSelector": {"matchLabels": {"app": "a"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "b"}}}]}]}))
    sync(ctl)
    assert pods.reach("b", "a") and not pods.reach("c", "a")
    chain = nm.policy_chain("x", "a-in", "ingress")
    # another tool jumps into our policy chain: deleting that chain must fail
    fw.run(["iptables", "-A", "INPUT", "-s", "1.2.3.5/32", "-j", chain])
    try:
        before = fw.run(["iptables-save", "-t", "filter"])
        fw.remove(a, "NetworkPolicy", key)
        with pytest.raises(RestoreError) as err:
            sync(ctl, ("NetworkPolicy", key))
        assert any(f"-X {chain}" in line for line in err.value.lines), err.value.lines
        assert "failing_lines" in str(err.value)
        after = fw.run(["iptables-save", "-t", "filter"])
        strip = [ln for ln in before.splitlines() if not ln.startswith(("#", ":"))]
        assert strip == [ln for ln in after.splitlines() if not ln.startswith(("#", ":"))]
        assert pods.reach("b", "a") and not pods.reach("c", "a"), "old rules in force"
    finally:
        fw.run(["iptables", "-D", "INPUT", "-s", "1.2.3.5/32", "-j", chain])
    sync(ctl, ("NetworkPolicy", key))  # re-reads the kernel and succeeds
    assert pods.reach("c", "a")
    assert chain not in fw.run(["iptables-save", "-t", "filter"])


def test_dual_stack(fw: SimpleNamespace, pods) -> None:
    ctl = controller(fw, "--enable-ipv6")
    world(fw, ctl, pods, v6=True)
    key = fw.put(ctl.agent, fw.policy("a-in", "x", {
        "podSelector": {"matchLabels": {"app": "a"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "b"}}},
                              {"ipBlock": {"cidr": "::/0", "except": ["fd77::/64"]}}]}]}))
    sync(ctl)
    assert matrix(pods, "bc", "a", v6=True) == ["1", "0"]
    assert matrix(pods, "bc", "a") == ["1", "0"]
    saved6 = fw.run(["ip6tables-save", "-t", "filter"])
    assert "KUBE-POD-FW-" in saved6 and "inet6:KUBE-SRC-" in saved6
    fw.remove(ctl.agent, "NetworkPolicy", key)
    sync(ctl, ("NetworkPolicy", key))
    assert matrix(pods, "bc", "a", v6=True) == ["1", "1"]
    sync(ctl)
    assert ctl.last[6].empty and ctl.last[4].empty
