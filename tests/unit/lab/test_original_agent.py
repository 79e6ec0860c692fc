"""`cluster: {agent: kube-router}`: the key is checked, the original gets the flags that
match what the scenario enables, a CNI file to fill in, and is judged idle by its log."""

from __future__ import annotations

import http.server
import json
import threading
import time
from pathlib import Path

import pytest

from kube_router_lab import original
from kube_router_lab.kubelet import conf_ready
from kube_router_lab.kubelet import load_conf
from kube_router_lab.spec import SpecError
from kube_router_lab.spec import parse_cluster


def test_agent_key() -> None:
    assert parse_cluster({}).agent == "kube-router-py"
    assert parse_cluster({"agent": "kube-router"}).agent == "kube-router"
    with pytest.raises(SpecError, match=r"cluster\.agent"):
        parse_cluster({"agent": "kube-proxy"})


def test_flags_follow_enable(tmp_path: Path) -> None:
    argv = original.argv(node="node-1", netns="lab-node-1", enable=["proxy", "router"],
                         kubeconfig=tmp_path / "kc", service_cidr="10.1.0.0/16",
                         health_port=20244, extra=["--peer-router-ips", "192.168.10.50"])
    assert argv[:4] == ["ip", "netns", "exec", "lab-node-1"]
    assert argv[4] == str(original.binary())
    assert {"--run-service-proxy=true", "--run-router=true",
            "--run-firewall=false"} <= set(argv)
    i = argv.index("--hostname-override")
    assert argv[i + 1] == "node-1"
    assert argv[argv.index("--service-cluster-ip-range") + 1] == "10.1.0.0/16"
    assert argv[-2:] == ["--peer-router-ips", "192.168.10.50"]


def test_cni_template_waits_for_the_pod_cidr(tmp_path: Path) -> None:
    path = original.write_cni_template(tmp_path, tmp_path / "ipam")
    conf = load_conf(tmp_path)
    assert conf is not None and not conf_ready(conf)  # the kubelet waits for the agent
    doc = json.loads(path.read_text())
    doc["plugins"][0]["ipam"]["ranges"] = [[{"subnet": "10.2.1.0/24"}]]
    path.write_text(json.dumps(doc))
    assert conf_ready(load_conf(tmp_path))


def test_legacy_iptables_names(tmp_path: Path) -> None:
    bindir = original.legacy_iptables_dir(tmp_path)
    assert (bindir / "iptables-restore").readlink() == Path("/usr/sbin/iptables-legacy-restore")
    assert original.legacy_iptables_dir(tmp_path) == bindir  # a second call is harmless
    env = dict(original.env(workdir=tmp_path, cni_file=tmp_path / "c"))
    assert env["PATH"].startswith(f"{bindir}:")
    assert env["KUBE_ROUTER_CNI_CONF_FILE"] == str(tmp_path / "c")


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args: object) -> None:
        pass


def test_quiet_needs_health_and_a_silent_log(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(original, "QUIET", 0.3)
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        log = tmp_path / "agent.log"
        quiet = original.Quiet(log, "127.0.0.1", server.server_address[1])
        assert quiet.reason("5") == "no log yet"
        log.write_text("I1207 sync ipvs services took 1s\n")
        assert "log active" in quiet.reason("5")
        time.sleep(0.35)
        assert quiet.reason("5") is None
        with log.open("a") as f:
            f.write("I1207 Received update to EndpointSlice\n")
        assert "log active" in quiet.reason("5")  # a new line starts the window again
        time.sleep(0.35)
        assert quiet.reason("6") is not None  # a new wait starts its own window
        _Health.status = 500
        time.sleep(0.35)
        assert quiet.reason("6").startswith("healthz 500")
    finally:
        _Health.status = 200
        server.shutdown()
        server.server_close()


def test_service_defaults_as_a_real_api_server() -> None:
    from kube_router_lab.api.store import ApiStore
    from kube_router_lab.controllers import ClusterControllers

    store = ApiStore()
    ClusterControllers(store, parse_cluster({}), log=lambda _m: None).install_admission()
    store.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})
    svc = store.create({"apiVersion": "v1", "kind": "Service",
                        "metadata": {"name": "s", "namespace": "default"},
                        "spec": {"type": "NodePort", "sessionAffinity": "ClientIP",
                                 "ports": [{"port": 80}]}})["spec"]
    assert svc["internalTrafficPolicy"] == "Cluster"
    assert svc["externalTrafficPolicy"] == "Cluster"
    assert svc["ipFamilies"] == ["IPv4"] and svc["ipFamilyPolicy"] == "SingleStack"
    assert svc["sessionAffinityConfig"] == {"clientIP": {"timeoutSeconds": 10800}}
