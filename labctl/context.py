"""What a phase gets to work with: the lab model, its state, the provider, one transport per node, facts.

Everything heavy is created on first use (importing paramiko costs ~0.45 s), and
every factory can be replaced, which is how the simulated lab plugs in its nodes and API servers.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .model import Cluster, Lab, Node
    from .providers.base import Provider
    from .remote.base import Transport
    from .state import LabState

log = logging.getLogger("labctl")

TransportFactory = Callable[["Context", "Node"], "Transport"]


class Context:
    def __init__(
        self,
        lab: Lab,
        state: LabState,
        *,
        provider: Provider | None = None,
        transport_factory: TransportFactory | None = None,
        kube_factory: Callable[[Context, Cluster], Any] | None = None,
        notify: Callable[[str], None] | None = None,
        options: dict[str, Any] | None = None,
    ):
        self.lab = lab
        self.state = state
        self.options = options or {}
        self._provider = provider
        self._routed = False
        self._transport_factory = transport_factory
        self._kube_factory = kube_factory
        self._notify = notify or (lambda text: None)
        self._lock = threading.Lock()
        # set on Ctrl-C: transports start no new connection or command (see abort)
        self.cancelled = threading.Event()
        self._node_locks: dict[str, threading.Lock] = {}
        self._transports: dict[str, Transport] = {}
        self._facts: dict[str, Any] = {}
        self._addresses: dict[str, str] = {}
        self._once: dict[str, Any] = {}
        self._kubes: dict[str, Any] = {}

    # -- the model --------------------------------------------------------------------------------------------
    def node(self, name: str) -> tuple[Cluster, Node]:
        for cluster, node in self.lab.nodes:
            if node.name == name:
                return cluster, node
        raise KeyError(name)

    # -- the provider ----------------------------------------------------------------------------------------
    @property
    def provider(self) -> Provider:
        with self._lock:
            if self._provider is None:
                from . import providers

                self._provider = providers.get(self.lab, state=self.state, notify=self.note)
            if not self._routed:  # static nodes' calls go to the static provider (labctl/providers/static.py)
                from .providers.static import route

                self._provider, self._routed = route(self.lab, self._provider), True
            return self._provider

    # -- nodes -----------------------------------------------------------------------------------------------
    def _per_node(self, name: str) -> threading.Lock:
        with self._lock:
            # re-entrant: a transport factory asks ctx.address(node) while transport() holds the node's lock
            return self._node_locks.setdefault(name, threading.RLock())

    def transport(self, name: str) -> Transport:
        """One connection per node, opened on first use and reused by every later step. Before the first one, every
        running VM's address is learned, and two nodes at one address are refused (ProviderError)."""
        with self._per_node(name):
            if name in self._transports:
                return self._transports[name]
        # outside the node's lock: learning the addresses takes the other nodes' locks
        self.check_addresses()
        self.address(self.node(name)[1])
        with self._per_node(name):
            if name not in self._transports:
                _, node = self.node(name)
                factory = self._transport_factory
                if factory is None:
                    from .remote.ssh import transport_for

                    factory = transport_for
                self._transports[name] = factory(self, node)
            return self._transports[name]

    def address(self, node: Node, running: bool = False) -> str | None:
        """The node's address, asked of the provider once per run (each `tart ip` is a process and a lease lookup).
        `running=True`: the caller has just seen the VM running, so the provider need not look again (Provider.ip).

        An address only changes when the VM stops and starts again, and everything that does that calls
        drop_transport, which forgets it.
        """
        # the node's lock for the whole look: two steps that ask at once (the vms check, the address check before
        # the first connection) wait for one answer instead of asking twice
        with self._per_node(node.name):
            return self._address(node, running)

    def _address(self, node: Node, running: bool) -> str | None:
        cached = self._addresses.get(node.name)
        if cached:
            return cached
        address = self.provider.ip(node, wait=0, running=True) if running else self.provider.ip(node, wait=0)
        if address:
            # without a shared network (QEMU user mode) every VM is 127.0.0.1 and that is fine: SSH goes by port
            shared = self.provider.network_problem() is None
            with self._lock:
                other = next((n for n, a in self._addresses.items() if a == address and n != node.name and shared),
                             None)
                if other is None:
                    self._addresses[node.name] = address
            if other is not None:
                from .errors import ProviderError

                raise ProviderError(
                    f"{node.name} and {other} both report the address {address}: one of them is a stale or "
                    "reused DHCP lease, and labctl would reach the same guest as both",
                    hint="the Mac's lease table (/var/db/dhcpd_leases) may hold an old entry for one of the MACs: "
                    "remove it and restart that VM, or set provider.tart.ip_resolver to 'arp'; `labctl status` "
                    "shows each node's address")
        return address

    def check_addresses(self) -> None:
        """Learn every running lab VM's address at once (once per run), so two nodes reporting one address are
        refused before any SSH connection lands on the wrong guest. Raises ProviderError naming both."""

        def look() -> bool:
            vms = self.provider.list()
            running = [node for _, node in self.lab.nodes if node.name in vms and vms[node.name].running]
            # all at once: each answer is a provider call or two (`tart get` + `tart ip`, ~0.1 s each on a Mac)
            # and a sequential loop put 10 nodes' worth of them before the first connection of every run
            with ThreadPoolExecutor(max_workers=max(1, len(running)), thread_name_prefix="address") as pool:
                # the first error (e.g. two nodes at one address) is raised
                list(pool.map(lambda node: self.address(node, running=True), running))
            return True

        self.once("check-addresses", look)

    def drop_transport(self, name: str) -> None:
        """Forget a node's connection and address (it rebooted or was deleted); the next use asks again."""
        with self._per_node(name):
            transport = self._transports.pop(name, None)
            self._facts.pop(name, None)
            self._addresses.pop(name, None)
        if transport is not None:
            transport.close()

    def facts(self, name: str, refresh: bool = False):
        """The node's facts, probed once per run and again after anything changed them."""
        with self._per_node(name):
            cached = self._facts.get(name)
        if cached is not None and not refresh:
            return cached
        # one probe at a time per node: the steps that start together (a node's own check, its peers' checks that
        # compare machine-ids) wait for the probe under way instead of running their own. A lock of its own, not
        # the node's: the probe opens the transport, which takes node locks while learning every address.
        with self._per_node(f"facts:{name}"):
            with self._per_node(name):
                cached = self._facts.get(name)
            if cached is not None and not refresh:
                return cached
            from .remote.facts import gather

            facts = gather(self.transport(name))
            with self._per_node(name):
                self._facts[name] = facts
            return facts

    def invalidate(self, name: str) -> None:
        with self._per_node(name):
            self._facts.pop(name, None)

    # -- clusters --------------------------------------------------------------------------------------------
    def kube(self, cluster: Cluster):
        with self._lock:
            if cluster.name not in self._kubes:
                if self._kube_factory is None:
                    from .kube.client import client_for

                    self._kube_factory = client_for
                self._kubes[cluster.name] = self._kube_factory(self, cluster)
            return self._kubes[cluster.name]

    # -- helpers for phases ----------------------------------------------------------------------------------
    def once(self, key: str, fn: Callable[[], Any]) -> Any:
        """Run `fn` once per run for `key` (e.g. pull the base image once, not once per node)."""
        with self._lock:
            lock = self._node_locks.setdefault(f"once:{key}", threading.Lock())
        with lock:
            if key not in self._once:
                self._once[key] = fn()
            return self._once[key]

    def log(self, node: str, text: str) -> None:
        self.state.log(node, text)

    def note(self, text: str) -> None:
        """A progress line for the user (e.g. 'pulling ghcr.io/...'), shown by the UI. Of a download's Progress
        notes (labctl/images.py) only the milestones go to the log; the UI draws the rest as a bar."""
        if getattr(text, "milestone", True):
            log.info(text)
        self._notify(text)

    def debug(self, message: str, exc: BaseException | None = None) -> None:
        log.debug(message, exc_info=exc)

    def abort(self) -> None:
        """Ctrl-C, after the grace period: close every node's connection under the steps still using it, so each
        blocked remote call ends now (their steps end as cancelled). Nothing new is started: `cancelled` is set."""
        self.cancelled.set()
        with self._lock:
            transports = list(self._transports.values())
        for transport in transports:
            abort = getattr(transport, "abort", None)
            try:
                if abort is not None:
                    abort()
            except Exception as exc:  # best effort: the process is ending anyway
                log.debug("aborting %s failed", transport, exc_info=exc)

    def close(self) -> None:
        for name in list(self._transports):
            try:
                self.drop_transport(name)
            except Exception as exc:  # closing is best effort
                log.debug("closing %s failed", name, exc_info=exc)


def lab_dir(config: Path) -> Path:
    return config.resolve().parent
