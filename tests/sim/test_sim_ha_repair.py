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
from tests.conftest import ha_cluster
from tests.sim.sim_lab import SimLab
from tests.sim.test_sim_e2e import events, labctl, summary_of

pytestmark = pytest.mark.sim

WORKER = "ha-w1"


def lab(masters: list[str]) -> dict:
    return ha_cluster("ha", masters, [WORKER])


@pytest.fixture
def env(lab_dir, fake_tart):
    return lab_dir / "clusters.json", fake_tart, LabState(lab_dir / ".labctl")  # the forwarder: stopped by conftest


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


def recovered(sim: SimLab, masters: list[str], mark: int) -> list[tuple[str, str, dict]]:
    """The recovery's etcd steps since `mark`, as (node, script, params), after asserting the end state every
    recovery must reach: every member at its node's address now, healthy, the data of the first master kept."""
    cluster = sim.clusters["ha"]
    assert peers(sim) == {m: sim.address(m) for m in masters}
    assert all(m.started for m in cluster.etcd.members)
    seen = status()
    assert seen["healthy"] and seen["etcd"]["quorum"], seen
    assert {m["name"]: m["peer_url"] for m in seen["etcd"]["members"]} == {
        m: f"https://{sim.address(m)}:2380" for m in masters}
    # the data is the one the cluster had: the same CA, no second `kubeadm init`, the objects still there
    assert cluster.inits == 1
    assert cluster.store.get("api/v1", "configmaps", "kept", "default")["data"] == {"written": "before"}
    return [(c.node, c.script, c.params) for c in sim.calls[mark:]
            if c.script in ("etcd.force-new-cluster", "etcd.member-add", "etcd.member-update",
                            "repair.control-plane")]


def test_boot_after_all_masters_moved_recovers_etcd_from_the_first_master_then_changes_nothing(env):
    config, fake, state = env
    masters = ["ha-m1", "ha-m2", "ha-m3"]
    with installed(config, fake, masters) as sim:
        cluster = sim.clusters["ha"]
        cluster.store.put("api/v1", "configmaps", {"metadata": {"name": "kept"}, "data": {"written": "before"}},
                          "default")
        first_data = sim.nodes["ha-m1"].etcd_data
        before = {m: sim.address(m) for m in masters}
        ok("shutdown")
        for master in masters:
            fake.new_ip_on_next_boot(master)
        mark = sim.mark()
        booted = labctl("--json", "boot")
        assert booted.code == 0 and summary_of(booted.out)["ok"], summary_of(booted.out)["failed"]
        assert all(sim.address(m) != before[m] for m in masters)
        ran = recovered(sim, masters, mark)
        # the first master: its files, then --force-new-cluster there (it keeps its data and member), then its own
        # peer URL; then each other master, one at a time: added on a member with quorum, then its files with the
        # old data moved aside and the join flags
        assert [(node, script) for node, script, _ in ran] == [
            ("ha-m1", "repair.control-plane"), ("ha-m1", "etcd.force-new-cluster"), ("ha-m1", "etcd.member-update"),
            ("ha-m1", "etcd.member-add"), ("ha-m2", "repair.control-plane"),
            ("ha-m1", "etcd.member-add"), ("ha-m3", "repair.control-plane")]
        assert not ran[0][2]["rejoin"] and ran[4][2]["rejoin"] and ran[6][2]["rejoin"]
        assert ran[6][2]["initial_cluster"] == ",".join(f"{m}=https://{sim.address(m)}:2380" for m in masters)
        assert sim.nodes["ha-m1"].etcd_data == first_data
        for other in masters[1:]:  # the old data is kept aside, never deleted
            assert len(sim.nodes[other].etcd_aside) == 1 and sim.nodes[other].etcd_data is not None
        # quorum grew 1 → 2 → 3 (each add counts the new member at once: 2 of 2 only once it runs)
        events_ = [(what, members) for what, members, _ in cluster.etcd_log if not what.endswith("VM deleted")]
        assert events_[-4:] == [("force-new-cluster ha-m1", 1), ("member update ha-m1", 1),
                                ("member add ha-m2", 2), ("member add ha-m3", 3)]
        # the step's result says what was done
        result = next(e for e in events(booted.out) if e.get("event") == "result" and "addresses" in e.get("step", ""))
        assert "etcd --force-new-cluster" in result["detail"] and "ha-m2: etcd member added" in result["detail"]
        assert now_in_balancers(sim, state, masters)

        mark = sim.mark()
        again = ok("boot")
        assert again["counts"]["changed"] == 0, again
        assert not {"etcd.force-new-cluster", "etcd.member-add", "etcd.member-update", "repair.control-plane"} \
            & set(sim.script_ids(mark))


def test_boot_after_two_of_three_masters_moved_rejoins_the_one_that_stayed_too(env):
    config, fake, state = env
    masters = ["ha-m1", "ha-m2", "ha-m3"]
    with installed(config, fake, masters) as sim:
        sim.clusters["ha"].store.put("api/v1", "configmaps", {"metadata": {"name": "kept"},
                                                             "data": {"written": "before"}}, "default")
        stayed = sim.address("ha-m3")
        ok("shutdown")
        fake.new_ip_on_next_boot("ha-m1")
        fake.new_ip_on_next_boot("ha-m2")
        mark = sim.mark()
        ok("boot")
        assert sim.address("ha-m3") == stayed
        ran = recovered(sim, masters, mark)
        # ha-m3 did not move, but its member went with --force-new-cluster: added anew, files as they were
        assert [(node, script) for node, script, _ in ran][-2:] == [("ha-m1", "etcd.member-add"),
                                                                     ("ha-m3", "repair.control-plane")]
        assert ran[-1][2]["rejoin"] and not ran[-1][2]["regenerate_certs"] and ran[-1][2]["old"] is None
        assert now_in_balancers(sim, state, masters)
        again = ok("boot")
        assert again["counts"]["changed"] == 0, again


def now_in_balancers(sim: SimLab, state: LabState, masters: list[str]) -> bool:
    """The worker's haproxy and the host's forwarder know every master's address now."""
    routes = {b["node"]: b["host"] for b in apiproxy.read_routes(state.root)["ha"]["backends"]}
    return all(sim.address(m) in sim.nodes[WORKER].haproxy_backends(6443) and routes[m] == sim.address(m)
               for m in masters)
