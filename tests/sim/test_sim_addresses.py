"""Two VMs, one address (a stale or crowded DHCP lease table): labctl must refuse before any SSH, naming both nodes,
instead of "preparing" the same guest twice (issue: two running VMs reported the same `tart ip`)."""

from __future__ import annotations

import json

import pytest

from tests.sim.sim_lab import SimLab, lease_prefix
from tests.sim.test_sim_e2e import labctl, summary_of

pytestmark = pytest.mark.sim

LAB = {"clusters": [{"name": "dev", "pod_cidr": "10.20.0.0/16", "service_cidr": "10.97.0.0/16",
                     "nodes": [{"name": "dev-master", "role": "master", "cpu": 2, "memory": 4096},
                               {"name": "dev-worker1", "role": "worker", "cpu": 2, "memory": 4096}]}]}


def test_two_nodes_reporting_one_address_are_refused_before_any_ssh(tmp_path, monkeypatch, fake_tart):
    monkeypatch.setenv("FAKE_TART_LEASE_PREFIX", lease_prefix())
    monkeypatch.setenv("FAKE_TART_IP_DELAY", "0")
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "clusters.json"
    config.write_text(json.dumps(LAB))
    with SimLab(config, fake_tart) as sim:
        assert labctl("--json", "install", "--only", "vms").code == 0
        # the worker's MAC now has the master's lease, as a stale entry in the Mac's lease table would give it
        leases_path = fake_tart.home / "fake" / "leases.json"
        leases = json.loads(leases_path.read_text())
        master = leases["leases"][fake_tart.config("dev-master")["macAddress"]]
        leases["leases"][fake_tart.config("dev-worker1")["macAddress"]] = master
        leases_path.write_text(json.dumps(leases))
        mark = len(sim.calls)

        result = labctl("--json", "install")
        assert result.code == 1
        failed = json.dumps(summary_of(result.out)["failed"])
        assert "dev-master and dev-worker1 both report the address" in failed or \
            "dev-worker1 and dev-master both report the address" in failed
        assert master in failed and "lease" in failed
        assert sim.calls[mark:] == []  # not one script reached either guest
