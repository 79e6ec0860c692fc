"""The runner against a small in-test lab: step order, expectations, stop at the first
failure, background runs, the report's shape."""

from __future__ import annotations

import json
import re
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from kube_router_lab.cluster import Lab
from kube_router_lab.runner import Runner
from kube_router_lab.runner import run_scenario_file
from kube_router_lab.scenario import load_scenario


class FakeLab:
    """Records calls; ``run`` answers from a script of outputs."""

    def __init__(self, *_a, **_k) -> None:
        self.calls: list[tuple] = []
        self.rv = 10
        self.synced_after = 0  # unsynced() polls before every agent reports synced
        self.outputs: dict[str, list[str]] = {}
        self.reachable: set[tuple[str, str]] = set()
        self.lock = threading.Lock()
        self.up_called = self.down_called = False

    def up(self) -> None:
        self.up_called = True

    def down(self) -> None:
        self.down_called = True

    def apply(self, docs: list[dict]) -> None:
        self.calls.append(("apply", [d["metadata"]["name"] for d in docs]))
        self.rv += len(docs)

    def delete(self, kind, namespace, name) -> None:
        self.calls.append(("delete", kind, namespace, name))

    def annotate(self, kind, namespace, name, changes) -> None:
        self.calls.append(("annotate", kind, namespace, name, changes))

    def resource_version(self) -> str:
        return str(self.rv)

    def unsynced(self, rv: str) -> dict[str, str]:
        if self.synced_after > 0:
            self.synced_after -= 1
            return {"node-1": f"at 3, not {rv}"}
        return {}

    def substitute(self, key: str) -> str:
        known = {"svc:default/myip": "10.1.0.12", "node:node-1": "192.168.10.101"}
        if key not in known:
            raise KeyError(f"no {key}")
        return known[key]

    def run(self, where, argv, timeout=30.0):
        with self.lock:
            self.calls.append(("run", where, list(argv)))
            script = self.outputs.get(" ".join(argv))
            out = script.pop(0) if script else " ".join(argv)
        rc = 1 if argv[0] == "false" else 0
        return rc, out + "\n", "boom\n" if rc else ""

    def restart(self, target, node=None, signal="TERM", down=None, **extra) -> None:
        self.calls.append(("restart", target, node, signal, down, *extra.items()))

    def reach(self, src, target, timeout=1.0) -> bool:
        return (src, target) in self.reachable


def scenario(tmp_path: Path, body: str):
    p = tmp_path / "s.yaml"
    p.write_text("name: t\ncluster: {nodes: 2}\nsteps:\n" + body)
    return load_scenario(p)


def run(tmp_path: Path, body: str, lab: FakeLab | None = None, keep_going: bool = False):
    lab = lab or FakeLab()
    lines: list[str] = []
    report = Runner(scenario(tmp_path, body), lab, keep_going=keep_going,
                    out=lines.append).run()
    return report, lab, "\n".join(lines)


def test_all_kinds_pass_and_report_shape(tmp_path: Path) -> None:
    lab = FakeLab()
    lab.outputs["curl -s 10.1.0.12:8080"] = [f"HOSTNAME:myip-{i}" for i in range(5)]
    lab.reachable = {("x/a", "x/a:80"), ("x/b", "svc:x/s:80/udp")}
    lab.synced_after = 2
    report, lab, text = run(tmp_path, """
  - apply: {kind: Namespace, metadata: {name: x}}
  - wait: synced
  - run: {in: node-1, cmd: "curl -s ${svc:default/myip}:8080", times: 5}
    expect: {stdout: "^HOSTNAME:myip-", distinct: 5}
  - annotate: {kind: Service, name: myip, set: {kube-router.io/service.scheduler: lc}}
  - delete: {kind: Service, namespace: default, name: myip}
  - restart: {target: agent, in: node-0, signal: KILL}
  - reach: {from: [x/a, x/b], to: [x/a:80, svc:x/s:80/udp], expect: "1 0\\n0 1"}
""", lab)
    assert report["passed"] is True, text
    assert json.loads(json.dumps(report)) == report
    assert set(report) == {"scenario", "passed", "seconds", "steps"}
    kinds = [s["kind"] for s in report["steps"]]
    assert kinds == ["apply", "wait", "run", "annotate", "delete", "restart", "reach"]
    assert [s["index"] for s in report["steps"]] == list(range(1, 8))
    assert report["steps"][2]["outputs"] == [f"HOSTNAME:myip-{i}" for i in range(5)]
    assert report["steps"][6]["matrix"] == [[1, 0], [0, 1]]
    assert ("run", "node-1", ["curl", "-s", "10.1.0.12:8080"]) in lab.calls
    assert ("restart", "agent", "node-0", "KILL", None) in lab.calls
    assert ("annotate", "Service", "default", "myip",
            {"kube-router.io/service.scheduler": "lc"}) in lab.calls
    assert "PASS step 3" in text and "PASSED: t: 7/7" in text


def test_stops_at_first_failure(tmp_path: Path) -> None:
    report, _lab, text = run(tmp_path, """
  - run: {in: host, cmd: "echo a", times: 3}
    expect: {distinct: 2}
  - run: {in: host, cmd: "echo b"}
""")
    assert report["passed"] is False
    assert len(report["steps"]) == 1
    assert report["steps"][0]["reason"] == "distinct 1, expected 2"
    assert "FAIL step 1" in text and "1 steps not run" in text


def test_failed_step_shows_each_agents_last_log_lines(tmp_path: Path) -> None:
    lab = FakeLab()
    log_path = tmp_path / "agent.log"
    log_path.write_text("".join(f"line {i}\n" for i in range(100)))

    def dump_stacks() -> bool:  # what the agent does on SIGUSR1
        with open(log_path, "a") as f:
            f.write("Thread 0x01 (most recent call first):\n  File \"x.py\", line 7 in f\n")
        return True

    lab.agents = {"node-0": SimpleNamespace(spec=SimpleNamespace(log_path=log_path),
                                            dump_stacks=dump_stacks)}
    # the lab backend's own diagnostics, on this lab's agents
    lab.diagnostics = lambda say: Lab.diagnostics(lab, say)
    _, _, passing = run(tmp_path, '  - run: {in: host, cmd: "echo a"}\n', lab)
    assert "agent log" not in passing and "Thread" not in passing
    _, _, text = run(tmp_path, '  - run: {in: host, cmd: "false"}\n', lab)
    assert "last lines of node-0's agent log:" in text
    logged, stacks = text.split("node-0's agent threads:")
    assert "    line 99" in logged and "    line 60" in logged and "line 59" not in logged
    assert "Thread" not in logged
    assert "    Thread 0x01 (most recent call first):" in stacks and "line 7 in f" in stacks


def test_keep_going(tmp_path: Path) -> None:
    report, _, _text = run(tmp_path, """
  - run: {in: host, cmd: "false"}
  - run: {in: host, cmd: "echo b"}
""", keep_going=True)
    assert [s["passed"] for s in report["steps"]] == [False, True]
    assert report["passed"] is False
    assert re.fullmatch(r"run 1: exit status 1, expected 0 \(\d\d:\d\d:\d\d\.\d{3}, "
                        r"\d+\.\ds; stderr: boom\)", report["steps"][0]["reason"])


def test_unknown_substitution_at_run_time_fails_the_step(tmp_path: Path) -> None:
    report, _, _ = run(tmp_path, "  - run: {in: host, cmd: 'curl ${svc:default/nope}'}\n")
    assert report["steps"][0]["reason"].startswith("unknown substitution ${svc:default/nope}")


def test_substitution_in_expected_output_is_literal(tmp_path: Path) -> None:
    lab = FakeLab()
    lab.outputs["ipvsadm -S -n"] = ["-A -t 10.1.0.12:8080 -s rr -p 10800"]
    report, _, text = run(tmp_path, """
  - run: {in: node-0, cmd: "ipvsadm -S -n"}
    expect: {stdout: "-A -t ${svc:default/myip}:8080 -s rr -p 10800"}
""", lab)
    assert report["passed"], text


def test_wait_times_out_naming_the_node(tmp_path: Path) -> None:
    lab = FakeLab()
    lab.synced_after = 10**6
    report, _, _ = run(tmp_path, "  - wait: synced\n    timeout: 0.3\n", lab)
    reason = report["steps"][0]["reason"]
    assert reason.startswith("not synced to resourceVersion 10 after 0.3s: node-1: at 3")


def test_background_and_join(tmp_path: Path) -> None:
    report, lab, text = run(tmp_path, """
  - run: {in: node-1, cmd: "echo tick", times: 4, interval: 0.05, background: load}
  - restart: {target: agent, in: node-1}
  - join: load
    title: requests went on through the restart
""")
    assert report["passed"], text
    join = report["steps"][2]
    assert join["kind"] == "join" and join["outputs"] == ["echo tick"] * 4
    assert sum(1 for c in lab.calls if c[0] == "run") == 4


def test_background_failure_shows_at_join(tmp_path: Path) -> None:
    report, _, text = run(tmp_path, """
  - run: {in: node-1, cmd: "false", times: 2, background: load}
  - join: load
""")
    assert report["steps"][0]["passed"] is True
    assert report["steps"][1]["passed"] is False
    assert "exit status 1" in report["steps"][1]["reason"]
    # a failed run says when it began, how long it took and what it wrote to stderr
    lines = text.splitlines()
    at = lines.index("  [1/2] exit 1: false")
    assert re.fullmatch(r"    began \d\d:\d\d:\d\d\.\d{3}, took \d+\.\ds", lines[at + 1])
    assert lines[at + 2] == "    stderr: boom"


def test_reach_mismatch_prints_both(tmp_path: Path) -> None:
    report, _, text = run(tmp_path, "  - reach: {from: [x/a], to: [x/a:80], expect: '1'}\n")
    assert report["steps"][0]["matrix"] == [[0]]
    assert "differs from expect in 1 cells" in report["steps"][0]["reason"]
    assert "0*" in text and "expected" in text


def test_lab_exception_fails_step_not_runner(tmp_path: Path) -> None:
    lab = FakeLab()

    def broken(*a, **k):
        raise RuntimeError("apiserver gone")

    lab.apply = broken  # type: ignore[method-assign]
    report, _, _ = run(tmp_path, "  - apply: {kind: Namespace, metadata: {name: x}}\n", lab)
    assert report["steps"][0]["reason"] == "RuntimeError: apiserver gone"


def test_run_scenario_file_writes_report_and_tears_down(tmp_path: Path, capsys) -> None:
    p = tmp_path / "s.yaml"
    p.write_text("name: file\nsteps:\n  - run: {in: host, cmd: 'echo hi'}\n")
    labs: list[FakeLab] = []

    def factory(spec, *, workdir, log):
        labs.append(FakeLab())
        assert workdir.is_dir()
        return labs[-1]

    rc = run_scenario_file(p, report=tmp_path / "r" / "report.json", lab_factory=factory)
    assert rc == 0
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert data["passed"] is True and data["scenario"] == "file"
    assert labs[0].up_called and labs[0].down_called
    assert "exit 0: echo hi" in capsys.readouterr().out


def test_run_scenario_file_lab_up_failure(tmp_path: Path) -> None:
    p = tmp_path / "s.yaml"
    p.write_text("steps:\n  - run: {in: host, cmd: 'echo hi'}\n")

    class Broken(FakeLab):
        def up(self) -> None:
            raise OSError("no bridge")

    rc = run_scenario_file(p, report=tmp_path / "r.json", lab_factory=Broken)
    data = json.loads((tmp_path / "r.json").read_text())
    assert rc == 1 and data["passed"] is False and "no bridge" in data["error"]


def test_invalid_file_is_status_2(tmp_path: Path, capsys) -> None:
    p = tmp_path / "s.yaml"
    p.write_text("steps:\n  - fly: 1\n")
    assert run_scenario_file(p, lab_factory=FakeLab) == 2
    assert "step 1 (fly)" in capsys.readouterr().err


@pytest.mark.parametrize("same,outs,ok", [(True, ["a", "a"], True), (True, ["a", "b"], False)])
def test_same(tmp_path: Path, same: bool, outs: list[str], ok: bool) -> None:
    lab = FakeLab()
    lab.outputs["curl x"] = list(outs)
    report, _, _ = run(tmp_path, f"  - run: {{in: node-1, cmd: 'curl x', times: 2}}\n"
                                 f"    expect: {{same: {str(same).lower()}}}\n", lab)
    assert report["passed"] is ok


def test_until_repeats_a_step_until_it_passes_and_shows_the_last_attempt(tmp_path: Path) -> None:
    lab = FakeLab()
    lab.outputs["gobgp neighbor"] = ["Active", "Active", "Establ"]
    report, lab, text = run(tmp_path, """
  - run: {in: node-0, cmd: "gobgp neighbor", until: 10}
    expect: {stdout: "Establ"}
""", lab)
    assert report["passed"] is True, text
    assert report["steps"][0]["outputs"] == ["Establ"]
    assert sum(1 for c in lab.calls if c[0] == "run") == 3
    assert "(attempt 3," in text


def test_until_gives_up_after_its_time_and_fails_on_the_last_attempt(tmp_path: Path) -> None:
    lab = FakeLab()
    lab.outputs["gobgp neighbor"] = ["Active"] * 10
    report, _lab, _text = run(tmp_path, """
  - run: {in: node-0, cmd: "gobgp neighbor", until: 0.5}
    expect: {stdout: "Establ"}
""", lab)
    assert report["passed"] is False
    assert "does not match" in report["steps"][0]["reason"]


def test_until_with_background_is_rejected(tmp_path: Path) -> None:
    from kube_router_lab.scenario import ScenarioError

    with pytest.raises(ScenarioError, match="until and background"):
        scenario(tmp_path, '  - run: {in: node-0, cmd: "true", until: 5, background: b}\n')


def test_a_background_burst_applies_numbered_copies_and_joins_like_a_run(tmp_path: Path) -> None:
    report, lab, text = run(tmp_path, """
  - burst:
      count: 3
      start: 7
      background: b
      template: |
        kind: Service
        metadata: {name: s-${i}, namespace: default}
  - restart: {target: agent, in: node-1, signal: KILL, cleanup: true}
  - join: b
  - burst: {count: 2, delete: true, template: "kind: Node\\nmetadata: {name: n-${i}}\\n"}
""")
    assert report["passed"] is True, text
    applied = [c for c in lab.calls if c[0] == "apply"]
    assert applied == [("apply", ["s-7"]), ("apply", ["s-8"]), ("apply", ["s-9"])]
    assert ("restart", "agent", "node-1", "KILL", None, ("cleanup", True)) in lab.calls
    assert lab.calls[-2:] == [("delete", "Node", None, "n-0"), ("delete", "Node", None, "n-1")]
    assert report["steps"][2]["outputs"][0].startswith("applied 3 of 3 in ")


def test_snapshots_compare_equal_or_fail_with_the_difference(tmp_path: Path) -> None:
    lab = FakeLab()
    snap = f"{sys.executable} -m kube_router_lab.kstate"
    lab.outputs[snap] = ["[ipvs] 1\n  -A -t 10.1.0.1:443 -s rr",
                         "[ipvs] 1\n  -A -t 10.1.0.1:443 -s rr",
                         "[ipvs] 1\n  -A -t 10.1.0.1:443 -s lc"]
    report, lab, text = run(tmp_path, """
  - snapshot: {in: node-1, as: a}
  - snapshot: {in: node-1, as: b}
  - compare: [a, b]
  - snapshot: {in: node-1, as: c}
  - compare: [a, c]
""", lab, keep_going=True)
    steps = report["steps"]
    assert [s["passed"] for s in steps] == [True, True, True, True, False], text
    assert steps[4]["reason"] == "snapshots differ in 2 lines"
    assert "+  -A -t 10.1.0.1:443 -s lc" in text


def test_reach_tries_silent_cells_again_but_never_doubts_an_answer(tmp_path: Path) -> None:
    lab = FakeLab()
    calls: list[tuple[str, str, float]] = []
    slow = {("x/a", "x/b:80")}  # answers only when given more than a second

    def reach(src, target, timeout=1.0) -> bool:
        with lab.lock:
            calls.append((src, target, timeout))
        return (src, target) in lab.reachable or ((src, target) in slow and timeout > 1)

    lab.reach = reach  # type: ignore[method-assign]
    lab.reachable = {("x/a", "x/a:80"), ("x/b", "x/a:80")}
    report, _, text = run(tmp_path, "  - reach: {from: [x/a, x/b], to: [x/a:80, x/b:80], "
                                    "expect: ['1 1', '0 0']}\n", lab)
    assert report["steps"][0]["matrix"] == [[1, 1], [1, 0]]
    assert "1 of 1 silent cells answered on try 2 (2 s): x/a -> x/b:80" in text
    # the cell that answered where silence was expected is not tried again
    assert sorted(calls) == sorted([("x/a", "x/a:80", 1.0), ("x/a", "x/b:80", 1.0),
                                    ("x/b", "x/a:80", 1.0), ("x/b", "x/b:80", 1.0),
                                    ("x/a", "x/b:80", 2.0)])
    assert report["steps"][0]["passed"] is False  # x/b -> x/a:80 answered


def test_reach_gives_up_after_the_retries(tmp_path: Path) -> None:
    lab = FakeLab()
    seen: list[float] = []

    def reach(src, target, timeout=1.0) -> bool:
        seen.append(timeout)
        return False

    lab.reach = reach  # type: ignore[method-assign]
    report, _, _ = run(tmp_path, "  - reach: {from: [x/a], to: [x/b:80], expect: '1'}\n", lab)
    assert seen == [1.0, 2.0, 3.0]
    assert report["steps"][0]["matrix"] == [[0]]


def test_a_script_word_shows_its_first_line(tmp_path: Path) -> None:
    _, _, text = run(tmp_path, "  - run:\n      in: host\n      cmd: [sh, -c, \"echo a\\n"
                     "echo b\", '${svc:default/myip}']\n")
    assert "run in host: sh -c 'echo a ...' '${svc:default/myip}'" in text
    assert "$ sh -c 'echo a ...' 10.1.0.12" in text
