"""Which Service addresses a node advertises."""

from __future__ import annotations

import logging

import pytest

from kube_router.kube.records import decode_endpointslice
from kube_router.kube.records import decode_service
from kube_router.settings import CoreSettings
from kube_router.settings import parse
from kube_router_routing_bgp.service_vips import enabled
from kube_router_routing_bgp.service_vips import service_vips
from kube_router_routing_bgp.settings import RouterSettings
from kube_router_routing_bgp.settings import add_options


def config(*args: str) -> RouterSettings:
    """The router's settings, built from flags as start-up builds them."""
    flags = parse(args, add_options)
    return RouterSettings.from_flags(flags, CoreSettings.from_flags(flags))


def svc(annotations: dict[str, str] | None = None, **spec: object) -> object:
    body = {"clusterIP": "10.1.0.10", "externalIPs": ["203.0.113.5"],
            "ports": [{"port": 80}], **spec}
    return decode_service({
        "metadata": {"name": "web", "namespace": "default", "annotations": annotations or {}},
        "spec": body,
        "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.7"}]}}})


def slice_on(node: str) -> object:
    return decode_endpointslice({
        "metadata": {"name": "web-1", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "endpoints": [{"addresses": ["10.2.1.5"], "nodeName": node,
                       "conditions": {"ready": True}}],
        "ports": [{"port": 8080}]})


ALL = ("--advertise-cluster-ip", "--advertise-external-ip", "--advertise-loadbalancer-ip")


def test_nothing_by_default() -> None:
    assert not enabled(config())
    assert service_vips(svc(), [], "node-0", config()) == set()


def test_flags() -> None:
    assert enabled(config("--advertise-cluster-ip"))
    assert service_vips(svc(), [], "node-0", config("--advertise-cluster-ip")) == {
        "10.1.0.10/32"}
    assert service_vips(svc(), [], "node-0", config(*ALL)) == {
        "10.1.0.10/32", "203.0.113.5/32", "198.51.100.7/32"}


def test_annotations_override_flags(caplog: pytest.LogCaptureFixture) -> None:
    s = svc({"kube-router.io/service.advertise.clusterip": "false",
             "kube-router.io/service.advertise.externalip": "true"})
    assert service_vips(s, [], "node-0", config("--advertise-cluster-ip")) == {
        "203.0.113.5/32"}
    s = svc({"kube-router.io/service.skiplbips": ""})
    assert "198.51.100.7/32" not in service_vips(s, [], "node-0", config(*ALL))
    with caplog.at_level(logging.WARNING):
        s = svc({"kube-router.io/service.advertise.clusterip": "maybe"})
        assert service_vips(s, [], "node-0", config("--advertise-cluster-ip")) == {
            "10.1.0.10/32"}
    assert "default/web" in caplog.text and "maybe" in caplog.text


def test_local_policies_withheld_without_local_endpoints() -> None:
    s = svc(externalTrafficPolicy="Local", internalTrafficPolicy="Local")
    assert service_vips(s, [slice_on("node-1")], "node-0", config(*ALL)) == set()
    assert service_vips(s, [slice_on("node-0")], "node-0", config(*ALL)) == {
        "10.1.0.10/32", "203.0.113.5/32", "198.51.100.7/32"}
    s = svc({"kube-router.io/service.local": "true"})
    assert service_vips(s, [slice_on("node-1")], "node-0", config(*ALL)) == {"10.1.0.10/32"}


def test_headless_and_external_name() -> None:
    assert service_vips(svc(clusterIP="None"), [], "n", config(*ALL)) == set()
    assert service_vips(svc(type="ExternalName"), [], "n", config(*ALL)) == set()
