"""The static provider: existing machines (`"provider": "static"` on a node, docs/byo-nodes.md) that labctl reaches
over SSH at their configured `address` and never creates, resizes, starts, powers off or deletes.

A lab has one VM provider (clusters.json `provider.type`); static nodes sit beside its VMs. `route(lab, vms)` puts a
NodeRouter in front of the VM provider when the lab has static nodes: every call about a node goes to the provider
of that node, everything else (images, the network, the tool's version) to the VM provider. The phases call
`ctx.provider` as before and need no branch for the provider calls; what differs in a phase's meaning (shutdown
drains instead of powering off, destroy leaves the machine) is in labctl/static_nodes.py.
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

from ..errors import ProviderError
from .base import VM, LabVMs

SSH_PORT = 22
PROBE_SECONDS = 3.0  # how long a static machine's SSH port may take to accept a connection before it is "unknown"


class StaticProvider(LabVMs):
    """Existing machines at fixed addresses. get() asks only whether SSH answers: "running" when its port accepts a
    TCP connection, "unknown" when not (labctl cannot tell off from unreachable, and never powers it on)."""

    name = "static"
    hard_stops: frozenset[str] = frozenset()
    ip_wait_seconds = 0

    def __init__(self, lab, state=None, **_):
        super().__init__(lab)
        self.state = state  # the lab's LabState (for the node log's path), like the VM providers'
        self.static = {node.name: node for _, node in lab.nodes if node.static}

    def _node(self, node):
        name = node if isinstance(node, str) else node.name
        if name not in self.static:
            raise ProviderError(f"{name}: not a static node of this lab")
        return self.static[name]

    def available(self) -> str:
        return "static (SSH)"

    def log_path(self, node) -> Path:
        """A static machine has no console labctl keeps: its node log (.labctl/logs/<node>.log) is where its
        output is."""
        name = self._node(node).name
        return self.state.node_log(name) if self.state is not None else Path(".labctl", "logs", f"{name}.log")

    def answers(self, node) -> bool:
        """Whether the machine's SSH port accepts a TCP connection within PROBE_SECONDS (nothing is sent)."""
        host, port = self.ssh_address(node)
        try:
            with socket.create_connection((host, port), timeout=PROBE_SECONDS):
                return True
        except OSError:
            return False

    def get(self, name: str) -> VM | None:
        node = self._node(name)
        return VM(node.name, "running" if self.answers(node) else "unknown")

    def list(self) -> dict[str, VM]:
        return {name: self.get(name) for name in self.static}

    def ip(self, node, wait: int = 0, *, running: bool = False) -> str | None:
        """The configured address (clusters.json's, not a lease) as an IPv4 address: a DNS name is resolved here,
        on this host, since kubeadm's --node-ip and the hosts lines take addresses. None: the name does not
        resolve."""
        address = self._node(node).address
        try:
            return str(ipaddress.IPv4Address(address))
        except ValueError:
            pass
        try:
            return socket.getaddrinfo(address, None, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
        except (OSError, UnicodeError):
            return None

    def ssh_address(self, node, address: str | None = None) -> tuple[str, int]:
        node = self._node(node)
        return address or node.address, node.ssh_port or SSH_PORT

    # -- what labctl never does to a machine it did not make ---------------------------------------------------
    def _refuse(self, node, action: str):
        node = self._node(node)
        raise ProviderError(f"{node.name}: labctl does not {action} a static machine ({node.address})",
                            hint=f"{action} it yourself; labctl only reaches it over SSH")

    def create(self, node) -> bool:
        self._refuse(node, "create")

    def configure(self, node) -> list[str]:
        return []  # its size is its own

    def start(self, node) -> bool:
        if self.answers(node):
            return False
        self._refuse(node, "power on")

    def stop(self, node, timeout: float = 60, *, guest_poweroff: bool = False) -> str:
        self._refuse(node, "power off")

    def delete(self, node) -> bool:
        self._refuse(node, "delete")

    def image_cached(self, image: str) -> bool:
        return True

    def pull(self, image: str) -> None:
        return None


class NodeRouter:
    """One provider for the phases: a call about a static node goes to StaticProvider, anything else to the lab's
    VM provider (whose own methods, including those added later, are reached through __getattr__)."""

    def __init__(self, vms, static: StaticProvider):
        self.vms, self.static = vms, static

    def __getattr__(self, name: str):
        return getattr(self.vms, name)

    def _for(self, node):
        name = node if isinstance(node, str) else node.name
        return self.static if name in self.static.static else self.vms

    def available(self) -> str:
        if all(node.static for _, node in self.static.lab.nodes):  # no VM at all: the VM tool is not needed
            return self.static.available()
        return self.vms.available()

    def get(self, name: str) -> VM | None:
        return self._for(name).get(name)

    def list(self) -> dict[str, VM]:
        return {**self.vms.list(), **self.static.list()}

    def create(self, node) -> bool:
        return self._for(node).create(node)

    def configure(self, node) -> list[str]:
        return self._for(node).configure(node)

    def start(self, node) -> bool:
        return self._for(node).start(node)

    def stop(self, node, timeout: float = 60, *, guest_poweroff: bool = False) -> str:
        return self._for(node).stop(node, timeout, guest_poweroff=guest_poweroff)

    def delete(self, node) -> bool:
        return self._for(node).delete(node)

    def ip(self, node, wait: int = 0, *, running: bool = False) -> str | None:
        return self._for(node).ip(node, wait, running=running)

    def ssh_address(self, node, address: str | None = None) -> tuple[str, int]:
        return self._for(node).ssh_address(node, address)

    def ssh_wait_seconds(self, node) -> float | None:
        return self._for(node).ssh_wait_seconds(node)

    def host_endpoint(self, node, guest_port: int, address: str | None = None) -> tuple[str, int]:
        return self._for(node).host_endpoint(node, guest_port, address)

    def log_path(self, node) -> Path:
        return self._for(node).log_path(node)

    def own(self, name: str) -> None:
        self._for(name).own(name)


def route(lab, vms, static: StaticProvider | None = None):
    """The provider the phases use: `vms` itself when the lab has no static node, else a NodeRouter in front of it
    (`static`: the StaticProvider to route to; the simulated lab passes its own)."""
    if isinstance(vms, NodeRouter) or not any(node.static for _, node in lab.nodes):
        return vms
    return NodeRouter(vms, static or StaticProvider(lab, state=getattr(vms, "state", None)))
