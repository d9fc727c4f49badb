"""boot: the lab's existing VMs are running and have an address. Control planes first, then workers.

check: the VM is running and the provider reports an address (never a stale lease of a stopped VM).
apply: start it and wait for its address. boot never creates a VM: a missing one is an error that says to run
       `labctl install` (which creates only what is missing).
"""

from __future__ import annotations

from labctl import ownership
from labctl.engine import Check, Phase, Target
from labctl.errors import StepError

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
        _, node = ctx.node(target.node)
        vm = ctx.provider.get(node.name)
        done = [start(ctx, node)] if vm is not None and not vm.running else []
        return ", ".join(done + [f"running at {wait_for_address(ctx, node)}"])


phase = Boot()
