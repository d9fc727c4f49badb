"""The library API behind the CLI: open a lab, validate it, plan it, install it.

Each function is one command's whole flow (DESIGN.md "flow of one command"); the CLI only parses options and
renders. Tests and the simulated lab call these directly, replacing the context factories they need.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from . import credentials, host, model, redact
from .context import Context, lab_dir
from .engine import Engine, Selection, Step, StepResult, Summary, build_steps
from .errors import FileError, LabctlError
from .resources import phases_package
from .state import LabState

# The first-contact SSH password from the environment, over clusters.json's: how Terraform's sensitive
# `ssh_password` variable reaches the labctl its provisioners run, without being written to any file.
PASSWORD_ENV = "LABCTL_SSH_PASSWORD"

# The simulated lab (tests/sim) plugs its provider, transports and API servers in here.
CONTEXT_OVERRIDES: dict[str, Any] = {}


@dataclass
class LabSession:
    config: Path
    model: model.Lab
    state: LabState

    @classmethod
    def open(cls, config: Path) -> LabSession:
        spec = model.load(config)
        if password := os.environ.get(PASSWORD_ENV):  # Terraform's `ssh_password` variable arrives here
            spec = spec.model_copy(update={"ssh_password": SecretStr(password)})
        if spec.ssh_password is not None:  # never in a log or an error, whatever echoes it
            redact.register(spec.ssh_password.get_secret_value())
        return cls(config, spec, LabState(lab_dir(config) / ".labctl"))

    def context(self, notify: Callable[[str], None] | None = None, **options: Any) -> Context:
        kwargs = {**CONTEXT_OVERRIDES}
        return Context(self.model, self.state, notify=notify, options=options, **kwargs)


@dataclass
class RunOptions:
    selection: Selection = field(default_factory=Selection)
    parallel: int = 0  # 0 = one worker per node (steps mostly wait on VMs and SSH, not on the CPU)
    fail_fast: bool = False

    def workers(self, lab: model.Lab) -> int:
        return self.parallel or max(4, len(lab.nodes))


def phases_for(command: str) -> list:
    return phases_package().phases_for(command)


def spec_hashes(lab: model.Lab) -> dict[str, str]:
    """The spec hash of every node (`cluster/node`) and cluster (`cluster`) as clusters.json asks for them now."""
    out = {}
    for cluster in lab.clusters:
        out[cluster.name] = model.cluster_hash(lab, cluster)
        for node in cluster.nodes:
            out[f"{cluster.name}/{node.name}"] = model.node_hash(lab, node)
    return out


def spec_changes(lab: LabSession) -> list[str]:
    """What changed in clusters.json since the last successful run, as lines for the plan."""
    recorded = lab.state.read()["specs"]
    if not recorded and not removed_stacks(lab):
        return []
    now = spec_hashes(lab.model)
    lines = []
    for key, value in now.items():
        kind = "node" if "/" in key else "cluster"
        name = key.split("/")[-1]
        if key not in recorded:
            lines.append(f"+ {kind} {name} is new in clusters.json")
        elif recorded[key] != value:
            lines.append(f"~ {kind} {name} changed in clusters.json since the last install")
    for cluster_name, name in removed_stacks(lab):
        lines.append(f"- stack {name} on {cluster_name} is no longer in clusters.json: `labctl install --prune` "
                     "uninstalls it")
    for key in recorded:
        if key not in now:
            kind = "node" if "/" in key else "cluster"
            hint = "`labctl install --prune` drains it, deletes its Node and its VM" if kind == "node" else \
                "its VMs are left alone; `labctl destroy` before removing a cluster from clusters.json"
            lines.append(f"- {kind} {key.split('/')[-1]} is no longer in clusters.json: {hint}")
    return lines


def _step_spec(step: Step, hashes: dict[str, str]) -> str | None:
    t = step.target
    return hashes.get(f"{t.cluster}/{t.node}" if t.node else (t.cluster or ""))


def _short_bounds() -> dict[str, float]:
    """SSH bounds (seconds) of the commands that must not wait long on a booting or hung guest: `plan` reports it
    unknown, `shutdown` and `destroy` power it off through the provider (docs/quickstart.md, "Timeouts")."""
    from .remote.ssh import PROBE_TIMEOUT

    return {"connect_timeout": PROBE_TIMEOUT, "answer_timeout": PROBE_TIMEOUT}


def plan(lab: LabSession, opts: RunOptions, emit=None) -> Summary:
    from .remote.ssh import PROBE_TIMEOUT

    steps = build_steps(lab.model, phases_for("install"), opts.selection)
    # read-only: short bounds like `status`, so a booting or hung node is `unknown` after seconds, not minutes
    ctx = lab.context(**_short_bounds(), request_timeout=PROBE_TIMEOUT, kube_retries=0)
    try:
        return Engine(ctx, parallel=opts.workers(lab.model), emit=emit).plan(steps)
    finally:
        ctx.close()


def check_budget(lab: model.Lab, phase_names: list[str], clusters: list[str] = ()) -> None:
    """Refuse to create VMs whose memory would not fit the host (memory is never overcommitted). `clusters`: the
    ones --cluster selected (all when empty): only their VMs are created now, so only they count, and the hint's
    "one cluster at a time with --cluster" really gets past this check."""
    if "vms" not in phase_names:
        return
    if lab.provider.type == "orchard":  # the VMs live on the controller's workers: install checks their capacity
        return
    b = host.budget(lab, clusters=clusters)
    if not b.memory_fits:
        what = f"cluster{'s' if len(clusters) > 1 else ''} {', '.join(clusters)}" if clusters else "the lab"
        raise LabctlError(
            f"{what} needs {b.memory_mib} MiB of memory but this host has {b.memory_available_mib} MiB to give "
            f"({b.describe()})",
            hint="lower `memory` of some nodes, drop a cluster, or install one cluster at a time with --cluster",
        )


def run(
    lab: LabSession,
    steps: list[Step],
    opts: RunOptions,
    command: str,
    emit=None,
    notify=None,
    on_start: Callable[[list[Step]], None] | None = None,
    options: dict[str, Any] | None = None,
) -> Summary:
    """Run steps under the lab lock, recording each result and the spec hashes of what converged."""
    hashes = spec_hashes(lab.model)

    def record(result: StepResult) -> None:
        try:
            lab.state.record_step(result.step.id, result.status, result.detail, result.elapsed,
                                  _step_spec(result.step, hashes))
        except FileError as exc:  # the step itself is done: it is shown and summarised; the CLI reports this after
            lab.state.failed_write(exc)

    with lab.state.locked(command):
        ctx = lab.context(notify=notify, **(options or {}))
        try:
            if on_start:
                on_start(steps)
            summary = Engine(ctx, parallel=opts.workers(lab.model), fail_fast=opts.fail_fast, emit=emit,
                             record=record).run(steps)
        finally:
            ctx.close()
        failed_targets = {r.step.target.cluster for r in summary.results if r.status not in ("changed", "unchanged")}
        converged = {k: v for k, v in hashes.items() if k.split("/")[0] not in failed_targets
                     and (not opts.selection.clusters or k.split("/")[0] in opts.selection.clusters)}
        if command == "install" and converged and opts.selection.whole:
            try:
                lab.state.set_specs(converged)
            except FileError as exc:
                lab.state.failed_write(exc)
    return summary


def install(lab: LabSession, opts: RunOptions, emit=None, notify=None, on_start=None, prune: bool = False,
            adopt: bool = False) -> Summary:
    """adopt: let the vms phase take over existing VMs labctl did not create (labctl/ownership.py)."""
    steps = build_steps(lab.model, phases_for("install"), opts.selection)
    require_provider(lab)  # first: without the provider nothing else matters (no Tart on Linux before a budget)
    check_budget(lab.model, sorted({s.phase.name for s in steps}), opts.selection.clusters)
    if lab.model.provider.type == "orchard" and any(s.phase.name == "vms" for s in steps):
        _check_orchard_capacity(lab, opts.selection.clusters)
    removed = removed_nodes(lab)
    dropped = [s for s in removed_stacks(lab) if not opts.selection.clusters or s[0] in opts.selection.clusters]
    summary = run(lab, steps, opts, "install", emit=emit, notify=notify, on_start=on_start,
                  options={"adopt": True} if adopt else None)
    if prune and (dropped or removed) and summary.ok:
        # after the install, so new workers have joined before the removed ones are drained onto them; stacks
        # first, while the nodes they ran on are still there
        with lab.state.locked("install --prune"):
            ctx = lab.context(notify=notify)
            try:
                for cluster_name, name in dropped:
                    _prune_stack(ctx, cluster_name, name)
                for cluster_name, node_name in removed:
                    _prune(ctx, cluster_name, node_name)
            finally:
                ctx.close()
    return summary


def removed_nodes(lab: LabSession) -> list[tuple[str, str]]:
    """Nodes labctl installed (recorded spec) that clusters.json no longer has, in clusters that still exist."""
    current = spec_hashes(lab.model)
    clusters = {c.name for c in lab.model.clusters}
    return [tuple(key.split("/", 1)) for key in lab.state.read()["specs"]
            if "/" in key and key not in current and key.split("/", 1)[0] in clusters]


def removed_stacks(lab: LabSession) -> list[tuple[str, str]]:
    """(cluster, stack) that labctl installed but clusters.json no longer declares, in clusters that still exist."""
    from .stacks import installable

    clusters = {c.name: c for c in lab.model.clusters}
    recorded = lab.state.read().get("stacks", {})
    return [(c, name) for c, table in recorded.items() if c in clusters
            for name in table if name not in installable(clusters[c])]


def _claimed(ctx: Context, cluster) -> set[tuple[str, ...]]:
    """What the stacks `cluster` still declares use: releases, objects, credential Secrets and namespaces. Pruning a
    dropped stack never removes any of them (two stacks may share a namespace, a renamed stack keeps its release)."""
    from .stacks import installable, resolve

    out: set[tuple[str, ...]] = set()
    for name in installable(cluster):
        stack = resolve(ctx.lab, cluster, name, ctx.state.root.parent)
        out |= {("release", r.namespace, r.release) for r in stack.releases}
        out |= {("namespace", ns) for ns in (stack.namespace, *(r.namespace for r in stack.releases))}
        out |= {("object", "Secret", c.namespace, c.secret) for c in stack.credentials}
        for obj in stack.objects:
            meta = obj["metadata"]
            out.add(("object", obj["kind"], meta.get("namespace") or stack.namespace, meta["name"]))
            out.add(("object", obj["kind"], "", meta["name"]))  # the same object recorded as cluster-scoped
            if obj["kind"] == "Namespace":
                out.add(("namespace", meta["name"]))
            if meta.get("namespace"):
                out.add(("namespace", meta["namespace"]))
    return out


def _prune_stack(ctx: Context, cluster_name: str, name: str) -> None:
    """Uninstall a stack labctl recorded: its releases (Helm on the control plane), objects, Secrets, namespaces."""
    from .helm import uninstall_release
    from .stacks import STACK_LABEL, SYSTEM_NAMESPACES

    record = ctx.state.read()["stacks"][cluster_name][name]
    cluster = ctx.lab.cluster(cluster_name)
    kube = ctx.kube(cluster)
    kept = _claimed(ctx, cluster)
    ctx.note(f"{cluster_name}: removing stack {name} (no longer in clusters.json)")
    for namespace, release in reversed(record["releases"]):
        if ("release", namespace, release) in kept:
            continue  # a declared stack installs the same release now (e.g. the stack was renamed)
        uninstall_release(ctx, cluster, name, namespace, release)
    for api_version, kind, namespace, obj_name in reversed(record["objects"]):
        if kind == "Namespace" and (obj_name in SYSTEM_NAMESPACES or ("namespace", obj_name) in kept):
            continue
        if ("object", kind, namespace, obj_name) not in kept:
            kube.delete(api_version, kind, namespace, obj_name)
    for namespace, secret in record["secrets"]:
        if ("object", "Secret", namespace, secret) not in kept:
            kube.delete("v1", "Secret", namespace, secret)
    for namespace in record["namespaces"]:
        live = kube.get("v1", "Namespace", "", namespace)
        # only a namespace labctl created for this very stack that no declared stack uses; the user's stays
        if live is not None and (live["metadata"].get("labels") or {}).get(STACK_LABEL) == name and \
                ("namespace", namespace) not in kept and namespace not in SYSTEM_NAMESPACES:
            kube.delete("v1", "Namespace", "", namespace)
    ctx.state.update(lambda data: data["stacks"][cluster_name].pop(name, None))
    ctx.note(f"{cluster_name}: stack {name} removed")


def _prune(ctx: Context, cluster_name: str, node_name: str) -> None:
    from .errors import StepError
    from .kube import kubeconfig
    from .remote.credentials import forget_host

    from . import ownership

    # never drain nor delete a VM labctl did not create; a removed worker whose VM is already gone has nothing left
    # to protect (its Node and records are still cleaned up)
    vm_exists = ctx.provider.get(node_name) is not None
    if vm_exists and not ownership.owns(ctx.state, cluster_name, node_name):
        raise StepError(
            f"{node_name}: no longer in clusters.json, but its VM was not created by labctl; nothing was drained or "
            "deleted",
            hint=f"if `{node_name}` is your own VM, leave it: it is not part of the lab. If it is this lab's old "
            f"worker (e.g. .labctl was lost), delete it yourself (`tart delete {node_name}`) and `kubectl delete "
            f"node {node_name}`, then run `labctl install --prune` again")
    cluster = ctx.lab.cluster(cluster_name)
    if kubeconfig.read(ctx.state, cluster_name) is not None:
        kube = ctx.kube(cluster)
        info = kube.node(node_name)
        if info is not None and "control-plane" in info.roles:
            _remove_member(ctx, cluster, node_name)
            # its API server stops with its member: the host's forwarder may still have sent this connection there
            # until its next health check (every 2 s), so the next requests wait for the API to answer again
            kube.wait_for("the API after the member removal", lambda: (kube.nodes() is not None, "answering"),
                          timeout=120)
        if info is not None:
            ctx.note(f"{node_name}: draining, then deleting its Node")
            kube.drain(node_name)
            kube.delete_node(node_name)
    if vm_exists:
        ctx.provider.own(node_name)
        ctx.provider.delete(node_name)
    ownership.release(ctx.state, node_name)
    forget_host(ctx.state, node_name)
    ctx.state.forget([f"{cluster_name}/{node_name}"])
    ctx.state.forget_node_logs(node_name)
    # (a removed static machine has no VM: the VM provider finds none by its name, and the machine is left alone)
    ctx.note(f"{node_name}: pruned (drained, Node {'and VM ' if vm_exists else ''}deleted)")


def _remove_member(ctx: Context, cluster, node_name: str) -> None:
    """A removed master leaves etcd first (docs/ha.md, "Removing masters"): `etcdctl member remove` on a remaining
    member with quorum, refused when the members left would not keep quorum (labctl/etcd.py remove_member). The
    remaining masters (clusters.json's) stay: labctl never runs `kubeadm reset` on a member. Raises StepError."""
    from . import etcd
    from .errors import StepError

    if not cluster.masters:
        raise StepError(f"{node_name}: is a control plane of {cluster.name}, and clusters.json names no master "
                        "that would stay", hint=f"keep at least one master of {cluster.name} in clusters.json")
    if done := etcd.remove_member(ctx, cluster, node_name):
        ctx.note(done)


def _check_orchard_capacity(lab: LabSession, clusters: list[str]) -> None:
    """Refuse, before any VM is created, an install whose new VMs the Orchard workers cannot hold."""
    from .providers.orchard import check_capacity

    ctx = lab.context()
    try:
        check_capacity(ctx.provider, [n for c, n in lab.model.nodes
                                      if not n.static and (not clusters or c.name in clusters)])
    finally:
        ctx.close()


def require_provider(lab: LabSession) -> str:
    """The provider's version, or one clear ProviderError (e.g. tart is not installed) before any step runs.

    Without it every node's step fails with the same message, and the lock creates .labctl/ for nothing.
    """
    ctx = lab.context()
    try:
        return ctx.provider.available()
    finally:
        ctx.close()


def boot(lab: LabSession, opts: RunOptions, emit=None, notify=None, on_start=None) -> Summary:
    steps = build_steps(lab.model, phases_for("boot"), opts.selection)
    require_provider(lab)
    return run(lab, steps, opts, "boot", emit=emit, notify=notify, on_start=on_start)


def shutdown(lab: LabSession, opts: RunOptions, emit=None, notify=None, on_start=None,
             grace_seconds: float | None = None, drain: bool = False, power_off: bool = False) -> Summary:
    """Power the VMs off, workers first. grace_seconds: how long each guest gets for every graceful way (in-guest
    power-off, then SIGUSR2) before the next, harder one; None = the phase's default."""
    steps = build_steps(lab.model, phases_for("shutdown"), opts.selection)
    if lab.model.provider.type == "orchard":  # before any guest is asked to power off: it could not come back
        from .providers.orchard import cannot_stop

        raise cannot_stop()
    require_provider(lab)
    # Only ask a guest to power off if it answers right away; a dead one is stopped by the provider instead.
    # power_off: static machines too (labctl/static_nodes.py); by default they are only cordoned and drained
    options: dict[str, Any] = {**_short_bounds(), "drain": drain, "power_off": power_off}
    if grace_seconds is not None:
        options["grace_seconds"] = grace_seconds
    summary = run(lab, steps, opts, "shutdown", emit=emit, notify=notify, on_start=on_start, options=options)
    if summary.ok and not opts.selection.clusters and opts.selection.whole:
        from . import apiproxy

        stopped = apiproxy.stop(lab.state)  # the whole lab is off: the HA clusters' host endpoint goes too
        if stopped and notify:
            notify(f"API forwarder {stopped}")
    return summary


def chosen_clusters(lab: LabSession, clusters: list[str]) -> list[str]:
    """The clusters --cluster names (all when none), or a UsageError naming the unknown one."""
    build_steps(lab.model, [], Selection(clusters=clusters))  # the engine's own check and message
    return [c.name for c in lab.model.clusters if not clusters or c.name in clusters]


def destroy_targets(lab: LabSession, clusters: list[str], nodes: list[str] = ()) -> list[str]:
    """The VM names a destroy of these clusters (all when none) and nodes (all of them when none) deletes."""
    chosen = chosen_clusters(lab, clusters)
    steps = build_steps(lab.model, phases_for("destroy"), Selection(clusters=clusters, nodes=list(nodes)))
    named = {s.target.node for s in steps}
    return [n.name for c, n in lab.model.nodes if c.name in chosen and n.name in named]


def destroy(lab: LabSession, opts: RunOptions, emit=None, notify=None, on_start=None,
            reset_static: bool = False) -> Summary:
    """Delete the lab's VMs (all, or those of --cluster), then what labctl kept about them. Static machines are
    drained and their Nodes deleted, never the machines; reset_static: also `kubeadm reset -f` on them."""
    steps = build_steps(lab.model, phases_for("destroy"), opts.selection)
    require_provider(lab)
    everything = not opts.selection.clusters
    summary = run(lab, steps, opts, "destroy", emit=emit, notify=notify, on_start=on_start,
                  options={**_short_bounds(), "reset_static": reset_static})
    if opts.selection.nodes:  # some nodes only (Terraform's per-node resources): their clusters stay
        _forget_nodes(lab, [r.step.target for r in summary.results if r.status in ("changed", "unchanged")])
        return summary
    gone = [c.name for c in lab.model.clusters
            if (everything or c.name in opts.selection.clusters)
            and all(r.status in ("changed", "unchanged") for r in summary.results if r.step.target.cluster == c.name)]
    _forget_clusters(lab, gone, everything=everything and len(gone) == len(lab.model.clusters))
    return summary


def _forget_nodes(lab: LabSession, targets: list) -> None:
    """Remove what labctl kept about destroyed nodes (`Target`s): their logs and recorded specs."""
    if not targets:
        return
    with lab.state.locked("destroy"):
        for t in targets:
            lab.state.forget_node_logs(t.node)
        lab.state.forget([f"{t.cluster}/{t.node}" for t in targets])


def _forget_clusters(lab: LabSession, clusters: list[str], everything: bool) -> None:
    """Remove what labctl kept about destroyed clusters; after a whole-lab destroy, .labctl itself."""
    import shutil

    if not clusters:
        return
    from .kube import kubeconfig

    from . import apiproxy

    with lab.state.locked("destroy"):
        for name in clusters:
            kubeconfig.remove(lab.state, name)
            apiproxy.forget(lab.state, name)  # its listener closes; the forwarder stops once no cluster is left
        if everything or not apiproxy.read_routes(lab.state.root):
            apiproxy.stop(lab.state)
            for node in lab.model.cluster(name).nodes:
                lab.state.forget_node_logs(node.name)
        lab.state.forget(clusters)
        credentials.forget(lab.state, clusters)
        if everything:
            from . import snapshots

            for child in lab.state.root.iterdir():
                if child.name == "qemu":  # snapshot VMs' folders are labctl-snap-*: kept with their snapshots
                    for vm in child.iterdir():
                        if not vm.name.startswith(snapshots.PREFIX):
                            shutil.rmtree(vm) if vm.is_dir() else vm.unlink()
                    if not any(child.iterdir()):
                        child.rmdir()
                elif child.name not in ("lock", "snapshots"):  # `destroy --snapshots` deleted those before
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
            lab.state.remove_lock()  # while holding it (see LabState.locked)
    if everything:
        try:
            lab.state.root.rmdir()
        except OSError:
            pass  # something new appeared meanwhile (another labctl): leave it
