"""Which containerPorts the lab's whats-my-ip serves for a pod."""

from __future__ import annotations

from kube_router_lab.kubelet import container_ports


def test_tcp_udp_and_sctp_ports_with_or_without_names() -> None:
    pod = {"spec": {"containers": [
        {"name": "a", "ports": [{"containerPort": 80, "name": "web"},
                                {"containerPort": 80, "protocol": "UDP", "name": "dns"},
                                {"containerPort": 81, "protocol": "SCTP"}]},
        {"name": "b", "ports": [{"containerPort": 81, "protocol": "sctp"},
                                {"containerPort": 0}, {"containerPort": "80"},
                                {"containerPort": 82, "protocol": "ICMP"}]}]}}
    assert container_ports(pod) == [(80, "TCP"), (80, "UDP"), (81, "SCTP")]
