"""The small error hierarchy. Library code raises these; only the CLI edge prints them (once).

Exit codes: 2 = the input is wrong (fix clusters.json or the command line), 1 = something failed while working.
"""

from __future__ import annotations

from dataclasses import dataclass


class LabctlError(Exception):
    """Base of every error labctl expects. `hint` says what to do next."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(LabctlError):
    """A bad command line (unknown phase, unknown cluster, missing --yes ...)."""

    exit_code = 2


@dataclass(frozen=True)
class Problem:
    """One validation problem: a JSON path like `clusters[1].nodes[0].cpu` and what is wrong there."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(LabctlError):
    """clusters.json is unreadable or invalid; carries every problem found, not just the first."""

    exit_code = 2

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        count = len(problems)
        lines = [f"{source}: {count} problem{'s' if count != 1 else ''}"]
        lines += [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines), hint="fix the fields named above and run `labctl validate` again")


class LockedError(LabctlError):
    """Another labctl process is working on the same lab."""


class ProviderError(LabctlError):
    """The VM provider (tart, qemu) failed or is missing."""


class TransportError(LabctlError):
    """A node could not be reached (connect, authenticate, host key)."""

    def __init__(self, node: str, message: str, hint: str | None = None):
        self.node = node
        super().__init__(f"{node}: {message}", hint)


class CommandError(LabctlError):
    """A command on a node (or on the host) exited non-zero or timed out.

    Carries everything needed to act on it without opening a log: node, command identity, exit code
    (None when it timed out or the connection dropped) and the tail of its output.
    """

    TAIL_LINES = 20

    def __init__(self, node: str, command: str, exit_code: int | None, output: str, reason: str = ""):
        self.node = node
        self.command = command
        self.returncode = exit_code
        self.tail = "\n".join(output.rstrip().splitlines()[-self.TAIL_LINES :])
        what = reason or (f"exited {exit_code}" if exit_code is not None else "did not finish")
        message = f"{node}: `{command}` {what}"
        if self.tail:
            message += "\n" + "\n".join("    " + line for line in self.tail.splitlines())
        super().__init__(message)


class StepError(LabctlError):
    """A phase found something it must not fix on its own (e.g. a disk shrink, a NotReady joined node)."""
