"""The host side of the guest: markers, exit status, timeouts, clear errors. The child here
is an ordinary process speaking the guest's console protocol; booting the real guest is in
tests/lab/test_guest.py."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from kube_router_lab import guest


def console(tmp_path: Path, body: str, timeout: float = 20.0) -> tuple[int, str, str]:
    script = tmp_path / "child.py"
    script.write_text(body)
    out, err = io.StringIO(), io.StringIO()
    rc = guest._supervise([sys.executable, str(script)], "test", "n1", tmp_path, timeout,
                          out, err, tmp_path)
    return rc, out.getvalue(), err.getvalue()


M = "@@kube-router-lab-n1@@ "


def test_markers_are_stripped_and_status_returned(tmp_path: Path) -> None:
    rc, out, err = console(tmp_path, f"""
print("boot noise")
print({M!r} + "started")
print({M!r} + "ready", flush=True)
print("line one\\r")
print("line two")
print({M!r} + "exit 7")
print("reboot: Power down")
""")
    assert rc == 7
    assert out == "line one\nline two\n"
    assert "boot_to_command_seconds=" in err and "boot noise" not in err


def test_forged_marker_with_another_nonce_is_output(tmp_path: Path) -> None:
    rc, out, _ = console(tmp_path, f"""
print({M!r} + "ready")
print("@@kube-router-lab-xx@@ exit 0")
print({M!r} + "exit 4")
""")
    assert rc == 4 and "@@kube-router-lab-xx@@ exit 0" in out


def test_exit_file_when_the_marker_is_lost(tmp_path: Path) -> None:
    (tmp_path / ".exit-n1").write_text("5")
    rc, _, _ = console(tmp_path, f"print({M!r} + 'ready')\n")
    assert rc == 5
    assert not (tmp_path / ".exit-n1").exists()


def test_no_status_is_125_with_the_boot_lines(tmp_path: Path) -> None:
    rc, _, err = console(tmp_path, "print('Kernel panic - not syncing')\n")
    assert rc == 125
    assert "Kernel panic" in err and "without an exit status" in err


def test_timeout_kills_the_group(tmp_path: Path) -> None:
    rc, _, err = console(tmp_path, f"""
import subprocess, time
print({M!r} + "ready", flush=True)
subprocess.Popen(["sleep", "60"])
time.sleep(60)
""", timeout=1.0)
    assert rc == 124 and "timed out" in err


def test_bad_kernel_name() -> None:
    with pytest.raises(guest.GuestError, match="expected one of auto, uml, host"):
        guest.resolve_kernel("qemu")


def test_missing_tool_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guest, "REQUIRED_TOOLS", {"no-such-tool-kr": "some-debian-package"})
    with pytest.raises(guest.GuestError) as info:
        guest.check_tools()
    assert str(info.value) == ("no-such-tool-kr not found: install the Debian package "
                               "some-debian-package")


def test_missing_uml_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guest.shutil, "which", lambda *a, **k: None)
    with pytest.raises(guest.GuestError, match="install the Debian package user-mode-linux"):
        guest.find_uml_kernel()


def test_init_script_quotes_paths() -> None:
    text = guest._init_script("/opt/my venv/bin/python", Path("/tmp/it's/job.json"))
    assert "'/opt/my venv/bin/python' -m kube_router_lab.inside init" in text
    assert "'/tmp/it'\"'\"'s/job.json'" in text
    assert text.startswith("#!/bin/sh\n") and "sysrq-trigger" in text
