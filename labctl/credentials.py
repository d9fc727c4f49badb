"""The admin passwords of the lab's stacks (Grafana, Argo CD, Jenkins, ...): generated once per lab, kept 0600.

`.labctl/credentials.json` holds `{cluster: {name: {"user", "password", "created"}}}`. A password is made the first
time a stack needs it and never changes afterwards, so re-running install does not rotate anyone's login. It is
handed to the cluster only inside a Secret (server-side apply through the API), never on a command line, in a
Helm values file, a log or an event; `labctl credentials` prints it on request.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import secrets
import threading
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING

from . import redact
from .errors import FileError, LabctlError
from .state import write_atomic

if TYPE_CHECKING:
    from .stacks import Credential
    from .state import LabState

FILE = "credentials.json"
_lock = threading.Lock()  # stacks of several clusters are installed in parallel threads


@contextmanager
def _locked(state: LabState):
    """Threads of this process and other labctl processes (a `plan` beside an `install`) one at a time: a password
    written by one must never be overwritten by another's stale read."""
    with _lock:
        state.ensure()
        fd = os.open(state.root / f".{FILE}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _read(state: LabState) -> dict:
    """The stored credentials; every password read is registered for redaction (labctl/redact.py)."""
    path = state.root / FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise FileError(path, exc, "read") from None
    except ValueError:
        data = None
    if not isinstance(data, dict) or not all(
            isinstance(table, dict) and all(isinstance(e, dict) and isinstance(e.get("password"), str)
                                            for e in table.values()) for table in data.values()):
        # Not rebuilt on its own: new passwords would lock everyone out of the stacks' logins without a word.
        raise LabctlError(
            f"{path} is damaged (not the {{cluster: {{name: {{user, password, created}}}}}} JSON labctl writes)",
            hint="restore it from a backup; or move it away and run `labctl install`: it generates new passwords "
            "and puts them into the stacks' Secrets",
        )
    redact.register(*(e["password"] for table in data.values() for e in table.values()))
    return data


def read_all(state: LabState) -> dict[str, dict[str, dict[str, str]]]:
    """Every credential generated so far: {cluster: {name: {"user", "password", "created"}}}."""
    with _lock:
        return _read(state)


def ensure(state: LabState, cluster: str, cred: Credential) -> dict[str, str]:
    """The credential `cred.name` of `cluster`, generated (24 URL-safe characters, ~144 bits) on first use.

    Returns {"user", "password", "created"}; `created` is an RFC 3339 UTC time (Argo CD's passwordMtime)."""
    with _locked(state):
        data = _read(state)
        entry = data.setdefault(cluster, {}).get(cred.name)
        if entry is None:
            entry = {"user": cred.user, "password": secrets.token_urlsafe(18),
                     "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            data[cluster][cred.name] = entry
            redact.register(entry["password"])
            state.ensure()
            write_atomic(state.root / FILE, json.dumps(data, indent=2, sort_keys=True) + "\n", 0o600)
        return entry


def forget(state: LabState, clusters: list[str]) -> None:
    if not (state.root / FILE).exists():
        return
    with _locked(state):
        data = _read(state)
        if any(c in data for c in clusters):
            write_atomic(state.root / FILE, json.dumps({k: v for k, v in data.items() if k not in clusters},
                                                       indent=2, sort_keys=True) + "\n", 0o600)


def extra_data(cred: Credential, entry: dict[str, str]) -> dict[str, str]:
    """The credential's `extra` keys with `{user}` and `{password}` replaced by the login (never bcrypt-hashed): how
    one Secret also carries the login in a client's own file format, e.g. Velero's AWS credentials file."""
    return {k: v.replace("{user}", entry["user"]).replace("{password}", entry["password"])
            for k, v in cred.extra.items()}


def secret_object(cred: Credential, entry: dict[str, str], stack: str) -> dict:
    """The Secret that carries one credential into the cluster (the chart reads it by name)."""
    from .stacks import STACK_LABEL

    password = entry["password"]
    if cred.hash == "bcrypt":
        import bcrypt

        password = bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()
    data = {cred.password_key: password, **extra_data(cred, entry)}
    if cred.user_key:
        data[cred.user_key] = entry["user"]
    if "admin.passwordMtime" in data:  # Argo CD: when the password was set
        data["admin.passwordMtime"] = entry["created"]
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": cred.secret, "namespace": cred.namespace,
                     "labels": {**cred.labels, STACK_LABEL: stack}},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def secret_matches(cred: Credential, entry: dict[str, str], live: dict | None) -> bool:
    """Does the live Secret hold this credential (for bcrypt: a hash of the password)?"""
    if live is None:
        return False
    data = {k: base64.b64decode(v).decode(errors="replace") for k, v in (live.get("data") or {}).items()}
    stored = data.get(cred.password_key)
    if stored is None:
        return False
    if cred.hash == "bcrypt":
        import bcrypt

        try:
            ok = bcrypt.checkpw(entry["password"].encode(), stored.encode())
        except ValueError:
            ok = False
    else:
        ok = stored == entry["password"]
    return ok and (cred.user_key is None or data.get(cred.user_key) == entry["user"]) and all(
        data.get(k) == v for k, v in extra_data(cred, entry).items() if k != "admin.passwordMtime")
