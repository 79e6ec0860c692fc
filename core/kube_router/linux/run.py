"""Running a tool: argument lists only, status checked, stderr reported."""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
from collections.abc import Sequence


class UnsafeInput(ValueError):
    """Text for a restore-style tool would hold a line break or NUL inside one line: a
    value taken from an object could add commands of its own. Nothing is run."""


def restore_text(lines: list[str]) -> str:
    """``lines`` joined for ``iptables-restore`` or ``ipset restore`` standard input.

    Every line must be one line: names, comments and addresses in them may come from API
    objects, and a line break smuggled in one would be read as another command.
    """
    for line in lines:
        if "\n" in line or "\r" in line or "\0" in line:
            raise UnsafeInput(f"refusing a restore line with a line break or NUL: {line[:200]!r}")
    return "\n".join(lines) + "\n"


class CommandError(RuntimeError):
    """A tool exited non-zero; the message carries its argv, status and stderr."""

    def __init__(self, argv: Sequence[str], rc: int, stderr: str) -> None:
        super().__init__(f"{' '.join(argv)}: rc={rc} stderr={stderr.strip()[:2000]}")
        self.argv = list(argv)
        self.rc = rc
        self.stderr = stderr


class RestoreError(CommandError):
    """A restore batch was refused; ``lines`` are the input lines the tool named (with
    their numbers), so the log shows what was wrong, not only that something was."""

    def __init__(self, err: CommandError, text: str) -> None:
        numbers = [int(n) for n in re.findall(r"[Ll]ine:? (\d+)", err.stderr)]
        src = text.splitlines()
        self.lines = [f"{n}: {src[n - 1]}" for n in dict.fromkeys(numbers)
                      if 0 < n <= len(src)]
        super().__init__(err.argv, err.rc, err.stderr)
        self.args = (f"{self.args[0]} failing_lines={self.lines}",)


async def restore(argv: Sequence[str], text: str, *, timeout: float | None = None) -> None:
    """Feed a batch to a ``*-restore`` tool; a refusal raises :class:`RestoreError`.

    ``timeout`` defaults to :data:`TIMEOUT`, which a batch of hundreds of thousands of
    lines may need more than (a first sync at scale)."""
    try:
        await run(argv, text, timeout=timeout or TIMEOUT)
    except CommandError as exc:
        if exc.rc == -9:
            raise
        raise RestoreError(exc, text) from None


def restore_sync(argv: Sequence[str], text: str, *, timeout: float | None = None) -> None:
    try:
        run_sync(argv, text, timeout=timeout or TIMEOUT)
    except CommandError as exc:
        if exc.rc == -9:
            raise
        raise RestoreError(exc, text) from None


#: Seconds a tool may run. They finish in well under a second; one that hangs must not
#: hold its controller's sync (and every later one) with it: it is killed and the sync
#: fails, to be retried.
TIMEOUT = 30.0


def _timed_out(argv: Sequence[str], timeout: float) -> CommandError:
    return CommandError(argv, -9, f"killed after {timeout:g} s without finishing")


async def run(argv: Sequence[str], stdin: str | None = None, *, check: bool = True,
              timeout: float = TIMEOUT) -> tuple[int, str, str]:
    """Run ``argv`` without a shell; return (rc, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(
            proc.communicate(stdin.encode() if stdin is not None else None), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):  # it ended as the time ran out
            proc.kill()
        await proc.wait()
        raise _timed_out(argv, timeout) from None
    rc = proc.returncode or 0
    if check and rc:
        raise CommandError(argv, rc, err.decode(errors="replace"))
    return rc, out.decode(errors="replace"), err.decode(errors="replace")


def run_sync(argv: Sequence[str], stdin: str | None = None, *, check: bool = True,
             timeout: float = TIMEOUT) -> tuple[int, str, str]:
    """The same, for code outside the event loop (cleanup, status)."""
    try:
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True,
                              check=False, timeout=timeout)
    except subprocess.TimeoutExpired:  # subprocess.run has killed it
        raise _timed_out(argv, timeout) from None
    if check and proc.returncode:
        raise CommandError(argv, proc.returncode, proc.stderr)
    return proc.returncode, proc.stdout, proc.stderr
