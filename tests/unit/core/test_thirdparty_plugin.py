"""A plugin that is not ours, installed as its own distribution (tests/thirdparty), is found
through its entry point, adds a flag, and receives Service events from the embedded API
server through the real agent process."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from kube_router_lab.apiserver import ApiServer
from kube_router_lab.apiserver import ApiStore
from kube_router_lab.versions import make_token
from kube_router_lab.versions import unsynced_reason

KRP = str(Path(sys.executable).with_name("kube-router-py"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(cond, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _readyz(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return json.load(r)
    except urllib.error.HTTPError as exc:
        return json.load(exc)
    except OSError:
        return None


def _service(name, ip):
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"clusterIP": ip, "ports": [{"port": 80, "protocol": "TCP"}]}}


@pytest.fixture
def api(tmp_path):
    store = ApiStore()
    server = ApiServer(store, "127.0.0.1", 0, bookmark_interval=0.2)
    server.start()
    yield store, server.write_kubeconfig(tmp_path / "kubeconfig")
    server.stop()


def test_a_third_party_plugin_gets_service_events_through_the_bus(api, tmp_path):
    store, kubeconfig = api
    store.create(_service("before", "10.96.0.10"))
    record = tmp_path / "events.txt"
    record.touch()
    port = _free_port()
    agent = subprocess.Popen(
        [KRP, "run", "--enable", "hello", "--kubeconfig", str(kubeconfig),
         "--hello-record", str(record), "--hostname-override", "node-0",
         "--health-addr", "127.0.0.1", "--health-port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "NODE_NAME": "ignored"},
    )
    try:
        _wait(lambda: "ADDED default/before" in record.read_text(), what="initial list")
        store.create(_service("after", "10.96.0.11"))
        store.patch("Service", "default", "after", {"metadata": {"labels": {"x": "y"}}})
        store.delete("Service", "default", "before")
        _wait(lambda: "DELETED default/before" in record.read_text(), what="live events")
        lines = record.read_text().splitlines()
        assert lines == ["ADDED default/before", "ADDED default/after",
                         "MODIFIED default/after", "DELETED default/before"]

        # /readyz reports, kind by kind, the version the controller applied; the store that
        # issued the versions places it against its newest change (the test never orders
        # versions itself).
        want = make_token(store.last_changes())
        state = _wait(lambda: (s := _readyz(port)) and s["ready"] and unsynced_reason(
            s, want, store.placed) is None and s, what=f"readyz at {want}")
        assert set(state["controllers"]["hello"]["resourceVersions"]) == {"Service"}
        assert state["node"] == "node-0"
        assert state["informers"]["Service"]["objects"] == 1

        status = subprocess.run(
            [KRP, "status", "--enable", "hello", "--hostname-override", "node-0",
             "--health-port", str(port)], capture_output=True, text=True, timeout=30)
        assert status.returncode == 0, status.stderr
        assert "agent on node-0" in status.stdout and "ready: yes" in status.stdout
        hello_row = next(line.split() for line in status.stdout.splitlines()
                         if line.startswith("hello "))
        assert hello_row[:2] == ["hello", "yes"]
        assert hello_row[2].startswith("Service=")
    finally:
        agent.send_signal(signal.SIGTERM)
        out, _ = agent.communicate(timeout=20)
    assert agent.returncode == 0, out
    assert "agent stopped node=node-0" in out
