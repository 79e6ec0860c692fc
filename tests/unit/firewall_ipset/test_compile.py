"""The policy compiler: every point of networking.k8s.io/v1 NetworkPolicy the firewall
honours, from the API's dict to chains and set members (no kernel)."""

from __future__ import annotations

from dataclasses import FrozenInstanceError
from typing import Any

import pytest

from kube_router.errors import UsageError
from kube_router.kube.records import decode_namespace
from kube_router.kube.records import decode_networkpolicy
from kube_router.kube.records import decode_pod
from kube_router.kube.store import Store
from kube_router.linux.ipset import parse_save
from kube_router.linux.run import CommandError
from kube_router.linux.run import RestoreError
from kube_router.settings import CoreSettings
from kube_router.settings import parse
from kube_router_firewall_ipset import naming as nm
from kube_router_firewall_ipset import selectors
from kube_router_firewall_ipset import settings
from kube_router_firewall_ipset.members import Cluster
from kube_router_firewall_ipset.members import net_members
from kube_router_firewall_ipset.model import BlockPeer
from kube_router_firewall_ipset.model import PodPeer
from kube_router_firewall_ipset.model import Port
from kube_router_firewall_ipset.model import compile_policy
from kube_router_firewall_ipset.render import NamedPortSet
from kube_router_firewall_ipset.render import NetSet
from kube_router_firewall_ipset.render import PodSet
from kube_router_firewall_ipset.render import pod_chain
from kube_router_firewall_ipset.render import render_policy
from kube_router_firewall_ipset.render import target_set
from kube_router_firewall_ipset.render import top_chains


def np(spec: dict[str, Any], ns: str = "x", name: str = "p"):
    return compile_policy(decode_networkpolicy(
        {"metadata": {"namespace": ns, "name": name}, "spec": spec}))


def pod(name: str, ns: str, ip: str | list[str], labels: dict[str, str] | None = None,
        ports: list[dict[str, Any]] | None = None, **extra: Any):
    ips = [ip] if isinstance(ip, str) else ip
    spec = {"nodeName": "n0", "containers": [{"ports": ports or []}], **extra.pop("spec", {})}
    return decode_pod({"metadata": {"namespace": ns, "name": name, "labels": labels or {}},
                       "spec": spec,
                       "status": {"phase": extra.pop("phase", "Running"),
                                  "podIPs": [{"ip": i} for i in ips]}})


def cluster(*pods: Any, namespaces: dict[str, dict[str, str]] | None = None) -> Cluster:
    ps, nss = Store("Pod"), Store("Namespace")
    for p in pods:
        ps.put(p.key, p)
    for n, labels in (namespaces or {}).items():
        rec = decode_namespace({"metadata": {"name": n, "labels": labels}})
        nss.put(rec.key, rec)
    return Cluster(ps, nss)


# -- policyTypes and defaulting -----------------------------------------------------------


def test_policy_types_default_to_ingress_and_egress_when_egress_rules_exist() -> None:
    p = np({"podSelector": {}})
    assert p.ingress == () and p.egress is None
    p = np({"podSelector": {}, "egress": [{}]})
    assert p.ingress == () and p.egress is not None and len(p.egress) == 1
    p = np({"podSelector": {}, "policyTypes": ["Egress"], "ingress": [{}]})
    assert p.ingress is None and p.egress == ()
    p = np({"podSelector": {}, "egress": []})
    assert p.egress is None, "an empty egress list is no egress section"


def test_ingress_only_policy_denies_all_with_no_rules_and_admits_all_with_empty_rule() -> None:
    deny = render_policy(np({"podSelector": {}}), 4)
    chain = nm.policy_chain("x", "p", "ingress")
    assert list(deny.chains) == [chain]
    assert deny.chains[chain] == (), "no rule marks anything: all ingress denied"
    allow = render_policy(np({"podSelector": {}, "ingress": [{}]}), 4)
    assert allow.chains[chain] == ("-j MARK --set-xmark 0x10000/0x10000",
                                   "-m mark --mark 0x10000/0x10000 -j RETURN")


# -- selectors ----------------------------------------------------------------------------


@pytest.mark.parametrize(("expr", "labels", "expected"), [
    ({"key": "a", "operator": "In", "values": ["1", "2"]}, {"a": "2"}, True),
    ({"key": "a", "operator": "In", "values": ["1"]}, {}, False),
    ({"key": "a", "operator": "NotIn", "values": ["1"]}, {"a": "2"}, True),
    ({"key": "a", "operator": "NotIn", "values": ["1"]}, {}, True),
    ({"key": "a", "operator": "NotIn", "values": ["1"]}, {"a": "1"}, False),
    ({"key": "a", "operator": "Exists"}, {"a": ""}, True),
    ({"key": "a", "operator": "Exists"}, {"b": "1"}, False),
    ({"key": "a", "operator": "DoesNotExist"}, {"b": "1"}, True),
    ({"key": "a", "operator": "DoesNotExist"}, {"a": "1"}, False),
])
def test_match_expressions(expr: dict, labels: dict, expected: bool) -> None:
    assert selectors.parse({"matchExpressions": [expr]}, "s").matches(labels) is expected


def test_match_labels_and_expressions_are_anded_and_empty_selects_all() -> None:
    sel = selectors.parse({"matchLabels": {"app": "a"},
                           "matchExpressions": [{"key": "tier", "operator": "Exists"}]}, "s")
    assert sel.matches({"app": "a", "tier": "x"})
    assert not sel.matches({"app": "a"}) and not sel.matches({"tier": "x"})
    assert selectors.parse({}, "s").matches({}) and selectors.parse(None, "s").everything


@pytest.mark.parametrize("expr", [
    {"key": "a", "operator": "Like", "values": ["1"]},
    {"key": "a", "operator": "In", "values": []},
    {"key": "a", "operator": "Exists", "values": ["1"]},
    {"operator": "Exists"},
])
def test_bad_selector_is_refused_with_its_place(expr: dict) -> None:
    with pytest.raises(ValueError, match=r"spec.podSelector.matchExpressions\[0\]"):
        np({"podSelector": {"matchExpressions": [expr]}})


# -- peers: AND within a peer, OR across peers, empty ones ----------------------------------


def test_peer_selectors_and_within_or_across() -> None:
    pods = [pod("a", "x", "10.0.0.1", {"app": "a"}), pod("b", "x", "10.0.0.2", {"app": "b"}),
            pod("a", "y", "10.0.1.1", {"app": "a"}), pod("c", "z", "10.0.2.1", {"app": "c"})]
    c = cluster(*pods, namespaces={"x": {"ns": "x"}, "y": {"ns": "y"}, "z": {"ns": "z"}})
    p = np({"podSelector": {}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"ns": "y"}},
         "podSelector": {"matchLabels": {"app": "a"}}},  # AND: app=a in y
        {"podSelector": {"matchLabels": {"app": "b"}}},  # OR: app=b in the policy's ns x
    ]}]})
    (spec,) = render_policy(p, 4).sets.values()
    assert c.members(spec, 4) == {"10.0.1.1", "10.0.0.2"}
    # an empty namespaceSelector: every namespace; an empty podSelector alone: own namespace
    p = np({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]})
    (spec,) = render_policy(p, 4).sets.values()
    assert c.members(spec, 4) == {"10.0.0.1", "10.0.0.2", "10.0.1.1", "10.0.2.1"}
    p = np({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]})
    (spec,) = render_policy(p, 4).sets.values()
    assert c.members(spec, 4) == {"10.0.0.1", "10.0.0.2"}


def test_empty_from_admits_everyone_without_a_set() -> None:
    r = render_policy(np({"podSelector": {}, "ingress": [{"from": [], "ports": [
        {"port": 80}]}]}), 4)
    assert not r.sets
    assert r.chains[nm.policy_chain("x", "p", "ingress")][0] == \
        "-p tcp -m tcp --dport 80 -j MARK --set-xmark 0x10000/0x10000"


def test_peer_with_block_and_selector_is_refused() -> None:
    with pytest.raises(ValueError, match="both ipBlock and a selector"):
        np({"podSelector": {}, "ingress": [{"from": [
            {"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]})


def test_host_network_finished_and_addressless_pods_are_in_no_set() -> None:
    c = cluster(pod("h", "x", "192.168.0.5", spec={"hostNetwork": True}),
                pod("done", "x", "10.0.0.9", phase="Succeeded"),
                pod("new", "x", []), pod("ok", "x", "10.0.0.1"))
    assert c.members(PodSet("x", (PodPeer(None, selectors.EVERYTHING),)), 4) == {"10.0.0.1"}


# -- ipBlock --------------------------------------------------------------------------------


def test_ipblock_except_are_nomatch_and_slash_zero_is_split() -> None:
    p = np({"podSelector": {}, "ingress": [{"from": [
        {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "192.168.1.1/32"]}}]}]})
    (spec,) = render_policy(p, 4).sets.values()
    assert spec == NetSet("0.0.0.0/0", ("10.0.0.0/8", "192.168.1.1/32"))
    assert net_members(spec) == {"0.0.0.0/1", "128.0.0.0/1", "10.0.0.0/8 nomatch",
                                 "192.168.1.1 nomatch"}
    assert net_members(NetSet("::/0", ())) == {"::/1", "8000::/1"}


def test_ipblock_of_other_family_admits_nothing_there() -> None:
    p = np({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "fd00::/8"}}]}]})
    assert render_policy(p, 4).chains[nm.policy_chain("x", "p", "ingress")] == ()
    assert len(render_policy(p, 6).chains[nm.policy_chain("x", "p", "ingress")]) == 2
    assert all(n.startswith("inet6:KUBE-SRC-") for n in render_policy(p, 6).sets)


def test_two_ipblocks_get_their_own_sets_so_excepts_do_not_mix() -> None:
    p = np({"podSelector": {}, "ingress": [{"from": [
        {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}},
        {"ipBlock": {"cidr": "10.1.0.0/16"}}]}]})
    specs = list(render_policy(p, 4).sets.values())
    assert specs == [NetSet("10.0.0.0/8", ("10.1.0.0/16",)), NetSet("10.1.0.0/16", ())]
    assert p.ingress is not None and p.ingress[0].peers[0] == BlockPeer(
        "10.0.0.0/8", ("10.1.0.0/16",), 4)


@pytest.mark.parametrize(("peer", "match"), [
    ({"ipBlock": "10.0.0.0/8"}, r"from\[0\]\.ipBlock is not an object"),
    ({"ipBlock": {"cidr": "10.0.0.0/99"}}, "is not a CIDR"),
    ({"ipBlock": {"cidr": "10.0.0.0/8", "except": ["nonsense"]}}, r"except\[0\]"),
    ({"podSelector": {"matchLabels": ["a"]}}, "matchLabels is not an object")])
def test_malformed_peers_are_refused_naming_the_field(peer: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        np({"podSelector": {}, "ingress": [{"from": [peer]}]})


def test_except_outside_cidr_is_refused() -> None:
    with pytest.raises(ValueError, match=r"except\[0\]"):
        np({"podSelector": {}, "ingress": [{"from": [
            {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/8"]}}]}]})


# -- ports ----------------------------------------------------------------------------------


def test_protocols_numbers_ranges_and_protocol_only() -> None:
    p = np({"podSelector": {}, "ingress": [{"ports": [
        {"port": 80}, {"protocol": "UDP", "port": 53}, {"protocol": "SCTP", "port": 7000,
                                                        "endPort": 7010},
        {"protocol": "UDP"}]}]})
    assert p.ingress is not None and p.ingress[0].ports == (
        Port("TCP", 80), Port("UDP", 53), Port("SCTP", 7000, 7010), Port("UDP", None))
    rules = render_policy(p, 4).chains[nm.policy_chain("x", "p", "ingress")]
    assert rules == (
        "-p tcp -m tcp --dport 80 -j MARK --set-xmark 0x10000/0x10000",
        "-p udp -m udp --dport 53 -j MARK --set-xmark 0x10000/0x10000",
        "-p sctp -m sctp --dport 7000:7010 -j MARK --set-xmark 0x10000/0x10000",
        "-p udp -j MARK --set-xmark 0x10000/0x10000",
        "-m mark --mark 0x10000/0x10000 -j RETURN")


@pytest.mark.parametrize(("port", "match"), [
    ({"port": 90, "endPort": 80}, "endPort"), ({"port": "http", "endPort": 90}, "endPort"),
    ({"protocol": "ICMP", "port": 1}, "protocol"), ({"port": 70000}, "out of range"),
    ({"port": "70000"}, "out of range"), ({"port": 0}, "out of range"),
    ({"port": {"n": 1}}, "not a port number"), ({"port": True}, "not a port number"),
    ({"port": 80, "endPort": "x"}, "endPort 'x' is not a port number")])
def test_bad_ports_are_refused(port: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        np({"podSelector": {}, "ingress": [{"ports": [port]}]})


def test_named_port_resolves_per_destination_pod() -> None:
    a1 = pod("a1", "x", "10.0.0.1", {"app": "a"}, [{"name": "web", "containerPort": 8080}])
    a2 = pod("a2", "x", "10.0.0.2", {"app": "a"}, [{"name": "web", "containerPort": 9090}])
    other = pod("o", "x", "10.0.0.3", {"app": "o"}, [{"name": "web", "containerPort": 7070}])
    c = cluster(a1, a2, other)
    p = np({"podSelector": {"matchLabels": {"app": "a"}},
            "ingress": [{"ports": [{"port": "web"}]}]})
    named = {target_set(p): c.named_ports(target_set(p))}
    assert named[target_set(p)] == {("web", "TCP"): {8080, 9090}}, "7070 is not a target's"
    r = render_policy(p, 4, named)
    by_number = {s.number: n for n, s in r.sets.items() if isinstance(s, NamedPortSet)}
    assert {n: c.members(r.sets[s], 4) for n, s in by_number.items()} == {
        8080: {"10.0.0.1"}, 9090: {"10.0.0.2"}}
    rules = r.chains[nm.policy_chain("x", "p", "ingress")]
    assert rules[0] == (f"-p tcp -m set --match-set {by_number[8080]} dst -m tcp --dport 8080 "
                        "-j MARK --set-xmark 0x10000/0x10000")
    assert r.named == (target_set(p),)


def test_named_port_of_udp_does_not_match_tcp_port_of_that_name() -> None:
    a = pod("a", "x", "10.0.0.1", {}, [{"name": "dns", "containerPort": 53,
                                        "protocol": "UDP"}])
    c = cluster(a)
    p = np({"podSelector": {}, "ingress": [{"ports": [{"port": "dns"}]}]})
    named = {target_set(p): c.named_ports(target_set(p))}
    assert render_policy(p, 4, named).chains[nm.policy_chain("x", "p", "ingress")] == (), \
        "TCP/dns resolves to nothing: the rule admits nothing"


def test_egress_named_port_resolves_on_peers() -> None:
    p = np({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{
        "to": [{"podSelector": {"matchLabels": {"app": "db"}}}], "ports": [{"port": "pg"}]}]})
    (rule,) = p.egress or ()
    r = render_policy(p, 4)
    assert r.named == (PodSet("x", rule.peers),)  # type: ignore[arg-type]


# -- several rules and policies: a union ------------------------------------------------------


def test_each_rule_marks_and_returns_so_any_rule_admits() -> None:
    p = np({"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}, {"ports": [{"port": 81}]}]})
    rules = render_policy(p, 4).chains[nm.policy_chain("x", "p", "ingress")]
    assert [r.endswith("RETURN") for r in rules] == [False, True, False, True]


def test_pod_chain_runs_every_selecting_policy_and_opens_ungoverned_direction() -> None:
    lines = pod_chain("10.0.0.1", 4, ["KUBE-NWPLCY-A", "KUBE-NWPLCY-B"], None)
    assert "-d 10.0.0.1/32 -j KUBE-NWPLCY-A" in lines and "-d 10.0.0.1/32 -j KUBE-NWPLCY-B" in lines
    assert "-s 10.0.0.1/32 -j MARK --set-xmark 0x10000/0x10000" in lines  # egress open
    assert lines[0] == "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    assert lines[1] == "-d 10.0.0.1/32 -m addrtype --src-type LOCAL -j ACCEPT"
    assert lines[-1] == "-j MARK --set-xmark 0x20000/0x20000"
    v6 = pod_chain("fd00::1", 6, None, [])
    assert "-d fd00::1/128 -m mark ! --mark 0x10000/0x10000 -j REJECT --reject-with " \
           "icmp6-port-unreachable" in v6
    assert not [x for x in v6 if x.startswith("-s fd00::1/128 -j MARK --set-xmark 0x10000")], \
        "egress governed by a policy with no rule: nothing marks it"


def test_top_chains_hold_unknown_local_addresses() -> None:
    top = top_chains([("10.0.0.1", "KUBE-POD-FW-X")], 4, service_cidrs=["10.96.0.0/12"],
                     nodeport_range=(30000, 32767), pod_cidrs=["10.0.0.0/24"])
    assert top[nm.FORWARD] == ("-d 10.0.0.1/32 -j KUBE-POD-FW-X",
                               "-s 10.0.0.1/32 -j KUBE-POD-FW-X", "-j KUBE-NWPLCY-TAIL")
    assert top[nm.INPUT][0] == "-d 10.96.0.0/12 -j RETURN"
    tail = top[nm.TAIL]
    assert tail.index("-s 10.0.0.0/24 -m set ! --match-set kube-router-local-pods src -j "
                      "REJECT --reject-with icmp-port-unreachable") < tail.index(
        "-m mark --mark 0x20000/0x20000 -j ACCEPT")


# -- names -----------------------------------------------------------------------------------


def test_names_are_stable_short_and_per_purpose() -> None:
    assert nm.pod_chain("x", "a") == nm.pod_chain("x", "a") != nm.pod_chain("x", "b")
    assert nm.policy_chain("x", "p", "ingress") != nm.policy_chain("x", "p", "egress")
    long = nm.set_name(nm.SRC_PREFIX, 6, "x" * 200, "y" * 200)
    assert long.startswith("inet6:KUBE-SRC-") and len(long) == 31
    assert len(nm.pod_chain("x" * 100, "y" * 200)) <= 28
    assert nm.owned_set(long) and nm.owned_set("kube-router-local-pods")
    assert not nm.owned_set("kube-router-svip") and not nm.owned_chain("KUBE-ROUTER-SERVICES")


# -- flags, core helpers --------------------------------------------------------------------


def test_settings_are_built_once_from_flags() -> None:
    flags = parse(["--iptables-sync-period", "1m30s", "--enable-ipv6",
                   "--service-cluster-ip-range", "10.1.0.0/16,fd00:1::/112"],
                  settings.add_options)
    s = settings.Settings.from_flags(flags, CoreSettings.from_flags(flags))
    assert s.sync_period == 90.0 and s.families == (4, 6)
    assert s.service_cidrs == ("10.1.0.0/16", "fd00:1::/112")
    with pytest.raises(FrozenInstanceError):
        s.sync_period = 1.0  # type: ignore[misc]
    defaults = parse([], settings.add_options)
    s = settings.Settings.from_flags(defaults, CoreSettings.from_flags(defaults))
    assert (s.sync_period, s.families, s.service_cidrs, s.nodeport_range) == (
        300.0, (4,), ("10.96.0.0/12",), (30000, 32767))
    zero = parse(["--iptables-sync-period", "0s"], settings.add_options)
    with pytest.raises(UsageError, match=r"^--iptables-sync-period must be positive"):
        settings.Settings.from_flags(zero, CoreSettings.from_flags(zero))


def test_restore_error_names_the_failing_lines() -> None:
    err = RestoreError(CommandError(["iptables-restore"], 1,
                                    "iptables-restore: line 3 failed\n"), "*filter\n:A\n-A B\n")
    assert err.lines == ["3: -A B"] and "failing_lines" in str(err)
    err = RestoreError(CommandError(["ipset", "restore"], 1,
                                    "ipset v7.10: Error in line 1: bad\n"), "create x\n")
    assert err.lines == ["1: create x"]


def test_ipset_save_is_parsed_with_member_options() -> None:
    text = ("create KUBE-SRC-A hash:net family inet hashsize 1024 maxelem 65536\n"
            "add KUBE-SRC-A 10.0.0.0/8\nadd KUBE-SRC-A 10.1.0.0/16 nomatch\n"
            "create other hash:ip family inet\nadd other 1.2.3.4\n")
    assert parse_save(text, nm.owned_set) == {
        "KUBE-SRC-A": ("hash:net", {"10.0.0.0/8", "10.1.0.0/16 nomatch"})}
