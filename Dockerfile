# The agent's image: the core, every plugin, and the kernel tools they call.
FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends iproute2 ipvsadm ipset iptables conntrack \
        gobgpd golang-github-osrg-gobgp-dev containernetworking-plugins kmod util-linux \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN pip install --no-cache-dir grpcio-tools . plugins/proxy_ipvs plugins/routing_bgp \
        plugins/scheduler_annotations \
 && python -m kube_router_routing_bgp.gobgp_api --generate
ENTRYPOINT ["kube-router-py"]
