"""The DaemonSet manifests: valid Kubernetes objects once substituted, and a ClusterRole that
grants exactly what the plugins they enable declare they read."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from kube_router import ENTRY_POINT_GROUP
from kube_router import cli
from kube_router import plugins
from kube_router.kube.kinds import KINDS

ROOT = Path(__file__).resolve().parents[3]
MANIFESTS = sorted((ROOT / "daemonset").glob("*.yaml"))
#: What a user substitutes with sed, as the manifests' headers show.
VALUES = {"%APISERVER%": "https://10.0.0.1:6443", "%SERVICECIDR%": "10.96.0.0/12",
          "%PEERIP%": "192.0.2.1", "%PEERASN%": "64513"}
#: The Kubernetes version whose OpenAPI schema the manifests are checked against.
K8S_VERSION = "1.30"


def substituted(path: Path) -> list[dict]:
    text = path.read_text()
    for key, value in VALUES.items():
        text = text.replace(key, value)
    left = set(re.findall(r"%[A-Z]+%", text))
    assert not left, f"{path.name}: placeholders without a value here: {sorted(left)}"
    return [d for d in yaml.safe_load_all(text) if d]


def by_kind(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def image_plugins() -> dict[str, str]:
    """Entry point name -> distribution of the plugins the image installs (plugins/*)."""
    out = {}
    for pyproject in sorted(ROOT.glob("plugins/*/pyproject.toml")):
        text = pyproject.read_text()
        dist = re.search(r'^name\s*=\s*"([^"]+)"', text, re.MULTILINE).group(1)
        section = text.split(f'[project.entry-points."{ENTRY_POINT_GROUP}"]', 1)[1]
        section = section.split("\n[", 1)[0]
        for name in re.findall(r"^([\w-]+)\s*=", section, re.MULTILINE):
            out[name] = dist
    return out


def test_there_are_the_four_deployments() -> None:
    names = {p.name for p in MANIFESTS}
    assert {"kube-router-py-all-features.yaml", "kube-router-py-service-proxy.yaml",
            "kube-router-py-router-firewall.yaml",
            "kube-router-py-all-features-external-peer.yaml"} <= names


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_object_validates_against_the_openapi_schema(path: Path) -> None:
    for doc in substituted(path):
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.name}: {doc['kind']} {doc['metadata']['name']}: {exc.message}"
                        f" at {'.'.join(map(str, exc.path))}")


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_the_daemonset_runs_as_the_seed_asks(path: Path) -> None:
    docs = substituted(path)
    ds = by_kind(docs, "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    sa = by_kind(docs, "ServiceAccount")["metadata"]["name"]
    binding = by_kind(docs, "ClusterRoleBinding")
    assert pod["serviceAccountName"] == sa
    assert binding["roleRef"]["name"] == by_kind(docs, "ClusterRole")["metadata"]["name"]
    assert {"kind": "ServiceAccount", "name": sa,
            "namespace": ds["metadata"]["namespace"]} in binding["subjects"]
    assert pod["hostNetwork"] is True
    assert pod["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in pod["tolerations"]
    (agent,) = pod["containers"]
    port = next(int(a.split("=", 1)[1]) for a in agent["args"]
                if a.startswith("--health-port="))
    assert agent["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
    assert agent["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
    mounts = {m["mountPath"]: m["name"] for m in agent["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    wanted = ["/lib/modules", "/run/xtables.lock"]
    if "router" in enabled_plugins(agent["args"]):
        wanted.append("/etc/cni/net.d")
        (init,) = pod["initContainers"]
        cm = by_kind(docs, "ConfigMap")
        conflist = next(iter(cm["data"].values()))
        assert '"kube-bridge"' in conflist
        init_mounts = {m["mountPath"] for m in init["volumeMounts"]}
        assert {"/opt/cni/bin", "/etc/cni/net.d"} <= init_mounts
    for where in wanted:
        assert where in mounts, f"{path.name}: {where} not mounted"
        assert volumes[mounts[where]]["hostPath"]["path"] == where


def enabled_plugins(args: list[str]) -> set[str]:
    """The plugins the image runs with these flags: every one in plugins/, plus those a
    --run-* switch turns on, less those it turns off (kube_router.cli.RUN_ALIASES). A plugin
    switched on that this checkout lacks is in the set: the checks below say so."""
    names = set(image_plugins())
    for flag, name in cli.RUN_ALIASES.items():
        opt = "--" + flag.replace("_", "-")
        for a in args:
            if a.startswith(opt + "="):
                if a.split("=", 1)[1] == "false":
                    names.discard(name)
                else:
                    names.add(name)
    return names


def granted(role: dict) -> set[tuple[str, str]]:
    out = set()
    for rule in role["rules"]:
        if {"get", "list", "watch"} <= set(rule["verbs"]):
            out |= {(g, r) for g in rule["apiGroups"] for r in rule["resources"]}
    return out


def group_resource(kind: str) -> tuple[str, str]:
    """``/apis/discovery.k8s.io/v1/endpointslices`` -> (discovery.k8s.io, endpointslices)."""
    parts = KINDS[kind].path.strip("/").split("/")
    return ("", parts[2]) if parts[0] == "api" else (parts[1], parts[3])


def declared_reads(names: set[str]) -> tuple[dict[str, set[str]], list[str]]:
    """The declared reads of each of these plugins installed here; the names of the others."""
    pm = plugins.new_manager()
    installed = plugins.load(pm)
    reads: dict[str, set[str]] = {}
    missing = []
    for name in sorted(names):
        plugin = pm.get_plugin(name)
        if plugin is None:
            missing.append(name)
            continue
        hooks = {c.name for c in pm.get_hookcallers(plugin) or ()}
        if "kube_router_controllers" in hooks:
            assert "kube_router_api_reads" in hooks, (
                f"plugin {name!r} runs controllers but declares no kube_router_api_reads")
        impls = [i for i in pm.hook.kube_router_api_reads.get_hookimpls()
                 if i.plugin is plugin]
        kinds = set(impls[0].function() or ()) if impls else set()
        unknown = kinds - set(KINDS)
        assert not unknown, f"plugin {name!r} declares unknown kinds {sorted(unknown)}"
        reads[name] = kinds
        assert installed[name].distribution == image_plugins().get(name), (
            f"plugin {name!r} is installed here from {installed[name].distribution}, "
            f"not from plugins/")
    return reads, missing


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_the_cluster_role_grants_exactly_the_enabled_plugins_reads(
        path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    docs = substituted(path)
    args = by_kind(docs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]["args"]
    enabled = enabled_plugins(args)
    reads, missing = declared_reads(enabled)
    needed = {group_resource(k) for name in enabled if name in reads for k in reads[name]}
    have = granted(by_kind(docs, "ClusterRole"))
    assert needed <= have, f"{path.name}: not granted: {sorted(needed - have)}"
    unchecked = sorted(missing)
    if unchecked:
        with capsys.disabled():
            print(f"\n{path.name}: plugins {unchecked} are not installed here; the grants "
                  f"they need are not checked")
        return
    assert have == needed, f"{path.name}: granted beyond the plugins' reads: " \
                           f"{sorted(have - needed)}"


def test_image_plugins_are_the_entry_points_installed() -> None:
    eps = {ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    assert {"proxy", "router"} <= set(image_plugins()) <= eps | {"firewall"}
