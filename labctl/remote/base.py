"""The Transport contract: run a script on a node, put and get files.

A Script is a value: a stable identity (`facts`, `runtime.apply`, ...), the rendered text, and the parameters it was
rendered from. The SSH transport sends the text; the simulated transport answers by identity and reads the
parameters, so tests never parse shell.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Script:
    id: str
    text: str
    params: dict[str, Any] = field(default_factory=dict, compare=False)

    def __str__(self) -> str:
        return self.id


@dataclass(frozen=True)
class Result:
    rc: int
    stdout: str
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.rc == 0


class Transport(Protocol):
    node: str

    def run(self, script: Script, *, sudo: bool = False, timeout: float | None = None, check: bool = True) -> Result:
        """Run `script.text` with bash. check=True raises CommandError on a non-zero exit."""

    def put(self, path: str, data: bytes, mode: int = 0o644, *, sudo: bool = False) -> None:
        """Write a whole file on the node (atomically: temp file + rename)."""

    def get(self, path: str, *, sudo: bool = False) -> bytes:
        """Read a whole file from the node."""

    def close(self) -> None: ...
