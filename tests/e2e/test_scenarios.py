"""The lab's scenario files, unchanged, on the selected cluster. A few of them: those whose
expectations name addresses only through substitutions, so that they hold on any cluster."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = [ROOT / "examples" / "seed-walkthrough.yaml",
             ROOT / "tests" / "lab" / "scenarios" / "proxy-basics.yaml"]


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario(run_scenario: Callable[[Path], dict[str, Any]], path: Path) -> None:
    report = run_scenario(path)
    failed = [s for s in report["steps"] if not s["passed"]]
    assert report["passed"], (
        f"{path.name}: {report.get('error') or ''}"
        + "; ".join(f"step {s['index']} ({s['kind']}): {s.get('reason')}" for s in failed)
        + "\n" + report.get("transcript", ""))
