"""The quotas stack in the simulated lab, whose API server admits pods as LimitRanger and ResourceQuota do
(tests/sim/sim_stack_quotas.py): the demo apps install under dev's LimitRange and quota and a second install
changes nothing; a workload the LimitRange refuses stays unready and `labctl install` shows the API server's reason."""

from __future__ import annotations

import json

import pytest

import phases.stacks
from tests.sim.test_sim_e2e import labctl, summary_of
from tests.sim.test_sim_stacks import open_sim, results

pytestmark = pytest.mark.sim


def dev_lab() -> dict:
    return {"clusters": [
        {"name": "dev", "pod_cidr": "10.20.0.0/16", "service_cidr": "10.97.0.0/16",
         "stacks": ["metrics-server", "quotas", "hpa-demo"],
         "nodes": [{"name": "dev-master", "role": "master", "cpu": 2, "memory": 4096},
                   {"name": "dev-worker1", "role": "worker", "cpu": 2, "memory": 8192}]}]}


def test_dev_installs_the_demo_apps_under_its_quota_and_a_second_install_changes_nothing(lab_dir, fake_tart):
    with open_sim(lab_dir, fake_tart, dev_lab()) as sim:
        result = labctl("--json", "install")
        assert result.code == 0, summary_of(result.out)["failed"]
        assert results(result.out)["stacks:dev/quotas"] == "changed"
        store = sim.clusters["dev"].store
        quota = store.get("api/v1", "resourcequotas", "demo-quota", "demo")
        assert quota["spec"]["hard"]["requests.cpu"] == "4" and quota["spec"]["hard"]["pods"] == "30"
        assert store.get("api/v1", "limitranges", "demo-limitrange", "demo") is not None
        for name in ("nginx", "httpbin", "redis", "postgres", "rabbitmq", "keycloak"):
            status = store.get("apis/apps/v1", "deployments", name, "demo")["status"]
            assert status["availableReplicas"] == status["replicas"] >= 1, name
        result = labctl("--json", "install")
        assert result.code == 0 and summary_of(result.out)["counts"]["changed"] == 0


def test_a_workload_the_limitrange_refuses_stays_unready_and_install_says_why(lab_dir, fake_tart, monkeypatch):
    raw = dev_lab()
    with open_sim(lab_dir, fake_tart, raw):
        assert labctl("--json", "install").code == 0
        tiny = lab_dir / "tiny"
        tiny.mkdir()
        (tiny / "tiny.yaml").write_text(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: tiny, namespace: demo}\nspec:\n"
            "  selector: {matchLabels: {app: tiny}}\n  template:\n    metadata: {labels: {app: tiny}}\n    spec:\n"
            "      containers:\n        - name: tiny\n          image: 'nginx:1.30.4-alpine'\n"
            "          resources: {requests: {cpu: 10m, memory: 64Mi}, limits: {cpu: 100m, memory: 128Mi}}\n")
        raw["clusters"][0]["stacks"].append({"name": "tiny", "manifests": "tiny", "namespace": "demo"})
        (lab_dir / "clusters.json").write_text(json.dumps(raw))
        # never ready whatever the wait: one look is enough (the other stacks are ready and are not waited on)
        monkeypatch.setattr(phases.stacks, "READY_WAIT", 0)
        result = labctl("--json", "install")
        assert result.code == 1
        assert results(result.out)["stacks:dev/tiny"] == "failed"
        failed = json.dumps(summary_of(result.out)["failed"])
        assert "Deployment demo/tiny: 0/1 available" in failed
        assert 'is forbidden: minimum cpu usage per Container is 50m, but request is 10m' in failed
        assert 'FailedCreate: pods \\"tiny-' in failed
