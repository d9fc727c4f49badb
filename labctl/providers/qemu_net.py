"""provider.qemu.network lab: one L2 segment that all of a lab's QEMU VMs share, without root and without a bridge.

Every VM keeps its user-mode NIC (slirp: the default route, DNS, the internet, SSH forwarded from 127.0.0.1) and gets
a second NIC on the lab segment, with a static address from `lab_subnet` given at create (recorded in vm.json and
written into the guest's cloud-init network-config, matched by MAC; no gateway there, so the default route stays on
the user NIC). That address is the node's: what kubeadm advertises, the kubelet's --node-ip, what Cilium routes to.

Why multicast on the loopback. QEMU 7.2 offers these netdevs to an unprivileged user: user, socket (mcast, listen,
connect, udp), stream and dgram (unix or inet sockets, point to point) and hubport (inside one QEMU process); tap,
bridge and vde need root, a setuid helper or a daemon. Only `socket,mcast=` joins more than two QEMU processes into
one segment by itself: each QEMU binds a UDP socket to the group and port, joins the group on the interface of
`localaddr`, and sends every frame to the group (QEMU net/socket.c, net_socket_mcast_create: IP_ADD_MEMBERSHIP,
IP_MULTICAST_LOOP on, IP_MULTICAST_IF = localaddr). With localaddr=127.0.0.1 the frames never leave the host. No
privilege is involved (checked as `nobody` on a host whose `lo` has no MULTICAST flag: the flag only matters to
routing multicast out of an interface, and IP_MULTICAST_IF with IP_MULTICAST_LOOP delivers to the local members
anyway). Point-to-point netdevs (stream/dgram) would need a switch process of labctl's own that outlives labctl
and is restarted with the VMs; multicast needs none. The trade-off: the segment is not private from other local
users, who could join the group too (as they could connect to the forwarded ports); a lab is a lab.

The group and port per lab: a lab is its directory (.labctl/ beside clusters.json), so both derive from a hash of
that directory's path: a group in 239.255.0.0/16 (IPv4 Local Scope, RFC 2365: never routed off site; here not even
off the host) and a port in 20000-29999 (below Linux's ephemeral range, 32768-60999, where other programs' UDP
sockets would get in the way). Two labs on one host therefore get different segments (a clash needs both 16 bits of
group and the port to collide), and every VM of one lab (all its clusters, so ClusterMesh or Argo CD across clusters
work) is on the same one. Nothing about the segment is in the guest, so a moved lab simply gets another one.

The host's side. Nothing of the host is on the segment; it reaches a cluster through ports forwarded on the first
control plane's user NIC (`hostfwd=tcp:127.0.0.1:HOST-:GUEST`): the API server (6443), Hubble UI's NodePort and
the NodePorts the cluster's catalogue stacks declare (templates/stacks/*/stack.yaml). NodePorts answer on every node
(Cilium's kube-proxy replacement), so one forward per port serves the whole cluster. The host ports come from the
same range as the SSH ports (provider.qemu.ssh_port_base), are recorded in vm.json and kept across restarts; only a
port another program took meanwhile moves (and is recorded anew).
"""

from __future__ import annotations

import hashlib
import ipaddress
from pathlib import Path

from ..errors import ProviderError

LAB_GROUP_NET = ipaddress.ip_network("239.255.0.0/16")  # RFC 2365 IPv4 Local Scope
LAB_PORT_BASE, LAB_PORT_SPAN = 20000, 10000


def segment(lab_root: Path) -> tuple[str, int]:
    """The multicast group and UDP port of the lab whose state directory is `lab_root` (.labctl/): stable for one
    directory, different between directories (see the module docstring)."""
    digest = hashlib.sha256(str(Path(lab_root).resolve()).encode()).digest()
    # .0 and .255 in the last octets are avoided: some stacks treat them specially in a /24
    group = LAB_GROUP_NET.network_address + (256 * (1 + digest[0] % 254) + 1 + digest[1] % 254)
    port = LAB_PORT_BASE + int.from_bytes(digest[2:4], "big") % LAB_PORT_SPAN
    return str(group), port


def netdev(lab_root: Path) -> str:
    """QEMU's -netdev value for a VM's lab NIC (id `lab`)."""
    group, port = segment(lab_root)
    return f"socket,id=lab,mcast={group}:{port},localaddr=127.0.0.1"


def allocate_address(subnet: str, taken: set[str], vm: str) -> str:
    """The first host address of `subnet` that no address in `taken` holds, as "a.b.c.d/prefix" (what the guest's
    network-config gets). Raises ProviderError naming `vm` when the subnet is full."""
    net = ipaddress.ip_network(subnet)
    held = {ipaddress.ip_interface(a).ip for a in taken}
    for host in net.hosts():
        if host not in held:
            return f"{host}/{net.prefixlen}"
    raise ProviderError(f"{vm}: provider.qemu.lab_subnet {subnet} has no free address left for another VM",
                        hint="give provider.qemu.lab_subnet a larger range (the network is fixed per VM: existing "
                        "VMs keep theirs only while it stays inside the range)")


def in_subnet(address: str, subnet: str) -> bool:
    """Is the interface address `address` ("a.b.c.d/prefix") inside `subnet`?"""
    return ipaddress.ip_interface(address).ip in ipaddress.ip_network(subnet)


def forwarded_guest_ports(lab, node: str) -> list[int]:
    """The guest TCP ports the host reaches through `node`: the API and the cluster's NodePorts when it is the
    first control plane of its cluster, else none. NodePorts: Hubble UI's (when enabled) and those the cluster's
    catalogue stacks declare (a user stack's Services are not known before they are installed)."""
    from ..kube import API_PORT
    from ..stacks import catalogue

    cluster = next((c for c, n in lab.nodes if n.name == node), None)
    if cluster is None or cluster.masters[0].name != node:
        return []
    ports = {API_PORT}
    if cluster.cilium.hubble:
        ports.add(cluster.cilium.hubble_ui_node_port)
    for name in cluster.stack_names:
        descriptor = catalogue().get(name)
        if descriptor is not None:
            ports.update(descriptor.node_ports.values())
    return sorted(ports)


def first_control_plane(lab, node: str) -> str | None:
    """The first control plane of the cluster `node` belongs to (None: not a node of the lab)."""
    return next((c.masters[0].name for c, n in lab.nodes if n.name == node), None)


def multicast_problem(group: str, timeout: float = 1.0) -> str | None:
    """Does this host deliver multicast on its loopback to this user, as the lab segment needs? Two sockets join
    `group` on 127.0.0.1 as QEMU's do (bound to the group, IP_MULTICAST_IF and IP_MULTICAST_LOOP) on a port of their
    own (nothing reaches the lab's VMs) and one datagram is sent: None when the other socket gets it, else why not."""
    import socket
    import struct

    sockets: list[socket.socket] = []
    try:
        for _ in range(2):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((group, sockets[0].getsockname()[1] if len(sockets) > 1 else 0))
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                            struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton("127.0.0.1")))
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
            sock.settimeout(timeout)
        sockets[0].sendto(b"labctl", (group, sockets[0].getsockname()[1]))
        sockets[1].recvfrom(64)
    except TimeoutError:
        return f"a datagram sent to {group} on 127.0.0.1 did not arrive within {timeout:g} s"
    except OSError as exc:
        return f"multicast to {group} on 127.0.0.1 failed: {exc.strerror or exc}"
    finally:
        for sock in sockets:
            sock.close()
    return None
