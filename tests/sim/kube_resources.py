"""What the fake API server serves and how it names things (tests/sim/fake_kube.py is built on it).

- `ApiResource`: one resource as discovery lists it; `BUILTIN`, the built-in resources of a v1.35 server (with their
  short names, subresources and categories); a CustomResourceDefinition's kinds are ApiResources with `custom`.
- `crd_object`: a minimal valid CRD; `KNOWN_CRDS`, the CRDs that come along with custom resources put straight into
  the store.
- The API prefixes the simulated lab addresses (`CRD_PREFIX`, `APISERVICE_PREFIX`, `CSR_PREFIX`, `APPS`), which kinds
  carry `metadata.generation`, discovery's version order (`version_priority`).
- `ApiError`: an error answer (a Status) as the real server words it: `not_found`, `invalid`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
# subresource → (group, version, kind) of what it serves ("" kind: the resource's own), verbs
SUBRESOURCES = {
    "status": (None, ("get", "patch", "update")),
    "approval": (None, ("get", "patch", "update")),
    "scale": (("autoscaling", "v1", "Scale"), ("get", "patch", "update")),
    "eviction": (("policy", "v1", "Eviction"), ("create",)),
}
NOT_FOUND = "the server could not find the requested resource"


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
# (prefix, plural) → the built-in resource served there
BUILTIN_BY_PATH = {(r.prefix, r.plural): r for r in BUILTIN}
CRD_PREFIX, CRDS = "apis/apiextensions.k8s.io/v1", "customresourcedefinitions"
APISERVICE_PREFIX, APISERVICES = "apis/apiregistration.k8s.io/v1", "apiservices"
CSR_PREFIX, CSRS = "apis/certificates.k8s.io/v1", "certificatesigningrequests"
APPS = "apis/apps/v1"
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


def version_priority(version: str) -> tuple:
    """Kubernetes' version order, highest first when sorted: GA, then beta, then alpha, larger numbers first."""
    m = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", version)
    if not m:
        return (3, 0, 0, version)
    level = {"alpha": 2, "beta": 1, None: 0}[m[2]]
    return (level, -int(m[1]), -int(m[3] or 0), "")
