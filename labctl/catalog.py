"""What labctl knows by name: pinned default versions and limits.

One place for every version pin (style lesson 12): phases read them from the model, never from here directly.
The stacks' chart versions are pinned in their descriptors (templates/stacks/<name>/stack.yaml, labctl/stacks.py).
"""

from __future__ import annotations

# Kubernetes 1.31 went end-of-life on 2025-10-28 and 1.34 on 2026-10-27; 1.35 is supported until 2027-02-28
# and is the last minor that supports containerd 1.7 as well as 2.x: Ubuntu 24.04 installs 2.2 (noble-updates),
# and a node that has 1.7 (no updates pocket) still works, so it is the default.
DEFAULT_KUBERNETES = "1.35.6"
# Minimum containerd accepted on a node (k8s 1.35 recommends 1.7.28+, 2.1.5+ or 2.2.0+).
DEFAULT_CONTAINERD = "1.7.28"
DEFAULT_CILIUM = "1.19.6"
DEFAULT_HELM = "3.20.2"  # a security release of the 3.x line (v3.20.2)

# kubeadm's pause image per Kubernetes minor (kubeadm constants.PauseVersion; reference/k8s-bootstrap.md §1):
# 1.31–1.33 use 3.10; 1.34 moved to 3.10.1 (kubernetes#130713, as kubespray#12827 "pause 3.10.1 for Kubernetes
# 1.34" records) and 1.35 keeps it; 1.36 → 3.10.2 is third-party (kubeclipper#946) ❓ — `kubeadm config images
# list` on a 1.36 node is the proof. A mismatch only makes kubeadm's preflight warn; the runtime's setting is what
# pods use, and keeping it at kubeadm's means the image `kubeadm config images pull` fetched is the one in use.
PAUSE_VERSIONS = {31: "3.10", 32: "3.10", 33: "3.10", 34: "3.10.1", 35: "3.10.1", 36: "3.10.2"}

# kubeadm's v1beta4 config API (which labctl renders) exists since 1.31; 1.36 is the newest minor known here.
KUBERNETES_MINORS = {
    # minor: end of life (ISO date), from the Kubernetes release history (https://kubernetes.io/releases/;
    # reference/k8s-bootstrap.md "Versions" for 1.31 and 1.32)
    31: "2025-10-28",
    32: "2026-02-28",
    33: "2026-06-28",
    34: "2026-10-27",
    35: "2027-02-28",
    36: "2027-06-28",
}

# Minors before the catalogue's, for the refusal's wording only: their end of life from the Kubernetes release
# history (https://kubernetes.io/releases/ , "End of Life" per minor). Anything older ended before these.
KUBERNETES_EOL_BEFORE_CATALOGUE = {29: "2025-02-28", 30: "2025-06-28"}

# The image the cirruslabs Linux VMs ship with: its disk is 20 GB and Tart disks only grow.
IMAGE_DISK_GB = 20

# kubeadm preflight for a control-plane node (kubeadm constants ControlPlaneNumCPU / ControlPlaneMem).
CONTROL_PLANE_MIN_CPU = 2
CONTROL_PLANE_MIN_MEMORY_MB = 1700

# The kube-apiserver refuses service CIDRs larger than this (more than 2^20 addresses).
SERVICE_CIDR_MIN_PREFIX = 12

