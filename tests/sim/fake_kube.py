"""A small fake Kubernetes API server for the simulated lab: the real kubernetes client talks to it over HTTP(S).

A generic REST server over an in-memory store (`Store`, the "etcd"), faithful where labctl could be wrong:

- Discovery: `/api`, `/api/v1`, `/apis`, `/apis/<group>`, `/apis/<group>/<version>` list the built-in resources
  (`BUILTIN`), every served version of every CustomResourceDefinition, and the groups of aggregated APIServices.
- CRDs: a CRD is Established the moment it is stored (as the real apiextensions server does within a second) and
  its resources are served from then on; a custom resource whose CRD does not exist is 404 "the server could not
  find the requested resource"; deleting a CRD deletes its custom resources and stops serving them.
- Writes: POST (409 when it exists, `generateName`), PUT, PATCH (merge, strategic as merge — refused for custom
  resources like the real server —, RFC 6902 json-patch, server-side apply), DELETE (a Status; a Namespace takes
  its objects with it, a CRD its custom resources). A namespaced object in a namespace that does not exist is 404
  `namespaces "x" not found`. A write naming a resourceVersion other than the current one is 409 Conflict.
  `metadata.generation` starts at 1 and goes up when anything but metadata and status changes. Subresources:
  `status` (the main resource ignores status, the subresource takes only status), `scale`, `approval` (CSRs: only
  the conditions), `eviction` (pods).
- Server-side apply: JSON-merge of the applied object (lists replaced), `metadata.managedFields` per manager and
  operation (lists are atomic fields), 409 on a conflict with another manager unless `force=true`. Unlike the real
  thing, a field dropped from a later apply is not removed.
- What the API server itself normalises, because a check comparing its own object with the live one would never
  converge otherwise: resource quantities in their canonical form (`1024Mi` → `1Gi`, `0.5` → `500m`, `1` → "1"),
  a Secret's `stringData` into `data`, defaults (replicas, Service type/ports/clusterIP/nodePort allocation,
  namespace name label), and validation errors a real server would give (NodePort taken or out of range, invalid
  quantities, selector not matching the template, CRD/APIService names, immutable fields).
- Aggregated APIs: an APIService with a `service` routes its group/version to a handler registered in
  `FakeKube.aggregated` while the APIService is Available; otherwise 503 like the real aggregator.
- Server-side printing: a GET that accepts `as=Table` (what `kubectl get` asks for) gets a meta.k8s.io/v1 Table
  for the kinds in `PRINTERS` (StorageClass, CertificateSigningRequest, APIService: the real server's columns, so
  `kubectl get` shows `(default)`, `Approved,Issued`, `True`); for any other kind the plain object or list, which
  kubectl prints as NAME and AGE.

Not simulated: controllers (the simulated lab adds its own: tests/sim/sim_lab.py), watch (405 — poll instead),
admission webhooks, finalizers (deletion is immediate), garbage collection by ownerReferences.

Optional TLS with a generated CA and a server certificate for given IP SANs, so the simulated lab can test what
happens when a node's address changes.
"""

from __future__ import annotations

import base64
import copy
import datetime
import ipaddress
import json
import random
import re
import ssl
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
# subresource → (group, version, kind) of what it serves ("" kind: the resource's own), verbs
SUBRESOURCES = {
    "status": (None, ("get", "patch", "update")),
    "approval": (None, ("get", "patch", "update")),
    "scale": (("autoscaling", "v1", "Scale"), ("get", "patch", "update")),
    "eviction": (("policy", "v1", "Eviction"), ("create",)),
}
NOT_FOUND = "the server could not find the requested resource"
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # apiserver's generateName suffix alphabet


@dataclass(frozen=True)
class ApiResource:
    """One resource as discovery lists it."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    singular: str = ""
    custom: bool = False  # served because a CRD says so

    @property
    def prefix(self) -> str:
        return f"apis/{self.group}/{self.version}" if self.group else f"api/{self.version}"

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """How the API server names it in messages: `deployments.apps`, `pods`."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def discovery(self) -> list[dict]:
        main = {"name": self.plural, "singularName": self.singular or self.kind.lower(),
                "namespaced": self.namespaced, "kind": self.kind, "verbs": list(VERBS)}
        if self.short_names:
            main["shortNames"] = list(self.short_names)
        if self.categories:
            main["categories"] = list(self.categories)
        out = [main]
        for sub in self.subresources:
            gvk, verbs = SUBRESOURCES[sub]
            entry = {"name": f"{self.plural}/{sub}", "singularName": "", "namespaced": self.namespaced,
                     "kind": gvk[2] if gvk else self.kind, "verbs": list(verbs)}
            if gvk:
                entry.update(group=gvk[0], version=gvk[1])
            out.append(entry)
        return out


def _r(gv: str, plural: str, kind: str, namespaced: bool = True, short: tuple = (), sub: tuple = (),
       cat: tuple = ()) -> ApiResource:
    group, _, version = gv.rpartition("/")
    return ApiResource(group, version, plural, kind, namespaced, short, sub, cat)


ALL = ("all",)
BUILTIN: tuple[ApiResource, ...] = (
    _r("v1", "configmaps", "ConfigMap", short=("cm",)),
    _r("v1", "endpoints", "Endpoints", short=("ep",)),
    _r("v1", "events", "Event", short=("ev",)),
    _r("v1", "limitranges", "LimitRange", short=("limits",)),
    _r("v1", "namespaces", "Namespace", False, ("ns",), ("status",)),
    _r("v1", "nodes", "Node", False, ("no",), ("status",)),
    _r("v1", "persistentvolumeclaims", "PersistentVolumeClaim", short=("pvc",), sub=("status",)),
    _r("v1", "persistentvolumes", "PersistentVolume", False, ("pv",), ("status",)),
    _r("v1", "pods", "Pod", short=("po",), sub=("eviction", "status"), cat=ALL),
    _r("v1", "resourcequotas", "ResourceQuota", short=("quota",), sub=("status",)),
    _r("v1", "secrets", "Secret"),
    _r("v1", "serviceaccounts", "ServiceAccount", short=("sa",)),
    _r("v1", "services", "Service", short=("svc",), sub=("status",), cat=ALL),
    _r("apps/v1", "controllerrevisions", "ControllerRevision"),
    _r("apps/v1", "daemonsets", "DaemonSet", short=("ds",), sub=("status",), cat=ALL),
    _r("apps/v1", "deployments", "Deployment", short=("deploy",), sub=("scale", "status"), cat=ALL),
    _r("apps/v1", "replicasets", "ReplicaSet", short=("rs",), sub=("scale", "status"), cat=ALL),
    _r("apps/v1", "statefulsets", "StatefulSet", short=("sts",), sub=("scale", "status"), cat=ALL),
    _r("autoscaling/v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", short=("hpa",), sub=("status",),
       cat=ALL),
    _r("batch/v1", "cronjobs", "CronJob", short=("cj",), sub=("status",), cat=ALL),
    _r("batch/v1", "jobs", "Job", sub=("status",), cat=ALL),
    _r("policy/v1", "poddisruptionbudgets", "PodDisruptionBudget", short=("pdb",), sub=("status",)),
    _r("rbac.authorization.k8s.io/v1", "clusterrolebindings", "ClusterRoleBinding", False),
    _r("rbac.authorization.k8s.io/v1", "clusterroles", "ClusterRole", False),
    _r("rbac.authorization.k8s.io/v1", "rolebindings", "RoleBinding"),
    _r("rbac.authorization.k8s.io/v1", "roles", "Role"),
    _r("storage.k8s.io/v1", "storageclasses", "StorageClass", False, ("sc",)),
    _r("networking.k8s.io/v1", "ingressclasses", "IngressClass", False),
    _r("networking.k8s.io/v1", "ingresses", "Ingress", short=("ing",), sub=("status",)),
    _r("networking.k8s.io/v1", "networkpolicies", "NetworkPolicy", short=("netpol",)),
    _r("discovery.k8s.io/v1", "endpointslices", "EndpointSlice"),
    _r("scheduling.k8s.io/v1", "priorityclasses", "PriorityClass", False, ("pc",)),
    _r("coordination.k8s.io/v1", "leases", "Lease"),
    _r("certificates.k8s.io/v1", "certificatesigningrequests", "CertificateSigningRequest", False, ("csr",),
       ("approval", "status")),
    _r("admissionregistration.k8s.io/v1", "mutatingwebhookconfigurations", "MutatingWebhookConfiguration", False),
    _r("admissionregistration.k8s.io/v1", "validatingwebhookconfigurations", "ValidatingWebhookConfiguration",
       False),
    _r("apiextensions.k8s.io/v1", "customresourcedefinitions", "CustomResourceDefinition", False, ("crd", "crds"),
       ("status",)),
    _r("apiregistration.k8s.io/v1", "apiservices", "APIService", False, (), ("status",)),
)
_BUILTIN = {(r.prefix, r.plural): r for r in BUILTIN}
CRD_PREFIX, CRDS = "apis/apiextensions.k8s.io/v1", "customresourcedefinitions"
APISERVICE_PREFIX, APISERVICES = "apis/apiregistration.k8s.io/v1", "apiservices"
# kept for callers of the first version of this module: (prefix, plural) -> (kind, namespaced) of the built-ins
RESOURCES = {key: (r.kind, r.namespaced) for key, r in _BUILTIN.items()}
PATH = re.compile(
    r"^/(?P<prefix>api/v1|apis/[^/]+/[^/]+)"
    r"(?:/namespaces/(?P<ns>[^/]+)(?=/[^/]))?"
    r"/(?P<plural>[a-z0-9]+)(?:/(?P<name>[^/]+))?(?:/(?P<sub>[a-z]+))?$"
)
# Kinds whose objects carry no metadata.generation on a real server.
NO_GENERATION = {("", p) for p in ("configmaps", "secrets", "events", "endpoints", "serviceaccounts", "namespaces",
                                   "nodes", "pods")} | {("coordination.k8s.io", "leases")}
# Objects whose status the server resets on create: everything with a status subresource but Nodes (the kubelet
# registers a Node with its status) and Namespaces (born Active).
KEEP_STATUS_ON_CREATE = {("", "nodes")}


def crd_object(group: str, version: str, plural: str, kind: str, scope: str = "Namespaced",
               short_names: tuple[str, ...] = (), versions: list[str] | None = None,
               categories: tuple[str, ...] = ()) -> dict:
    """A minimal but valid CustomResourceDefinition (schema: anything goes), served at `versions` (default: just
    `version`, the storage version), with a status subresource."""
    names = {"plural": plural, "singular": kind.lower(), "kind": kind, "listKind": f"{kind}List"}
    if short_names:
        names["shortNames"] = list(short_names)
    if categories:
        names["categories"] = list(categories)
    schema = {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {"group": group, "names": names, "scope": scope,
                 "versions": [{"name": v, "served": True, "storage": v == version, "schema": schema,
                               "subresources": {"status": {}}} for v in (versions or [version])]},
    }


# Custom resources a test (or the simulated lab) may put straight into the store: their CRD comes along, as on a
# real cluster, where such an object cannot exist without it (Cilium's operator registers these).
KNOWN_CRDS = {
    ("apis/cilium.io/v2", "ciliumnodes"): crd_object("cilium.io", "v2", "ciliumnodes", "CiliumNode", "Cluster",
                                                      ("cn", "ciliumn")),
}


class ApiError(Exception):
    """An error answer: HTTP code, Status reason and message (as the real server words them)."""

    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def body(self) -> dict:
        out = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": self.message,
               "reason": self.reason, "code": self.code}
        if self.details is not None:
            out["details"] = self.details
        return out


def not_found(res: ApiResource | None, name: str) -> ApiError:
    if res is None:
        return ApiError(404, "NotFound", NOT_FOUND, {})
    return ApiError(404, "NotFound", f'{res.qualified} "{name}" not found',
                    {"name": name, "group": res.group, "kind": res.plural})


def invalid(res: ApiResource, name: str, causes: list[tuple[str, str]]) -> ApiError:
    """422 as the API server words it: `Kind.group "name" is invalid: field: message`."""
    what = f"{res.kind}.{res.group}" if res.group else res.kind
    text = ", ".join(f"{field}: {msg}" for field, msg in causes)
    return ApiError(422, "Invalid", f'{what} "{name}" is invalid: {text}',
                    {"name": name, "group": res.group, "kind": res.kind,
                     "causes": [{"reason": "FieldValueInvalid", "message": m, "field": f} for f, m in causes]})


def merge_patch(target, patch):
    """RFC 7386: dicts merge, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def json_patch(doc, ops: list) -> dict:
    """RFC 6902 (add, remove, replace, move, copy, test) on a copy of `doc`. Raises ValueError when an operation
    does not apply."""
    doc = copy.deepcopy(doc)

    def pointer(text: str) -> list[str]:
        if text == "":
            return []
        if not text.startswith("/"):
            raise ValueError(f"invalid JSON pointer {text!r}")
        return [p.replace("~1", "/").replace("~0", "~") for p in text[1:].split("/")]

    def parent(path: list[str]):
        node = doc
        for part in path[:-1]:
            node = node[int(part)] if isinstance(node, list) else node[part]
        return node, path[-1]

    def get(path: list[str]):
        node = doc
        for part in path:
            node = node[int(part)] if isinstance(node, list) else node[part]
        return node

    def add(path, value):
        node, key = parent(path)
        if isinstance(node, list):
            node.insert(len(node) if key == "-" else int(key), value)
        else:
            node[key] = value

    def remove(path):
        node, key = parent(path)
        if isinstance(node, list):
            return node.pop(int(key))
        return node.pop(key)

    for op in ops:
        try:
            kind, path = op["op"], pointer(op["path"])
            if kind == "add":
                add(path, copy.deepcopy(op["value"]))
            elif kind == "remove":
                remove(path)
            elif kind == "replace":
                remove(path)
                add(path, copy.deepcopy(op["value"]))
            elif kind == "move":
                add(path, remove(pointer(op["from"])))
            elif kind == "copy":
                add(path, copy.deepcopy(get(pointer(op["from"]))))
            elif kind == "test":
                if get(path) != op["value"]:
                    raise ValueError(f"testing value {op['path']} failed")
            else:
                raise ValueError(f"unexpected kind of operation {kind!r}")
        except (KeyError, IndexError, TypeError) as exc:
            raise ValueError(f"jsonpatch {op.get('op')} operation does not apply: doc is missing path: "
                             f"{op.get('path')}: {exc}") from None
    return doc


def version_priority(version: str) -> tuple:
    """Kubernetes' version order, highest first when sorted: GA, then beta, then alpha, larger numbers first."""
    m = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", version)
    if not m:
        return (3, 0, 0, version)
    level = {"alpha": 2, "beta": 1, None: 0}[m[2]]
    return (level, -int(m[1]), -int(m[3] or 0), "")


# ---- quantities: the API server stores them in canonical form ------------------------------------------------------

_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?\d+)?$")
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_DECIMAL_SUFFIX = {v: k for k, v in _DECIMAL.items()}
_BINARY_SUFFIX = {v: k for k, v in _BINARY.items()}


def canonical_quantity(value) -> str:
    """A resource.Quantity as the API server writes it back (apimachinery's CanonicalizeBytes): `1024Mi` → `1Gi`,
    `1.5` → `1500m`, `1000` → `1k`, `0.5Gi` → `512Mi`, a JSON number → its string. Raises ValueError for what the
    server refuses (e.g. `512MB`)."""
    text = str(value) if not isinstance(value, float) else repr(value)
    if isinstance(value, bool):
        raise ValueError(text)
    m = _QUANTITY.match(text.strip())
    if not m:
        raise ValueError(text)
    number, suffix = Fraction(m[1]), m[2] or ""
    if suffix in _BINARY:
        amount, fmt = number * 1024 ** _BINARY[suffix], "binary"
    elif suffix[:1] in ("e", "E"):
        amount, fmt = number * Fraction(10) ** int(suffix[1:]), "exponent"
    else:
        amount, fmt = number * Fraction(10) ** _DECIMAL[suffix], "decimal"
    if amount == 0:
        return "0"
    if fmt == "binary" and (-1024 < amount < 1024 or amount.denominator != 1):
        fmt = "decimal"  # apimachinery: avoids rounding (and confusion) below 1Ki or for fractions
    if fmt == "binary":
        mantissa, exp = int(amount), 0
        while mantissa % 1024 == 0 and exp < 6:
            mantissa, exp = mantissa // 1024, exp + 1
        return f"{mantissa}{_BINARY_SUFFIX.get(exp, '')}"
    exp = 0
    while amount.denominator != 1:
        amount, exp = amount * 10, exp - 1
    if exp < -9:  # nano is the finest precision; the server rounds up
        amount, exp = Fraction(-(-amount.numerator // 10 ** (-9 - exp))), -9
    mantissa = int(amount)
    while mantissa % 10 == 0:
        mantissa, exp = mantissa // 10, exp + 1
    mantissa *= 10 ** (exp % 3)
    exp -= exp % 3
    if fmt == "exponent":
        return f"{mantissa}e{exp}" if exp else str(mantissa)
    return f"{mantissa}{_DECIMAL_SUFFIX[exp]}" if exp in _DECIMAL_SUFFIX else f"{mantissa}e{exp}"


def _canonical_map(node: dict | None, field: str, errors: list) -> None:
    if not isinstance(node, dict):
        return
    for key, value in list(node.items()):
        try:
            node[key] = canonical_quantity(value)
        except ValueError:
            errors.append((f"{field}[{key}]", f'Invalid value: "{value}": quantities must match the regular '
                                              "expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"))


def _pod_spec_quantities(spec: dict | None, field: str, errors: list) -> None:
    if not isinstance(spec, dict):
        return
    for key in ("initContainers", "containers", "ephemeralContainers"):
        for i, container in enumerate(spec.get(key) or []):
            resources = container.get("resources") if isinstance(container, dict) else None
            for part in ("requests", "limits"):
                _canonical_map((resources or {}).get(part), f"{field}.{key}[{i}].resources.{part}", errors)
    for i, volume in enumerate(spec.get("volumes") or []):
        empty = volume.get("emptyDir") if isinstance(volume, dict) else None
        if isinstance(empty, dict) and "sizeLimit" in empty:
            holder = {"sizeLimit": empty["sizeLimit"]}
            _canonical_map(holder, f"{field}.volumes[{i}].emptyDir", errors)
            empty["sizeLimit"] = holder["sizeLimit"]
    _canonical_map(spec.get("overhead"), f"{field}.overhead", errors)


def canonical_quantities(group: str, plural: str, obj: dict) -> list[tuple[str, str]]:
    """Canonicalise every resource quantity of a built-in object in place; returns the invalid ones."""
    errors: list[tuple[str, str]] = []
    spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else None
    if spec is None:
        return errors
    if (group, plural) == ("", "pods"):
        _pod_spec_quantities(spec, "spec", errors)
    elif group in ("apps", "batch") and plural != "controllerrevisions":
        template = spec.get("jobTemplate", {}).get("spec", {}).get("template") if plural == "cronjobs" \
            else spec.get("template")
        if isinstance(template, dict):
            _pod_spec_quantities(template.get("spec"), "spec.template.spec", errors)
        for i, claim in enumerate(spec.get("volumeClaimTemplates") or []):
            for part in ("requests", "limits"):
                _canonical_map(((claim.get("spec") or {}).get("resources") or {}).get(part),
                               f"spec.volumeClaimTemplates[{i}].spec.resources.{part}", errors)
    elif (group, plural) == ("", "persistentvolumeclaims"):
        for part in ("requests", "limits"):
            _canonical_map((spec.get("resources") or {}).get(part), f"spec.resources.{part}", errors)
    elif (group, plural) == ("", "persistentvolumes"):
        _canonical_map(spec.get("capacity"), "spec.capacity", errors)
    elif (group, plural) == ("", "resourcequotas"):
        _canonical_map(spec.get("hard"), "spec.hard", errors)
    elif (group, plural) == ("", "limitranges"):
        for i, limit in enumerate(spec.get("limits") or []):
            for part in ("max", "min", "default", "defaultRequest", "maxLimitRequestRatio"):
                _canonical_map(limit.get(part), f"spec.limits[{i}].{part}", errors)
    return errors


# ---- managed fields (server-side apply's bookkeeping) -----------------------------------------------------------

_IDENTITY = {"name", "namespace", "uid", "resourceVersion", "creationTimestamp", "generation", "managedFields",
             "selfLink", "deletionTimestamp", "generateName"}


def _owned_part(obj: dict, status_only: bool, has_status: bool) -> dict:
    """The fields a write sets, for ownership: never the identity; status for a status write, else all but it."""
    if status_only:
        return {"status": obj.get("status")} if "status" in obj else {}
    out = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind") and not (has_status and k == "status")}
    if isinstance(out.get("metadata"), dict):
        out["metadata"] = {k: v for k, v in out["metadata"].items() if k not in _IDENTITY}
        if not out["metadata"]:
            del out["metadata"]
    return out


def leaf_paths(node, prefix: tuple = ()) -> set[tuple]:
    """Field paths down to values; lists (and empty maps) are atomic leaves."""
    if isinstance(node, dict) and node:
        out: set[tuple] = set()
        for key, value in node.items():
            out |= leaf_paths(value, (*prefix, key))
        return out
    return {prefix} if prefix else set()


def fields_v1(paths: set[tuple]) -> dict:
    out: dict = {}
    for path in sorted(paths):
        node = out
        for key in path:
            node = node.setdefault(f"f:{key}", {})
    return out


def paths_of(fields: dict, prefix: tuple = ()) -> set[tuple]:
    out: set[tuple] = set()
    for key, value in (fields or {}).items():
        if not key.startswith("f:"):
            continue
        path = (*prefix, key[2:])
        out |= paths_of(value, path) if value else {path}
    return out


def _overlaps(a: tuple, b: tuple) -> bool:
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def _at(obj, path: tuple):
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---- the store ("etcd") ---------------------------------------------------------------------------------------------

class Store:
    """Objects by (prefix, plural, namespace, name), thread-safe; counts every request for assertions.

    The raw writes here (`put`, `delete`) are etcd, not the API: no validation, no defaults, no namespace check —
    tests and the simulated controllers write through them. They keep the bookkeeping a reader expects (uid,
    creationTimestamp, resourceVersion, apiVersion/kind), establish a CRD when one is stored, and serve its kinds.
    A custom resource served at several versions is kept once, under its CRD's storage version."""

    def __init__(self, service_cidr: str = "10.96.0.0/12", node_ports: tuple[int, int] = (30000, 32767)):
        self.objects: dict[tuple[str, str, str, str], dict] = {}
        self.lock = threading.RLock()
        self.requests: list[tuple[str, str]] = []
        self.version = 1
        self.service_cidr = service_cidr
        self.node_ports = node_ports
        self._custom: dict[tuple[str, str], ApiResource] | None = None  # rebuilt after a CRD changes
        self._storage: dict[tuple[str, str], str] = {}  # (group, plural) → the storage version's prefix

    # -- what is served ------------------------------------------------------------------------------------------
    def _served(self) -> dict[tuple[str, str], ApiResource]:
        with self.lock:
            if self._custom is None:
                custom, storage = {}, {}
                for (p, pl, _, _), crd in sorted(self.objects.items()):
                    if (p, pl) != (CRD_PREFIX, CRDS):
                        continue
                    spec = crd.get("spec") or {}
                    names, group = spec.get("names") or {}, spec.get("group", "")
                    for v in spec.get("versions") or []:
                        res = ApiResource(group, v["name"], names["plural"], names["kind"],
                                          spec.get("scope") == "Namespaced", tuple(names.get("shortNames") or ()),
                                          tuple(s for s in ("scale", "status") if s in (v.get("subresources") or {})),
                                          tuple(names.get("categories") or ()), names.get("singular", ""), True)
                        if v.get("storage"):
                            storage[(group, names["plural"])] = res.prefix
                        if v.get("served", True):
                            custom[(res.prefix, res.plural)] = res
                self._rekey(storage)
                self._custom, self._storage = custom, storage
            return self._custom

    def _rekey(self, storage: dict[tuple[str, str], str]) -> None:
        """A CRD whose storage version changed: its objects move under the new one (a storage migration)."""
        for (group, plural), prefix in storage.items():
            old = self._storage.get((group, plural))
            if old and old != prefix:
                for key in [k for k in self.objects if k[0] == old and k[1] == plural]:
                    self.objects[(prefix, plural, key[2], key[3])] = self.objects.pop(key)

    def resources(self) -> list[ApiResource]:
        return [*BUILTIN, *self._served().values()]

    def resource(self, prefix: str, plural: str) -> ApiResource | None:
        return _BUILTIN.get((prefix, plural)) or self._served().get((prefix, plural))

    def resource_for(self, api_version: str, kind: str) -> ApiResource | None:
        return next((r for r in self.resources() if r.api_version == api_version and r.kind == kind), None)

    def _key_prefix(self, prefix: str, plural: str) -> str:
        res = self.resource(prefix, plural)
        if res is not None and res.custom:
            return self._storage.get((res.group, plural), prefix)
        return prefix

    # -- objects ----------------------------------------------------------------------------------------------
    def put(self, prefix: str, plural: str, obj: dict, namespace: str = "") -> dict:
        with self.lock:
            res = self.resource(prefix, plural)
            if res is None and (prefix, plural) in KNOWN_CRDS:
                self.put(CRD_PREFIX, CRDS, copy.deepcopy(KNOWN_CRDS[(prefix, plural)]))
                res = self.resource(prefix, plural)
            if res is None:
                raise KeyError(f"{prefix}/{plural} is not served (no such built-in, no CRD for it)")
            meta = obj.setdefault("metadata", {})
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _now())
            if res.namespaced:
                meta["namespace"] = namespace or meta.get("namespace") or "default"
            if (res.group, res.plural) not in NO_GENERATION:
                meta.setdefault("generation", 1)
            self.version += 1
            meta["resourceVersion"] = str(self.version)
            obj.setdefault("apiVersion", res.api_version)
            obj.setdefault("kind", res.kind)
            if (prefix, plural) == (CRD_PREFIX, CRDS):
                _establish(obj)
                self._custom = None
            self.objects[(self._key_prefix(prefix, plural), plural, meta.get("namespace", ""), meta["name"])] = obj
            return obj

    def get(self, prefix: str, plural: str, name: str, namespace: str = "") -> dict | None:
        with self.lock:
            return self.objects.get((self._key_prefix(prefix, plural), plural, namespace, name))

    def list(self, prefix: str, plural: str, namespace: str | None = None) -> list[dict]:
        with self.lock:
            prefix = self._key_prefix(prefix, plural)
            return [o for (p, pl, ns, _), o in sorted(self.objects.items())
                    if p == prefix and pl == plural and (namespace is None or ns == namespace)]

    def delete(self, prefix: str, plural: str, name: str, namespace: str = "") -> dict | None:
        with self.lock:
            gone = self.objects.pop((self._key_prefix(prefix, plural), plural, namespace, name), None)
            if gone is not None:
                self.version += 1
            if gone is not None and (prefix, plural) == (CRD_PREFIX, CRDS):
                # the CRD's custom resources go with it (the real server deletes them before the CRD)
                spec = gone.get("spec") or {}
                plural_ = (spec.get("names") or {}).get("plural")
                prefixes = {f"apis/{spec.get('group')}/{v['name']}" for v in spec.get("versions") or []}
                for key in [k for k in self.objects if k[1] == plural_ and k[0] in prefixes]:
                    del self.objects[key]
                self._custom = None
            if gone is not None and (prefix, plural) == ("api/v1", "namespaces"):
                for key in [k for k in self.objects if k[2] == name and (r := self.resource(k[0], k[1]))
                            and r.namespaced]:
                    del self.objects[key]
            return gone

    def ensure_namespaces(self, names=SYSTEM_NAMESPACES) -> None:
        """The namespaces kube-apiserver creates at its first start."""
        with self.lock:
            for name in names:
                if self.get("api/v1", "namespaces", name) is None:
                    self.put("api/v1", "namespaces", namespace_object(name))


def namespace_object(name: str, labels: dict | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {**(labels or {}), "kubernetes.io/metadata.name": name}},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}


def _establish(crd: dict) -> None:
    """What the apiextensions server does at once for a valid CRD: names accepted, Established."""
    spec = crd.get("spec") or {}
    names = dict(spec.get("names") or {})
    if names.get("kind"):
        names.setdefault("singular", names["kind"].lower())
        names.setdefault("listKind", f"{names['kind']}List")
    status = crd.get("status") or {}
    crd["status"] = status
    since = {c.get("type"): c.get("lastTransitionTime") for c in status.get("conditions") or []
             if c.get("status") == "True"}
    status["acceptedNames"] = names
    status["conditions"] = [
        {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found",
         "lastTransitionTime": since.get("NamesAccepted") or _now()},
        {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
         "message": "the initial names have been accepted", "lastTransitionTime": since.get("Established") or _now()},
    ]
    stored = [v["name"] for v in spec.get("versions") or [] if v.get("storage")]
    status["storedVersions"] = sorted(set(status.get("storedVersions") or []) | set(stored))


def _labels_match(labels: dict, selector: str) -> bool:
    """A label selector, equality- and set-based: `a=b`, `a==b`, `a!=b`, `a`, `!a`, `a in (x,y)`, `a notin (x)`.
    Raises ValueError when it does not parse."""
    terms, depth, current = [], 0, ""
    for ch in selector:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += ch
    terms.append(current)
    for term in filter(None, (t.strip() for t in terms)):
        if m := re.fullmatch(r"(\S+)\s+(in|notin)\s+\(([^)]*)\)", term):
            values = {v.strip() for v in m[3].split(",") if v.strip()}
            inside = m[1] in labels and labels[m[1]] in values
            if inside != (m[2] == "in"):
                return False
        elif m := re.fullmatch(r"([^\s!=]+)\s*(==|=|!=)\s*([^\s!=]*)", term):
            if (labels.get(m[1]) == m[3]) != (m[2] != "!="):
                return False
        elif m := re.fullmatch(r"(!?)([^\s!=()]+)", term):
            if (m[2] in labels) == bool(m[1]):
                return False
        else:
            raise ValueError(f"unable to parse requirement: {term!r}")
    return True


def _selected(obj: dict, query: dict[str, list[str]]) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    for sel in query.get("labelSelector", []):
        if not _labels_match(labels, sel):
            return False
    for sel in query.get("fieldSelector", []):
        for term in filter(None, sel.split(",")):
            m = re.fullmatch(r"([^!=]+)(==|=|!=)(.*)", term)
            if not m:
                raise ValueError(f"invalid field selector {term!r}")
            node = obj
            for part in m[1].split("."):
                node = node.get(part, {}) if isinstance(node, dict) else {}
            if (node == m[3]) == (m[2] == "!="):
                return False
    return True


# ---- the server ----------------------------------------------------------------------------------------------------

Aggregated = Callable[[str, list[str], dict[str, list[str]]], tuple[int, dict]]


class FakeKube:
    """One fake API server for one cluster. `serve()` is the whole API, the HTTP handler only carries it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, tls_sans: list[str] | None = None,
                 workdir: Path | None = None):
        self.store = Store()
        self.store.ensure_namespaces()
        self.host = host
        self.fail: Callable[[str, str], int | None] | None = None  # (method, path) -> status to fail with
        self.on_evict: Callable[[dict], None] | None = None
        # (group, version) → handler(method, path parts after the version, query) → (status, body), served while
        # the APIService `<version>.<group>` is Available (e.g. metrics.k8s.io from the simulated metrics-server)
        self.aggregated: dict[tuple[str, str], Aggregated] = {}
        handler = type("Handler", (_Handler,), {"kube": self})
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.ca_pem: bytes | None = None
        if tls_sans is not None:
            assert workdir is not None, "TLS needs a directory for the key and certificates"
            self.ca_pem = self._enable_tls(tls_sans, workdir)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True, name=f"fake-kube-{self.port}")

    @property
    def url(self) -> str:
        scheme = "https" if self.ca_pem else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def start(self) -> FakeKube:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def kubeconfig(self, cluster: str = "sim") -> dict:
        entry: dict = {"server": self.url}
        if self.ca_pem:
            entry["certificate-authority-data"] = base64.b64encode(self.ca_pem).decode()
        return {
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": cluster, "cluster": entry}],
            "users": [{"name": f"{cluster}-admin", "user": {"token": "sim"}}],
            "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": f"{cluster}-admin"}}],
            "current-context": cluster,
        }

    def _enable_tls(self, sans: list[str], workdir: Path) -> bytes:
        ca_pem, cert_pem, key_pem = make_certificates(sans)
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "server.crt").write_bytes(cert_pem + ca_pem)
        (workdir / "server.key").write_bytes(key_pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(workdir / "server.crt", workdir / "server.key")
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        return ca_pem

    # -- the API -----------------------------------------------------------------------------------------------
    def serve(self, method: str, path: str, query: dict[str, list[str]], headers, raw: bytes) -> tuple[int, object]:
        """One request → (HTTP status, JSON body or text)."""
        try:
            return self._serve(method, path, query, headers, raw)
        except ApiError as exc:
            return exc.code, exc.body()

    def _serve(self, method, path, query, headers, raw):
        parts = [p for p in path.split("/") if p]
        if path in ("/healthz", "/livez", "/readyz"):
            return 200, "ok"
        if path == "/version":
            return 200, {"major": "1", "minor": "35", "gitVersion": "v1.35.6", "platform": "linux/arm64"}
        if method == "GET" and parts == ["api"]:
            return 200, {"kind": "APIVersions", "versions": ["v1"],
                         "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                                         "serverAddress": f"{self.host}:{self.port}"}]}
        if method == "GET" and parts == ["apis"]:
            return 200, {"kind": "APIGroupList", "apiVersion": "v1",
                         "groups": [_group(g, vs) for g, vs in self._groups().items()]}
        if parts[:1] == ["apis"] and len(parts) >= 3 and (answer := self._aggregated(method, parts, query)):
            return answer
        if method == "GET" and len(parts) == 2 and parts[0] == "apis":
            versions = self._groups().get(parts[1])
            if not versions:
                raise ApiError(404, "NotFound", NOT_FOUND, {})
            return 200, {"kind": "APIGroup", "apiVersion": "v1", **_group(parts[1], versions)}
        if method == "GET" and (parts == ["api", "v1"] or (len(parts) == 3 and parts[0] == "apis")):
            prefix = "/".join(parts)
            listed = [r for r in self.store.resources() if r.prefix == prefix]
            if not listed:
                raise ApiError(404, "NotFound", NOT_FOUND, {})
            return 200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": listed[0].api_version,
                         "resources": [e for r in listed for e in r.discovery()]}
        route = self._route(parts)
        if route is None:
            raise ApiError(404, "NotFound", NOT_FOUND, {})
        return _Request(self.store, method, *route, query, headers, raw, self).run()

    def _groups(self) -> dict[str, list[str]]:
        """group → its versions, preferred first (built-ins, CRDs, aggregated APIServices)."""
        groups: dict[str, set[str]] = {}
        for res in self.store.resources():
            if res.group:
                groups.setdefault(res.group, set()).add(res.version)
        for svc in self.store.list(APISERVICE_PREFIX, APISERVICES):
            spec = svc.get("spec") or {}
            if spec.get("service") and spec.get("group"):
                groups.setdefault(spec["group"], set()).add(spec["version"])
        return {g: sorted(vs, key=version_priority) for g, vs in groups.items()}

    def _aggregated(self, method, parts, query):
        """A group/version an APIService with a service answers: its handler while Available, else 503."""
        svc = self.store.get(APISERVICE_PREFIX, APISERVICES, f"{parts[2]}.{parts[1]}")
        if svc is None or not (svc.get("spec") or {}).get("service"):
            return None
        available = any(c.get("type") == "Available" and c.get("status") == "True"
                        for c in (svc.get("status") or {}).get("conditions") or [])
        handler = self.aggregated.get((parts[1], parts[2]))
        if not available or handler is None:
            raise ApiError(503, "ServiceUnavailable", "the server is currently unable to handle the request",
                           {"group": parts[1], "kind": parts[3] if len(parts) > 3 else ""})
        return handler(method, parts[3:], query)

    def _route(self, parts: list[str]):
        """Path parts → (resource, namespace or None, name or None, subresource or None), None if no such route."""
        if parts[:1] == ["api"] and len(parts) >= 3 and parts[1] == "v1":
            prefix, rest = "api/v1", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 4:
            prefix, rest = "/".join(parts[:3]), parts[3:]
        else:
            return None
        ns = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            inner = self.store.resource(prefix, rest[2])
            if inner is not None and inner.namespaced:
                ns, rest = rest[1], rest[2:]
        if not 1 <= len(rest) <= 3:
            return None
        res = self.store.resource(prefix, rest[0])
        if res is None or (ns is not None and not res.namespaced):
            return None
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if name is not None and res.namespaced and ns is None:
            return None  # a namespaced object is only addressed inside its namespace
        if sub is not None and sub not in res.subresources:
            return None
        return res, ns, name, sub


# ---- server-side printing (the Tables `kubectl get` shows) -----------------------------------------------------

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


# (group, plural) → ([(column, type)], the row's cells): the real printers' columns (kubernetes
# pkg/printers/internalversion, kube-aggregator's APIService table convertor)
PRINTERS: dict[tuple[str, str], tuple[list[tuple[str, str]], Callable[[dict], list]]] = {
    ("storage.k8s.io", "storageclasses"): (
        [("Name", "string"), ("Provisioner", "string"), ("ReclaimPolicy", "string"), ("VolumeBindingMode", "string"),
         ("AllowVolumeExpansion", "string"), ("Age", "string")], _storage_class_row),
    ("certificates.k8s.io", "certificatesigningrequests"): (
        [("Name", "string"), ("Age", "string"), ("SignerName", "string"), ("Requestor", "string"),
         ("RequestedDuration", "string"), ("Condition", "string")], _csr_row),
    ("apiregistration.k8s.io", "apiservices"): (
        [("Name", "string"), ("Service", "string"), ("Available", "string"), ("Age", "string")], _apiservice_row),
}


def _group(name: str, versions: list[str]) -> dict:
    entries = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": entries, "preferredVersion": dict(entries[0])}


class _Request:
    """One resource request: the REST semantics of the real API server, on the store."""

    def __init__(self, store: Store, method: str, res: ApiResource, ns: str | None, name: str | None,
                 sub: str | None, query: dict[str, list[str]], headers, raw: bytes, kube: FakeKube | None = None):
        self.kube, self.store, self.method = kube, store, method
        self.res, self.ns, self.name, self.sub = res, ns, name, sub
        self.query, self.headers, self.raw = query, headers, raw

    def q(self, key: str, default: str = "") -> str:
        return (self.query.get(key) or [default])[0]

    @property
    def ctype(self) -> str:
        return (self.headers.get("Content-Type") or "application/json").split(";")[0].strip().lower()

    @property
    def manager(self) -> str:
        """fieldManager, or what the real server derives from the User-Agent (up to its first '/')."""
        agent = self.headers.get("User-Agent") or "unknown"
        return self.q("fieldManager") or agent.split("/", 1)[0]

    def body(self):
        text = self.raw or b"{}"
        try:
            if "yaml" in self.ctype:
                import yaml

                body = yaml.safe_load(text) or {}
            else:
                body = json.loads(text)
        except ValueError as exc:
            raise ApiError(400, "BadRequest", f"the body of the request was in an unknown format: {exc}") from None
        if not isinstance(body, dict | list):  # e.g. a JSON document that is a string: JSON encoded twice
            raise ApiError(400, "BadRequest", "couldn't get version/kind; json parse error: json: cannot unmarshal "
                                              f"{type(body).__name__.replace('str', 'string')} into Go value of type "
                                              'struct { APIVersion string "json:\\"apiVersion,omitempty\\""; Kind '
                                              'string "json:\\"kind,omitempty\\"" }')
        return body

    def run(self):
        with self.store.lock:
            if self.name is None:
                return self.collection()
            if self.sub == "eviction":
                return self.evict()
            if self.sub == "scale":
                return self.scale()
            if self.method == "GET":
                current = self.current(required=True)
                return 200, self.table([current]) if self.wants_table() else self.view(current)
            if self.method == "PUT":
                return self.put()
            if self.method == "PATCH":
                return self.patch()
            if self.method == "DELETE" and self.sub is None:
                return self.delete()
            raise ApiError(405, "MethodNotAllowed", f"the server does not allow this method on the requested "
                                                    f"resource ({self.method})")

    # -- reading --------------------------------------------------------------------------------------------------
    def current(self, required: bool = False) -> dict | None:
        obj = self.store.get(self.res.prefix, self.res.plural, self.name, self.ns or "")
        if obj is None and required:
            raise not_found(self.res, self.name)
        return obj

    def view(self, obj: dict, in_list: bool = False) -> dict:
        out = copy.deepcopy(obj)
        if self.res.custom:
            out["apiVersion"] = self.res.api_version  # served at the version asked for
        elif in_list:  # a real list of built-in objects carries apiVersion/kind only once, on the list
            out.pop("apiVersion", None)
            out.pop("kind", None)
        return out

    def collection(self):
        if self.method == "GET":
            if self.q("watch") in ("1", "true"):
                raise ApiError(405, "MethodNotAllowed", "watch is not simulated: poll instead")
            try:
                items = [self.view(o, in_list=True) for o in self.store.list(self.res.prefix, self.res.plural, self.ns)
                         if _selected(o, self.query)]
            except ValueError as exc:
                raise ApiError(400, "BadRequest", str(exc)) from None
            if self.wants_table():
                return 200, self.table(items)
            return 200, {"kind": f"{self.res.kind}List", "apiVersion": self.res.api_version,
                         "metadata": {"resourceVersion": str(self.store.version)}, "items": items}
        if self.method == "POST":
            if self.res.namespaced and self.ns is None:
                raise ApiError(404, "NotFound", NOT_FOUND, {})
            return self.create()
        if self.method == "DELETE":
            for obj in self.store.list(self.res.prefix, self.res.plural, self.ns):
                if _selected(obj, self.query):
                    self.store.delete(self.res.prefix, self.res.plural, obj["metadata"]["name"],
                                      obj["metadata"].get("namespace", ""))
            return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
        raise ApiError(405, "MethodNotAllowed", f"the server does not allow this method on the requested resource "
                                                f"({self.method})")

    def wants_table(self) -> bool:
        """`kubectl get` asks for `application/json;as=Table;v=v1;g=meta.k8s.io` (then v1beta1, then plain JSON)."""
        accept = self.headers.get("Accept") or ""
        return "as=Table" in accept and (self.res.group, self.res.plural) in PRINTERS

    def table(self, objects: list[dict]) -> dict:
        """The real server's Table: its printer's columns, one row per object with the object as
        `includeObject` asks (PartialObjectMetadata by default, Object, or None)."""
        columns, cells = PRINTERS[(self.res.group, self.res.plural)]
        include = self.q("includeObject", "PartialObjectMetadata")
        rows = []
        for obj in objects:
            row: dict = {"cells": cells(obj)}
            if include == "Object":
                row["object"] = {"apiVersion": self.res.api_version, "kind": self.res.kind, **copy.deepcopy(obj)}
            elif include != "None":
                row["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                 "metadata": copy.deepcopy(obj.get("metadata") or {})}
            rows.append(row)
        return {"kind": "Table", "apiVersion": "meta.k8s.io/v1",
                "metadata": {"resourceVersion": str(self.store.version)},
                "columnDefinitions": [{"name": n, "type": t, "format": "name" if n == "Name" else "",
                                       "description": "", "priority": 0} for n, t in columns],
                "rows": rows}

    # -- writing --------------------------------------------------------------------------------------------------
    def check_namespace(self, obj: dict, exists: bool = True) -> None:
        meta = obj.setdefault("metadata", {})
        if self.res.namespaced:
            if meta.get("namespace") and meta["namespace"] != self.ns:
                raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the namespace "
                                                  "sent on the request")
            if exists and self.store.get("api/v1", "namespaces", self.ns) is None:
                raise ApiError(404, "NotFound", f'namespaces "{self.ns}" not found',
                               {"name": self.ns, "kind": "namespaces"})

    def check_version(self, body: dict, current: dict | None) -> None:
        wanted = (body.get("metadata") or {}).get("resourceVersion") if isinstance(body, dict) else None
        if wanted and current is not None and current["metadata"].get("resourceVersion") != wanted:
            raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {self.res.qualified} "{self.name}": '
                                            "the object has been modified; please apply your changes to the latest "
                                            "version and try again",
                           {"name": self.name, "group": self.res.group, "kind": self.res.plural})

    def create(self):
        obj = self.body()
        if not isinstance(obj, dict):
            raise ApiError(400, "BadRequest", "the body of the request was in an unknown format")
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + "".join(random.choice(GENERATE_ALPHABET) for _ in range(5))
        if not meta.get("name"):
            raise invalid(self.res, "", [("metadata.name", "Required value: name or generateName is required")])
        self.name = meta["name"]
        self.check_namespace(obj)
        if self.current() is not None:
            raise ApiError(409, "AlreadyExists", f'{self.res.qualified} "{self.name}" already exists',
                           {"name": self.name, "group": self.res.group, "kind": self.res.plural})
        if (self.res.group, self.res.plural) == ("certificates.k8s.io", "certificatesigningrequests"):
            # the requester's identity, set by the server: here always the admin the kubeconfig names
            obj.setdefault("spec", {}).update(username="kubernetes-admin",
                                              groups=["kubeadm:cluster-admins", "system:authenticated"])
        return 201, self.view(self.write(obj, None, "Update"))

    def put(self):
        body = self.body()
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body of the request was in an unknown format")
        current = self.current(required=True)
        self.check_name(body)
        self.check_namespace(body, exists=False)
        self.check_version(body, current)
        return 200, self.view(self.write(self.for_subresource(body, current), current, "Update"))

    def patch(self):
        current = self.current()
        ctype = self.ctype
        patch = self.body()
        if ctype == "application/apply-patch+yaml":
            return self.apply(patch, current)
        if current is None:
            raise not_found(self.res, self.name)
        if ctype == "application/json-patch+json":
            if not isinstance(patch, list):
                raise ApiError(400, "BadRequest", "json: cannot unmarshal object into Go value of type "
                                                  "jsonpatch.Patch")
            try:
                merged = json_patch(current, patch)
            except ValueError as exc:
                raise ApiError(422, "Invalid", str(exc)) from None
        elif ctype in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            if ctype.startswith("application/strategic") and self.res.custom:
                raise ApiError(415, "UnsupportedMediaType", "the body of the request was in an unknown format - "
                                                            "accepted media types include: application/json-patch+json,"
                                                            " application/merge-patch+json, "
                                                            "application/apply-patch+yaml")
            if not isinstance(patch, dict):
                raise ApiError(400, "BadRequest", "the body of the request was in an unknown format")
            self.check_version(patch, current)
            merged = merge_patch(copy.deepcopy(current), patch)  # strategic merge: approximated by a merge patch
        else:
            raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - "
                                                        f"unsupported media type {ctype}")
        self.check_name(merged)
        return 200, self.view(self.write(self.for_subresource(merged, current), current, "Update"))

    def apply(self, body, current):
        if not self.q("fieldManager"):
            raise ApiError(400, "BadRequest", 'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required '
                                              "value: is required for apply patch")
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body of the request was in an unknown format")
        for field, want in (("apiVersion", self.res.api_version), ("kind", self.res.kind)):
            if not body.get(field):
                raise ApiError(400, "BadRequest", f"{field} must be set")
            if body[field] != want:
                raise ApiError(400, "BadRequest", f"the {field} in the data ({body[field]}) does not match the "
                                                  f"expected {field} ({want})")
        self.check_name(body)
        self.check_version(body, current)
        if current is None and self.sub is not None:
            raise not_found(self.res, self.name)
        self.check_namespace(body, exists=current is None)
        force = self.q("force") in ("true", "1")
        owned = _owned_part(body, self.sub is not None, "status" in self.res.subresources)
        applied = leaf_paths(owned)
        if current is not None and not force:
            conflicts = []
            for entry in current["metadata"].get("managedFields") or []:
                if entry.get("manager") == self.manager and entry.get("operation") == "Apply":
                    continue
                if entry.get("subresource", "") != (self.sub or ""):
                    continue
                for path in paths_of(entry.get("fieldsV1")):
                    if any(_overlaps(path, mine) and _at(current, path) != _at(body, path) for mine in applied):
                        conflicts.append(f'conflict with "{entry["manager"]}" using {entry.get("apiVersion")}: '
                                         f'.{".".join(path)}')
            if conflicts:
                raise ApiError(409, "Conflict", f"Apply failed with {len(conflicts)} conflict"
                                                f"{'s' if len(conflicts) > 1 else ''}: " + "\n".join(conflicts),
                               {"name": self.name, "group": self.res.group, "kind": self.res.plural})
        merged = merge_patch(copy.deepcopy(current or {}), body)
        status = (201 if current is None else 200)
        return status, self.view(self.write(self.for_subresource(merged, current), current, "Apply", applied))

    def check_name(self, body: dict) -> None:
        named = (body.get("metadata") or {}).get("name")
        if named and named != self.name:
            raise ApiError(400, "BadRequest", f"the name of the object ({named}) does not match the name on the URL "
                                              f"({self.name})")
        body.setdefault("metadata", {})["name"] = self.name

    def for_subresource(self, new: dict, current: dict | None) -> dict:
        """A status write takes only the status; an approval only the conditions; the main resource keeps the
        status it had (when there is a status subresource)."""
        if self.sub is None or current is None:
            return new
        out = copy.deepcopy(current)
        if self.sub == "status":
            out["status"] = new.get("status")
        elif self.sub == "approval":
            status = out.setdefault("status", {})
            status["conditions"] = (new.get("status") or {}).get("conditions") or []
        return out

    def delete(self):
        current = self.current(required=True)
        self.store.delete(self.res.prefix, self.res.plural, self.name, self.ns or "")
        return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                     "details": {"name": self.name, "group": self.res.group, "kind": self.res.plural,
                                 "uid": current["metadata"].get("uid")}}

    def evict(self):
        if self.method != "POST":
            raise ApiError(405, "MethodNotAllowed", "evictions are created with POST")
        pod = self.current(required=True)
        if self.kube and self.kube.on_evict:
            self.kube.on_evict(pod)
        self.store.delete(self.res.prefix, self.res.plural, self.name, self.ns or "")
        return 201, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}

    def scale(self):
        current = self.current(required=True)
        if self.method in ("PUT", "PATCH"):
            body = self.body()
            if self.method == "PATCH":
                if self.ctype not in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
                    raise ApiError(415, "UnsupportedMediaType", f"unsupported media type {self.ctype} for scale")
                body = merge_patch({"spec": {"replicas": current.get("spec", {}).get("replicas", 1)}}, body)
            replicas = (body.get("spec") or {}).get("replicas")
            if not isinstance(replicas, int) or replicas < 0:
                raise invalid(self.res, self.name, [("spec.replicas", "Invalid value: must be a non-negative "
                                                                      "integer")])
            new = copy.deepcopy(current)
            new.setdefault("spec", {})["replicas"] = replicas
            current = self.write(new, current, "Update")
        meta = current["metadata"]
        selector = ((current.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        return 200, {"kind": "Scale", "apiVersion": "autoscaling/v1",
                     "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion",
                                                       "creationTimestamp") if k in meta},
                     "spec": {"replicas": (current.get("spec") or {}).get("replicas", 1)},
                     "status": {"replicas": (current.get("status") or {}).get("replicas", 0),
                                "selector": ",".join(f"{k}={v}" for k, v in selector.items())}}

    def write(self, new: dict, old: dict | None, operation: str, applied: set[tuple] | None = None) -> dict:
        """Everything the API server does to a valid write before it is stored."""
        res = self.res
        new = copy.deepcopy(new)
        meta = new.setdefault("metadata", {})
        meta["name"] = self.name
        if res.namespaced:
            meta["namespace"] = self.ns
        else:
            meta.pop("namespace", None)
        new["apiVersion"] = res.api_version
        new["kind"] = res.kind
        has_status = "status" in res.subresources
        if old is not None:
            for key in ("uid", "creationTimestamp"):
                if key in old["metadata"]:
                    meta[key] = old["metadata"][key]
            if self.sub is None and has_status:
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
                else:
                    new.pop("status", None)
        elif has_status and (res.group, res.plural) not in KEEP_STATUS_ON_CREATE:
            new["status"] = {}
        meta.pop("deletionTimestamp", None)
        normalise(self.store, res, new, old)
        if (res.group, res.plural) not in NO_GENERATION:
            generation = 1 if old is None else old["metadata"].get("generation", 1)
            if old is not None and _spec_part(new) != _spec_part(old):
                generation += 1
            meta["generation"] = generation
        else:
            meta.pop("generation", None)
        meta["managedFields"] = self.managed_fields(new, old, operation, applied)
        meta.pop("resourceVersion", None)
        if old is not None and _unchanged(new, old):
            return old  # a no-op write: the real server stores nothing, the resourceVersion stays
        return self.store.put(res.prefix, res.plural, new, self.ns or "")

    def managed_fields(self, new: dict, old: dict | None, operation: str, applied: set[tuple] | None) -> list[dict]:
        has_status = "status" in self.res.subresources
        status_only = self.sub is not None
        sub = self.sub or ""
        if applied is None:  # an update owns what it changed
            before = leaf_paths(_owned_part(old or {}, status_only, has_status))
            after = _owned_part(new, status_only, has_status)
            changed = {p for p in leaf_paths(after) if p not in before or _at(old, p) != _at(new, p)}
        else:
            changed = applied
        entries = []
        mine = None
        for entry in copy.deepcopy((old or {}).get("metadata", {}).get("managedFields") or []):
            same = (entry.get("manager") == self.manager and entry.get("operation") == operation
                    and entry.get("subresource", "") == sub)
            paths = paths_of(entry.get("fieldsV1"))
            if same:
                mine = entry
                continue
            if entry.get("subresource", "") == sub:
                paths = {p for p in paths if not any(_overlaps(p, c) for c in changed)}
                paths = {p for p in paths if _at(new, p) is not None}
            if paths:
                entry["fieldsV1"] = fields_v1(paths)
                entries.append(entry)
        if operation == "Update" and mine is not None:
            changed |= {p for p in paths_of(mine.get("fieldsV1")) if _at(new, p) is not None}
        if changed:
            entry = {"manager": self.manager, "operation": operation, "apiVersion": self.res.api_version,
                     "time": _now(), "fieldsType": "FieldsV1", "fieldsV1": fields_v1(changed)}
            if sub:
                entry["subresource"] = sub
            entries.append(entry)
        return entries


def _unchanged(new: dict, old: dict) -> bool:
    def bare(obj):
        obj = copy.deepcopy(obj)
        meta = obj.get("metadata", {})
        meta.pop("resourceVersion", None)
        for entry in meta.get("managedFields") or []:
            entry.pop("time", None)
        return obj

    return bare(new) == bare(old)


def write_object(store: Store, prefix: str, plural: str, obj: dict, manager: str, namespace: str = "",
                 replace: Callable[[dict, dict], dict] | None = None, operation: str = "Update") -> dict:
    """Create or update `obj` as a client's write through the API would (defaults, validation, generation,
    managedFields under `manager`, namespace must exist), without HTTP: for the simulated lab's own actors (Helm,
    kubectl, controllers). `replace(current, obj)` makes the updated object (default: `obj` as a PUT);
    `operation` "Apply" records it as a server-side apply of `obj`. Raises ApiError."""
    res = store.resource(prefix, plural)
    if res is None:
        raise not_found(None, obj["metadata"]["name"])
    ns = (namespace or obj["metadata"].get("namespace") or "default") if res.namespaced else None
    req = _Request(store, "PUT", res, ns, obj["metadata"]["name"], None, {"fieldManager": [manager]}, {}, b"")
    applied = leaf_paths(_owned_part(obj, False, "status" in res.subresources)) if operation == "Apply" else None
    with store.lock:
        current = req.current()
        if current is None:
            obj = copy.deepcopy(obj)
            req.check_namespace(obj)
            return req.write(obj, None, operation, applied)
        return req.write(replace(current, obj) if replace else obj, current, operation, applied)


def _spec_part(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


# ---- what the API server normalises and validates --------------------------------------------------------------

def normalise(store: Store, res: ApiResource, obj: dict, old: dict | None) -> None:
    """Defaults, canonical forms and validation of the kinds where a real server's differ from what was sent.
    Raises ApiError 422 like the real server."""
    name = obj["metadata"]["name"]
    errors = [] if res.custom else canonical_quantities(res.group, res.plural, obj)
    key = (res.group, res.plural)
    if key == ("", "namespaces"):
        obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = name
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        obj["status"] = (old or {}).get("status") or {"phase": "Active"}
    elif key in (("", "secrets"), ("", "configmaps")):
        if key == ("", "secrets"):
            string = obj.pop("stringData", None) or {}
            if string:
                obj["data"] = {**(obj.get("data") or {}),
                               **{k: base64.b64encode(str(v).encode()).decode() for k, v in string.items()}}
            obj.setdefault("type", "Opaque")
            if old is not None and obj["type"] != old.get("type"):
                errors.append(("type", "Invalid value: field is immutable"))
        if old is not None and old.get("immutable"):
            for field in ("data", "binaryData"):
                if (obj.get(field) or {}) != (old.get(field) or {}):
                    errors.append((field, "Forbidden: field is immutable when `immutable` is set"))
    elif key in (("apps", "deployments"), ("apps", "statefulsets"), ("apps", "daemonsets"),
                 ("apps", "replicasets")):
        spec = obj.setdefault("spec", {})
        if res.plural != "daemonsets":
            spec.setdefault("replicas", 1)
        spec.setdefault("revisionHistoryLimit", 10)
        selector = (spec.get("selector") or {}).get("matchLabels")
        labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        if not spec.get("selector"):
            errors.append(("spec.selector", "Required value"))
        elif selector and any(labels.get(k) != v for k, v in selector.items()):
            errors.append(("spec.template.metadata.labels", f"Invalid value: {labels}: `selector` does not match "
                                                            "template `labels`"))
        if old is not None and (old.get("spec") or {}).get("selector") != spec.get("selector"):
            errors.append(("spec.selector", "Invalid value: field is immutable"))
    elif key == ("", "services"):
        errors += _service(store, obj, old)
    elif key == ("", "pods") and old is None:
        obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
    elif key == ("", "persistentvolumeclaims") and old is None:
        spec = obj.setdefault("spec", {})
        if "storageClassName" not in spec:  # the DefaultStorageClass admission plugin, at create only
            default = default_storage_class(store)
            if default:
                spec["storageClassName"] = default
        obj.setdefault("status", {}).setdefault("phase", "Pending")
    elif key == ("apiextensions.k8s.io", "customresourcedefinitions"):
        spec = obj.get("spec") or {}
        plural, group = (spec.get("names") or {}).get("plural"), spec.get("group")
        if name != f"{plural}.{group}":
            errors.append(("metadata.name", f'Invalid value: "{name}": must be spec.names.plural+"."+spec.group'))
        versions = spec.get("versions") or []
        if sum(bool(v.get("storage")) for v in versions) != 1:
            errors.append(("spec.versions", "Invalid value: must have exactly one version marked as storage "
                                            "version"))
        if spec.get("scope") not in ("Namespaced", "Cluster"):
            errors.append(("spec.scope", f'Unsupported value: "{spec.get("scope")}": supported values: '
                                         '"Cluster", "Namespaced"'))
        if old is not None and (old.get("spec") or {}).get("scope") != spec.get("scope"):
            errors.append(("spec.scope", "Invalid value: field is immutable"))
        if not errors:
            _establish(obj)
    elif key == ("apiregistration.k8s.io", "apiservices"):
        spec = obj.get("spec") or {}
        if name != f"{spec.get('version')}.{spec.get('group')}":
            errors.append(("metadata.name", f'Invalid value: "{name}": must be `spec.version+"."+spec.group`'))
    elif key == ("certificates.k8s.io", "certificatesigningrequests"):
        errors += _csr(obj)
    if errors:
        raise invalid(res, name, errors)


def default_storage_class(store: Store) -> str | None:
    for sc in store.list("apis/storage.k8s.io/v1", "storageclasses"):
        annotations = sc["metadata"].get("annotations") or {}
        if annotations.get("storageclass.kubernetes.io/is-default-class") == "true":
            return sc["metadata"]["name"]
    return None


def _service(store: Store, obj: dict, old: dict | None) -> list[tuple[str, str]]:
    """Service defaults, the clusterIP and nodePort allocators, and their errors."""
    errors = []
    spec = obj.setdefault("spec", {})
    old_spec = (old or {}).get("spec") or {}
    kind = spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    if kind != "ExternalName":
        spec.setdefault("internalTrafficPolicy", "Cluster")
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        if old_spec.get("clusterIP") and spec.get("clusterIP", old_spec["clusterIP"]) != old_spec["clusterIP"]:
            errors.append(("spec.clusterIPs[0]", "Invalid value: field is immutable"))
        spec["clusterIP"] = spec.get("clusterIP") or old_spec.get("clusterIP") or _allocate_ip(store)
        spec["clusterIPs"] = [spec["clusterIP"]]
    if kind in ("NodePort", "LoadBalancer"):
        spec.setdefault("externalTrafficPolicy", "Cluster")
    taken = {p.get("nodePort"): s["metadata"] for s in store.list("api/v1", "services")
             if s["metadata"]["uid"] != (old or {}).get("metadata", {}).get("uid")
             for p in (s.get("spec") or {}).get("ports") or [] if p.get("nodePort")}
    low, high = store.node_ports
    old_ports = {(p.get("name"), p.get("port")): p.get("nodePort") for p in old_spec.get("ports") or []}
    mine: set[int] = set()
    for i, port in enumerate(spec.get("ports") or []):
        port.setdefault("protocol", "TCP")
        if kind != "ExternalName":
            port.setdefault("targetPort", port.get("port"))
        if kind in ("NodePort", "LoadBalancer"):
            wanted = port.get("nodePort") or old_ports.get((port.get("name"), port.get("port")))
            if wanted is None:
                free = [n for n in range(low, high + 1) if n not in taken and n not in mine]
                wanted = random.choice(free)
            elif not low <= wanted <= high:
                errors.append((f"spec.ports[{i}].nodePort", f"Invalid value: {wanted}: provided port is not in the "
                                                            f"valid range. The range of valid ports is {low}-{high}"))
            elif wanted in taken or wanted in mine:
                errors.append((f"spec.ports[{i}].nodePort", f"Invalid value: {wanted}: provided port is already "
                                                            "allocated"))
            port["nodePort"] = wanted
            mine.add(wanted)
        elif port.get("nodePort"):
            errors.append((f"spec.ports[{i}].nodePort", f"Forbidden: may not be used when `type` is '{kind}'"))
    return errors


def _allocate_ip(store: Store) -> str:
    network = ipaddress.ip_network(store.service_cidr)
    used = {(s.get("spec") or {}).get("clusterIP") for s in store.list("api/v1", "services")}
    first = int(network.network_address)
    for _ in range(1000):
        candidate = str(ipaddress.ip_address(first + random.randrange(11, min(network.num_addresses - 1, 60000))))
        if candidate not in used:
            return candidate
    raise ApiError(500, "InternalError", "the service IP range is full")


def _csr(obj: dict) -> list[tuple[str, str]]:
    from cryptography import x509

    errors = []
    spec = obj.get("spec") or {}
    try:
        x509.load_pem_x509_csr(base64.b64decode(spec.get("request") or ""))
    except ValueError:
        errors.append(("spec.request", "Invalid value: []byte{...}: PEM block type must be CERTIFICATE REQUEST"))
    if not spec.get("signerName"):
        errors.append(("spec.signerName", "Required value"))
    if not spec.get("usages"):
        errors.append(("spec.usages", "Required value"))
    types = [c.get("type") for c in (obj.get("status") or {}).get("conditions") or []]
    if "Approved" in types and "Denied" in types:
        errors.append(("status.conditions", 'Invalid value: "Denied": Approved and Denied conditions are mutually '
                                            "exclusive"))
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") in ("Approved", "Denied") and c.get("status") != "True":
            errors.append(("status.conditions", f'Unsupported value: "{c.get("status")}": supported values: "True"'))
    return errors


# ---- TLS -------------------------------------------------------------------------------------------------------

def subject_alt_names(sans: list[str]) -> list:
    """x509 SAN entries: an IPAddress for what parses as an IP, a DNSName for the rest."""
    from cryptography import x509

    alt = []
    for san in sans:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(san)))
        except ValueError:
            alt.append(x509.DNSName(san))
    return alt


def make_certificates(sans: list[str]) -> tuple[bytes, bytes, bytes]:
    """A throwaway CA and a server certificate for `sans` (IPs or DNS names), PEM encoded."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sim-kubernetes-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(subject_alt_names(sans)), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    return ca.public_bytes(pem), cert.public_bytes(pem), key_pem


# ---- HTTP ----------------------------------------------------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    kube: FakeKube
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet: tests read the store, not the access log
        pass

    def _send(self, status: int, body) -> None:
        if isinstance(body, str):
            data, ctype = body.encode(), "text/plain; charset=utf-8"
        else:
            data, ctype = json.dumps(body).encode(), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _status(self, code: int, reason: str, message: str) -> None:
        self._send(code, ApiError(code, reason, message).body())

    def _read_body(self) -> bytes:
        # Read every request's body, used or not: leftover bytes would corrupt the next request on a kept-alive
        # connection.
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self, method: str) -> None:
        raw = self._read_body()
        url = urlparse(self.path)
        self.kube.store.requests.append((method, url.path))
        if self.kube.fail and (code := self.kube.fail(method, url.path)):
            return self._status(code, "InternalError", "injected failure")
        status, body = self.kube.serve(method, url.path, parse_qs(url.query), self.headers, raw)
        self._send(status, body)

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_PATCH(self):
        self._handle("PATCH")

    def do_PUT(self):
        self._handle("PUT")

    def do_DELETE(self):
        self._handle("DELETE")
