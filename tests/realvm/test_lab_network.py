"""provider.qemu.network lab on real VMs: two Debian guests booted by `labctl install --only vms` on the lab's
multicast segment (QEMU `-netdev socket,mcast=…,localaddr=127.0.0.1`), with the static addresses labctl gave them.

What it proves: the segment needs no bridge, no tap and no helper (the QEMU command lines hold none, and nothing is
added to the host's interfaces); real cloud-init applies the network-config labctl wrote (the lab NIC found by its
MAC gets exactly the address in vm.json, and the default route stays on the user-mode NIC); and the VMs reach each
other at those addresses (TCP to each other's sshd), which is what kubeadm, the kubelets and Cilium need. It runs as
root in CI, but nothing of it needs root: `labctl doctor`'s network check and the provider's argv show it.

The test image has cloud-init switched off unless the kernel command line says `cloud-init=enabled`
(tests/realvm/build_image.py), so this lab turns it on with provider.qemu.append.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from labctl.providers import qemu_net
from labctl.providers.qemu import DEFAULT_APPEND
from tests.conftest import run_cli

from .test_node_phases import Guest, lab_config, labctl, provider_of, summary

pytestmark = pytest.mark.realvm

NODES = {"rl-m1": {"role": "master", "cpu": 2, "memory": 1792}, "rl-w1": {"role": "worker", "cpu": 1, "memory": 1024}}
SUBNET = "10.213.0.0/24"


def host_interfaces() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def test_vms_on_the_rootless_lab_network_reach_each_other_at_the_addresses_labctl_gave(realvm_image, tmp_path,
                                                                                       stage):
    config = tmp_path / "clusters.json"
    raw = lab_config(realvm_image)
    raw["provider"]["qemu"].update({"network": "lab", "lab_subnet": SUBNET,
                                    "append": f"{DEFAULT_APPEND} cloud-init=enabled"})
    raw["clusters"][0]["nodes"] = [{"name": node, **spec} for node, spec in NODES.items()]
    config.write_text(json.dumps(raw, indent=2))
    interfaces_before = host_interfaces()
    guests: list[Guest] = []
    try:
        with stage("doctor (network lab)"):
            doctor = json.loads(run_cli("--config", str(config), "--json", "doctor").out)
        checks = {c["name"]: c for c in doctor["checks"]}
        assert checks["network"]["status"] == "ok", checks["network"]

        with stage(f"install --only vms, {len(NODES)} VMs on the lab segment"):
            code, events, err = labctl(config, "install", "--only", "vms")
        assert code == 0, (err, summary(events))
        provider = provider_of(config)
        metas = {node: json.loads((tmp_path / ".labctl/qemu" / node / "vm.json").read_text()) for node in NODES}
        assigned = {node: meta["lab_address"].split("/")[0] for node, meta in metas.items()}
        assert {node: provider.ip(node) for node in NODES} == assigned
        assert len(set(assigned.values())) == len(NODES)
        group, port = qemu_net.segment(tmp_path / ".labctl")
        for node in NODES:  # the running QEMUs: a multicast socket on the loopback, no bridge, no tap
            pid = json.loads((tmp_path / ".labctl/qemu" / node / "run.json").read_text())["pid"]
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
            assert f"socket,id=lab,mcast={group}:{port},localaddr=127.0.0.1" in argv
            assert not [a for a in argv if a.startswith(("bridge,", "tap,", "vde,"))], argv
        assert host_interfaces() == interfaces_before  # nothing added to the host's network

        with stage("the guests' own view: their lab address by MAC, the default route, each other's sshd"):
            for node in NODES:
                guest = Guest(config, node)
                guests.append(guest)
                [nic] = [i for i in guest.facts().interfaces if i.mac == metas[node]["lab_mac"]]
                assert nic.ipv4 == [metas[node]["lab_address"]], (node, nic)
                default = guest.sh("ip -4 route show default", sudo=False)
                assert default and f"dev {nic.name} " not in f"{default} ", (node, default)  # stays on the user NIC
                for other, address in assigned.items():
                    if other != node:  # the other VM's sshd, across the segment
                        banner = guest.sh(f"timeout 20 bash -c 'exec 3<>/dev/tcp/{address}/22; head -c 4 <&3'",
                                          sudo=False)
                        assert banner == "SSH-", (node, other, banner)
    finally:
        for guest in guests:
            guest.close()
        with stage("destroy"):
            destroyed = labctl(config, "destroy", "--yes")
    assert destroyed[0] == 0, destroyed[2]
