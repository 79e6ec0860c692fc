"""Scenario files are checked before any kernel boots: each error is one line naming the
file, the step number and its kind."""

from __future__ import annotations

from pathlib import Path

import pytest

from kube_router_lab.scenario import ApplyStep
from kube_router_lab.scenario import ReachStep
from kube_router_lab.scenario import RunStep
from kube_router_lab.scenario import ScenarioError
from kube_router_lab.scenario import load_scenario
from kube_router_lab.scenario import parse_scenario

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def parse(text: str, tmp_path: Path):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return load_scenario(path)


def error(text: str, tmp_path: Path) -> str:
    with pytest.raises(ScenarioError) as info:
        parse(text, tmp_path)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(str(tmp_path / "s.yaml"))
    return msg


GOOD = """
name: demo
cluster: {nodes: 2, enable: [proxy]}
steps:
  - apply: |
      apiVersion: v1
      kind: Namespace
      metadata: {name: x}
  - run: {in: node-1, cmd: "curl -s ${svc:default/myip}:8080", times: 5}
    expect: {rc: 0, stdout: "^HOSTNAME:myip-", distinct: 5}
  - reach:
      from: [x/a, x/b]
      to: [x/a:80, y/b:80/udp, svc:x/s:80]
      expect: |
        1 0 1
        1 1 0
"""


def test_good_file(tmp_path: Path) -> None:
    sc = parse(GOOD, tmp_path)
    assert sc.name == "demo"
    assert sc.cluster.nodes == 2
    assert [s.kind for s in sc.steps] == ["apply", "run", "reach"]
    apply, run, reach = sc.steps
    assert isinstance(apply, ApplyStep) and apply.docs[0]["kind"] == "Namespace"
    assert isinstance(run, RunStep)
    assert run.argv == ["curl", "-s", "${svc:default/myip}:8080"]
    assert (run.times, run.expect.distinct, run.expect.rc) == (5, 5, 0)
    assert isinstance(reach, ReachStep)
    assert reach.expect == [[1, 0, 1], [1, 1, 0]]
    assert [s.index for s in sc.steps] == [1, 2, 3]


def test_bad_yaml_names_the_line(tmp_path: Path) -> None:
    msg = error("name: x\nsteps:\n  - run: {in: host, cmd: [\n", tmp_path)
    assert "bad YAML" in msg
    assert msg.split(":")[1].isdigit()  # file:LINE: ...


def test_unknown_step(tmp_path: Path) -> None:
    msg = error("steps:\n  - wait: synced\n  - fly: {to: moon}\n", tmp_path)
    assert msg.endswith("step 2 (fly): unknown step kind 'fly' "
                        "(known: apply, delete, annotate, wait, run, join, restart, reach, "
                        "burst, snapshot, compare)")


def test_unknown_substitution(tmp_path: Path) -> None:
    msg = error("steps:\n  - wait: synced\n  - wait: synced\n"
                "  - run: {in: host, cmd: 'echo ${foo:bar}'}\n", tmp_path)
    assert ": step 3 (run): unknown substitution ${foo:bar}" in msg


@pytest.mark.parametrize("cmd,needle", [
    ("echo ${svc:myip}", "expected ${svc:NAMESPACE/NAME}"),
    ("echo ${nodeport:default/myip}", "expected ${nodeport:NAMESPACE/NAME:PORT}"),
    ("echo ${node:node-9}", "no node or peer named 'node-9'"),
    ("echo ${podcidr:node-9}", "no node named 'node-9'"),
    ("echo ${podcidr:default/node-0}", "expected ${podcidr:NODE}"),
    ("echo ${svc:default/x", "unterminated substitution"),
])
def test_bad_substitution_forms(tmp_path: Path, cmd: str, needle: str) -> None:
    msg = error(f"steps:\n  - run: {{in: host, cmd: '{cmd}'}}\n", tmp_path)
    assert "step 1 (run)" in msg and needle in msg


@pytest.mark.parametrize("expect,needle", [
    ("{rc: zero}", "expect.rc: expected a whole number"),
    ("{stdout: '(unclosed'}", "expect.stdout: bad regular expression"),
    ("{distinct: 0}", "expect.distinct: expected a whole number >= 1"),
    ("{same: yes please}", "expect.same: expected true or false"),
    ("{lines: 3}", "unknown key 'lines' in expect"),
    ("{distinct: 3}", "expect.distinct 3 but only 1 runs"),
    ("[0]", "expect: expected a mapping"),
])
def test_bad_expect(tmp_path: Path, expect: str, needle: str) -> None:
    msg = error(f"steps:\n  - run: {{in: host, cmd: 'true'}}\n    expect: {expect}\n", tmp_path)
    assert "step 1 (run)" in msg and needle in msg, msg


def test_on_instead_of_in(tmp_path: Path) -> None:
    msg = error("steps:\n  - run: {on: node-0, cmd: 'true'}\n", tmp_path)
    assert "use the key 'in'" in msg


def test_unknown_place(tmp_path: Path) -> None:
    msg = error("cluster: {nodes: 2}\nsteps:\n  - run: {in: node-5, cmd: 'true'}\n", tmp_path)
    assert "in: 'node-5' is not host, a node (node-0, node-1)" in msg


def test_bad_cmd_quotes(tmp_path: Path) -> None:
    msg = error("steps:\n  - run: {in: host, cmd: \"echo 'open\"}\n", tmp_path)
    assert "step 1 (run): cmd: No closing quotation" in msg


def test_join_needs_background(tmp_path: Path) -> None:
    msg = error("steps:\n  - join: load\n", tmp_path)
    assert "step 1 (join): no earlier run or burst step has background: 'load'" in msg


def test_background_and_join(tmp_path: Path) -> None:
    sc = parse("steps:\n  - run: {in: host, cmd: 'true', times: 3, interval: 0.5, "
               "background: load}\n  - join: load\n", tmp_path)
    assert sc.steps[0].background == "load"


def test_reach_matrix_shape(tmp_path: Path) -> None:
    msg = error("steps:\n  - reach: {from: [a/b], to: [a/b:80, a/c:80], expect: '1'}\n",
                tmp_path)
    assert "step 1 (reach): expect: row 1 has 1 values, expected 2" in msg
    msg = error("steps:\n  - reach: {from: [a/b], to: ['a/b'], expect: '1'}\n", tmp_path)
    assert "to: 'a/b' is not NAMESPACE/POD:PORT" in msg
    msg = error("steps:\n  - reach: {from: [a/b], to: ['a/b:80'], expect: '2'}\n", tmp_path)
    assert "'2' is not 0 or 1" in msg


def test_restart_checks(tmp_path: Path) -> None:
    msg = error("steps:\n  - restart: {target: kubelet, in: node-0}\n", tmp_path)
    assert "target: expected one of agent, gobgpd, apiserver" in msg
    msg = error("steps:\n  - restart: {target: agent}\n", tmp_path)
    assert "step 1 (restart): in: expected a node" in msg
    sc = parse("steps:\n  - restart: {target: apiserver, down: 2}\n"
               "  - restart: {target: gobgpd, in: node-1, signal: KILL}\n", tmp_path)
    assert (sc.steps[0].down, sc.steps[1].signal) == (2.0, "KILL")


def test_apply_file_relative_and_missing(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "ns.yaml").write_text("kind: Namespace\nmetadata: {name: a}\n---\n"
                                            "kind: Namespace\nmetadata: {name: b}\n")
    sc = parse("steps:\n  - apply: m/ns.yaml\n", tmp_path)
    assert [d["metadata"]["name"] for d in sc.steps[0].docs] == ["a", "b"]
    msg = error("steps:\n  - apply: m/nope.yaml\n", tmp_path)
    assert "step 1 (apply): cannot read m/nope.yaml" in msg
    (tmp_path / "m" / "bad.yaml").write_text("kind: Namespace\nmetadata: {name: [\n")
    msg = error("steps:\n  - apply: m/bad.yaml\n", tmp_path)
    assert "step 1 (apply): m/bad.yaml:3: bad YAML" in msg


def test_apply_object_needs_name(tmp_path: Path) -> None:
    msg = error("steps:\n  - apply: {kind: Service, metadata: {}}\n", tmp_path)
    assert "object 1 needs kind and metadata.name" in msg


def test_cluster_errors_name_the_file(tmp_path: Path) -> None:
    msg = error("cluster: {nodes: 0}\nsteps: [{wait: synced}]\n", tmp_path)
    assert "cluster.nodes" in msg
    msg = error("clusters: {}\nsteps: [{wait: synced}]\n", tmp_path)
    assert "unknown key 'clusters'" in msg


def test_delete_and_annotate_defaults(tmp_path: Path) -> None:
    sc = parse("steps:\n  - delete: {kind: Service, name: s}\n  - delete: {kind: Namespace, "
               "name: x}\n  - annotate: {kind: Service, name: s, set: {a: lc, b: null}}\n",
               tmp_path)
    assert sc.steps[0].namespace == "default"
    assert sc.steps[1].namespace is None
    assert sc.steps[2].changes == {"a": "lc", "b": None}


def test_wait_timeout(tmp_path: Path) -> None:
    sc = parse("steps:\n  - wait: synced\n    timeout: 5\n", tmp_path)
    assert sc.steps[0].timeout == 5.0
    msg = error("steps:\n  - wait: ready\n", tmp_path)
    assert "step 1 (wait): wait: only 'synced' is known" in msg


def test_shipped_examples_parse() -> None:
    files = sorted(EXAMPLES.glob("*.yaml"))
    assert files, EXAMPLES
    for f in files:
        parse_scenario(f.read_text(), path=f)


@pytest.mark.parametrize(("step", "why"), [
    ("burst: {count: 2, template: 'kind: Service\\nmetadata: {name: s}'}",
     "template: expected YAML text holding ${i}"),
    ("burst: {count: 0, template: 'kind: Service\\nmetadata: {name: s-${i}}'}",
     "count: expected a whole number >= 1"),
    ('burst: {count: 2, template: "kind: Service\\nmetadata: {name: s, x: ${i}}"}',
     "template: the names must hold ${i} to be distinct"),
    ("compare: [a, b]", "no earlier snapshot step has as: 'a'"),
    ("snapshot: {in: node-9, as: a}", "in: expected a node"),
    ("restart: {target: gobgpd, in: node-0, cleanup: true}",
     "cleanup: only an agent's restart can clean up"),
])
def test_new_steps_are_checked(tmp_path: Path, step: str, why: str) -> None:
    msg = error(f"steps:\n  - {step}\n", tmp_path)
    assert why in msg, msg


def test_reach_takes_sctp_port_names_and_nodes(tmp_path: Path) -> None:
    sc = parse("cluster: {nodes: 2}\nsteps:\n  - reach:\n"
               "      from: [x/a, node-1]\n"
               "      to: [x/a:80/sctp, x/b:web, x/b:dns/udp, x/c:81/tcp, svc:x/s:80/sctp]\n"
               "    expect: ['1 1 1 1 1', '0 0 0 0 0']\n", tmp_path)
    reach = sc.steps[0]
    assert isinstance(reach, ReachStep)
    assert reach.sources == ["x/a", "node-1"]
    assert reach.targets[1] == "x/b:web"


def test_reach_rejects_bad_targets_and_sources(tmp_path: Path) -> None:
    msg = error("cluster: {nodes: 2}\nsteps:\n  - reach: {from: [node-5], to: [x/a:80], "
                "expect: '1'}\n", tmp_path)
    assert "step 1 (reach): from: 'node-5' is not NAMESPACE/POD or a node" in msg
    for bad in ("x/a:80/icmp", "svc:x/s:web", "x/a:Web", "x/a:-web", "x/a:a-very-long-port-name"):
        msg = error(f"steps:\n  - reach: {{from: [x/a], to: ['{bad}'], expect: '1'}}\n",
                    tmp_path)
        assert f"to: {bad!r} is not NAMESPACE/POD:PORT[/udp|/sctp]" in msg
