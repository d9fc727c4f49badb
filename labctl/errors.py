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


class Interrupted(LabctlError):
    """Ctrl-C in the middle of work that a plain "interrupted" would leave unexplained: the message says what state
    things were left in, the hint what to run. Exit code 130, as for any Ctrl-C."""

    exit_code = 130


class UsageError(LabctlError):
    """A bad command line (unknown phase, unknown cluster, missing --yes ...)."""

    exit_code = 2


@dataclass(frozen=True)
class Problem:
    """One validation problem: a JSON path like `clusters[1].nodes[0].cpu` and what is wrong there."""

    path: str
    message: str
    # a problem of a file clusters.json names (a user manifests folder), not of clusters.json itself: only the
    # commands that build the lab refuse it (validate, plan, install: validation.support_problems), so a moved
    # folder does not lock the user out of `credentials`, `status`, `shutdown` or `destroy`
    of_file: bool = False

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(LabctlError):
    """clusters.json is unreadable or invalid; carries every problem found, not just the first."""

    exit_code = 2
    # A broken or hostile file can have thousands of problems: the message names the first ones (fixing those
    # usually fixes the rest) and each line stays short, so the output is bounded whatever the input is.
    MAX_SHOWN = 50
    MAX_LINE = 300

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        count = len(problems)
        lines = [f"{source}: {count} problem{'s' if count != 1 else ''}"]
        lines += [_clip(f"  - {p}", self.MAX_LINE) for p in problems[: self.MAX_SHOWN]]
        if count > self.MAX_SHOWN:
            lines.append(f"  … and {count - self.MAX_SHOWN} more (fix these first and run validate again)")
        super().__init__("\n".join(lines), hint="fix the fields named above and run `labctl validate` again")


# A path or message may carry the file's own characters (a key with a newline): shown escaped, one line each.
_CONTROL = {c: f"\\x{c:02x}" for c in [*range(32), 127]}


def _clip(text: str, limit: int) -> str:
    text = text[: limit * 4].translate(_CONTROL)
    return text if len(text) <= limit else text[: limit - 1] + "…"


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


class FileError(LabctlError):
    """A file of the lab (under .labctl/, a kubeconfig, the debug log) could not be written or read.

    Names the file, what went wrong (strerror) and the filesystem it is on (its mount point), and says what to do
    for the usual causes: a full disk (ENOSPC, EDQUOT), a read-only filesystem (EROFS), missing permissions.
    """

    def __init__(self, path, exc: OSError, doing: str = "write"):
        import errno
        import os

        self.path = str(path)
        self.errno = exc.errno
        mount = _mount_point(self.path)
        why = exc.strerror or str(exc) or type(exc).__name__
        message = f"cannot {doing} {self.path}: {why} (filesystem mounted at {mount})"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            hint = f"free some space on the filesystem at {mount}, then run the same command again"
        elif exc.errno == errno.EROFS:
            hint = f"the filesystem at {mount} is read-only: remount it read-write (or move the lab), then run again"
        elif exc.errno in (errno.EACCES, errno.EPERM):
            hint = f"{os.path.dirname(self.path)} must be writable by you; fix its owner or mode, then run again"
        else:
            hint = "fix the cause above, then run the same command again"
        super().__init__(message, hint)


def _mount_point(path: str) -> str:
    """The mount point of the filesystem `path` is on (the nearest existing ancestor that is a mount)."""
    import os

    current = os.path.abspath(path)
    while not os.path.exists(current) and current != os.path.dirname(current):
        current = os.path.dirname(current)
    while not os.path.ismount(current):
        current = os.path.dirname(current)
    return current
