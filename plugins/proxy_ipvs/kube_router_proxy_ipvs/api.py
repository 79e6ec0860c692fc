"""The proxy's public API for other plugins: the IPVS scheduler a virtual service uses, as
they choose it through the ``kube_router_ipvs_scheduler`` hook. Other plugins import this
module only, never the proxy's internals."""

from __future__ import annotations

from dataclasses import dataclass

from kube_router_proxy_ipvs import ipvs_netlink as nl

#: kube-router's names for the scheduler-specific IPVS service flags.
FLAG_BITS = {
    "flag-1": nl.SVC_F_SCHED1,
    "flag-2": nl.SVC_F_SCHED2,
    "flag-3": nl.SVC_F_SCHED3,
}

#: Schedulers shipped with Linux (each is the module ip_vs_<name>).
KNOWN_SCHEDULERS = frozenset(
    {"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh",
     "twos"}
)


@dataclass(frozen=True)
class IPVSScheduler:
    """A scheduler name (``rr``, ``lc``, ``mh``...) and kube-router's flag names."""

    name: str = "rr"
    flags: tuple[str, ...] = ()

    def flag_bits(self) -> int:
        """The IP_VS_SVC_F_SCHED* bits of ``flags``; unknown names are ignored."""
        bits = 0
        for f in self.flags:
            bits |= FLAG_BITS.get(f, 0)
        return bits


DEFAULT = IPVSScheduler()
