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


# --master must survive the client's token refresh: the informers call auth_settings()
# before every request, and the credential loaders' refresh hook writes their own server
# address back into the configuration.

def test_master_survives_token_refresh_with_a_kubeconfig(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG)
    api = load_client(str(path), "https://192.0.2.10:6443")
    for _ in range(2):
        assert api.configuration.auth_settings()["BearerToken"]["value"] == "Bearer secret-token"
        assert api.configuration.host == "https://192.0.2.10:6443"


def _in_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Service account files and environment as the kubelet gives them to a pod."""
    from kubernetes.config import incluster_config

    (tmp_path / "token").write_text("pod-token")
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(tmp_path / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(tmp_path / "ca.crt"))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")


def test_in_cluster_credentials_talk_to_master(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _in_cluster(tmp_path, monkeypatch)
    api = load_client(None, "https://192.0.2.10:6443")
    for _ in range(2):
        auth = api.configuration.auth_settings()["BearerToken"]
        assert auth["value"].lower() == "bearer pod-token"
        assert api.configuration.host == "https://192.0.2.10:6443"
    assert api.configuration.ssl_ca_cert == str(tmp_path / "ca.crt")


def test_in_cluster_without_master_uses_the_service(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _in_cluster(tmp_path, monkeypatch)
    api = load_client(None, None)
    api.configuration.auth_settings()
    assert api.configuration.host == "https://10.96.0.1:443"
