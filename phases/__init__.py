"""The install phases, in order. Read top to bottom: this is what `labctl install` does.

Each module has one Phase subclass and a module-level `phase` instance with the same shape:
name, scope, after, applies(), check() (read-only) and apply() (safe to repeat).
"""

from __future__ import annotations

INSTALL_ORDER = [
    "vms",  # Tart VMs cloned, sized and running with an address
    "prepare",  # swap off, kernel modules, sysctls, hostname, machine-id
    "runtime",  # containerd with SystemdCgroup and the right sandbox image
    "kubepkgs",  # kubeadm/kubelet/kubectl at the pinned version, held
    "init",  # kubeadm init on the first control plane, kubeconfigs
    "join",  # control planes one at a time, workers in parallel
    "cni",  # Cilium (kube-proxy free) + Hubble via Helm
]


def install_phases():
    """The Phase objects in install order (only the modules that exist yet)."""
    import importlib

    out = []
    for name in INSTALL_ORDER:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            continue
        out.append(module.phase)
    return out
