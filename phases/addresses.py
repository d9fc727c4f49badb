"""addresses (boot): after the VMs came back, the cluster works at whatever addresses DHCP gave them.

check: the cluster's nodes still hold the addresses their kubeadm files, certificates and /etc/hosts name, and the
       host's kubeconfig (and every copy `kubeconfig --merge` made) points at the first control plane's current
       address.
apply: repair what moved (init.reconcile_addresses: hosts lines, kubelet node-ip, control-plane manifests and
       certificates, kubeconfigs), then wait for the API; when a hosts line changed, restart Cilium's agents and
       operator (their /etc/hosts is a copy taken at container start: cni.restart_agents) and wait until ready.
A cluster labctl never initialised (no kubeconfig here) has nothing to repair: `labctl install` is what it needs.
"""

from __future__ import annotations

from labctl.engine import Check, Phase, Target
from labctl.kube import kubeconfig, node_address

from . import cni, init


class Addresses(Phase):
    name = "addresses"
    scope = "cluster"
    after = ("boot",)
    description = "repair certificates, kubeconfigs and hosts entries when node addresses changed"

    def check(self, ctx, target: Target) -> Check:
        cluster = ctx.lab.cluster(target.cluster)
        if kubeconfig.read(ctx.state, cluster.name) is None:
            # labctl writes the kubeconfig as soon as kubeadm init succeeds: without one there is no cluster to
            # repair (only VMs), and probing the nodes would make `boot` of a VM-only lab wait on SSH for nothing
            return Check(True, "no cluster installed yet: nothing to repair")
        repairs = init.pending_repairs(ctx, cluster)
        if repairs:
            return Check(False, "; ".join(str(r) for r in repairs))
        if owed := cni.restart_problem(ctx, cluster):
            return Check(False, owed)
        problem = init.kubeconfig_problem(ctx, cluster, node_address(ctx, cluster.masters[0])) or \
            init.merged_problem(ctx, cluster)
        return Check(problem is None, problem or "addresses unchanged")

    def apply(self, ctx, target: Target) -> str:
        cluster = ctx.lab.cluster(target.cluster)
        return "; ".join(init.reconcile_addresses(ctx, cluster)) or "kubeconfig refreshed"


phase = Addresses()
