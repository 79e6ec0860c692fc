"""What runs inside the lab's kernel: ``python -m kube_router_lab.inside``.

``init JOB``: prepare the guest (modules, sysctls, a writable ``/run``, iptables mapped to the
legacy backend, the output directory), run the job's command in its directory, and report its
exit status back to the host through a marker line and a file.

``scenario FILE [--report PATH] [--keep-going]``: build the lab cluster and run a scenario.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

UML_MODULES = Path("/usr/lib/uml/modules")
MODROOT = Path("/run/m")
BIN_DIR = Path("/run/kube-router-lab/bin")
OUT_MOUNT = Path("/run/out")

#: Modules the lab and the agents use; those the kernel lacks are skipped.
MODULES_EXACT = [
    "ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_lc", "ip_vs_wlc", "ip_vs_sh", "ip_vs_dh",
    "ip_vs_mh", "ip_vs_sed", "ip_vs_nq", "ip_vs_lblc", "ip_vs_lblcr", "ip_vs_fo", "ip_vs_ovf",
    "veth", "bridge", "br_netfilter", "ipip", "nf_conntrack", "nf_nat", "sctp",
    "ip_tables", "iptable_filter", "iptable_nat", "iptable_mangle", "iptable_raw",
    "ip6_tables", "ip6table_filter", "ip6table_nat", "ip6table_mangle", "ip6table_raw",
]
MODULE_FAMILIES = ("ip_set", "xt_")  # every set type and every match/target present

#: The agents pick the iptables backend by this variable; the guest kernel has no nf_tables
#: for IPv4, so it must be legacy there.
IPTABLES_ENV = "KUBE_ROUTER_IPTABLES"
IPTABLES_TOOLS = ("iptables", "iptables-save", "iptables-restore",
                  "ip6tables", "ip6tables-save", "ip6tables-restore")


def _check(argv: list[str]) -> None:
    res = subprocess.run(argv, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed rc={res.returncode}: {res.stderr.strip()}")


def _write(path: str, value: str) -> None:
    try:
        Path(path).write_text(value)
    except OSError as exc:
        print(f"lab: warning sysctl={path} value={value} error={exc}", file=sys.stderr)


def _module_dir() -> Path:
    release = os.uname().release
    if (UML_MODULES / release).is_dir():
        return UML_MODULES / release
    dirs = sorted(p for p in UML_MODULES.iterdir() if p.is_dir())
    if not dirs:
        raise RuntimeError(f"no module directory in {UML_MODULES}")
    return dirs[-1]


def _available(moddir: Path) -> set[str]:
    names = set()
    for line in (moddir / "modules.dep").read_text().splitlines():
        path = line.split(":", 1)[0]
        names.add(Path(path).name.split(".ko", 1)[0].replace("-", "_"))
    return names


def load_modules() -> list[str]:
    """Point modprobe at the UML kernel's modules and load what the lab needs."""
    src = _module_dir()
    release = src.name
    target = MODROOT / "lib" / "modules" / release
    target.mkdir(parents=True, exist_ok=True)
    # /lib/modules cannot be created on the read-only root: give modprobe its own root
    _check(["mount", "--bind", str(src), str(target)])
    wrapper = MODROOT / "modprobe"
    wrapper.write_text(f'#!/bin/sh\nexec /usr/sbin/modprobe -d {MODROOT} "$@"\n')
    wrapper.chmod(0o755)
    _write("/proc/sys/kernel/modprobe", str(wrapper))  # the kernel's autoloading too
    have = _available(src)
    wanted = [m for m in MODULES_EXACT if m in have]
    wanted += sorted(m for m in have if m.startswith(MODULE_FAMILIES))
    _check([str(wrapper), "-a", *wanted])
    # without numdummies=0 the module would make dummy0 in every namespace
    if "dummy" in have:
        _check([str(wrapper), "dummy", "numdummies=0"])
        wanted.append("dummy")
    return wanted


def prepare(job: dict) -> dict[str, str]:
    """Make the guest ready for the job; return the environment its command gets."""
    mode = job["mode"]
    if mode == "host":
        # new mount namespace: these mounts hide the host's only from us
        _check(["mount", "-t", "tmpfs", "-o", "mode=755", "run", "/run"])
        _check(["mount", "-t", "sysfs", "sys", "/sys"])
    for d in ("/run/tmp", "/run/netns", "/run/home", str(BIN_DIR)):
        Path(d).mkdir(parents=True, exist_ok=True)
    if Path("/var/run").resolve() != Path("/run"):
        _check(["mount", "--bind", "/run", "/var/run"])
    if mode == "uml":
        load_modules()
    _check(["ip", "link", "set", "lo", "up"])  # IPVS refuses real servers otherwise
    _write("/proc/sys/net/ipv4/ip_forward", "1")
    if Path("/proc/sys/net/ipv4/vs/conntrack").exists():
        _write("/proc/sys/net/ipv4/vs/conntrack", "1")
    env = dict(job["env"])
    if mode == "uml":
        for tool in IPTABLES_TOOLS:
            legacy = _which(tool.replace("tables", "tables-legacy", 1))
            if legacy:
                (BIN_DIR / tool).symlink_to(legacy)
        env[IPTABLES_ENV] = "legacy"
        outdir = OUT_MOUNT
        outdir.mkdir(parents=True, exist_ok=True)
        _check(["mount", "-t", "hostfs", "none", str(outdir), "-o", job["outdir"]])
    else:
        outdir = Path(job["outdir"])
    std_path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    # The project's own commands (kube-router-py) work by name on every node, as they
    # would where the agent is installed.
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = ":".join(p for p in (str(BIN_DIR), venv_bin, env.get("PATH", ""), std_path)
                           if p)
    env.update({
        "TMPDIR": "/run/tmp",
        "HOME": "/run/home",
        "KUBE_ROUTER_LAB_OUT": str(outdir),
        "KUBE_ROUTER_LAB_KERNEL": mode,
        # the root is read-only: no bytecode or pytest cache writes to fail on
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTEST_ADDOPTS": (env.get("PYTEST_ADDOPTS", "") + " -p no:cacheprovider").strip(),
    })
    return env


def _which(name: str) -> str | None:
    for d in ("/usr/sbin", "/sbin", "/usr/bin", "/bin"):
        if Path(d, name).exists():
            return str(Path(d, name))
    return None


def cmd_init(job_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    prefix = f"@@kube-router-lab-{job['nonce']}@@ "
    print(prefix + "started", flush=True)
    rc = 125
    try:
        env = prepare(job)
        print(prefix + "ready", flush=True)
        try:
            rc = subprocess.call(job["argv"], cwd=job["cwd"], env=env)
        except OSError as exc:
            print(f"lab: cannot run {job['argv'][0]}: {exc}", file=sys.stderr, flush=True)
            rc = 127
    except Exception as exc:
        print(f"lab: guest preparation failed: {exc}", file=sys.stderr, flush=True)
    if rc < 0:
        rc = 128 - rc  # killed by a signal, as a shell reports it
    sys.stderr.flush()
    outdir = Path(job["outdir"]) if job["mode"] == "host" else OUT_MOUNT
    with contextlib.suppress(OSError):  # the marker line below still carries it
        outdir.joinpath(f".exit-{job['nonce']}").write_text(str(rc))
    print(f"{prefix}exit {rc}", flush=True)
    return rc


def cmd_scenario(args: argparse.Namespace) -> int:
    from kube_router_lab.runner import run_scenario_file

    report = Path(args.report) if args.report else None
    if args.out_report:  # a name in the directory the host reads back
        report = Path(os.environ.get("KUBE_ROUTER_LAB_OUT", ".")) / args.out_report
    return run_scenario_file(Path(args.file), report=report, keep_going=args.keep_going,
                             agent=args.agent)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kube_router_lab.inside")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("init", help="prepare the guest and run a job (PID 1's helper)")
    p.add_argument("job")
    p = sub.add_parser("scenario", help="build the lab and run a scenario file")
    p.add_argument("file")
    p.add_argument("--report")
    p.add_argument("--out-report", help="a file name in $KUBE_ROUTER_LAB_OUT")
    p.add_argument("--keep-going", action="store_true")
    p.add_argument("--agent", help="the agent every node runs, over the file's cluster.agent")
    args = parser.parse_args(argv)
    if args.cmd == "init":
        return cmd_init(args.job)
    started = time.monotonic()
    try:
        return cmd_scenario(args)
    finally:
        print(f"lab: scenario finished in {time.monotonic() - started:.1f}s", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
