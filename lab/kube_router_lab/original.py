"""The original kube-router as a lab node's agent (``cluster: {agent: kube-router}``).

It is a measuring stick and a behavioural reference only: built from its Go module by
``make kube-router-original`` into the user's cache, run inside the lab guest, never shipped
or recommended by this project. The lab gives it the flags that match what the scenario
enables, a CNI config file to fill in (it inserts the node's pod CIDR into a file it expects
to find), and iptables names for the legacy backend (the guest kernel has no nf_tables).

It has no /readyz that names a resourceVersion: the lab takes it as synced when its
/healthz answers OK and its log (at -v 1 it logs every event it takes and every sync it
ends) has been quiet for ``QUIET`` seconds after the wait began.
"""

from __future__ import annotations

import http.client
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

NAME = "kube-router"
VERSION = "v2.1.0"
#: Seconds without a new log line that count as idle.
QUIET = 2.0
CNI_FILE = "10-kuberouter.conflist"

#: What the scenario's ``enable`` list turns on, in the original's own flags.
ROLES = {"proxy": "--run-service-proxy", "router": "--run-router",
         "firewall": "--run-firewall"}


def cache_dir() -> Path:
    """Where binaries built from Go modules live: $KUBE_ROUTER_PY_CACHE, else
    ${XDG_CACHE_HOME:-~/.cache}/kube-router-py (the guest is handed the host's)."""
    if os.environ.get("KUBE_ROUTER_PY_CACHE"):
        return Path(os.environ["KUBE_ROUTER_PY_CACHE"])
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(cache) / "kube-router-py"


def binary(version: str = VERSION) -> Path:
    return cache_dir() / "kube-router" / version / "bin" / "kube-router"


def legacy_iptables_dir(workdir: Path) -> Path:
    """iptables names that run the legacy backend, to put first on the agent's PATH."""
    bindir = workdir / "iptables-legacy-bin"
    bindir.mkdir(parents=True, exist_ok=True)
    for fam in ("iptables", "ip6tables"):
        for suffix in ("", "-save", "-restore"):
            link = bindir / f"{fam}{suffix}"
            if not link.is_symlink():
                link.symlink_to(f"/usr/sbin/{fam}-legacy{suffix}")
    return bindir


def cni_template(data_dir: Path) -> dict:
    """The file a kube-router DaemonSet's init container installs: the bridge plugin on
    kube-bridge with host-local IPAM; the agent adds the node's pod CIDR to it."""
    return {"cniVersion": "0.3.0", "name": "mynet",
            "plugins": [{"type": "bridge", "name": "kube-bridge", "bridge": "kube-bridge",
                         "isDefaultGateway": True, "hairpinMode": True,
                         "ipam": {"type": "host-local", "dataDir": str(data_dir)}},
                        {"type": "portmap", "capabilities": {"snat": True, "portMappings": True}}]}


def write_cni_template(conf_dir: Path, data_dir: Path) -> Path:
    path = conf_dir / CNI_FILE
    path.write_text(json.dumps(cni_template(data_dir), indent=2))
    return path


def argv(*, node: str, netns: str, enable: Sequence[str], kubeconfig: Path,
         service_cidr: str, health_port: int, extra: Sequence[str] = ()) -> list[str]:
    roles = [f"{flag}={'true' if role in enable else 'false'}" for role, flag in ROLES.items()]
    return ["ip", "netns", "exec", netns, str(binary()), *roles,
            "--hostname-override", node, "--kubeconfig", str(kubeconfig),
            "--service-cluster-ip-range", service_cidr, "--health-port", str(health_port),
            "-v", "1", *extra]


def env(*, workdir: Path, cni_file: Path | None) -> list[tuple[str, str]]:
    out = [("PATH", f"{legacy_iptables_dir(workdir)}:{os.environ.get('PATH', '')}")]
    if cni_file is not None:
        out.append(("KUBE_ROUTER_CNI_CONF_FILE", str(cni_file)))
    return out


class Quiet:
    """Tells when an original agent has been idle: healthy, and its log unchanged for
    ``QUIET`` seconds of the current wait."""

    def __init__(self, log_path: Path, ip: str, health_port: int) -> None:
        self.log_path = log_path
        self.ip = ip
        self.health_port = health_port
        self._rv: str | None = None
        self._size = -1
        self._since = 0.0

    def reason(self, resource_version: str) -> str | None:
        """Why the agent is not (yet) idle for this wait; None when it is."""
        now = time.monotonic()
        try:
            size = self.log_path.stat().st_size
        except OSError:
            return "no log yet"
        if resource_version != self._rv or size != self._size:
            self._rv, self._size, self._since = resource_version, size, now
        health = self._healthz()
        if health is not None:
            return health
        if now - self._since < QUIET:
            return f"log active in the last {QUIET:g}s"
        return None

    def _healthz(self) -> str | None:
        conn = http.client.HTTPConnection(self.ip, self.health_port, timeout=2)
        try:
            conn.request("GET", "/healthz")
            resp = conn.getresponse()
            body = resp.read()
        except OSError as exc:
            return f"healthz unreachable: {exc}"
        finally:
            conn.close()
        if resp.status != 200:
            return f"healthz {resp.status}: {body[:80].decode(errors='replace')}"
        return None
