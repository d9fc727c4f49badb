"""The local API balancer on the workers of a cluster with several control planes (docs/ha.md).

In an HA cluster every node's /etc/hosts sends the stable API name to 127.0.0.1. A master's own kube-apiserver
answers there; a worker runs the distribution's HAProxy (a systemd service) listening on 127.0.0.1:6443 and
forwarding, as plain TCP, to every master whose API server reports ready (`GET /readyz`). Kubespray calls this
"localhost load balancing"; it needs no extra address, so it works on Tart's shared NAT (where an ARP VIP
reportedly does not, reference/k8s-bootstrap.md §3 ❓) and on the QEMU lab network alike.

The config lists the masters by their current addresses: an address change of a master costs a reload on the
workers, nothing else (the hosts lines and Cilium's k8sServiceHost keep naming 127.0.0.1 / the stable name).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import CommandError, StepError
from ..render import render, script
from . import API_PORT, endpoint_host, node_address

if TYPE_CHECKING:
    from ..model import Cluster, Node

HAPROXY_CFG = "/etc/haproxy/haproxy.cfg"  # the Ubuntu/Debian package's config file (its unit reads it)
PACKAGE = "haproxy"
EXIT_NOT_INSTALLED = 12  # templates/node/haproxy.sh.j2


def haproxy_config(cluster: Cluster, node: Node, masters: list[tuple[str, str]]) -> str:
    """The haproxy.cfg of `node`: `masters` is [(name, address)] in clusters.json order, one backend server each."""
    servers = [{"name": name, "address": address} for name, address in masters]
    return render("node/haproxy.cfg.j2", cluster=cluster.name, node=node.name,
                  endpoint_host=endpoint_host(cluster.name), port=API_PORT, servers=servers)


def master_addresses(ctx, cluster: Cluster) -> list[tuple[str, str]]:
    """[(name, current address)] of every master. Raises CannotCheck when one has no address (its VM is off): the
    config must list every member, and a guessed address would send connections nowhere."""
    return [(m.name, node_address(ctx, m)) for m in cluster.masters]


def _script(ctx, cluster: Cluster, node: Node, probe: bool):
    config = haproxy_config(cluster, node, master_addresses(ctx, cluster))
    return script("endpoint.haproxy-probe" if probe else "endpoint.haproxy", "node/haproxy.sh.j2",
                  cluster=cluster.name, node=node.name, config=config, config_path=HAPROXY_CFG, probe=probe)


def problem(ctx, cluster: Cluster, node: Node) -> str | None:
    """Read-only: why the balancer on worker `node` is not as labctl renders it now (not installed, another config,
    the service not enabled or not running), or None."""
    out = ctx.transport(node.name).run(_script(ctx, cluster, node, probe=True), sudo=True, timeout=60).stdout
    seen = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    if seen.get("installed") != "yes":
        return f"{node.name}: haproxy (the local API balancer) is not installed"
    if seen.get("config") != "same":
        return f"{node.name}: {HAPROXY_CFG} is {seen.get('config', 'unreadable')} (want one server per master)"
    if seen.get("active") != "active" or seen.get("enabled") != "enabled":
        return (f"{node.name}: haproxy.service is {seen.get('active') or 'unknown'}, "
                f"{seen.get('enabled') or 'unknown'} (want active, enabled)")
    return None


def ensure(ctx, cluster: Cluster, node: Node) -> str | None:
    """Put labctl's config on worker `node`, enable and (re)start or reload haproxy. Returns what changed or None.
    Raises StepError naming the node when haproxy is missing or refuses the config."""
    try:
        out = ctx.transport(node.name).run(_script(ctx, cluster, node, probe=False), sudo=True, timeout=120).stdout
    except CommandError as exc:
        if exc.returncode == EXIT_NOT_INSTALLED:
            raise StepError(f"{node.name}: haproxy is not installed, so this worker cannot reach the API of "
                            f"{cluster.name} through its local balancer\n{exc.tail}",
                            hint=f"`labctl install --cluster {cluster.name} --from kubepkgs` installs it") from exc
        raise
    finally:
        ctx.invalidate(node.name)
    return f"{node.name}: haproxy balances the API over {len(cluster.masters)} masters" if "changed" in out.split() \
        else None
