#!/bin/sh
# The image's entry point: make the iptables commands in the container the backend the
# host already uses (the agent's own detection, legacy or nft), so that what operators run
# with `kubectl exec ... iptables` and what the agent writes are the same tables; then run
# the agent with that backend fixed.
set -e
backend=$(python -c 'from kube_router.linux.iptables import backend; print(backend())')
for t in iptables ip6tables; do
    if [ -x "/usr/sbin/$t-$backend" ]; then
        update-alternatives --quiet --set "$t" "/usr/sbin/$t-$backend"
    fi
done
export KUBE_ROUTER_IPTABLES="$backend"
exec kube-router-py "$@"
