"""The tool runner: status, stderr and a time limit, so a hung tool cannot hold a sync."""

from __future__ import annotations

import asyncio
import time

import pytest

from kube_router.linux.run import CommandError
from kube_router.linux.run import run
from kube_router.linux.run import run_sync


def test_output_and_status() -> None:
    assert asyncio.run(run(["sh", "-c", "cat; echo err >&2"], "in")) == (0, "in", "err\n")
    assert run_sync(["sh", "-c", "exit 3"], check=False)[0] == 3
    with pytest.raises(CommandError, match="rc=3 stderr=bad"):
        asyncio.run(run(["sh", "-c", "echo bad >&2; exit 3"]))


def test_a_hung_tool_is_killed_at_its_time_limit() -> None:
    started = time.monotonic()
    with pytest.raises(CommandError, match=r"killed after 0\.3 s"):
        asyncio.run(run(["sleep", "30"], timeout=0.3))
    with pytest.raises(CommandError, match=r"killed after 0\.3 s"):
        run_sync(["sleep", "30"], timeout=0.3)
    assert time.monotonic() - started < 10


def test_a_tool_ending_as_its_time_runs_out_is_still_a_time_out(monkeypatch) -> None:
    from kube_router.linux import run as run_module

    class Ended:
        returncode = 0

        async def communicate(self, data: bytes | None) -> tuple[bytes, bytes]:
            await asyncio.sleep(30)
            return b"", b""

        def kill(self) -> None:
            raise ProcessLookupError  # what asyncio raises once the process is reaped

        async def wait(self) -> int:
            return 0

    async def spawn(*argv: str, **kw: object) -> Ended:
        return Ended()

    monkeypatch.setattr(run_module.asyncio, "create_subprocess_exec", spawn)
    with pytest.raises(CommandError, match=r"killed after 0\.05 s"):
        asyncio.run(run(["ipset", "restore"], timeout=0.05))


def test_restore_text_refuses_a_line_break_smuggled_into_one_line():
    import pytest

    from kube_router.linux import ipset
    from kube_router.linux import iptables
    from kube_router.linux.run import UnsafeInput
    from kube_router.linux.run import restore_text

    assert restore_text(["*nat", "-A X -j RETURN", "COMMIT"]) == "*nat\n-A X -j RETURN\nCOMMIT\n"
    evil = '-A X -m comment --comment "ns/a\n-A INPUT -j ACCEPT" -j RETURN'
    for bad in (evil, "add s 10.0.0.1\r", "add s 10.0.0.1\0"):
        with pytest.raises(UnsafeInput):
            restore_text([bad])
    # the tools are never started with such input
    with pytest.raises(UnsafeInput):
        iptables.restore_sync("filter", [evil])
    with pytest.raises(UnsafeInput):
        asyncio.run(ipset.restore([f"add {evil}"]))


def test_a_lock_timeout_of_iptables_restore_is_a_retryable_error_saying_nothing_applied():
    from kube_router.errors import TemporaryError
    from kube_router.linux import iptables
    from kube_router.linux.run import CommandError

    legacy = CommandError(["iptables-legacy-restore"], 4,
                          "Another app is currently holding the xtables lock. Stopped "
                          "waiting after 5s.\n")
    assert iptables._lock_busy(legacy)
    other = CommandError(["iptables-legacy-restore"], 1, "line 3 failed\n")
    assert not iptables._lock_busy(other)
    busy = iptables.XtablesLockBusy("iptables-legacy-restore")
    assert isinstance(busy, TemporaryError) and busy.delay == iptables.LOCK_RETRY
    assert "applied nothing" in str(busy)


def test_a_swap_refused_while_another_program_reads_the_set_is_retried_soon(monkeypatch):
    from kube_router.errors import TemporaryError
    from kube_router.linux import ipset
    from kube_router.linux.run import RestoreError

    lines = ipset.swap_script("kube-router-svip", "hash:ip", ["10.1.0.1"], tmp_suffix="-px")

    def refusing(number: int, what: str):
        async def fake(argv, text, *, timeout=None):
            err = CommandError(argv, 1, f"ipset v7.17: Error in line {number}: {what}")
            raise RestoreError(err, text)
        return fake

    monkeypatch.setattr(ipset, "run_restore",
                        refusing(5, "Kernel error received: Device or resource busy"))
    with pytest.raises(ipset.SetBusy, match="swap kube-router-svip-px kube-router-svip") as e:
        asyncio.run(ipset.restore(lines))
    assert isinstance(e.value, TemporaryError) and e.value.delay == 1.0
    # any other refusal, or busy on another line, is an error of the batch
    monkeypatch.setattr(ipset, "run_restore",
                        refusing(1, "Kernel error received: Device or resource busy"))
    with pytest.raises(RestoreError):
        asyncio.run(ipset.restore(lines))
    monkeypatch.setattr(ipset, "run_restore", refusing(5, "The sets cannot be swapped"))
    with pytest.raises(RestoreError):
        asyncio.run(ipset.restore(lines))
