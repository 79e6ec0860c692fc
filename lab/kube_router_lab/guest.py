"""The kernel the lab runs on: a User-Mode Linux guest, or the host kernel in namespaces.

The host kernels this project is developed on often lack IPVS, dummy links and IPIP. Debian's
``user-mode-linux`` kernel has them all as modules and boots in about two seconds as an
ordinary process with the host's filesystem as its read-only root. :func:`run` starts a
command there (or, with ``kernel="host"``, in fresh network and mount namespaces of the host
kernel), streams its output back line by line and returns its exit status.

What the command finds prepared is done by :mod:`kube_router_lab.inside` (``init``): modules,
sysctls, a writable ``/run``, iptables mapped to the legacy backend, the output directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from kube_router_lab.original import cache_dir
from kube_router_lab.uml_xstate import PreloadError
from kube_router_lab.uml_xstate import preload

KERNELS = ("auto", "uml", "host")
UML_MODULES = Path("/usr/lib/uml/modules")

#: Tools the prepared guest needs, and the Debian package that provides each.
REQUIRED_TOOLS = {
    "ip": "iproute2",
    "modprobe": "kmod",
    "ipvsadm": "ipvsadm",
    "ipset": "ipset",
    "iptables-legacy": "iptables",
    "iptables-legacy-restore": "iptables",
    "unshare": "util-linux",
}

#: Host variables that would point the guest at places it cannot use.
_DROP_ENV = {"TMPDIR", "HOME", "PWD", "OLDPWD", "SHLVL", "_", "XDG_RUNTIME_DIR", "TERM"}


class GuestError(Exception):
    """The guest cannot be started; the message is one line naming what is missing."""


def marker_prefix(nonce: str) -> str:
    """Lines starting with this carry the guest's state, not the command's output."""
    return f"@@kube-router-lab-{nonce}@@ "


def find_uml_kernel() -> str:
    path = shutil.which("linux.uml") or shutil.which("linux")
    if not path or not Path(path).resolve().name.startswith("linux"):
        raise GuestError("linux.uml not found: install the Debian package user-mode-linux")
    if not UML_MODULES.is_dir() or not any(UML_MODULES.iterdir()):
        raise GuestError(f"{UML_MODULES} is empty: reinstall the Debian package user-mode-linux")
    return path


def check_tools() -> None:
    for tool, package in REQUIRED_TOOLS.items():
        if not shutil.which(tool, path=_sbin_path()):
            raise GuestError(f"{tool} not found: install the Debian package {package}")


def _sbin_path() -> str:
    extra = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    return f"{os.environ.get('PATH', '')}:{extra}"


def host_kernel_usable() -> bool:
    """True when the host kernel has IPVS and dummy links loaded, or loadable."""

    def have(module: str, proc: str | None = None) -> bool:
        if Path(f"/sys/module/{module}").exists() or (proc and Path(proc).exists()):
            return True
        modprobe = shutil.which("modprobe", path=_sbin_path())
        if not modprobe:
            return False
        # -n: only resolve the module, load nothing into the host kernel
        res = subprocess.run([modprobe, "-n", module], capture_output=True, check=False)
        return res.returncode == 0

    return have("ip_vs", "/proc/net/ip_vs") and have("dummy")


def resolve_kernel(kind: str) -> str:
    if kind not in KERNELS:
        raise GuestError(f"--kernel {kind!r}: expected one of {', '.join(KERNELS)}")
    if kind == "auto":
        return "host" if host_kernel_usable() else "uml"
    return kind


def _job_env(out: TextIO) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROP_ENV}
    # The guest has a HOME of its own: name the host's cache of binaries built from Go
    # modules (the original kube-router, the control plane) explicitly.
    env.setdefault("KUBE_ROUTER_PY_CACHE", str(cache_dir()))
    # the guest's console is a terminal even when our output is a file or a pipe
    if out.isatty():
        env["TERM"] = os.environ.get("TERM", "linux")
    else:
        env.update({"TERM": "dumb", "NO_COLOR": "1", "PY_COLORS": "0"})
    return env


def _init_script(python: str, job: Path) -> str:
    """PID 1 of the guest: the mounts Python needs, then inside.py, then power off."""
    q = _sh_quote
    return "\n".join([
        "#!/bin/sh",
        "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "mount -t proc proc /proc",
        "mount -t sysfs sys /sys",
        # the root is the host's, read-only: /run is where the guest may write
        "mount -t tmpfs -o mode=755 run /run",
        # kernel messages share the console with the command's output: keep only emergencies
        "echo 1 > /proc/sys/kernel/printk",
        f"{q(python)} -m kube_router_lab.inside init {q(str(job))}",
        "echo o > /proc/sysrq-trigger",
        # power-off is asynchronous; PID 1 exiting first would panic the kernel
        "sleep 10",
        "",
    ])


def _sh_quote(s: str) -> str:
    return "'" + s.replace("'", "'\"'\"'") + "'"


def run(
    argv: Sequence[str],
    *,
    kernel: str = "auto",
    cwd: str | None = None,
    outdir: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 3600.0,
    mem: str = "1G",
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Run ``argv`` in a prepared guest kernel; return its exit status.

    ``outdir`` (a host directory) is writable inside the guest at the path in the
    ``KUBE_ROUTER_LAB_OUT`` variable. The command's output goes to ``out`` as it comes.
    Raises :class:`GuestError` when the guest cannot start; a guest that dies or times out
    gives 124 (timeout) or 125 (no exit status came back).
    """
    out = out or sys.stdout
    err = err or sys.stderr
    kind = resolve_kernel(kernel)
    check_tools()
    kernel_path = find_uml_kernel() if kind == "uml" else None
    try:
        uml_preload = preload() if kind == "uml" else None
    except PreloadError as exc:
        raise GuestError(str(exc)) from None
    if not argv:
        raise GuestError("no command to run")
    with tempfile.TemporaryDirectory(prefix="kube-router-lab-") as tmp:
        work = Path(tmp)
        out_dir = Path(outdir) if outdir else work / "out"
        out_dir.mkdir(parents=True, exist_ok=True)
        nonce = secrets.token_hex(6)
        job = work / "job.json"
        job.write_text(json.dumps({
            "argv": list(argv),
            "cwd": cwd or os.getcwd(),
            "env": {**_job_env(out), **(env or {})},
            "outdir": str(out_dir.resolve()),
            "mode": kind,
            "nonce": nonce,
        }))
        if kind == "uml":
            init = work / "init"
            init.write_text(_init_script(sys.executable, job))
            init.chmod(0o755)
            assert kernel_path is not None  # found above, before any work
            cmd = [kernel_path, f"mem={mem}", "rootfstype=hostfs", "rootflags=/", "ro",
                   "quiet", f"init={init}", "con=null", "con0=fd:0,fd:1"]
        else:
            unshare = shutil.which("unshare", path=_sbin_path())
            if unshare is None:
                raise GuestError("unshare not found: install the Debian package util-linux")
            cmd = [unshare, "--net", "--mount", "--propagation", "private", "--",
                   sys.executable, "-m", "kube_router_lab.inside", "init", str(job)]
        return _supervise(cmd, kind, nonce, out_dir, timeout, out, err, work, uml_preload)


def _supervise(cmd: list[str], kind: str, nonce: str, out_dir: Path, timeout: float,
               out: TextIO, err: TextIO, work: Path, uml_preload: str | None = None) -> int:
    prefix = marker_prefix(nonce)
    started = time.monotonic()
    # UML needs a place for its memory file; keep it with the run's other files
    penv = {**os.environ, "TMPDIR": str(work)}
    if uml_preload:
        penv["LD_PRELOAD"] = uml_preload
    # own session: on timeout the kernel and its helper processes go as one group
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True, env=penv)
    timed_out = threading.Event()

    def watchdog() -> None:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out.set()
            _kill_group(proc.pid)

    threading.Thread(target=watchdog, daemon=True).start()
    restore = None
    if threading.current_thread() is threading.main_thread():
        def on_term(signum: int, _frame: object) -> None:
            _kill_group(proc.pid)  # never leave a guest running without its supervisor
            raise SystemExit(128 + signum)

        restore = signal.signal(signal.SIGTERM, on_term)
    rc: int | None = None
    seen_init = False
    early: list[str] = []  # the kernel's boot lines: shown only when the guest fails
    assert proc.stdout is not None
    try:
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n").replace("\r", "")
            if line.startswith(prefix):
                word, _, value = line[len(prefix):].partition(" ")
                if word == "ready":
                    seen_init = True
                    print(f"lab kernel={kind} boot_to_command_seconds="
                          f"{time.monotonic() - started:.2f}", file=err, flush=True)
                elif word == "exit":
                    rc = int(value)
                elif word == "started":
                    seen_init = True
                continue
            if rc is not None:
                continue  # the power-off chatter after the command ended
            if not seen_init:
                early.append(line)
                continue
            out.write(line + "\n")
            out.flush()
    except KeyboardInterrupt:
        _kill_group(proc.pid)
        raise
    finally:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            proc.wait()
        if restore is not None:
            signal.signal(signal.SIGTERM, restore)
    rc_file = out_dir / f".exit-{nonce}"
    if rc is None and rc_file.exists():
        rc = int(rc_file.read_text().strip() or 125)
    rc_file.unlink(missing_ok=True)
    if timed_out.is_set():
        print(f"lab: guest timed out after {timeout:.0f}s kernel={kind}", file=err, flush=True)
        return 124
    if rc is None:
        for line in early[-20:]:
            print(line, file=err)
        print(f"lab: the guest ended without an exit status kernel={kind} "
              f"status={proc.returncode}", file=err, flush=True)
        return 125
    return rc


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def unavailable() -> str | None:
    """Why the lab cannot run here (one line), or None: what test tiers skip on."""
    if os.geteuid() != 0:
        return "the lab needs root (network namespaces, mounts)"
    try:
        if resolve_kernel("auto") == "uml":
            find_uml_kernel()
        check_tools()
    except GuestError as exc:
        return str(exc)
    return None
