"""Helm on a cluster's first control plane: the scripts that unblock and remove releases (installs are the phases').

labctl never runs Helm on the host: it runs on the control plane over SSH (templates/cluster/*.sh.j2), and what a
release looks like is read from Helm's own record in the API (Kube.helm_release).
"""

from __future__ import annotations

from .render import script

HELM_TIMEOUT = "10m"  # a first install pulls its images on every node (Cilium: agent, envoy, operator, Hubble)


def recover_pending(ctx, cluster, namespace: str, release: str) -> str | None:
    """Unblock a release whose newest revision is pending-install/-upgrade/-rollback: what a Helm stopped
    mid-operation leaves (an interrupted run), and Helm refuses every later upgrade of it ("another operation
    (install/upgrade/rollback) is in progress", pkg/action/upgrade.go errPending). A first install that never
    finished is uninstalled (nothing to go back to); anything else is rolled back to the revision before it.
    Returns what it did, or None when the release is not pending. Raises StepError (the script's) when Helm fails."""
    live = ctx.kube(cluster).helm_release(namespace, release)
    if live is None or not live.status.startswith("pending-"):
        return None
    uninstall = live.status == "pending-install"
    ctx.note(f"{cluster.name}: Helm release {release} is {live.status} (an interrupted Helm): "
             + ("uninstalling the unfinished first install" if uninstall else "rolling back"))
    ctx.transport(cluster.masters[0].name).run(script("helm.recover", "cluster/helm-recover.sh.j2", cluster=cluster.name, release=release,
                         namespace=namespace, status=live.status, uninstall=uninstall, timeout=HELM_TIMEOUT,
                         helm_version=f"v{ctx.lab.versions.helm}"),
                                               sudo=True, timeout=15 * 60)
    return f"{release} was {live.status}: " + ("uninstalled" if uninstall else "rolled back")


def uninstall_release(ctx, cluster, stack: str, namespace: str, release: str) -> bool:
    """`helm uninstall --wait` of one release of `stack`, when Helm still has it. Returns True when it ran.
    Raises StepError (the script's) when Helm fails."""
    if ctx.kube(cluster).helm_release(namespace, release) is None:
        return False
    ctx.transport(cluster.masters[0].name).run(script(
        "stacks.helm-uninstall", "cluster/stack-helm-uninstall.sh.j2", cluster=cluster.name, stack=stack,
        release=release, namespace=namespace, timeout=HELM_TIMEOUT, helm_version=f"v{ctx.lab.versions.helm}",
    ), sudo=True, timeout=15 * 60)
    return True
