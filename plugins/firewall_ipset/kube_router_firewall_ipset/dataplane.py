"""The firewall's chains and sets in one address family: read once, then diffed and written.

Order of a write, so no packet ever meets a rule naming a set or chain that is not there:
sets are created or updated first (``ipset restore``), then every changed chain is
rewritten and stale chains deleted in one ``iptables-restore --noflush`` (atomic, and it
touches no chain but ours), and only then are stale sets destroyed. A refused restore
changes nothing in the kernel: the previous rules stay in force, and the next sync starts
from a fresh read of the kernel.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field

from kube_router.linux import ipset
from kube_router.linux import iptables
from kube_router_firewall_ipset import naming as nm
from kube_router_firewall_ipset.render import builtin_jump

log = logging.getLogger(__name__)

Chains = Mapping[str, tuple[str, ...]]
#: name -> (type, members)
Sets = Mapping[str, tuple[str, frozenset[str]]]


@dataclass(slots=True)
class Written:
    """What one apply did (for logs, metrics and tests)."""

    chains: int = 0
    chains_deleted: int = 0
    sets: int = 0
    sets_destroyed: int = 0
    ipset_seconds: float = 0.0
    iptables_seconds: float = 0.0
    save_seconds: float = 0.0

    @property
    def empty(self) -> bool:
        return not (self.chains or self.chains_deleted or self.sets or self.sets_destroyed)


@dataclass(slots=True)
class Dataplane:
    family: int
    chains: dict[str, tuple[str, ...]] = field(default_factory=dict)
    sets: dict[str, tuple[str, frozenset[str]]] = field(default_factory=dict)
    jumps: bool = False  # our jumps sit in INPUT/FORWARD/OUTPUT
    known: bool = False  # chains and sets above are the kernel's

    @property
    def inet(self) -> str:
        return "inet6" if self.family == 6 else "inet"

    async def read(self) -> float:
        """Load our chains and sets from the kernel; return the seconds it took."""
        started = time.monotonic()
        saved = await iptables.save("filter", self.family)
        chains: dict[str, list[str]] = {c: [] for c in iptables.chains(saved) if nm.owned_chain(c)}
        builtin: dict[str, list[str]] = {b: [] for b in nm.TOP_CHAINS}
        for line in saved.splitlines():
            if line.startswith("-A "):
                chain, _, rule = line[3:].partition(" ")
                if chain in chains:
                    chains[chain].append(rule)
                elif chain in builtin:
                    builtin[chain].append(rule)
        self.chains = {c: tuple(r) for c, r in chains.items()}
        self.jumps = all(rules[:1] == [builtin_jump(b)] for b, rules in builtin.items())
        want6 = self.family == 6
        found = ipset.parse_save(await ipset.save(), lambda n: nm.owned_set(n) and (
            n.startswith(nm.V6_PREFIX) == want6) and not n.removeprefix(nm.V6_PREFIX)
            .startswith(nm.TMP_PREFIX))
        self.sets = {n: (t, frozenset(m)) for n, (t, m) in found.items()}
        self.known = True
        return time.monotonic() - started

    def _set_lines(self, sets: Sets, written: Written) -> list[str]:
        lines: list[str] = []
        tmps: set[str] = set()
        for name, (stype, members) in sets.items():
            have = self.sets.get(name)
            if have is not None and (have[1] is members or have == (stype, members)):
                continue
            written.sets += 1
            if have is None or have[0] != stype:
                if have is not None:  # another type under our name: replace it
                    lines.append(f"destroy {name}")
                lines.append(f"create {name} {stype} family {self.inet} -exist")
                lines += [f"add {name} {m} -exist" for m in sorted(members)]
                continue
            gone, new = have[1] - members, members - have[1]
            if len(gone) + len(new) <= len(members):
                lines += [f"del {name} {m} -exist" for m in sorted(gone)]
                lines += [f"add {name} {m} -exist" for m in sorted(new)]
                continue
            tmp = (nm.V6_PREFIX if self.family == 6 else "") + nm.tmp_set(stype, self.family)
            if tmp not in tmps:
                tmps.add(tmp)
                lines.append(f"create {tmp} {stype} family {self.inet} -exist")
            lines += ipset.swap_via(name, tmp, stype, sorted(members), family=self.inet)
        lines += [f"destroy {t}" for t in sorted(tmps)]
        return lines

    def _chain_lines(self, chains: Chains, written: Written) -> tuple[list[str], list[str]]:
        changed = [c for c, rules in chains.items()
                   if (have := self.chains.get(c)) is not rules and have != rules]
        stale = [c for c in self.chains if c not in chains]
        written.chains, written.chains_deleted = len(changed), len(stale)
        lines = [f":{c} - [0:0]" for c in (*changed, *stale)]
        for c in changed:
            lines += [f"-A {c} {r}" for r in chains[c]]
        if not self.jumps:
            lines += [f"-I {b} 1 {builtin_jump(b)}" for b in nm.TOP_CHAINS]
        lines += [f"-X {c}" for c in stale]
        return lines, changed

    async def apply(self, chains: Chains, sets: Sets) -> Written:
        """Make the kernel hold exactly ``chains`` and ``sets`` (ours only)."""
        written = Written()
        if not self.known:
            written.save_seconds = await self.read()
        set_lines = self._set_lines(sets, written)
        if set_lines:
            started = time.monotonic()
            try:
                await ipset.restore(set_lines)
            except Exception:
                self.known = False
                raise
            written.ipset_seconds = time.monotonic() - started
            for name, value in sets.items():
                self.sets[name] = value
        lines, changed = self._chain_lines(chains, written)
        if self.jumps and not changed and not written.chains_deleted:
            lines = []
        if lines:
            started = time.monotonic()
            if not self.jumps:
                await self._drop_old_jumps()
            try:
                await iptables.restore("filter", lines, self.family)
            except Exception:
                self.known = False
                raise
            written.iptables_seconds = time.monotonic() - started
            for c in changed:
                self.chains[c] = chains[c]
            for c in [c for c in self.chains if c not in chains]:
                del self.chains[c]
            self.jumps = True
        stale = [n for n in self.sets if n not in sets]
        if stale:
            started = time.monotonic()
            for name in stale:
                try:
                    await ipset.restore([f"destroy {name}"])
                except Exception as exc:  # still used by a rule that is not ours
                    log.warning("cannot destroy ipset name=%s error=%s", name, exc)
                    continue
                del self.sets[name]
                written.sets_destroyed += 1
            written.ipset_seconds += time.monotonic() - started
        return written

    async def _drop_old_jumps(self) -> None:
        """Before (re)inserting our jumps at the top, remove any left further down."""
        saved = await iptables.save("filter", self.family)
        lines = []
        for b in nm.TOP_CHAINS:
            jump = builtin_jump(b)
            lines += [f"-D {b} {jump}" for r in iptables.rules_of(saved, b) if r == jump]
        if lines:
            await iptables.restore("filter", lines, self.family)
