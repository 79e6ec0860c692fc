"""What pods and hosts need around IPVS: sysctls, SNAT, hairpin, the INPUT guard and ipsets.

Objects (kube-router's names, so this is a drop-in replacement):

- nat chain ``KUBE-ROUTER-HAIRPIN``: a pod reaching itself through a VIP is SNATed to the VIP.
- nat chain ``KUBE-ROUTER-IPVS-SNAT``: IPVS NAT traffic that does not come from this node's
  pods is masqueraded, so replies come back through this node; traffic from local pods
  keeps its source IP (``--masquerade-all`` masquerades everything).
- filter chain ``KUBE-ROUTER-SERVICES``, jumped from INPUT for traffic to a VIP: accept
  VIP:port pairs that exist, reject the rest (``--ipvs-permit-all``).
- ipsets ``kube-router-svip``, ``kube-router-svip-prt``, ``kube-router-local-ips``.

A chain is rewritten whole with ``iptables-restore --noflush`` and only when its content
changes; a set's changed members are added or deleted over netlink (no process), and a set
that is missing is built and swapped in. Nothing else is touched.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import re
import socket
from collections.abc import Collection
from collections.abc import Sequence
from typing import TYPE_CHECKING

from kube_router.linux import ipset
from kube_router.linux import iptables
from kube_router.linux import sysctl
from kube_router.linux.run import run
from kube_router_proxy_ipvs import ipvs_netlink as nl
from kube_router_proxy_ipvs.dummy_if import DUMMY_IF
from kube_router_proxy_ipvs.dummy_if import local_addresses

if TYPE_CHECKING:
    from kube_router_proxy_ipvs.desired import ServiceState
    from kube_router_proxy_ipvs.settings import ProxySettings

log = logging.getLogger(__name__)

HAIRPIN_CHAIN = "KUBE-ROUTER-HAIRPIN"
SNAT_CHAIN = "KUBE-ROUTER-IPVS-SNAT"
SERVICES_CHAIN = "KUBE-ROUTER-SERVICES"
SVIP = "kube-router-svip"
SVIP_PRT = "kube-router-svip-prt"
LOCAL_IPS = "kube-router-local-ips"
SET_TMP_SUFFIX = "-pxtmp"
COMMENT = "kube-router-py proxy"
#: Above this many members to add or delete in one sync, one ``ipset restore`` process
#: costs less than a netlink message each.
MAX_NETLINK_MOVES = 256

SYSCTLS = {
    "net.ipv4.vs.conntrack": 1,  # IPVS NAT traffic must go through netfilter (SNAT, hairpin)
    "net.ipv4.vs.expire_nodest_conn": 1,
    "net.ipv4.vs.expire_quiescent_template": 1,
    "net.ipv4.ip_forward": 1,
    "net.ipv4.conf.all.arp_ignore": 1,  # never answer ARP for VIPs on kube-dummy-if
    "net.ipv4.conf.all.arp_announce": 2,
}


#: From this kernel on, IPVS reschedules a SYN that reuses the source port of a closing
#: connection without the one-second stall conntrack used to add (kube-proxy's threshold).
CONN_REUSE_FIXED = (5, 9)


def conn_reuse_mode(release: str) -> int:
    """``net.ipv4.vs.conn_reuse_mode`` for a kernel release ("6.1.0-13-amd64"): 1, the
    kernel's default, where rescheduling a reused source port is cheap; 0 before, where it
    stalled every reused port's connection a second. With 0 a SYN from a port whose last
    connection is still in IPVS's table (TIME_WAIT lasts two minutes, and ephemeral ports
    do come round in that time) is sent to that connection's real server unscheduled,
    whatever happened to it since."""
    m = re.match(r"(\d+)\.(\d+)", release)
    version = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    return 1 if version >= CONN_REUSE_FIXED else 0


def _canonical(addr: str) -> str:
    return ipaddress.ip_address(addr).compressed


def set_name(base: str, family: int) -> str:
    return base if family == 4 else f"inet6:{base}"


def jump_rules() -> dict[tuple[str, str], str]:
    """(table, built-in chain) -> our jump rule, as iptables-save prints it."""
    return {
        ("nat", "POSTROUTING"): f'-m comment --comment "{COMMENT} hairpin" -m ipvs '
                                f"--vdir ORIGINAL -j {HAIRPIN_CHAIN}",
        ("nat", "POSTROUTING#2"): f'-m comment --comment "{COMMENT} snat" -j {SNAT_CHAIN}',
        ("filter", "INPUT"): f'-m comment --comment "{COMMENT} service guard" -m set '
                             f"--match-set {{svip}} dst -j {SERVICES_CHAIN}",
    }


class ServiceNetfilter:
    def __init__(self, settings: ProxySettings) -> None:
        self.masquerade_all = settings.masquerade_all
        self.permit_all = settings.permit_all
        self.families = list(settings.families)
        self._chains: dict[tuple[int, str, str], list[str]] = {}  # what we last wrote
        self._sets: dict[str, set[str]] = {}
        self.writes = 0  # iptables-restore runs (tests: a restart with no change makes none)
        self.local_ips: set[str] = set()
        # family -> the tables as start() read them, for the first sync right after it:
        # each tool process costs as much as the whole IPVS table on a slow node
        self._dumps: dict[int, dict[str, str]] = {}
        self._set_dumps: dict[int, str] = {}  # the same for ``ipset save``
        self._jumps_checked: set[int] = set()  # families a sync found (or put) our jumps in
        self._members = ipset.MemberSocket()
        self.set_changes = 0  # members added or deleted one by one (tests)
        self.processes = 0  # ipset and iptables processes sync() started (the sync log)

    async def start(self) -> None:
        for name, value in SYSCTLS.items():
            sysctl.write(name, value)
        sysctl.write("net.ipv4.vs.conn_reuse_mode", conn_reuse_mode(os.uname().release))
        if sysctl.read("net.ipv4.conf.all.rp_filter") == "1":
            sysctl.write("net.ipv4.conf.all.rp_filter", 2)  # strict breaks VIP replies
        # Pod to VIP to a pod on the same bridge: the reply must pass netfilter to be un-NATed.
        if not os.path.exists("/proc/sys/net/bridge"):  # loaded (or built in): no process
            await run(["modprobe", "br_netfilter"], check=False)
        sysctl.write("net.bridge.bridge-nf-call-iptables", 1)
        if 6 in self.families:
            sysctl.write("net.bridge.bridge-nf-call-ip6tables", 1)
        sets = await ipset.save()
        for family in self.families:
            self._set_dumps[family] = sets
            # the first sync reads our chains out of this dump (it always reads the kernel)
            self._dumps[family] = await iptables.save_all(family)

    # -- desired content ----------------------------------------------------------------

    def _nat_rules(self, states: Collection[ServiceState], pod_cidrs: Sequence[str],
                   family: int) -> dict[str, list[str]]:
        plen = 128 if family == 6 else 32
        hairpin = sorted({h for st in states for h in st.hairpin
                          if (":" in h[0]) == (family == 6)})
        hp = [f"-s {ep}/{plen} -d {ep}/{plen} -m ipvs --vaddr {vip} --vport {port} "
              f"-j SNAT --to-source {vip}" for vip, _proto, port, ep in hairpin]
        # written as iptables-save prints it, so a restart compares equal and writes nothing
        masq = "-m ipvs --vdir ORIGINAL --vmethod MASQ"
        cidrs = [c for c in pod_cidrs if (":" in c) == (family == 6)]
        if self.masquerade_all or not cidrs:
            snat = [f"{masq} -j MASQUERADE"]
        else:
            snat = [f"! -s {c} {masq} -j MASQUERADE" for c in cidrs]
        return {HAIRPIN_CHAIN: hp, SNAT_CHAIN: snat}

    def _guard_rules(self, family: int) -> list[str]:
        if not self.permit_all:
            return []
        prt, local = (set_name(n, family) for n in (SVIP_PRT, LOCAL_IPS))
        if family == 4:
            icmp = [f"-p icmp -m icmp --icmp-type {t} -j ACCEPT"
                    for t in ("8", "3", "11")]
            reject = "icmp-port-unreachable"
        else:
            icmp = [f"-p ipv6-icmp -m icmp6 --icmpv6-type {t} -j ACCEPT"
                    for t in ("128", "1", "3", "135", "136")]
            reject = "icmp6-port-unreachable"
        # Replies to connections a client on this node made through a VIP come back to the
        # VIP itself (the client's source); without this they would hit the REJECT.
        return ["-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT", *icmp,
                f"-m set --match-set {prt} dst,dst -j ACCEPT",
                f"-m set ! --match-set {local} dst -j REJECT --reject-with {reject}"]

    def _set_members(self, states: Collection[ServiceState], family: int
                     ) -> dict[str, set[str]]:
        v6 = family == 6
        keys = [vs.key for st in states for vs in st.servers
                if (vs.key.af == socket.AF_INET6) == v6]
        # as ``ipset save`` prints them, so a full sync compares them with the kernel's
        addr = _canonical if v6 else str
        svip = {addr(k.addr) for k in keys}
        prt = {f"{addr(k.addr)},{nl.PROTOCOL_NAMES[k.protocol].lower()}:{k.port}"
               for k in keys}
        local = {addr(ip) for ip in self.local_ips if (":" in ip) == v6}
        return {set_name(SVIP, family): svip, set_name(SVIP_PRT, family): prt,
                set_name(LOCAL_IPS, family): local}

    # -- applying -----------------------------------------------------------------------

    async def refresh_local_ips(self) -> bool:
        """Read the node's addresses again; True when they changed."""
        now = set(await local_addresses(exclude_names=(DUMMY_IF,)))
        if now == self.local_ips:
            return False
        log.info("local addresses changed added=%s removed=%s",
                 ",".join(sorted(now - self.local_ips)) or "-",
                 ",".join(sorted(self.local_ips - now)) or "-")
        self.local_ips = now
        return True

    async def sync(self, states: Collection[ServiceState], pod_cidrs: Sequence[str], *,
                   full: bool) -> None:
        """Bring chains and sets in line with the Services' states on this node, whose pods
        have ``pod_cidrs``.

        A partial sync compares with what this manager last wrote and sends only the
        difference: nothing at all (no process) when the Service's change leaves the
        sets and chains as they are. A full sync compares with the kernel instead, so a
        rule or member someone else removed comes back."""
        if full or not self.local_ips:
            self.local_ips = set(await local_addresses(exclude_names=(DUMMY_IF,)))
        for family in self.families:
            await self._sync_sets(states, family, full)
            await self._sync_chains(states, pod_cidrs, family, full)

    async def _read_sets(self, family: int) -> None:
        """What our sets of ``family`` hold in the kernel (the one read after start()
        serves the first full sync)."""
        text = self._set_dumps.pop(family, None)
        if text is None:
            self.processes += 1
            text = await ipset.save()
        types = self._set_types(family)
        # the record held comes back when the kernel agrees with it: no copy is made
        # to replace it in fresh memory every period
        found = ipset.parse_save(text, types.__contains__, self._sets)
        for name in types:
            self._sets.pop(name, None)
            stype, members = found.get(name, ("", set()))
            if stype == types[name]:
                self._sets[name] = members

    def _set_types(self, family: int) -> dict[str, str]:
        return {set_name(SVIP, family): "hash:ip", set_name(SVIP_PRT, family): "hash:ip,port",
                set_name(LOCAL_IPS, family): "hash:ip"}

    async def _sync_sets(self, states: Collection[ServiceState], family: int,
                         full: bool) -> None:
        fam = "inet6" if family == 6 else "inet"
        types = self._set_types(family)
        if full:
            await self._read_sets(family)
        lines: list[str] = []
        moves: list[tuple[str, str, bool]] = []
        for name, members in self._set_members(states, family).items():
            have = self._sets.get(name)
            if have == members:
                continue
            if have is None:  # not there (or not read yet): built whole and swapped in
                lines += ipset.swap_script(name, types[name], sorted(members), family=fam,
                                           tmp_suffix=SET_TMP_SUFFIX)
                self._sets[name] = members
            else:
                gone, added = have - members, members - have
                moves += [(name, m, False) for m in sorted(gone)]
                moves += [(name, m, True) for m in sorted(added)]
                # The record held is changed in place: a partial sync rebuilds the members
                # of every Service, and keeping that copy instead would put thousands of
                # fresh strings in a long-lived set at each change (scattering it over the
                # heap as the churn goes on); the copy dies at once this way.
                have -= gone
                have |= added
        if len(moves) > MAX_NETLINK_MOVES:  # many at once: one process beats many messages
            lines = [f"{'add' if add else 'del'} {n} {m} -exist" for n, m, add in moves] + lines
            moves = []
        self.set_changes += len(moves)
        try:
            if lines:
                self.processes += 1
                await ipset.restore(lines)
            await self._members.change_many(moves)
        except Exception:
            for name in types:
                self._sets.pop(name, None)  # rebuilt whole next time
            raise

    async def _sync_chains(self, states: Collection[ServiceState], pod_cidrs: Sequence[str],
                           family: int, full: bool) -> None:
        wanted = {("nat", c): r for c, r in self._nat_rules(states, pod_cidrs, family).items()}
        wanted[("filter", SERVICES_CHAIN)] = self._guard_rules(family)
        dump: dict[str, str] = {}
        read = full or family not in self._jumps_checked
        if read:
            # a full sync compares with the kernel (the first one follows start() at once
            # and reads what start() read); a partial one trusts what we last wrote
            if family in self._dumps:
                dump = self._dumps.pop(family)
            else:
                self.processes += 1
                dump = await iptables.save_all(family)
            for (t, chain) in wanted:
                saved = dump.get(t, "")
                if chain in iptables.chains(saved):
                    rules = iptables.rules_of(saved, chain)
                    if self._chains.get((family, t, chain)) != rules:  # else keep ours
                        self._chains[(family, t, chain)] = rules
                else:
                    self._chains.pop((family, t, chain), None)
        changed = {key for key, rules in wanted.items()
                   if self._chains.get((family, *key)) != rules}
        jumps = jump_rules()
        batch: dict[str, list[str]] = {}
        for table in ("nat", "filter"):
            lines: list[str] = []
            for (t, chain), rules in wanted.items():
                if (t, chain) not in changed or t != table:
                    continue
                lines.append(f":{chain} - [0:0]")
                lines += [f"-A {chain} {r}" for r in rules]
            saved = dump.get(table, "")
            missing = []
            for (t, builtin), rule in jumps.items():
                if t != table or not read:
                    continue
                builtin = builtin.split("#")[0]
                rule = rule.format(svip=set_name(SVIP, family))
                if rule not in iptables.rules_of(saved, builtin):
                    missing.append(f"-I {builtin} 1 {rule}")
            if lines or missing:
                # Jumps go in after the chains exist; hairpin must come before the SNAT
                # jump, so insert in reverse order at position 1.
                batch[table] = lines + list(reversed(missing))
        if batch:
            # both tables in one process: what the tables need is written with one restore
            self.processes += 1
            await iptables.restore_tables(batch, family)
            self.writes += 1
            for key in changed:
                self._chains[(family, *key)] = wanted[key]
        if read:
            self._jumps_checked.add(family)


async def cleanup_netfilter(families: list[int]) -> None:
    """Remove our jumps, chains and sets (and nothing else)."""
    jumps = jump_rules()
    for family in families:
        for table in ("nat", "filter"):
            try:
                saved = await iptables.save(table, family)
            except Exception as exc:
                log.warning("cleanup cannot read iptables table=%s error=%s", table, exc)
                continue
            lines = []
            for (t, builtin), rule in jumps.items():
                builtin = builtin.split("#")[0]
                rule = rule.format(svip=set_name(SVIP, family))
                if t == table and rule in iptables.rules_of(saved, builtin):
                    lines.append(f"-D {builtin} {rule}")
            ours = [c for c in (HAIRPIN_CHAIN, SNAT_CHAIN, SERVICES_CHAIN)
                    if c in iptables.chains(saved)]
            lines += [f":{c} - [0:0]" for c in ours]
            lines += [f"-X {c}" for c in ours]
            if lines:
                await iptables.restore(table, lines, family)
        for base in (SVIP, SVIP_PRT, LOCAL_IPS):
            for name in (set_name(base, family), set_name(base, family) + SET_TMP_SUFFIX):
                await asyncio.to_thread(ipset.destroy_sync, name)
