"""The etcd repair of masters that swapped addresses (labctl/etcd.py update_peer, docs/ha.md): more than two
masters moving round in a cycle, and a run killed between setting a member aside and its real update. Simulated etcd: tests/sim/sim_etcd.py (a member whose node moved is cut off
until `member update`; a peer URL another member has is refused)."""

from __future__ import annotations

import pytest

from tests.sim.test_sim_e2e import labctl
from tests.sim.test_sim_ha_repair import env, installed, never_below_quorum, ok, peers, status  # noqa: F401

pytestmark = pytest.mark.sim


@pytest.mark.parametrize("count", [7, 5])
def test_three_masters_whose_addresses_went_round_are_all_repaired(env, count):  # noqa: F811
    """ha-m2 gets ha-m3's old address, ha-m3 ha-m4's, ha-m4 ha-m2's: each wanted peer URL is held by a member that
    itself moved, so every update sets one aside first (7 masters: 4 keep quorum; of 5, the 2 left have none and
    the members are made anew from one, etcd --force-new-cluster)."""
    config, fake, state = env
    masters = [f"ha-m{i}" for i in range(1, count + 1)]
    with installed(config, fake, masters) as sim:
        before = {m: sim.address(m) for m in ("ha-m2", "ha-m3", "ha-m4")}
        ok("shutdown")
        fake.swap_leases("ha-m2", "ha-m3")
        fake.swap_leases("ha-m3", "ha-m4")
        ok("boot")
        assert {m: sim.address(m) for m in ("ha-m2", "ha-m3", "ha-m4")} == {
            "ha-m2": before["ha-m3"], "ha-m3": before["ha-m4"], "ha-m4": before["ha-m2"]}
        assert peers(sim) == {m: sim.address(m) for m in masters}
        if count == 7:
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
