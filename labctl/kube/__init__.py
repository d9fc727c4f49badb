"""Where a cluster's API lives, and how the host talks to it.

- `client.py`: the Kube facade (`ctx.kube(cluster)`): nodes, workload readiness, patches, Helm releases, waits.
- `kubeconfig.py`: the kubeconfigs labctl keeps in .labctl/kubeconfig/ (one per cluster, and a merged one).
- here: the API endpoint's stable name, and the plan that repairs a cluster whose nodes came back at new addresses.

Why a stable name. Tart hands out addresses by DHCP, so after a reboot a control plane may come back at another
address (reference/k8s-bootstrap.md §4); Kubernetes' maintainers say changing IPs is unsupported and to use names.
So every cluster is created with `controlPlaneEndpoint: <cluster>-api.labctl.internal:6443` (`.internal` is the
top-level domain reserved for private use, so the name can never be someone else's) and every node resolves that
name through one /etc/hosts line labctl maintains. Whatever reaches the API by that name — kubelets, kubeadm's
join discovery, kube-public/cluster-info, and Cilium's `k8sServiceHost` — survives an address change once that
line is refreshed on every node: no Helm upgrade of Cilium, no new kubelet credentials.

What still holds the address, and is what the repair fixes: the control plane's advertise address (static pod
manifests incl. etcd's URLs, the API server and etcd certificates, the controller-manager/scheduler kubeconfigs,
which point at the local API server) and every kubelet's `--node-ip`. The host itself reaches the API by address
(the Mac does not read the nodes' /etc/hosts), which the API server certificate carries as a SAN.

Nothing here imports urllib3 or PyYAML (client.py does on first use): `labctl --help` must stay fast.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ..errors import StepError

if TYPE_CHECKING:
    from ..model import Cluster, Node

API_PORT = 6443
DOMAIN = "labctl.internal"


def endpoint_host(cluster: str) -> str:
    """The stable name of a cluster's API server, e.g. `platform-api.labctl.internal`."""
    return f"{cluster}-api.{DOMAIN}"


LOCAL_API = "127.0.0.1"  # where the stable name resolves on every node of an HA cluster (docs/ha.md)


def highly_available(cluster: Cluster) -> bool:
    """Whether `cluster` has several control planes (stacked etcd members): then every node reaches the API at
    127.0.0.1 — a master its own API server, a worker its local HAProxy (docs/ha.md) — instead of one master's address."""
    return len(cluster.masters) > 1


def endpoint_address(cluster: Cluster, first_master_address: str) -> str:
    """The address a joined node's /etc/hosts gives the stable API name: the first control plane's address in a
    single-master cluster, LOCAL_API in an HA one (every master serves the API there; every worker's HAProxy
    listens there)."""
    return LOCAL_API if highly_available(cluster) else first_master_address


def endpoint(cluster: str) -> str:
    """kubeadm's controlPlaneEndpoint and Cilium's service host:port."""
    return f"{endpoint_host(cluster)}:{API_PORT}"


def api_url(address: str, port: int = API_PORT) -> str:
    """How the host reaches an API server (by address: it does not resolve the stable name)."""
    return f"https://{address}:{port}"


def host_api(ctx, cluster: Cluster, address: str) -> tuple[str, int]:
    """Where this machine reaches `cluster`'s API server, (host, port), given its first control plane's `address`:
    that address and 6443 where the host is on the VMs' network (Tart, a QEMU bridge), 127.0.0.1 and a forwarded
    port under QEMU's network lab (Provider.host_endpoint). Raises ProviderError when it is not reachable."""
    return ctx.provider.host_endpoint(cluster.masters[0], API_PORT, address)


def node_address(ctx, node: Node) -> str:
    """The node's current IPv4 address as the provider sees it (the one the host and the other nodes reach)."""
    from ..engine import CannotCheck

    if problem := ctx.provider.network_problem():
        raise CannotCheck(f"{node.name}: {problem}",
                          hint="the node phases run on it: `labctl install --only vms,prepare,runtime,kubepkgs`")
    address = ctx.address(node)
    if not address:
        raise CannotCheck(
            f"{node.name}: the VM has no IPv4 address (is it running?)",
            hint="`labctl status` shows the VMs; `labctl boot` starts stopped ones",
        )
    return address


def hosts_address(hosts_text: str | None, name: str) -> str | None:
    """The address /etc/hosts gives `name` (the first line naming it, as the resolver reads it)."""
    for line in (hosts_text or "").splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and name in fields[1:]:
            return fields[0]
    return None


# ---- address drift: facts → repair actions (pure) -------------------------------------------------------------

@dataclass(frozen=True)
class AddressProbe:
    """What a node's own files say about addresses (printed by templates/cluster/address-probe.sh.j2)."""

    node_ip: str | None = None  # --node-ip in /var/lib/kubelet/kubeadm-flags.env (None before init/join)
    advertised: str | None = None  # --advertise-address in the kube-apiserver manifest (control planes only)
    cert_ips: tuple[str, ...] = ()  # IP SANs of /etc/kubernetes/pki/apiserver.crt (control planes only)
    endpoint_ip: str | None = None  # the address /etc/hosts gives the stable API name

    @classmethod
    def parse(cls, text: str) -> AddressProbe:
        values: dict[str, str] = {}
        cert_ips: list[str] = []
        for line in text.splitlines():
            key, sep, value = line.strip().partition("=")
            if not sep or not value:
                continue
            if key == "cert_ip":
                cert_ips.append(value)
            elif key in ("node_ip", "advertised", "endpoint_ip"):
                values.setdefault(key, value)
        return cls(cert_ips=tuple(cert_ips), **values)


@dataclass(frozen=True)
class Repair:
    """One repair action on one node. `old` is None when there is nothing to rewrite (e.g. a missing hosts line)."""

    kind: Literal["hosts", "node-ip", "etcd-peer", "control-plane", "etcd-force"]
    node: str
    new: str
    old: str | None = None
    regenerate_certs: bool = False
    rejoin: bool = False  # control-plane: its etcd member is gone; it is added anew and starts from an empty data dir

    def __str__(self) -> str:
        what = {"hosts": "API endpoint in /etc/hosts", "node-ip": "kubelet --node-ip",
                "etcd-peer": "etcd member peer address", "control-plane": "control plane address",
                "etcd-force": "etcd --force-new-cluster (no quorum: a majority of the masters moved), at"}[self.kind]
        change = f"{self.old} → {self.new}" if self.old else f"→ {self.new}"
        certs = ", new API server/etcd certificates" if self.regenerate_certs else ""
        rejoin = ", etcd member added anew (old data moved aside)" if self.rejoin else ""
        return f"{self.node}: {what} {change}{certs}{rejoin}"


def _ip(value: str, what: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise StepError(f"{what}: {value!r} is not an IPv4 address") from None


def plan_repair(cluster: Cluster, addresses: dict[str, str], probes: dict[str, AddressProbe],
                peers: dict[str, str] | None = None) -> list[Repair]:
    """What to change so every kubeadm file of `cluster` matches its nodes' current addresses.

    `addresses`: node → its address now; `probes`: node → what its files say (nodes that could not be probed are
    simply absent); `peers` (HA clusters): member name → the address of its etcd peer URL, as a member with quorum
    lists them, or None when no member has quorum. Returns [] when nothing moved. Order: hosts lines first (every
    kubelet resolves the API by name), then kubelets' --node-ip, then the control planes, one after the other: in an
    HA cluster each moved master's etcd member is updated (`etcd-peer`, on a member with quorum) right before its own
    files (`control-plane`, which restarts its kubelet), so the others keep quorum throughout; a control plane with
    no member (any more) is added anew (`control-plane` with `rejoin`).

    Without quorum (`peers` None) and with too few masters whose files match their address to ever form one (a
    majority moved at once, `_recovery`), etcd's disaster recovery (docs/ha.md): the first master's files, then
    `etcd-force` there (--force-new-cluster: its data, itself alone), then every other master rejoins, one at a time.
    Raises StepError when masters moved, no member has quorum, and labctl cannot tell that none could (a master not
    probed, or a majority at its address: they may still be starting).
    """
    first = cluster.masters[0].name
    api_ip = endpoint_address(cluster, _ip(addresses[first], first))
    ha = len(cluster.masters) > 1
    hosts: list[Repair] = []
    node_ips: list[Repair] = []
    control: list[Repair] = []
    recover = ha and peers is None and _recovery(cluster, addresses, probes)
    for node in cluster.nodes:
        probe = probes.get(node.name)
        if probe is None or node.name not in addresses:
            continue
        new = _ip(addresses[node.name], node.name)
        if probe.endpoint_ip != api_ip and (probe.node_ip is not None or api_ip != LOCAL_API):
            # (in an HA cluster a node not joined yet is left to its join: 127.0.0.1 answers there only after it)
            hosts.append(Repair("hosts", node.name, api_ip, probe.endpoint_ip))
        if probe.node_ip is not None and probe.node_ip != new:
            node_ips.append(Repair("node-ip", node.name, new, _ip(probe.node_ip, node.name)))
        if probe.advertised is None:
            continue  # not a control plane (yet)
        moved = probe.advertised != new
        regenerate = moved or new not in probe.cert_ips
        old = _ip(probe.advertised, node.name) if moved else None
        if recover:
            # the first master keeps the data (a labctl `shutdown` stops it last): its files first (its etcd must
            # start at its address now), then --force-new-cluster there; every other master's member was dropped
            # with it, so each one is added anew, whether it moved or not
            if node.name == first:
                if regenerate:
                    control.append(Repair("control-plane", node.name, new, old, regenerate_certs=True))
                control.append(Repair("etcd-force", node.name, new))
            else:
                control.append(Repair("control-plane", node.name, new, old, regenerate_certs=regenerate, rejoin=True))
            continue
        if ha:
            if peers is None:
                if regenerate:
                    # Several etcd members, none with quorum, and a majority of masters at their addresses (or not
                    # all probed): `member update` is a raft proposal and needs a majority (reference §4, etcd
                    # "Runtime reconfiguration"); forcing a new cluster now could drop members that are starting
                    raise StepError(
                        f"{node.name}: the control plane moved from {probe.advertised} to {new}, and no etcd member "
                        f"of {cluster.name} has quorum to update its peer URL (masters not running or still "
                        "starting)",
                        hint="start every master (`labctl boot`) and run the command again: when a majority moved, "
                        "labctl recovers etcd from the first master (docs/ha.md)")
            elif node.name not in peers:
                control.append(Repair("control-plane", node.name, new, old, regenerate_certs=regenerate, rejoin=True))
                continue
            elif peers[node.name] != new:
                control.append(Repair("etcd-peer", node.name, new, peers[node.name]))
        if regenerate:
            control.append(Repair("control-plane", node.name, new, old, regenerate_certs=True))
    return hosts + node_ips + control


def _recovery(cluster: Cluster, addresses: dict[str, str], probes: dict[str, AddressProbe]) -> bool:
    """Whether the masters' etcd members cannot form quorum as they are, so that only etcd's disaster recovery
    helps: every master was probed and is a control plane, and fewer than a majority, floor(n/2)+1, have files that
    name their address now (the others' etcd cannot even bind its listeners; etcd FAQ, "failure tolerance"). Called
    only when no member answers with quorum."""
    masters = cluster.masters
    if any(m.name not in probes or m.name not in addresses or probes[m.name].advertised is None for m in masters):
        return False
    in_place = sum(probes[m.name].advertised == addresses[m.name] for m in masters)
    return in_place < len(masters) // 2 + 1
