"""Talking to the Kubernetes API: client config, slim records, informers and stores."""
