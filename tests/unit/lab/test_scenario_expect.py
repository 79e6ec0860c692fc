"""What a run step's expect means."""

from __future__ import annotations

import re

from kube_router_lab.scenario import Expect
from kube_router_lab.scenario import expand


def test_rc_default_is_zero() -> None:
    assert Expect().check([0, 0], ["a", "b"]) is None
    assert Expect().check([0, 7], ["a", "b"]) == "run 2: exit status 7, expected 0"
    assert Expect(rc=None).check([3], ["a"]) is None
    assert Expect(rc=7).check([7, 7], ["", ""]) is None


def test_stdout_is_a_search_in_every_run() -> None:
    exp = Expect(stdout="^HOSTNAME:myip-")
    assert exp.check([0, 0], ["HOSTNAME:myip-a IP:1", "x\nHOSTNAME:myip-b"]) is None
    assert exp.check([0, 0], ["HOSTNAME:myip-a", "nope"]) == \
        "run 2: output does not match /^HOSTNAME:myip-/"


def test_distinct_is_exact() -> None:
    outs = ["a", "b", "c", "a", "b"]
    assert Expect(distinct=3).check([0] * 5, outs) is None
    assert Expect(distinct=5).check([0] * 5, outs) == "distinct 3, expected 5"


def test_same() -> None:
    assert Expect(same=True).check([0] * 3, ["x"] * 3) is None
    assert "outputs differ: 2 distinct over 3 runs" in Expect(same=True).check(
        [0] * 3, ["x", "y", "x"])


def test_rc_is_checked_before_output() -> None:
    assert Expect(stdout="x").check([1], [""]).startswith("run 1: exit status 1")


def test_expand_escapes_values_only_in_patterns() -> None:
    values = {"svc:default/myip": "10.1.0.12", "node:node-1": "192.168.10.101"}
    assert expand("curl ${svc:default/myip}:8080", values.__getitem__) == "curl 10.1.0.12:8080"
    pat = expand(r"-A -t ${svc:default/myip}:8080 -s \w+", values.__getitem__, escape=True)
    assert re.search(pat, "-A -t 10.1.0.12:8080 -s rr")
    assert not re.search(pat, "-A -t 10x1x0x12:8080 -s rr")
