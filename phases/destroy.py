"""destroy: the lab's VMs are gone. Only VMs named in clusters.json that labctl created are ever touched.

check: the VM does not exist, or it is not labctl's (labctl/ownership.py): a VM of the user's that carries a node's
       name is left alone, and said so.
apply: stop it (tart refuses to delete a running VM) and delete it, then forget its pinned SSH host key: a new VM
       under the same name will have a new one.
"""

from __future__ import annotations

from labctl import ownership, static_nodes
from labctl.engine import Check, Phase, Target


class Destroy(Phase):
    name = "destroy"
    scope = "node"
    description = "stop and delete the lab's VMs"

    def waves(self, cluster):
        # static machines first: draining one and deleting its Node needs the control plane, whose VM goes after
        return [w for w in ([n for n in cluster.nodes if n.static], [n for n in cluster.nodes if not n.static]) if w]

    def check(self, ctx, target: Target) -> Check:
        cluster, node = ctx.node(target.node)
        if node.static:  # an existing machine: out of the cluster, never deleted (kubeadm reset with --reset-static)
            return Check(*static_nodes.destroy_check(ctx, cluster, node))
        vm = ctx.provider.get(target.node)
        if vm is not None and not ownership.owns(ctx.state, target.cluster, target.node):
            return Check(True, ownership.left_alone(target.node))
        return Check(vm is None, "no VM" if vm is None else f"VM is {vm.state}: delete it")

    def apply(self, ctx, target: Target) -> str:
        from labctl.remote.credentials import forget_host

        cluster, node = ctx.node(target.node)
        if node.static:
            return static_nodes.destroy_apply(ctx, cluster, node)
        if not ownership.owns(ctx.state, target.cluster, node.name):  # never delete a VM labctl did not create
            raise ownership.not_ours(node.name)
        ctx.drop_transport(node.name)
        ctx.provider.delete(node)
        ownership.release(ctx.state, node.name)
        forget_host(ctx.state, node.name)
        return "deleted"


phase = Destroy()
