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

import contextlib
import functools
import hashlib
import http.server
import json
import os
import subprocess
import threading
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


@contextlib.contextmanager
def image_server(folder: Path):
    """A local HTTP server publishing `folder` (an image and its SHA256SUMS), as cloud-images.ubuntu.com does."""
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_vms_on_the_rootless_lab_network_reach_each_other_at_the_addresses_labctl_gave(realvm_image, tmp_path,
                                                                                       stage, monkeypatch):
    """Also the downloaded-image path: base_image is a URL on a local HTTP server with a SHA256SUMS beside it. A
    checksum that does not match fails the install and leaves nothing in the cache; the right one lets the VMs boot
    from the downloaded, verified copy."""
    config = tmp_path / "clusters.json"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    published = tmp_path / "published"
    published.mkdir()
    with stage("publish the image: qemu-img convert to qcow2, sha256"):
        served = published / "rootfs.qcow2"
        subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(realvm_image.rootfs), str(served)], check=True)
        digest = hashlib.sha256()
        with served.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    raw = lab_config(realvm_image)
    raw["provider"]["qemu"].update({"network": "lab", "lab_subnet": SUBNET,
                                    "append": f"{DEFAULT_APPEND} cloud-init=enabled"})
    raw["clusters"][0]["nodes"] = [{"name": node, **spec} for node, spec in NODES.items()]
    interfaces_before = host_interfaces()
    guests: list[Guest] = []
    served_at = contextlib.ExitStack()
    raw["base_image"] = served_at.enter_context(image_server(published)) + "/rootfs.qcow2"
    config.write_text(json.dumps(raw, indent=2))
    try:
        with stage("install --only vms from the URL, with a wrong SHA256SUMS: refused, nothing cached"):
            (published / "SHA256SUMS").write_text(f"{'0' * 64} *rootfs.qcow2\n")
            code, events, err = labctl(config, "install", "--only", "vms")
            assert code == 1 and "SHA-256" in json.dumps(summary(events)), (err, summary(events))
            assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and p.suffix != ".lock"]
        (published / "SHA256SUMS").write_text(f"{digest.hexdigest()} *rootfs.qcow2\n")
        with stage("doctor (network lab)"):
            doctor = json.loads(run_cli("--config", str(config), "--json", "doctor").out)
        checks = {c["name"]: c for c in doctor["checks"]}
        assert checks["network"]["status"] == "ok", checks["network"]

        with stage(f"install --only vms, {len(NODES)} VMs on the lab segment"):
            code, events, err = labctl(config, "install", "--only", "vms")
        assert code == 0, (err, summary(events))
        provider = provider_of(config)
        metas = {node: json.loads((tmp_path / ".labctl/qemu" / node / "vm.json").read_text()) for node in NODES}
        # cloned from the downloaded, verified copy in the cache
        assert {Path(meta["base"]).parent for meta in metas.values()} == {tmp_path / "cache" / "labctl" / "images"}
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
                    if other != node:  # the other VM's sshd, across the segment (awaited: cloud-init's first
                        # boot may still restart it for a moment, which refuses a connection)
                        banner = guest.sh(
                            f"timeout 60 bash -c 'until exec 3<>/dev/tcp/{address}/22; do sleep 1; done; "
                            "head -c 4 <&3' 2>/dev/null", sudo=False)
                        assert banner == "SSH-", (node, other, banner)
    finally:
        served_at.close()
        for guest in guests:
            guest.close()
        with stage("destroy"):
            destroyed = labctl(config, "destroy", "--yes")
    assert destroyed[0] == 0, destroyed[2]
