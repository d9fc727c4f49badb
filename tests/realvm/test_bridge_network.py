"""provider.qemu.network bridge on real VMs: two Debian guests on a bridge this test makes, with dnsmasq as its DHCP
server (as libvirt's virbr0 has), booted by `labctl install --only vms`.

What it proves: QEMU attaches each VM's lab NIC to the bridge through the real qemu-bridge-helper (and its ACL), the
vms phase waits for the DHCP lease and the address labctl reads from the leases file is the one the guest has on
the NIC with the MAC labctl gave it; the VMs reach each other at those addresses (what kubeadm needs, and what
user-mode networking cannot give), while SSH still goes through the forwarded port.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_cli

from .test_node_phases import Guest, lab_config, labctl, provider_of, summary

pytestmark = pytest.mark.realvm

NODES = {"rb-m1": {"role": "master", "cpu": 2, "memory": 2048}, "rb-w1": {"role": "worker", "cpu": 1, "memory": 1024}}
BRIDGE_CONF = Path("/etc/qemu/bridge.conf")


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, capture_output=True)


@pytest.fixture
def bridge(tmp_path):
    """A bridge of this test's own (its name and /24 from the pid), dnsmasq serving DHCP on it without a default
    route (the guests keep reaching the internet through user-mode networking), and qemu-bridge-helper allowed to
    use it. All of it is gone afterwards, /etc/qemu/bridge.conf as it was."""
    name, octet = f"lbr{os.getpid() % 100000}", 100 + os.getpid() % 100
    net = ipaddress.ip_network(f"10.213.{octet}.0/24")
    leases = tmp_path / "dnsmasq.leases"
    saved = BRIDGE_CONF.read_bytes() if BRIDGE_CONF.exists() else None
    dnsmasq = None
    try:
        sh("ip", "link", "add", "name", name, "type", "bridge")
        sh("ip", "addr", "add", f"{net[1]}/24", "dev", name)
        sh("ip", "link", "set", name, "up")
        BRIDGE_CONF.parent.mkdir(exist_ok=True)
        BRIDGE_CONF.write_bytes((saved or b"") + f"allow {name}\n".encode())
        dnsmasq = subprocess.Popen(
            ["dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--user=root", f"--interface={name}",
             "--bind-interfaces", f"--dhcp-range={net[10]},{net[99]},1h", f"--dhcp-leasefile={leases}",
             "--dhcp-option=option:router", "--log-dhcp"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "dnsmasq.log", "wb"))
        yield name, net, leases
    finally:
        if dnsmasq is not None:
            dnsmasq.terminate()
            dnsmasq.wait(10)
        with contextlib.suppress(subprocess.CalledProcessError):
            sh("ip", "link", "del", name)
        if saved is None:
            BRIDGE_CONF.unlink(missing_ok=True)
        else:
            BRIDGE_CONF.write_bytes(saved)


def test_vms_on_a_bridge_reach_each_other_at_the_addresses_labctl_reports(realvm_image, bridge, tmp_path, stage):
    name, net, leases = bridge
    config = tmp_path / "clusters.json"
    raw = lab_config(realvm_image)
    raw["provider"]["qemu"].update({"network": "bridge", "bridge": name, "leases": str(leases)})
    raw["clusters"][0]["nodes"] = [{"name": node, **spec} for node, spec in NODES.items()]
    config.write_text(json.dumps(raw, indent=2))
    guests: list[Guest] = []
    try:
        with stage("doctor (bridge)"):
            doctor = json.loads(run_cli("--config", str(config), "--json", "doctor").out)
        checks = {c["name"]: c for c in doctor["checks"]}
        assert checks["bridge"]["status"] == "ok", checks["bridge"]

        with stage(f"install --only vms, {len(NODES)} VMs on bridge {name} (boot, DHCP lease)"):
            code, events, err = labctl(config, "install", "--only", "vms")
        assert code == 0, (err, summary(events))
        provider = provider_of(config)
        addresses = {node: provider.ip(node) for node in NODES}
        assert all(ipaddress.ip_address(a) in net for a in addresses.values()), addresses
        assert len(set(addresses.values())) == len(NODES)

        with stage("the guests' own view: their lab address, and each other over the bridge"):
            for node in NODES:
                guest = Guest(config, node)
                guests.append(guest)
                lab_mac = json.loads((tmp_path / ".labctl/qemu" / node / "vm.json").read_text())["lab_mac"]
                [nic] = [i for i in guest.facts().interfaces if i.mac == lab_mac]
                assert [a.split("/")[0] for a in nic.ipv4] == [addresses[node]], (node, nic)
                assert guest.transport.host == "127.0.0.1"  # SSH through the forwarded port, not the bridge
                for other, address in addresses.items():
                    if other != node:  # the other VM's sshd, across the bridge
                        banner = guest.sh(f"timeout 10 bash -c 'exec 3<>/dev/tcp/{address}/22; head -c 4 <&3'",
                                          sudo=False)
                        assert banner == "SSH-", (node, other, banner)
    finally:
        for guest in guests:
            guest.close()
        with stage("destroy"):
            destroyed = labctl(config, "destroy", "--yes")
    assert destroyed[0] == 0, destroyed[2]
