"""The lab on the real control plane (kube-apiserver, kube-controller-manager,
kube-scheduler, etcd built from their Go modules): the walkthrough and the proxy and router
scenarios that matter most, through ``kube-router-py lab run --control-plane real``. The
agents authenticate as the DaemonSet's pods do (service account token, CA, --master) with
the manifest's RBAC, so a permission it lacks fails the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = [ROOT / "examples" / "seed-walkthrough.yaml",
             ROOT / "tests" / "lab" / "scenarios" / "proxy-basics.yaml",
             ROOT / "tests" / "lab" / "scenarios" / "router-mesh.yaml",
             # kube-apiserver stopped 60 s and started again: every agent's watch gets 410
             ROOT / "tests" / "lab" / "reliability" / "reliability-apiserver-down.yaml"]


@pytest.mark.lab
@pytest.mark.real
@pytest.mark.parametrize("path", SCENARIOS, ids=[p.name for p in SCENARIOS])
def test_scenario_on_real_control_plane(lab, path: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    res = lab("run", str(path), "--control-plane", "real", "--report", str(report))
    transcript = res.stdout + res.stderr
    assert report.exists(), transcript[-30000:]
    data = json.loads(report.read_text())
    assert data["control_plane"]["kind"] == "real", data.get("control_plane")
    assert data["control_plane"]["version"].startswith("v1."), data["control_plane"]
    failed = [s for s in data["steps"] if not s["passed"]]
    assert res.returncode == 0 and data["passed"], (
        f"{path.name}: {data.get('error') or ''} "
        + "; ".join(f"step {s['index']} ({s['kind']}): {s.get('reason')}" for s in failed)
        + f"\n{transcript[-30000:]}")
