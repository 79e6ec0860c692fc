"""BGP pod routing for kube-router-py: gobgpd, learned routes in the kernel, CNI config."""
