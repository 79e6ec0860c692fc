import logging

import pytest

from kube_router.kube.records import decode_service
from kube_router_proxy_ipvs.api import IPVSScheduler
from kube_router_scheduler_annotations import SCHEDFLAGS
from kube_router_scheduler_annotations import SCHEDULER
from kube_router_scheduler_annotations import _warnings
from kube_router_scheduler_annotations import choose


def svc(annotations, name="myip"):
    return decode_service({
        "metadata": {"name": name, "namespace": "default", "annotations": annotations},
        "spec": {"clusterIP": "10.1.0.10", "ports": [{"port": 8080}]},
    })


@pytest.fixture(autouse=True)
def _forget_warnings():
    _warnings.clear()


@pytest.mark.parametrize("name", ["lc", "rr", "sh", "dh", "mh", "wrr", "wlc", "lblc", "lblcr",
                                  "sed", "nq", "fo", "ovf"])
def test_every_kernel_scheduler_is_accepted(name):
    assert choose(svc({SCHEDULER: name})) == IPVSScheduler(name=name)


def test_no_annotation_leaves_the_choice_to_the_default():
    assert choose(svc({})) is None


def test_an_unknown_scheduler_warns_once_naming_the_service_and_falls_back(caplog):
    caplog.set_level(logging.WARNING)
    assert choose(svc({SCHEDULER: "fastest"})) is None
    assert choose(svc({SCHEDULER: "fastest"})) is None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert "service=default/myip" in lines[0] and "'fastest'" in lines[0]


def test_flags_are_kept_for_hashing_schedulers_and_deduplicated():
    got = choose(svc({SCHEDULER: "mh", SCHEDFLAGS: "flag-1, flag-2,flag-1"}))
    assert got == IPVSScheduler(name="mh", flags=("flag-1", "flag-2"))
    assert got.flag_bits() == 0x8 | 0x10


def test_invalid_flags_are_warned_and_ignored(caplog):
    caplog.set_level(logging.WARNING)
    got = choose(svc({SCHEDULER: "sh", SCHEDFLAGS: "flag-9,flag-2"}))
    assert got == IPVSScheduler(name="sh", flags=("flag-2",))
    assert any("flag-9" in r.getMessage() for r in caplog.records)


def test_flags_on_a_scheduler_without_flags_are_ignored(caplog):
    caplog.set_level(logging.WARNING)
    assert choose(svc({SCHEDULER: "lc", SCHEDFLAGS: "flag-1"})) == IPVSScheduler(name="lc")
    assert any("has no flags" in r.getMessage() for r in caplog.records)


def test_the_scheduler_name_is_case_insensitive():
    assert choose(svc({SCHEDULER: " LC "})) == IPVSScheduler(name="lc")
