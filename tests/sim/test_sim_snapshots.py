"""Whole-lab snapshots in the simulated lab (issue 19b): `labctl snapshot save/list/restore/delete`, `destroy
--snapshots`.

The fake tart copies a stopped VM as `tart clone` does (a new MAC for the copy, reference/tart-cli.md), and the
simulated world copies the guest's disk with it (SimLab.vm_cloned: the node's files and packages, and on a first
control plane its cluster's etcd), so a restored lab comes back on new addresses and must be repaired by the boot.
"""

from __future__ import annotations

import json

import pytest

from tests.sim.sim_lab import SimLab
from tests.sim.test_sim_e2e import labctl
from tests.sim.test_sim_stacks import open_sim

pytestmark = pytest.mark.sim

LAB = {"clusters": [{"name": "dev", "pod_cidr": "10.20.0.0/16", "service_cidr": "10.97.0.0/16",
                     "stacks": ["rbac", "metrics-server"],
                     "nodes": [{"name": "dev-master", "role": "master", "cpu": 2, "memory": 4096},
                               {"name": "dev-worker1", "role": "worker", "cpu": 2, "memory": 4096}]}]}
NODES = ["dev-master", "dev-worker1"]
SNAP_VMS = ["labctl-snap-base--dev-master", "labctl-snap-base--dev-worker1"]
VOLATILE = {"events", "leases", "certificatesigningrequests", "endpointslices", "endpoints"}  # kubelets' churn


@pytest.fixture
def sim(fake_tart, lab_dir):
    with open_sim(lab_dir, fake_tart, LAB) as lab:
        yield lab


def objects(sim: SimLab, cluster: str = "dev") -> set[tuple[str, str, str, str]]:
    """What the cluster's API store (etcd) holds, by (group, plural, namespace, name), less the kubelets' churn."""
    return {key for key in sim.clusters[cluster].store.objects if key[1] not in VOLATILE}


def world(sim: SimLab) -> dict:
    """SimLab.world(), less the count of CSRs: kubelets file new serving CSRs when their address changed."""
    out = sim.world()
    for stacks in out["stacks"].values():
        stacks["objects"].pop("CertificateSigningRequest", None)
    return out


def ok(*args: str) -> str:
    result = labctl(*args)
    assert result.code == 0, result.out + result.err
    return result.out


def test_snapshot_save_change_restore_gives_back_the_lab(sim, fake_tart, tmp_path):
    ok("--json", "install")
    before_world, before_objects = world(sim), objects(sim)
    addresses = {n: sim.address(n) for n in NODES}

    ok("snapshot", "save", "base", "--yes")
    assert set(fake_tart.vms()) == set(NODES) | set(SNAP_VMS)
    assert all(fake_tart.running_pid(vm) is None for vm in SNAP_VMS)  # copies of stopped VMs, never started
    assert world(sim) == before_world  # the lab is back up, as it was
    manifest = json.loads((tmp_path / ".labctl/snapshots/base/snapshot.json").read_text())
    assert manifest["complete"] and manifest["clusters"] == ["dev"]
    assert manifest["nodes"] == dict(zip(NODES, SNAP_VMS))
    assert (tmp_path / ".labctl/snapshots/base/kubeconfig/dev").is_file()
    assert (tmp_path / ".labctl/snapshots/base").stat().st_mode & 0o077 == 0

    # change the lab: a namespace deleted, a worker's VM gone
    namespace = ("api/v1", "namespaces", "", "kube-public")
    assert namespace in sim.clusters["dev"].store.objects
    with sim.clusters["dev"].store.lock:
        del sim.clusters["dev"].store.objects[namespace]
    sim.lose_vm("dev-worker1")
    assert objects(sim) != before_objects

    assert "restored dev" in ok("snapshot", "restore", "base", "--yes")
    assert objects(sim) == before_objects
    assert world(sim) == before_world  # nodes Ready on their current addresses, stacks, Cilium: all as saved
    # tart gave the copies new MACs, so new leases: the boot's address repair made the lab whole again
    assert {n: sim.address(n) for n in NODES} != addresses
    assert set(fake_tart.vms()) == set(NODES) | set(SNAP_VMS)  # the snapshot stays, reusable

    # a second restore from the same snapshot works as well
    ok("snapshot", "restore", "base", "--yes")
    assert world(sim) == before_world and objects(sim) == before_objects


def test_list_delete_and_destroy_keeps_snapshots_unless_asked(sim, fake_tart, tmp_path):
    ok("install", "--only", "vms,prepare")
    ok("snapshot", "save", "one", "--yes")
    ok("snapshot", "save", "two", "--yes")
    rows = json.loads(ok("--json", "snapshot", "list"))["snapshots"]
    assert [r["name"] for r in rows] == ["one", "two"]
    assert all(r["clusters"] == ["dev"] and r["complete"] and r["size_bytes"] > 0 for r in rows)

    assert json.loads(ok("--json", "snapshot", "delete", "one"))["vms"] == [f"labctl-snap-one--{n}" for n in NODES]
    assert not any(vm.startswith("labctl-snap-one--") for vm in fake_tart.vms())

    ok("destroy", "--yes")
    assert fake_tart.vms() == [f"labctl-snap-two--{n}" for n in NODES]  # the lab's VMs gone, the snapshot's kept
    assert [r["name"] for r in json.loads(ok("snapshot", "list", "--json"))["snapshots"]] == ["two"]

    # the snapshot brings the destroyed lab back (its records, key and kubeconfigs were kept with it)
    ok("snapshot", "restore", "two", "--yes")
    assert set(fake_tart.vms()) == set(NODES) | {f"labctl-snap-two--{n}" for n in NODES}
    assert all(fake_tart.running_pid(n) for n in NODES)

    ok("destroy", "--yes", "--snapshots")
    assert fake_tart.vms() == []
    assert not (tmp_path / ".labctl").exists()  # a whole-lab destroy --snapshots leaves nothing behind


def test_restore_from_another_clusters_json_is_refused_with_the_difference(sim, fake_tart, tmp_path):
    ok("install", "--only", "vms")
    ok("snapshot", "save", "base", "--yes")
    changed = json.loads(json.dumps(LAB))
    changed["clusters"][0]["nodes"][1]["cpu"] = 3
    changed["versions"] = {"kubernetes": "1.35.5"}
    (tmp_path / "clusters.json").write_text(json.dumps(changed))
    mark = fake_tart.mark()
    result = labctl("snapshot", "restore", "base", "--yes")
    assert result.code != 0
    assert "another clusters.json" in result.err
    assert "node dev-worker1: changed" in result.err and "version kubernetes" in result.err
    assert "Traceback" not in result.err
    assert not [a for a in fake_tart.argvs(mark) if a[0] in ("delete", "clone", "stop", "run")]  # nothing touched


@pytest.mark.parametrize("name", ["Bad_Name", "x-", "a" * 41, "x.y"])
def test_snapshot_names_are_dns_labels(sim, name):
    result = labctl("snapshot", "save", name, "--yes")
    assert result.code != 0 and "not valid" in result.err and "Traceback" not in result.err


def test_a_failed_copy_keeps_no_snapshot_and_says_how_to_start_the_lab(sim, fake_tart, tmp_path, monkeypatch):
    ok("install", "--only", "vms,prepare")
    before = world(sim)
    monkeypatch.setenv("FAKE_TART_FAIL", json.dumps({"clone:dev-worker1": [1, "Error: no space left on device"]}))
    result = labctl("snapshot", "save", "full", "--yes")
    assert result.code != 0 and "Traceback" not in result.err
    assert "no snapshot was kept" in result.err and "no space left on device" in result.err
    assert "labctl boot" in result.err
    assert fake_tart.vms() == NODES  # the copy already made was deleted again; the lab's VMs untouched
    assert not (tmp_path / ".labctl/snapshots/full").exists()
    monkeypatch.delenv("FAKE_TART_FAIL")
    ok("boot")
    assert world(sim) == before
