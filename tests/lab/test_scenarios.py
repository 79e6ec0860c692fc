"""Every scenario under tests/lab/scenarios/ and examples/, one test each, through
``kube-router-py lab run`` exactly as a user runs it; and the reliability tier, the
scenarios under tests/lab/reliability/ (faults, bad input, foreign state, contention),
marked ``reliability``: ``make reliability`` runs them, ``make lab`` leaves them out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = sorted([*(ROOT / "tests" / "lab" / "scenarios").glob("*.yaml"),
                    *(ROOT / "examples").glob("*.yaml")])
RELIABILITY = sorted((ROOT / "tests" / "lab" / "reliability").glob("*.yaml"))


@pytest.mark.lab
@pytest.mark.parametrize("path", SCENARIOS, ids=[p.relative_to(ROOT).as_posix()
                                                 for p in SCENARIOS])
def test_scenario(lab, path: Path, tmp_path: Path) -> None:
    missing = missing_plugins(path)
    if missing:
        # the lab would run without them and the scenario could only fail
        pytest.skip(f"{path.name} enables plugins not installed here: {', '.join(missing)}")
    report = tmp_path / "report.json"
    res = lab("run", str(path), "--report", str(report))
    transcript = res.stdout + res.stderr
    assert report.exists(), transcript
    data = json.loads(report.read_text())
    failed = [s for s in data["steps"] if not s["passed"]]
    assert res.returncode == 0 and data["passed"], (
        f"{path.name}: " + "; ".join(f"step {s['index']} ({s['kind']}): {s.get('reason')}"
                                     for s in failed) + f"\n{transcript[-30000:]}")


@pytest.mark.lab
@pytest.mark.reliability
@pytest.mark.parametrize("path", RELIABILITY, ids=[p.name for p in RELIABILITY])
def test_reliability(lab, path: Path, tmp_path: Path) -> None:
    test_scenario(lab, path, tmp_path)


def missing_plugins(path: Path) -> list[str]:
    """The plugins ``path`` enables that no installed distribution provides."""
    from kube_router_lab.agents import installed_plugins
    from kube_router_lab.spec import DEFAULT_ENABLE

    cluster = (yaml.safe_load(path.read_text()) or {}).get("cluster") or {}
    enable = cluster.get("enable", list(DEFAULT_ENABLE))
    if isinstance(enable, str):
        enable = [e.strip() for e in enable.split(",") if e.strip()]
    installed = installed_plugins()
    return [e for e in enable if e not in installed]
