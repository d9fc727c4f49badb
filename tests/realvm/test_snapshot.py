"""`labctl snapshot save / restore` on a real QEMU VM (issue 19b): the restored guest's disk is the snapshot's.

One Debian VM (tests/realvm/build_image.py): a file written inside the guest before the snapshot is there after the
restore, one written after the snapshot is gone; the snapshot VM is a copy of the VM's folder (its qcow2 overlay on
the shared base image) and is never booted. The lab and its snapshots are destroyed at the end whatever happened.
"""

from __future__ import annotations

import json

import pytest

from labctl import snapshots
from tests.realvm.test_node_phases import Guest, labctl, lab_config

pytestmark = pytest.mark.realvm

NODE = "rv-m1"
SNAP_VM = snapshots.vm_name("s1", NODE)


def test_snapshot_round_trips_the_guest_disk(realvm_image, tmp_path, stage):
    config = tmp_path / "clusters.json"
    lab = lab_config(realvm_image)
    lab["clusters"][0]["nodes"] = lab["clusters"][0]["nodes"][:1]
    config.write_text(json.dumps(lab))
    try:
        with stage("install vms"):
            code, _, err = labctl(config, "install", "--only", "vms")
            assert code == 0, err
        guest = Guest(config, NODE)
        guest.sh("echo kept > /var/tmp/before-snapshot && sync")
        guest.close()

        with stage("snapshot save (shutdown, copy, boot)"):
            code, _, err = labctl(config, "snapshot", "save", "s1", "--yes")
            assert code == 0, err
        snap = tmp_path / ".labctl" / "qemu" / SNAP_VM
        assert (snap / "vm.json").is_file() and (snap / "disk.qcow2").is_file()
        assert not (snap / "qemu.pid").exists()  # a copy of a stopped VM, never started

        guest = Guest(config, NODE)
        guest.sh("echo gone > /var/tmp/after-snapshot && sync")
        assert guest.sh("cat /var/tmp/before-snapshot /var/tmp/after-snapshot") == "kept\ngone"
        guest.close()

        with stage("snapshot restore (replace, boot)"):
            code, events, err = labctl(config, "snapshot", "restore", "s1", "--yes")
            assert code == 0, err
        assert [e["action"] for e in events if e["event"] == "snapshot"] == ["restored"]
        guest = Guest(config, NODE)
        assert guest.sh("cat /var/tmp/before-snapshot") == "kept"
        assert guest.sh("test -e /var/tmp/after-snapshot && echo present || echo absent") == "absent"
        guest.close()
        assert (snap / "disk.qcow2").is_file()  # the snapshot stays, reusable
    finally:
        with stage("destroy --snapshots"):
            destroyed = labctl(config, "destroy", "--yes", "--snapshots")
    assert destroyed[0] == 0, destroyed[2]
    assert not (tmp_path / ".labctl").exists()
