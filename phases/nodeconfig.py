"""nodeconfig: node labels and taints from clusters.json, set through the API.

check: every Node carries its labels and taints from clusters.json (workers also the conventional
       `node-role.kubernetes.io/worker` label, so `kubectl get nodes` shows their role), and none of the labels or
       taints labctl set earlier that clusters.json no longer lists.
apply: one merge patch per node that differs. What labctl set is remembered on the Node itself (annotations
       `labctl.internal/labels`, `labctl.internal/taints`), so removing a label from clusters.json removes it from
       the Node, while labels and taints others set (kubeadm's control-plane taint, Cilium's) are left alone.
       The taint list is replaced as a whole (merge patches replace lists), so the patch carries the resourceVersion
       it was computed from and is retried when the Node changed in between. A cluster without workers has its
       control planes' kubeadm NoSchedule taint removed, or no stack's pod could ever schedule there.
"""

from __future__ import annotations

from labctl.engine import Check, Phase, Target
from labctl.errors import StepError
from labctl.kube.client import KubeError

WORKER_ROLE = "node-role.kubernetes.io/worker"
LABELS_NOTE = "labctl.internal/labels"
TAINTS_NOTE = "labctl.internal/taints"
ATTEMPTS = 3
CONTROL_PLANE_TAINT = "node-role.kubernetes.io/control-plane:NoSchedule"


def desired(node) -> tuple[dict[str, str], list[dict[str, str]]]:
    labels = dict(node.labels)
    if node.role == "worker":
        labels.setdefault(WORKER_ROLE, "")
    taints = [{"key": t.key, "value": t.value, "effect": t.effect} if t.value else {"key": t.key, "effect": t.effect}
              for t in node.taints]
    return labels, taints


def _taint_id(taint: dict) -> str:
    return f"{taint['key']}:{taint.get('effect', '')}"


def node_patch(node, info, sole_nodes: bool = False) -> dict | None:
    """The merge patch that brings `info` (the Node as it is) to `node` (clusters.json), or None when none is needed.

    `sole_nodes`: the cluster has no workers, so its control planes must take ordinary pods (the stacks): kubeadm's
    control-plane NoSchedule taint comes off, as kind and minikube do for their one-node clusters."""
    labels, taints = desired(node)
    owned_labels = set(filter(None, info.annotations.get(LABELS_NOTE, "").split(",")))
    owned_taints = set(filter(None, info.annotations.get(TAINTS_NOTE, "").split(",")))
    label_patch: dict[str, str | None] = {k: v for k, v in labels.items() if info.labels.get(k) != v}
    label_patch.update({k: None for k in owned_labels - labels.keys() if k in info.labels})

    wanted = {_taint_id(t) for t in taints}
    dropped = owned_taints | ({CONTROL_PLANE_TAINT} if sole_nodes and node.role == "master" else set())
    kept = [t for t in info.taints if _taint_id(t) not in wanted | dropped]
    have = {_taint_id(t): {k: v for k, v in t.items() if k in ("key", "value", "effect") and v} for t in info.taints}
    taints_ok = all(have.get(_taint_id(t)) == t for t in taints) and not (dropped - wanted) & have.keys()

    notes = {LABELS_NOTE: ",".join(sorted(labels)), TAINTS_NOTE: ",".join(sorted(wanted))}
    notes_ok = all(info.annotations.get(k, "") == v for k, v in notes.items())
    if not label_patch and taints_ok and notes_ok:
        return None
    patch: dict = {"metadata": {"labels": label_patch, "annotations": notes, "resourceVersion": info.resource_version}}
    if not taints_ok:
        patch["spec"] = {"taints": kept + taints}
    return patch


def node_object(node) -> dict:
    """The Node fields labctl owns, as a manifest (what the tests validate against the Kubernetes schema)."""
    labels, taints = desired(node)
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node.name, "labels": labels},
            "spec": {"taints": taints}}


class NodeConfig(Phase):
    name = "nodeconfig"
    scope = "cluster"
    after = ("cni",)
    description = "node labels and taints from clusters.json"

    def _pending(self, ctx, cluster) -> list[tuple]:
        nodes = {info.name: info for info in ctx.kube(cluster).nodes()}
        missing = [n.name for n in cluster.nodes if n.name not in nodes]
        if missing:
            raise StepError(f"{cluster.name}: no Node for {', '.join(missing)} in the API",
                            hint="the `join` phase registers them: `labctl install --from join`")
        pending = []
        for node in cluster.nodes:
            patch = node_patch(node, nodes[node.name], sole_nodes=not cluster.workers)
            if patch is not None:
                pending.append((node, patch))
        return pending

    def check(self, ctx, target: Target) -> Check:
        cluster = ctx.lab.cluster(target.cluster)
        pending = self._pending(ctx, cluster)
        if pending:
            return Check(False, "labels/taints to set on " + ", ".join(n.name for n, _ in pending))
        return Check(True, f"labels and taints as in clusters.json on {len(cluster.nodes)} nodes")

    def apply(self, ctx, target: Target) -> str:
        cluster = ctx.lab.cluster(target.cluster)
        kube = ctx.kube(cluster)
        changed: list[str] = []
        for attempt in range(ATTEMPTS):
            pending = self._pending(ctx, cluster)
            if not pending:
                break
            for node, patch in pending:
                try:
                    kube.patch_node(node.name, patch)
                    changed.append(node.name)
                except KubeError as exc:
                    # 409: the Node changed since it was read (e.g. the node controller added a taint); re-read.
                    if exc.status != 409 or attempt == ATTEMPTS - 1:
                        raise
        return "labels/taints set on " + ", ".join(sorted(set(changed)))


phase = NodeConfig()
