"""boot's swap step (phases/swap.py): swap that came back at boot is found on every node of an installed cluster,
turned off, and what turned it on disabled — with prepare's own swap actions, nothing else of prepare."""

from __future__ import annotations

import importlib

import pytest

from labctl.engine import Check
from phases import ORDER
from tests.unit.test_node_phases import world as node_world

swap = importlib.import_module("phases.swap")


def world(case: dict):
    ctx, target = node_world(case)
    ctx.state = None  # the kubeconfig lookup is monkeypatched below
    return ctx, target


@pytest.fixture
def installed(monkeypatch):
    monkeypatch.setattr(swap.kubeconfig, "read", lambda state, cluster: "kubeconfig")


def test_boot_runs_it_after_the_vms_and_ready_waits_for_it():
    assert ORDER["boot"].index("swap") == ORDER["boot"].index("boot") + 1
    assert "swap" in importlib.import_module("phases.ready").phase.after


def test_swap_from_a_service_is_found_and_only_swap_is_fixed(installed):
    ctx, target = world({"facts": "ubuntu-24.04-zramswap-service", "node": "dev-worker1"})
    check = swap.phase.check(ctx, target)
    assert check.done is False
    assert check.detail == ("swap is on (/dev/zram0); swap units not masked (dev-zram0.swap); "
                            "zramswap.service turns swap on at boot")
    note = swap.phase.apply(ctx, target)
    (script, sudo), = ctx.transports["dev-worker1"].runs
    assert (script.id, sudo) == ("prepare.apply", True)
    assert script.params["actions"] == ["swapoff", "swap-units", "swap-services"]
    assert script.params["swap_services"] == ["zramswap.service"]
    assert "found nothing" not in note and ctx.invalidated == ["dev-worker1"]


def test_swap_from_an_unknown_source_is_turned_off_and_said(installed):
    ctx, target = world({"facts": "ubuntu-24.04-prepared", "node": "dev-worker1",
                         "override": {"swap": {"devices": ["/dev/vdb2"], "units": [
                             {"unit": "dev-vdb2.swap", "load": "loaded", "active": "active"}]}}})
    note = swap.phase.apply(ctx, target)
    assert ctx.transports["dev-worker1"].runs[0][0].params["actions"] == ["swapoff", "swap-units"]
    assert "labctl found nothing that turns it on at boot" in note and "find what runs swapon" in note


def test_a_node_with_swap_off_and_kept_off_is_left_alone(installed):
    ctx, target = world({"facts": "ubuntu-24.04-prepared", "node": "dev-worker1"})
    assert swap.phase.check(ctx, target) == Check(True, "swap off, and nothing turns it on at boot")
    assert swap.phase.apply(ctx, target) is None and not ctx.transports


def test_a_cluster_never_installed_is_not_asked(monkeypatch):
    monkeypatch.setattr(swap.kubeconfig, "read", lambda state, cluster: None)
    ctx, target = world({"facts": "ubuntu-24.04-zramswap-service", "node": "dev-worker1"})
    assert swap.phase.check(ctx, target).done and ctx.fact_calls == []
