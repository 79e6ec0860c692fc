"""kube-router's policy controller metrics (the names its dashboards use)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client import Gauge
from prometheus_client import Histogram


class FirewallMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        def hist(name: str, doc: str) -> Histogram:
            return Histogram(f"kube_router_{name}", doc, registry=registry)

        self.sync_time = hist("controller_iptables_sync_time",
                              "Seconds a firewall sync took, computing and writing")
        self.save_time = {4: hist("controller_iptables_v4_save_time",
                                  "Seconds reading the IPv4 filter table"),
                          6: hist("controller_iptables_v6_save_time",
                                  "Seconds reading the IPv6 filter table")}
        self.restore_time = {4: hist("controller_iptables_v4_restore_time",
                                     "Seconds of iptables-restore (IPv4)"),
                             6: hist("controller_iptables_v6_restore_time",
                                     "Seconds of ip6tables-restore (IPv6)")}
        self.chains_sync_time = hist("controller_policy_chains_sync_time",
                                     "Seconds computing the policy chains and sets")
        self.ipset_restore_time = {4: hist("controller_policy_ipset_v4_restore_time",
                                           "Seconds of ipset restore (IPv4 sets)"),
                                   6: hist("controller_policy_ipset_v6_restore_time",
                                           "Seconds of ipset restore (IPv6 sets)")}
        self.chains = Gauge("kube_router_controller_policy_chains",
                            "Policy chains (KUBE-NWPLCY-*) the firewall holds",
                            registry=registry)
        self.ipsets = Gauge("kube_router_controller_policy_ipsets",
                            "Policy ipsets (KUBE-SRC-*, KUBE-DST-*) the firewall holds",
                            registry=registry)
