"""The preload that lets UML 6.1 run on hosts whose CPUs have AMX (see ``uml_xstate.c``),
built once per source into the cache beside the other programs the lab builds."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from kube_router_lab.original import cache_dir

SOURCE = Path(__file__).with_name("uml_xstate.c")


class PreloadError(Exception):
    """The preload is needed and cannot be built; the message is one line."""


def host_has_amx(cpuinfo: str | None = None) -> bool:
    """True when the host's CPU lists AMX tile state among its flags."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return "amx_tile" in line.split(":", 1)[-1].split()
    return False


def preload() -> str | None:
    """The library's path for LD_PRELOAD, built if missing; None where it is not needed."""
    if not host_has_amx():
        return None
    source = SOURCE.read_bytes()
    lib = cache_dir() / "uml-xstate" / f"{hashlib.sha256(source).hexdigest()[:16]}.so"
    if lib.exists():
        return str(lib)
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise PreloadError("this CPU has AMX, and UML needs a small preload built for it: "
                           "no C compiler found (install the Debian package gcc)")
    lib.parent.mkdir(parents=True, exist_ok=True)
    # build beside it and rename: a concurrent guest never loads a half-written library
    tmp = lib.with_name(f"{lib.name}.{os.getpid()}.tmp")
    res = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(tmp), str(SOURCE), "-ldl"],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        tmp.unlink(missing_ok=True)
        first = (res.stderr.strip().splitlines() or ["no output"])[0]
        raise PreloadError(f"building the UML preload for AMX failed: {first}")
    os.replace(tmp, lib)
    return str(lib)
