"""Adversarial checks of this session's new features, driven through the CLI in the simulated lab: snapshots (bad
names and order, interrupts, secrets, --json), golden images, static nodes. Each test states the behaviour a user
relies on; the fixtures are those of test_sim_snapshots.py and test_sim_static.py."""

from __future__ import annotations

import json
import stat

import pytest

from labctl.providers.tart import TartProvider
from tests.sim.test_sim_e2e import ctrl_c_raises, events, labctl
from tests.sim.test_sim_snapshots import LAB, NODES, ok, sim, world  # noqa: F401 (sim: the fixture)

pytestmark = pytest.mark.sim


def refused(*args: str, code: int = 2):
    """`labctl ARGS` ends with exit `code`, an `error:` line and no traceback; returns its result."""
    result = labctl(*args)
    assert result.code == code, (result.code, result.out, result.err)
    assert "error:" in result.err and "Traceback" not in result.err + result.out, result.err
    return result


# ---- snapshots: bad input and wrong order ------------------------------------------------------------------------

def test_restore_or_delete_of_a_missing_snapshot_is_bad_input(sim, fake_tart):
    ok("install", "--only", "vms")
    ok("snapshot", "save", "one", "--yes")
    mark = fake_tart.mark()
    for verb in ("restore", "delete"):
        result = refused("snapshot", verb, "nope", "--yes") if verb == "restore" else refused("snapshot", verb, "nope")
        assert "no snapshot 'nope'" in result.err and "one" in result.err  # names the snapshots there are
    assert not [a for a in fake_tart.argvs(mark) if a[0] in ("delete", "clone", "stop", "run")]


def test_snapshot_of_a_lab_never_installed_is_refused_and_keeps_nothing(sim, fake_tart, tmp_path):
    result = refused("snapshot", "save", "early", "--yes")
    assert "has no VM" in result.err and "labctl install" in result.err
    assert fake_tart.vms() == []
    assert not (tmp_path / ".labctl/snapshots/early").exists()
    assert json.loads(ok("--json", "snapshot", "list"))["snapshots"] == []


def test_a_taken_snapshot_name_and_an_unknown_cluster_are_bad_input(sim, fake_tart):
    ok("install", "--only", "vms")
    ok("snapshot", "save", "one", "--yes")
    assert "already exists" in refused("snapshot", "save", "one", "--yes").err
    assert "nosuch" in refused("snapshot", "save", "two", "--cluster", "nosuch", "--yes").err


def test_destroy_with_snapshots_when_there_are_none(sim, fake_tart, tmp_path):
    ok("install", "--only", "vms")
    ok("destroy", "--yes", "--snapshots")
    assert fake_tart.vms() == [] and not (tmp_path / ".labctl").exists()


def test_a_damaged_snapshot_can_be_deleted_as_its_error_says(sim, fake_tart, tmp_path):
    ok("install", "--only", "vms")
    ok("snapshot", "save", "one", "--yes")
    (tmp_path / ".labctl/snapshots/one/snapshot.json").write_text("{ not json")
    result = refused("snapshot", "restore", "one", "--yes", code=1)
    assert "damaged" in result.err and "labctl snapshot delete one" in result.err
    ok("snapshot", "delete", "one")
    assert not (tmp_path / ".labctl/snapshots/one").exists()


def test_a_snapshot_whose_vm_was_deleted_by_hand_is_refused_before_the_lab_is_touched(sim, fake_tart):
    ok("install", "--only", "vms,prepare")
    ok("snapshot", "save", "one", "--yes")
    fake_tart.tart("delete", "labctl-snap-one-dev-worker1")
    mark = fake_tart.mark()
    result = refused("snapshot", "restore", "one", "--yes", code=1)
    assert "labctl-snap-one-dev-worker1" in result.err and "damaged" in result.err
    assert not [a for a in fake_tart.argvs(mark) if a[0] in ("delete", "clone", "stop")]
    ok("snapshot", "delete", "one")  # what is left of it goes
    assert fake_tart.vms() == NODES


def test_install_after_a_restore_changes_nothing(sim, fake_tart):
    ok("install")
    ok("snapshot", "save", "base", "--yes")
    ok("snapshot", "restore", "base", "--yes")
    result = labctl("--json", "install")
    assert result.code == 0, result.err
    changed = [e["step"] for e in events(result.out) if e.get("event") == "result" and e["status"] == "changed"]
    assert changed == []
    ok("snapshot", "delete", "base")
    assert labctl("install").code == 0
