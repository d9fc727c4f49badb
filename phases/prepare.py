"""prepare: what every kubeadm node needs before a container runtime — swap off, kernel modules, sysctls, a
unique name and machine-id.

Facts → compare → actions: `actions()` is a pure function of the node's facts (and its peers' machine-ids) and
returns what differs; the node script (templates/node/prepare.sh.j2) runs exactly those actions, each of which is
also safe to run twice. Everything is made to survive a reboot (fstab, modules-load.d, sysctl.d, hostnamectl).

machine-id: Tart clones copy the disk, so every VM cloned from an image that has a machine-id baked in shares it
(reference/k8s-bootstrap.md §0; systemd, journald and DHCP DUIDs key on it). "Shared" is detected by comparing this
node's id with the ids of the lab's other nodes that can be reached (their cached facts) — all clusters, since they
are all cloned from one base image. Every node that shares an id regenerates its own; a node kubeadm already ran
on is never touched (changing a cluster member's identity is worse than the duplicate). An unreachable peer is
skipped: it compares against this node when its own prepare runs.
"""

from __future__ import annotations

from collections.abc import Mapping

from labctl.engine import Check, Phase, Target
from labctl.errors import LabctlError
from labctl.remote.base import Script
from labctl.remote.facts import (
    CLOUD_CFG_DIR,
    CLOUD_HOSTNAME_CFG,
    FSTAB,
    HOSTS,
    HOSTS_LOCK,
    MODULES,
    MODULES_CONF,
    SYSCTL_CONF,
    SYSCTLS,
    ZRAM_GENERATOR_MASK,
    Action,
    NodeFacts,
    describe,
)
from labctl.render import script

# kubeadm's IPv4 preflight wants ip_forward (since 1.30 the only one); the bridge ones make iptables see bridged
# pod traffic, the usual containerd prep (reference/k8s-bootstrap.md §1).
WANT_SYSCTLS = {key: "1" for key in SYSCTLS}
UNSET_MACHINE_IDS = ("", "uninitialized")


def swap_actions(facts: NodeFacts) -> list[Action]:
    """Swap on now, and everything that would turn it on at the next boot (the kubelet does not start with swap
    on: reference/k8s-bootstrap.md §1): fstab entries, .swap units, services that run swapon themselves
    (SWAP_SERVICES, e.g. zram-tools' zramswap.service), zram-generator. Also boot's check (phases/swap.py)."""
    out: list[Action] = []
    if facts.swap.devices:
        out.append(Action("swapoff", f"swap is on ({', '.join(facts.swap.devices)})"))
    if facts.fstab_swap:
        out.append(Action("swap-fstab", f"{FSTAB} turns swap on at boot ({', '.join(facts.fstab_swap)})"))
    if facts.swap_units_to_mask:
        out.append(Action("swap-units", f"swap units not masked ({', '.join(facts.swap_units_to_mask)})"))
    if facts.swap_services_to_disable:
        out.append(Action("swap-services", f"{', '.join(facts.swap_services_to_disable)} turns swap on at boot"))
    if facts.zram_generator_devices:
        devices = ", ".join(f"/dev/{d}" for d in facts.zram_generator_devices)
        out.append(Action("zram-generator", f"zram-generator makes swap on {devices} at boot"))
    return out


def actions(facts: NodeFacts, name: str, peer_machine_ids: Mapping[str, str] | None = None) -> list[Action]:
    """What differs on this node, in the order the script applies it. Empty: nothing to do."""
    out: list[Action] = swap_actions(facts)

    not_loaded = [m for m in MODULES if not facts.modules.get(m)]
    listed = facts.conf_lines(MODULES_CONF)
    not_listed = [m for m in MODULES if m not in listed]
    if not_loaded or not_listed:
        why = []
        if not_loaded:
            why.append(f"module {', '.join(not_loaded)} not loaded")
        if not_listed:
            why.append(f"{', '.join(not_listed)} not in {MODULES_CONF}")
        out.append(Action("modules", "; ".join(why)))

    live = {k: facts.sysctl.get(k) for k in WANT_SYSCTLS}
    persisted = facts.conf_values(SYSCTL_CONF)
    wrong_live = [f"{k}={v if v is not None else 'unset'}" for k, v in live.items() if v != WANT_SYSCTLS[k]]
    wrong_conf = [k for k, want in WANT_SYSCTLS.items() if persisted.get(k) != want]
    if wrong_live or wrong_conf:
        why = [f"{', '.join(wrong_live)} (want 1)"] if wrong_live else []
        if wrong_conf:
            why.append(f"{', '.join(wrong_conf)} not persisted in {SYSCTL_CONF}")
        out.append(Action("sysctl", "; ".join(why)))

    naming = []
    if facts.hostname != name:
        naming.append(f"hostname is {facts.hostname!r} (want {name!r})")
    elif facts.static_hostname != name:
        naming.append(f"/etc/hostname says {facts.static_hostname!r} (want {name!r})")
    if not facts.hosts_resolves(name):
        naming.append(f"{HOSTS} does not resolve {name}")
    if facts.exists(CLOUD_CFG_DIR) and not facts.exists(CLOUD_HOSTNAME_CFG):
        naming.append("cloud-init may reset the hostname at boot")
    if naming:
        out.append(Action("hostname", "; ".join(naming)))

    shared = sorted(peer for peer, mid in (peer_machine_ids or {}).items() if mid == facts.machine_id)
    if not facts.kubeadm_ran:
        if facts.machine_id in UNSET_MACHINE_IDS:
            out.append(Action("machine-id", "machine-id is not set"))
        elif shared:
            out.append(Action("machine-id", f"machine-id {facts.machine_id[:8]}… shared with {', '.join(shared)}"))
    return out


def noop_reason(name: str) -> str:
    return (f"swap off and kept off, {' + '.join(MODULES)} loaded, {len(WANT_SYSCTLS)} sysctls set, "
            f"hostname {name}, machine-id unique")


def params(facts: NodeFacts, name: str, pending: list[Action]) -> dict:
    """The script's parameters: the action names and every value those actions need."""
    return {
        "actions": [a.name for a in pending],
        "node_name": name,
        "swap_units": facts.swap_units_to_mask,
        "swap_services": facts.swap_services_to_disable,
        "zram_devices": facts.zram_generator_devices,
        "zram_generator_mask": ZRAM_GENERATOR_MASK,
        "modules": list(MODULES),
        "modules_conf": MODULES_CONF,
        "sysctls": dict(WANT_SYSCTLS),
        "sysctl_conf": SYSCTL_CONF,
        "cloud_cfg_dir": CLOUD_CFG_DIR,
        "cloud_hostname_cfg": CLOUD_HOSTNAME_CFG,
        "hosts_lock": HOSTS_LOCK,
        # the id being replaced: the script regenerates only while it is still this one (safe to run twice)
        "machine_id": facts.machine_id,
    }


def peer_machine_ids(ctx, name: str) -> dict[str, str]:
    """machine-ids of the lab's other nodes that answer. Whether a node answers is asked once per run, so an
    absent VM costs one connection attempt, not one per node that looks at it."""
    out: dict[str, str] = {}
    for _, other in ctx.lab.nodes:
        if other.name == name:
            continue

        def reachable(peer: str = other.name) -> bool:
            try:
                ctx.facts(peer)
            except LabctlError:
                return False
            return True

        if not ctx.once(f"prepare:reachable:{other.name}", reachable):
            continue
        try:
            out[other.name] = ctx.facts(other.name).machine_id
        except LabctlError:
            continue
    return out


def todo(ctx, target: Target) -> list[Action]:
    """The actions for this node now: its facts, compared with its peers'."""
    return actions(ctx.facts(target.node), target.node, peer_machine_ids(ctx, target.node))


def render(ctx, target: Target, pending: list[Action]) -> Script:
    return script("prepare.apply", "node/prepare.sh.j2", **params(ctx.facts(target.node), target.node, pending))


class Prepare(Phase):
    name = "prepare"
    scope = "node"
    after = ("vms",)
    description = "swap off, kernel modules, sysctls, hostname, machine-id"

    def check(self, ctx, target: Target) -> Check:
        pending = todo(ctx, target)
        return Check(not pending, describe(pending) if pending else noop_reason(target.node))

    def apply(self, ctx, target: Target) -> str | None:
        pending = todo(ctx, target)
        if not pending:
            return None
        run = render(ctx, target, pending)
        try:
            ctx.transport(target.node).run(run, sudo=True, timeout=300)
        finally:
            ctx.invalidate(target.node)  # even a half-applied script changed the node
        return ", ".join(a.name for a in pending)


phase = Prepare()
