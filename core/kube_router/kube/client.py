"""Building the Kubernetes API client from the agent's flags.

The order follows kube-router: an explicit ``--kubeconfig`` wins (``--master`` then only
overrides its server address); ``--master`` alone talks to that address without credentials;
with neither, the pod's service account (in-cluster config) is used, and outside a cluster
the usual ``$KUBECONFIG`` or ``~/.kube/config``.

Only the client's connection machinery (TLS, credentials, connection pool) is used: the
informers send their own requests and decode the JSON themselves.
"""

from __future__ import annotations

import os
from pathlib import Path

import kubernetes.client
from kubernetes.config import ConfigException
from kubernetes.config import load_incluster_config
from kubernetes.config import load_kube_config


def load_client(kubeconfig: str | None, master: str | None) -> kubernetes.client.ApiClient:
    """Return an ApiClient for the cluster named by the flags.

    Raises :class:`kubernetes.config.ConfigException` with a one-line reason when no
    configuration can be found or the given one cannot be read.
    """
    cfg = kubernetes.client.Configuration()
    if kubeconfig:
        if not Path(kubeconfig).is_file():
            raise ConfigException(f"kubeconfig file {kubeconfig} does not exist")
        load_kube_config(config_file=kubeconfig, client_configuration=cfg, persist_config=False)
    elif not master:
        try:
            load_incluster_config(client_configuration=cfg)
        except ConfigException as exc:
            fallback = _default_kubeconfig()
            if fallback is None:
                raise ConfigException(
                    "no --kubeconfig or --master given, not running in a cluster "
                    f"({exc}), and no default kubeconfig found"
                ) from None
            load_kube_config(
                config_file=str(fallback), client_configuration=cfg, persist_config=False
            )
    if master:
        cfg.host = master.rstrip("/")
    return kubernetes.client.ApiClient(configuration=cfg)


def _default_kubeconfig() -> Path | None:
    for candidate in (os.environ.get("KUBECONFIG", "").split(os.pathsep)[0],
                      str(Path.home() / ".kube" / "config")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None
