"""The Provider protocol: the only way labctl touches VMs. A provider only ever touches VMs named in the lab."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from ..errors import ProviderError, StepError

VMState = Literal["running", "stopped", "suspended"]
# The names of the VMs labctl keeps beside a lab (snapshot VMs `labctl-snap-<snapshot>-<node>`, golden images):
# `delete_vm` only ever deletes such a name, and never one that is a node of the lab.
OWN_PREFIX = "labctl-"


@dataclass(frozen=True)
class VM:
    name: str
    state: VMState
    cpu: int | None = None
    memory: int | None = None  # MiB
    disk: int | None = None  # GB

    @property
    def running(self) -> bool:
        return self.state == "running"


def shrink_error(name: str, want: int, have: int) -> StepError:
    """VM disks only grow (Tart's and QEMU's alike): a smaller disk in clusters.json is a mistake, not a request."""
    return StepError(
        f"{name}: clusters.json asks for a {want} GB disk, but the VM already has {have} GB; disks only grow",
        hint=f"set its disk back to {have} or more, or `labctl destroy` and recreate the VM (its data is lost)",
    )


class LabVMs:
    """What every provider shares: it only ever changes VMs named in the lab (plus those `own` hands it)."""

    def __init__(self, lab):
        self.lab = lab
        self._names = {node.name for _, node in lab.nodes}

    def get(self, name: str) -> VM | None:  # pragma: no cover - each provider implements it
        raise NotImplementedError

    def own(self, name: str) -> None:
        """Let this provider change a VM the lab used to have (`install --prune` deletes removed workers)."""
        self._names.add(name)

    def _owned(self, node) -> str:
        name = node if isinstance(node, str) else node.name
        if name not in self._names:
            raise ProviderError(f"{name}: not a VM of this lab; labctl only changes the VMs named in clusters.json")
        return name

    def network_problem(self) -> str | None:
        return None

    def host_endpoint(self, node, guest_port: int, address: str | None = None) -> tuple[str, int]:
        """The VM's own address and the port itself: the host is on the VMs' network (Tart's NAT, a bridge)."""
        name = node if isinstance(node, str) else node.name
        address = address or self.ip(name)  # type: ignore[attr-defined]  (every provider has ip())
        if not address:
            raise ProviderError(f"{name}: the VM has no address (is it running?), so nothing answers on its port "
                                f"{guest_port}", hint="`labctl boot` starts it")
        return address, guest_port

    def ssh_wait_seconds(self, node) -> float | None:
        """How long a booting VM's sshd may take, in seconds; None: the transport's default (remote/sshwait.py)."""
        return None

    # -- VMs labctl keeps beside the lab (snapshots, golden images): named with OWN_PREFIX, never lab nodes --------
    def _copy_check(self, source: str, target: str) -> None:
        """Refuse a copy `clone_vm` must not make: the source missing or running (a running VM's disk is not
        consistent: tart clone has no guard, reference/tart-cli.md), the target existing (`tart clone` would
        silently replace it) or being neither labctl's own name nor a node of this lab."""
        if not (target.startswith(OWN_PREFIX) or target in self._names):
            raise ProviderError(f"{target}: labctl only copies a VM to a name of its own ({OWN_PREFIX}…) or to a "
                                "node of this lab")
        vm = self.get(source)
        if vm is None:
            raise ProviderError(f"{source}: cannot copy it to {target}: the VM does not exist")
        if vm.state != "stopped":
            raise ProviderError(f"{source}: is {vm.state}; only a stopped VM is copied (its disk must be consistent)",
                                hint="`labctl shutdown` stops the lab's VMs")
        if self.get(target) is not None:
            raise ProviderError(f"{target}: cannot copy {source} there: a VM with this name already exists",
                                hint="delete it first (`labctl snapshot delete`, or `labctl destroy` for a node)")

    def _own_vm(self, name: str) -> str:
        """`name` if it is a VM labctl keeps beside the lab (OWN_PREFIX, not a node of it); ProviderError otherwise."""
        if not name.startswith(OWN_PREFIX) or name in self._names:
            raise ProviderError(f"{name}: not a VM labctl keeps beside the lab ({OWN_PREFIX}…); left untouched")
        return name

    def _require(self, name: str, action: str) -> VM:
        vm = self.get(name)
        if vm is None:
            raise ProviderError(f"{name}: cannot {action}: the VM does not exist",
                                hint="`labctl install --only vms` creates it")
        return vm


class Provider(Protocol):
    name: str
    hard_stops: frozenset[str]  # what stop() returns when it had to pull the plug (tart: "tart stop")
    ip_wait_seconds: int  # how long ip(wait=...) may wait for a started VM's address (provider settings)

    def log_path(self, node) -> Path:
        """Where the VM's own output goes (tart: the `tart run` log; qemu: the serial console)."""

    def available(self) -> str:
        """The provider's version; raises ProviderError with an install hint when it is missing."""

    def list(self) -> dict[str, VM]:
        """Every local VM the provider knows (callers filter by the lab's names)."""

    def get(self, name: str) -> VM | None: ...

    def image_cached(self, image: str) -> bool: ...

    def pull(self, image: str) -> None: ...

    def create(self, node, image: str | None = None) -> bool:
        """Clone the base image (or `image`: a golden image's golden_source) into a new VM; never replaces an
        existing one. True when it created one."""

    def configure(self, node) -> list[str]:
        """Set cpu/memory/disk to the model's (disk only grows); returns what changed."""

    def start(self, node) -> bool:
        """Start detached; returns once the VM is running (not yet reachable). True when it started it."""

    def stop(self, node, timeout: float = 60, *, guest_poweroff: bool = False) -> str:
        """Graceful power-off first, hard stop as the fallback; returns how it stopped.

        guest_poweroff: the caller already asked the guest to power off, so wait for that first.
        """

    def delete(self, node) -> bool:
        """Stop (if needed) and delete the VM. True when there was one."""

    def ip(self, node, wait: int = 0, *, running: bool = False) -> str | None:
        """The VM's current IPv4 address, or None; never a stale address of a stopped VM. `wait`: seconds to wait
        for a lease. `running=True`: the caller has just seen the VM running (its own `get`, or `start` returned),
        so a provider that looks first (Tart: one `tart get` process) need not look again."""

    def own(self, name: str) -> None:
        """Allow changes to a VM that is no longer in clusters.json but was the lab's (prune)."""

    def clone_vm(self, source: str, target: str) -> None:
        """Copy the STOPPED VM `source` to the new VM `target` (a name of labctl's own, OWN_PREFIX, or a node of this
        lab that has no VM now). Tart: `tart clone` (APFS copy-on-write, reference/tart-cli.md); QEMU: the VM's
        folder with a copy of its qcow2 overlay (the base image stays shared). Raises ProviderError when the source
        is missing or not stopped, or the target exists."""

    def delete_vm(self, name: str) -> bool:
        """Delete a stopped VM labctl keeps beside the lab (OWN_PREFIX; never a node of the lab: `delete` is for
        those). True when there was one. Raises ProviderError for any other name or a running VM."""

    def vm_disk_bytes(self, name: str) -> int:
        """What the VM takes on the host's disk, in bytes (allocated, not its virtual size). Tart: `tart get`'s Size
        (decimal GB, reference/tart-cli.md; a copy-on-write clone counts in full); QEMU: the allocated blocks of the
        VM's files (its base image not included). Raises ProviderError when there is no such VM."""

    def golden_source(self, name: str) -> str | None:
        """The golden image `name` (labctl/golden.py) as `create(node, image=...)` takes it (tart: the local VM's
        name; qemu: the qcow2 file's path), or None when the provider has no such image."""

    def keep_golden(self, build_vm: str, name: str) -> None:
        """Keep the STOPPED `build_vm`'s disk as the golden image `name` (tart: clone_vm; qemu: a flattened qcow2)."""

    def golden_disk_bytes(self, name: str) -> int:
        """What the golden image `name` takes on the host's disk, in bytes (allocated)."""

    def push_golden(self, name: str, reference: str) -> None:
        """Push the golden image to the OCI `reference` (tart); ProviderError where there is no such thing (qemu)."""

    def delete_golden(self, name: str) -> bool:
        """Delete the golden image `name`; True when there was one."""

    def ssh_address(self, node, address: str | None = None) -> tuple[str, int]:
        """Where SSH for this node answers (host, port). `address`: the node's address as ip() gave it earlier in
        this run (Context.address caches it), so that a provider whose SSH host is that address asks no more."""

    def ssh_wait_seconds(self, node) -> float | None:
        """Seconds to wait for this VM's sshd while it boots (qemu: by accelerator); None: the default."""

    def network_problem(self) -> str | None:
        """Why the VMs share no network that ip() addresses are on (so no cluster can be formed); None: they do."""

    def host_endpoint(self, node, guest_port: int, address: str | None = None) -> tuple[str, int]:
        """Where this machine reaches TCP `guest_port` of `node` (the API server's 6443, a NodePort): (host, port).
        Tart and a QEMU bridge: the node's address and the port itself; QEMU network lab: 127.0.0.1 and the port
        forwarded to it (NodePorts answer on every node, so any node of a cluster maps to its forward). `address`:
        the node's address as ip() gave it in this run (Context.address). Raises ProviderError when nothing of the
        VM is reachable (not running, port not forwarded)."""
