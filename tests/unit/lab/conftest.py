"""An embedded API server and an official-client configuration pointing at it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes import config

from kube_router_lab.apiserver import ApiServer
from kube_router_lab.apiserver import ApiStore


@pytest.fixture
def store() -> ApiStore:
    return ApiStore()


@pytest.fixture
def server(store: ApiStore) -> Iterator[ApiServer]:
    srv = ApiServer(store, bookmark_interval=0.2)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def api(server: ApiServer, tmp_path: Path) -> client.ApiClient:
    """A client built from the kubeconfig the server writes, as an agent would build it."""
    path = server.write_kubeconfig(tmp_path / "kubeconfig")
    return config.new_client_from_config(str(path))
