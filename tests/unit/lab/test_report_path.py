"""``lab run --report`` writes where it is told, making the folders a fresh clone lacks."""

from __future__ import annotations

import json
import re
from pathlib import Path

from kube_router_lab.plugin import deliver_report

ROOT = Path(__file__).resolve().parents[3]


def test_report_lands_in_a_folder_that_did_not_exist(tmp_path: Path) -> None:
    src = tmp_path / "guest" / "report.json"
    src.parent.mkdir()
    src.write_text(json.dumps({"scenario": "x", "passed": True}))
    dest = tmp_path / "out" / "deeper" / "seed-walkthrough.json"
    deliver_report(src, dest)
    assert json.loads(dest.read_text()) == {"scenario": "x", "passed": True}
    deliver_report(src, dest)  # a second run over an existing report
    assert dest.exists()


def test_demo_report_folder_is_not_in_the_clone() -> None:
    # the demo's report goes under a folder git does not carry: the command must make it
    make = (ROOT / "Makefile").read_text()
    m = re.search(r"^demo:.*\n\t(.+)$", make, re.MULTILINE)
    assert m, "no demo target in the Makefile"
    report = re.search(r"--report\s+(\S+)", m.group(1))
    assert report, "make demo writes no report"
    folder = Path(report.group(1)).parent
    assert folder != Path(".")
    ignored = {line.strip("/") for line in (ROOT / ".gitignore").read_text().split()}
    assert str(folder) in ignored, f"{folder}/ is not ignored by git"
