"""preflight: every static machine (an existing one, `"provider": "static"`) is ready to join before `join` runs.

The seed's node-ready check (labctl/static_nodes.py readiness): its CPU load, its available memory, the container
runtime running with its CRI, and the control plane's API port reachable from the machine. VMs are labctl's own
clones, sized by clusters.json: they have no step here.

check: the node joined already (nothing to check), or every readiness check passes (read-only).
apply: nothing here can make a busy or cut-off machine ready: it looks once more and fails naming each failed check,
       so `join` never starts on it and nothing is half-joined.
"""

from __future__ import annotations

from labctl import static_nodes
from labctl.engine import Check, Phase, Target
from labctl.errors import StepError
from labctl.remote.facts import KUBELET_CONF


class Preflight(Phase):
    name = "preflight"
    scope = "node"
    after = ("runtime", "init")  # containerd is in place; the control plane it must reach is up
    description = "static machines ready to join: CPU load, free memory, containerd, the API reachable on 6443"

    def applies(self, lab, cluster) -> bool:
        return any(node.static and node is not cluster.masters[0] for node in cluster.nodes)

    def waves(self, cluster):
        # the nodes that join: a static first control plane runs `kubeadm init`, whose own preflight checks it
        return [[node for node in cluster.nodes if node.static and node is not cluster.masters[0]]]

    def check(self, ctx, target: Target) -> Check:
        cluster, node = ctx.node(target.node)
        if ctx.facts(node.name).exists(KUBELET_CONF):
            return Check(True, "joined already")
        ready = static_nodes.readiness(ctx, cluster, node)
        if ready.ready:
            return Check(True, "ready to join: " + "; ".join(ready.passed))
        return Check(False, "not ready to join: " + "; ".join(ready.failed))

    def apply(self, ctx, target: Target) -> str:
        cluster, node = ctx.node(target.node)
        ready = static_nodes.readiness(ctx, cluster, node)
        if ready.ready:  # it became ready since the check (the load went down)
            return "ready to join: " + "; ".join(ready.passed)
        raise StepError(
            f"{node.name} ({node.address}) is not ready to join {cluster.name}: " + "; ".join(ready.failed),
            hint=f"fix each of these on {node.name}, then `labctl install --cluster {cluster.name}` again (it resumes "
            "here); nothing has been joined yet")


phase = Preflight()
