"""The registry stack in the simulated lab: an image pushed to the platform cluster's registry pulls on a node of
ANOTHER cluster through the hosts.toml labctl writes and the `config_path` it sets (containerd 1.7, whose default
config_path is empty, and 2.2); a node whose config_path is empty cannot pull it, as containerd would fail."""

from __future__ import annotations

import copy
import json

import pytest

from tests.sim import sim_registry
from tests.sim.sim_node import CONTAINERD_PACKAGES
from tests.sim.test_sim_e2e import labctl, summary_of
from tests.sim.test_sim_stacks import open_sim

pytestmark = pytest.mark.sim

IMAGE = "platform-registry.labctl.internal:30500/team/app:1"


def two_clusters() -> dict:
    def node(name: str, role: str) -> dict:
        return {"name": name, "role": role, "cpu": 2, "memory": 4096 if role == "master" else 8192, "disk": 20}

    return {
        "versions": {"kubernetes": "1.35.6", "containerd": "1.7.28"},
        "clusters": [
            {"name": "platform", "pod_cidr": "10.10.0.0/16", "service_cidr": "10.96.0.0/16",
             "stacks": ["storage", "registry"],
             "nodes": [node("platform-master", "master"), node("platform-worker1", "worker")]},
            {"name": "dev", "pod_cidr": "10.20.0.0/16", "service_cidr": "10.97.0.0/16",
             "nodes": [node("dev-master", "master"), node("dev-worker1", "worker")]},
        ],
    }


@pytest.mark.parametrize("containerd", ["1.7", "2.2"])
def test_a_pushed_image_pulls_on_another_clusters_node(lab_dir, fake_tart, containerd):
    with open_sim(lab_dir, fake_tart, two_clusters()) as sim:
        sim.containerd = containerd
        result = labctl("--json", "install")
        assert result.code == 0, summary_of(result.out)["failed"]
        with pytest.raises(sim_registry.PullError, match="not found"):  # reachable, but nothing pushed yet
            sim_registry.pull(sim, "dev-worker1", IMAGE)
        sim_registry.push(sim, "platform", 30500, "team/app:1")
        for node in sim.nodes:
            url = sim_registry.pull(sim, node, IMAGE)
            assert url.startswith("http://") and url.endswith(":30500"), (node, url)
        # containerd's own directory for that name, listing the platform nodes over plain HTTP
        toml = sim.nodes["dev-worker1"].files[
            "/etc/containerd/certs.d/platform-registry.labctl.internal:30500/hosts.toml"].decode()
        assert f'[host."http://{sim.address("platform-worker1")}:30500"]' in toml
        assert f'[host."http://{sim.address("platform-master")}:30500"]' in toml

        # a second install changes nothing (the hook finds every file as it wants it)
        again = labctl("--json", "install")
        assert again.code == 0 and summary_of(again.out)["counts"]["changed"] == 0


def test_two_clusters_with_a_registry_each_install_and_a_second_install_changes_nothing(lab_dir, fake_tart):
    """Each registry's hook writes its /etc/hosts line on every node of the lab, both at once: each line only has to
    be there (the second registry's line after the first's must not make the first's check fail forever)."""
    lab = two_clusters()
    lab["clusters"][1]["stacks"] = ["storage", "registry"]
    with open_sim(lab_dir, fake_tart, lab) as sim:
        result = labctl("--json", "install")
        assert result.code == 0, summary_of(result.out)["failed"]
        for node in sim.nodes:
            hosts = sim.nodes[node].text("/etc/hosts")
            for cluster in ("platform", "dev"):
                assert f"{cluster}-registry.labctl.internal # labctl" in hosts, (node, hosts)
        sim_registry.push(sim, "dev", 30500, "team/app:1")
        assert sim_registry.pull(sim, "platform-worker1", "dev-registry.labctl.internal:30500/team/app:1")
        again = labctl("--json", "install")
        assert again.code == 0 and summary_of(again.out)["counts"]["changed"] == 0, summary_of(again.out)


def test_hosts_toml_ignored_because_config_path_is_empty(lab_dir, fake_tart):
    """Predecessor defect (reference/stacks.md phase 17): containerd 1.7's default config has an empty config_path,
    so the hosts.toml written on every node was ignored and pulls went to https:// of a plain-HTTP registry. labctl
    sets config_path in the runtime phase; a node put back on the package's default fails the pull exactly so, and
    the next install repairs it."""
    with open_sim(lab_dir, fake_tart, two_clusters()) as sim:
        sim.containerd = "1.7"
        assert labctl("--json", "install").code == 0
        sim_registry.push(sim, "platform", 30500, "team/app:1")
        worker = sim.nodes["dev-worker1"]
        assert sim_registry.config_roots(worker) == ["/etc/containerd/certs.d"]
        ctd = worker.facts["containerd"]
        ctd["config_dump"] = copy.deepcopy(CONTAINERD_PACKAGES["1.7"]["config_dump"])  # config_path = ""
        assert sim_registry.config_roots(worker) == []
        with pytest.raises(sim_registry.PullError) as failed:
            sim_registry.pull(sim, "dev-worker1", IMAGE)
        assert str(failed.value) == (
            f'failed to pull and unpack image "{IMAGE}": failed to resolve reference "{IMAGE}": failed to do request: '
            'Head "https://platform-registry.labctl.internal:30500/v2/team/app/manifests/1": http: server gave HTTP '
            'response to HTTPS client')

        plan = labctl("--json", "plan")
        assert "config_path is empty" in plan.out
        assert labctl("--json", "install").code == 0
        assert sim_registry.pull(sim, "dev-worker1", IMAGE).startswith("http://")


def test_a_node_restarted_at_a_new_address_still_pulls_after_boot(lab_dir, fake_tart):
    """The image reference names a stable name, not an address: after the registry's nodes come back at other
    addresses, `labctl boot` re-runs the hook and the same reference pulls again."""
    raw = two_clusters()
    with open_sim(lab_dir, fake_tart, raw) as sim:
        assert labctl("--json", "install").code == 0
        sim_registry.push(sim, "platform", 30500, "team/app:1")
        before = {n: sim.address(n) for n in ("platform-master", "platform-worker1")}
        assert labctl("shutdown", "--cluster", "platform").code == 0
        leases = fake_tart.home / "fake" / "leases.json"
        data = json.loads(leases.read_text())
        data["leases"] = {mac: ip for mac, ip in data["leases"].items() if ip not in before.values()}
        leases.write_text(json.dumps(data))
        assert labctl("boot").code == 0
        after = {n: sim.address(n) for n in before}
        assert not set(after.values()) & set(before.values())  # new leases: the old ones were dropped
        url = sim_registry.pull(sim, "dev-worker1", IMAGE)
        assert url.split("//")[1].split(":")[0] in after.values()
