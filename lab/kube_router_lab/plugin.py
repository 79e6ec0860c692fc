"""``kube-router-py lab``: run scenarios and commands in the lab's kernel.

``lab run SCENARIO.yaml`` checks the file on this machine first (so a typo costs no boot),
then runs it inside the guest; ``lab exec -- CMD ...`` runs one command there.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from kube_router import hookimpl
from kube_router_lab.spec import AGENTS

DEFAULT_TIMEOUT = 3600.0
DEFAULT_MEM = "1G"
REAL_MEM = "2500M"


@hookimpl
def kube_router_add_commands(subparsers: argparse._SubParsersAction) -> None:
    lab = subparsers.add_parser(
        "lab", help="a multi-node cluster sandbox on this machine",
        description="Build a small cluster in network namespaces (inside a User-Mode Linux "
                    "kernel when this kernel lacks IPVS) and run scenarios against it.")
    lab.set_defaults(func=lambda _c: (lab.print_help(), 2)[1])
    sub = lab.add_subparsers(dest="lab_command", metavar="LAB_COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--kernel", choices=("auto", "uml", "host"), default="auto",
                       help="auto: the host kernel when it has IPVS and dummy links, else "
                            "User-Mode Linux (default auto)")
        p.add_argument("--mem", default=DEFAULT_MEM,
                       help=f"guest memory for User-Mode Linux (default {DEFAULT_MEM}, "
                            f"{REAL_MEM} on the real control plane)")
        p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                       help="stop the guest after this many seconds (default 3600)")

    run = sub.add_parser("run", help="run a scenario file",
                         description="Build the lab cluster, run a scenario's steps, print a "
                                     "transcript, write a JSON report; exit 0 only if every "
                                     "step passed.")
    run.add_argument("scenario", help="the scenario file (YAML)")
    run.add_argument("--report", help="write the JSON report here")
    run.add_argument("--keep-going", action="store_true",
                     help="run the remaining steps after a failure")
    run.add_argument("--check", action="store_true",
                     help="only parse and validate the file")
    run.add_argument("--agent", choices=AGENTS,
                     help="the agent every node runs, over the file's cluster.agent "
                          "(kube-router: the original, a reference built by `make "
                          "kube-router-original`)")
    run.add_argument("--control-plane", choices=("embedded", "real"),
                     help="the API server the lab runs on, overriding the scenario's "
                          "cluster.control-plane: the lab's embedded one, or kube-apiserver, "
                          "kube-controller-manager, kube-scheduler and etcd built from their "
                          "Go modules (built first when missing: `make controlplane`)")
    common(run)
    run.set_defaults(func=cmd_run)

    ex = sub.add_parser("exec", help="run a command inside the lab's kernel",
                        description="Run CMD in the prepared guest, in the current directory; "
                                    "exit with its status.")
    common(ex)
    ex.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    ex.set_defaults(func=cmd_exec)


def cmd_exec(config: argparse.Namespace) -> int:
    from kube_router_lab.guest import GuestError
    from kube_router_lab.guest import run as guest_run

    argv = list(config.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        print("kube-router-py lab exec: no command given (lab exec -- CMD ...)", file=sys.stderr)
        return 2
    from kube_router_lab.realcp import binaries

    # Where the real control plane is built, for tests that start it (the guest has no home
    # to find the cache from).
    try:
        env = {binaries.BIN_ENV: os.pathsep.join(map(str, binaries.bin_dirs()))}
    except (OSError, subprocess.CalledProcessError):
        env = {}
    try:
        return guest_run(argv, kernel=config.kernel, timeout=config.timeout, mem=config.mem,
                         env=env)
    except GuestError as exc:
        print(f"kube-router-py lab: {exc}", file=sys.stderr)
        return 2


def cmd_run(config: argparse.Namespace) -> int:
    from kube_router_lab.guest import GuestError
    from kube_router_lab.guest import run as guest_run
    from kube_router_lab.scenario import ScenarioError
    from kube_router_lab.scenario import load_scenario

    path = Path(config.scenario)
    try:
        scenario = load_scenario(path)
    except ScenarioError as exc:
        print(exc, file=sys.stderr)
        return 2
    if config.check:
        print(f"{path}: ok, {len(scenario.steps)} steps")
        return 0
    env: dict[str, str] = {}
    control_plane = config.control_plane or scenario.cluster.control_plane
    mem = config.mem
    if control_plane == "real":
        from kube_router_lab.realcp import binaries

        try:
            dirs = binaries.ensure_built()
        except (OSError, subprocess.CalledProcessError, binaries.BinariesMissing) as exc:
            print(f"kube-router-py lab: the real control plane is not built: {exc}",
                  file=sys.stderr)
            return 2
        env[binaries.BIN_ENV] = os.pathsep.join(map(str, dirs))
        # etcd, kube-apiserver and its controllers want about a gigabyte of their own.
        if mem == DEFAULT_MEM:
            mem = REAL_MEM
    if config.control_plane:
        from kube_router_lab.runner import CONTROL_PLANE_ENV

        env[CONTROL_PLANE_ENV] = config.control_plane
    with tempfile.TemporaryDirectory(prefix="kube-router-lab-out-") as out:
        guest_report = Path(out) / "report.json"
        argv = [sys.executable, "-m", "kube_router_lab.inside", "scenario",
                str(path.resolve()), "--out-report", guest_report.name]
        if config.keep_going:
            argv.append("--keep-going")
        if config.agent:
            argv += ["--agent", config.agent]
        try:
            rc = guest_run(argv, kernel=config.kernel, outdir=Path(out), timeout=config.timeout,
                           mem=mem, env=env)
        except GuestError as exc:
            print(f"kube-router-py lab: {exc}", file=sys.stderr)
            return 2
        if config.report:
            if guest_report.exists():
                deliver_report(guest_report, Path(config.report))
                print(f"report: {config.report}", flush=True)
            else:
                print(f"kube-router-py lab: no report came back from the guest; "
                      f"{config.report} not written", file=sys.stderr)
                return rc or 1
    return rc


def deliver_report(src: Path, dest: Path) -> None:
    """Copy the guest's report to ``dest``, making its folders (``out/`` on a fresh clone)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
