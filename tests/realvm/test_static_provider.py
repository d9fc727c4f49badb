"""The static provider on a real machine: a Debian guest that another lab booted under QEMU is, to the lab under
test, an existing machine (`"provider": "static"`, its address and SSH port), never created by it.

What it proves: the node phases run on a machine labctl reaches only over SSH — prepare and runtime converge on
it (real apt, modules, sysctl, containerd), a second run changes nothing, and `destroy` leaves the machine
running and untouched (same boot, its files and containerd still there): it only takes a static node out of its
cluster, and this one was never in one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .test_node_phases import CONTAINERD, Guest, assert_node_matches_reality, counts, lab_config, labctl, \
    provider_of, results, summary

pytestmark = pytest.mark.realvm

NAME = "rs-box1"
PHASES = ("vms", "prepare", "runtime")


def machine_lab(image, directory: Path) -> Path:
    """The lab that owns the guest (its own .labctl): it only boots the VM the other lab uses as a machine."""
    directory.mkdir()
    config = directory / "clusters.json"
    spec = lab_config(image)
    spec["clusters"][0]["nodes"] = [{"name": NAME, "role": "master", "cpu": 2, "memory": 2048}]
    config.write_text(json.dumps(spec, indent=2))
    return config


def static_lab(image, directory: Path, port: int) -> Path:
    """The lab under test: one static node at the guest's forwarded SSH port; no VM of its own."""
    directory.mkdir()
    config = directory / "clusters.json"
    spec = lab_config(image)
    spec["clusters"][0]["nodes"] = [{"name": NAME, "role": "master", "provider": "static", "address": "127.0.0.1",
                                     "ssh_port": port}]
    config.write_text(json.dumps(spec, indent=2))
    return config


def test_static_machine_prepared_converged_and_left_alone_by_destroy(realvm_image, tmp_path, stage):
    machine = machine_lab(realvm_image, tmp_path / "machine")
    try:
        with stage("boot the guest from another lab (it is the 'existing machine')"):
            code, events, err = labctl(machine, "install", "--only", "vms")
        assert code == 0, (err, summary(events))
        _, port = provider_of(machine).ssh_address(NAME)
        config = static_lab(realvm_image, tmp_path / "static", port)

        with stage("install --only vms,prepare,runtime on the static machine"):
            code, events, err = labctl(config, "install", "--only", ",".join(PHASES))
        assert code == 0, (err, summary(events))
        done = results(events)
        assert done["vms", NAME]["status"] == "unchanged", done  # nothing to create: it only has to answer
        assert done["vms", NAME]["detail"] == "static machine at 127.0.0.1: SSH answers"
        assert done["prepare", NAME]["status"] == done["runtime", NAME]["status"] == "changed", done
        assert "install" in done["runtime", NAME]["detail"]
        assert not (tmp_path / "static" / ".labctl" / "qemu").exists()  # the static lab made no VM

        with stage("install again: nothing to change"):
            code, events, err = labctl(config, "install", "--only", ",".join(PHASES))
        assert code == 0, err
        assert summary(events)["counts"] == counts(unchanged=len(PHASES)), events

        guest = Guest(machine, NAME)  # through the owning lab's pinned key: the static lab's are its own
        try:
            assert_node_matches_reality(guest)
            guest.sh("echo untouched > /var/lib/labctl-static-marker && sync")
            boot_id = guest.facts().boot_id
        finally:
            guest.close()

        with stage("destroy the static lab: the machine stays, running and as it was"):
            code, events, err = labctl(config, "destroy", "--yes")
        assert code == 0, (err, summary(events))
        assert results(events)["destroy", NAME]["detail"] == \
            "not in the cluster; the static machine is left alone", results(events)
        assert provider_of(machine).get(NAME).running
        guest = Guest(machine, NAME)
        try:
            facts = guest.facts()
            assert facts.boot_id == boot_id  # never rebooted nor powered off
            assert guest.sh("cat /var/lib/labctl-static-marker") == "untouched"
            assert facts.containerd.service.running and facts.containerd.version_output.split()[2].lstrip(
                "v").startswith(CONTAINERD)
        finally:
            guest.close()
    finally:
        labctl(machine, "destroy", "--yes")
