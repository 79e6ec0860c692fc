"""Helpers of the router's kernel tests: namespaces and the ip tool."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass


def ip(*args: str, check: bool = True) -> str:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and proc.returncode:
        raise AssertionError(f"ip {' '.join(args)}: rc={proc.returncode} {proc.stderr}")
    return proc.stdout


@dataclass
class Pair:
    """Two namespaces joined by a veth: a (192.168.77.1) and b (192.168.77.2)."""

    a: str
    b: str
    ip_a: str = "192.168.77.1"
    ip_b: str = "192.168.77.2"
