"""registry-hosts: make a lab registry (the `registry` or `harbor` stack) pullable from every node of every cluster.

The predecessor wrote hosts.toml but containerd 1.7 ignored it (its default `config_path` is empty) and pointed it at
a port nothing listened on. Here two parts work together:

- the runtime phase sets containerd's registry `config_path` to /etc/containerd/certs.d on every node of a lab that
  declares a registry (`lab_has_registry`), at the path of the node's own config layout;
- this hook writes, on every node of every cluster of the lab, `/etc/containerd/certs.d/<name>:<port>/hosts.toml`
  for the registry's stable name (`<cluster>-<stack>.labctl.internal:<NodePort>`), listing every node of the
  registry's cluster as a plain-HTTP host, and an /etc/hosts line giving that name the first of those addresses
  (Harbor's token service sends clients to its externalURL, which is that name).

containerd reads hosts.toml at each pull, so nothing restarts ("Updates under this directory do not require
restarting the containerd daemon", containerd docs/hosts.md). Addresses change when a VM restarts: the stackhooks
phase re-runs this hook at `labctl boot`, and every `install` of the registry's cluster checks it on every running
node of the lab, so a cluster or a node added later gets the files on the next `labctl install` (its `cross_cluster`
makes the registry's step wait for the other clusters' CNI, i.e. for their nodes).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from .registry_hosts import CERTS_D, HOOK, SCRIPT_TIMEOUT, hosts_toml, registry_host
from .remote.facts import HOSTS, HOSTS_LOCK
from .stack_hooks import Hook

if TYPE_CHECKING:
    from .context import Context
    from .model import Cluster, Node
    from .stacks import StackDef


def _addresses(ctx: Context, cluster: Cluster) -> list[str]:
    """The registry cluster's node addresses, workers first (a NodePort answers on every node)."""
    nodes = [*cluster.workers, *cluster.masters]
    return [a for a in (ctx.address(n) for n in nodes) if a]


def _running_nodes(ctx: Context) -> list[Node]:
    """Every node of the lab whose VM has an address (a stopped or not yet created VM has none)."""
    return [n for c in ctx.lab.clusters for n in c.nodes if ctx.address(n)]


class RegistryHosts(Hook):
    """hosts.toml and /etc/hosts for the registry on every running node of the lab."""

    name = HOOK
    cross_cluster = True

    def _params(self, ctx: Context, cluster: Cluster, stack: StackDef) -> dict | None:
        addresses = _addresses(ctx, cluster)
        if not addresses:
            return None
        name, port = registry_host(cluster.name, stack)
        return {"dir": f"{CERTS_D}/{name}:{port}", "content": hosts_toml(name, port, addresses), "name": name,
                "address": addresses[0], "hosts_file": HOSTS, "hosts_lock": HOSTS_LOCK, "cluster": cluster.name,
                "stack": stack.name}

    def _run(self, ctx: Context, node: Node, params: dict, apply: bool) -> str:
        from .render import script

        run = script("registry.hosts", "node/registry-hosts.sh.j2", apply=apply, **params)
        try:
            out = ctx.transport(node.name).run(run, sudo=True, timeout=SCRIPT_TIMEOUT).stdout.strip()
        finally:
            if apply:
                ctx.invalidate(node.name)  # its /etc/hosts is in the facts
        return out.splitlines()[-1] if out else ""

    def _each(self, ctx: Context, cluster: Cluster, stack: StackDef, apply: bool) -> list[str]:
        from .kube.client import parallel

        params = self._params(ctx, cluster, stack)
        if params is None:
            return [f"{stack.name}: no node of {cluster.name} has an address, so no node can be pointed at it"]
        nodes = _running_nodes(ctx)
        verdicts = parallel(*(partial(self._run, ctx, n, params, apply) for n in nodes))
        return [f"{n.name}: {params['name']}:{registry_host(cluster.name, stack)[1]} "
                f"{v.removeprefix('differs:').strip()} not written (or out of date)"
                for n, v in zip(nodes, verdicts) if v.startswith("differs")]

    def problems(self, ctx: Context, cluster: Cluster, stack: StackDef) -> list[str]:
        return self._each(ctx, cluster, stack, apply=False)

    def apply(self, ctx: Context, cluster: Cluster, stack: StackDef) -> None:
        self._each(ctx, cluster, stack, apply=True)
