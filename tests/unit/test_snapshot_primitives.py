"""The providers' primitives behind snapshots (and golden images): clone_vm, delete_vm, vm_disk_bytes — on the fake
qemu/qemu-img and the fake tart (tests/sim): only a stopped VM is copied, never onto an existing VM, only to a name
of labctl's own or a lab node's; delete_vm never deletes a lab node."""

from __future__ import annotations

import json

import pytest

from labctl.errors import ProviderError
from labctl.model import parse
from labctl.providers.tart import TartProvider
from labctl.state import LabState
from tests.unit.test_qemu_provider import fake, lab, provider  # noqa: F401  (fixtures)

SNAP = "labctl-snap-s1-m1"


def test_qemu_copies_a_stopped_vm_folder_and_deletes_only_its_own(provider, tmp_path):  # noqa: F811
    spec = provider.lab
    m1 = next(n for _, n in spec.nodes if n.name == "m1")
    provider.create(m1)
    provider.start(m1)
    with pytest.raises(ProviderError, match="only a stopped VM is copied"):
        provider.clone_vm("m1", SNAP)
    provider.stop(m1)
    provider.clone_vm("m1", SNAP)
    home = tmp_path / ".labctl" / "qemu"
    assert {p.name for p in (home / SNAP).iterdir()} == {p.name for p in (home / "m1").iterdir()} - {"qemu.pid"}
    assert (home / SNAP / "disk.qcow2").read_bytes() == (home / "m1" / "disk.qcow2").read_bytes()
    assert json.loads((home / SNAP / "vm.json").read_text()) == json.loads((home / "m1" / "vm.json").read_text())
    assert provider.get(SNAP).state == "stopped"
    assert provider.vm_disk_bytes(SNAP) > 0
    with pytest.raises(ProviderError, match="already exists"):
        provider.clone_vm("m1", SNAP)
    with pytest.raises(ProviderError, match="only copies a VM to a name of its own"):
        provider.clone_vm("m1", "someone-elses")
    with pytest.raises(ProviderError, match="not a VM labctl keeps"):
        provider.delete_vm("m1")
    assert provider.delete_vm(SNAP) is True and not (home / SNAP).exists()
    assert provider.delete_vm(SNAP) is False
    with pytest.raises(ProviderError, match="no such VM"):
        provider.vm_disk_bytes(SNAP)


def test_tart_clones_with_tart_clone_and_refuses_what_tart_would_not_guard(fake_tart, tmp_path):
    spec = parse(json.dumps({"clusters": [{"name": "dev", "pod_cidr": "10.20.0.0/16", "service_cidr": "10.97.0.0/16",
                                           "nodes": [{"name": "m1", "role": "master", "cpu": 2, "memory": 4096}]}]}))
    tart = TartProvider(spec, state=LabState(tmp_path / ".labctl"))
    assert fake_tart.tart("clone", "ghcr.io/cirruslabs/ubuntu:latest", "m1").returncode == 0
    mark = fake_tart.mark()
    tart.clone_vm("m1", SNAP)
    assert ["clone", "m1", SNAP] in fake_tart.argvs(mark)
    assert fake_tart.exists(SNAP)
    # `tart clone` silently replaces an existing VM (reference/tart-cli.md): refused before any clone
    mark = fake_tart.mark()
    with pytest.raises(ProviderError, match="already exists"):
        tart.clone_vm("m1", SNAP)
    assert not [a for a in fake_tart.argvs(mark) if a[0] == "clone"]
    assert tart.vm_disk_bytes(SNAP) >= 0
    with pytest.raises(ProviderError, match="not a VM labctl keeps"):
        tart.delete_vm("m1")
    assert tart.delete_vm(SNAP) is True and not fake_tart.exists(SNAP)
    assert tart.delete_vm(SNAP) is False


def test_snapshot_vm_names_never_collide_and_names_with_a_double_dash_are_refused():
    from labctl import snapshots
    from labctl.errors import UsageError

    # snapshot `a` of node `b-x` and snapshot `a-b` of node `x` once shared one VM name
    assert snapshots.vm_name("a", "b-x") != snapshots.vm_name("a-b", "x")
    with pytest.raises(UsageError, match="no '--'"):
        snapshots.check_name("a--b")
