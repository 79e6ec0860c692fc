"""The end-to-end tier: the lab's scenario files on a real cluster.

``--cluster kind`` (the default) creates a kind cluster from kind-config.yaml, builds the
image and loads it into the nodes, deploys daemonset/kube-router-py-all-features.yaml, waits
for the DaemonSet, runs the scenarios through the runner's kind backend, and deletes the
cluster. Without Docker or kind it skips, saying which is missing.

``--cluster lab`` runs the same scenarios on the lab (``kube-router-py lab run``), which is
how CI exercises this suite.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KIND_NAME = "kube-router-py-e2e"
IMAGE = "kube-router-py:e2e"
MANIFEST = ROOT / "daemonset" / "kube-router-py-all-features.yaml"
BIRD = "kube-router-py-e2e-bird"  # the container_name in docker-compose.yml
PEER_ASN = 64513
CLUSTER_ASN = 64512
#: The kind cluster's service range (kind-config.yaml), the manifest's %SERVICECIDR%.
SERVICE_CIDR = "10.1.0.0/16"
DAEMONSET_TIMEOUT = 300.0


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--cluster", choices=("kind", "lab"), default="kind",
                     help="where the end-to-end scenarios run: a kind cluster (default) or "
                          "the lab")


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


# -- the lab ---------------------------------------------------------------------------------


def lab_problem() -> str | None:
    try:
        from kube_router_lab import guest
    except ImportError as exc:
        return f"kube-router-py-lab is not installed: {exc}"
    return guest.unavailable()


def run_on_lab(path: Path, tmp: Path) -> dict[str, Any]:
    """``kube-router-py lab run PATH``: the lab backend, inside the lab's kernel."""
    script = Path(sys.executable).parent / "kube-router-py"
    report = tmp / "report.json"
    proc = subprocess.run([str(script), "lab", "run", str(path), "--report", str(report)],
                          cwd=ROOT, capture_output=True, text=True, timeout=1800, check=False)
    if not report.exists():
        return {"scenario": path.name, "passed": False, "steps": [],
                "error": f"no report (exit {proc.returncode})",
                "transcript": (proc.stdout + proc.stderr)[-20000:]}
    data = json.loads(report.read_text())
    data["transcript"] = (proc.stdout + proc.stderr)[-20000:]
    return data


# -- kind --------------------------------------------------------------------------------------


def kind_problem() -> str | None:
    for tool in ("docker", "kind"):
        if not shutil.which(tool):
            return f"{tool} is not installed: the kind end-to-end run needs Docker and kind"
    proc = subprocess.run(["docker", "info"], capture_output=True, text=True, check=False)
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return f"no Docker engine answers (docker info: {last})"
    return None


def _check(argv: list[str], timeout: float = 900) -> str:
    _say("$ " + " ".join(argv))
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr[-2000:]}")
    return proc.stdout


def node_address(container: str) -> str:
    return _check(["docker", "inspect", "-f",
                   "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
                   container]).split()[0]


def deployment_docs(apiserver: str, manifest: Path = MANIFEST,
                    extra: dict[str, str] | None = None) -> list[dict]:
    """The manifest as a user deploys it (sed on its placeholders), with the image built
    here; --run-firewall off when this checkout has no firewall plugin."""
    text = manifest.read_text().replace("%APISERVER%", apiserver)
    text = text.replace("%SERVICECIDR%", SERVICE_CIDR)
    for key, value in (extra or {}).items():
        text = text.replace(key, value)
    if not any(ROOT.glob("plugins/firewall*")):
        _say("no firewall plugin in this checkout: --run-firewall=false")
        text = text.replace("--run-firewall=true", "--run-firewall=false")
    docs = [d for d in yaml.safe_load_all(text) if d]
    for doc in docs:
        if doc["kind"] == "DaemonSet":
            pod = doc["spec"]["template"]["spec"]
            for c in [*pod.get("initContainers", []), *pod["containers"]]:
                c["image"] = IMAGE
                c["imagePullPolicy"] = "Never"  # loaded into the nodes by kind
    return docs


def wait_daemonset(api: Any, timeout: float = DAEMONSET_TIMEOUT) -> None:
    from kubernetes import client

    apps = client.AppsV1Api(api)
    deadline = time.monotonic() + timeout
    while True:
        st = apps.read_namespaced_daemon_set_status("kube-router-py", "kube-system").status
        want = st.desired_number_scheduled or 0
        _say(f"daemonset kube-router-py: {st.number_ready or 0}/{want} ready")
        if want and st.number_ready == want and st.updated_number_scheduled == want:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the DaemonSet was not ready after {timeout:g}s")
        time.sleep(5)


class Kind:
    """The kind cluster the session made, and how to deploy onto it."""

    def __init__(self, kubeconfig: Path) -> None:
        from kubernetes import config as kconfig

        self.kubeconfig = kubeconfig
        self.api = kconfig.new_client_from_config(config_file=str(kubeconfig))
        self.apiserver = f"https://{node_address(f'{KIND_NAME}-control-plane')}:6443"

    def docs(self, manifest: str, extra: dict[str, str] | None = None) -> list[dict]:
        """A manifest of daemonset/, substituted for this cluster."""
        return deployment_docs(self.apiserver, ROOT / "daemonset" / manifest, extra)

    def deploy(self, docs: list[dict]) -> None:
        from kubernetes import dynamic

        dyn = dynamic.DynamicClient(self.api)
        for doc in docs:
            meta = doc["metadata"]
            dyn.resources.get(api_version=doc["apiVersion"], kind=doc["kind"]).server_side_apply(
                body=doc, name=meta["name"], namespace=meta.get("namespace"),
                field_manager="kube-router-py-e2e", force_conflicts=True)
        wait_daemonset(self.api)


@pytest.fixture(scope="session")
def kind_cluster() -> Iterator[Kind]:
    problem = kind_problem()
    if problem:
        pytest.skip(problem)
    with tempfile.TemporaryDirectory(prefix="kube-router-py-e2e-") as tmp:
        kubeconfig = Path(tmp) / "kubeconfig"
        _check(["docker", "build", "-t", IMAGE, str(ROOT)], timeout=1800)
        _check(["kind", "create", "cluster", "--name", KIND_NAME, "--config",
                str(ROOT / "kind-config.yaml"), "--kubeconfig", str(kubeconfig)])
        try:
            _check(["kind", "load", "docker-image", IMAGE, "--name", KIND_NAME])
            kind = Kind(kubeconfig)
            kind.deploy(deployment_docs(kind.apiserver))
            yield kind
        finally:
            subprocess.run(["kind", "delete", "cluster", "--name", KIND_NAME], check=False,
                           capture_output=True)


def run_on_kind(kind: Kind, path: Path) -> dict[str, Any]:
    """The runner's kind backend: the same runner, steps and report as the lab's."""
    from kube_router_lab.backend import execute
    from kube_router_lab.kind import KindCluster
    from kube_router_lab.runner import Runner
    from kube_router_lab.scenario import load_scenario

    scenario = load_scenario(path)
    backend = KindCluster(scenario.cluster, kubeconfig=str(kind.kubeconfig),
                          log=lambda m: _say(f"  kind: {m}"))
    return execute(backend, Runner(scenario, backend).run, name=scenario.name, say=_say)


@pytest.fixture(scope="session")
def cluster_kind(request: pytest.FixtureRequest) -> str:
    return request.config.getoption("--cluster")


@pytest.fixture
def run_scenario(request: pytest.FixtureRequest, cluster_kind: str,
                 tmp_path: Path) -> Callable[[Path], dict[str, Any]]:
    """``run_scenario(path)``: the scenario's report from the selected cluster."""
    if cluster_kind == "lab":
        problem = lab_problem()
        if problem:
            pytest.skip(problem)
        return lambda path: run_on_lab(path, tmp_path)
    kind = request.getfixturevalue("kind_cluster")
    return lambda path: run_on_kind(kind, path)


# -- containers beside the cluster (pytest-docker) -------------------------------------------


@pytest.fixture(scope="session")
def docker_compose_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    os.environ["BIRD_CONF_DIR"] = str(tmp_path_factory.mktemp("bird"))
    return str(Path(__file__).resolve().parent / "docker-compose.yml")


@pytest.fixture(scope="session")
def docker_compose_project_name() -> str:
    return KIND_NAME


class BirdPeer:
    """BIRD in its container on kind's network, peering with every node."""

    def __init__(self, kind: Kind) -> None:
        self.kind = kind
        self.ip = node_address(BIRD)

    def start(self, node_ips: list[str]) -> None:
        from kube_router_lab.peers import bird_config

        conf = Path(os.environ["BIRD_CONF_DIR"]) / "bird.conf"
        conf.write_text(bird_config(ip=self.ip, asn=PEER_ASN, node_ips=node_ips,
                                    cluster_asn=CLUSTER_ASN, log_file=Path("/tmp/bird.log")))
        _check(["docker", "exec", BIRD, "bird", "-c", "/etc/bird-e2e/bird.conf"])

    def routes(self) -> str:
        return subprocess.run(["docker", "exec", BIRD, "birdc", "show", "route"],
                              capture_output=True, text=True, check=False).stdout


@pytest.fixture
def bird_peer(request: pytest.FixtureRequest, cluster_kind: str) -> Iterator[BirdPeer]:
    """The agents redeployed with the external-peer manifest pointing at BIRD; the plain
    manifest again afterwards."""
    if cluster_kind == "lab":
        pytest.skip("on the lab, BIRD peers are the lab's own: "
                    "tests/lab/scenarios/router-external-bird.yaml")
    kind: Kind = request.getfixturevalue("kind_cluster")
    request.getfixturevalue("docker_services")
    peer = BirdPeer(kind)
    try:
        yield peer
    finally:
        kind.deploy(deployment_docs(kind.apiserver, MANIFEST))
