"""The backup stack's own facts: its node scripts pass bash -n and shellcheck in every mode, Velero's AWS plugin is
the line Velero's docs pair with the pinned Velero, one Secret carries MinIO's login and Velero's AWS credentials
file, the Schedules name only namespaces the cluster has, and a restore of an HA control plane is refused."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from labctl import backup, credentials, model, stacks
from labctl.errors import UsageError
from labctl.render import script
from tests.conftest import check_bash_scripts
from tests.unit import reference as ref

# velero-plugin-for-aws README compatibility table (plugin minor ↔ Velero minor); 1.14 ↔ 1.18 per velero-io/velero
# discussions #10508 and #10563 ("plugin v1.14.x with Velero 1.18.x is the documented, supported pair").
AWS_PLUGIN_FOR_VELERO = {"1.14": "1.10", "1.15": "1.11", "1.16": "1.12", "1.17": "1.13", "1.18": "1.14"}


def lab(stack_names: list[str], masters: int = 1) -> model.Lab:
    nodes = [{"name": f"lab-master{i}" if masters > 1 else "lab-master", "role": "master", "cpu": 2,
              "memory": 4096} for i in range(1, masters + 1)]
    nodes.append({"name": "lab-worker1", "role": "worker", "cpu": 4, "memory": 16384})
    return model.parse(json.dumps({"clusters": [{"name": "lab", "pod_cidr": "10.10.0.0/16",
                                                 "service_cidr": "10.96.0.0/16", "stacks": stack_names,
                                                 "nodes": nodes}]}), source="test lab")


def test_every_backup_script_passes_bash_n_and_shellcheck(tmp_path):
    texts = {f"snapshot-{mode}": backup.snapshot_script(mode).text for mode in ("snapshot", "install", "probe")}
    texts["restore"] = script("backup.etcd-restore", "backup/etcd-restore.sh.j2", snapshot="/var/lib/x/etcd-1.db",
                              etcd_manifest=backup.ETCD_MANIFEST, etcd_pki=backup.ETCD_PKI,
                              tools_repo=backup.TOOLS_REPO, manifests_dir=backup.MANIFESTS_DIR,
                              data_dir=backup.DATA_DIR, work_dir=backup.WORK_DIR, stamp="20260101T000000Z").text
    texts["finish"] = script("backup.etcd-restore-finish", "backup/etcd-restore-finish.sh.j2",
                             previous="/var/lib/etcd.before-restore-20260101T000000Z").text
    check_bash_scripts(texts, tmp_path)


def test_the_installed_snapshot_script_is_the_one_labctl_runs_and_its_units_start_it():
    files = backup.installed_files()
    assert files[backup.SCRIPT_PATH] == (backup.snapshot_script().text, 0o700)
    service, timer = files[backup.SERVICE_PATH][0], files[backup.TIMER_PATH][0]
    assert f"ExecStart={backup.SCRIPT_PATH}" in service and "Type=oneshot" in service
    assert f"OnCalendar={backup.ON_CALENDAR}" in timer and "Persistent=true" in timer
    assert "WantedBy=timers.target" in timer


def test_etcd_snapshot_without_etcdctl_uses_etcds_own_tools_at_the_clusters_version():
    """The predecessor called an etcdctl no host had. The scripts take the version from the etcd static pod's
    image and run etcdctl and etcdutl from etcd's release image at that version (pulled, never guessed)."""
    text = backup.snapshot_script().text
    assert "etcdctl --endpoints=https://127.0.0.1:2379" in text and "snapshot save" in text
    assert "etcdutl snapshot status" in text
    assert re.search(r'echo "\$tools_repo:v\$\{tag%%-\*\}"', text)
    assert "ctr --namespace k8s.io images pull" in text
    assert "warn" not in text.lower()  # a failure is an exit code, never a warning


def test_velero_aws_plugin_is_the_line_velero_pairs_with():
    """The predecessor ran plugin 1.10 (paired with Velero 1.14) under the unpinned chart's Velero 1.17/1.18."""
    facts = ref.chart_folder("velero")
    if facts is None:
        pytest.skip("reference/charts/velero not found")
    app = re.search(r"^appVersion: (\d+\.\d+)\.", (ref.CHARTS / facts.folder / "chart.txt").read_text(), re.M)
    the_lab = lab(["storage", "backup"])
    values = stacks.resolve(the_lab, the_lab.cluster("lab"), "backup", ref.CHARTS).releases
    velero = next(r for r in values if r.release == "velero")
    image = next(c["image"] for c in velero.values["initContainers"] if c["name"] == "velero-plugin-for-aws")
    plugin = re.search(r":v(\d+\.\d+)\.\d+$", image)
    assert plugin and AWS_PLUGIN_FOR_VELERO[app[1]] == plugin[1], (image, app[1])


def test_one_secret_carries_minios_login_and_veleros_credentials_file():
    cred = stacks.catalogue()["backup"].credentials[0]
    entry = {"user": "velero", "password": "s3cr3t-p4ss", "created": "2026-01-01T00:00:00Z"}
    secret = credentials.secret_object(cred, entry, "backup")
    import base64

    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data["rootUser"] == "velero" and data["rootPassword"] == "s3cr3t-p4ss"
    assert data["cloud"] == "[default]\naws_access_key_id=velero\naws_secret_access_key=s3cr3t-p4ss\n"
    assert credentials.secret_matches(cred, entry, secret)
    stale = {**secret, "data": {**secret["data"], "cloud": base64.b64encode(b"[default]\n").decode()}}
    assert not credentials.secret_matches(cred, entry, stale)  # a Secret without the file is re-applied


def test_velero_without_a_reachable_store_points_at_the_minio_the_stack_deploys():
    the_lab = lab(["storage", "backup"])
    stack = stacks.resolve(the_lab, the_lab.cluster("lab"), "backup", ref.CHARTS)
    bsl = next(o for o in stack.objects if o["kind"] == "BackupStorageLocation")
    minio = next(r for r in stack.releases if r.release == "minio")
    assert bsl["spec"]["config"]["s3Url"] == f"http://{minio.release}.{minio.namespace}.svc:9000"
    assert bsl["spec"]["config"]["s3ForcePathStyle"] == "true"
    assert bsl["spec"]["objectStorage"]["bucket"] in [b["name"] for b in minio.values["buckets"]]
    assert bsl["spec"]["credential"] == {"name": minio.values["existingSecret"], "key": "cloud"}
    assert "velero-storage" in stack.hooks  # the install waits for Velero's own verdict


@pytest.mark.parametrize(("declared", "daily", "hourly"), [
    (["storage", "backup"], None, False),
    (["storage", "monitoring", "jenkins", "backup"], ["monitoring", "jenkins"], False),
    (["storage", "metrics-server", "hpa-demo", "argocd", "backup"], ["demo", "argocd"], True),
])
def test_schedules_name_only_the_namespaces_the_cluster_has(declared, daily, hourly):
    the_lab = lab(declared)
    objects = stacks.resolve(the_lab, the_lab.cluster("lab"), "backup", ref.CHARTS).objects
    schedules = {o["metadata"]["name"]: o["spec"] for o in objects if o["kind"] == "Schedule"}
    assert (schedules["daily"]["template"]["includedNamespaces"] if "daily" in schedules else None) == daily
    assert ("hourly-demo" in schedules) == hourly
    if daily:
        assert schedules["daily"]["schedule"] == "0 3 * * *" and schedules["daily"]["template"]["ttl"] == "168h0m0s"
    if hourly:
        assert schedules["hourly-demo"]["template"] == yaml.safe_load(
            "{includedNamespaces: [demo], storageLocation: default, snapshotVolumes: false, ttl: 24h0m0s}")


def test_restore_refuses_several_control_planes(tmp_path):
    from labctl.lab import LabSession
    from labctl.state import LabState

    session = LabSession(tmp_path / "clusters.json", lab(["storage", "backup"], masters=3), LabState(tmp_path / ".labctl"))
    snapshot = tmp_path / "etcd-1.db"
    snapshot.write_bytes(b"x")
    with pytest.raises(UsageError, match="3 control planes"):
        backup.check_restorable(session, "lab", snapshot)
