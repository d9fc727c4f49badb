"""A golden image on a real QEMU VM (labctl/golden.py): `image build` from the Debian test image bakes prepare and
runtime (what runs offline here: kubepkgs and the image pulls need the internet, so this test bakes without them),
keeps the disk as a flattened qcow2 in the image cache, and an install from it finds runtime done and prepare with
nothing left but the node's own name; the guest's machine-id is new, the marker file is there."""

from __future__ import annotations

import json

import pytest

from labctl import golden
from labctl.lab import LabSession
from tests.conftest import run_cli
from tests.realvm.test_node_phases import Guest, NODES, labctl, lab_config, provider_of, results, summary

pytestmark = pytest.mark.realvm

BAKED = ("prepare", "runtime")  # what runs offline


def test_golden_image_on_a_real_vm(realvm_image, tmp_path, stage, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the image lands in this test's own cache
    config = tmp_path / "clusters.json"
    config.write_text(json.dumps(lab_config(realvm_image), indent=2))
    session = LabSession.open(config)
    r = golden.recipe(session.model)
    guest = None
    try:
        with stage("image build: boot, prepare, runtime (apt-get install containerd), bake, power off, convert"):
            built = golden.build(session, phases=BAKED, pull=False)
        assert built.ok, [(f.step.id, f.detail) for f in built.summary.failed]
        provider = provider_of(config)
        kept = provider.golden_path(r.name)
        assert provider.golden_source(r.name) == str(kept) and kept.is_file()
        assert "backing-filename" not in provider.image_info(kept, None)  # standalone
        assert provider.get(r.build_vm) is None  # the build VM is gone
        stopped = [s.detail for s in built.summary.results if s.step.phase.name == "golden"]
        assert stopped and "stopped (powerdown)" in stopped[0], stopped  # a clean power-off, never quit/kill

        with stage("plan names the golden image"):
            plan = run_cli("--config", str(config), "--json", "plan", "--only", "vms")
        for step in json.loads(plan.out)["steps"]:
            assert f"clone golden image {r.name}" in step["detail"], step
        with stage("image build again: nothing changes"):
            again = golden.build(session, phases=BAKED, pull=False)
        assert again.summary is None and kept.is_file()

        with stage("install --only vms,prepare,runtime from the golden image"):
            code, events, err = labctl(config, "install", "--only", "vms,prepare,runtime")
        assert code == 0, (err, summary(events))
        done = results(events)
        for name in NODES:
            assert done["runtime", name]["status"] == "unchanged", done["runtime", name]
            assert done["prepare", name]["detail"] == "hostname", done["prepare", name]  # the node's own name only
            meta = json.loads((provider._dir(name) / "vm.json").read_text())
            assert meta["base"] == str(kept.resolve())  # an overlay on the golden image

        with stage("the guest: marker, a machine-id of its own"):
            name = next(iter(NODES))
            guest = Guest(config, name)
            marker = json.loads(guest.sh(f"cat {golden.MARKER}"))
            assert marker["name"] == r.name and marker["recipe"] == list(BAKED)
            machine_id = guest.sh("cat /etc/machine-id")
            assert len(machine_id) == 32 and machine_id == guest.facts().machine_id
    finally:
        if guest is not None:
            guest.close()
        labctl(config, "destroy", "--yes")
        provider_of(config).delete_golden(r.name)
