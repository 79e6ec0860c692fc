"""Pods on one node talk across the bridge: netfilter must see those frames too."""

from __future__ import annotations

import logging
import subprocess

from kube_router.linux import sysctl

log = logging.getLogger(__name__)


def see_bridged_traffic(families: tuple[int, ...]) -> None:
    """Load br_netfilter and make bridged IP traffic pass iptables (as kube-router needs)."""
    try:
        subprocess.run(["modprobe", "br_netfilter"], capture_output=True, check=False,
                       timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.debug("modprobe br_netfilter failed error=%s", exc)
    ok = sysctl.write("net.bridge.bridge-nf-call-iptables", 1) if 4 in families else True
    if 6 in families:
        ok = sysctl.write("net.bridge.bridge-nf-call-ip6tables", 1) and ok
    if not ok:
        log.warning("bridged pod traffic may bypass the firewall: "
                    "net.bridge.bridge-nf-call-iptables cannot be set")
