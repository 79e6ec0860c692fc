"""Running a tool: argument lists only, status checked, stderr reported."""

from __future__ import annotations

import asyncio
import subprocess


class CommandError(RuntimeError):
    """A tool exited non-zero; the message carries its argv, status and stderr."""

    def __init__(self, argv: list[str], rc: int, stderr: str) -> None:
        super().__init__(f"{' '.join(argv)}: rc={rc} stderr={stderr.strip()[:2000]}")
        self.argv = argv
        self.rc = rc
        self.stderr = stderr


async def run(argv: list[str], stdin: str | None = None, *, check: bool = True
              ) -> tuple[int, str, str]:
    """Run ``argv`` without a shell; return (rc, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    rc = proc.returncode or 0
    if check and rc:
        raise CommandError(argv, rc, err.decode(errors="replace"))
    return rc, out.decode(errors="replace"), err.decode(errors="replace")


def run_sync(argv: list[str], stdin: str | None = None, *, check: bool = True
             ) -> tuple[int, str, str]:
    """The same, for code outside the event loop (cleanup, status)."""
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if check and proc.returncode:
        raise CommandError(argv, proc.returncode, proc.stderr)
    return proc.returncode, proc.stdout, proc.stderr
