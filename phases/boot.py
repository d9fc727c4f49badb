"""boot: the lab's existing VMs are running and have an address. Control planes first, then workers.

check: the VM is running and the provider reports an address (never a stale lease of a stopped VM).
apply: start it and wait for its address. boot never creates a VM: a missing one is an error that says to run
       `labctl install` (which creates only what is missing). In a cluster with several control planes the workers
       start once etcd has quorum again (labctl/etcd.py: a majority of the members healthy), asked once per
       cluster; a master that came back at another address ends that wait early (the addresses step updates its
       member, and `ready` waits for the cluster after that).
"""

from __future__ import annotations

from labctl import etcd, ownership
from labctl.engine import Check, Phase, Target
from labctl.errors import StepError
from labctl.kube import highly_available, kubeconfig

from .vms import start, wait_for_address


class Boot(Phase):
    name = "boot"
    scope = "node"
    description = "start stopped VMs, control planes first, and wait for their addresses"

    def waves(self, cluster):
        return [cluster.masters, cluster.workers]

    def check(self, ctx, target: Target) -> Check:
        _, node = ctx.node(target.node)
        vm = ctx.provider.get(node.name)
        if vm is None:
            raise StepError(f"{node.name}: there is no VM for this node",
                            hint="`labctl install` creates the VMs that are missing")
        if not ownership.owns(ctx.state, target.cluster, node.name):  # never start a VM labctl did not create
            raise ownership.not_ours(node.name)
        if not vm.running:
            return Check(False, f"VM is {vm.state}: start it")
        address = ctx.provider.ip(node, wait=0, running=True)  # seen running just above
        return Check(bool(address), f"running at {address}" if address else "running, no address yet")

    def apply(self, ctx, target: Target) -> str:
        cluster, node = ctx.node(target.node)
        vm = ctx.provider.get(node.name)
        done = []
        if vm is not None and not vm.running and node.role == "worker" and highly_available(cluster) and \
                kubeconfig.read(ctx.state, cluster.name) is not None:
            done.append(_quorum(ctx, cluster))
        done += [start(ctx, node)] if vm is not None and not vm.running else []
        return ", ".join(done + [f"running at {wait_for_address(ctx, node)}"])


def _quorum(ctx, cluster) -> str:
    """etcd.wait_for_quorum once per cluster and run: every worker of the cluster gets the same answer (a failure
    too, so N workers do not wait N times)."""
    def wait():
        try:
            return etcd.wait_for_quorum(ctx, cluster)
        except StepError as exc:
            return exc

    seen = ctx.once(f"etcd-quorum:{cluster.name}", wait)
    if isinstance(seen, StepError):
        raise seen
    return seen


phase = Boot()
