"""labctl: one clusters.json to a running multi-cluster Kubernetes lab on Tart VMs."""

__version__ = "0.1.0"
