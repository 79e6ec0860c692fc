"""The scheduler hook: declared by the proxy, answered by any enabled plugin."""

from __future__ import annotations

import logging

from kube_router import hookimpl
from kube_router import plugins
from kube_router.agent import Agent
from kube_router.kube.records import decode_service
from kube_router.settings import parse
from kube_router_proxy_ipvs import plugin
from kube_router_proxy_ipvs import settings
from kube_router_proxy_ipvs.api import IPVSScheduler
from kube_router_proxy_ipvs.controller import ProxyController


class Picker:
    @hookimpl(optionalhook=True)
    def kube_router_ipvs_scheduler(self, service, config):
        return IPVSScheduler(service.meta.annotations.get("sched", "rr"), ("flag-1",))


def _agent(enabled: list[str]) -> Agent:
    pm = plugins.new_manager()
    pm.register(plugin, "proxy")
    pm.register(Picker(), "picker")
    return Agent.from_flags(parse(["--hostname-override", "node-0"], settings.add_options),
                            pm, enabled)


def _controller(agent: Agent) -> ProxyController:
    return ProxyController(agent, agent.startup.of("proxy"))


def _svc(sched: str):
    return decode_service({"metadata": {"namespace": "a", "name": "b",
                                        "annotations": {"sched": sched}},
                           "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 80}]}})


def test_enabled_plugin_chooses(caplog) -> None:
    ctl = _controller(_agent(["proxy", "picker"]))
    assert ctl.scheduler_for(_svc("mh")) == IPVSScheduler("mh", ("flag-1",))
    assert ctl.scheduler_for(_svc("mh")).flag_bits() == 0x8


def test_disabled_plugin_is_not_asked() -> None:
    ctl = _controller(_agent(["proxy"]))
    assert ctl.scheduler_for(_svc("mh")) == IPVSScheduler("rr")


def test_unknown_scheduler_warns_once_and_uses_rr(caplog) -> None:
    ctl = _controller(_agent(["proxy", "picker"]))
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert ctl.scheduler_for(_svc("bogus")).name == "rr"
    lines = [r.getMessage() for r in caplog.records if "unknown ipvs scheduler" in r.getMessage()]
    assert lines == ["unknown ipvs scheduler service=a/b scheduler=bogus using=rr"]
