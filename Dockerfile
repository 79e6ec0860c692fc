# The agent's image: the core, every plugin in plugins/, the kernel tools they call, and
# the operators' tools (gobgp, ipvsadm, ipset) for `kubectl exec`.
FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends iproute2 ipvsadm ipset iptables conntrack \
        gobgpd golang-github-osrg-gobgp-dev containernetworking-plugins kmod util-linux \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY core core
COPY plugins plugins
COPY image/entrypoint.sh /usr/local/bin/kube-router-py-entrypoint
# Every plugin folder is installed (the firewall too, and any added later).
RUN pip install --no-cache-dir grpcio-tools . plugins/*/ \
 && python -m kube_router_routing_bgp.gobgp_api --generate
ENTRYPOINT ["kube-router-py-entrypoint"]
