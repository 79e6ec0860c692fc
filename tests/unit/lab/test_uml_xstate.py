"""The AMX preload for UML: when it is needed, and that it builds into the cache once."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kube_router_lab import uml_xstate


def test_amx_is_read_from_the_flags_line() -> None:
    assert uml_xstate.host_has_amx("processor\t: 0\nflags\t\t: fpu avx512f amx_bf16 amx_tile\n")
    assert not uml_xstate.host_has_amx("processor\t: 0\nflags\t\t: fpu avx512f amx_tilex\n")
    assert not uml_xstate.host_has_amx("model name\t: amx_tile in a name only\n")


def test_no_preload_without_amx(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uml_xstate, "host_has_amx", lambda: False)
    assert uml_xstate.preload() is None


def test_preload_builds_once_and_exports_ptrace(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    monkeypatch.setattr(uml_xstate, "host_has_amx", lambda: True)
    monkeypatch.setenv("KUBE_ROUTER_PY_CACHE", str(tmp_path))
    lib = uml_xstate.preload()
    assert lib is not None and Path(lib).parent == tmp_path / "uml-xstate"
    built = Path(lib).stat().st_mtime_ns
    assert uml_xstate.preload() == lib and Path(lib).stat().st_mtime_ns == built
    assert list(Path(lib).parent.iterdir()) == [Path(lib)]  # no temporary file left
    symbols = subprocess.run(["nm", "-D", "--defined-only", lib], capture_output=True,
                             text=True, check=True).stdout
    assert " T ptrace" in symbols


def test_a_missing_compiler_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: Path) -> None:
    monkeypatch.setattr(uml_xstate, "host_has_amx", lambda: True)
    monkeypatch.setenv("KUBE_ROUTER_PY_CACHE", str(tmp_path))
    monkeypatch.setattr(uml_xstate.shutil, "which", lambda _name: None)
    with pytest.raises(uml_xstate.PreloadError, match="install the Debian package gcc"):
        uml_xstate.preload()
