""".labctl/ beside clusters.json: what labctl did, the lock, logs, keys, kubeconfigs.

State is a record, not the truth: phases check the live world. The record says when each step last ran, with
what result and for which spec hash, so `plan` can say what changed in clusters.json since then and the summary
can point at logs. Everything here is written atomically (temp file + rename) and private files are 0600.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from . import redact
from .errors import FileError, LockedError

STATE_VERSION = 1


def write_atomic(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Write a whole file or nothing: readers see the old or the new content, never half of it.

    Raises FileError (naming the file and its filesystem) when it cannot be written: a full disk, a read-only
    filesystem, missing permissions. The old content, if any, is then left as it was."""
    raw = data.encode() if isinstance(data, str) else data
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise FileError(path, exc) from None
        raise


def private_opener(path: str, flags: int) -> int:
    """open()'s opener for private files: created 0600, and an older file made 0600 too."""
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
    except OSError:
        os.close(fd)
        raise
    return fd


def _load_record(path: Path) -> dict | None:
    """The record in `path` if it is readable, JSON, and of the record's shape; None otherwise."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    data.setdefault("steps", {})
    data.setdefault("specs", {})
    tables_ok = all(isinstance(data.get(k), dict) for k in ("steps", "specs")) and \
        isinstance(data.get("stacks", {}), dict)
    return data if tables_ok else None


class LabState:
    """The .labctl directory of one lab. Creating this object writes nothing; the first write creates the dir."""

    def __init__(self, root: Path):
        self.root = root
        self.path = root / "state.json"
        self._mutex = threading.Lock()
        self._lock_fd: int | None = None
        # Writes that failed without stopping the run (a node log line, a step record): the CLI reports the first
        # after the summary and exits non-zero. One per file: a full disk fails every later line the same way.
        self.write_failures: dict[str, FileError] = {}
        # `--wait`: wait for another labctl holding the lab's lock instead of exiting (Terraform starts one labctl
        # per resource, several at once)
        self.wait_for_lock = False

    # -- layout ---------------------------------------------------------------------------------------------
    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def ssh_dir(self) -> Path:
        return self.root / "ssh"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    @property
    def kubeconfigs(self) -> Path:
        return self.root / "kubeconfig"

    def node_log(self, node: str) -> Path:
        return self.logs / f"{node}.log"

    def forget_node_logs(self, node: str) -> None:
        """Delete a node's logs: labctl's own, and its VM's (the `tart run` log, the QEMU console; the providers'
        log_path)."""
        for path in (self.node_log(node), self.logs / f"{node}.tart.log", self.logs / f"{node}.console.log"):
            path.unlink(missing_ok=True)

    @property
    def last_good(self) -> Path:
        """A second copy of state.json, written after it: the record survives the loss of either file."""
        return self.root / "state.last-good.json"

    def ensure(self) -> None:
        """Create .labctl/ and logs/ (0700: the logs are private too). Raises FileError when it cannot."""
        for path in (self.root, self.logs):
            try:
                path.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise FileError(path, exc) from None

    def failed_write(self, error: FileError) -> None:
        """Remember a write that failed while the run went on (see `write_failures`)."""
        with contextlib.suppress(Exception):
            logging.getLogger("labctl").debug("write failed: %s", error)
        self.write_failures.setdefault(error.path, error)

    # -- the record -----------------------------------------------------------------------------------------
    def read(self) -> dict:
        """The record: {"version", "steps": {step id: {...}}, "specs": {"cluster[/node]": hash}, "stacks"?: {...}}.

        Read-only: a damaged state.json (unreadable, not JSON, or not of this shape) is not moved here; the last-good
        copy stands in for it, else an empty record (the live checks are the truth). `update` moves it aside."""
        data, _ = self._read()
        return data

    def _read(self) -> tuple[dict, bool]:
        """(record, whether state.json is damaged)."""
        data = _load_record(self.path)
        if data is not None:
            return data, False
        damaged = self.path.exists()
        return _load_record(self.last_good) or {"version": STATE_VERSION, "steps": {}, "specs": {}}, damaged

    def update(self, change) -> dict:
        """Read-modify-write under a thread lock; `change(data)` edits the dict in place.

        Writes state.json, then the last-good copy. A damaged state.json is first kept for a post-mortem as
        state.json.corrupt-<unix time>. Raises FileError when a file cannot be written."""
        with self._mutex:
            data, damaged = self._read()
            change(data)
            self.ensure()
            if damaged:
                aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
                try:
                    self.path.replace(aside)
                except OSError as exc:
                    raise FileError(self.path, exc, "move aside the damaged") from None
            text = json.dumps(data, indent=2, sort_keys=True) + "\n"
            write_atomic(self.path, text, 0o600)
            write_atomic(self.last_good, text, 0o600)
            return data

    def record_step(self, step_id: str, status: str, detail: str, elapsed: float, spec: str | None) -> None:
        def change(data: dict) -> None:
            data["steps"][step_id] = {
                "status": status,
                "detail": redact.redact(detail)[-2000:],
                "elapsed": round(elapsed, 3),
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "spec": spec,
            }

        self.update(change)

    def set_specs(self, specs: dict[str, str]) -> None:
        self.update(lambda data: data["specs"].update(specs))

    def forget(self, prefixes: list[str]) -> None:
        """Drop the record of nodes/clusters that were destroyed (`phase:cluster/node` and spec keys)."""

        def change(data: dict) -> None:
            for table in ("steps", "specs"):
                for key in list(data[table]):
                    where = key.split(":", 1)[-1]
                    if any(where == p or where.startswith(p + "/") for p in prefixes):
                        del data[table][key]
            for cluster in prefixes:  # the stacks installed on a destroyed cluster went with it
                data.get("stacks", {}).pop(cluster, None)

        if self.path.exists():
            self.update(change)

    # -- logs -----------------------------------------------------------------------------------------------
    def log(self, node: str, text: str) -> None:
        """Append to the node's log (0600), secrets masked. A failed write never fails the step that logs: it is
        remembered (`write_failures`) and reported after the run."""
        stamp = time.strftime("%H:%M:%S")
        path = self.node_log(node)
        lines = "".join(f"{stamp} {line}\n" for line in redact.redact(text).rstrip("\n").splitlines() or [""])
        try:
            self.ensure()
            with self._mutex, open(path, "a", encoding="utf-8", opener=private_opener) as f:
                f.write(lines)
        except FileError as exc:
            self.failed_write(exc)
        except OSError as exc:
            self.failed_write(FileError(path, exc))

    # -- the lock -------------------------------------------------------------------------------------------
    @property
    def lock_path(self) -> Path:
        return self.root / "lock"

    @contextmanager
    def locked(self, command: str):
        """Only one labctl works on a lab at a time; a second one exits at once and says who holds it.

        The lock is flock(2) on .labctl/lock. A whole-lab destroy removes that file (`remove_lock`, while holding
        it); a process that opened the old file before must not count a lock on it, so after locking it checks that
        the file it locked is still the one at the path, and starts over if not. Raises LockedError when busy,
        FileError when .labctl cannot be written."""
        fd = self._lock_file()
        try:
            holder = f"pid {os.getpid()} running `labctl {command}` since {time.strftime('%H:%M:%S')}"
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder.encode(), 0)
        except OSError as exc:
            os.close(fd)  # closing releases the lock
            raise FileError(self.lock_path, exc) from None
        self._lock_fd = fd
        try:
            yield
        finally:
            self._lock_fd = None
            with contextlib.suppress(OSError):  # the holder text is a courtesy; a full disk must not mask the result
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _lock_file(self) -> int:
        """An fd holding the flock on the file that is at .labctl/lock now."""
        while True:
            try:
                self.ensure()
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            except (FileNotFoundError, FileError) as exc:
                if getattr(exc, "errno", None) not in (errno.ENOENT, errno.EEXIST):
                    raise
                continue  # .labctl was being removed meanwhile (a destroy finishing): make it again
            except OSError as exc:
                raise FileError(self.lock_path, exc) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.wait_for_lock else fcntl.LOCK_NB))
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another labctl process"
                os.close(fd)
                raise LockedError(
                    f"this lab is busy: {holder}",
                    hint="wait for it to finish (or stop it with Ctrl-C); the lock is released when that process "
                    "exits",
                ) from None
            try:
                now = os.stat(self.lock_path)
            except FileNotFoundError:
                now = None
            mine = os.fstat(fd)
            if now is not None and (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
                return fd
            os.close(fd)  # locked a file a destroy removed meanwhile: whoever holds the new one holds the lab

    def remove_lock(self) -> None:
        """Remove .labctl/lock while holding it (only inside `locked`): removing it after the release would let
        one process lock the old file while another creates and locks a new one."""
        assert self._lock_fd is not None, "remove_lock() outside locked()"
        self.lock_path.unlink(missing_ok=True)
