"""The Provider protocol: the only way labctl touches VMs. A provider only ever touches VMs named in the lab."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

VMState = Literal["running", "stopped", "suspended"]


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


class Provider(Protocol):
    name: str

    def available(self) -> str:
        """The provider's version; raises ProviderError with an install hint when it is missing."""

    def list(self) -> dict[str, VM]:
        """Every local VM the provider knows (callers filter by the lab's names)."""

    def get(self, name: str) -> VM | None: ...

    def create(self, node) -> None:
        """Clone the base image into a new VM; never replaces an existing one."""

    def configure(self, node) -> list[str]:
        """Set cpu/memory/disk to the model's (disk only grows); returns what changed."""

    def start(self, node) -> None:
        """Start detached; returns once the VM is running (not yet reachable)."""

    def stop(self, node, timeout: float = 60) -> str:
        """Graceful power-off first, hard stop as the fallback; returns how it stopped."""

    def delete(self, node) -> None: ...

    def ip(self, node, wait: int = 0) -> str | None:
        """The VM's current IPv4 address, or None; never a stale address of a stopped VM."""

    def ssh_address(self, node) -> tuple[str, int]:
        """Where SSH for this node answers (host, port)."""
