"""The proxy's scheduler hook as the agent calls it: through entry points, with only the
enabled plugins taking part, and annotations winning over a third party's default."""

import argparse

from kube_router import plugins
from kube_router.agent import EnabledHooks
from kube_router.kube.records import decode_service
from kube_router_proxy_ipvs.api import IPVSScheduler


def _hook(enabled):
    pm = plugins.new_manager()
    plugins.load(pm)
    disabled = [p for n, p in pm.list_name_plugin() if n not in enabled]
    return EnabledHooks(pm, disabled).kube_router_ipvs_scheduler


def _svc(annotations=None):
    return decode_service({
        "metadata": {"name": "myip", "namespace": "default", "annotations": annotations or {}},
        "spec": {"clusterIP": "10.1.0.10", "ports": [{"port": 8080}]},
    })


CONFIG = argparse.Namespace(default_ipvs_scheduler="lc")


def test_the_annotation_plugin_answers_when_enabled():
    hook = _hook({"proxy", "scheduler-annotations"})
    got = hook(service=_svc({"kube-router.io/service.scheduler": "sh"}), config=CONFIG)
    assert got == IPVSScheduler("sh")


def test_installed_but_not_enabled_means_no_answer():
    hook = _hook({"proxy"})
    assert hook(service=_svc({"kube-router.io/service.scheduler": "sh"}), config=CONFIG) is None


def test_a_third_party_default_applies_only_where_no_annotation_chooses():
    hook = _hook({"proxy", "scheduler-annotations", "default-scheduler"})
    assert hook(service=_svc(), config=CONFIG) == IPVSScheduler("lc")
    annotated = _svc({"kube-router.io/service.scheduler": "dh"})
    assert hook(service=annotated, config=CONFIG) == IPVSScheduler("dh")
