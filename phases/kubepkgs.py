"""kubepkgs: kubeadm, kubelet and kubectl at exactly the pinned version, from pkgs.k8s.io, held.

pkgs.k8s.io has one repository per minor (reference/k8s-bootstrap.md §2), so the apt source names the pinned
minor and is rewritten when the pin moves to another minor. The exact Debian revision ("1.35.6-1.1") is resolved
on the node with `apt-cache madison`. The packages are held so an `apt upgrade` never moves the kubelet past the
control plane.

Without internet (e.g. the real-VM test, which reaches only Debian's mirror) the script fails with
"cannot reach pkgs.k8s.io ..." before it writes anything (an apt step that fails for another reason, or finds apt
busy, gets its own message: labctl/remote/apt.py): the key is downloaded and dearmored into a temporary
directory first, the source list is written only after that, and it is taken back if `apt-get update` cannot
read the repository.

A node kubeadm already ran on is not up- or downgraded here: that is `kubeadm upgrade`'s job (control plane
first, kubelet never newer than the API server), so a version difference there is reported, not "fixed".
"""

from __future__ import annotations

from labctl.engine import Check, Phase, Target
from labctl.errors import CommandError, StepError
from labctl.kube import balancer as balancer_module
from labctl.kube import highly_available
from labctl.remote import apt
from labctl.remote.base import Script
from labctl.remote.facts import (
    KUBE_KEYRING,
    KUBE_LIST,
    KUBE_PACKAGES,
    Action,
    NodeFacts,
    describe,
)
from labctl.render import script

# Node script exit codes the phase turns into clear errors (see templates/node/kubepkgs.sh.j2).
EXIT_UNREACHABLE = 10
EXIT_NOT_IN_REPO = 11


def minor(kubernetes: str) -> str:
    return ".".join(kubernetes.split(".")[:2])


def repo_url(kubernetes: str) -> str:
    return f"https://pkgs.k8s.io/core:/stable:/v{minor(kubernetes)}/deb/"


def source_line(kubernetes: str) -> str:
    return f"deb [signed-by={KUBE_KEYRING}] {repo_url(kubernetes)} /"


def actions(facts: NodeFacts, kubernetes: str, balancer: bool = False) -> list[Action]:
    """What differs, in the order the script does it. `balancer`: the node is a worker of a cluster with several
    masters and needs the distribution's haproxy (labctl/kube/balancer.py). Raises StepError for what labctl must
    not fix itself."""
    out: list[Action] = []
    want_minor = minor(kubernetes)
    have_minor = facts.k8s_repo_minor
    if not facts.exists(KUBE_KEYRING):
        out.append(Action("repo", f"no pkgs.k8s.io signing key ({KUBE_KEYRING})"))
    elif have_minor != want_minor or facts.conf_lines(KUBE_LIST) != [source_line(kubernetes)]:
        what = f"pkgs.k8s.io v{have_minor}" if have_minor else "no pkgs.k8s.io repository"
        out.append(Action("repo", f"{KUBE_LIST}: {what} (want v{want_minor})"))

    versions = facts.kube_versions
    wrong = {name: have for name, have in versions.items() if have != kubernetes}
    if wrong:
        listed = ", ".join(f"{name} {have or 'missing'}" for name, have in wrong.items())
        if facts.kubeadm_ran and any(have is not None for have in wrong.values()):
            raise StepError(
                f"{listed} (pinned: {kubernetes}) on a node kubeadm already set up; labctl does not change "
                "Kubernetes versions under a running node",
                hint="upgrade with `kubeadm upgrade` (control plane first), or set versions.kubernetes to the "
                "version the cluster runs",
            )
        out.append(Action("install", f"{listed} (want {kubernetes})"))

    not_held = [name for name in KUBE_PACKAGES if name not in facts.held]
    if not_held:
        out.append(Action("hold", f"not held: {', '.join(not_held)}"))
    elif wrong:
        out.append(Action("hold", "hold them again after the install"))
    if not facts.kubelet.is_enabled:
        # kubeadm's preflight warns when it is not; it crash-loops until init/join, which is expected.
        out.append(Action("enable-kubelet", f"kubelet.service is {facts.kubelet.enabled or 'not installed'}"))
    if balancer and not (facts.packages.get(balancer_module.PACKAGE) and
                         facts.packages[balancer_module.PACKAGE].installed):
        out.append(Action("haproxy", "no haproxy (this worker's local API balancer: the cluster has several masters)"))
    return out


def params(kubernetes: str, pending: list[Action]) -> dict:
    return {
        "actions": [a.name for a in pending],
        "version": kubernetes,
        "minor": minor(kubernetes),
        "packages": list(KUBE_PACKAGES),
        "balancer_package": balancer_module.PACKAGE,
        "key_url": repo_url(kubernetes) + "Release.key",
        "keyring": KUBE_KEYRING,
        "list_file": KUBE_LIST,
        "source_line": source_line(kubernetes),
        **apt.params(),
    }


def todo(ctx, target: Target) -> list[Action]:
    cluster, node = next((c, n) for c, n in ctx.lab.nodes if n.name == target.node)
    balancer = highly_available(cluster) and node.role == "worker"
    return actions(ctx.facts(target.node), ctx.lab.versions.kubernetes, balancer)


def render(ctx, target: Target, pending: list[Action]) -> Script:
    return script("kubepkgs.apply", "node/kubepkgs.sh.j2", **params(ctx.lab.versions.kubernetes, pending))


class KubePackages(Phase):
    name = "kubepkgs"
    scope = "node"
    after = ("runtime",)
    description = "kubeadm, kubelet, kubectl pinned from pkgs.k8s.io and held"

    def check(self, ctx, target: Target) -> Check:
        pending = todo(ctx, target)
        if pending:
            return Check(False, describe(pending))
        kubernetes = ctx.lab.versions.kubernetes
        return Check(True, f"kubeadm, kubelet, kubectl {kubernetes} from pkgs.k8s.io v{minor(kubernetes)}, held")

    def apply(self, ctx, target: Target) -> str | None:
        pending = todo(ctx, target)
        if not pending:
            return None
        kubernetes = ctx.lab.versions.kubernetes
        try:
            ctx.transport(target.node).run(render(ctx, target, pending), sudo=True, timeout=900)
        except CommandError as exc:
            if exc.returncode == EXIT_UNREACHABLE:
                raise StepError(
                    f"{target.node}: cannot reach pkgs.k8s.io, so kubeadm/kubelet/kubectl cannot be installed; "
                    f"nothing was changed\n{exc.tail}",
                    hint="the node needs outbound HTTPS to pkgs.k8s.io (check its network and DNS: "
                    "`curl -I https://pkgs.k8s.io` on the node)",
                ) from exc
            failure = apt.failure(exc, f"installing kubeadm/kubelet/kubectl {kubernetes}")
            if failure is not None:
                raise failure from exc
            if exc.returncode == EXIT_NOT_IN_REPO:
                raise StepError(
                    f"{target.node}: Kubernetes {kubernetes} is not in pkgs.k8s.io v{minor(kubernetes)}\n{exc.tail}",
                    hint="set versions.kubernetes in clusters.json to a released patch version",
                ) from exc
            raise
        finally:
            ctx.invalidate(target.node)
        return ", ".join(a.name for a in pending)


phase = KubePackages()
