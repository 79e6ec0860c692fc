"""The real control plane for the lab: etcd, kube-apiserver, kube-controller-manager and
kube-scheduler built from their Go modules (``lab/controlplane/build.sh``), served with TLS
and RBAC, and what the lab needs around them (certificates, a client with the interface of
the embedded store, node heartbeats, the agents' service account)."""
