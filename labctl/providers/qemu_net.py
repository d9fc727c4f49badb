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
import json
import secrets
import socket
import time
from pathlib import Path

from ..errors import ProviderError

LOOPBACK = "127.0.0.1"
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
    """The guest TCP ports the host reaches through `node`: the API on every control plane (an HA cluster's host
    endpoint, labctl/apiproxy.py, forwards to whichever answers), and the cluster's NodePorts on its first control
    plane; none on a worker. NodePorts: Hubble UI's (when enabled) and those the cluster's catalogue stacks declare
    (a user stack's Services are not known before they are installed)."""
    from ..kube import API_PORT
    from ..stacks import catalogue

    cluster = next((c for c, n in lab.nodes if n.name == node), None)
    if cluster is None or node not in {m.name for m in cluster.masters}:
        return []
    if cluster.masters[0].name != node:
        return [API_PORT]
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


# ---- network bridge: MACs and DHCP leases -------------------------------------------------------------------------

def new_mac() -> str:
    """A random, locally administered MAC in QEMU's own 52:54:00 range."""
    return "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))


def lease_address(text: str, mac: str, now: float) -> str | None:
    """The IPv4 address a DHCP server leased to `mac`, from libvirt's <bridge>.status (a JSON list) or a dnsmasq
    leases file ("expiry mac ip hostname client-id" lines). Expired leases are ignored; the longest-lived wins."""
    mac, found = mac.lower(), []
    if text.lstrip().startswith("["):
        for entry in json.loads(text):
            if str(entry.get("mac-address", "")).lower() == mac:
                found.append((int(entry.get("expiry-time", 0)), str(entry.get("ip-address", ""))))
    else:
        for fields in (line.split() for line in text.splitlines()):
            if len(fields) >= 3 and fields[1].lower() == mac and fields[0].isdigit():
                found.append((int(fields[0]), fields[2]))
    # dnsmasq writes expiry 0 for an infinite lease; an IPv6 lease has no dots
    live = [(expiry or float("inf"), ip) for expiry, ip in found if (expiry == 0 or expiry > now) and "." in ip]
    return max(live)[1] if live else None


# ---- the provider's side: addresses, SSH, forwarded ports -----------------------------------------------------------

class Networking:
    """QemuProvider's addresses and ports for its three networks (user, bridge, lab). Mixed into it: uses its
    settings, lab, _pid(), _meta(), _run_record(), _vm_dirs(), _notify() and POLL."""

    @property
    def ip_wait_seconds(self) -> int:
        return self.settings.ip_wait_seconds if self.settings.network == "bridge" else 0  # lab: a static address

    def leases_path(self) -> Path:
        s = self.settings
        return self.local_path(s.leases) if s.leases else Path(f"/var/lib/libvirt/dnsmasq/{s.bridge}.status")

    def ip(self, node, wait: int = 0, *, running: bool = False) -> str | None:
        """None when QEMU does not run. network user: 127.0.0.1, the host end of the SSH forward, which exists as
        soon as QEMU does. network bridge: the address the bridge's DHCP server leased to the VM's lab NIC, waiting
        up to `wait` seconds for it (the guest asks once it has booted)."""
        name = node if isinstance(node, str) else node.name
        if self._pid(name) is None:
            return None
        meta = self._meta(name) or {}
        if meta.get("lab_address"):  # network lab: the static address the VM was given at create
            return meta["lab_address"].split("/")[0]
        lab_mac = meta.get("lab_mac")
        if lab_mac is None:
            return LOOPBACK
        deadline = time.monotonic() + wait
        while True:
            try:
                address = lease_address(self.leases_path().read_text(), lab_mac, time.time())
            except FileNotFoundError:
                address = None
            except (OSError, ValueError) as exc:
                raise ProviderError(f"{name}: cannot read the DHCP leases {self.leases_path()}: {exc}",
                                    hint="set provider.qemu.leases to the bridge's leases file") from None
            if address or time.monotonic() >= deadline or self._pid(name) is None:
                return address
            time.sleep(min(2.0, max(self.POLL, deadline - time.monotonic())))

    def ssh_address(self, node, address: str | None = None) -> tuple[str, int]:  # noqa: ARG002 - SSH is forwarded
        name = node if isinstance(node, str) else node.name
        if self._pid(name) is None:
            raise ProviderError(f"{name}: not running, so SSH does not answer", hint="`labctl boot` starts it")
        port = self._run_record(name).get("ssh_port") or self._meta(name)["ssh_port"]
        return LOOPBACK, int(port)

    def network_problem(self) -> str | None:
        if self.settings.network in ("bridge", "lab"):
            return None
        return ("provider.qemu.network is user: each VM is alone behind its own NAT (as 10.0.2.15) and reachable from "
                "the host only through its forwarded SSH port, so there is no address a Kubernetes control plane could "
                "advertise to the other nodes; a cluster needs network lab (rootless, shared by the lab's VMs) or "
                "bridge")

    def host_endpoint(self, node, guest_port: int, address: str | None = None) -> tuple[str, int]:
        """Where the host reaches TCP `guest_port` of `node`: network lab: ("127.0.0.1", the port forwarded to it:
        the node's own forward (each control plane's API), else the first control plane's (NodePorts answer on every
        node, see forwarded_guest_ports)); otherwise the
        node's address and the port itself. Raises ProviderError when the VM does not run or the port is not
        forwarded (a stack declared after the VM started: its ports are forwarded at the next start)."""
        name = node if isinstance(node, str) else node.name
        if self.settings.network != "lab":
            return super().host_endpoint(name, guest_port, address)
        for holder in dict.fromkeys([name, first_control_plane(self.lab, name)]):
            if holder is not None and self._pid(holder) is not None:
                host_port = self._run_record(holder).get("forwards", {}).get(str(guest_port))
                if host_port:
                    return LOOPBACK, int(host_port)
        raise ProviderError(f"{name}: TCP port {guest_port} is not forwarded to this host (network lab)",
                            hint="ports are forwarded when the cluster's first control plane starts: `labctl "
                            "shutdown` and `labctl boot` forward the ones clusters.json declares now")

    @staticmethod
    def _port_free(port: int) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # like slirp's own listener: a connection in TIME_WAIT does not make the port busy
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                return False
        return True

    def _allocate_port(self, name: str, also: set[int] = frozenset()) -> int:  # type: ignore[assignment]
        """The first port from ssh_port_base that no other VM of this lab holds (SSH or a forward), none of `also`,
        and nothing listens on now."""
        taken = set(also)
        for entry in self._vm_dirs():
            if entry.name != name and (meta := self._meta(entry.name)) is not None:
                taken.add(meta.get("ssh_port"))
                taken.update(meta.get("forwards", {}).values())
        for port in range(self.settings.ssh_port_base, 65536):
            if port not in taken and self._port_free(port):
                return port
        raise ProviderError(f"{name}: no free TCP port on {LOOPBACK} from {self.settings.ssh_port_base} up",
                            hint="set provider.qemu.ssh_port_base to a free range")

    def _lab_addresses(self) -> set[str]:
        """The lab addresses the lab's VMs hold (network lab; from their vm.json)."""
        return {meta["lab_address"] for entry in self._vm_dirs()
                if (meta := self._meta(entry.name)) is not None and meta.get("lab_address")}

    def _require_network(self, name: str, meta: dict) -> None:
        """The network a VM was created with is part of its disk (the guest's network config): it cannot change."""
        have = meta.get("network") or ("bridge" if "lab_mac" in meta else "user")
        if have == "lab" == self.settings.network and \
                not in_subnet(meta["lab_address"], self.settings.lab_subnet):
            raise ProviderError(f"{name}: was created with the lab address {meta['lab_address']}, outside "
                                f"provider.qemu.lab_subnet {self.settings.lab_subnet} now; the address is fixed when "
                                "a VM is created", hint="set lab_subnet back to a range holding it, or `labctl "
                                "destroy` and install again (the VMs' data is lost)")
        if have != self.settings.network:
            raise ProviderError(f"{name}: was created with provider.qemu.network {have}, clusters.json now says "
                                f"{self.settings.network}; the network is fixed when a VM is created",
                                hint=f"set it back to {have}, or `labctl destroy` and install again (the VMs' data "
                                "is lost)")

    def _forwards(self, name: str, meta: dict, ssh_port: int) -> dict[str, int]:
        """network lab: guest port (a string: JSON keys) → host port for every port the host reaches through this VM
        (forwarded_guest_ports). Recorded ports are kept; a new one, or one another program took since, gets
        the next free port (and the move is announced). Called under the provider's lock."""
        recorded, out = meta.get("forwards", {}), {}
        for guest in map(str, forwarded_guest_ports(self.lab, name)):
            host = recorded.get(guest)
            if host is None or not self._port_free(host):
                new = self._allocate_port(name, {ssh_port, *out.values(), *recorded.values()})
                if host is not None:
                    self._notify(f"{name}: port {host} is taken by another program; its forward to guest port "
                                 f"{guest} moves to {new}")
                host = new
            out[guest] = host
        return out
