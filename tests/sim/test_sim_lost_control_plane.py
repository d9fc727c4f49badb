"""A control plane VM lost behind labctl's back (deleted with its disk): `install` makes the VM and the control plane
anew, and the workers that joined the old one must be diagnosed on the first run — not repaired (their kubelet
trusts the old CA) and waited on for REGISTER_WAIT each before a timeout that explains nothing (issue 13.7)."""

from __future__ import annotations

import json

import pytest

from tests.sim.sim_lab import SimLab, lease_prefix
from tests.sim.test_sim_e2e import labctl, summary_of

pytestmark = pytest.mark.sim

LAB = {"clusters": [{"name": "dev", "pod_cidr": "10.20.0.0/16", "service_cidr": "10.97.0.0/16",
                     "nodes": [{"name": "dev-master", "role": "master", "cpu": 2, "memory": 4096},
                               {"name": "dev-worker1", "role": "worker", "cpu": 2, "memory": 4096},
                               {"name": "dev-worker2", "role": "worker", "cpu": 2, "memory": 4096}]}]}


def test_workers_of_a_recreated_control_plane_are_diagnosed_at_once(tmp_path, monkeypatch, fake_tart):
    monkeypatch.setenv("FAKE_TART_LEASE_PREFIX", lease_prefix())
    monkeypatch.setenv("FAKE_TART_IP_DELAY", "0")
    monkeypatch.chdir(tmp_path)
    # were the workers waited on, the run would end in a timeout naming no cause, not in the diagnosis below
    monkeypatch.setattr("phases.join.REGISTER_WAIT", 3)
    config = tmp_path / "clusters.json"
    config.write_text(json.dumps(LAB))
    with SimLab(config, fake_tart) as sim:
        assert labctl("--json", "install").code == 0
        sim.lose_vm("dev-master")
        mark = sim.mark()

        result = labctl("--json", "install")
        assert result.code == 1
        failed = {f["step"]: f["detail"] for f in summary_of(result.out)["failed"]}
        assert set(failed) == {"join:dev/dev-worker1", "join:dev/dev-worker2"}, failed
        for worker in ("dev-worker1", "dev-worker2"):
            detail = failed[f"join:dev/{worker}"]
            assert "has no Node of this name" in detail and "created anew" in detail, detail
            assert "kubeadm reset" in detail
        # diagnosed before anything was done to them: no hosts repair, no join
        assert not [c for c in sim.calls[mark:] if c.node.startswith("dev-worker") and c.script != "facts"]
        assert sim.clusters["dev"].inits == 1  # the new control plane's first (and only) init
