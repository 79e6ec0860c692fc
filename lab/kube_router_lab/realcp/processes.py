"""Running etcd, kube-apiserver, kube-controller-manager and kube-scheduler for a lab run:
each a child process with its log in the run's directory, stopped with the lab."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import urllib3


class ProcessError(RuntimeError):
    pass


class Process:
    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            # Its own process group: stopping it stops nothing of ours.
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    def returncode(self) -> int | None:
        return self.proc.returncode if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def wait_until(check: Callable[[], bool], what: str, proc: Process, timeout: float) -> float:
    """Poll ``check`` until it holds; fail early with the log's tail if the process died."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if not proc.alive():
            rc = proc.proc.returncode if proc.proc else "?"
            raise ProcessError(f"{proc.name} exited with {rc} before {what}:\n{proc.tail()}")
        try:
            if check():
                return time.monotonic() - started
        except (OSError, urllib3.exceptions.HTTPError):
            pass
        time.sleep(0.25)
    raise ProcessError(f"{proc.name}: not {what} after {timeout:g}s:\n{proc.tail()}")


def http_ok(url: str, **tls: str) -> Callable[[], bool]:
    options: dict[str, Any] = dict(tls)
    pool = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=2.0, read=5.0),
                               **options)

    def check() -> bool:
        return pool.request("GET", url).status == 200

    return check
