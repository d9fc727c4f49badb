"""The backup stack in the simulated lab, through the real CLI: Velero finds its in-lab MinIO Available, every
control plane has its daily etcd snapshot timer with etcd's own tools, `labctl backup` then `labctl restore` round-trip
a control plane (the restored API serves the objects of snapshot time), and the predecessor's two defects
(reference/stacks.md phase 15) are caught: Velero without a reachable store, an etcd snapshot without etcdctl."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labctl import backup
from tests.sim.sim_backup import IMAGES, WANTS, tools_image
from tests.sim.test_sim_e2e import labctl, summary_of
from tests.sim.test_sim_stacks import open_sim, results

pytestmark = pytest.mark.sim

LAB = {"clusters": [
    {"name": "solo", "pod_cidr": "10.10.0.0/16", "service_cidr": "10.96.0.0/16", "stacks": ["storage", "backup"],
     "nodes": [{"name": "solo-master", "role": "master", "cpu": 2, "memory": 4096},
               {"name": "solo-worker1", "role": "worker", "cpu": 4, "memory": 8192}]}]}
BSL = ("apis/velero.io/v1", "backupstoragelocations", "default", "velero")


def configmap(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"},
            "data": {"made": name}}


def bsl_status(sim) -> dict:
    return (sim.clusters["solo"].store.get(*BSL) or {}).get("status") or {}


def test_backup_then_restore_round_trips_a_control_plane(lab_dir, fake_tart):
    with open_sim(lab_dir, fake_tart, LAB) as sim:
        result = labctl("--json", "install")
        assert result.code == 0, summary_of(result.out)["failed"]
        master = sim.nodes["solo-master"]
        # the daily timer on the control plane, with the tools at the cluster's etcd version
        assert master.files.get(WANTS + backup.TIMER_UNIT) is not None
        assert master.files[backup.SCRIPT_PATH].decode() == backup.snapshot_script().text
        assert master.files.get(IMAGES + tools_image(backup.TOOLS_REPO)) is not None
        assert bsl_status(sim)["phase"] == "Available"
        again = labctl("--json", "install")
        assert again.code == 0 and summary_of(again.out)["counts"]["changed"] == 0

        # 1. an object exists, 2. a snapshot is taken and copied home
        store = sim.clusters["solo"].store
        store.put("api/v1", "configmaps", configmap("before-backup"), "default")
        taken = labctl("--json", "backup", "--cluster", "solo")
        assert taken.code == 0, taken.err
        snap = json.loads(taken.out)["snapshots"][0]
        local = Path(snap["path"])
        assert local.parent == lab_dir / ".labctl" / "backups" / "solo" and local.name.startswith("etcd-")
        assert oct(local.stat().st_mode & 0o777) == "0o600" and local.stat().st_size == snap["size"] > 0
        assert master.files[snap["remote"]] == local.read_bytes()  # the node keeps its copy (rotated there)

        # 3. the cluster moves on: one object deleted, one created
        store.delete("api/v1", "configmaps", "before-backup", "default")
        store.put("api/v1", "configmaps", configmap("after-backup"), "default")
        revision = store.version

        # 4. restore asks first; unattended it needs --yes
        refused = labctl("restore", "--cluster", "solo", str(local))
        assert refused.code == 2 and "--yes" in refused.err
        assert store.get("api/v1", "configmaps", "after-backup", "default") is not None

        # 5. the restore: the API serves the objects of snapshot time again
        done = labctl("--json", "restore", "--cluster", "solo", str(local), "--yes")
        assert done.code == 0, done.err
        restored = json.loads(done.out)["restored"]
        assert restored["node"] == "solo-master"
        report = json.loads(labctl("--json", "status", "--timeout", "3").out)
        assert report["healthy"], report
        store = sim.clusters["solo"].store
        assert store.get("api/v1", "configmaps", "before-backup", "default") is not None
        assert store.get("api/v1", "configmaps", "after-backup", "default") is None
        assert store.version > revision  # revisions bumped: no watcher sees time go backwards
        # the old data directory was kept until the API answered, then removed
        previous = restored["previous_data_dir_removed"]
        assert previous.startswith("/var/lib/etcd.before-restore-")
        assert not any(k.startswith(previous) for k in master.files)

        # 6. the restored lab is the installed lab: nothing to change
        after = labctl("--json", "install")
        assert after.code == 0 and summary_of(after.out)["counts"]["changed"] == 0


def test_restore_refuses_a_missing_snapshot_and_an_unknown_cluster(lab_dir, fake_tart):
    with open_sim(lab_dir, fake_tart, LAB):
        missing = labctl("restore", "--cluster", "solo", str(lab_dir / "nope.db"), "--yes")
        assert missing.code == 2 and "no such snapshot file" in missing.err
        unknown = labctl("restore", "--cluster", "other", str(lab_dir / "nope.db"), "--yes")
        assert unknown.code == 2 and "other" in unknown.err
        nothing = labctl("backup")
        assert nothing.code == 2 and "labctl install" in nothing.err


def test_etcd_snapshot_without_etcdctl(lab_dir, fake_tart):
    """The predecessor's cron script called an etcdctl no host had and only warned: here a control plane that
    cannot get etcd's tools fails the install (node, command, exit code, output), plan names what is missing, and
    `labctl backup` fails instead of pretending."""
    with open_sim(lab_dir, fake_tart, LAB) as sim:
        master = sim.nodes["solo-master"]
        master.registry_unreachable = True
        result = labctl("--json", "install")
        assert result.code == 1
        assert results(result.out)["stacks:solo/backup"] == "failed"
        failed = json.dumps(summary_of(result.out)["failed"])
        assert "solo-master" in failed and "backup.etcd-snapshot" in failed and "no such host" in failed
        plan = labctl("--json", "plan")
        assert "etcd tools image gcr.io/etcd-development/etcd:v3.6.11 not pulled (no etcdctl/etcdutl)" in plan.out
        taken = labctl("backup", "--cluster", "solo")
        assert taken.code == 1 and "solo-master" in taken.err and "backup.etcd-snapshot" in taken.err
        assert not (lab_dir / ".labctl" / "backups" / "solo").exists() or \
            not any((lab_dir / ".labctl" / "backups" / "solo").iterdir())

        # the tools image disappears later (the kubelet's image garbage collection): the check sees it
        master.registry_unreachable = False
        assert labctl("install").code == 0
        del master.files[IMAGES + tools_image(backup.TOOLS_REPO)]
        plan = labctl("--json", "plan")
        assert "not pulled (no etcdctl/etcdutl)" in plan.out
        assert labctl("install").code == 0 and master.files.get(IMAGES + tools_image(backup.TOOLS_REPO))


def test_velero_without_a_reachable_store(lab_dir, fake_tart):
    """The predecessor's BackupStorageLocation pointed at a MinIO never deployed, without credentials: here the
    stack deploys MinIO itself, and a store Velero cannot use is a problem the check names in Velero's words."""
    with open_sim(lab_dir, fake_tart, LAB) as sim:
        assert labctl("install").code == 0
        assert bsl_status(sim)["phase"] == "Available"
        cluster = sim.clusters["solo"]

        # MinIO gone (never deployed, or uninstalled by hand)
        assert cluster.helm_uninstall("minio", "velero", "backup")[0] == 0
        plan = labctl("--json", "plan")
        assert "BackupStorageLocation velero/default is Unavailable" in plan.out and "no such host" in plan.out
        assert labctl("install").code == 0 and bsl_status(sim)["phase"] == "Available"

        # no credentials: the `cloud` key of the Secret is gone
        secret = cluster.store.get("api/v1", "secrets", "minio-credentials", "velero")
        secret["data"].pop("cloud")
        cluster.store.put("api/v1", "secrets", secret, "velero")
        plan = labctl("--json", "plan")
        assert "failed to refresh cached credentials" in plan.out
        assert labctl("install").code == 0 and bsl_status(sim)["phase"] == "Available"

        # MinIO's server not running behind its Service
        cluster.store.delete("apis/apps/v1", "deployments", "minio", "velero")
        plan = labctl("--json", "plan")
        assert "connection refused" in plan.out
