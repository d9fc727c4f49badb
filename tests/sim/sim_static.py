"""Static machines in the simulated lab: existing machines (`"provider": "static"`) that no fake tart created.

- `StaticSimNode`: a SimNode whose "VM" is a machine that is always there at the fixed address clusters.json gives
  it (running unless powered off from inside; labctl never starts it), with its own hostname and machine-id (it is
  no clone of the base image), and the load, memory and firewall a test gives it. It answers the static-only
  scripts: `preflight.reach` (a TCP connection to the API port: it connects when the address is a control plane
  whose API server answers, as SimCluster.route says, and the machine's firewall lets it out) and
  `destroy.kubeadm-reset` (kubeadm reset -f: /etc/kubernetes and the kubelet's state gone, the kubelet stopped;
  packages and containerd stay — https://kubernetes.io/docs/reference/setup-tools/kubeadm/kubeadm-reset/).
- `SimStaticProvider`: the real StaticProvider; only "does SSH answer" asks the simulated machine instead of a TCP
  probe, and `ssh_address` names the port of the node's simulated SSH server (as SimTartProvider does).
"""

from __future__ import annotations

import copy
import secrets
from typing import TYPE_CHECKING

from labctl.providers.static import StaticProvider
from labctl.remote import facts as F
from tests.sim.sim_node import SimNode

if TYPE_CHECKING:
    from tests.sim.sim_lab import SimLab


class StaticSimNode(SimNode):
    static = True

    def __init__(self, lab: SimLab, cluster: str, name: str, role: str):
        self.fixed_address = next(n.address for _, n in lab.model.nodes if n.name == name)
        self.powered = True
        self.boots = 1
        self.firewalled = False  # True: nothing leaves the machine towards port 6443
        super().__init__(lab, cluster, name, role)

    def fresh(self) -> None:
        super().fresh()
        # a machine of its own, installed long ago: not a clone of the lab's image
        self.facts = copy.deepcopy(self.facts)
        self.facts["machine_id"] = secrets.token_hex(16)
        self.facts["hostname"] = f"{self.name}-own"
        self.facts["cpus"] = 8
        self.facts["memory"] = {"total_kb": 64 * 1024 * 1024, "available_kb": 60 * 1024 * 1024}
        self.facts["load"] = [0.5, 0.4, 0.3]

    def busy(self, load: float, available_share: float) -> None:
        """The machine is busy: this 1-minute load average and this share of its memory available."""
        with self.state_lock:
            self.facts["load"] = [load, load, load]
            total = self.facts["memory"]["total_kb"]
            self.facts["memory"] = {"total_kb": total, "available_kb": int(total * available_share)}

    # -- the machine (no fake tart) -------------------------------------------------------------------------
    def vm_state(self) -> tuple[bool, str | None, int]:
        return (self.powered, self.fixed_address if self.powered else None, self.boots)

    def observe(self) -> tuple[bool, str | None, int]:
        running, address, boots = self.vm_state()
        with self.state_lock:
            if running and boots != self.seen_boot:
                if self.seen_boot is not None:
                    self._rebooted()
                self.seen_boot = boots
                self.facts["boot_id"] = f"{secrets.token_hex(4)}-sim-boot-{boots}"
        return running, address, boots

    # -- its own scripts ------------------------------------------------------------------------------------
    def _shutdown_poweroff(self, p, address):
        self.powered = False  # the guest goes down after answering; labctl never powers it on again
        return 0, ""

    def power_on(self) -> None:
        """Someone presses its power button (labctl never does)."""
        self.powered, self.boots = True, self.boots + 1

    def _preflight_reach(self, p, address):
        cluster = self.lab.clusters[self.cluster]
        if not self.firewalled and cluster.route(self, p["host"]):
            return 0, ""
        return 1, f"cannot connect to {p['host']}:{p['port']} within {p['seconds']} s"

    def _destroy_kubeadm_reset(self, p, address):
        f = self.facts
        for path in F.KUBEADM_FILES:
            f["files"][path] = False
        f["kubelet"] = {**f["kubelet"], "active": "inactive"}
        self.node_ip = None
        self.advertised = None
        return 0, "[reset] Deleted contents of the etc directories: [/etc/kubernetes]"


class SimStaticProvider(StaticProvider):
    def __init__(self, lab, sim: SimLab):
        super().__init__(lab)
        self.sim = sim

    def answers(self, node) -> bool:
        name = node if isinstance(node, str) else node.name
        return self.sim.nodes[name].observe()[0]

    def ssh_address(self, node, address: str | None = None) -> tuple[str, int]:
        host, _ = super().ssh_address(node, address)
        name = node if isinstance(node, str) else node.name
        return host, self.sim.ssh_port(name, host)
