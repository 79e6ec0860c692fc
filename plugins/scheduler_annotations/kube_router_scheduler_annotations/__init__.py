"""Choose a Service's IPVS scheduler from its annotations.

``kube-router.io/service.scheduler`` names the scheduler (``rr``, ``lc``, ``sh``, ``dh``,
``mh``, or any other the kernel ships); ``kube-router.io/service.schedflags`` lists
scheduler flags (``flag-1``, ``flag-2``, ``flag-3``) for the schedulers that read them.
A bad value is reported once, naming the Service, and ignored: the Service keeps being
served by round robin, and nothing else is affected.

This implements the ``kube_router_ipvs_scheduler`` hook that the proxy plugin declares.
"""

from __future__ import annotations

import argparse
import logging

from kube_router import hookimpl
from kube_router.kube.kinds import SERVICE
from kube_router.kube.records import Service
from kube_router.objwarn import ObjectWarnings
from kube_router_proxy_ipvs.api import FLAG_BITS
from kube_router_proxy_ipvs.api import KNOWN_SCHEDULERS
from kube_router_proxy_ipvs.api import IPVSScheduler

SCHEDULER = "kube-router.io/service.scheduler"
SCHEDFLAGS = "kube-router.io/service.schedflags"
#: The schedulers whose behaviour the IP_VS_SVC_F_SCHED* flags change: source hashing
#: (fallback, port) and maglev hashing (fallback, port).
FLAG_SCHEDULERS = frozenset({"sh", "mh"})

log = logging.getLogger(__name__)
# Syncs repeat; one line per bad value is enough for an operator to act on.
_warnings = ObjectWarnings(log, kind=SERVICE)


def _warn_once(service: Service, what: str, value: str, why: str) -> None:
    _warnings.warn(service.key, f"{what}={value}",
                   "ignoring annotation service=%s annotation=%s value=%r reason=%s",
                   service.key, what, value, why)


def choose(service: Service) -> IPVSScheduler | None:
    """The scheduler a Service's annotations ask for, or None when they ask for nothing
    valid (the proxy's default, round robin, applies)."""
    annotations = service.meta.annotations
    name = annotations.get(SCHEDULER, "").strip().lower()
    raw_flags = annotations.get(SCHEDFLAGS, "")
    if not name and not raw_flags:
        return None
    if name and name not in KNOWN_SCHEDULERS:
        _warn_once(service, SCHEDULER, name,
                   f"unknown scheduler; known: {','.join(sorted(KNOWN_SCHEDULERS))}")
        return None
    name = name or "rr"
    flags = []
    for flag in (f.strip() for f in raw_flags.split(",") if f.strip()):
        if flag not in FLAG_BITS:
            _warn_once(service, SCHEDFLAGS, flag, "unknown flag; known: flag-1,flag-2,flag-3")
        elif name not in FLAG_SCHEDULERS:
            _warn_once(service, SCHEDFLAGS, flag, f"scheduler {name} has no flags")
        elif flag not in flags:
            flags.append(flag)
    return IPVSScheduler(name=name, flags=tuple(flags))


# optionalhook: the spec comes from the proxy plugin, which may be blocked or absent.
@hookimpl(optionalhook=True)
def kube_router_ipvs_scheduler(service: Service, config: argparse.Namespace
                               ) -> IPVSScheduler | None:
    return choose(service)
