"""Where the built control-plane programs are, and building them when they are missing."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

#: Set by ``kube-router-py lab run`` for the guest, whose environment has no home.
BIN_ENV = "KUBE_ROUTER_LAB_CONTROL_PLANE_BIN"
PROGRAMS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd")


class BinariesMissing(RuntimeError):
    pass


def build_script() -> Path:
    return Path(__file__).resolve().parents[2] / "controlplane" / "build.sh"


def bin_dirs() -> list[Path]:
    """The directories build.sh puts the programs in (they may not exist yet)."""
    if os.environ.get(BIN_ENV):
        return [Path(p) for p in os.environ[BIN_ENV].split(os.pathsep) if p]
    out = subprocess.run(["bash", str(build_script()), "--print"], check=True,
                         capture_output=True, text=True).stdout
    return [Path(line) for line in out.splitlines() if line.strip()]


def find(dirs: list[Path] | None = None) -> dict[str, Path]:
    """Program name -> path; raises BinariesMissing naming what is not built."""
    dirs = bin_dirs() if dirs is None else dirs
    found: dict[str, Path] = {}
    for prog in PROGRAMS:
        for d in dirs:
            if (d / prog).is_file() and os.access(d / prog, os.X_OK):
                found[prog] = d / prog
                break
    missing = [p for p in PROGRAMS if p not in found]
    if missing:
        raise BinariesMissing(
            f"control plane not built ({', '.join(missing)} missing in "
            f"{', '.join(map(str, dirs))}): run `make controlplane`")
    return found


def ensure_built() -> list[Path]:
    """Build the control plane when it is missing (the first time takes long); return
    its directories."""
    dirs = bin_dirs()
    try:
        find(dirs)
    except BinariesMissing:
        subprocess.run(["bash", str(build_script())], check=True)
    find(dirs)
    return dirs


def version(dirs: list[Path] | None = None) -> str:
    """The Kubernetes release: the name of the versioned directory kube-apiserver is in."""
    return find(dirs)["kube-apiserver"].parent.parent.name
