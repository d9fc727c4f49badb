"""The kubeconfigs labctl keeps for the user: `.labctl/kubeconfig/<cluster>.yaml` and `merged.yaml`.

Each cluster's file is its control plane's admin.conf with two changes: the server is the control plane's current
address (`https://<ip>:6443`: the Mac does not resolve the stable API name the nodes use, and the API server
certificate carries the address as a SAN, so TLS verification stays on), and the cluster/user/context are named
`labctl-<cluster>` so several clusters live side by side in one file. `merged.yaml` holds one context per cluster;
writing or removing one cluster leaves the others' entries as they are, so `KUBECONFIG=.labctl/kubeconfig/
merged.yaml kubectl --context labctl-dev ...` keeps working across installs and destroys.

All files are 0600 (they hold cluster-admin client keys) and written atomically.
"""

from __future__ import annotations

import base64
import threading
from pathlib import Path
from typing import Any

from ..errors import LabctlError
from ..state import LabState, write_atomic

MERGED = "merged.yaml"
_merged_lock = threading.Lock()  # clusters are installed in parallel threads; merged.yaml is shared


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


def from_admin_conf(admin_conf: bytes | str, cluster: str, server: str) -> dict[str, Any]:
    """admin.conf (as kubeadm wrote it) → the kubeconfig labctl keeps for `cluster`, pointing at `server`."""
    src = _load(admin_conf, "admin.conf")
    context = _named(src.get("contexts"), src.get("current-context")).get("context", {})
    entry = dict(_named(src.get("clusters"), context.get("cluster")).get("cluster", {}))
    user = _named(src.get("users"), context.get("user")).get("user", {})
    if "certificate-authority-data" not in entry or not user:
        raise LabctlError("admin.conf has no CA or no user credentials; was kubeadm init interrupted?")
    entry["server"] = server
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


def read(state: LabState, cluster: str) -> dict[str, Any] | None:
    path = cluster_path(state, cluster)
    try:
        return _load(path.read_bytes(), str(path))
    except FileNotFoundError:
        return None


def server(config: dict[str, Any]) -> str | None:
    return (config.get("clusters") or [{}])[0].get("cluster", {}).get("server")


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
    with _merged_lock:
        merged = merge_entries(_read_merged(state), config, context_name(cluster))
        write_atomic(merged_path(state), _dump(merged), 0o600)
    return path


def merge_entries(into: dict[str, Any], config: dict[str, Any], name: str) -> dict[str, Any]:
    """Replace the cluster/user/context called `name` in `into` with config's; every other entry is kept."""
    for section in ("clusters", "users", "contexts"):
        kept = [item for item in into.get(section) or [] if item.get("name") != name]
        into[section] = kept + [item for item in config[section] if item.get("name") == name]
    if not into.get("current-context"):
        into["current-context"] = name
    return into


def export(state: LabState, clusters: list[str], target: Path) -> list[str]:
    """Merge the clusters' `labctl-<cluster>` entries into the user's kubeconfig (e.g. ~/.kube/config).

    Only those entries are replaced: the user's own clusters and contexts, and their current context, stay as
    they are. Returns the contexts written.
    """
    try:
        into = _load(target.read_bytes(), str(target))
    except FileNotFoundError:
        into = {"apiVersion": "v1", "kind": "Config", "preferences": {}}
    written = []
    for cluster in clusters:
        config = read(state, cluster)
        if config is not None:
            merge_entries(into, config, context_name(cluster))
            written.append(context_name(cluster))
    if written:
        write_atomic(target, _dump(into), 0o600)
    return written


def remove(state: LabState, cluster: str) -> None:
    """Forget a destroyed cluster: its file and its entries in merged.yaml."""
    cluster_path(state, cluster).unlink(missing_ok=True)
    name = context_name(cluster)
    with _merged_lock:
        path = merged_path(state)
        if not path.exists():
            return
        merged = _read_merged(state)
        for section in ("clusters", "users", "contexts"):
            merged[section] = [item for item in merged.get(section) or [] if item.get("name") != name]
        if merged.get("current-context") == name:
            merged["current-context"] = merged["contexts"][0]["name"] if merged["contexts"] else ""
        if merged["contexts"]:
            write_atomic(path, _dump(merged), 0o600)
        else:
            path.unlink()


def _read_merged(state: LabState) -> dict[str, Any]:
    path = merged_path(state)
    try:
        merged = _load(path.read_bytes(), str(path))
    except FileNotFoundError:
        merged = {}
    merged.setdefault("apiVersion", "v1")
    merged.setdefault("kind", "Config")
    merged.setdefault("preferences", {})
    return merged
