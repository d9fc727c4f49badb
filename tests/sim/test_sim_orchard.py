"""The Orchard provider against the fake controller (tests/sim/fake_orchard.py, reference/orchard.md): the shipped
lab builds on its workers and converges, a second install changes nothing, destroy deletes every VM it made and
nothing else; a wrong token, a missing role and too little capacity are refused with a clear message, before
anything is created, and the token never shows."""

from __future__ import annotations

import json

import pytest

from labctl.errors import ProviderError
from labctl.providers.orchard import CORES, MEMORY, capacity_problem
from tests.conftest import SHIPPED, run_cli
from tests.sim.fake_orchard import FakeOrchard
from tests.sim.fake_tart import wait_for
from tests.sim.sim_lab import lease_prefix
from tests.sim.sim_orchard import SimOrchardLab
from tests.sim.test_sim_e2e import STEPS, assert_converged, events, summary_of

pytestmark = pytest.mark.sim

TOKEN = "orchard-token-5f1d9a0c7e3b42e8"
OTHER = "someone-elses-vm"
ROLES = ["compute:read", "compute:write"]
SHIPPED_LAB = json.loads(SHIPPED.read_text())
NODES = {n["name"]: n for c in SHIPPED_LAB["clusters"] for n in c["nodes"]}
NEED_CORES = sum(n["cpu"] for n in NODES.values())
NEED_MEMORY = sum(n["memory"] for n in NODES.values())
BIG = {CORES: NEED_CORES, MEMORY: NEED_MEMORY}  # two of these hold the lab with room to spare


def write_lab(path, url: str, account: str = "labctl") -> None:
    lab = json.loads(SHIPPED.read_text())
    lab["provider"] = {"type": "orchard", "orchard": {"controller_url": url, "service_account": account}}
    path.write_text(json.dumps(lab, indent=2))


@pytest.fixture
def orchard(fake_tart, monkeypatch):
    monkeypatch.setenv("FAKE_TART_LEASE_PREFIX", lease_prefix())
    monkeypatch.setenv("FAKE_TART_IP_DELAY", "0")
    accounts = {"labctl": (TOKEN, ROLES), "reader": ("reader-token-0a9b8c7d", ["compute:read"])}
    with FakeOrchard(fake_tart, accounts, {"mac-1": BIG, "mac-2": BIG}) as fake:
        yield fake


@pytest.fixture
def sim(orchard, fake_tart, tmp_path, monkeypatch):
    config = tmp_path / "clusters.json"
    write_lab(config, orchard.url)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ORCHARD_SERVICE_ACCOUNT_TOKEN", TOKEN)
    with SimOrchardLab(config, fake_tart, orchard) as lab:
        yield lab


def labctl(*args: str):
    return run_cli(*args)


def changes(orchard: FakeOrchard, since: int) -> list[tuple[str, str]]:
    return [(r["method"], r["path"]) for r in orchard.requests[since:] if r["method"] != "GET"]


@pytest.mark.slow
def test_the_shipped_lab_builds_on_the_workers_a_second_install_changes_nothing_destroy_removes_it(
        sim, orchard, fake_tart):
    other = orchard.handle("POST", "/v1/vms", {}, json.dumps(
        {"name": OTHER, "image": SHIPPED_LAB["base_image"], "os": "linux", "resources": {CORES: 1, MEMORY: 512}}
    ).encode(), "labctl")
    assert other[0] == 200
    wait_for(lambda: orchard.vm(OTHER)["status"] == "running", 30, "the other VM to run")

    result = labctl("--json", "install")
    summary = summary_of(result.out)
    assert result.code == 0, summary["failed"]
    assert summary["counts"]["changed"] == STEPS
    assert_converged(sim)
    for name, spec in NODES.items():  # created as clusters.json says, bridged, placed by its resources
        vm = orchard.vm(name)
        assert vm["status"] == "running" and vm["worker"] in ("mac-1", "mac-2")
        assert (vm["cpu"], vm["memory"], vm["diskSize"]) == (spec["cpu"], spec["memory"], spec["disk"])
        assert vm["resources"] == {CORES: spec["cpu"], MEMORY: spec["memory"]}
        assert vm["net-bridged"] == "en0" and vm["os"] == "linux" and vm["image"] == SHIPPED_LAB["base_image"]
        assert fake_tart.config(name)["cpuCount"] == spec["cpu"] and fake_tart.disk_gb(name) == spec["disk"]
    assert all(r["credentials"] for r in orchard.requests)  # Basic auth on every call

    # -- a second install: nothing created, changed or deleted; every step unchanged
    mark = len(orchard.requests)
    result = labctl("--json", "install")
    summary = summary_of(result.out)
    assert result.code == 0 and summary["counts"]["changed"] == 0 and summary["counts"]["unchanged"] == STEPS
    assert changes(orchard, mark) == []
    result = labctl("--json", "status")  # the VM list and SSH through the controller's view of the VMs
    assert result.code == 0, result.out + result.err

    # -- shutdown is refused up front: an Orchard VM never runs again once stopped; nothing was asked of the guests
    mark, calls = len(orchard.requests), sim.mark()
    result = labctl("shutdown")
    assert result.code != 0 and "cannot be stopped and started again" in result.out + result.err
    assert changes(orchard, mark) == [] and sim.mark() == calls

    # -- destroy: every VM labctl made is deleted (and its worker removed the Tart VM); the other VM is untouched
    mark = len(orchard.requests)
    result = labctl("destroy", "--yes")
    assert result.code == 0, result.out + result.err
    assert sorted(changes(orchard, mark)) == sorted(("DELETE", f"/v1/vms/{n}") for n in NODES)
    assert orchard.vms() == [OTHER] and orchard.vm(OTHER)["status"] == "running"
    assert fake_tart.vms() == [OTHER]
    assert TOKEN not in json.dumps(events(result.out)) + result.out + result.err


def test_a_wrong_token_or_a_missing_role_is_refused_clearly_and_the_token_never_shows(
        sim, orchard, fake_tart, monkeypatch, tmp_path):
    wrong = "wrong-token-3c2b1a09f8e7"
    monkeypatch.setenv("ORCHARD_SERVICE_ACCOUNT_TOKEN", wrong)
    for args in (("install",), ("--json", "install"), ("-vv", "install")):
        result = labctl(*args)
        text = result.out + result.err
        assert result.code != 0 and "refused service account 'labctl'" in text and "wrong token" in text, text
        assert wrong not in text and TOKEN not in text
    assert changes(orchard, 0) == [] and orchard.vms() == []
    for log in (tmp_path / ".labctl").rglob("*") if (tmp_path / ".labctl").exists() else []:
        if log.is_file():
            assert wrong not in log.read_text(errors="replace")

    monkeypatch.delenv("ORCHARD_SERVICE_ACCOUNT_TOKEN")
    result = labctl("install")
    assert result.code != 0 and "ORCHARD_SERVICE_ACCOUNT_TOKEN" in result.out + result.err

    # an account without compute:write: the controller's own message names the missing role
    monkeypatch.setenv("ORCHARD_SERVICE_ACCOUNT_TOKEN", "reader-token-0a9b8c7d")
    sim.provider.settings = sim.provider.settings.model_copy(update={"service_account": "reader"})
    with pytest.raises(ProviderError, match="refused service account 'reader': all of the following roles must be "
                       "present: compute:write"):
        sim.provider.create(sim.model.clusters[0].nodes[0])
    assert orchard.vms() == []


def test_too_little_capacity_is_refused_before_anything_is_created(sim, orchard):
    orchard.remove_workers()
    orchard.add_worker("small-mac", {CORES: NEED_CORES, MEMORY: NEED_MEMORY // 2})
    orchard.add_worker("paused-mac", BIG)
    orchard.pause("paused-mac")
    orchard.add_worker("gone-mac", BIG)
    orchard.set_offline("gone-mac")

    result = labctl("--json", "doctor")
    capacity = next(f for f in json.loads(result.out)["checks"] if f["name"] == "orchard capacity")
    assert capacity["status"] == "fail" and "no room" in capacity["detail"]

    result = labctl("install")
    assert result.code != 0 and "the Orchard workers have no room for this lab" in result.out + result.err
    assert changes(orchard, 0) == [] and orchard.vms() == []

    orchard.add_worker("new-mac", BIG)  # room again: doctor says so
    result = labctl("--json", "doctor")
    capacity = next(f for f in json.loads(result.out)["checks"] if f["name"] == "orchard capacity")
    assert capacity["status"] == "ok", capacity


def test_capacity_counts_what_is_already_placed_and_the_labels():
    workers = [{"name": "a", "resources": {CORES: 8, MEMORY: 16384}, "labels": {"gpu": "no"}},
               {"name": "b", "resources": {CORES: 8, MEMORY: 16384}, "labels": {"gpu": "yes"}}]
    placed = [{"name": "x", "worker": "b", "resources": {CORES: 6, MEMORY: 8192}}]
    four = {CORES: 4, MEMORY: 8192}
    assert capacity_problem(workers, placed, {"n1": four, "n2": four}, {}) is None  # both on a
    assert "n" in capacity_problem(workers, placed, {"n1": four, "n2": four, "n3": four}, {})
    assert capacity_problem(workers, [], {"n1": four}, {"gpu": "yes"}) is None
    assert "labels" in capacity_problem(workers, [], {"n1": four}, {"gpu": "maybe"})


def test_sizes_are_fixed_a_stop_is_refused_and_a_failed_vm_says_why(sim, orchard, fake_tart):
    provider = sim.provider
    _, node = next((c, n) for c, n in sim.model.nodes if n.name == "dev-worker1")
    assert provider.create(node) and not provider.create(node)  # the second POST: 409, nothing replaced
    assert provider.start(node) and not provider.start(node)
    vm = provider.get(node.name)
    assert vm.running and (vm.cpu, vm.memory, vm.disk) == (node.cpu, node.memory, node.disk)
    assert provider.ip(node) == sim.address(node.name)

    bigger = node.model_copy(update={"cpu": node.cpu + 1})
    with pytest.raises(ProviderError, match=rf"cannot resize an existing VM \(cpu {node.cpu} → {node.cpu + 1}\)"):
        provider.configure(bigger)
    with pytest.raises(ProviderError, match="cannot be stopped and started again"):
        provider.stop(node)
    assert orchard.vm(node.name)["generation"] == 0 and fake_tart.running_pid(node.name)  # nothing was changed

    fake_tart.poweroff(node.name)  # the guest goes away by itself: the worker fails the VM, Orchard never restarts it
    wait_for(lambda: orchard.vm(node.name)["status"] == "failed", 30, "the worker to fail the VM")
    assert not provider.get(node.name).running and provider.ip(node) is None
    with pytest.raises(ProviderError, match="failed the VM: VM exited unexpectedly"):
        provider.start(node)
    assert provider.delete(node) and not provider.delete(node)
    assert orchard.vms() == [] and not fake_tart.exists(node.name)
