"""What a lab registry (the `registry` or `harbor` stack) looks like to containerd on the nodes: its stable name and
port, the hosts.toml that maps them to the registry cluster's nodes, and whether the lab has one at all (then the
runtime phase sets `config_path`). The hook that writes the files is labctl/stack_hooks_registry.py; this module
imports nothing of the hooks, so the runtime phase can use it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .kube import DOMAIN

if TYPE_CHECKING:
    from .model import Lab
    from .stacks import StackDef

CERTS_D = "/etc/containerd/certs.d"  # containerd docs/hosts.md: the directory config_path names
HOOK = "registry-hosts"
SCRIPT_TIMEOUT = 60  # seconds: two small files


def lab_has_registry(lab: Lab) -> bool:
    """Does any cluster of the lab declare a stack with this hook (registry, harbor)? Then every node's containerd
    needs `config_path` (runtime phase)."""
    from . import stacks as S

    catalogue = S.catalogue()
    return any(HOOK in catalogue[name].hooks for c in lab.clusters for name in c.stack_names if name in catalogue)


def registry_host(cluster: str, stack: StackDef) -> tuple[str, int]:
    """(stable name, NodePort) of a registry stack on `cluster`, e.g. ("platform-registry.labctl.internal", 30500):
    what image references name (`<name>:<port>/<repo>:<tag>`) and what hosts.toml's directory is called."""
    return f"{cluster}-{stack.name}.{DOMAIN}", next(iter(stack.node_ports.values()))


def hosts_toml(name: str, port: int, addresses: list[str]) -> str:
    """containerd's hosts.toml for `name:port` (format: containerd docs/hosts.md): each address is a `[host]` tried in
    order, over plain HTTP (the `http://` scheme; the registry has no TLS), then `server`, the name itself."""
    lines = [f"# Written by labctl: the lab registry {name}:{port} at the NodePort of its cluster's nodes.",
             f'server = "http://{name}:{port}"']
    for address in addresses:
        lines += ["", f'[host."http://{address}:{port}"]', '  capabilities = ["pull", "resolve", "push"]']
    return "\n".join(lines)
