"""stackhooks (boot): what the installed stacks know about the lab that a reboot can change.

A node that came back at a new address files a new kubelet-serving CSR (metrics-server cannot scrape it until it is
approved), and Argo CD's cluster Secrets still name the other clusters' old API addresses. Without this, `status`
would show metrics-server degraded and Argo CD unable to reach its destinations until the next `install`.

check: the hooks of every stack labctl installed on the cluster (recorded in .labctl/state.json) see no problem.
apply: run those hooks (approve the CSRs of the lab's own nodes, re-point the Argo CD destinations). Nothing is
       installed or upgraded here: a stack that is declared but not installed is `install`'s business.
"""

from __future__ import annotations

from labctl import stacks as S
from labctl.engine import Check, Phase, Target
from .stacks import hook_problems, run_hooks


def _installed_with_hooks(ctx, cluster) -> list[S.StackDef]:
    recorded = ctx.state.read().get("stacks", {}).get(cluster.name, {})
    out = []
    for name in S.installable(cluster):
        descriptor = S.catalogue().get(name)
        if name in recorded and descriptor and descriptor.hooks:
            out.append(S.resolve(ctx.lab, cluster, name, ctx.state.root.parent))
    return out


class StackHooks(Phase):
    name = "stackhooks"
    scope = "cluster"
    after = ("ready",)
    description = "stack hooks after a reboot: kubelet serving certificates, Argo CD destinations"

    def applies(self, lab, cluster) -> bool:
        return any(S.catalogue()[n].hooks for n in S.installable(cluster) if n in S.catalogue())

    def check(self, ctx, target: Target) -> Check:
        cluster = ctx.lab.cluster(target.cluster)
        found = [p for stack in _installed_with_hooks(ctx, cluster) for p in hook_problems(ctx, cluster, stack)]
        return Check(not found, "; ".join(found) or "stack hooks satisfied")

    def apply(self, ctx, target: Target) -> str:
        cluster = ctx.lab.cluster(target.cluster)
        found = [p for stack in _installed_with_hooks(ctx, cluster) for p in run_hooks(ctx, cluster, stack)]
        return "; ".join(found)


phase = StackHooks()
