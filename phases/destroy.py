"""destroy: the lab's VMs are gone. Only VMs named in clusters.json are ever touched.

check: the VM does not exist.
apply: stop it (tart refuses to delete a running VM) and delete it, then forget its pinned SSH host key: a new VM
       under the same name will have a new one.
"""

from __future__ import annotations

from labctl.engine import Check, Phase, Target


class Destroy(Phase):
    name = "destroy"
    scope = "node"
    description = "stop and delete the lab's VMs"

    def check(self, ctx, target: Target) -> Check:
        vm = ctx.provider.get(target.node)
        return Check(vm is None, "no VM" if vm is None else f"VM is {vm.state}: delete it")

    def apply(self, ctx, target: Target) -> str:
        from labctl.remote.credentials import forget_host

        _, node = ctx.node(target.node)
        ctx.drop_transport(node.name)
        ctx.provider.delete(node)
        forget_host(ctx.state, node.name)
        return "deleted"


phase = Destroy()
