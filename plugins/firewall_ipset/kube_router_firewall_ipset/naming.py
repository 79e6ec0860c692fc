"""Names of the chains and sets the firewall owns: kube-router's prefixes, stable hashes.

A name depends only on what the object is for (a pod's namespace/name, a policy's
namespace/name and rule), never on a sync's time, so a sync that changes nothing writes
nothing and a change rewrites only the objects it touches. 16 base32 characters of a
sha256 keep ``inet6:KUBE-SRC-`` plus the hash within ipset's 31 characters.
"""

from __future__ import annotations

import base64
import hashlib

FORWARD = "KUBE-ROUTER-FORWARD"
INPUT = "KUBE-ROUTER-INPUT"
OUTPUT = "KUBE-ROUTER-OUTPUT"
TOP_CHAINS = {"FORWARD": FORWARD, "INPUT": INPUT, "OUTPUT": OUTPUT}
TAIL = "KUBE-NWPLCY-TAIL"
POD_PREFIX = "KUBE-POD-FW-"
POLICY_PREFIX = "KUBE-NWPLCY-"
SRC_PREFIX = "KUBE-SRC-"
DST_PREFIX = "KUBE-DST-"
V6_PREFIX = "inet6:"
#: The local pods whose chains are written: any other address of the node's pod CIDR
#: (a pod the firewall has not seen yet) is rejected.
LOCAL_PODS = "kube-router-local-pods"
#: Temporary sets used while swapping, one per (type, family); ours alone.
TMP_PREFIX = "KUBE-FWTMP-"

#: "allowed by a policy of the chain being evaluated"; "passed a pod chain".
MARK_ALLOWED = "0x10000"
MARK_PASSED = "0x20000"
COMMENT = "kube-router netpol"


#: text -> hash; swept to the names a full sync used, so deleted objects leave it
_hashes: dict[str, str] = {}
_used: set[str] | None = None
CACHE_CAP = 1 << 16


def _h(text: str) -> str:
    h = _hashes.get(text)
    if h is None:
        if len(_hashes) >= CACHE_CAP:
            _hashes.clear()
        h = _hashes[text] = base64.b32encode(
            hashlib.sha256(text.encode()).digest()).decode()[:16]
    if _used is not None:
        _used.add(text)
    return h


def sweep_begin() -> None:
    """Start noting the names in use (a full sync computes every one that exists)."""
    global _used
    _used = set()


def sweep_end() -> None:
    """Forget the hashes of names not used since ``sweep_begin`` (objects deleted)."""
    global _used
    used, _used = _used, None
    if used is not None:
        for text in [t for t in _hashes if t not in used]:
            del _hashes[text]


def pod_chain(namespace: str, name: str) -> str:
    return POD_PREFIX + _h(f"{namespace}/{name}")


def policy_chain(namespace: str, name: str, direction: str) -> str:
    """One chain per policy and direction ("ingress" or "egress")."""
    return POLICY_PREFIX + _h(f"{namespace}/{name}/{direction}")


def set_name(prefix: str, family: int, *parts: object) -> str:
    base = prefix + _h("/".join(str(p) for p in parts) + f"/{family}")
    return V6_PREFIX + base if family == 6 else base


def tmp_set(settype: str, family: int) -> str:
    return f"{TMP_PREFIX}{settype.split(':')[1].upper()}{family}"


def owned_chain(name: str) -> bool:
    return name in TOP_CHAINS.values() or name.startswith((POD_PREFIX, POLICY_PREFIX))


def owned_set(name: str) -> bool:
    bare = name.removeprefix(V6_PREFIX)
    return bare == LOCAL_PODS or bare.startswith((SRC_PREFIX, DST_PREFIX, TMP_PREFIX))


def local_pods(family: int) -> str:
    return V6_PREFIX + LOCAL_PODS if family == 6 else LOCAL_PODS
