"""The lab with real agents: they start in the node namespaces, report their applied
resourceVersion on /readyz (what ``unsynced`` reads), and come back after a kill; the API
server survives a restart. Slow in the guest (each agent's Python start-up is seconds)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator

import pytest

from kube_router_lab.agents import installed_plugins
from kube_router_lab.agents import tail
from kube_router_lab.cluster import Lab
from kube_router_lab.spec import parse_cluster
from kube_router_lab.versions import make_token
from kube_router_lab.versions import parse_token

pytestmark = pytest.mark.skipif("proxy" not in installed_plugins(),
                                reason="the proxy plugin is not installed")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = Lab(parse_cluster({"nodes": 2, "enable": ["proxy"]}),
              workdir=tmp_path_factory.mktemp("lab"))
    lab.up()
    try:
        yield lab
    finally:
        lab.down()


def wait_synced(lab: Lab, timeout: float) -> dict[str, str]:
    rv = lab.resource_version()
    deadline = time.monotonic() + timeout
    pending = lab.unsynced(rv)
    while pending and time.monotonic() < deadline:
        time.sleep(0.5)
        pending = lab.unsynced(rv)
    return pending


def test_agents_sync_and_unsynced_reports_reasons(lab: Lab) -> None:
    started = time.monotonic()
    assert wait_synced(lab, 90) == {}
    print(f"agents synced {time.monotonic() - started:.1f} s after the lab was up")
    # a change the agents cannot have seen: one the store will issue 1000 changes from now
    ahead = make_token({k: str(int(v) + 1000)
                        for k, v in parse_token(lab.resource_version()).items()})
    reasons = lab.unsynced(ahead)
    assert sorted(reasons) == ["node-0", "node-1"]
    assert all(r.startswith("behind: ") and " of " in r for r in reasons.values())
    # The agent ran inside its node's namespace: its log names it.
    assert "node=node-0" in (lab.workdir / "node-0" / "agent.log").read_text()


def test_restart_agent_kill_comes_back(lab: Lab) -> None:
    agent = lab.agents["node-0"]
    assert agent.proc is not None
    old_pid = agent.proc.pid
    lab.restart("agent", node="node-0", signal="KILL", down=0.5)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (agent.proc is None or agent.proc.pid == old_pid):
        time.sleep(0.1)
    assert agent.proc is not None and agent.proc.pid != old_pid
    assert lab.unsynced(lab.resource_version()).get("node-0")  # not up yet
    assert wait_synced(lab, 90) == {}
    with pytest.raises(KeyError):
        lab.restart("agent", node="node-9")


def test_restart_apiserver_keeps_data(lab: Lab) -> None:
    url = f"http://{lab.spec.apiserver_ip()}:6443/api/v1/nodes"
    lab.restart("apiserver", down=0.5)
    rc, out, err = lab.run("node-1", ["curl", "-s", "-m", "5", url])
    assert rc == 0, err
    assert len(json.loads(out)["items"]) == 2
    lab.apply([{"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "after", "namespace": "default"},
                "spec": {"ports": [{"port": 80}]}}])
    pending = wait_synced(lab, 60)
    if pending:
        print("readyz node-0:", json.dumps(lab.agents["node-0"].readiness()), file=sys.stderr)
        print(tail(lab.workdir / "node-0" / "agent.log", 30), file=sys.stderr)
    assert pending == {}, "agents catch up after the API server restart"
