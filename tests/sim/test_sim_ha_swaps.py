"""The etcd repair of masters that swapped addresses (labctl/etcd.py update_peer, docs/ha.md): two or three masters
moving round in a cycle, and a run killed between setting a member aside and its real update. Simulated etcd:
tests/sim/sim_etcd.py (a member whose node moved is cut off until `member update`; a peer URL another member has is
refused)."""

from __future__ import annotations

import pytest

from tests.sim.test_sim_e2e import labctl
from tests.sim.test_sim_ha_repair import env, installed, never_below_quorum, ok, peers, status  # noqa: F401

pytestmark = pytest.mark.sim


@pytest.mark.parametrize("count, moved", [(5, ["ha-m2", "ha-m3"]), (7, ["ha-m2", "ha-m3", "ha-m4"]),
                                          (5, ["ha-m2", "ha-m3", "ha-m4"])],
                         ids=["two-of-five-swapped", "three-of-seven-went-round", "three-of-five-went-round"])
def test_masters_whose_addresses_went_round_are_all_repaired(env, count, moved):  # noqa: F811
    """Each moved master gets the next one's old address, the last the first one's (two: a swap). etcd refuses a
    peer URL another member has ("Peer URLs already exists"), and each wanted peer URL is held by a member that
    itself moved, so every update sets one aside first. While the masters that stayed keep quorum (2 of 5, 3 of 7
    moved) it holds throughout; 3 of 5 moved leave none, and the members are made anew from one (etcd
    --force-new-cluster)."""
    config, fake, state = env
    masters = [f"ha-m{i}" for i in range(1, count + 1)]
    with installed(config, fake, masters) as sim:
        before = {m: sim.address(m) for m in moved}
        ok("shutdown")
        for a, b in zip(moved, moved[1:]):
            fake.swap_leases(a, b)
        ok("boot")
        assert {m: sim.address(m) for m in moved} == {m: before[n] for m, n in zip(moved, [*moved[1:], moved[0]])}
        assert peers(sim) == {m: sim.address(m) for m in masters}
        if count - len(moved) > count // 2:
            never_below_quorum(sim)
        seen = status()
        assert seen["healthy"] and seen["etcd"]["quorum"], seen
        mark = sim.mark()
        again = ok("boot")
        assert again["counts"]["changed"] == 0, again
        assert "etcd.member-update" not in sim.script_ids(mark)


@pytest.mark.parametrize("ran", [True, False])
def test_a_boot_killed_between_the_aside_update_and_the_real_one_is_finished_by_the_next(env, ran):  # noqa: F811
    """labctl dies at the second `member update` of a swap (the first set ha-m3's record aside): the next boot finds
    ha-m3's member at the aside URL and ha-m2's still at its old one, and repairs both."""
    config, fake, state = env
    masters = ["ha-m1", "ha-m2", "ha-m3", "ha-m4", "ha-m5"]
    with installed(config, fake, masters) as sim:
        ok("shutdown")
        fake.swap_leases("ha-m2", "ha-m3")
        sim.crash_at(2, "kill", ran=ran, script="etcd.member-update")
        assert labctl("--json", "boot").code != 0
        assert sim.crashed_at is not None
        sim.revive()
        ok("boot")
        assert peers(sim) == {m: sim.address(m) for m in masters}
        never_below_quorum(sim)
        seen = status()
        assert seen["healthy"] and seen["etcd"]["quorum"], seen
        again = ok("boot")
        assert again["counts"]["changed"] == 0, again
