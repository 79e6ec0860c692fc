"""Building the Kubernetes API client from the agent's flags.

The order follows kube-router: an explicit ``--kubeconfig`` wins (``--master`` then only
overrides its server address); otherwise the pod's service account (in-cluster config) is
used, with ``--master`` replacing the address it names; outside a cluster ``--master`` alone
talks to that address without credentials, and with neither flag the usual ``$KUBECONFIG``
or ``~/.kube/config`` is read.

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
    else:
        try:
            load_incluster_config(client_configuration=cfg)
        except ConfigException as exc:
            # With --master alone, talk to it without credentials (as kube-router does);
            # with nothing at all, fall back to the usual kubeconfig locations.
            fallback = None if master else _default_kubeconfig()
            if fallback is not None:
                load_kube_config(
                    config_file=str(fallback), client_configuration=cfg, persist_config=False
                )
            elif not master:
                raise ConfigException(
                    "no --kubeconfig or --master given, not running in a cluster "
                    f"({exc}), and no default kubeconfig found"
                ) from None
    if master:
        _pin_host(cfg, master.rstrip("/"))
    return kubernetes.client.ApiClient(configuration=cfg)


def _pin_host(cfg: kubernetes.client.Configuration, host: str) -> None:
    """Make ``host`` the server for good.

    The credential loaders install a token refresh hook (run by every ``auth_settings()``
    call, so before each request) that writes their whole configuration back, server
    address included: in a pod that is ``KUBERNETES_SERVICE_HOST``, the very Service the
    proxy is meant to program. The hook is wrapped so the address given stays; the
    loaders' hook installs itself again each time it runs, so the wrapper does too.
    """
    cfg.host = host
    refresh = cfg.refresh_api_key_hook
    if refresh is None:
        return

    def refresh_keeping_host(conf: kubernetes.client.Configuration) -> None:
        refresh(conf)
        conf.host = host
        conf.refresh_api_key_hook = refresh_keeping_host

    cfg.refresh_api_key_hook = refresh_keeping_host


def _default_kubeconfig() -> Path | None:
    for candidate in (os.environ.get("KUBECONFIG", "").split(os.pathsep)[0],
                      str(Path.home() / ".kube" / "config")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None
