"""The clusters.json `labctl init` writes.

tart (the default): the shipped file (the predecessor's four clusters), as it is.
qemu: one small cluster that runs on this Linux host as it is: the host architecture's Ubuntu 24.04 cloud image by
URL (downloaded once and verified: labctl/images.py), the rootless lab network (provider.qemu.network "lab": no root,
no bridge), and nodes sized to what the host has (host.py's budget: memory is never overcommitted).
"""

from __future__ import annotations

import json

from . import catalog, host, images

QEMU_CLUSTER = "lab"
NODE_MEMORY_MAX_MIB = 4096  # a kubeadm node with Cilium is comfortable here; more is the user's choice
NODE_MEMORY_MIN_MIB = 2048  # above kubeadm's control-plane minimum (catalog.CONTROL_PLANE_MIN_MEMORY_MB), in 512s
NODE_CPU = catalog.CONTROL_PLANE_MIN_CPU  # 2: kubeadm's preflight minimum for a control plane


def qemu_lab(h: host.Host | None = None) -> dict:
    """The qemu starter lab for host `h` (default: this one) as clusters.json data: a control plane, plus a worker
    when the memory host.py leaves for VMs holds two nodes; each node gets an equal share of it, in steps of 512 MiB,
    between NODE_MEMORY_MIN_MIB and NODE_MEMORY_MAX_MIB. Raises ImageError on an architecture without an Ubuntu
    cloud image (only amd64 and arm64 have one)."""
    h = h or host.detect()
    usable = max(0, h.memory_mib - host.HOST_RESERVE_MIB)
    count = 2 if usable >= 2 * NODE_MEMORY_MIN_MIB else 1
    memory = max(NODE_MEMORY_MIN_MIB, min(NODE_MEMORY_MAX_MIB, usable // count // 512 * 512))
    nodes = [{"name": f"{QEMU_CLUSTER}-master", "role": "master", "cpu": NODE_CPU, "memory": memory,
              "disk": catalog.IMAGE_DISK_GB}]
    if count == 2:
        nodes.append({"name": f"{QEMU_CLUSTER}-worker1", "role": "worker", "cpu": NODE_CPU, "memory": memory,
                      "disk": catalog.IMAGE_DISK_GB, "labels": {"node-role.kubernetes.io/worker": ""}})
    return {
        "base_image": images.ubuntu_cloud_image(),
        "ssh_user": "admin",
        "ssh_password": "admin",
        "provider": {"type": "qemu", "qemu": {"network": "lab"}},
        "clusters": [{"name": QEMU_CLUSTER, "pod_cidr": "10.10.0.0/16", "service_cidr": "10.96.0.0/16",
                      "stacks": [], "nodes": nodes}],
    }


def qemu_text(h: host.Host | None = None) -> str:
    """qemu_lab() as the text of a clusters.json."""
    return json.dumps(qemu_lab(h), indent=2) + "\n"
