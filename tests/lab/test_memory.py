"""S6, a tier of its own (``make memory``): ``bench.memory`` at full size in the guest, as
a user runs it, held to its goals (peak RSS at most 250 MiB; after a churn of at least 20
full resyncs, within 5% of the RSS once synced). The figures go to the test's output."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest


@pytest.mark.lab
@pytest.mark.memory
def test_memory_at_scale_and_after_churn(lab) -> None:
    maps = int(Path("/proc/sys/vm/max_map_count").read_text())
    assert maps >= 262144, (
        f"vm.max_map_count={maps}: a UML guest process dies near 256 MiB resident; "
        "`sysctl -w vm.max_map_count=262144` (make memory does it as root)")
    # (the guest's root is the host's: this venv's Python runs there as it is)
    res = lab("exec", "--mem", "3G", "--", sys.executable, "-m", "bench.memory", timeout=2400)
    transcript = res.stdout + res.stderr
    assert res.returncode == 0, transcript[-20000:]
    result = json.loads(res.stdout.strip().splitlines()[-1])
    print(json.dumps(result))  # the figures, for the run's log
    assert result["agent_tracebacks"] == 0, transcript[-20000:]
    assert result["churn_full_syncs"] >= 20, result
    assert result["peak_goal_met"], result
    assert result["churn_goal_met"], result
