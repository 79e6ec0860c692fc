"""A node's kernel networking state, printed in a stable order so two snapshots compare
line by line.

``python -m kube_router_lab.kstate [--all]`` run in a node's namespace prints, section by
section: the IPVS table, the addresses on ``kube-dummy-if``, the routes the agents make
(BGP-learned ``proto 17`` and the tables 77-79), and the iptables chains and ipsets whose
names carry the agents' prefixes (with the rules of built-in chains that jump to them).
With ``--all`` it prints every IPVS service, route, chain and set instead: what a scenario
compares to show that state made by someone else survives.

Counters, timers and other values that change by themselves are left out.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable

DUMMY_IF = "kube-dummy-if"
#: Routing protocol of the routes BGP installs; the agents' own tables.
BGP_PROTO = "17"
OWN_TABLES = ("77", "78", "79")
#: Name prefixes of the iptables chains and ipsets the agents own.
CHAIN_PREFIXES = ("KUBE-",)
SET_PREFIXES = ("KUBE-", "kube-router-")
TABLES = ("filter", "nat", "mangle", "raw")
IPTABLES_SAVE = ("iptables-legacy-save", "iptables-save")


def _out(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    return proc.stdout if proc.returncode == 0 else ""


def _has_prefix(name: str, prefixes: Iterable[str]) -> bool:
    return any(name.startswith(p) for p in prefixes)


def ipvs() -> list[str]:
    return sorted(line for line in _out(["ipvsadm", "-S", "-n"]).splitlines() if line)


def dummy_addresses() -> list[str]:
    out = _out(["ip", "-o", "addr", "show", "dev", DUMMY_IF])
    addrs = (" ".join(line.split()[2:4]) for line in out.splitlines() if line)
    # the kernel's own link-local address follows the link's random MAC: not agent state
    return sorted(a for a in addrs if not a.startswith("inet6 fe80:"))


def routes(everything: bool) -> list[str]:
    if everything:
        out = _out(["ip", "route", "show", "table", "all"])
        return sorted(line.strip() for line in out.splitlines()
                      if line.strip() and "table local" not in line)
    lines = _out(["ip", "route", "show", "table", "all", "proto", BGP_PROTO]).splitlines()
    for table in OWN_TABLES:
        lines += [f"table {table} {ln}" for ln in _out(["ip", "route", "show", "table",
                                                        table]).splitlines()]
    return sorted(line.strip() for line in lines if line.strip())


def _save_tool() -> str:
    # the guest has only the legacy backend; it is the one the agents use there
    return next((t for t in IPTABLES_SAVE if shutil.which(t)), "iptables-save")


_COUNTERS = re.compile(r"\[\d+:\d+\]")
#: The random seed of a set's hash: differs between two creations of the same set.
_INITVAL = re.compile(r" initval 0x[0-9a-f]+")


def iptables(everything: bool) -> list[str]:
    tool = _save_tool()
    lines = []
    for table in TABLES:
        for line in _out([tool, "-t", table]).splitlines():
            if line.startswith(":"):
                name = line[1:].split()[0]
                if everything or _has_prefix(name, CHAIN_PREFIXES):
                    lines.append(f"{table} {_COUNTERS.sub('', line).strip()}")
            elif line.startswith("-A "):
                chain = line.split()[1]
                target = line.split(" -j ")[-1].split()[0] if " -j " in line else ""
                if (everything or _has_prefix(chain, CHAIN_PREFIXES)
                        or _has_prefix(target, CHAIN_PREFIXES)):
                    lines.append(f"{table} {line}")
    # rule order within a chain matters: keep it, but sort the chains' declarations
    decl = sorted(x for x in lines if x.split(" ", 1)[1].startswith(":"))
    return decl + [x for x in lines if not x.split(" ", 1)[1].startswith(":")]


def ipsets(everything: bool) -> list[str]:
    out = []
    for line in _out(["ipset", "save"]).splitlines():
        parts = line.split()
        if len(parts) < 2 or parts[0] not in ("create", "add"):
            continue
        if everything or _has_prefix(parts[1], SET_PREFIXES):
            out.append(_INITVAL.sub("", line.strip()))
    return sorted(out)


def snapshot(everything: bool = False) -> dict[str, list[str]]:
    return {
        "ipvs": ipvs(),
        "kube-dummy-if": dummy_addresses(),
        "routes": routes(everything),
        "iptables": iptables(everything),
        "ipsets": ipsets(everything),
    }


def render(snap: dict[str, list[str]]) -> str:
    lines = []
    for section, items in snap.items():
        lines.append(f"[{section}] {len(items)}")
        lines += [f"  {x}" for x in items]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kube_router_lab.kstate")
    parser.add_argument("--all", action="store_true",
                        help="everything, not only what carries the agents' names")
    args = parser.parse_args(argv)
    sys.stdout.write(render(snapshot(args.all)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
