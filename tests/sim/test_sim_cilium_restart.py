"""Cilium after an address repair: Cilium's agents and operator run in the host network, and a host-network
container's /etc/hosts is a copy of the node's taken when the kubelet starts it (tests/sim/sim_cluster.py
`_hosts_copy`). When the control plane's address changes under running pods (its DHCP lease changed while the VMs
ran), `boot` repairs the hosts lines, and must then restart the agents and the operator so that they resolve the API
name anew; a second `boot` with nothing moved restarts nothing."""

from __future__ import annotations

import json

import pytest

from tests.sim.kube_resources import APPS
from tests.sim.sim_controllers import KUBE_SYSTEM
from tests.sim.sim_lab import SimLab, lease_prefix
from tests.sim.test_sim_e2e import labctl, summary_of

pytestmark = pytest.mark.sim

RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"  # what `kubectl rollout restart` stamps on the pod template

LAB = {"clusters": [{"name": "dev", "pod_cidr": "10.20.0.0/16", "service_cidr": "10.97.0.0/16",
                     "nodes": [{"name": "dev-master", "role": "master", "cpu": 2, "memory": 4096},
                               {"name": "dev-worker1", "role": "worker", "cpu": 2, "memory": 4096}]}]}


def restarted_at(sim: SimLab) -> dict[str, str | None]:
    store = sim.clusters["dev"].store
    out = {}
    for plural, name in (("daemonsets", "cilium"), ("deployments", "cilium-operator")):
        template = store.get(APPS, plural, name, KUBE_SYSTEM)["spec"].get("template") or {}
        out[name] = ((template.get("metadata") or {}).get("annotations") or {}).get(RESTARTED_AT)
    return out


def test_boot_restarts_cilium_after_the_api_address_changed_under_running_pods(tmp_path, monkeypatch, fake_tart):
    prefix = lease_prefix()
    monkeypatch.setenv("FAKE_TART_LEASE_PREFIX", prefix)
    monkeypatch.setenv("FAKE_TART_IP_DELAY", "0")
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "clusters.json"
    config.write_text(json.dumps(LAB))
    with SimLab(config, fake_tart) as sim:
        result = labctl("--json", "install")
        assert result.code == 0, summary_of(result.out)["failed"]
        assert restarted_at(sim) == {"cilium": None, "cilium-operator": None}
        old = sim.address("dev-master")

        # the master's lease expired while the Mac slept and DHCP gave it another address; nothing rebooted
        leases_path = fake_tart.home / "fake" / "leases.json"
        leases = json.loads(leases_path.read_text())
        leases["leases"][fake_tart.config("dev-master")["macAddress"]] = f"{prefix}.200"
        leases_path.write_text(json.dumps(leases))
        assert sim.address("dev-master") == f"{prefix}.200" != old

        result = labctl("--json", "boot")
        assert result.code == 0, summary_of(result.out)["failed"]
        world = sim.world()["clusters"]["dev"]
        assert world["workloads"]["cilium"] and world["workloads"]["cilium-operator"], world["workloads"]
        assert all(n["ready"] == "True" for n in world["nodes"].values())
        status = labctl("--json", "status", "--timeout", "5")
        report = json.loads(status.out)
        assert status.code == 0 and report["healthy"], report
        first = restarted_at(sim)
        assert first["cilium"] and first["cilium-operator"]

        result = labctl("--json", "boot")  # nothing moved: no repair, no second restart
        assert result.code == 0 and summary_of(result.out)["counts"]["changed"] == 0
        assert restarted_at(sim) == first
