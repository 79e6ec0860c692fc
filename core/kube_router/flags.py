"""Argument types for flags spelled as kube-router spells them (Go durations, Go booleans)."""

from __future__ import annotations

import argparse
import ipaddress
import re

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_TRUE = frozenset({"1", "t", "true", "yes", "y", "on"})
_FALSE = frozenset({"0", "f", "false", "no", "n", "off"})


def duration(value: str) -> float:
    """Seconds from a Go-style duration ("5m", "1m30s", "250ms") or a plain number."""
    v = value.strip()
    try:
        return float(v)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(v)
    if not parts or "".join(n + u for n, u in parts) != v:
        raise argparse.ArgumentTypeError(f"invalid duration {value!r} (e.g. 30s, 5m, 1h30m)")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def boolean(value: str) -> bool:
    """true/false as Go's flag package reads them (and yes/no, on/off)."""
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def cidr_list(value: str) -> list[str]:
    """A comma-separated CIDR list, checked here so a typo stops start-up with a clear line."""
    out = []
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        try:
            ipaddress.ip_network(part, strict=False)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid CIDR {part!r}") from None
        out.append(part)
    return out


def port_range(value: str) -> tuple[int, int]:
    """"LOW-HIGH" (or "LOW:HIGH"), as --service-node-port-range takes it."""
    m = re.fullmatch(r"\s*(\d+)\s*[-:]\s*(\d+)\s*", value)
    if not m or int(m.group(1)) > int(m.group(2)):
        raise argparse.ArgumentTypeError(f"invalid port range {value!r} (e.g. 30000-32767)")
    return int(m.group(1)), int(m.group(2))
