"""The lab's embedded Kubernetes API: an in-memory object store and an HTTP front end."""
