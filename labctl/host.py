"""The machine labctl runs on: CPUs, memory, disk, and the whole-lab resource budget (seed §7).

Memory is never overcommitted (the OOM killer would take a VM, and with it a node); CPU may be, and the ratio is
reported. `LABCTL_HOST_MEMORY_MIB` / `LABCTL_HOST_CPUS` override detection (tests, or a host where part of the
memory is reserved for other work).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .model import Lab

# Left for macOS itself and the apps around the lab when judging whether the lab fits.
HOST_RESERVE_MIB = 4096


@dataclass(frozen=True)
class Host:
    system: str  # "Darwin", "Linux"
    machine: str  # "arm64", "x86_64"
    cpus: int
    memory_mib: int

    @property
    def is_apple_silicon(self) -> bool:
        return self.system == "Darwin" and self.machine == "arm64"


def _memory_mib() -> int:
    if override := os.environ.get("LABCTL_HOST_MEMORY_MIB"):
        return int(override)
    if platform.system() == "Darwin":
        out = subprocess.run(["sysctl", "-n", "hw.memsize"], capture_output=True, text=True, check=False)
        return int(out.stdout.strip() or 0) // 2**20
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def detect() -> Host:
    cpus = int(os.environ.get("LABCTL_HOST_CPUS") or os.cpu_count() or 1)
    return Host(platform.system(), platform.machine(), cpus, _memory_mib())


# platform.machine() spellings → the architecture names of OCI images (image index `platform.architecture`)
_OCI_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def guest_architecture(provider: str) -> str:
    """The CPU architecture of the lab's VMs, as OCI images name it ("arm64", "amd64"), for provider "tart" or
    "qemu". Tart runs only on Apple silicon (doctor's platform check), and Apple's Virtualization.framework runs
    guests of the host's own architecture, so Tart VMs are arm64; labctl starts QEMU
    with the host's own qemu-system-<machine> (providers/qemu.default_binary), so its guests are the host's
    architecture. An unknown machine is returned as it is (lower case)."""
    if provider in ("tart", "orchard"):  # Orchard's workers are Macs running Tart
        return "arm64"
    machine = platform.machine().lower()
    return _OCI_ARCH.get(machine, machine)


def free_disk_gb(path: Path) -> float:
    return shutil.disk_usage(path).free / 1e9


@dataclass(frozen=True)
class Budget:
    vcpus: int
    memory_mib: int
    disk_gb: int
    host: Host

    @property
    def cpu_ratio(self) -> float:
        return self.vcpus / max(1, self.host.cpus)

    @property
    def memory_available_mib(self) -> int:
        return max(0, self.host.memory_mib - HOST_RESERVE_MIB)

    @property
    def memory_fits(self) -> bool:
        return self.memory_mib <= self.memory_available_mib

    def describe(self) -> str:
        gib = lambda mib: f"{mib / 1024:.1f} GiB"  # noqa: E731
        return (
            f"{self.vcpus} vCPU on {self.host.cpus} CPUs (overcommit {self.cpu_ratio:.2f}x), "
            f"{gib(self.memory_mib)} of {gib(self.memory_available_mib)} usable memory "
            f"({gib(self.host.memory_mib)} minus {gib(HOST_RESERVE_MIB)} for the host), {self.disk_gb} GB disk"
        )


def budget(lab: Lab, host: Host | None = None, clusters: Iterable[str] = ()) -> Budget:
    """The summed vCPUs, memory (MiB) and disk (GB) of the lab's nodes, or of those in `clusters` when given."""
    chosen = set(clusters)
    # static nodes are machines of their own: they take nothing from this host
    nodes = [n for c, n in lab.nodes if (not chosen or c.name in chosen) and not n.static]
    return Budget(
        vcpus=sum(n.cpu for n in nodes),
        memory_mib=sum(n.memory for n in nodes),
        disk_gb=sum(n.disk for n in nodes),
        host=host or detect(),
    )
