"""The lab tier: scenarios and the guest, driven through the ``kube-router-py lab`` command
on this machine (it boots the guest kernel itself). Skipped, with the reason, where the guest
cannot run."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def kube_router_py() -> list[str]:
    """The console script of the Python running the tests (the checkout's venv)."""
    script = Path(sys.executable).parent / "kube-router-py"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from kube_router.cli import main; "
            "sys.exit(main())"]


def guest_problem() -> str | None:
    try:
        from kube_router_lab import guest
    except ImportError as exc:
        return f"kube-router-py-lab is not installed: {exc}"
    return guest.unavailable()



@pytest.fixture(scope="session")
def lab_cmd() -> list[str]:
    problem = guest_problem()
    if problem:
        pytest.skip(problem)
    return kube_router_py()


@pytest.fixture
def lab(lab_cmd: list[str]) -> Callable[..., subprocess.CompletedProcess]:
    """``lab("exec", "--", "true")`` runs ``kube-router-py lab exec -- true`` in the checkout."""

    def call(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
        return subprocess.run([*lab_cmd, "lab", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=timeout, check=False)

    return call
