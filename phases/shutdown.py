"""shutdown: every VM of the lab powered off, cleanly. Only VMs named in clusters.json that labctl created are touched.

check: the VM is not running (or does not exist), or it is not labctl's (labctl/ownership.py): a VM of the user's
       that carries a node's name is neither asked to power off nor stopped, and said so.
apply: ask the guest to power off over SSH when it answers (a clean systemd shutdown); the provider then waits for
       it, sends SIGUSR2 to `tart run` (an ACPI shutdown request) when the guest did not go, and pulls the plug with
       `tart stop` only as the last resort; the result says which it took. Workers go first, control planes last, so
       the control plane sees its workers leave; several control planes one at a time, the first one last. With --drain, each worker is cordoned and its pods evicted first.
"""

from __future__ import annotations

from labctl import ownership, static_nodes
from labctl.engine import Check, Phase, Target
from labctl.errors import CommandError, TransportError
from labctl.kube import kubeconfig
from labctl.render import script

# How long a guest gets to shut down by itself before the next, harder way is tried.
GRACE_SECONDS = 120


def poweroff_in_guest(ctx, name: str) -> bool:
    """True when the guest accepted a power-off request; False when it could not be asked (no SSH)."""
    try:
        ctx.transport(name).run(script("shutdown.poweroff", "node/poweroff.sh.j2"), sudo=True, timeout=30)
    except (TransportError, CommandError) as exc:
        ctx.log(name, f"in-guest power-off not possible ({exc.message.splitlines()[0]}); the provider stops it")
        return False
    finally:
        ctx.drop_transport(name)  # the connection dies with the guest either way
    return True


class Shutdown(Phase):
    name = "shutdown"
    scope = "node"
    description = "power off from inside the guest, workers first, masters one at a time"

    def waves(self, cluster):
        # Workers first. Several masters go one at a time and the first (the one `kubeadm init` ran on) last: each
        # member that leaves is seen leaving by a quorum that is still there, and the members' order is the same
        # on every shutdown (boot starts them all at once and waits for quorum).
        masters = [[m] for m in reversed(cluster.masters)] if len(cluster.masters) > 1 else [cluster.masters]
        return [cluster.workers, *masters]

    def check(self, ctx, target: Target) -> Check:
        cluster, node = ctx.node(target.node)
        if node.static:  # an existing machine: cordoned and drained, powered off only with --power-off
            return Check(*static_nodes.shutdown_check(ctx, cluster, node))
        vm = ctx.provider.get(target.node)
        if vm is None:
            return Check(True, "no VM")
        if not ownership.owns(ctx.state, target.cluster, target.node):
            return Check(True, ownership.left_alone(target.node))
        return Check(not vm.running, "stopped" if not vm.running else "running: power it off")

    def apply(self, ctx, target: Target) -> str:
        cluster, node = ctx.node(target.node)
        if node.static:
            return static_nodes.shutdown_apply(ctx, cluster, node)
        if not ownership.owns(ctx.state, target.cluster, node.name):  # never drain nor stop a VM labctl did not create
            raise ownership.not_ours(node.name)
        drained = ""
        if ctx.options.get("drain") and node.role == "worker" and kubeconfig.read(ctx.state, cluster.name):
            # pods move to the workers still up; `boot` uncordons exactly the nodes labctl drained
            drained = f"drained {ctx.kube(cluster).drain(node.name)} pods, "
        asked = poweroff_in_guest(ctx, node.name)
        how = ctx.provider.stop(node, timeout=ctx.options.get("grace_seconds", GRACE_SECONDS), guest_poweroff=asked)
        if how in ctx.provider.hard_stops:
            ctx.note(f"{node.name}: did not shut down by itself; it needed a hard stop (`{how}`)")
        return f"{drained}stopped ({how})"


phase = Shutdown()
