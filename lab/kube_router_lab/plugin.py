"""``kube-router-py lab``: run scenarios and commands in the lab's kernel.

``lab run SCENARIO.yaml`` checks the file on this machine first (so a typo costs no boot),
then runs it inside the guest; ``lab exec -- CMD ...`` runs one command there.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from kube_router import hookimpl

DEFAULT_TIMEOUT = 3600.0


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
        p.add_argument("--mem", default="1G", help="guest memory for User-Mode Linux")
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
    try:
        return guest_run(argv, kernel=config.kernel, timeout=config.timeout, mem=config.mem)
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
    with tempfile.TemporaryDirectory(prefix="kube-router-lab-out-") as out:
        guest_report = Path(out) / "report.json"
        argv = [sys.executable, "-m", "kube_router_lab.inside", "scenario",
                str(path.resolve()), "--out-report", guest_report.name]
        if config.keep_going:
            argv.append("--keep-going")
        try:
            rc = guest_run(argv, kernel=config.kernel, outdir=Path(out), timeout=config.timeout,
                           mem=config.mem)
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
