"""Server-side printing in the fake API server: the Tables `kubectl get` shows.

A GET that accepts `as=Table` (what `kubectl get` asks for) gets a meta.k8s.io/v1 Table for the kinds in `PRINTERS`
(Node, StorageClass, CertificateSigningRequest, APIService: the real server's columns, so `kubectl get` shows
`Ready`/`control-plane`, `(default)`, `Approved,Issued`, `True`); any other kind gets the plain object or list,
which kubectl prints as NAME and AGE. The server fills every column, the wide ones (priority 1) too; `kubectl get`
shows those only with `-o wide`.
"""

from __future__ import annotations

import copy
import datetime
from collections.abc import Callable

from tests.sim.kube_resources import ApiResource


def _human(s: int) -> str:
    """apimachinery's duration.HumanDuration: "5s", "3m20s", "2h5m", "2d"."""
    m, h, d = s // 60, s // 3600, s // 86400
    if s < 120:
        return f"{s}s"
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    return f"{d}d{h % 24}h" if d < 8 and h % 24 else f"{d}d"


def _age(obj: dict) -> str:
    """The AGE cell: the time since creationTimestamp."""
    try:
        created = datetime.datetime.strptime(obj["metadata"]["creationTimestamp"], "%Y-%m-%dT%H:%M:%SZ")
    except (KeyError, TypeError, ValueError):
        return "<unknown>"
    return _human(max(0, int((datetime.datetime.now(datetime.UTC).replace(tzinfo=None) - created).total_seconds())))


def _node_row(obj: dict) -> list:
    """printNode: Ready/NotReady/Unknown (+SchedulingDisabled), the roles from node-role.kubernetes.io/<role> labels
    (and kubernetes.io/role), then the wide columns from status.addresses and status.nodeInfo."""
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    shown = ["Unknown" if ready is None else "Ready" if ready.get("status") == "True" else "NotReady"]
    if spec.get("unschedulable"):
        shown.append("SchedulingDisabled")
    labels = obj["metadata"].get("labels") or {}
    roles = {k.removeprefix("node-role.kubernetes.io/") for k in labels if k.startswith("node-role.kubernetes.io/")}
    roles |= {labels["kubernetes.io/role"]} if labels.get("kubernetes.io/role") else set()
    roles.discard("")
    info = status.get("nodeInfo") or {}

    def address(kind: str) -> str:
        return next((a["address"] for a in status.get("addresses") or [] if a.get("type") == kind), "<none>")

    return [obj["metadata"]["name"], ",".join(shown), ",".join(sorted(roles)) or "<none>", _age(obj),
            info.get("kubeletVersion", ""), address("InternalIP"), address("ExternalIP"),
            info.get("osImage") or "<unknown>", info.get("kernelVersion") or "<unknown>",
            info.get("containerRuntimeVersion") or "<unknown>"]


def _storage_class_row(obj: dict) -> list:
    annotations = obj["metadata"].get("annotations") or {}
    default = "true" in (annotations.get("storageclass.kubernetes.io/is-default-class"),
                         annotations.get("storageclass.beta.kubernetes.io/is-default-class"))
    return [obj["metadata"]["name"] + (" (default)" if default else ""), obj.get("provisioner", ""),
            obj.get("reclaimPolicy") or "Delete", obj.get("volumeBindingMode") or "Immediate",
            bool(obj.get("allowVolumeExpansion")), _age(obj)]


def _csr_row(obj: dict) -> list:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    types = {c.get("type") for c in status.get("conditions") or []}
    condition = "Denied" if "Denied" in types else "Approved" if "Approved" in types else "Pending"
    condition += ",Failed" if "Failed" in types else ""
    condition += ",Issued" if status.get("certificate") else ""
    seconds = spec.get("expirationSeconds")
    return [obj["metadata"]["name"], _age(obj), spec.get("signerName") or "<none>", spec.get("username", ""),
            _human(int(seconds)) if seconds else "<none>", condition]


def _apiservice_row(obj: dict) -> list:
    service = (obj.get("spec") or {}).get("service")
    where = f"{service.get('namespace')}/{service.get('name')}" if service else "Local"
    available = next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == "Available"),
                     None)
    shown = "Unknown"
    if available is not None:
        shown = available.get("status", "Unknown")
        if shown != "True" and available.get("reason"):
            shown = f"{shown} ({available['reason']})"
    return [obj["metadata"]["name"], where, shown, _age(obj)]


# (group, plural) → ([(column, type[, priority])], the row's cells): the real printers' columns (kubernetes
# pkg/printers/internalversion, kube-aggregator's APIService table convertor); priority 1 = only with -o wide
PRINTERS: dict[tuple[str, str], tuple[list[tuple], Callable[[dict], list]]] = {
    ("", "nodes"): (
        [("Name", "string"), ("Status", "string"), ("Roles", "string"), ("Age", "string"), ("Version", "string"),
         ("Internal-IP", "string", 1), ("External-IP", "string", 1), ("OS-Image", "string", 1),
         ("Kernel-Version", "string", 1), ("Container-Runtime", "string", 1)], _node_row),
    ("storage.k8s.io", "storageclasses"): (
        [("Name", "string"), ("Provisioner", "string"), ("ReclaimPolicy", "string"), ("VolumeBindingMode", "string"),
         ("AllowVolumeExpansion", "string"), ("Age", "string")], _storage_class_row),
    ("certificates.k8s.io", "certificatesigningrequests"): (
        [("Name", "string"), ("Age", "string"), ("SignerName", "string"), ("Requestor", "string"),
         ("RequestedDuration", "string"), ("Condition", "string")], _csr_row),
    ("apiregistration.k8s.io", "apiservices"): (
        [("Name", "string"), ("Service", "string"), ("Available", "string"), ("Age", "string")], _apiservice_row),
}



def wants_table(res: ApiResource, headers) -> bool:
    """`kubectl get` asks for `application/json;as=Table;v=v1;g=meta.k8s.io` (then v1beta1, then plain JSON)."""
    accept = headers.get("Accept") or ""
    return "as=Table" in accept and (res.group, res.plural) in PRINTERS


def wants_metadata(headers) -> bool:
    """A metadata-only list (`application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1`): what `kubectl get
    -o name`-style readers and controllers' metadata informers ask for; the real server serves it for every kind."""
    return "as=PartialObjectMetadataList" in (headers.get("Accept") or "")


def metadata_list(objects: list[dict], resource_version: int) -> dict:
    """The real server's PartialObjectMetadataList: each object's metadata and nothing else."""
    return {"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": str(resource_version)},
            "items": [{"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                       "metadata": copy.deepcopy(obj.get("metadata") or {})} for obj in objects]}


def table(res: ApiResource, objects: list[dict], include: str, resource_version: int) -> dict:
    """The real server's Table: its printer's columns, one row per object with the object as `includeObject` asks
    (PartialObjectMetadata by default, Object, or None)."""
    columns, cells = PRINTERS[(res.group, res.plural)]
    rows = []
    for obj in objects:
        row: dict = {"cells": cells(obj)}
        if include == "Object":
            row["object"] = {"apiVersion": res.api_version, "kind": res.kind, **copy.deepcopy(obj)}
        elif include != "None":
            row["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                             "metadata": copy.deepcopy(obj.get("metadata") or {})}
        rows.append(row)
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": str(resource_version)},
            "columnDefinitions": [{"name": c[0], "type": c[1], "format": "name" if c[0] == "Name" else "",
                                   "description": "", "priority": c[2] if len(c) > 2 else 0} for c in columns],
            "rows": rows}
