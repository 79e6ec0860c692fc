"""An external BGP router beside the kind cluster (BIRD in a container that pytest-docker
starts on kind's network) learns every node's pod CIDR from the external-peer manifest."""

from __future__ import annotations

import time

import pytest

PEER_ASN = "64513"
PEER_MANIFEST = "kube-router-py-all-features-external-peer.yaml"


def test_bird_learns_every_pod_cidr(bird_peer) -> None:
    from kubernetes import client

    kind = bird_peer.kind
    nodes = client.CoreV1Api(kind.api).list_node().items
    node_ips = [next(a.address for a in n.status.addresses if a.type == "InternalIP")
                for n in nodes]
    cidrs = sorted(n.spec.pod_cidr for n in nodes)
    bird_peer.start(node_ips)
    kind.deploy(kind.docs(PEER_MANIFEST, {"%PEERIP%": bird_peer.ip, "%PEERASN%": PEER_ASN}))
    deadline = time.monotonic() + 120
    routes = ""
    while time.monotonic() < deadline:
        routes = bird_peer.routes()
        if all(c in routes for c in cidrs):
            return
        time.sleep(2)
    pytest.fail(f"BIRD did not learn {cidrs} in 120s:\n{routes}")
