"""Building the API client the informers use from --kubeconfig / --master."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes.config import ConfigException

from kube_router.kube.client import load_client

KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    server: http://127.0.0.1:6443
users:
- name: u
  user:
    token: secret-token
contexts:
- name: x
  context:
    cluster: c
    user: u
current-context: x
"""


def test_kubeconfig_gives_server_and_token(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG)
    api = load_client(str(path), None)
    assert api.configuration.host == "http://127.0.0.1:6443"
    auth = api.configuration.auth_settings()["BearerToken"]
    assert auth["value"] == "Bearer secret-token"


def test_master_overrides_the_kubeconfig_server(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG)
    api = load_client(str(path), "http://192.0.2.10:8080/")
    assert api.configuration.host == "http://192.0.2.10:8080"
    assert api.configuration.auth_settings()["BearerToken"]["value"] == "Bearer secret-token"


def test_master_alone_needs_no_credentials() -> None:
    api = load_client(None, "http://192.0.2.10:8080")
    assert api.configuration.host == "http://192.0.2.10:8080"
    assert "BearerToken" not in api.configuration.auth_settings()


def test_missing_kubeconfig_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigException, match="does not exist"):
        load_client(str(tmp_path / "nope"), None)


def test_nothing_configured_outside_a_cluster_is_a_clear_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ConfigException, match="no --kubeconfig or --master"):
        load_client(None, None)
