"""Whole-lab snapshots: `labctl snapshot save/list/restore/delete` (issue 19; docs/golden-images-and-snapshots.md).

A snapshot is, per node of the chosen clusters, a copy of its STOPPED VM (`clone_vm`: Tart's `tart clone`, an APFS
copy-on-write clone; QEMU: a copy of the VM's qcow2 overlay) named `labctl-snap-<snapshot>--<node>`, and beside them
in .labctl/snapshots/<snapshot>/ what labctl needs to come back to exactly that lab:

    snapshot.json   name, creation time, clusters, provider, nodes → snapshot VMs, versions, the spec hashes of the
                    clusters and nodes (the refusal of a snapshot from another clusters.json), the nodes' addresses,
                    labctl's records of those clusters (state.json steps/specs/stacks/vms), `complete`
    clusters.json   the lab file as it was (and its sha256 in snapshot.json)
    kubeconfig/     each cluster's kubeconfig
    secrets.json    the clusters' generated credentials, the nodes' pinned SSH host keys, the lab's SSH key (0600)

Every file is 0600 and the folder 0700: a kubeconfig and the lab key are secrets. The snapshot VMs are labctl's
(ownership.claim, and the manifest lists them): `delete_vm` deletes only such names, never a lab node. A whole-lab
`destroy` leaves .labctl/snapshots and the snapshot VMs alone unless `--snapshots`.

Save: shutdown (workers first, control planes last: the shutdown phase), copy each VM, record, boot again.
Restore: refuse a snapshot whose clusters/nodes/versions differ from clusters.json now; stop and delete the lab's
VMs of those clusters, copy the snapshot VMs back to the nodes' names (the snapshot stays reusable), restore the
records, then the boot phases (start, swap, address repair, Ready, stack hooks). Tart gives a copy a new MAC
(reference/tart-cli.md, clone), so a restored node usually comes back on a new address: the boot's `addresses`
phase repairs certificates, kubeconfigs and hosts entries, as after any address change.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import ownership
from .errors import Interrupted, LabctlError, StepError, UsageError
from .state import private_opener, write_atomic

PREFIX = "labctl-snap-"
NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
NAME_MAX = 40  # the VM name adds `labctl-snap-` and the node's name; DNS labels stop at 63
MANIFEST = "snapshot.json"


def vm_name(snapshot: str, node: str) -> str:
    """The snapshot VM of `node`: never a lab node's name (nodes cannot start with `labctl-snap-`, see save).
    A snapshot name has no `--` (check_name), so the first `--` separates it from the node's: snapshot `a` of node
    `b-x` and snapshot `a-b` of node `x` get two names."""
    return f"{PREFIX}{snapshot}--{node}"


def check_name(name: str) -> str:
    """`name` if it is a valid snapshot name (a DNS label of at most NAME_MAX characters); UsageError otherwise."""
    if len(name) > NAME_MAX or not NAME.match(name) or "--" in name:
        raise UsageError(f"snapshot name {name!r} is not valid: use lowercase letters, digits and '-', starting and "
                         f"ending with a letter or digit, no '--', at most {NAME_MAX} characters",
                         hint="e.g. `labctl snapshot save before-upgrade`")
    return name


def root(state) -> Path:
    return state.root / "snapshots"


def folder(state, name: str) -> Path:
    return root(state) / name


def read(state, name: str) -> dict[str, Any]:
    """The manifest of snapshot `name`; UsageError naming the snapshots there are when it does not exist."""
    check_name(name)
    try:
        return json.loads((folder(state, name) / MANIFEST).read_text())
    except FileNotFoundError:
        have = ", ".join(sorted(m["name"] for m in manifests(state))) or "none"
        raise UsageError(f"no snapshot {name!r} (snapshots: {have})", hint="`labctl snapshot list`") from None
    except ValueError as exc:
        raise LabctlError(f"snapshot {name}: {folder(state, name) / MANIFEST} is damaged ({exc})",
                          hint=f"`labctl snapshot delete {name}` removes it") from None


def manifests(state) -> list[dict[str, Any]]:
    """Every snapshot's manifest (damaged ones left out), oldest first."""
    out = []
    for path in sorted(root(state).glob(f"*/{MANIFEST}")) if root(state).is_dir() else []:
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(out, key=lambda m: m.get("created", ""))


def owned_vms(state) -> set[str]:
    """The snapshot VMs labctl made (from the manifests: they outlive state.json across a `destroy`)."""
    return {vm for m in manifests(state) for vm in m.get("nodes", {}).values()}


def _write(path: Path, data: str | bytes) -> None:
    write_atomic(path, data, 0o600)


def _save_manifest(state, manifest: dict[str, Any]) -> None:
    _write(folder(state, manifest["name"]) / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


# -- what a snapshot records ------------------------------------------------------------------------------------

def _records(state, clusters: list[str], nodes: list[str]) -> dict[str, Any]:
    """labctl's records of these clusters: their steps and specs, installed stacks, and the nodes' VM ownership."""
    data = state.read()

    def ours(key: str) -> bool:
        where = key.split(":", 1)[-1]
        return where.split("/")[0] in clusters

    return {"steps": {k: v for k, v in data.get("steps", {}).items() if ours(k)},
            "specs": {k: v for k, v in data.get("specs", {}).items() if ours(k)},
            "stacks": {k: v for k, v in data.get("stacks", {}).items() if k in clusters},
            "vms": {k: v for k, v in data.get(ownership.TABLE, {}).items() if k in nodes}}


def _put_records(state, records: dict[str, Any], clusters: list[str]) -> None:
    """Replace labctl's records of these clusters by the snapshot's."""
    state.forget(clusters)

    def change(data: dict) -> None:
        data["steps"].update(records["steps"])
        data["specs"].update(records["specs"])
        if records["stacks"]:
            data.setdefault("stacks", {}).update(records["stacks"])
        data.setdefault(ownership.TABLE, {}).update(records["vms"])

    state.update(change)


def _secrets(state, clusters: list[str], nodes: list[str]) -> dict[str, Any]:
    from . import credentials
    from .remote import credentials as ssh

    generated = credentials._read(state)
    key = ssh.key_path(state)
    return {"credentials": {c: generated[c] for c in clusters if c in generated},
            "known_hosts": [line for line in ssh._read(state) if line.split()[:1] and line.split()[0] in nodes],
            "lab_key": key.read_text() if key.is_file() else None,
            "lab_key_pub": key.with_suffix(".pub").read_text() if key.with_suffix(".pub").is_file() else None}


def _put_secrets(state, secrets: dict[str, Any], nodes: list[str]) -> list[str]:
    """Put the snapshot's secrets back; returns what it could not (the lab key differs: the guests know the old)."""
    from . import credentials
    from .remote import credentials as ssh

    notes = []
    key = ssh.key_path(state)
    if secrets.get("lab_key"):
        if not key.is_file():  # after a `destroy`: the restored guests authorise the snapshot's key
            key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _write(key, secrets["lab_key"])
            if secrets.get("lab_key_pub"):
                _write(key.with_suffix(".pub"), secrets["lab_key_pub"])
        elif key.read_text() != secrets["lab_key"]:
            notes.append("the lab's SSH key changed since the snapshot: the restored nodes authorise the old one, "
                         "so labctl logs in with ssh_password until `labctl install` authorises the new key")
    for node in nodes:
        ssh.forget_host(state, node)  # the copy has the snapshot's host keys, pinned below
    if secrets.get("known_hosts"):
        with open(state.known_hosts, "a", opener=private_opener) as f:  # 0600 from its creation
            f.write("".join(line + "\n" for line in secrets["known_hosts"]))
    if secrets.get("credentials"):
        with credentials._locked(state):
            data = credentials._read(state)
            data.update(secrets["credentials"])
            _write(state.root / credentials.FILE, json.dumps(data, indent=2, sort_keys=True) + "\n")
    return notes


def differences(saved: dict[str, Any], lab) -> list[str]:
    """How clusters.json now differs from the snapshot's for its clusters: one line per cluster, node or version
    that differs (spec hashes: model.cluster_hash / node_hash). Empty: the snapshot fits this lab."""
    from .lab import spec_hashes

    now = spec_hashes(lab.model)
    clusters = saved["clusters"]
    out = []
    for key, value in saved["specs"].items():
        kind = "node" if "/" in key else "cluster"
        if key not in now:
            out.append(f"{kind} {key.split('/')[-1]}: in the snapshot, not in clusters.json now")
        elif now[key] != value:
            out.append(f"{kind} {key.split('/')[-1]}: changed in clusters.json since the snapshot")
    for key in now:
        if key.split("/")[0] in clusters and key not in saved["specs"]:
            out.append(f"{'node' if '/' in key else 'cluster'} {key.split('/')[-1]}: in clusters.json now, not in "
                       "the snapshot")
    versions = lab.model.versions.model_dump(mode="json")
    for name in sorted(set(versions) | set(saved["versions"])):
        if versions.get(name) != saved["versions"].get(name):
            out.append(f"version {name}: {saved['versions'].get(name)} in the snapshot, {versions.get(name)} now")
    return out


# -- the flows ----------------------------------------------------------------------------------------------------

@dataclass
class Outcome:
    manifest: dict[str, Any]
    notes: list[str]


def _opts(clusters: list[str]):
    from .engine import Selection
    from .lab import RunOptions

    return RunOptions(Selection(clusters=clusters))


def _failed(summary) -> str:
    bad = [r for r in summary.results if r.status not in ("changed", "unchanged", "skipped")]
    return "; ".join(f"{r.step.id}: {r.detail.splitlines()[0] if r.detail else r.status}" for r in bad[:3]) or "?"


def save(lab, name: str, clusters: list[str] = (), notify=lambda _text: None, emit=None) -> Outcome:
    """Stop the clusters' VMs (the shutdown phase), copy each one, record the lab beside the copies, boot again
    (unless none of them was running before).

    Returns the manifest. Raises UsageError (bad or taken name, a node named like a snapshot VM, a VM missing),
    StepError when the shutdown, a copy or the boot fails, Interrupted on Ctrl-C while copying: each says what
    state the lab is in and what to run."""
    from .lab import boot, chosen_clusters, require_provider, shutdown, spec_hashes

    check_name(name)
    chosen = chosen_clusters(lab, list(clusters))
    nodes = [(c.name, n) for c, n in lab.model.nodes if c.name in chosen]
    names = [n.name for _, n in nodes]
    if (folder(lab.state, name) / MANIFEST).exists():
        raise UsageError(f"snapshot {name!r} already exists", hint=f"`labctl snapshot delete {name}` first, or "
                         "choose another name")
    if clash := [n for n in names if n.startswith(PREFIX)]:
        raise UsageError(f"node {clash[0]}: its name starts with {PREFIX!r}, which labctl keeps for snapshot VMs",
                         hint="rename the node in clusters.json")
    if static := [(c, n.name) for c, n in nodes if n.static]:
        # an existing machine has no VM to copy (docs/byo-nodes.md): refused before the shutdown stops anything
        raise UsageError(f"node {static[0][1]}: a static machine (\"provider\": \"static\"), which labctl cannot "
                         f"copy, so cluster {static[0][0]} cannot be in a snapshot",
                         hint="snapshot the clusters made only of VMs: `--cluster NAME`")
    require_provider(lab)
    ctx = lab.context(notify=notify)
    try:
        provider = ctx.provider
        for cluster, node in nodes:
            vm = provider.get(node.name)
            if vm is None:
                raise UsageError(f"{node.name}: has no VM, so there is nothing to snapshot",
                                 hint="`labctl install` creates it; then save the snapshot")
            if not ownership.owns(lab.state, cluster, node.name):
                raise ownership.not_ours(node.name)
            if provider.get(vm_name(name, node.name)) is not None:
                raise UsageError(f"{vm_name(name, node.name)}: a VM with this name exists but is in no snapshot",
                                 hint=f"delete that VM (`tart delete {vm_name(name, node.name)}`) or choose "
                                 "another snapshot name")
        addresses = {n: ctx.address(node) for n, node in ((n.name, n) for _, n in nodes)
                     if (vm := provider.get(n)) is not None and vm.running}
    finally:
        ctx.close()

    notify(f"snapshot {name}: stopping {', '.join(chosen)} (workers first, control planes last)")
    summary = shutdown(lab, _opts(chosen), emit=emit, notify=notify)
    if not summary.ok:
        raise StepError(f"snapshot {name}: the shutdown failed ({_failed(summary)}); no snapshot was taken and the "
                        "lab's VMs are as the shutdown left them", hint="`labctl boot` starts them again")
    directory = folder(lab.state, name)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    config_text = lab.config.read_text()
    manifest: dict[str, Any] = {
        "name": name, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "clusters": chosen,
        "provider": lab.model.provider.type, "nodes": {n: vm_name(name, n) for n in names},
        "versions": lab.model.versions.model_dump(mode="json"),
        "specs": {k: v for k, v in spec_hashes(lab.model).items() if k.split("/")[0] in chosen},
        "clusters_json_sha256": hashlib.sha256(config_text.encode()).hexdigest(),
        "addresses": addresses, "complete": False}
    _save_manifest(lab.state, manifest)  # first: the VMs it is about to make are in a manifest from the start
    try:
        _copy_and_record(lab, name, chosen, names, manifest, config_text, directory, notify)
    except KeyboardInterrupt:
        raise Interrupted(f"snapshot {name}: interrupted while copying the VMs; it is unfinished and cannot be "
                          "restored", hint=f"`labctl snapshot delete {name}` removes what was copied; the lab is "
                          "stopped and unchanged: `labctl boot` starts it") from None
    if not addresses:  # it was stopped before the save: leave it as it was
        notify(f"snapshot {name}: saved; the lab was stopped before, so it stays stopped (`labctl boot` starts it)")
        return Outcome(manifest, [])
    notify(f"snapshot {name}: saved; starting the lab again")
    summary = boot(lab, _opts(chosen), emit=emit, notify=notify)
    if not summary.ok:
        raise StepError(f"snapshot {name} is saved, but the lab did not come back up ({_failed(summary)})",
                        hint="`labctl boot` starts it; `labctl status` shows what is wrong")
    return Outcome(manifest, [])


def _copy_and_record(lab, name: str, chosen: list[str], names: list[str], manifest: dict, config_text: str,
                     directory: Path, notify) -> None:
    """save's middle: copy each stopped VM, then write the snapshot's records and mark its manifest complete."""
    copied: list[str] = []
    with lab.state.locked("snapshot"):
        ctx = lab.context(notify=notify)
        try:
            for node in names:
                notify(f"snapshot {name}: copying {node}")
                ctx.provider.clone_vm(node, vm_name(name, node))
                copied.append(node)
                ownership.claim(lab.state, vm_name(name, node), "snapshot")
        except LabctlError as exc:
            for node in copied:
                ctx.provider.delete_vm(vm_name(name, node))
                ownership.release(lab.state, vm_name(name, node))
            shutil.rmtree(directory, ignore_errors=True)
            raise StepError(f"snapshot {name}: copying the VMs failed, no snapshot was kept: {exc}",
                            hint="the lab's VMs are stopped and unchanged: `labctl boot` starts them") from None
        finally:
            ctx.close()
        _write(directory / "clusters.json", config_text)
        from .kube import kubeconfig

        kube_dir = directory / "kubeconfig"
        kube_dir.mkdir(mode=0o700, exist_ok=True)
        for cluster in chosen:
            path = kubeconfig.cluster_path(lab.state, cluster)
            if path.is_file():
                _write(kube_dir / cluster, path.read_bytes())
        _write(directory / "records.json", json.dumps(_records(lab.state, chosen, names), indent=2) + "\n")
        _write(directory / "secrets.json", json.dumps(_secrets(lab.state, chosen, names), indent=2) + "\n")
        manifest["complete"] = True
        _save_manifest(lab.state, manifest)


def restore(lab, name: str, notify=lambda _text: None, emit=None) -> Outcome:
    """Replace the snapshot's clusters' VMs by fresh copies of its VMs, restore labctl's records, then boot (address
    repair included) and wait until every node is Ready. The snapshot stays as it was (reusable).

    Raises UsageError (no such snapshot, an unfinished one, clusters.json differs: the differences are listed),
    StepError when a copy or the boot fails, saying which nodes were replaced and what to run."""
    from .lab import boot, require_provider

    saved = read(lab.state, name)
    if not saved.get("complete"):
        raise UsageError(f"snapshot {name} is unfinished (its save was interrupted)",
                         hint=f"`labctl snapshot delete {name}` removes it")
    if saved["provider"] != lab.model.provider.type:
        raise UsageError(f"snapshot {name} is of {saved['provider']} VMs; this lab uses {lab.model.provider.type}")
    if diff := differences(saved, lab):
        raise UsageError(f"snapshot {name} was taken from another clusters.json; it differs in:\n"
                         + "\n".join(f"    {line}" for line in diff),
                         hint=f"restore it with the clusters.json it was taken from "
                         f"({folder(lab.state, name) / 'clusters.json'})")
    directory = folder(lab.state, name)
    clusters, nodes = saved["clusters"], saved["nodes"]
    require_provider(lab)
    replaced: list[str] = []
    with lab.state.locked("snapshot"):
        ctx = lab.context(notify=notify)
        try:
            provider = ctx.provider
            missing = [vm for vm in nodes.values() if provider.get(vm) is None]
            if missing:
                raise StepError(f"snapshot {name} is damaged: its VMs {', '.join(missing)} do not exist",
                                hint=f"`labctl snapshot delete {name}`; nothing of the lab was changed")
            lab_nodes = {n.name: (c.name, n) for c, n in lab.model.nodes}
            for node in nodes:
                cluster, spec = lab_nodes[node]
                if provider.get(node) is not None and not ownership.owns(lab.state, cluster, node):
                    raise ownership.not_ours(node)
            for node, vm in nodes.items():
                cluster, spec = lab_nodes[node]
                notify(f"snapshot {name}: replacing {node}")
                ctx.drop_transport(node)
                if provider.get(node) is not None:
                    provider.delete(spec)  # stops it first (a hard stop: its state is being thrown away)
                ownership.release(lab.state, node)
                provider.clone_vm(vm, node)
                ownership.claim(lab.state, node, "created")
                replaced.append(node)
        except (LabctlError, KeyboardInterrupt) as exc:
            left = [n for n in nodes if n not in replaced]
            error = Interrupted if isinstance(exc, KeyboardInterrupt) else StepError
            raise error(f"snapshot {name}: restore " + ("interrupted" if error is Interrupted else f"stopped: {exc}"),
                        hint=(f"replaced so far: {', '.join(replaced) or 'none'}; not yet: {', '.join(left)}. "
                              f"The snapshot is intact: `labctl snapshot restore {name}` again")) from None
        finally:
            ctx.close()
        from .kube import kubeconfig

        for path in sorted((directory / "kubeconfig").iterdir()) if (directory / "kubeconfig").is_dir() else []:
            target = kubeconfig.cluster_path(lab.state, path.name)
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _write(target, path.read_bytes())
        _put_records(lab.state, json.loads((directory / "records.json").read_text()), clusters)
        notes = _put_secrets(lab.state, json.loads((directory / "secrets.json").read_text()), list(nodes))
    notify(f"snapshot {name}: VMs replaced; booting (address repair included) until every node is Ready")
    summary = boot(lab, _opts(clusters), emit=emit, notify=notify)
    if not summary.ok:
        raise StepError(f"snapshot {name}: the VMs are the snapshot's, but the boot failed ({_failed(summary)})",
                        hint="`labctl boot` retries it; `labctl status` shows what is wrong")
    return Outcome(saved, notes)


def listing(lab) -> list[dict[str, Any]]:
    """Every snapshot: name, created, clusters, complete, and its size on disk in bytes (its VMs' allocated size
    as the provider reports it, plus its folder)."""
    out = []
    ctx = lab.context()
    try:
        for m in manifests(lab.state):
            size = sum(f.stat().st_size for f in folder(lab.state, m["name"]).rglob("*") if f.is_file())
            for vm in m.get("nodes", {}).values():
                try:
                    size += ctx.provider.vm_disk_bytes(vm)
                except LabctlError:
                    pass  # a VM of an unfinished save
            out.append({"name": m["name"], "created": m["created"], "clusters": m["clusters"],
                        "complete": bool(m.get("complete")), "size_bytes": size})
    finally:
        ctx.close()
    return out


def delete(lab, name: str, notify=lambda _text: None) -> list[str]:
    """Delete snapshot `name`: its VMs, then its folder. Returns the VMs deleted.

    A damaged manifest (the error of `read` says to delete it) cannot list the VMs: then the VMs this lab's nodes
    would have in it (`vm_name`) are deleted, less any another snapshot lists."""
    try:
        manifest = read(lab.state, name)
    except UsageError:
        raise
    except LabctlError:
        others = owned_vms(lab.state)
        manifest = {"nodes": {n.name: vm_name(name, n.name) for _, n in lab.model.nodes
                              if vm_name(name, n.name) not in others}}
    deleted = []
    with lab.state.locked("snapshot"):
        ctx = lab.context(notify=notify)
        try:
            for vm in manifest.get("nodes", {}).values():
                if ctx.provider.delete_vm(vm):
                    deleted.append(vm)
                ownership.release(lab.state, vm)
        finally:
            ctx.close()
        shutil.rmtree(folder(lab.state, name))
        if not any(root(lab.state).iterdir()):
            root(lab.state).rmdir()  # the last one: a whole-lab `destroy` then leaves no .labctl behind
    return deleted
