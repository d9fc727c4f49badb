""".labctl/ beside clusters.json: what labctl did, the lock, logs, keys, kubeconfigs.

State is a record, not the truth: phases check the live world. The record says when each step last ran, with
what result and for which spec hash, so `plan` can say what changed in clusters.json since then and the summary
can point at logs. Everything here is written atomically (temp file + rename) and private files are 0600.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import LockedError

STATE_VERSION = 1


def write_atomic(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Write a whole file or nothing: readers see the old or the new content, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class LabState:
    """The .labctl directory of one lab. Creating this object writes nothing; the first write creates the dir."""

    def __init__(self, root: Path):
        self.root = root
        self.path = root / "state.json"
        self._mutex = threading.Lock()
        self._lock_fd: int | None = None

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

    def ensure(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)

    # -- the record -----------------------------------------------------------------------------------------
    def read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"version": STATE_VERSION, "steps": {}, "specs": {}}
        except (OSError, ValueError):
            # A damaged record must not stop the user: the live checks are the truth. Keep it for a post-mortem.
            self.path.replace(self.path.with_suffix(f".corrupt-{int(time.time())}"))
            return {"version": STATE_VERSION, "steps": {}, "specs": {}}
        data.setdefault("steps", {})
        data.setdefault("specs", {})
        return data

    def update(self, change) -> dict:
        """Read-modify-write under a thread lock; `change(data)` edits the dict in place."""
        with self._mutex:
            data = self.read()
            change(data)
            self.ensure()
            write_atomic(self.path, json.dumps(data, indent=2, sort_keys=True) + "\n", 0o600)
            return data

    def record_step(self, step_id: str, status: str, detail: str, elapsed: float, spec: str | None) -> None:
        def change(data: dict) -> None:
            data["steps"][step_id] = {
                "status": status,
                "detail": detail[-2000:],
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
        self.ensure()
        stamp = time.strftime("%H:%M:%S")
        with self._mutex, open(self.node_log(node), "a", encoding="utf-8") as f:
            for line in text.rstrip("\n").splitlines() or [""]:
                f.write(f"{stamp} {line}\n")

    # -- the lock -------------------------------------------------------------------------------------------
    @contextmanager
    def locked(self, command: str):
        """Only one labctl works on a lab at a time; a second one exits at once and says who holds it."""
        self.ensure()
        lock_path = self.root / "lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another labctl process"
            os.close(fd)
            raise LockedError(
                f"this lab is busy: {holder}",
                hint="wait for it to finish (or stop it with Ctrl-C); the lock is released when that process exits",
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} running `labctl {command}` since {time.strftime('%H:%M:%S')}".encode(), 0)
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
