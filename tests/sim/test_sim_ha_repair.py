"""HA clusters after day one (issue 20 items 4-5, docs/ha.md): a master that came back at another address is
repaired for etcd too (its member's peer URL updated on a member with quorum, then its own files, one member at a
time), and masters removed from clusters.json leave etcd first (`install --prune`: member remove, then the Node, then
the VM), keeping quorum at every step, down to one master (the cluster is then a single-master one again).

The simulated etcd (tests/sim/sim_etcd.py) holds each member's peer URL: a member whose node moved is cut off
until `member update`, membership changes need quorum, and `SimCluster.etcd_log` records the members and how many
were alive after every membership change and VM deletion.
"""

from __future__ import annotations

import json

import pytest
import yaml

from labctl import apiproxy
from labctl.kube import LOCAL_API, endpoint_host, hosts_address
from labctl.remote.facts import HOSTS
from labctl.state import LabState
from tests.sim.sim_lab import SimLab, lease_prefix
from tests.sim.test_sim_e2e import labctl, summary_of

pytestmark = pytest.mark.sim

WORKER = "ha-w1"


def lab(masters: list[str]) -> dict:
    nodes = [{"name": name, "role": "master", "cpu": 2, "memory": 2048} for name in masters]
    nodes.append({"name": WORKER, "role": "worker", "cpu": 2, "memory": 2048})
    return {"clusters": [{"name": "ha", "pod_cidr": "10.20.0.0/16", "service_cidr": "10.97.0.0/16", "nodes": nodes}]}


@pytest.fixture
def env(tmp_path, monkeypatch, fake_tart):
    monkeypatch.setenv("FAKE_TART_LEASE_PREFIX", lease_prefix())
    monkeypatch.setenv("FAKE_TART_IP_DELAY", "0")
    monkeypatch.chdir(tmp_path)
    state = LabState(tmp_path / ".labctl")
    try:
        yield tmp_path / "clusters.json", fake_tart, state
    finally:
        apiproxy.stop(state)


def installed(config, fake, masters: list[str]) -> SimLab:
    config.write_text(json.dumps(lab(masters)))
    sim = SimLab(config, fake).__enter__()
    result = labctl("--json", "install")
    assert result.code == 0, summary_of(result.out)["failed"]
    return sim


def ok(*args: str) -> dict:
    result = labctl("--json", *args)
    summary = summary_of(result.out)
    assert result.code == 0 and summary["ok"], summary["failed"]
    return summary


def status() -> dict:
    return next(c for c in json.loads(labctl("--json", "status").out)["clusters"] if c["name"] == "ha")


def peers(sim: SimLab) -> dict[str, str]:
    return {m.name: m.address for m in sim.clusters["ha"].etcd.members}


def never_below_quorum(sim: SimLab) -> list[tuple[str, int, int]]:
    log = sim.clusters["ha"].etcd_log
    assert all(alive >= members // 2 + 1 for _, members, alive in log), log
    return log


def test_boot_after_one_master_moved_updates_its_etcd_member_then_changes_nothing(env):
    config, fake, state = env
    masters = ["ha-m1", "ha-m2", "ha-m3"]
    with installed(config, fake, masters) as sim:
        before = sim.address("ha-m2")
        ok("shutdown")
        fake.new_ip_on_next_boot("ha-m2")
        mark = sim.mark()
        ok("boot")
        now = sim.address("ha-m2")
        assert now != before
        # the member's peer URL follows the node, updated on another member before its own files changed
        assert peers(sim) == {m: sim.address(m) for m in masters}
        ran = [(c.node, c.script) for c in sim.calls[mark:] if c.script in ("etcd.member-update",
                                                                            "repair.control-plane")]
        assert [s for _, s in ran] == ["etcd.member-update", "repair.control-plane"]
        assert ran[0][0] != "ha-m2" and ran[1][0] == "ha-m2"
        assert sim.nodes["ha-m2"].advertised == now and now in sim.nodes["ha-m2"].cert_sans
        # (at the update ha-m2's own etcd still crash-loops on its old address: 2 of 3 alive, quorum)
        assert [e for e in never_below_quorum(sim) if e[0].startswith("member")] == [("member update ha-m2", 3, 2)]
        # the worker's haproxy and the host's forwarder know the new address
        assert now in sim.nodes[WORKER].haproxy_backends(6443)
        assert {b["node"]: b["host"] for b in apiproxy.read_routes(state.root)["ha"]["backends"]}["ha-m2"] == now
        seen = status()
        assert seen["healthy"] and seen["etcd"]["quorum"]
        assert {m["name"]: m["peer_url"] for m in seen["etcd"]["members"]}["ha-m2"] == f"https://{now}:2380"

        mark = sim.mark()
        again = ok("boot")
        assert again["counts"]["changed"] == 0, again
        assert not {"etcd.member-update", "repair.control-plane", "repair.node-ip"} & set(sim.script_ids(mark))


def test_prune_two_of_five_masters_the_first_one_too_keeps_quorum(env):
    config, fake, state = env
    masters = ["ha-m1", "ha-m2", "ha-m3", "ha-m4", "ha-m5"]
    with installed(config, fake, masters) as sim:
        cluster = sim.clusters["ha"]
        assert cluster.etcd.names() == masters
        config.write_text(json.dumps(lab(masters[2:])))  # 5 → 3: the first master goes too
        ok("install", "--prune")
        assert cluster.etcd.names() == masters[2:]
        log = never_below_quorum(sim)
        events_ = [what for what, _, _ in log]
        for gone in masters[:2]:
            # its member first, then its VM (the Node went in between, through the API)
            assert events_.index(f"member remove {gone}") < events_.index(f"{gone} VM deleted")
            assert not fake.exists(gone)
        assert min(members for _, members, _ in log) == 3
        # the cluster lives on without its first master: same CA and objects, no new `kubeadm init`
        assert cluster.inits == 1 and cluster.ca is not None
        seen = status()
        assert seen["healthy"], seen
        assert sorted(m["name"] for m in seen["etcd"]["members"]) == masters[2:]
        assert sorted(n for n in sim.world()["clusters"]["ha"]["nodes"]) == [*masters[2:], WORKER]
        assert sorted(sim.nodes[WORKER].haproxy_backends(6443)) == sorted(sim.address(m) for m in masters[2:])
        again = ok("install", "--prune")
        assert again["counts"]["changed"] == 0, again


def test_shrink_three_masters_to_one_goes_back_to_single_master_mode(env):
    config, fake, state = env
    masters = ["ha-m1", "ha-m2", "ha-m3"]
    with installed(config, fake, masters) as sim:
        cluster = sim.clusters["ha"]
        config.write_text(json.dumps(lab(["ha-m3"])))  # the last one stays: the first goes
        plan = labctl("--json", "plan")
        assert "labctl install --prune" in plan.out
        ok("install", "--prune")
        assert cluster.etcd.names() == ["ha-m3"]
        log = never_below_quorum(sim)
        assert [members for what, members, _ in log if what.startswith("member remove")] == [2, 1]
        address = sim.address("ha-m3")
        # single-master mode: every hosts line names the master, the host's kubeconfig too, no forwarder route
        for node in ("ha-m3", WORKER):
            assert hosts_address(sim.nodes[node].text(HOSTS), endpoint_host("ha")) == address, node
        server = yaml.safe_load((state.root / "kubeconfig" / "ha.yaml").read_text())["clusters"][0]["cluster"]
        assert server["server"] == f"https://{address}:6443"
        assert "ha" not in apiproxy.read_routes(state.root)
        seen = status()
        assert seen["healthy"], seen
        assert sorted(sim.world()["clusters"]["ha"]["nodes"]) == ["ha-m3", WORKER]
        assert not fake.exists("ha-m1") and not fake.exists("ha-m2")
        again = ok("install", "--prune")
        assert again["counts"]["changed"] == 0, again


def test_deleting_the_first_masters_vm_costs_that_member_only(env):
    config, fake, state = env
    masters = ["ha-m1", "ha-m2", "ha-m3"]
    with installed(config, fake, masters) as sim:
        cluster = sim.clusters["ha"]
        sim.lose_vm("ha-m1")
        assert cluster.inits == 1 and cluster.ca is not None and cluster.etcd.names() == masters
        assert cluster.api_up()  # two of three members: quorum, and their API servers answer
        assert hosts_address(sim.nodes["ha-m2"].text(HOSTS), endpoint_host("ha")) == LOCAL_API
