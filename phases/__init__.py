"""The phases of every command, in order. Read top to bottom: this is what each labctl command does.

Each module has one Phase subclass and a module-level `phase` instance with the same shape:
name, scope, after, applies(), check() (read-only) and apply() (safe to repeat).
"""

from __future__ import annotations

import importlib

ORDER = {
    "install": [
        "vms",  # Tart VMs cloned, sized and running with an address
        "prepare",  # swap off, kernel modules, sysctls, hostname, machine-id
        "runtime",  # containerd with SystemdCgroup and the right sandbox image
        "kubepkgs",  # kubeadm/kubelet/kubectl at the pinned version, held
        "init",  # kubeadm init on the first control plane, kubeconfigs
        "preflight",  # static machines (not labctl's VMs) ready to join: load, memory, containerd, API reachable
        "join",  # control planes one at a time, workers in parallel
        "cni",  # Cilium (kube-proxy free) + Hubble via Helm
        "nodeconfig",  # node labels and taints from clusters.json
        "stacks",  # each cluster's stacks (Helm charts and manifests), in `requires` order
    ],
    "boot": [
        "boot",  # start stopped VMs (control planes first) and wait for their addresses
        "swap",  # swap that came back at boot turned off, and what turned it on disabled
        "addresses",  # a control plane or node whose address changed: certificates, kubeconfigs, hosts entries
        "ready",  # uncordon what `shutdown --drain` cordoned, wait until every node is Ready
        "stackhooks",  # what installed stacks know about moved nodes: kubelet serving CSRs, Argo CD destinations
    ],
    "shutdown": [
        "shutdown",  # power off from inside the guest, workers first; SIGUSR2, then `tart stop` as fallbacks
    ],
    "destroy": [
        "destroy",  # stop and delete the lab's VMs (only those named in clusters.json)
    ],
}


def phases_for(command: str) -> list:
    """The Phase objects of a command, in order (only the modules that exist yet)."""
    out = []
    for name in ORDER[command]:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            continue
        out.append(module.phase)
    return out


def install_phases() -> list:
    return phases_for("install")
