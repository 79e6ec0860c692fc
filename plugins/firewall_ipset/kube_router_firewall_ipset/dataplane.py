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
from collections import ChainMap
from collections.abc import Collection
from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from typing import TypeVar

from kube_router.linux import ipset
from kube_router.linux import iptables
from kube_router_firewall_ipset import naming as nm
from kube_router_firewall_ipset.render import builtin_jump

log = logging.getLogger(__name__)

#: Above this many addresses moving, one ``ipset restore`` beats a netlink call each.
MAX_NETLINK_MOVES = 256

#: (set, address, add or delete)
Move = tuple[str, str, bool]
def _timeout(lines: int) -> float:
    """Seconds a batch may take: the tools' default, and more for a very large one."""
    return max(30.0, lines / 2000)


K = TypeVar("K")
V = TypeVar("V")


def keep_equal(old: dict[K, V], new: Mapping[K, V]) -> None:
    """Make ``old`` hold ``new``'s entries, keeping its own values where they are equal:
    long-lived objects stay put and the equal copies just built die at once (a periodic
    rebuild in fresh memory would fragment the heap)."""
    for k in [k for k in old if k not in new]:
        del old[k]
    for k, v in new.items():
        if k not in old or (old[k] is not v and old[k] != v):
            old[k] = v


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
    members: ipset.MemberSocket = field(default_factory=ipset.MemberSocket)

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
        keep_equal(self.chains, {c: tuple(r) for c, r in chains.items()})
        self.jumps = all(rules[:1] == [builtin_jump(b)] for b, rules in builtin.items())
        want6 = self.family == 6

        def ours(n: str) -> bool:
            return (nm.owned_set(n) and n.startswith(nm.V6_PREFIX) == want6
                    and not n.removeprefix(nm.V6_PREFIX).startswith(nm.TMP_PREFIX))

        held = {n: members for n, (_, members) in self.sets.items()}
        found = ipset.parse_save(await ipset.save(), ours, held)
        # a set the kernel holds unchanged comes back as the one held (frozenset() of
        # a frozenset is itself): no copy is made at every period
        keep_equal(self.sets, {n: (t, frozenset(m)) for n, (t, m) in found.items()})
        self.known = True
        return time.monotonic() - started

    def _set_lines(self, sets: Sets, written: Written,
                   names: Iterable[str]) -> tuple[list[str], list[Move]]:
        """``ipset restore`` lines, or (when only a few addresses move) netlink changes."""
        lines: list[str] = []
        moves: list[Move] = []
        tmps: set[str] = set()
        for name in names:
            want = sets.get(name)
            if want is None:
                continue
            stype, members = want
            have = self.sets.get(name)
            if have is not None and (have[1] is members or have == (stype, members)):
                if have is not want:
                    self.sets[name] = want  # one copy, shared with the caller's
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
                moves += [(name, m, False) for m in sorted(gone)]
                moves += [(name, m, True) for m in sorted(new)]
                continue
            tmp = (nm.V6_PREFIX if self.family == 6 else "") + nm.tmp_set(stype, self.family)
            if tmp not in tmps:
                tmps.add(tmp)
                lines.append(f"create {tmp} {stype} family {self.inet} -exist")
            lines += ipset.swap_via(name, tmp, stype, sorted(members), family=self.inet)
        lines += [f"destroy {t}" for t in sorted(tmps)]
        if lines or len(moves) > MAX_NETLINK_MOVES or any(
                " " in m for _, m, _ in moves):  # hash:net options go through restore
            lines = [f"{'add' if add else 'del'} {n} {m} -exist" for n, m, add in moves] + lines
            moves = []
        return lines, moves

    async def _write_sets(self, lines: list[str], moves: list[Move]) -> None:
        try:
            if lines:
                await ipset.restore(lines, timeout=_timeout(len(lines)))
            await self.members.change_many(moves)
        except Exception:
            self.known = False
            raise

    def _chain_lines(self, chains: Chains, written: Written) -> tuple[list[str], list[str]]:
        changed = []
        for c, rules in chains.items():
            have = self.chains.get(c)
            if have is rules:
                continue
            if have == rules:
                self.chains[c] = rules  # one copy, shared with the caller's
            else:
                changed.append(c)
        stale = [c for c in self.chains if c not in chains]
        written.chains, written.chains_deleted = len(changed), len(stale)
        lines = [f":{c} - [0:0]" for c in (*changed, *stale)]
        for c in changed:
            lines += [f"-A {c} {r}" for r in chains[c]]
        if not self.jumps:
            lines += [f"-I {b} 1 {builtin_jump(b)}" for b in nm.TOP_CHAINS]
        lines += [f"-X {c}" for c in stale]
        return lines, changed

    async def apply(self, chains: Chains, sets: Sets,
                    touched: Collection[str] | None = None) -> Written:
        """Make the kernel hold exactly ``chains`` and ``sets`` (ours only).

        ``touched`` names the only sets that may differ from the last apply (None: any);
        the caller keeps that promise, so an event costs what it changed, not the total.
        """
        written = Written()
        if not self.known:
            written.save_seconds = await self.read()
            touched = None
        names = list(sets) if touched is None else [n for n in touched if n in sets]
        # The local-pods set admits a pod's address past the tail: it may gain an address
        # only once that pod's chain is written, so additions wait for the chains.
        late = nm.local_pods(self.family)
        early: dict[str, tuple[str, frozenset[str]]] = {}
        if late in sets:
            have = self.sets.get(late)
            stype, want = sets[late]
            if have is not None and have[0] == stype and have[1] <= want:
                early[late] = have  # nothing to take away: keep the record as it is
            else:
                early[late] = (stype, have[1] & want) if have else (stype, frozenset())
        view = ChainMap(early, sets)  # type: ignore[arg-type]
        set_lines, moves = self._set_lines(view, written, names)
        if set_lines or moves:
            started = time.monotonic()
            await self._write_sets(set_lines, moves)
            written.ipset_seconds = time.monotonic() - started
            for name in names:
                self.sets[name] = view[name]
        lines, changed = self._chain_lines(chains, written)
        if self.jumps and not changed and not written.chains_deleted:
            lines = []
        if lines:
            started = time.monotonic()
            if not self.jumps:
                await self._drop_old_jumps()
            try:
                await iptables.restore("filter", lines, self.family,
                                       timeout=_timeout(len(lines)))
            except Exception:
                self.known = False
                raise
            written.iptables_seconds = time.monotonic() - started
            for c in changed:
                self.chains[c] = chains[c]
            for c in [c for c in self.chains if c not in chains]:
                del self.chains[c]
            self.jumps = True
        if late in sets and (have_late := self.sets.get(late)) is not sets[late]:
            if have_late != sets[late]:
                started = time.monotonic()
                await self._write_sets(*self._set_lines(sets, written, [late]))
                written.ipset_seconds += time.monotonic() - started
            self.sets[late] = sets[late]
        stale = [n for n in (self.sets if touched is None else touched)
                 if n not in sets and n in self.sets]
        if stale:
            started = time.monotonic()
            try:  # one batch; a set still used by a rule not ours fails it: then one by one
                await ipset.restore([f"destroy {n}" for n in stale])
                gone = stale
            except Exception:
                gone = []
                for name in stale:
                    try:
                        await ipset.restore([f"destroy {name}"])
                        gone.append(name)
                    except Exception as exc:
                        log.warning("cannot destroy ipset name=%s error=%s", name, exc)
            for name in gone:
                del self.sets[name]
            written.sets_destroyed += len(gone)
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
