"""The lab: a multi-node kube-router-py cluster on one machine."""
