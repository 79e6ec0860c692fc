"""iptables through ``iptables-restore --noflush`` batches, with backend detection.

A plugin writes whole chains it owns: a ``:CHAIN`` line in a ``--noflush`` restore empties
that chain and the rules that follow refill it, in one atomic commit, while every other
chain (and every other tool's rule) stays as it is. Built-in chains are never declared
(that would flush them): jumps into them are added only when missing.

The backend (legacy or nft) is the one the host already uses: mixing them corrupts rules.
``KUBE_ROUTER_IPTABLES=legacy|nft`` forces it (the lab's guest kernel has only legacy).
"""

from __future__ import annotations

import os
import shutil
from functools import cache

from kube_router.errors import TemporaryError
from kube_router.linux.run import CommandError
from kube_router.linux.run import restore as run_restore
from kube_router.linux.run import restore_sync as run_restore_sync
from kube_router.linux.run import restore_text
from kube_router.linux.run import run
from kube_router.linux.run import run_sync

ENV = "KUBE_ROUTER_IPTABLES"
#: Seconds to wait for the xtables lock held by another writer (kube-proxy, firewalld...).
#: Short enough that a sync is not stuck behind a writer that keeps it; the controller
#: retries soon after.
LOCK_WAIT = "5"
#: Seconds before a sync that found the lock taken is tried again.
LOCK_RETRY = 1.0


class XtablesLockBusy(TemporaryError):
    """Another program held the xtables lock for all of LOCK_WAIT: nothing was applied
    (iptables-restore takes the lock before it changes anything, and commits a table at
    once); the sync is retried."""

    def __init__(self, tool: str) -> None:
        super().__init__(f"xtables lock held by another program for {LOCK_WAIT}s; {tool} "
                         "applied nothing, retrying", delay=LOCK_RETRY)


def _lock_busy(exc: CommandError) -> bool:
    # legacy: "Another app is currently holding the xtables lock. Stopped waiting after
    # 5s."; nft: "Stopped waiting ..." too (exit status 4, RESOURCE_PROBLEM)
    text = exc.stderr.lower()
    return exc.rc == 4 and ("xtables lock" in text or "stopped waiting" in text)


def _count_rules(tool: str) -> int:
    path = shutil.which(tool)
    if not path:
        return -1
    try:
        rc, out, _ = run_sync([path], check=False)
    except CommandError:  # hung and killed: count it as unusable
        return -1
    if rc:
        return -1
    return sum(1 for line in out.splitlines() if line.startswith("-A"))


@cache
def backend() -> str:
    """"legacy" or "nft": forced by the environment, else the one holding more rules."""
    forced = os.environ.get(ENV, "").strip().lower()
    if forced in ("legacy", "nft"):
        return forced
    legacy = _count_rules("iptables-legacy-save")
    nft = _count_rules("iptables-nft-save")
    if legacy > nft:
        return "legacy"
    if nft > legacy or shutil.which("iptables-nft-restore"):
        return "nft"
    return "legacy"


def tool(name: str, family: int = 4) -> str:
    """The binary for ``name`` ("iptables", "iptables-save", "iptables-restore")."""
    base = name.replace("iptables", "ip6tables") if family == 6 else name
    prefix, _, suffix = base.partition("-")
    candidate = f"{prefix}-{backend()}" + (f"-{suffix}" if suffix else "")
    return candidate if shutil.which(candidate) else base


async def save(table: str, family: int = 4) -> str:
    _, out, _ = await run([tool("iptables-save", family), "-t", table])
    return out


def save_sync(table: str, family: int = 4) -> str:
    _, out, _ = run_sync([tool("iptables-save", family), "-t", table])
    return out


async def save_all(family: int = 4) -> dict[str, str]:
    """Every table's dump from one ``iptables-save`` process: table -> its text. A table
    the kernel has not loaded yet (legacy) is absent: it holds nothing."""
    _, out, _ = await run([tool("iptables-save", family)])
    return split_tables(out)


def split_tables(saved: str) -> dict[str, str]:
    """An ``iptables-save`` dump of several tables -> table -> that table's part."""
    parts: dict[str, list[str]] = {}
    lines: list[str] = []
    for line in saved.splitlines():
        if line.startswith("*"):
            lines = parts.setdefault(line[1:].strip(), [])
        lines.append(line)
    return {table: "\n".join(part) + "\n" for table, part in parts.items()}


async def restore(table: str, lines: list[str], family: int = 4, *,
                  timeout: float | None = None) -> None:
    """Commit ``lines`` (chain declarations and rules, no ``*table``/COMMIT) atomically."""
    await restore_tables({table: lines}, family, timeout=timeout)


async def restore_tables(tables: dict[str, list[str]], family: int = 4, *,
                         timeout: float | None = None) -> None:
    """Commit each table's ``lines`` with one ``iptables-restore`` process, however many
    tables: each table atomically, in the order given. When one is refused, the legacy
    backend keeps the tables committed before it and nft keeps none: write them all again."""
    text = restore_text([line for table, lines in tables.items()
                         for line in (f"*{table}", *lines, "COMMIT")])
    argv = [tool("iptables-restore", family), "-w", LOCK_WAIT, "--noflush"]
    try:
        await run_restore(argv, text, timeout=timeout)
    except CommandError as exc:
        if _lock_busy(exc):
            raise XtablesLockBusy(argv[0]) from exc
        raise


def restore_sync(table: str, lines: list[str], family: int = 4) -> None:
    text = restore_text([f"*{table}", *lines, "COMMIT"])
    argv = [tool("iptables-restore", family), "-w", LOCK_WAIT, "--noflush"]
    try:
        run_restore_sync(argv, text)
    except CommandError as exc:
        if _lock_busy(exc):
            raise XtablesLockBusy(argv[0]) from exc
        raise


def chains(saved: str) -> set[str]:
    """Chain names declared in an iptables-save dump of one table."""
    return {line[1:].split()[0] for line in saved.splitlines() if line.startswith(":")}


def rules_of(saved: str, chain: str) -> list[str]:
    """The rule specs of ``chain`` as iptables-save prints them (without ``-A CHAIN``)."""
    prefix = f"-A {chain} "
    return [line[len(prefix):] for line in saved.splitlines() if line.startswith(prefix)]
