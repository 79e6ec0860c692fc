"""ipsets through ``ipset restore`` batches, swapping a rebuilt set into place.

A set that a rule uses is never flushed in place (its members would vanish for a moment);
the new members go into a temporary set that is swapped with the live one, atomically.
"""

from __future__ import annotations

from collections.abc import Iterable

from kube_router.linux.run import restore_text
from kube_router.linux.run import run
from kube_router.linux.run import run_sync


def swap_script(name: str, settype: str, members: Iterable[str], *, family: str = "inet",
                options: str = "", tmp_suffix: str = "-tmp") -> list[str]:
    """``ipset restore`` lines replacing the members of ``name`` (created if missing).

    ``tmp_suffix`` keeps temporary names per owner, so two plugins never share one.
    The name must leave room for the suffix (ipset names hold 31 characters).
    """
    tmp = (name + tmp_suffix)[:31]
    opts = f"family {family} {options}".strip()
    lines = [f"create {name} {settype} {opts} -exist",
             f"create {tmp} {settype} {opts} -exist",
             f"flush {tmp}"]
    lines += [f"add {tmp} {m} -exist" for m in members]
    lines += [f"swap {tmp} {name}", f"destroy {tmp}"]
    return lines


async def restore(lines: list[str]) -> None:
    await run(["ipset", "restore"], restore_text(lines))


def restore_sync(lines: list[str]) -> None:
    run_sync(["ipset", "restore"], restore_text(lines))


def names_sync() -> set[str]:
    _, out, _ = run_sync(["ipset", "list", "-n"])
    return {line.strip() for line in out.splitlines() if line.strip()}


def destroy_sync(name: str) -> bool:
    """Destroy a set; False when it did not exist or is still referenced."""
    rc, _, _ = run_sync(["ipset", "destroy", name], check=False)
    return rc == 0
