"""cni: Cilium, kube-proxy free, with Hubble, installed by Helm on the first control plane.

check (from the host, through the cluster's API): the Helm release `kube-system/cilium` is deployed at the pinned
       chart version with exactly the values labctl renders for this cluster (read from Helm's release Secret, so a
       changed clusters.json — another version, Hubble off — is seen); the cilium and cilium-envoy DaemonSets, the
       operator (and Hubble relay/UI when enabled) are ready; there is one CiliumNode per node; every Node is Ready.
apply: only when the check fails (a second install issues no `helm upgrade`): Helm at the pinned version on the
       control plane, the rendered values, `helm upgrade --install --wait`, then the same check until it passes.
"""

from __future__ import annotations

from labctl.engine import Check, Phase, Target
from labctl.helm import HELM_TIMEOUT, recover_pending
from labctl.kube import API_PORT, endpoint_host
from labctl.kube.client import parallel
from labctl.render import render, script

NAMESPACE = "kube-system"
RELEASE = "cilium"
REPO_NAME = "cilium"
REPO_URL = "https://helm.cilium.io/"
CHART = "cilium/cilium"
VALUES_PATH = "/etc/labctl/cilium-values.yaml"
SETTLE_WAIT = 300  # after Helm's wait: CiliumNodes and Node Ready follow the agents within a minute or so


def values_params(lab, cluster) -> dict:
    return {
        "cluster": cluster.name,
        "cluster_id": lab.cluster_id(cluster),
        "version": lab.versions.cilium,
        "endpoint_host": endpoint_host(cluster.name),
        "port": API_PORT,
        "pod_cidr": cluster.pod_cidr,
        # Two operators (the chart's default) spread one per node and need a spare node to roll over to.
        "operator_replicas": 1 if len(cluster.nodes) < 3 else 2,
        "hubble": cluster.cilium.hubble,
        "hubble_ui_node_port": cluster.cilium.hubble_ui_node_port,
        "istio": "istio" in cluster.stack_names,
    }


def cilium_values(lab, cluster) -> str:
    return render("cilium/values.yaml.j2", **values_params(lab, cluster))


def rollback_flag(helm_version: str) -> str:
    # Helm 4 renamed --atomic (reference §6).
    return "--atomic" if int(helm_version.split(".")[0]) < 4 else "--rollback-on-failure"


def problems(kube, lab, cluster) -> list[str]:
    """Everything that keeps Cilium on `cluster` from being what clusters.json asks for; [] when it is."""
    import yaml

    hubble = cluster.cilium.hubble
    release, agents, operator, envoy, relay, ui, cilium_nodes, node_list = parallel(
        lambda: kube.helm_release(NAMESPACE, RELEASE),
        lambda: kube.daemonset_ready(NAMESPACE, "cilium"),
        lambda: kube.deployment_ready(NAMESPACE, "cilium-operator"),
        lambda: kube.daemonset_ready(NAMESPACE, "cilium-envoy"),
        lambda: kube.deployment_ready(NAMESPACE, "hubble-relay") if hubble else None,
        lambda: kube.deployment_ready(NAMESPACE, "hubble-ui") if hubble else None,
        kube.ciliumnodes,
        kube.nodes,
    )
    if release is None:
        return ["Cilium is not installed"]
    out: list[str] = []
    if release.status != "deployed":
        out.append(f"Helm release {RELEASE} is {release.status}")
    if release.chart_version != lab.versions.cilium:
        out.append(f"Cilium chart {release.chart_version}, want {lab.versions.cilium}")
    if release.values != yaml.safe_load(cilium_values(lab, cluster)):
        out.append("Cilium values differ from clusters.json")
    out += [r.detail for r in (agents, operator) if not r.ready]
    if envoy.found and not envoy.ready:  # a separate DaemonSet only where the chart runs Envoy outside the agent
        out.append(envoy.detail)
    out += [r.detail for r in (relay, ui) if r is not None and not r.ready]
    wanted = {n.name for n in cluster.nodes}
    missing = sorted(wanted - set(cilium_nodes))
    if missing:
        out.append(f"no CiliumNode for {', '.join(missing)}")
    nodes = {n.name: n for n in node_list}
    not_ready = sorted(name for name in wanted if name not in nodes or not nodes[name].ready)
    if not_ready:
        out.append(f"not Ready: {', '.join(not_ready)}")
    return out


# state.json: clusters whose API hosts line was rewritten while their Cilium pods may hold the old one. Recorded before
# the rewrite and cleared after the restart, so a run that stops in between still restarts them next time.
RESTART_PENDING = "cilium_restart_pending"
RESTARTED = (("DaemonSet", "cilium"), ("Deployment", "cilium-operator"))


def restart_problem(ctx, cluster) -> str | None:
    """What a check reports while a restart is owed (a hosts line was rewritten under running agents), else None."""
    if cluster.name in ctx.state.read().get(RESTART_PENDING, []):
        return "Cilium still resolves the API name to the old address: restart pending"
    return None


def mark_restart(ctx, cluster, pending: bool) -> None:
    def change(data: dict) -> None:
        names = [n for n in data.get(RESTART_PENDING, []) if n != cluster.name] + ([cluster.name] if pending else [])
        data[RESTART_PENDING] = names

    ctx.state.update(change)


def restart_if_pending(ctx, cluster) -> str | None:
    """restart_agents when a restart is owed, then clear the mark; what it did, or None."""
    if restart_problem(ctx, cluster) is None:
        return None
    restarted = restart_agents(ctx, cluster)
    mark_restart(ctx, cluster, False)
    return restarted


def restart_agents(ctx, cluster) -> str | None:
    """Restart Cilium's agents and operator after the API hosts line changed, and wait until they are ready.

    Why: they run in the host network, and the kubelet gives a host-network container a copy of the node's
    /etc/hosts when it starts it (kubelet_pods.go ensureHostsFile; kubernetes.io "Adding entries to Pod /etc/hosts":
    the file "can be overwritten during Pod creation/restart"), so running ones keep resolving the stable API name
    to the old address until they crash. A rollout restart gives every pod a fresh copy. Does nothing when Cilium is
    not installed (yet). Returns what it did, or None; raises StepError when they are not ready in SETTLE_WAIT s.
    """
    kube = ctx.kube(cluster)
    restarted = [f"{kind} {name}" for kind, name in RESTARTED if kube.rollout_restart(NAMESPACE, kind, name)]
    if not restarted:
        return None
    ctx.note(f"{cluster.name}: restarting Cilium ({', '.join(restarted)}) so that it resolves the API name anew")

    def ready() -> tuple[bool, str]:
        found = [r.detail for r in (kube.daemonset_ready(NAMESPACE, "cilium"),
                                    kube.deployment_ready(NAMESPACE, "cilium-operator")) if not r.ready]
        return not found, "; ".join(found)

    kube.wait_for("Cilium to be ready after its restart", ready, timeout=SETTLE_WAIT)
    return f"restarted {', '.join(restarted)} (new API address)"


class Cni(Phase):
    name = "cni"
    scope = "cluster"
    after = ("join",)
    description = "Cilium (kube-proxy free) and Hubble via Helm"

    def check(self, ctx, target: Target) -> Check:
        cluster = ctx.lab.cluster(target.cluster)
        found = problems(ctx.kube(cluster), ctx.lab, cluster)
        if owed := restart_problem(ctx, cluster):  # a hosts line was repaired (e.g. by `join`) under running agents
            found.append(owed)
        if found:
            return Check(False, "; ".join(found))
        return Check(True, f"Cilium {ctx.lab.versions.cilium} ready on {len(cluster.nodes)} nodes")

    def apply(self, ctx, target: Target) -> str:
        lab = ctx.lab
        cluster = lab.cluster(target.cluster)
        kube = ctx.kube(cluster)
        restarted = restart_if_pending(ctx, cluster)
        if restarted and not problems(kube, lab, cluster):
            return restarted
        transport = ctx.transport(cluster.masters[0].name)
        helm = f"v{lab.versions.helm}"
        transport.run(script("cni.helm-binary", "cluster/helm-binary.sh.j2", version=helm), sudo=True, timeout=300)
        recover_pending(ctx, cluster, NAMESPACE, RELEASE)
        transport.put(VALUES_PATH, cilium_values(lab, cluster).encode(), 0o644, sudo=True)
        ctx.note(f"{cluster.name}: helm upgrade --install cilium {lab.versions.cilium} (waits for the agents)")
        install = script(
            "cni.helm-install", "cluster/cilium-install.sh.j2",
            cluster=cluster.name, release=RELEASE, chart=CHART, repo_name=REPO_NAME, repo_url=REPO_URL,
            version=lab.versions.cilium, namespace=NAMESPACE, values_path=VALUES_PATH, timeout=HELM_TIMEOUT,
            helm_version=helm, helm_major=int(lab.versions.helm.split(".")[0]),
            rollback_flag=rollback_flag(lab.versions.helm), values=values_params(lab, cluster),
        )
        transport.run(install, sudo=True, timeout=15 * 60)

        def settled() -> tuple[bool, str]:
            found = problems(kube, lab, cluster)
            return not found, "; ".join(found)

        kube.wait_for("Cilium to settle", settled, timeout=SETTLE_WAIT)
        return f"Cilium {lab.versions.cilium} installed with Helm {helm}"


phase = Cni()
