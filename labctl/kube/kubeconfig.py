"""The kubeconfigs labctl keeps for the user: `.labctl/kubeconfig/<cluster>.yaml` and `merged.yaml`.

Each cluster's file is its control plane's admin.conf with two changes: the server is the control plane's current
address (`https://<ip>:6443`: the Mac does not resolve the stable API name the nodes use, and the API server
certificate carries the address as a SAN, so TLS verification stays on), and the cluster/user/context are named
`labctl-<cluster>` so several clusters live side by side in one file. A cluster with several masters is reached
through labctl's forwarder instead (`https://127.0.0.1:<port>` with `tls-server-name: <cluster>-api.labctl.internal`,
labctl/apiproxy.py), so the file keeps working whichever master is off. `merged.yaml` holds one context per cluster;
writing or removing one cluster leaves the others' entries as they are, so `KUBECONFIG=.labctl/kubeconfig/
merged.yaml kubectl --context labctl-dev ...` keeps working across installs and destroys.

All files are 0600 (they hold cluster-admin client keys) and written atomically.

`kubeconfig --merge` also copies a cluster's entries into the user's own kubeconfig (`export`). Where it wrote them
is recorded in .labctl/state.json, so that whenever labctl rewrites its own file (an address repair on `boot`, a new
install) those copies follow (`sync_merged`) and `destroy` takes them out again (`remove`): without that, after two
masters swapped addresses the user's `labctl-dev` context would reach prod's API server.
"""

from __future__ import annotations

import base64
import contextlib
import os
import stat
import threading
from pathlib import Path
from typing import Any

from ..errors import LabctlError
from ..state import LabState, write_atomic

MERGED = "merged.yaml"
MERGES = "kubeconfig_merges"  # state.json: cluster → the user kubeconfigs `kubeconfig --merge` wrote its entries to
SECTIONS = ("clusters", "users", "contexts")
# Clusters are installed in parallel threads and share files: merged.yaml, and a user kubeconfig holding several
# clusters' contexts. Every read-modify-write of one holds this lock, or one cluster's write loses the other's.
_files_lock = threading.Lock()


def context_name(cluster: str) -> str:
    return f"labctl-{cluster}"


def cluster_path(state: LabState, cluster: str) -> Path:
    return state.kubeconfigs / f"{cluster}.yaml"


def merged_path(state: LabState) -> Path:
    return state.kubeconfigs / MERGED


def _load(text: bytes | str, source: str) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise LabctlError(f"{source} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise LabctlError(f"{source} is not a kubeconfig (no mapping at the top)")
    return data


def _dump(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def _named(items: list[dict] | None, name: str | None) -> dict:
    for item in items or []:
        if item.get("name") == name:
            return item
    return (items or [{}])[0]


def from_admin_conf(admin_conf: bytes | str, cluster: str, server: str,
                    tls_server_name: str | None = None) -> dict[str, Any]:
    """admin.conf (as kubeadm wrote it) → the kubeconfig labctl keeps for `cluster`, pointing at `server`.

    `tls_server_name`: the name the API server certificate is verified against (and sent as SNI) when `server` is not
    one of its SANs: an HA cluster's host endpoint is labctl's forwarder on 127.0.0.1 (labctl/apiproxy.py), and the
    certificate names the stable API name (controlPlaneEndpoint). kubectl and client-go read the field as
    `clusters[].cluster.tls-server-name` (kubernetes.io/docs/reference/config-api/kubeconfig.v1/#Cluster)."""
    src = _load(admin_conf, "admin.conf")
    context = _named(src.get("contexts"), src.get("current-context")).get("context", {})
    entry = dict(_named(src.get("clusters"), context.get("cluster")).get("cluster", {}))
    user = _named(src.get("users"), context.get("user")).get("user", {})
    if "certificate-authority-data" not in entry or not user:
        raise LabctlError("admin.conf has no CA or no user credentials; was kubeadm init interrupted?")
    entry["server"] = server
    entry.pop("tls-server-name", None)
    if tls_server_name:
        entry["tls-server-name"] = tls_server_name
    name = context_name(cluster)
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": entry}],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
        "preferences": {},
    }


class DamagedKubeconfig(LabctlError):
    """A kubeconfig labctl keeps is empty or not a kubeconfig; `install` (its init step) fetches it anew."""


def read(state: LabState, cluster: str) -> dict[str, Any] | None:
    """The cluster's kubeconfig; None when there is none. Raises DamagedKubeconfig (with the fix) when damaged."""
    path = cluster_path(state, cluster)
    try:
        return _load(path.read_bytes(), str(path))
    except FileNotFoundError:
        return None
    except LabctlError as exc:
        raise DamagedKubeconfig(f"{exc.message}: the kubeconfig of {cluster} is damaged",
                                hint=f"`labctl install --cluster {cluster} --from init` fetches it again from the "
                                "control plane") from None


def merged_problem(state: LabState) -> str | None:
    """Why merged.yaml cannot be used as it is (damaged), or None (fine, or not there)."""
    path = merged_path(state)
    try:
        _load(path.read_bytes(), str(path))
    except FileNotFoundError:
        return None
    except LabctlError as exc:
        return exc.message
    return None


def server(config: dict[str, Any]) -> str | None:
    return (config.get("clusters") or [{}])[0].get("cluster", {}).get("server")


def tls_server_name(config: dict[str, Any]) -> str | None:
    return (config.get("clusters") or [{}])[0].get("cluster", {}).get("tls-server-name")


def ca_pem(config: dict[str, Any]) -> bytes:
    data = (config.get("clusters") or [{}])[0].get("cluster", {}).get("certificate-authority-data", "")
    return base64.b64decode(data)


def same_pem(a: bytes, b: bytes) -> bool:
    """PEM blobs equal up to whitespace (line endings, a trailing newline)."""
    return b"".join(a.split()) == b"".join(b.split())


def write(state: LabState, cluster: str, config: dict[str, Any]) -> Path:
    """Write the cluster's kubeconfig and update its entries in merged.yaml (others untouched)."""
    state.ensure()
    state.kubeconfigs.mkdir(mode=0o700, exist_ok=True)
    path = cluster_path(state, cluster)
    write_atomic(path, _dump(config), 0o600)
    with _files_lock:
        merged = merge_entries(_read_merged(state), config, context_name(cluster))
        write_atomic(merged_path(state), _dump(merged), 0o600)
    return path


def merge_entries(into: dict[str, Any], config: dict[str, Any], name: str) -> dict[str, Any]:
    """Replace the cluster/user/context called `name` in `into` with config's; every other entry is kept."""
    _replace(into, config, name, SECTIONS)
    if not into.get("current-context"):
        into["current-context"] = name
    return into


def merge_target(name: str, kubeconfig_env: str | None, home: Path) -> Path:
    """The user kubeconfig kubectl itself would write the context `name` to.

    kubectl's rule (kubernetes.io/docs/reference/kubectl/generated/kubectl_config/): without $KUBECONFIG,
    ~/.kube/config; with it, a list of paths (os.pathsep) where "a value is modified in the file that defines the
    stanza", "created in the first file that exists", and "if no files in the chain exist, ... the last file".
    """
    paths = [Path(p).expanduser() for p in (kubeconfig_env or "").split(os.pathsep) if p]
    if not paths:
        return home / ".kube" / "config"
    for path in paths:
        if _holds(_read_user(path) or {}, name):
            return path
    existing = [p for p in paths if p.exists()]
    return existing[0] if existing else paths[-1]


def export(state: LabState, clusters: list[str], kubeconfig_env: str | None, home: Path) -> list[tuple[str, Path]]:
    """Merge the clusters' `labctl-<cluster>` entries into the user's kubeconfig(s), chosen by `merge_target`.

    Only those entries are replaced: the user's own clusters and contexts and their current context stay as they
    are (`_write_user` says what happens to the file's mode). Each target is recorded in the state so that `sync_merged` keeps
    it current and `remove` cleans it. Returns (context, file) for every context written. Raises LabctlError for a
    target that is not a kubeconfig, OSError when it cannot be written.
    """
    by_target: dict[Path, list[tuple[str, dict]]] = {}
    for cluster in clusters:
        config = read(state, cluster)
        if config is not None:
            target = merge_target(context_name(cluster), kubeconfig_env, home)
            by_target.setdefault(target, []).append((cluster, config))
    written = []
    for target, entries in by_target.items():
        with _files_lock:
            into = _read_user(target) or {"apiVersion": "v1", "kind": "Config", "preferences": {}}
            for cluster, config in entries:
                merge_entries(into, config, context_name(cluster))
            _write_user(target, into)
        for cluster, _ in entries:
            _record(state, cluster, target, keep=True)
            written.append((context_name(cluster), target))
    return written


def stale_merged(state: LabState, cluster: str) -> list[Path]:
    """Read-only: the recorded user kubeconfigs whose `labctl-<cluster>` entries differ from labctl's own file
    (another server address, CA or client credentials). Files that are gone or no longer hold them are not stale."""
    config = read(state, cluster)
    if config is None:
        return []
    out = []
    for path in _recorded(state, cluster):
        try:
            into = _read_user(path)
        except (OSError, LabctlError):
            out.append(path)  # unreadable: it cannot be told current
            continue
        if into is not None and _holds(into, context_name(cluster)) and not _current(into, config, cluster):
            out.append(path)
    return out


def sync_merged(state: LabState, cluster: str) -> list[str]:
    """Make the `labctl-<cluster>` entries in every user kubeconfig `kubeconfig --merge` wrote them to match labctl's
    own file again; called whenever labctl rewrote that file. A file that is gone, or no longer holds the entries
    (the user removed them), is forgotten quietly. Returns one line per file refreshed, and per file that could not
    be written: which context is stale there and the command that fixes it. Never raises for a user's file.
    """
    config = read(state, cluster)
    name = context_name(cluster)
    lines, forget = [], []
    for path in _recorded(state, cluster):
        try:
            with _files_lock:
                into = _read_user(path)
                if into is None or not _holds(into, name):
                    forget.append(path)
                    continue
                if config is None or _current(into, config, cluster):
                    continue
                _replace(into, config, name, ("clusters", "users"))  # the context (maybe the user's namespace) is kept
                _write_user(path, into)
            lines.append(f"context {name} in {path} now points at {server(config)}")
        except (OSError, LabctlError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            lines.append(f"context {name} in {path} is stale ({reason}); fix it with "
                         f"`KUBECONFIG={path} labctl kubeconfig --merge --cluster {cluster}`")
    for path in forget:
        _record(state, cluster, path, keep=False)
    return lines


def _replace(into: dict[str, Any], config: dict[str, Any], name: str, sections: tuple[str, ...]) -> None:
    """In these sections, the entries called `name` in `into` become config's; every other entry is kept."""
    for section in sections:
        kept = [item for item in into.get(section) or [] if item.get("name") != name]
        into[section] = kept + [item for item in config[section] if item.get("name") == name]


def _holds(config: dict[str, Any], name: str) -> bool:
    return any(item.get("name") == name for item in config.get("contexts") or [])


def _current(into: dict[str, Any], config: dict[str, Any], cluster: str) -> bool:
    name = context_name(cluster)
    return all([i for i in into.get(s) or [] if i.get("name") == name] ==
               [i for i in config[s] if i.get("name") == name] for s in ("clusters", "users"))


def _read_user(path: Path) -> dict[str, Any] | None:
    """A user kubeconfig, or None when the file does not exist (an empty file is an empty config)."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    return _load(text, str(path)) if text.strip() else {}


def _write_user(path: Path, config: dict[str, Any]) -> None:
    """Atomically, through a symlink (~/.kube/config often is one). The owner's bits of an existing file are kept;
    group and others lose theirs, as the file now holds cluster-admin keys; a new file is 0600."""
    real = path.resolve()
    try:
        mode = stat.S_IMODE(real.stat().st_mode) & 0o700 or 0o600
    except FileNotFoundError:
        mode = 0o600
    write_atomic(real, _dump(config), mode)


def _recorded(state: LabState, cluster: str) -> list[Path]:
    return [Path(p) for p in state.read().get(MERGES, {}).get(cluster, [])]


def _record(state: LabState, cluster: str, path: Path, keep: bool) -> None:
    def change(data: dict) -> None:
        merges = data.setdefault(MERGES, {})
        paths = [p for p in merges.get(cluster, []) if p != str(path)] + ([str(path)] if keep else [])
        if paths:
            merges[cluster] = paths
        else:
            merges.pop(cluster, None)

    state.update(change)


def remove(state: LabState, cluster: str) -> None:
    """Forget a destroyed cluster: its file, its entries in merged.yaml and in the user kubeconfigs `kubeconfig
    --merge` wrote them to (a user file that cannot be written is left; the record of it goes either way)."""
    cluster_path(state, cluster).unlink(missing_ok=True)
    name = context_name(cluster)
    for path in _recorded(state, cluster):
        try:
            with _files_lock:
                into = _read_user(path)
                if into is not None and _holds(into, name):
                    _drop(into, name)
                    _write_user(path, into)
        except (OSError, LabctlError):
            pass  # the user's file is theirs: a leftover context there is not worth failing a destroy for
        _record(state, cluster, path, keep=False)
    with _files_lock:
        path = merged_path(state)
        if not path.exists():
            return
        merged = _read_merged(state)
        _drop(merged, name)
        if merged.get("current-context") == "":
            merged["current-context"] = merged["contexts"][0]["name"] if merged["contexts"] else ""
        if merged["contexts"]:
            write_atomic(path, _dump(merged), 0o600)
        else:
            path.unlink()


def _drop(config: dict[str, Any], name: str) -> None:
    """Remove the cluster/user/context called `name`; a current context naming it is unset."""
    for section in SECTIONS:
        config[section] = [item for item in config.get(section) or [] if item.get("name") != name]
    if config.get("current-context") == name:
        config["current-context"] = ""


def _read_merged(state: LabState) -> dict[str, Any]:
    path = merged_path(state)
    try:
        merged = _load(path.read_bytes(), str(path))
    except FileNotFoundError:
        merged = {}
    except LabctlError:  # damaged: rebuilt from the clusters' own files, which hold the same entries
        merged = {}
        for own in sorted(state.kubeconfigs.glob("*.yaml")):
            if own.name != MERGED:
                with contextlib.suppress(LabctlError, OSError):
                    merge_entries(merged, _load(own.read_bytes(), str(own)), context_name(own.stem))
    merged.setdefault("apiVersion", "v1")
    merged.setdefault("kind", "Config")
    merged.setdefault("preferences", {})
    return merged
