"""Scenario files: parsed and checked completely before any kernel boots.

The format is a public contract (see the lab's README): extend it, never break it. Every
error is one line naming the file and, for a step, its number (from 1) and kind, e.g.
``examples/x.yaml: step 3 (run): unknown substitution ${foo:bar}``.

A ``run`` step without ``expect: {rc: ...}`` expects exit status 0 from every run.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import yaml

from kube_router_lab.spec import ClusterSpec
from kube_router_lab.spec import SpecError
from kube_router_lab.spec import parse_cluster


class ScenarioError(ValueError):
    """The scenario file is invalid; ``str()`` is the one-line message for the user."""


STEP_KINDS = ("apply", "delete", "annotate", "wait", "run", "join", "restart", "reach",
              "burst", "snapshot", "compare")
RESTART_TARGETS = ("agent", "gobgpd", "apiserver")
SIGNALS = ("TERM", "KILL", "INT", "HUP")
CLUSTER_SCOPED = ("Namespace", "Node")

SUBST_RE = re.compile(r"\$\{([^}]*)\}")
_NSNAME = r"[^/\s:{}]+/[^/\s:{}]+"
_NAME = re.compile(r"^[^/\s:{}]+$")
#: substitution kind -> (pattern of its argument, how the argument is written)
SUBST_KINDS = {
    "svc": (re.compile(rf"^{_NSNAME}$"), "NAMESPACE/NAME"),
    "nodeport": (re.compile(rf"^{_NSNAME}:\d+$"), "NAMESPACE/NAME:PORT"),
    "pod": (re.compile(rf"^{_NSNAME}$"), "NAMESPACE/NAME"),
    "node": (_NAME, "NAME"),
    "podcidr": (_NAME, "NODE"),
}
#: ``NS/POD:PORT`` (PORT a number or one of the pod's containerPort names) or
#: ``svc:NS/NAME:PORT``, each optionally ``/tcp``, ``/udp`` or ``/sctp``
REACH_TARGET_RE = re.compile(
    rf"^(svc:{_NSNAME}:\d{{1,5}}|{_NSNAME}:(\d{{1,5}}|[a-z0-9]([a-z0-9-]{{0,13}}[a-z0-9])?))"
    r"(/(udp|tcp|sctp))?$")
REACH_TARGET_FORM = "NAMESPACE/POD:PORT[/udp|/sctp] or svc:NAMESPACE/NAME:PORT[/udp|/sctp]"
POD_RE = re.compile(rf"^{_NSNAME}$")


# -- steps ------------------------------------------------------------------------------------


@dataclass
class Expect:
    rc: int | None = 0
    stdout: str | None = None  # a regular expression, may hold substitutions
    distinct: int | None = None
    same: bool = False

    def check(self, rcs: list[int], outputs: list[str],
              stdout_re: re.Pattern[str] | None = None) -> str | None:
        """Return why the runs fail this expectation, or None when they pass.

        ``stdout_re`` is ``stdout`` compiled after substitution (the runner resolves it).
        """
        if stdout_re is None and self.stdout is not None:
            stdout_re = re.compile(self.stdout, re.MULTILINE)
        for i, rc in enumerate(rcs, 1):
            if self.rc is not None and rc != self.rc:
                return f"run {i}: exit status {rc}, expected {self.rc}"
        if stdout_re is not None:
            for i, out in enumerate(outputs, 1):
                if not stdout_re.search(out):
                    return f"run {i}: output does not match /{stdout_re.pattern}/"
        n = len(set(outputs))
        if self.distinct is not None and n != self.distinct:
            return f"distinct {n}, expected {self.distinct}"
        if self.same and n > 1:
            return f"outputs differ: {n} distinct over {len(outputs)} runs, expected all the same"
        return None


@dataclass
class Step:
    index: int
    kind: str
    title: str = ""

    def describe(self) -> str:
        return self.kind


@dataclass
class ApplyStep(Step):
    docs: list[dict] = field(default_factory=list)
    source: str = "inline"

    def describe(self) -> str:
        objs = ", ".join(_obj_name(d) for d in self.docs)
        return f"apply {self.source}: {objs}"


@dataclass
class DeleteStep(Step):
    obj_kind: str = ""
    namespace: str | None = None
    name: str = ""

    def describe(self) -> str:
        return f"delete {self.obj_kind} {_ref(self.namespace, self.name)}"


@dataclass
class AnnotateStep(Step):
    obj_kind: str = ""
    namespace: str | None = None
    name: str = ""
    changes: dict[str, str | None] = field(default_factory=dict)

    def describe(self) -> str:
        parts = [f"{k}={v}" if v is not None else f"{k}-" for k, v in self.changes.items()]
        return f"annotate {self.obj_kind} {_ref(self.namespace, self.name)} {' '.join(parts)}"


@dataclass
class WaitStep(Step):
    what: str = "synced"
    timeout: float = 60.0

    def describe(self) -> str:
        return f"wait {self.what} (timeout {self.timeout:g}s)"


@dataclass
class RunStep(Step):
    where: str = "host"
    argv: list[str] = field(default_factory=list)  # words, substitutions still in them
    times: int = 1
    interval: float = 0.0
    timeout: float = 30.0
    background: str | None = None
    until: float = 0.0  # seconds to repeat the whole step until it passes (0: once)
    expect: Expect = field(default_factory=Expect)

    def describe(self) -> str:
        extra = f" ({self.times} times)" if self.times > 1 else ""
        bg = f" in background {self.background!r}" if self.background else ""
        return f"run in {self.where}{extra}{bg}: {command_line(self.argv)}"


def command_line(argv: list[str]) -> str:
    """``argv`` as one shell line for a transcript; a multi-line word (a script) shows its
    first line only."""
    return shlex.join(w if "\n" not in w else w.split("\n", 1)[0] + " ..." for w in argv)


@dataclass
class JoinStep(Step):
    name: str = ""

    def describe(self) -> str:
        return f"join {self.name!r}"


@dataclass
class RestartStep(Step):
    target: str = "agent"
    node: str | None = None
    signal: str = "TERM"
    down: float | None = None
    cleanup: bool = False  # agent only: run its --cleanup-config while it is down

    def describe(self) -> str:
        where = f" in {self.node}" if self.node else ""
        down = f", down {self.down:g}s" if self.down is not None else ""
        clean = ", cleaned up" if self.cleanup else ""
        return f"restart {self.target}{where} (SIG{self.signal}{down}{clean})"


BURST_VAR = "${i}"


@dataclass
class BurstStep(Step):
    """``count`` copies of ``template`` (``${i}`` the copy's number) applied in a row."""

    template: str = ""
    count: int = 1
    start: int = 0
    rate: float = 0.0  # objects per second; 0: as fast as the API takes them
    background: str | None = None
    delete: bool = False  # delete the objects the template names instead


    def describe(self) -> str:
        bg = f" in background {self.background!r}" if self.background else ""
        rate = f" at {self.rate:g}/s" if self.rate else ""
        verb = "deleting" if self.delete else "of"
        return f"burst {verb} {self.count} x {self.kinds()}{rate}{bg}"

    def kinds(self) -> str:
        return "+".join(re.findall(r"(?m)^kind:\s*(\S+)", self.template)) or "objects"

    def docs(self, i: int) -> list[dict]:
        text = self.template.replace(BURST_VAR, str(i))
        return [d for d in yaml.safe_load_all(text) if d is not None]


@dataclass
class SnapshotStep(Step):
    where: str = ""
    name: str = ""
    everything: bool = False

    def describe(self) -> str:
        scope = "all" if self.everything else "the agents'"
        return f"snapshot of {scope} kernel state in {self.where} as {self.name!r}"


@dataclass
class CompareStep(Step):
    first: str = ""
    second: str = ""

    def describe(self) -> str:
        return f"compare snapshots {self.first!r} and {self.second!r}"


@dataclass
class ReachStep(Step):
    sources: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    expect: list[list[int]] = field(default_factory=list)
    timeout: float = 1.0

    def describe(self) -> str:
        return f"reach {len(self.sources)} pods x {len(self.targets)} targets"


@dataclass
class Scenario:
    name: str
    path: Path
    cluster: ClusterSpec
    steps: list[Step]


def _obj_name(doc: Mapping[str, Any]) -> str:
    meta = doc.get("metadata") or {}
    return f"{doc.get('kind')} {_ref(meta.get('namespace'), meta.get('name') or '')}"


def _ref(namespace: str | None, name: str) -> str:
    return f"{namespace}/{name}" if namespace else str(name)


# -- substitutions ----------------------------------------------------------------------------


def substitution_keys(text: str) -> list[str]:
    """The keys (``svc:default/myip``) of every ``${...}`` in ``text``."""
    return SUBST_RE.findall(text)


def check_substitution(key: str, spec: ClusterSpec) -> str | None:
    """Why ``${key}`` is invalid, or None."""
    kind, sep, arg = key.partition(":")
    if not sep or kind not in SUBST_KINDS:
        return f"unknown substitution ${{{key}}} (known: " + ", ".join(
            f"${{{k}:{v[1]}}}" for k, v in SUBST_KINDS.items()) + ")"
    pattern, form = SUBST_KINDS[kind]
    if not pattern.match(arg):
        return f"bad substitution ${{{key}}}: expected ${{{kind}:{form}}}"
    if kind == "node" and arg not in spec.node_names() and arg not in _peer_names(spec):
        return f"bad substitution ${{{key}}}: no node or peer named {arg!r}"
    if kind == "podcidr" and arg not in spec.node_names():
        return f"bad substitution ${{{key}}}: no node named {arg!r}"
    return None


def expand(text: str, resolve: Callable[[str], str], *, escape: bool = False) -> str:
    """Replace every ``${key}`` with ``resolve(key)`` (regex-escaped when ``escape``)."""

    def one(m: re.Match[str]) -> str:
        value = resolve(m.group(1))
        return re.escape(value) if escape else value

    # with escape, the text around the substitutions stays a pattern; only values are literal
    return SUBST_RE.sub(one, text)


def _peer_names(spec: ClusterSpec) -> list[str]:
    return [p.name for p in spec.peers]


# -- parsing ----------------------------------------------------------------------------------


class _StepError(Exception):
    pass


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return parse_scenario(text, path=path)


def _load_yaml_all(text: str, where: str) -> list[Any]:
    try:
        return list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ScenarioError(f"{where}{line}: bad YAML: {problem}") from None


def parse_scenario(text: str, *, path: Path) -> Scenario:
    docs = _load_yaml_all(text, str(path))
    if len(docs) != 1 or not isinstance(docs[0], Mapping):
        raise ScenarioError(f"{path}: expected one YAML mapping with name, cluster and steps")
    raw = docs[0]
    unknown = sorted(str(k) for k in raw if k not in ("name", "cluster", "steps", "description"))
    if unknown:
        raise ScenarioError(f"{path}: unknown key {unknown[0]!r}")
    try:
        spec = parse_cluster(raw.get("cluster"))
    except SpecError as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    raw_steps = raw.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise ScenarioError(f"{path}: steps: expected a non-empty list")
    parser = _StepParser(path, spec)
    steps = [parser.parse(i, s) for i, s in enumerate(raw_steps, 1)]
    return Scenario(name=str(raw.get("name") or path.stem), path=path, cluster=spec, steps=steps)


class _StepParser:
    def __init__(self, path: Path, spec: ClusterSpec) -> None:
        self.path = path
        self.spec = spec
        self.backgrounds: set[str] = set()
        self.joined: set[str] = set()
        self.snapshots: set[str] = set()

    def parse(self, index: int, raw: Any) -> Step:
        kind = "?"
        try:
            if not isinstance(raw, Mapping):
                raise _StepError(f"expected a mapping such as {{run: ...}}, got {raw!r}")
            kinds = [k for k in raw if k in STEP_KINDS]
            if not kinds:
                first = next(iter(raw), None)
                kind = str(first)
                raise _StepError(f"unknown step kind {first!r} (known: {', '.join(STEP_KINDS)})")
            if len(kinds) > 1:
                kind = kinds[0]
                raise _StepError(f"more than one action in a step: {', '.join(kinds)}")
            kind = kinds[0]
            return getattr(self, f"_{kind}")(index, raw)
        except _StepError as exc:
            raise ScenarioError(f"{self.path}: step {index} ({kind}): {exc}") from None

    # helpers

    def _keys(self, raw: Mapping[str, Any], allowed: set[str], what: str) -> None:
        if True in raw or "on" in raw:
            raise _StepError("use the key 'in', not 'on' (YAML 1.1 reads 'on' as true)")
        extra = sorted(str(k) for k in raw if k not in allowed)
        if extra:
            raise _StepError(f"unknown key {extra[0]!r} in {what}")

    def _subst(self, text: str) -> None:
        for key in substitution_keys(text):
            problem = check_substitution(key, self.spec)
            if problem:
                raise _StepError(problem)
        if "${" in SUBST_RE.sub("", text):
            raise _StepError(f"unterminated substitution in {text!r}")

    def _where(self, where: Any) -> str:
        if not isinstance(where, str) or not where:
            raise _StepError(f"in: expected host, a node, a peer or NAMESPACE/POD, got {where!r}")
        if where == "host" or where in self.spec.node_names() or where in _peer_names(self.spec):
            return where
        if POD_RE.match(where):
            return where
        raise _StepError(f"in: {where!r} is not host, a node ({', '.join(self.spec.node_names())})"
                         f", a peer or NAMESPACE/POD")

    @staticmethod
    def _number(value: Any, what: str, *, minimum: float = 0.0, integer: bool = False) -> Any:
        ok = isinstance(value, int) if integer else isinstance(value, int | float)
        if isinstance(value, bool) or not ok or value < minimum:
            kind = "a whole number" if integer else "a number"
            raise _StepError(f"{what}: expected {kind} >= {minimum:g}, got {value!r}")
        return value

    def _ref(self, body: Any, what: str) -> tuple[str, str | None, str]:
        if not isinstance(body, Mapping):
            raise _StepError(f"expected {{kind: K, namespace: NS, name: N}}, got {body!r}")
        kind, name = body.get("kind"), body.get("name")
        if not isinstance(kind, str) or not kind or not isinstance(name, str) or not name:
            raise _StepError(f"{what} needs kind and name")
        ns = body.get("namespace")
        if ns is None and kind not in CLUSTER_SCOPED:
            ns = "default"
        if ns is not None and not isinstance(ns, str):
            raise _StepError(f"namespace: expected a string, got {ns!r}")
        return kind, ns, name

    # step kinds

    def _apply(self, index: int, raw: Mapping[str, Any]) -> Step:
        self._keys(raw, {"apply", "title"}, "an apply step")
        body = raw["apply"]
        if isinstance(body, Mapping):
            docs, source = [dict(body)], "inline"
        elif isinstance(body, str) and ("\n" in body or ":" in body.split("\n", 1)[0]):
            docs, source = _yaml_in_step(body, "inline YAML"), "inline"
        elif isinstance(body, str) and body.strip():
            file = (self.path.parent / body.strip())
            try:
                text = file.read_text()
            except OSError as exc:
                raise _StepError(f"cannot read {body.strip()}: {exc.strerror or exc}") from None
            docs, source = _yaml_in_step(text, body.strip()), body.strip()
        else:
            raise _StepError(f"expected a file path or inline YAML, got {body!r}")
        docs = [d for d in docs if d is not None]
        if not docs:
            raise _StepError("no objects to apply")
        for i, d in enumerate(docs, 1):
            meta = d.get("metadata") if isinstance(d, Mapping) else None
            if (not isinstance(d, Mapping) or not isinstance(d.get("kind"), str)
                    or not isinstance(meta, Mapping) or not meta.get("name")):
                raise _StepError(f"object {i} needs kind and metadata.name")
        return ApplyStep(index, "apply", raw.get("title", ""), docs=docs, source=source)

    def _delete(self, index: int, raw: Mapping[str, Any]) -> Step:
        self._keys(raw, {"delete", "title"}, "a delete step")
        body = raw["delete"]
        if isinstance(body, Mapping):
            self._keys(body, {"kind", "namespace", "name"}, "delete")
        kind, ns, name = self._ref(body, "delete")
        return DeleteStep(index, "delete", raw.get("title", ""), obj_kind=kind, namespace=ns,
                          name=name)

    def _annotate(self, index: int, raw: Mapping[str, Any]) -> Step:
        self._keys(raw, {"annotate", "title"}, "an annotate step")
        body = raw["annotate"]
        if isinstance(body, Mapping):
            self._keys(body, {"kind", "namespace", "name", "set"}, "annotate")
        kind, ns, name = self._ref(body, "annotate")
        changes = body.get("set")
        if not isinstance(changes, Mapping) or not changes:
            raise _StepError("set: expected a mapping of annotation: value (null removes one)")
        clean: dict[str, str | None] = {}
        for k, v in changes.items():
            if isinstance(v, bool):
                v = "true" if v else "false"
            elif v is not None and not isinstance(v, str | int | float):
                raise _StepError(f"set.{k}: expected a string or null, got {v!r}")
            clean[str(k)] = None if v is None else str(v)
        return AnnotateStep(index, "annotate", raw.get("title", ""), obj_kind=kind, namespace=ns,
                            name=name, changes=clean)

    def _wait(self, index: int, raw: Mapping[str, Any]) -> Step:
        self._keys(raw, {"wait", "timeout", "title"}, "a wait step")
        if raw["wait"] != "synced":
            raise _StepError(f"wait: only 'synced' is known, got {raw['wait']!r}")
        timeout = self._number(raw.get("timeout", 60), "timeout", minimum=0.1)
        return WaitStep(index, "wait", raw.get("title", ""), timeout=float(timeout))

    def _expect(self, body: Any) -> Expect:
        if body is None:
            return Expect()
        if not isinstance(body, Mapping):
            raise _StepError(f"expect: expected a mapping of rc/stdout/distinct/same, got {body!r}")
        self._keys(body, {"rc", "stdout", "distinct", "same"}, "expect")
        exp = Expect()
        if "rc" in body:
            exp.rc = None if body["rc"] is None else self._number(body["rc"], "expect.rc",
                                                                   integer=True)
        if "stdout" in body:
            pattern = body["stdout"]
            if not isinstance(pattern, str):
                raise _StepError(f"expect.stdout: expected a regular expression, got {pattern!r}")
            self._subst(pattern)
            try:
                re.compile(SUBST_RE.sub("x", pattern), re.MULTILINE)
            except re.error as exc:
                raise _StepError(f"expect.stdout: bad regular expression: {exc}") from None
            exp.stdout = pattern
        if "distinct" in body:
            exp.distinct = self._number(body["distinct"], "expect.distinct", minimum=1,
                                        integer=True)
        if "same" in body:
            if not isinstance(body["same"], bool):
                raise _StepError(f"expect.same: expected true or false, got {body['same']!r}")
            exp.same = body["same"]
        return exp

    def _run(self, index: int, raw: Mapping[str, Any]) -> Step:
        self._keys(raw, {"run", "expect", "title"}, "a run step")
        body = raw["run"]
        if not isinstance(body, Mapping):
            raise _StepError(f"expected {{in: WHERE, cmd: COMMAND}}, got {body!r}")
        self._keys(body, {"in", "cmd", "times", "interval", "timeout", "background", "until",
                          "expect"}, "run")
        if "expect" in body and "expect" in raw:
            raise _StepError("expect given twice (inside run and beside it)")
        where = self._where(body.get("in"))
        cmd = body.get("cmd")
        if isinstance(cmd, list) and cmd and all(isinstance(c, str | int) for c in cmd):
            argv = [str(c) for c in cmd]
        elif isinstance(cmd, str) and cmd.strip():
            try:
                argv = shlex.split(cmd)
            except ValueError as exc:
                raise _StepError(f"cmd: {exc}") from None
        else:
            raise _StepError(f"cmd: expected a command line, got {cmd!r}")
        for word in argv:
            self._subst(word)
        times = self._number(body.get("times", 1), "times", minimum=1, integer=True)
        interval = self._number(body.get("interval", 0), "interval")
        timeout = self._number(body.get("timeout", 30), "timeout", minimum=0.1)
        expect = self._expect(body.get("expect", raw.get("expect")))
        if expect.distinct is not None and expect.distinct > times:
            raise _StepError(f"expect.distinct {expect.distinct} but only {times} runs")
        until = self._number(body.get("until", 0), "until")
        if body.get("background") is not None and until:
            raise _StepError("until and background cannot be combined")
        background = self._background(body.get("background"))
        return RunStep(index, "run", raw.get("title", ""), where=where, argv=argv, times=times,
                       interval=float(interval), timeout=float(timeout), background=background,
                       until=float(until), expect=expect)

    def _join(self, index: int, raw: Mapping[str, Any]) -> Step:
        self._keys(raw, {"join", "title"}, "a join step")
        name = raw["join"]
        if name not in self.backgrounds:
            raise _StepError(f"no earlier run or burst step has background: {name!r}")
        if name in self.joined:
            raise _StepError(f"background {name!r} is already joined")
        self.joined.add(name)
        return JoinStep(index, "join", raw.get("title", ""), name=name)

    def _restart(self, index: int, raw: Mapping[str, Any]) -> Step:
        self._keys(raw, {"restart", "title"}, "a restart step")
        body = raw["restart"]
        if not isinstance(body, Mapping):
            raise _StepError(f"expected {{target: agent|gobgpd|apiserver, in: NODE}}, got {body!r}")
        self._keys(body, {"target", "in", "signal", "down", "cleanup"}, "restart")
        target = body.get("target")
        if target not in RESTART_TARGETS:
            raise _StepError(f"target: expected one of {', '.join(RESTART_TARGETS)}, "
                             f"got {target!r}")
        node = body.get("in")
        if target == "apiserver":
            if node is not None:
                raise _StepError("in: the API server is not on a node")
        elif node not in self.spec.node_names():
            raise _StepError(f"in: expected a node ({', '.join(self.spec.node_names())}), "
                             f"got {node!r}")
        sig = str(body.get("signal", "TERM")).upper().removeprefix("SIG")
        if sig not in SIGNALS:
            raise _StepError(f"signal: expected one of {', '.join(SIGNALS)}, got {sig!r}")
        down = body.get("down")
        if down is not None:
            down = float(self._number(down, "down"))
        cleanup = body.get("cleanup", False)
        if not isinstance(cleanup, bool):
            raise _StepError(f"cleanup: expected true or false, got {cleanup!r}")
        if cleanup and target != "agent":
            raise _StepError("cleanup: only an agent's restart can clean up")
        return RestartStep(index, "restart", raw.get("title", ""), target=target, node=node,
                           signal=sig, down=down, cleanup=cleanup)

    def _background(self, value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise _StepError(f"background: expected a name, got {value!r}")
        if value in self.backgrounds:
            raise _StepError(f"background {value!r} is already used")
        self.backgrounds.add(value)
        return value

    def _burst(self, index: int, raw: Mapping[str, Any]) -> Step:
        self._keys(raw, {"burst", "title"}, "a burst step")
        body = raw["burst"]
        if not isinstance(body, Mapping):
            raise _StepError(f"expected {{count: N, template: YAML}}, got {body!r}")
        self._keys(body, {"count", "start", "template", "rate", "background", "delete"},
                   "burst")
        count = self._number(body.get("count"), "count", minimum=1, integer=True)
        start = self._number(body.get("start", 0), "start", integer=True)
        rate = float(self._number(body.get("rate", 0), "rate"))
        template = body.get("template")
        if not isinstance(template, str) or BURST_VAR not in template:
            raise _StepError(f"template: expected YAML text holding {BURST_VAR} "
                             "(each object's number)")
        delete = body.get("delete", False)
        if not isinstance(delete, bool):
            raise _StepError(f"delete: expected true or false, got {delete!r}")
        step = BurstStep(index, "burst", raw.get("title", ""), template=template, count=count,
                         start=start, rate=rate, delete=delete)
        docs = [d for d in _yaml_in_step(template.replace(BURST_VAR, "0"), "template") if d]
        if not docs or not all(isinstance(d, Mapping) and isinstance(d.get("kind"), str)
                               and isinstance(d.get("metadata"), Mapping) for d in docs):
            raise _StepError("template: every object needs kind and metadata")
        names = [str((d.get("metadata") or {}).get("name", "")) for d in
                 _yaml_in_step(template.replace(BURST_VAR, "1"), "template") if d]
        if names == [str(d["metadata"].get("name", "")) for d in docs]:
            raise _StepError(f"template: the names must hold {BURST_VAR} to be distinct")
        step.background = self._background(body.get("background"))
        return step

    def _snapshot(self, index: int, raw: Mapping[str, Any]) -> Step:
        self._keys(raw, {"snapshot", "title"}, "a snapshot step")
        body = raw["snapshot"]
        if not isinstance(body, Mapping):
            raise _StepError(f"expected {{in: NODE, as: NAME}}, got {body!r}")
        self._keys(body, {"in", "as", "all"}, "snapshot")
        where = body.get("in")
        if where not in self.spec.node_names():
            raise _StepError(f"in: expected a node ({', '.join(self.spec.node_names())}), "
                             f"got {where!r}")
        name = body.get("as")
        if not isinstance(name, str) or not name:
            raise _StepError(f"as: expected a name for the snapshot, got {name!r}")
        everything = body.get("all", False)
        if not isinstance(everything, bool):
            raise _StepError(f"all: expected true or false, got {everything!r}")
        self.snapshots.add(name)
        return SnapshotStep(index, "snapshot", raw.get("title", ""), where=where, name=name,
                            everything=everything)

    def _compare(self, index: int, raw: Mapping[str, Any]) -> Step:
        self._keys(raw, {"compare", "title"}, "a compare step")
        body = raw["compare"]
        if (not isinstance(body, list) or len(body) != 2
                or not all(isinstance(n, str) for n in body)):
            raise _StepError(f"expected [SNAPSHOT, SNAPSHOT], got {body!r}")
        for name in body:
            if name not in self.snapshots:
                raise _StepError(f"no earlier snapshot step has as: {name!r}")
        return CompareStep(index, "compare", raw.get("title", ""), first=body[0],
                           second=body[1])

    def _reach(self, index: int, raw: Mapping[str, Any]) -> Step:
        self._keys(raw, {"reach", "expect", "title"}, "a reach step")
        body = raw["reach"]
        if not isinstance(body, Mapping):
            raise _StepError(f"expected {{from: [...], to: [...], expect: MATRIX}}, got {body!r}")
        self._keys(body, {"from", "to", "expect", "timeout"}, "reach")
        sources, targets = body.get("from"), body.get("to")
        if isinstance(sources, str):
            sources = [sources]
        if isinstance(targets, str):
            targets = [targets]
        if not isinstance(sources, list) or not sources:
            raise _StepError("from: expected a list of NAMESPACE/POD (or node names)")
        if not isinstance(targets, list) or not targets:
            raise _StepError(f"to: expected a list of {REACH_TARGET_FORM}")
        for s in sources:
            if not isinstance(s, str) or not (POD_RE.match(s) or s in self.spec.node_names()):
                raise _StepError(f"from: {s!r} is not NAMESPACE/POD or a node")
        for t in targets:
            if not isinstance(t, str) or not REACH_TARGET_RE.match(t):
                raise _StepError(f"to: {t!r} is not {REACH_TARGET_FORM}")
        if "expect" in body and "expect" in raw:
            raise _StepError("expect given twice (inside reach and beside it)")
        matrix = parse_matrix(body.get("expect", raw.get("expect")), len(sources), len(targets))
        timeout = self._number(body.get("timeout", 1.0), "timeout", minimum=0.05)
        return ReachStep(index, "reach", raw.get("title", ""), sources=list(sources),
                         targets=list(targets), expect=matrix, timeout=float(timeout))


def _yaml_in_step(text: str, where: str) -> list[Any]:
    try:
        return _load_yaml_all(text, where)
    except ScenarioError as exc:
        raise _StepError(str(exc)) from None


def parse_matrix(value: Any, rows: int, cols: int) -> list[list[int]]:
    """A reach matrix: lines of 0/1 words (or a list of lists), ``rows`` x ``cols``."""
    if isinstance(value, str):
        lines = [ln.split() for ln in value.strip().splitlines() if ln.strip()]
    elif isinstance(value, list):
        lines = [r.split() if isinstance(r, str) else r for r in value]
    else:
        raise _StepError(f"expect: expected a matrix of 0 and 1, {rows} rows of {cols}")
    if len(lines) != rows:
        raise _StepError(f"expect: {len(lines)} rows, expected {rows} (one per 'from' pod)")
    matrix = []
    for i, line in enumerate(lines, 1):
        if not isinstance(line, list) or len(line) != cols:
            raise _StepError(f"expect: row {i} has {len(line) if isinstance(line, list) else 0}"
                             f" values, expected {cols} (one per 'to' target)")
        row = []
        for v in line:
            if str(v) not in ("0", "1"):
                raise _StepError(f"expect: row {i}: {v!r} is not 0 or 1")
            row.append(int(v))
        matrix.append(row)
    return matrix
