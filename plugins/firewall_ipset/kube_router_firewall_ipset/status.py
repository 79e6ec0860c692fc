"""``kube-router-py status``: per local pod, the policies selecting it in each direction.

The running agent writes the selection after each sync (chain names are hashes, so the
kernel alone cannot say which policy a chain is); the status command adds what the kernel
holds: whether the pod's chain is there and how many rules it has.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kube_router.linux import iptables
from kube_router.status import StatusSection
from kube_router_firewall_ipset import naming as nm

STATE_DIR = Path("/run/kube-router-py")


def state_file(node: str) -> Path:
    return STATE_DIR / f"firewall-{node}.json"


def write_selection(node: str, rows: dict[str, dict[str, Any]]) -> None:
    """Record, per local pod, the policies selecting it, for `status` outside the agent."""
    try:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        path = state_file(node)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(rows, sort_keys=True))
        tmp.replace(path)
    except OSError:
        pass  # status then shows the kernel's chains without policy names


def status_sections(node: str) -> list[StatusSection]:
    section = StatusSection(
        title="NetworkPolicy per local pod",
        columns=["Pod", "IPs", "Ingress policies", "Egress policies", "Chain", "Rules"])
    try:
        pods = json.loads(state_file(node).read_text())
    except (OSError, ValueError):
        pods = {}
        section.note = "no selection recorded by a running agent on this node"
    try:
        saved = iptables.save_sync("filter")
    except Exception as exc:
        saved = ""
        section.note = f"cannot read iptables: {exc}"
    present = iptables.chains(saved)
    for key, row in pods.items():
        chain = row["chain"]
        rules = str(len(iptables.rules_of(saved, chain))) if chain in present else "missing"
        section.rows.append([key, ",".join(row["ips"]),
                             ",".join(row["ingress"]) or "- (open)",
                             ",".join(row["egress"]) or "- (open)", chain, rules])
    owned = sorted(c for c in present if nm.owned_chain(c))
    summary = StatusSection(title="Firewall chains", columns=["Kind", "Count"], rows=[
        ["pod chains", str(sum(c.startswith(nm.POD_PREFIX) for c in owned))],
        ["policy chains", str(sum(c.startswith(nm.POLICY_PREFIX) for c in owned))]])
    return [section, summary]
