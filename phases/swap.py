"""swap (boot): after the VMs came back, no node of an installed cluster has swap on, and nothing turns it on at
the next boot. The kubelet does not start while swap is on (failSwapOn, reference/k8s-bootstrap.md §1), so swap
that came back at boot would leave the node NotReady while `boot` waited for it.

check: the node's facts — swap on now, or an fstab entry, .swap unit, swap service or zram-generator device that
       turns it on at boot (prepare.swap_actions, the same list `install` fixes).
apply: run prepare's script with just those actions: swap off, and what turned it on disabled. systemd restarts
       the kubelet by itself (kubeadm's kubelet.service restarts it every 10 s), and `ready` waits for it.
A cluster labctl never initialised (no kubeconfig here) is left alone: its nodes are `install`'s business.
"""

from __future__ import annotations

from labctl.engine import Check, Phase, Target
from labctl.kube import kubeconfig
from labctl.remote.facts import describe

from . import prepare


class Swap(Phase):
    name = "swap"
    scope = "node"
    after = ("boot",)
    description = "swap off on the nodes after the boot, and whatever turned it back on disabled"

    def check(self, ctx, target: Target) -> Check:
        if kubeconfig.read(ctx.state, target.cluster) is None:
            return Check(True, "no cluster installed yet: nothing to check")
        pending = prepare.swap_actions(ctx.facts(target.node))
        return Check(not pending, describe(pending) if pending else "swap off, and nothing turns it on at boot")

    def apply(self, ctx, target: Target) -> str | None:
        facts = ctx.facts(target.node)
        pending = prepare.swap_actions(facts)
        if not pending:
            return None
        try:
            ctx.transport(target.node).run(prepare.render(ctx, target, pending), sudo=True, timeout=300)
        finally:
            ctx.invalidate(target.node)
        note = describe(pending)
        if facts.swap.devices and not facts.swap_at_boot:
            # Something labctl does not know ran swapon at boot: off for now, but it comes back at the next boot.
            note += ("; turned off, but labctl found nothing that turns it on at boot (not fstab, a .swap unit, "
                     "a swap service or zram-generator): find what runs swapon on the node and disable it")
        return note


phase = Swap()
