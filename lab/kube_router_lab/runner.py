"""Runs a parsed scenario's steps against a lab, prints the transcript, builds the report.

The transcript is written for someone seeing the lab for the first time: each step says what
it did, shows what the commands printed, and ends with PASS or FAIL and the reason.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

from kube_router_lab.backend import Backend
from kube_router_lab.backend import execute
from kube_router_lab.scenario import CLUSTER_SCOPED
from kube_router_lab.scenario import AnnotateStep
from kube_router_lab.scenario import ApplyStep
from kube_router_lab.scenario import BurstStep
from kube_router_lab.scenario import CompareStep
from kube_router_lab.scenario import DeleteStep
from kube_router_lab.scenario import Expect
from kube_router_lab.scenario import JoinStep
from kube_router_lab.scenario import ReachStep
from kube_router_lab.scenario import RestartStep
from kube_router_lab.scenario import RunStep
from kube_router_lab.scenario import Scenario
from kube_router_lab.scenario import ScenarioError
from kube_router_lab.scenario import SnapshotStep
from kube_router_lab.scenario import WaitStep
from kube_router_lab.scenario import command_line
from kube_router_lab.scenario import expand
from kube_router_lab.scenario import load_scenario

POLL = 0.25  # seconds between readiness polls while waiting for the agents
#: Probes of one reach step in flight at once.
REACH_PARALLEL = 16
#: Further tries, each with more time, of a cell that stayed silent where an answer is
#: expected.
REACH_RETRIES = 2


#: The runner's name for what it drives: any :class:`Backend` (the lab, a kind cluster).
LabLike = Backend


class StepFailed(Exception):
    """A step's outcome did not meet its expectation; the message is the reason."""


@dataclass
class StepResult:
    index: int
    kind: str
    passed: bool = False
    seconds: float = 0.0
    reason: str | None = None
    outputs: list[str] | None = None
    matrix: list[list[int]] | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"index": self.index, "kind": self.kind, "passed": self.passed,
                             "seconds": round(self.seconds, 3)}
        if self.outputs is not None:
            d["outputs"] = self.outputs
        if self.reason:
            d["reason"] = self.reason
        if self.matrix is not None:
            d["matrix"] = self.matrix
        return d


@dataclass
class _Runs:
    """The outcome of a run step's repetitions (possibly still going on in a thread)."""

    step: RunStep
    rcs: list[int] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    stderrs: list[str] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # how long each run took
    started: list[float] = field(default_factory=list)  # when each run began (epoch)
    error: str | None = None
    thread: threading.Thread | None = None
    stdout_re: re.Pattern[str] | None = None


class Runner:
    """Executes a scenario's steps in order against ``lab``."""

    def __init__(self, scenario: Scenario, lab: LabLike, *, keep_going: bool = False,
                 out: Callable[[str], None] | None = None) -> None:
        self.scenario = scenario
        self.lab = lab
        self.keep_going = keep_going
        self.out = out or _print
        self.results: list[StepResult] = []
        self.backgrounds: dict[str, _Runs] = {}
        self.snapshots: dict[str, str] = {}
        self._lock = threading.Lock()  # background runs print too

    def say(self, line: str) -> None:
        with self._lock:
            self.out(line)

    # -- driving ------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        total = len(self.scenario.steps)
        for step in self.scenario.steps:
            if step.title:
                self.say(f"\nstep {step.index}/{total}: {step.title}")
                self.say(f"  {step.describe()}")
            else:
                self.say(f"\nstep {step.index}/{total}: {step.describe()}")
            res = StepResult(step.index, step.kind)
            t0 = time.monotonic()
            try:
                getattr(self, f"_{step.kind}")(step, res)
                res.passed = True
            except StepFailed as exc:
                res.reason = str(exc)
            except KeyError as exc:  # the lab's way to say "no such thing"
                res.reason = str(exc.args[0]) if exc.args else "not found"
            except Exception as exc:
                res.reason = f"{type(exc).__name__}: {exc}"
            res.seconds = time.monotonic() - t0
            self.results.append(res)
            verdict = "PASS" if res.passed else "FAIL"
            detail = f" {res.reason}" if res.reason else ""
            self.say(f"  {verdict} step {step.index} ({step.kind}, {res.seconds:.1f}s){detail}")
            if not res.passed:
                self._show_diagnostics()
                if not self.keep_going:
                    skipped = total - step.index
                    if skipped:
                        self.say(f"\nstopping at the first failure; {skipped} steps not run "
                                 f"(--keep-going runs them)")
                    break
        self._finish_backgrounds()
        passed = (len(self.results) == total and all(r.passed for r in self.results))
        seconds = time.monotonic() - started
        failed = [r.index for r in self.results if not r.passed]
        self.say(f"\n{'PASSED' if passed else 'FAILED'}: {self.scenario.name}: "
                 f"{sum(r.passed for r in self.results)}/{total} steps passed in {seconds:.1f}s"
                 + (f"; failed steps: {', '.join(map(str, failed))}" if failed else ""))
        return {"scenario": self.scenario.name, "passed": passed, "seconds": round(seconds, 3),
                "steps": [r.to_json() for r in self.results]}

    def _show_diagnostics(self) -> None:
        # whatever the backend can show of its agents (their logs, their threads' stacks)
        diagnostics = getattr(self.lab, "diagnostics", None)
        if diagnostics is not None:
            diagnostics(self.say)

    def _finish_backgrounds(self) -> None:
        for name, runs in self.backgrounds.items():
            if runs.thread is not None and runs.thread.is_alive():
                self.say(f"waiting for background {name!r}, never joined (its result is "
                         f"not checked)")
                runs.thread.join()

    # -- steps --------------------------------------------------------------------------

    def _apply(self, step: ApplyStep, res: StepResult) -> None:
        self.lab.apply(step.docs)

    def _delete(self, step: DeleteStep, res: StepResult) -> None:
        self.lab.delete(step.obj_kind, step.namespace, step.name)

    def _annotate(self, step: AnnotateStep, res: StepResult) -> None:
        self.lab.annotate(step.obj_kind, step.namespace, step.name, dict(step.changes))

    def _wait(self, step: WaitStep, res: StepResult) -> None:
        timeout = step.timeout
        deadline = time.monotonic() + timeout
        # "the API's current state" includes what the lab's own controllers make of the
        # last change (Deployment -> Pods -> EndpointSlices): let them finish first
        settle = getattr(self.lab, "settle", None)
        if settle is not None and not settle(timeout):
            raise StepFailed(f"the lab's controllers and kubelets did not settle in "
                             f"{timeout:g}s (pods not running?)")
        rv = self.lab.resource_version()
        while True:
            pending = self.lab.unsynced(rv)
            if not pending:
                self.say(f"  every agent applied resourceVersion {rv}")
                return
            if time.monotonic() >= deadline:
                why = "; ".join(f"{node}: {reason}" for node, reason in sorted(pending.items()))
                raise StepFailed(f"not synced to resourceVersion {rv} after "
                                 f"{timeout:g}s: {why}")
            time.sleep(POLL)

    def _resolve(self, key: str) -> str:
        try:
            return self.lab.substitute(key)
        except KeyError as exc:
            why = exc.args[0] if exc.args else "unknown"
            raise StepFailed(f"unknown substitution ${{{key}}}: {why}") from None

    def _run(self, step: RunStep, res: StepResult) -> None:
        argv = [expand(w, self._resolve) for w in step.argv]
        runs = _Runs(step)
        if step.expect.stdout is not None:
            runs.stdout_re = re.compile(expand(step.expect.stdout, self._resolve, escape=True),
                                        re.MULTILINE)
        if argv != step.argv:
            self.say(f"  $ {command_line(argv)}")
        if step.background:
            runs.thread = threading.Thread(target=self._repeat, args=(runs, argv, True),
                                           name=f"lab-background-{step.background}", daemon=True)
            self.backgrounds[step.background] = runs
            runs.thread.start()
            res.reason = None
            self.say(f"  started {step.times} runs in the background as {step.background!r}")
            return
        if step.until:
            runs = self._until(runs, argv)
        else:
            self._repeat(runs, argv, False)
        self._judge(runs, res)

    def _until(self, runs: _Runs, argv: list[str]) -> _Runs:
        """Repeat the step quietly until it passes or ``until`` runs out; show the last."""
        step = runs.step
        started = time.monotonic()
        attempts = 0
        while True:
            attempts += 1
            attempt = _Runs(step)
            attempt.stdout_re = runs.stdout_re
            self._repeat(attempt, argv, True)
            failed = attempt.error or step.expect.check(attempt.rcs, attempt.outputs,
                                                        attempt.stdout_re)
            if not failed or time.monotonic() - started >= step.until:
                break
            time.sleep(1.0)
        for i, (rc, out, err) in enumerate(
                zip(attempt.rcs, attempt.outputs, attempt.stderrs, strict=True), 1):
            self._show(i, step.times, rc, out, err)
        if attempts > 1:
            self.say(f"  (attempt {attempts}, after {time.monotonic() - started:.1f}s)")
        return attempt

    def _repeat(self, runs: _Runs, argv: list[str], quiet: bool) -> None:
        step = runs.step
        try:
            for i in range(step.times):
                if i and step.interval:
                    time.sleep(step.interval)
                began, t0 = time.time(), time.monotonic()
                rc, stdout, stderr = self.lab.run(step.where, argv, timeout=step.timeout)
                runs.seconds.append(time.monotonic() - t0)
                runs.started.append(began)
                runs.rcs.append(rc)
                runs.outputs.append(stdout.strip())
                runs.stderrs.append(stderr.strip())
                if not quiet:
                    self._show(i + 1, step.times, rc, stdout, stderr)
        except FileNotFoundError:
            runs.error = f"run {len(runs.rcs) + 1}: {argv[0]}: command not found"
        except Exception as exc:
            runs.error = f"run {len(runs.rcs) + 1}: {type(exc).__name__}: {exc}"

    def _show(self, i: int, n: int, rc: int, stdout: str, stderr: str) -> None:
        tag = f"  [{i}/{n}] exit {rc}" if n > 1 else f"  exit {rc}"
        lines = stdout.strip().splitlines()
        if len(lines) == 1:
            self.say(f"{tag}: {lines[0]}")
        else:
            self.say(tag + (":" if lines else ", no output"))
            for ln in lines:
                self.say(f"    {ln}")
        if stderr.strip() and rc != 0:
            for ln in stderr.strip().splitlines()[-10:]:
                self.say(f"    stderr: {ln}")

    def _judge(self, runs: _Runs, res: StepResult) -> None:
        res.outputs = runs.outputs
        if runs.error:
            raise StepFailed(runs.error)
        reason = runs.step.expect.check(runs.rcs, runs.outputs, runs.stdout_re)
        if reason:
            # when the failing run began, how long it took and its stderr are usually the
            # fastest way to the cause (a command's own timeout or the lab's cap on it)
            m = re.match(r"run (\d+):", reason)
            if m and int(m.group(1)) <= len(runs.seconds):
                i = int(m.group(1)) - 1
                reason += f" ({_when(runs.started[i])}, {runs.seconds[i]:.1f}s"
                err = runs.stderrs[i].splitlines()[-3:] if "exit status" in reason else []
                reason += "; stderr: " + " | ".join(err) + ")" if err else ")"
            raise StepFailed(reason)
        self.say("  " + _summary(runs))

    def _join(self, step: JoinStep, res: StepResult) -> None:
        runs = self.backgrounds[step.name]
        assert runs.thread is not None
        runs.thread.join()
        n = len(runs.rcs)
        for i, (rc, out) in enumerate(zip(runs.rcs, runs.outputs, strict=True), 1):
            first = out.splitlines()[0] if out else ""
            self.say(f"  [{i}/{n}] exit {rc}: {first}")
            if rc != 0 and i <= len(runs.seconds):
                # a failed run's whole story: when, how long, what it wrote (a command may
                # dump the state it failed in)
                self.say(f"    began {_when(runs.started[i - 1])}, took "
                         f"{runs.seconds[i - 1]:.1f}s")
                for ln in out.splitlines()[1:_FAILED_LINES]:
                    self.say(f"    {ln}")
                for ln in runs.stderrs[i - 1].splitlines()[-_FAILED_LINES:]:
                    self.say(f"    stderr: {ln}")
        self._judge(runs, res)

    def _restart(self, step: RestartStep, res: StepResult) -> None:
        extra = {"cleanup": True} if step.cleanup else {}
        self.lab.restart(step.target, node=step.node, signal=step.signal, down=step.down,
                         **extra)

    def _burst(self, step: BurstStep, res: StepResult) -> None:
        # judged like a run step that succeeds once: a join reports it the same way
        runs = _Runs(RunStep(step.index, "burst", expect=Expect(rc=0)))
        if step.background:
            runs.thread = threading.Thread(target=self._apply_burst, args=(step, runs),
                                           name=f"lab-background-{step.background}",
                                           daemon=True)
            self.backgrounds[step.background] = runs
            runs.thread.start()
            self.say(f"  started in the background as {step.background!r}")
            return
        self._apply_burst(step, runs)
        self._judge(runs, res)

    def _apply_burst(self, step: BurstStep, runs: _Runs) -> None:
        started = time.monotonic()
        done = 0
        try:
            for n in range(step.count):
                if step.rate:
                    ahead = started + n / step.rate - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)
                docs = step.docs(step.start + n)
                if step.delete:
                    for d in docs:
                        meta = d.get("metadata") or {}
                        ns = meta.get("namespace")
                        if ns is None and d["kind"] not in CLUSTER_SCOPED:
                            ns = "default"
                        self.lab.delete(d["kind"], ns, str(meta.get("name")))
                else:
                    self.lab.apply(docs)
                done += 1
        except Exception as exc:
            runs.error = f"object {step.start + done}: {type(exc).__name__}: {exc}"
        took = time.monotonic() - started
        runs.rcs.append(0 if runs.error is None else 1)
        runs.outputs.append(f"{'deleted' if step.delete else 'applied'} {done} of "
                            f"{step.count} in {took:.1f}s")
        runs.stderrs.append(runs.error or "")
        verb = "deleted" if step.delete else "applied"
        self.say(f"  burst {step.index}: {verb} {done} of {step.count} in {took:.1f}s")

    def _snapshot(self, step: SnapshotStep, res: StepResult) -> None:
        argv = [sys.executable, "-m", "kube_router_lab.kstate", *(["--all"] * step.everything)]
        rc, out, err = self.lab.run(step.where, argv, timeout=120)
        if rc:
            raise StepFailed(f"kstate exit status {rc}: {err.strip()[-500:]}")
        self.snapshots[step.name] = out
        self.say("  " + ", ".join(line.strip("[]").replace("] ", "=")
                                  for line in out.splitlines() if line.startswith("[")))

    def _compare(self, step: CompareStep, res: StepResult) -> None:
        a, b = self.snapshots.get(step.first), self.snapshots.get(step.second)
        if a is None or b is None:
            raise StepFailed("a snapshot to compare was not taken (its step failed)")
        if a == b:
            self.say(f"  identical ({len(a.splitlines())} lines)")
            return
        diff = list(difflib.unified_diff(a.splitlines(), b.splitlines(), step.first,
                                         step.second, lineterm="", n=1))
        for line in diff[:60]:
            self.say(f"    {line}")
        changed = sum(1 for ln in diff if ln[:1] in "+-" and ln[:3] not in ("+++", "---"))
        raise StepFailed(f"snapshots differ in {changed} lines")

    def _reach(self, step: ReachStep, res: StepResult) -> None:
        # The probes go out together: a truth table of 100 cells where most are
        # refused or dropped would otherwise wait out a timeout per cell.
        cells = [(src, dst) for src in step.sources for dst in step.targets]
        want = [v for row in step.expect for v in row]
        with ThreadPoolExecutor(max_workers=min(REACH_PARALLEL, len(cells))) as pool:
            got = list(pool.map(lambda c: int(bool(self.lab.reach(c[0], c[1],
                                                                   timeout=step.timeout))),
                                cells))
            # An answer is proof, a silence is not: a loaded machine can let a probe
            # time out. Only cells that stayed silent where an answer is expected are
            # tried again, with more time; a cell that answered where none is expected
            # fails at once.
            for attempt in range(1, REACH_RETRIES + 1):
                again = [i for i, (g, w) in enumerate(zip(got, want, strict=True))
                         if g == 0 and w == 1]
                if not again:
                    break
                timeout = step.timeout * (attempt + 1)
                answers = list(pool.map(lambda i, t=timeout: int(bool(self.lab.reach(
                    *cells[i], timeout=t))), again))
                late = [cells[i] for i, a in zip(again, answers, strict=True) if a]
                for i, a in zip(again, answers, strict=True):
                    got[i] = a
                if late:
                    self.say(f"  {len(late)} of {len(again)} silent cells answered on try "
                             f"{attempt + 1} ({timeout:g} s): "
                             + ", ".join(f"{s} -> {d}" for s, d in late[:8]))
        n = len(step.targets)
        matrix = [got[i:i + n] for i in range(0, len(got), n)]
        res.matrix = matrix
        for line in format_matrix(step.sources, step.targets, matrix, step.expect):
            self.say(f"  {line}")
        if matrix != step.expect:
            wrong = sum(a != b for ra, rb in zip(matrix, step.expect, strict=True)
                        for a, b in zip(ra, rb, strict=True))
            raise StepFailed(f"reach matrix differs from expect in {wrong} cells (marked *)")


#: At most this many lines of a failed background run's stdout and of its stderr shown.
_FAILED_LINES = 40


def _when(epoch: float) -> str:
    """A run's start as UTC hh:mm:ss.mmm, to line it up with the agents' logs."""
    return time.strftime("%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch % 1 * 1000):03d}"


def _summary(runs: _Runs) -> str:
    exp = runs.step.expect
    parts = [f"{len(runs.rcs)} runs"]
    if exp.rc is not None:
        parts.append(f"exit {exp.rc}")
    if runs.stdout_re is not None:
        parts.append(f"output matches /{runs.stdout_re.pattern}/")
    if exp.distinct is not None:
        parts.append(f"distinct {exp.distinct}")
    if exp.same:
        parts.append("all the same")
    return "ok: " + ", ".join(parts)


def format_matrix(sources: list[str], targets: list[str], got: list[list[int]],
                  want: list[list[int]]) -> list[str]:
    """Rows: sources; columns: targets; a cell ``1*`` is one that differs from ``want``."""
    width = max(len(s) for s in sources)
    lines = ["targets: " + ", ".join(f"[{j}] {t}" for j, t in enumerate(targets, 1))]
    head = " " * width + "  " + " ".join(f"[{j}]".rjust(4) for j in range(1, len(targets) + 1))
    lines.append(head + "   expected")
    for src, row, exp in zip(sources, got, want, strict=True):
        cells = " ".join((f"{v}*" if v != e else f"{v} ").rjust(4) for v, e in zip(row, exp,
                                                                                 strict=True))
        lines.append(f"{src.ljust(width)}  {cells}   {' '.join(map(str, exp))}")
    return lines


_PRINT_LOCK = threading.Lock()


def _print(line: str) -> None:
    # one write per line: the lab logs from its own threads while steps print
    with _PRINT_LOCK:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


#: Set by `lab run --control-plane`: overrides the scenario's cluster.control-plane.
CONTROL_PLANE_ENV = "KUBE_ROUTER_LAB_CONTROL_PLANE"


# -- the whole run, inside the guest -------------------------------------------------------


def run_scenario_file(path: Path, *, report: Path | None = None, keep_going: bool = False,
                      lab_factory: Callable[..., Any] | None = None,
                      agent: str | None = None) -> int:
    """Parse ``path``, bring the lab up, run the steps, tear down, write ``report``;
    ``agent`` replaces the file's ``cluster.agent``.

    Returns 0 when every step passed, 1 when one failed, 2 when the file is invalid.
    """
    try:
        scenario = load_scenario(path)
    except ScenarioError as exc:
        print(exc, file=sys.stderr)
        return 2
    spec = scenario.cluster
    if agent:
        spec = dataclasses.replace(spec, agent=agent)
    override = os.environ.get(CONTROL_PLANE_ENV)
    if override and override != spec.control_plane:
        spec = dataclasses.replace(spec, control_plane=override)
    _print(f"scenario: {scenario.name} ({path.name})")
    _print(f"cluster: {spec.nodes} nodes, agent {spec.agent}, "
           f"enable {','.join(spec.enable) or '-'}, pods "
           f"{spec.cluster_cidr}, services {spec.service_cidr}, underlay {spec.underlay}"
           + (f", peers {', '.join(p.name for p in spec.peers)}" if spec.peers else ""))
    if lab_factory is None:
        from kube_router_lab.cluster import Lab

        lab_factory = Lab
    with tempfile.TemporaryDirectory(prefix="lab-") as work:
        lab = lab_factory(spec, workdir=Path(work), log=lambda m: _print(f"  lab: {m}"))
        result = execute(lab, Runner(scenario, lab, keep_going=keep_going).run,
                         name=scenario.name, say=_print, what="lab")
        if hasattr(lab, "control_plane"):
            result["control_plane"] = lab.control_plane()
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result["passed"] else 1
