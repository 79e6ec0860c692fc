"""Shared helpers of the proxy's kernel tests."""

from __future__ import annotations

import subprocess


def run(argv: list[str], stdin: str | None = None) -> str:
    """Run a tool; fail the test with its stderr when it fails."""
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{argv} rc={proc.returncode} stderr={proc.stderr.strip()}"
    return proc.stdout


def ipvsadm_rules() -> list[str]:
    return sorted(line for line in run(["ipvsadm", "-S", "-n"]).splitlines() if line)
