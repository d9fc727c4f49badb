"""etcd snapshots of the control planes: the daily timer the `backup` stack installs, `labctl backup` and
`labctl restore`.

The tools are etcd's own, at exactly the cluster's etcd version: the node scripts (templates/backup/) read the
version from the etcd static pod's image tag and run etcdctl/etcdutl from the etcd project's release image
gcr.io/etcd-development/etcd:v<version> with containerd's `ctr` (kubeadm's registry.k8s.io/etcd image has no
etcdutl, and etcd 3.6's etcdctl can no longer restore: see templates/backup/etcd-tools.inc.j2). Nothing is
installed on the hosts but a script and a systemd timer.

- On every control plane (hook `etcd-snapshots` of the backup stack, labctl/stack_hooks_backup.py):
  /usr/local/sbin/labctl-etcd-snapshot and labctl-etcd-snapshot.{service,timer}: daily at 02:00, snapshots in
  /var/lib/labctl/etcd-backups/etcd-<UTC time>.db (0600), the newest KEEP kept.
- `labctl backup`: a snapshot now on each cluster's first control plane, copied to .labctl/backups/<cluster>/.
- `labctl restore`: one control plane back to a snapshot (kubeadm's documented procedure); the old data
  directory is kept until the API server answers on the restored one.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .errors import LabctlError, StepError, UsageError
from .render import render, script

if TYPE_CHECKING:
    from .context import Context
    from .lab import LabSession
    from .model import Cluster, Node

BACKUP_DIR = "/var/lib/labctl/etcd-backups"
KEEP = 7  # a week of daily snapshots (plus those `labctl backup` takes: they count towards the same KEEP)
SCRIPT_PATH = "/usr/local/sbin/labctl-etcd-snapshot"
SERVICE_UNIT = "labctl-etcd-snapshot.service"
TIMER_UNIT = "labctl-etcd-snapshot.timer"
SERVICE_PATH = f"/etc/systemd/system/{SERVICE_UNIT}"
TIMER_PATH = f"/etc/systemd/system/{TIMER_UNIT}"
ON_CALENDAR = "*-*-* 02:00:00"  # the predecessor's 02:00 cron entry; Velero's daily Schedule runs at 03:00
TOOLS_REPO = "gcr.io/etcd-development/etcd"  # the etcd project's release image (etcd release notes, "Docker")
ETCD_MANIFEST = "/etc/kubernetes/manifests/etcd.yaml"
MANIFESTS_DIR = "/etc/kubernetes/manifests"
ETCD_PKI = "/etc/kubernetes/pki/etcd"
DATA_DIR = "/var/lib/etcd"  # templates/kubeadm/init.yaml.j2 etcd.local.dataDir
WORK_DIR = "/var/lib/labctl/etcd-restore"
LOCAL_DIR = "backups"  # under .labctl
SNAPSHOT_TIMEOUT = 600  # seconds: a first snapshot pulls the tools image (~20 MB)
RESTORE_TIMEOUT = 900  # seconds: up to 3 minutes for the static pods to stop, then the restore itself
API_WAIT = 300  # seconds for the API server to answer on the restored data
_SNAPSHOT_LINE = re.compile(r"^snapshot=(?P<path>\S+) size=(?P<size>\d+)$", re.M)


@dataclass(frozen=True)
class Snapshot:
    """One snapshot `labctl backup` took: where it is on the node and on the host, its size in bytes."""

    cluster: str
    node: str
    remote: str
    local: Path
    size: int

    def as_dict(self) -> dict:
        return {"cluster": self.cluster, "node": self.node, "remote": self.remote, "path": str(self.local),
                "size": self.size}


# ---- the node side ---------------------------------------------------------------------------------------------

def _params() -> dict:
    return {"backup_dir": BACKUP_DIR, "keep": KEEP, "etcd_manifest": ETCD_MANIFEST, "etcd_pki": ETCD_PKI,
            "tools_repo": TOOLS_REPO, "script_path": SCRIPT_PATH, "service_path": SERVICE_PATH,
            "timer_path": TIMER_PATH, "timer_unit": TIMER_UNIT}


def snapshot_script(mode: str = "snapshot"):
    """The node script (templates/backup/etcd-snapshot.sh.j2) in one of its modes: "snapshot" (also the text
    installed as SCRIPT_PATH), "install" (tools pulled and answering, timer enabled) or "probe" (read-only)."""
    return script("backup.etcd-snapshot", "backup/etcd-snapshot.sh.j2", mode=mode, **_params())


def installed_files() -> dict[str, tuple[str, int]]:
    """What the timer consists of on a control plane: path → (content, mode)."""
    params = {**_params(), "service_unit": SERVICE_UNIT, "on_calendar": ON_CALENDAR}
    return {
        SCRIPT_PATH: (snapshot_script().text, 0o700),
        SERVICE_PATH: (render("backup/etcd-snapshot.service.j2", **params), 0o644),
        TIMER_PATH: (render("backup/etcd-snapshot.timer.j2", **params), 0o644),
    }


def node_problems(ctx: Context, node: Node) -> list[str]:
    """What is missing for daily snapshots on one control plane (read-only, over SSH): the tools image, a current
    script and units, the timer enabled and active. [] when all is well."""
    out = ctx.transport(node.name).run(snapshot_script("probe"), sudo=True, timeout=60).stdout
    found = []
    values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line and not line.startswith("sha256 "))
    if values.get("tools_present") != "yes":
        found.append(f"{node.name}: etcd tools image {values.get('tools', '?')} not pulled (no etcdctl/etcdutl)")
    shas = {parts[2]: parts[1] for line in out.splitlines() if (parts := line.split()) and parts[0] == "sha256"
            and len(parts) == 3}
    for path, (content, _) in installed_files().items():
        if shas.get(path) != hashlib.sha256(content.encode()).hexdigest():
            found.append(f"{node.name}: {path} {'missing' if shas.get(path, 'missing') == 'missing' else 'changed'}")
    if values.get("timer_enabled") != "enabled" or values.get("timer_active") != "active":
        found.append(f"{node.name}: {TIMER_UNIT} is {values.get('timer_enabled') or 'not installed'}/"
                     f"{values.get('timer_active') or 'inactive'}, not enabled/active")
    return found


def install_on(ctx: Context, node: Node) -> None:
    """Put the snapshot script and its systemd units on a control plane, pull the tools, enable the timer. Raises
    CommandError (node, command, exit code, output) when the tools cannot be pulled or do not run."""
    transport = ctx.transport(node.name)
    for path, (content, mode) in installed_files().items():
        transport.put(path, content.encode(), mode, sudo=True)
    transport.run(snapshot_script("install"), sudo=True, timeout=SNAPSHOT_TIMEOUT)


# ---- labctl backup --------------------------------------------------------------------------------------------

def local_dir(lab: LabSession, cluster: str) -> Path:
    return lab.state.root / LOCAL_DIR / cluster


def take(ctx: Context, lab: LabSession, cluster: Cluster) -> Snapshot:
    """A snapshot of `cluster` now, on its first control plane, verified there and copied to
    .labctl/backups/<cluster>/ (0600). Raises CommandError when the snapshot fails on the node."""
    from .state import write_atomic

    node = cluster.masters[0]
    transport = ctx.transport(node.name)
    out = transport.run(snapshot_script(), sudo=True, timeout=SNAPSHOT_TIMEOUT).stdout
    match = None
    for match in _SNAPSHOT_LINE.finditer(out):
        pass
    if match is None:
        raise StepError(f"{node.name}: backup.etcd-snapshot printed no snapshot line", hint=f"its output: {out[-500:]}")
    data = transport.get(match["path"], sudo=True)
    if len(data) != int(match["size"]):
        raise StepError(f"{node.name}: {match['path']} is {match['size']} bytes there but {len(data)} arrived",
                        hint="run `labctl backup` again")
    local = local_dir(lab, cluster.name) / Path(match["path"]).name
    local.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(local, data, 0o600)
    return Snapshot(cluster.name, node.name, match["path"], local, len(data))


def backup(lab: LabSession, clusters: list[str], notify: Callable[[str], None] | None = None) -> list[Snapshot]:
    """`labctl backup`: one snapshot per chosen cluster (all installed ones when `clusters` is empty).

    Raises UsageError for a cluster that is not installed (no kubeconfig yet), CommandError/StepError when a
    snapshot fails (the other clusters' snapshots are kept)."""
    from .kube import kubeconfig
    from .lab import chosen_clusters

    chosen = chosen_clusters(lab, clusters)
    installed = [c for c in chosen if kubeconfig.read(lab.state, c) is not None]
    missing = [c for c in chosen if c not in installed]
    if clusters and missing:
        raise UsageError(f"no control plane installed yet on {', '.join(missing)}",
                         hint="`labctl install` first; `labctl status` shows what is installed")
    if not installed:
        raise UsageError("no cluster of this lab is installed yet", hint="`labctl install` first")
    with lab.state.locked("backup"):
        ctx = lab.context(notify=notify)
        try:
            out = []
            for name in installed:
                ctx.note(f"{name}: etcd snapshot on {lab.model.cluster(name).masters[0].name}")
                out.append(take(ctx, lab, lab.model.cluster(name)))
            return out
        finally:
            ctx.close()


# ---- labctl restore -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Restored:
    cluster: str
    node: str
    snapshot: Path
    previous_removed: str

    def as_dict(self) -> dict:
        return {"cluster": self.cluster, "node": self.node, "snapshot": str(self.snapshot),
                "previous_data_dir_removed": self.previous_removed}


def check_restorable(lab: LabSession, cluster_name: str, snapshot: Path) -> Cluster:
    """The cluster a restore may go ahead on. Raises UsageError: unknown cluster, several control planes (only a
    single member's restore is implemented), a snapshot file that is missing or not an etcd snapshot."""
    from .lab import chosen_clusters

    chosen_clusters(lab, [cluster_name])
    cluster = lab.model.cluster(cluster_name)
    if len(cluster.masters) > 1:
        raise UsageError(
            f"{cluster_name} has {len(cluster.masters)} control planes; labctl restores one etcd member only",
            hint="restore an HA cluster by hand (etcd.io op-guide/recovery: every member from the same snapshot)")
    if not snapshot.is_file():
        raise UsageError(f"{snapshot}: no such snapshot file",
                         hint=f"`labctl backup --cluster {cluster_name}` writes them to "
                              f"{local_dir(lab, cluster_name)}")
    return cluster


def restore(lab: LabSession, cluster_name: str, snapshot: Path,
            notify: Callable[[str], None] | None = None) -> Restored:
    """`labctl restore`: the cluster's control plane back to `snapshot` (a file `labctl backup` wrote).

    The snapshot is copied to the node (0600) and restored there by templates/backup/etcd-restore.sh.j2; labctl then
    waits (up to API_WAIT seconds) for the API server to answer, and only then removes the data directory the
    restore moved aside. Raises UsageError (see check_restorable), CommandError when the restore script fails (it
    has put everything back), StepError when the API server does not answer on the restored data (the old data
    directory is still on the node; the hint says how to go back to it)."""
    cluster = check_restorable(lab, cluster_name, snapshot)
    node = cluster.masters[0]
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    with lab.state.locked("restore"):
        ctx = lab.context(notify=notify)
        try:
            transport = ctx.transport(node.name)
            remote = f"{WORK_DIR}/{snapshot.name}"
            ctx.note(f"{node.name}: copying {snapshot.name} ({snapshot.stat().st_size} bytes)")
            transport.put(remote, snapshot.read_bytes(), 0o600, sudo=True)
            ctx.note(f"{node.name}: stopping the control plane and restoring etcd from {snapshot.name}")
            out = transport.run(script(
                "backup.etcd-restore", "backup/etcd-restore.sh.j2", snapshot=remote, etcd_manifest=ETCD_MANIFEST,
                etcd_pki=ETCD_PKI, tools_repo=TOOLS_REPO, manifests_dir=MANIFESTS_DIR, data_dir=DATA_DIR,
                work_dir=WORK_DIR, stamp=stamp), sudo=True, timeout=RESTORE_TIMEOUT).stdout
            previous = next((line.split("=", 1)[1] for line in reversed(out.splitlines())
                             if line.startswith("previous=")), None)
            if previous is None:
                raise StepError(f"{node.name}: backup.etcd-restore did not say where the old data went",
                                hint=f"look for {DATA_DIR}.before-restore-* on {node.name}; its output: {out[-500:]}")
            ctx.note(f"{node.name}: waiting for the API server on the restored data")
            kube = ctx.kube(cluster)
            try:
                kube.wait_for("the API server to answer on the restored etcd",
                              lambda: (kube.get("v1", "Namespace", "", "kube-system") is not None,
                                       "no answer yet"), timeout=API_WAIT, interval=2)
            except LabctlError as exc:
                raise StepError(
                    f"{cluster_name}: the API server does not answer on the restored etcd ({exc.message})",
                    hint=f"the previous data directory is kept at {previous} on {node.name}; to go back to it: "
                    f"`sudo mkdir -p /root/manifests && sudo mv {MANIFESTS_DIR}/*.yaml /root/manifests/ && "
                    f"sudo mv {DATA_DIR} {DATA_DIR}.failed && sudo mv {previous} {DATA_DIR} && "
                    f"sudo mv /root/manifests/*.yaml {MANIFESTS_DIR}/`") from None
            transport.run(script("backup.etcd-restore-finish", "backup/etcd-restore-finish.sh.j2",
                                 previous=previous), sudo=True, timeout=300)
            return Restored(cluster_name, node.name, snapshot, previous)
        finally:
            ctx.close()
