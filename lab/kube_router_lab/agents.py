"""One kube-router-py agent per node, run in the node's namespace and kept running.

Each agent is a child process (``ip netns exec NODE kube-router-py run ...``) with its log
in the lab's workdir. A supervisor thread per agent restarts one that exits with a growing
back-off and prints the tail of its log, so a crashing plugin is visible but does not take
the lab down. ``restart`` is the scenario's ``restart: agent``; gobgpd is found by the
namespace its process lives in.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal as signals
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

from kube_router_lab import netns as ns

HEALTH_PORT = 20244
LOG_TAIL_LINES = 15
FAILURE_LOG_LINES = 40  # of each agent's log, shown when a step fails
#: Seconds the agents get to write their stacks into their logs, and how much of that
#: is shown.
STACK_DUMP_WAIT = 1.0
STACK_DUMP_BYTES = 16384


def installed_plugins() -> set[str]:
    """Names of the installed agent plugins (the lab's own entry is not one)."""
    return {ep.name for ep in entry_points(group="kube_router.plugins")} - {"lab"}


def agent_executable() -> str:
    """The ``kube-router-py`` script next to this interpreter, else the one on PATH."""
    here = Path(sys.executable).parent / "kube-router-py"
    return str(here) if here.exists() else "kube-router-py"


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max(8192, 400 * lines)))
            return b"\n".join(f.read().splitlines()[-lines:]).decode(errors="replace")
    except OSError:
        return ""


@dataclass(frozen=True)
class AgentSpec:
    node: str
    netns: str
    ip: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    log_path: Path


def agent_argv(*, node: str, netns: str, enable: Sequence[str], kubeconfig: Path,
               extra: Sequence[str] = ()) -> list[str]:
    return ["ip", "netns", "exec", netns, agent_executable(), "run",
            "--enable", ",".join(enable), "--hostname-override", node,
            "--kubeconfig", str(kubeconfig), "--health-port", str(HEALTH_PORT), *extra]


class Agent:
    """One supervised agent process."""

    def __init__(self, spec: AgentSpec, *, log: Callable[[str], None] = print,
                 max_backoff: float = 10.0) -> None:
        self.spec = spec
        self.log = log
        self.max_backoff = max_backoff
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self._stop = threading.Event()
        self._hold_until = 0.0  # a requested restart keeps it down until then
        self._requested = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._supervise, name=f"agent-{spec.node}",
                                        daemon=True)

    def start(self) -> None:
        self._spawn()
        self._thread.start()

    def _spawn(self) -> None:
        # The child keeps its own copy of the descriptor; ours closes with the block.
        with open(self.spec.log_path, "ab") as logf:
            logf.write(f"--- lab: starting agent at {time.strftime('%H:%M:%S')}\n".encode())
            logf.flush()
            env = {**os.environ, **dict(self.spec.env)}
            with self._lock:
                self.proc = subprocess.Popen(list(self.spec.argv), stdin=subprocess.DEVNULL,
                                             stdout=logf, stderr=subprocess.STDOUT, env=env,
                                             start_new_session=True)
        self.log(f"event=agent_started node={self.spec.node} pid={self.proc.pid} "
                 f"log={self.spec.log_path}")

    def _supervise(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            proc = self.proc
            assert proc is not None
            started = time.monotonic()
            rc = proc.wait()
            if self._stop.is_set():
                return
            if self._requested.is_set():
                self._requested.clear()
                backoff = 1.0
                delay = max(0.0, self._hold_until - time.monotonic())
            else:
                if time.monotonic() - started > 60:
                    backoff = 1.0  # it ran a good while: this is a fresh failure
                self.log(f"event=agent_exited node={self.spec.node} pid={proc.pid} rc={rc} "
                         f"restart_in={backoff:g}s log_tail=\n{tail(self.spec.log_path)}")
                delay = backoff
                backoff = min(self.max_backoff, backoff * 2)
            if self._stop.wait(delay):
                return
            self.restarts += 1
            try:
                self._spawn()
            except OSError as exc:
                self.log(f"event=agent_spawn_failed node={self.spec.node} error={exc}")
                if self._stop.wait(backoff):
                    return

    def restart(self, signal: str = "TERM", down: float | None = None) -> None:
        """Signal the agent; the supervisor starts it again after ``down`` seconds."""
        sig = _signal(signal)
        self._hold_until = time.monotonic() + (down or 0.0)
        self._requested.set()
        with self._lock:
            proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
        self.log(f"event=agent_restart node={self.spec.node} signal={signal} "
                 f"down={down or 0:g}")

    def dump_stacks(self) -> bool:
        """Ask the agent to write its threads' stacks into its log (SIGUSR1)."""
        with self._lock:
            proc = self.proc
        if proc is None or proc.poll() is not None:
            return False
        proc.send_signal(signals.SIGUSR1)
        return True

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        with self._lock:
            proc = self.proc
        if proc is None:
            return
        # Children the agent started (gobgpd) must not outlive the lab: remember them
        # while they are still recognisably the agent's.
        children = descendants(proc.pid)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._thread.join(timeout=5)
        for pid, started in children:
            if _start_time(pid) == started:  # the same process, not a reused PID
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signals.SIGKILL)
                    self.log(f"event=agent_child_killed node={self.spec.node} pid={pid}")

    def readiness(self, timeout: float = 2.0) -> dict | str:
        """The agent's /readyz JSON, or a string saying why there is none."""
        # http.client rather than urllib: urllib would honour a proxy from the environment.
        conn = http.client.HTTPConnection(self.spec.ip, HEALTH_PORT, timeout=timeout)
        try:
            conn.request("GET", "/readyz")
            resp = conn.getresponse()
            body = resp.read()
        except OSError as exc:
            return f"readyz unreachable: {exc}"
        finally:
            conn.close()
        try:
            doc = json.loads(body)
        except ValueError:
            return f"readyz answered {resp.status} with no JSON"
        return doc if isinstance(doc, dict) else "readyz JSON is not an object"


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22: start time in clock ticks


def descendants(root: int) -> list[tuple[int, str]]:
    """(pid, start time) of every process below ``root``."""
    parent: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text()
            except OSError:
                continue
            parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: list[tuple[int, str]] = []
    frontier = [root]
    while frontier:
        pid = frontier.pop()
        for child, ppid in parent.items():
            if ppid == pid:
                started = _start_time(child)
                if started is not None:
                    found.append((child, started))
                    frontier.append(child)
    return found


def _signal(name: str) -> signals.Signals:
    name = name.upper()
    try:
        return signals.Signals[name if name.startswith("SIG") else "SIG" + name]
    except KeyError:
        raise ValueError(f"unknown signal {name!r}") from None


def signal_gobgpd(netns: str, signal: str = "TERM") -> list[int]:
    """Send ``signal`` to every gobgpd living in ``netns``; returns their PIDs."""
    sig = _signal(signal)
    hit = []
    for pid in ns.pids_in(netns):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if comm == "gobgpd":
            try:
                os.kill(pid, sig)
                hit.append(pid)
            except ProcessLookupError:
                pass
    return hit
