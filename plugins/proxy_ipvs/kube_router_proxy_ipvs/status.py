"""``kube-router-py status``: the IPVS table like ``ipvsadm -Ln``, with Service names."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from kube_router.status import StatusSection
from kube_router_proxy_ipvs import ipvs_netlink as nl

if TYPE_CHECKING:
    from kube_router_proxy_ipvs.desired import ServiceState

#: Written by the running proxy after each sync: "proto/vip:port" -> "namespace/name".
NAMES_FILE = Path("/run/kube-router-py/proxy-services.json")

_FWD = {0: "Masq", 1: "Local", 2: "Tunnel", 3: "Route"}


def write_names(states: Mapping[str, ServiceState]) -> None:
    """Record which Service each virtual server belongs to, for ``status``."""
    names = {str(vs.key): svc for svc, st in states.items() for vs in st.servers}
    try:
        NAMES_FILE.parent.mkdir(parents=True, exist_ok=True)
        tmp = NAMES_FILE.with_suffix(".tmp")
        tmp.write_text(json.dumps(names, sort_keys=True))
        tmp.replace(NAMES_FILE)
    except OSError:
        pass  # the status command then shows the table without names


def _names() -> dict[str, str]:
    try:
        return json.loads(NAMES_FILE.read_text())
    except (OSError, ValueError):
        return {}


def status_sections() -> list[StatusSection]:
    columns = ["Prot", "LocalAddress:Port", "Scheduler", "Flags", "Service",
               "-> RemoteAddress:Port", "Forward", "Weight", "ActiveConn", "InActConn"]
    section = StatusSection(title="IPVS services", columns=columns, rows=[])
    try:
        with nl.IPVSSocket() as sock:
            services = sock.services()
            names = _names()
            for svc in sorted(services, key=lambda s: str(s.key)):
                if svc.key is None:
                    section.rows.append(["FWM", str(svc.fwmark), svc.attrs.scheduler, "", "",
                                         "", "", "", "", ""])
                    continue
                flags = f"persistent {svc.attrs.timeout}" if svc.attrs.flags & 1 else ""
                proto = nl.PROTOCOL_NAMES.get(svc.key.protocol, str(svc.key.protocol))
                host = f"[{svc.key.addr}]" if ":" in svc.key.addr else svc.key.addr
                section.rows.append([proto, f"{host}:{svc.key.port}", svc.attrs.scheduler,
                                     flags, names.get(str(svc.key), "-"), "", "", "", "", ""])
                for d in sock.dests(svc.key):
                    dh = f"[{d.addr}]" if ":" in d.addr else d.addr
                    section.rows.append(["", "", "", "", "", f"-> {dh}:{d.port}",
                                         _FWD.get(d.attrs.fwd_method, "?"),
                                         str(d.attrs.weight), str(d.active_conns),
                                         str(d.inactive_conns)])
    except OSError as exc:
        section.note = f"cannot read IPVS: {exc}"
    return [section]
