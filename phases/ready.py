"""ready (boot): every node of the cluster is back: Ready, and schedulable again if labctl drained it.

check: the API lists every node of clusters.json as Ready, and none is still cordoned by `labctl shutdown --drain`.
apply: uncordon the nodes labctl drained (a node the user cordoned by hand stays cordoned), then wait for Ready.
"""

from __future__ import annotations

from labctl.engine import Check, Phase, Target
from labctl.kube import kubeconfig
from labctl.kube.client import DRAINED, KubeError

READY_TIMEOUT = 300


def _waiting(ctx, cluster) -> list[str]:
    nodes = {n.name: n for n in ctx.kube(cluster).nodes()}
    out = []
    for node in cluster.nodes:
        info = nodes.get(node.name)
        if info is None:
            out.append(f"{node.name} not registered")
        elif not info.ready:
            out.append(f"{node.name} NotReady {info.ready_reason}".rstrip())
        elif info.unschedulable and DRAINED in info.annotations:
            out.append(f"{node.name} cordoned by labctl")
    return out


class Ready(Phase):
    name = "ready"
    scope = "cluster"
    after = ("addresses", "swap")  # the kubelet does not start while swap is on
    description = "uncordon what shutdown drained, wait until every node is Ready"

    def check(self, ctx, target: Target) -> Check:
        cluster = ctx.lab.cluster(target.cluster)
        if kubeconfig.read(ctx.state, cluster.name) is None:
            return Check(True, "not installed yet")
        try:
            waiting = _waiting(ctx, cluster)
        except KubeError as exc:
            # Right after the VMs came back the API server is still starting: not done yet, and apply waits for it.
            return Check(False, f"the API server does not answer yet ({exc.message.splitlines()[0]})")
        return Check(not waiting, "; ".join(waiting) or f"{len(cluster.nodes)} nodes Ready")

    def apply(self, ctx, target: Target) -> str:
        cluster = ctx.lab.cluster(target.cluster)
        kube = ctx.kube(cluster)
        kube.wait_for("the API server answers", lambda: (kube.nodes() is not None, "answering"), timeout=READY_TIMEOUT)
        uncordoned = [n.name for n in cluster.nodes if kube.undrain(n.name)]

        def all_ready():
            waiting = _waiting(ctx, cluster)
            return not waiting, "; ".join(waiting)

        kube.wait_for("all nodes Ready", all_ready, timeout=READY_TIMEOUT)
        return f"uncordoned {', '.join(uncordoned)}; all Ready" if uncordoned else "all Ready"


phase = Ready()
