"""Lab shapes installed whole in the simulated lab, not only planned: a single-node cluster (no `join` step) once
ran `cni` before `init` and failed with "no kubeconfig" until a second run. Every shape must converge in one
`install`, `plan` must show each cluster's cni waiting on its own init, and a second install must change nothing."""

from __future__ import annotations

import json

import pytest

from tests.sim.sim_lab import SimLab, lease_prefix
from tests.sim.test_sim_e2e import labctl, summary_of
from tests.unit.test_engine import SHAPES, shaped_raw

pytestmark = pytest.mark.sim


@pytest.mark.parametrize("shape", SHAPES)
def test_every_lab_shape_installs_in_one_run(shape, tmp_path, monkeypatch, fake_tart):
    monkeypatch.setenv("FAKE_TART_LEASE_PREFIX", lease_prefix())
    monkeypatch.setenv("FAKE_TART_IP_DELAY", "0")
    monkeypatch.chdir(tmp_path)
    raw = shaped_raw(SHAPES[shape])
    config = tmp_path / "clusters.json"
    config.write_text(json.dumps(raw))
    with SimLab(config, fake_tart):
        plan = labctl("--json", "plan")
        assert plan.code == 0, plan.out
        steps = {s["step"]: s for s in json.loads(plan.out)["steps"]}
        for cluster in raw["clusters"]:
            cni = steps[f"cni:{cluster['name']}"]
            # a one-node cluster has no join step: its cni waits on init, not on nothing
            waits_on = "init" if len(cluster["nodes"]) == 1 else "join"
            assert cni["status"] == "pending" and cni["detail"] == f"after {waits_on}", (shape, cni)

        first = labctl("--json", "install")
        assert first.code == 0, (shape, summary_of(first.out))
        assert summary_of(first.out)["failed"] == []

        again = labctl("--json", "install")
        assert again.code == 0
        assert summary_of(again.out)["counts"]["changed"] == 0, shape
