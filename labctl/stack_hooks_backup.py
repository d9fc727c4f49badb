"""The backup stack's hooks: what is neither a chart nor a manifest (registered in labctl/stack_hooks.py HOOKS).

- `etcd-snapshots`: on every control plane, the daily etcd snapshot timer with etcd's own tools at the cluster's
  etcd version (labctl/backup.py). The predecessor's cron script called an etcdctl no host had, and only warned.
- `velero-storage`: Velero's BackupStorageLocations are Available, i.e. Velero reached the in-lab MinIO with the
  lab's credentials and found its bucket. The predecessor's BSL pointed at a MinIO that was never deployed, with no
  credentials: every scheduled backup failed. Velero validates a location itself and records the verdict in its
  status (phase Available/Unavailable, message), which is what is read here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import backup
from .errors import StepError
from .stack_hooks import Hook

if TYPE_CHECKING:
    from .context import Context
    from .model import Cluster
    from .stacks import StackDef

VELERO_API = "velero.io/v1"
BSL_WAIT = 180  # seconds: Velero validates a new location at once, then every storeValidationFrequency (1m)


class EtcdSnapshots(Hook):
    """The snapshot script, its service and daily timer on every control plane, the tools image pulled."""

    name = "etcd-snapshots"

    def problems(self, ctx: Context, cluster: Cluster, stack: StackDef) -> list[str]:
        return [p for node in cluster.masters for p in backup.node_problems(ctx, node)]

    def apply(self, ctx: Context, cluster: Cluster, stack: StackDef) -> None:
        for node in cluster.masters:
            if backup.node_problems(ctx, node):
                ctx.note(f"{node.name}: installing the daily etcd snapshot ({backup.TIMER_UNIT})")
                backup.install_on(ctx, node)


def _locations(stack: StackDef) -> list[tuple[str, str]]:
    return [(o["metadata"].get("namespace") or stack.namespace, o["metadata"]["name"]) for o in stack.objects
            if o["apiVersion"] == VELERO_API and o["kind"] == "BackupStorageLocation"]


class VeleroStorage(Hook):
    """Every BackupStorageLocation of the stack is Available (Velero's own validation, read from its status)."""

    name = "velero-storage"

    def _unavailable(self, ctx: Context, cluster: Cluster, stack: StackDef) -> list[str]:
        kube = ctx.kube(cluster)
        if kube.resource(VELERO_API, "BackupStorageLocation") is None:
            return [f"BackupStorageLocation {ns}/{name}: Velero is not installed" for ns, name in _locations(stack)]
        out = []
        for ns, name in _locations(stack):
            live = kube.get(VELERO_API, "BackupStorageLocation", ns, name)
            status = (live or {}).get("status") or {}
            if live is None:
                out.append(f"BackupStorageLocation {ns}/{name} missing")
            elif status.get("phase") != "Available":
                why = status.get("message") or "Velero has not validated it yet"
                out.append(f"BackupStorageLocation {ns}/{name} is {status.get('phase') or 'not validated'}: {why}")
        return out

    def problems(self, ctx: Context, cluster: Cluster, stack: StackDef) -> list[str]:
        return self._unavailable(ctx, cluster, stack)

    def apply(self, ctx: Context, cluster: Cluster, stack: StackDef) -> None:
        """Nothing to change: the location, its credentials and the store are the stack's objects. Once Velero
        runs, wait for its verdict and fail with Velero's own message when the store stays unreachable."""
        kube = ctx.kube(cluster)
        # Hooks run before the stack's releases are (re)installed, and again while its workloads get ready: only
        # once every release is deployed and every workload (Velero, MinIO) ready is Velero's verdict final.
        releases = [kube.helm_release(r.namespace, r.release) for r in stack.releases]
        if not all(r is not None and r.status == "deployed" for r in releases) or \
                not all(kube.ready(*entry) for entry in stack.ready):
            return
        try:
            kube.wait_for("Velero to validate its backup storage", lambda: (
                not (left := self._unavailable(ctx, cluster, stack)), "; ".join(left)), timeout=BSL_WAIT, interval=2)
        except StepError as exc:
            raise StepError(exc.message,
                            hint="Velero cannot use its object store: `kubectl -n velero get bsl` and `kubectl -n "
                            "velero logs deploy/minio` show why; `labctl install` re-applies the stack") from None


HOOKS = (EtcdSnapshots(), VeleroStorage())
