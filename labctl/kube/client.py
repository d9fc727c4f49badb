"""The Kube facade: everything the host asks one cluster's API, as one small object (`ctx.kube(cluster)`).

Built from `.labctl/kubeconfig/<cluster>.yaml`; the client is (re)built on first use and whenever that file changed
(after `init` wrote it, or after an address repair pointed it elsewhere), so one facade serves a whole run.

Two choices worth knowing:
- Every request goes by path through `rest.RestClient` (urllib3 with the kubeconfig's certificates), one choke point
  (`_call`): the `kubernetes` package's first use cost ~1 s per process (rest.py says why and how it was measured).
- Responses are read as plain JSON, not as generated models: the checks here need a handful of fields, and the
  kubernetes client's 37.x models refuse a whole list when one object lacks a field they declare required. Patches
  name their content type explicitly (merge patch, or server-side apply).
"""

from __future__ import annotations

import base64
import gzip
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LabctlError, StepError
from . import kubeconfig
from .rest import METADATA_ONLY, POOL_SIZE, ConfigError, RestClient

MERGE_PATCH = "application/merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"  # server-side apply; a JSON body is valid YAML
FIELD_MANAGER = "labctl"
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"

class KubeError(LabctlError):
    """The cluster's API could not be asked (unreachable, refused, answered with an error)."""

    def __init__(self, message: str, hint: str | None = None, status: int | None = None):
        super().__init__(message, hint)
        self.status = status  # the HTTP status when the API answered, e.g. 409 for a conflicting patch


@dataclass(frozen=True)
class NodeInfo:
    name: str
    ready: bool
    ready_status: str  # "True" | "False" | "Unknown" | "" (no condition yet)
    ready_reason: str
    kubelet_version: str
    internal_ip: str | None
    roles: tuple[str, ...]
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    taints: tuple[dict[str, str], ...] = ()
    unschedulable: bool = False
    resource_version: str = ""

    @classmethod
    def from_object(cls, obj: dict) -> NodeInfo:
        meta, spec, status = obj.get("metadata", {}), obj.get("spec", {}), obj.get("status", {})
        ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
        labels = meta.get("labels") or {}
        roles = tuple(sorted(k.split("/", 1)[1] for k in labels if k.startswith("node-role.kubernetes.io/")))
        addresses = status.get("addresses") or []
        internal = next((a.get("address") for a in addresses if a.get("type") == "InternalIP"), None)
        return cls(
            name=meta.get("name", ""),
            ready=ready.get("status") == "True",
            ready_status=ready.get("status", ""),
            ready_reason=" ".join(filter(None, (ready.get("reason"), ready.get("message")))),
            kubelet_version=(status.get("nodeInfo") or {}).get("kubeletVersion", ""),
            internal_ip=internal,
            roles=roles,
            labels=dict(labels),
            annotations=dict(meta.get("annotations") or {}),
            taints=tuple(spec.get("taints") or ()),
            unschedulable=bool(spec.get("unschedulable")),
            resource_version=meta.get("resourceVersion", ""),
        )


@dataclass(frozen=True)
class Readiness:
    ready: bool
    detail: str
    found: bool = True

    def __bool__(self) -> bool:
        return self.ready


@dataclass(frozen=True)
class HelmRelease:
    name: str
    revision: int
    status: str  # deployed, failed, pending-install, ...
    chart_version: str
    values: dict  # the user-supplied values (`helm get values`)


def decode_helm_release(data: str) -> dict:
    """A Helm release Secret's `release` field → the release as JSON. Helm stores base64(gzip(json)) in the Secret's
    data, which the API base64-encodes once more."""
    raw = base64.b64decode(base64.b64decode(data))
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return json.loads(raw)


def deployment_readiness(obj: dict | None, what: str) -> Readiness:
    if obj is None:
        return Readiness(False, f"{what} not found", found=False)
    spec, status, meta = obj.get("spec", {}), obj.get("status", {}), obj.get("metadata", {})
    want = spec.get("replicas", 1)
    updated, available = status.get("updatedReplicas", 0), status.get("availableReplicas", 0)
    if status.get("observedGeneration", 0) < meta.get("generation", 0):
        return Readiness(False, f"{what}: rollout not observed yet")
    if not updated == available == want:
        # the ReplicaSet cannot create its pods (admission refused them: a LimitRange, a quota, a webhook): the
        # Deployment controller copies its FailedCreate into ReplicaFailure, and that message is the reason to show
        failure = next((c for c in status.get("conditions") or [] if c.get("type") == "ReplicaFailure"
                        and c.get("status") == "True"), None)
        why = f": {failure.get('reason', 'ReplicaFailure')}: {failure.get('message', '')}" if failure else ""
        return Readiness(False, f"{what}: {available}/{want} available, {updated} updated{why}")
    return Readiness(True, f"{what}: {available}/{want} available")


def daemonset_readiness(obj: dict | None, what: str) -> Readiness:
    if obj is None:
        return Readiness(False, f"{what} not found", found=False)
    status, meta = obj.get("status", {}), obj.get("metadata", {})
    desired, ready = status.get("desiredNumberScheduled", 0), status.get("numberReady", 0)
    updated = status.get("updatedNumberScheduled", 0)
    if status.get("observedGeneration", 0) < meta.get("generation", 0):
        return Readiness(False, f"{what}: rollout not observed yet")
    if not desired == ready == updated:
        return Readiness(False, f"{what}: {ready}/{desired} ready, {updated} updated")
    return Readiness(True, f"{what}: {ready}/{desired} ready")


def statefulset_readiness(obj: dict | None, what: str) -> Readiness:
    if obj is None:
        return Readiness(False, f"{what} not found", found=False)
    spec, status = obj.get("spec", {}), obj.get("status", {})
    want, ready = spec.get("replicas", 1), status.get("readyReplicas", 0)
    if ready != want:
        return Readiness(False, f"{what}: {ready}/{want} ready")
    if status.get("currentRevision") != status.get("updateRevision"):
        return Readiness(False, f"{what}: update to {status.get('updateRevision')} in progress")
    return Readiness(True, f"{what}: {ready}/{want} ready")


def condition_readiness(obj: dict | None, what: str, condition: str) -> Readiness:
    """Ready when the object's status condition `condition` is True (APIService Available, CRD Established)."""
    if obj is None:
        return Readiness(False, f"{what} not found", found=False)
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == condition:
            if c.get("status") == "True":
                return Readiness(True, f"{what}: {condition}")
            reason = " ".join(filter(None, (c.get("reason"), c.get("message"))))
            return Readiness(False, f"{what}: not {condition} ({reason})" if reason else f"{what}: not {condition}")
    return Readiness(False, f"{what}: not {condition} yet")


# Set by `shutdown --drain` on the nodes it cordons, so that `boot` uncordons exactly those.
DRAINED = "labctl.internal/drained"


def _evictable(pod: dict) -> bool:
    meta = pod.get("metadata", {})
    owners = meta.get("ownerReferences") or []
    mirror = "kubernetes.io/config.mirror" in (meta.get("annotations") or {})
    finished = (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
    return not mirror and not finished and not any(o.get("kind") == "DaemonSet" for o in owners)


def _apps(namespace: str, plural: str, name: str) -> str:
    return f"/apis/apps/v1/namespaces/{namespace}/{plural}/{name}"


def parallel(*reads: Callable[[], Any]) -> list[Any]:
    """Run independent API reads at once and return their results in order: a check that asks N questions pays one
    round trip of latency instead of N (the connection pool holds rest.POOL_SIZE per server). If any read raised,
    the first such exception (in argument order) is raised once all have finished."""
    if len(reads) <= 1:
        return [read() for read in reads]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(len(reads), POOL_SIZE), thread_name_prefix="kube-read") as pool:
        futures = [pool.submit(read) for read in reads]
    return [f.result() for f in futures]


def client_for(ctx, cluster) -> Kube:
    """The facade for `cluster` (Context.kube caches one per cluster per run). `status` asks for short timeouts."""
    return Kube(cluster.name, kubeconfig.cluster_path(ctx.state, cluster.name),
                request_timeout=ctx.options.get("request_timeout", 15.0), retries=ctx.options.get("kube_retries"))


class Kube:
    def __init__(self, cluster: str, path: Path, request_timeout: float = 15.0, retries: int | None = None):
        self.cluster = cluster
        self.path = path
        self.request_timeout = request_timeout
        # None: urllib3's default (3 retries, fine while installing); status wants 0 so that a hung API server
        # costs one timeout per question, not four
        self.retries = retries
        self._lock = threading.Lock()
        self._rest: RestClient | None = None
        self._stamp: tuple[int, int] | None = None
        self._resources: dict[tuple[str, str], tuple[str, bool]] = {}  # discovery hits (misses are asked again)
        self._discovering: dict[str, threading.Lock] = {}  # one discovery request per group version at a time
        # group version → (discovery requests answered so far, the last one's error or None)
        self._discovered: dict[str, tuple[int, KubeError | None]] = {}

    # -- plumbing ---------------------------------------------------------------------------------------------
    def _client(self) -> RestClient:
        """The REST client for the kubeconfig as it is now (rebuilt when the file changed). Raises KubeError."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            raise KubeError(
                f"{self.cluster}: no kubeconfig at {self.path}",
                hint=f"the `init` phase writes it: `labctl install --cluster {self.cluster} --from init`",
            ) from None
        with self._lock:
            if self._rest is None or self._stamp != (st.st_mtime_ns, st.st_size):
                import yaml

                hint = f"`labctl install --cluster {self.cluster} --from init` fetches it again from the control plane"
                try:
                    config = yaml.safe_load(self.path.read_bytes())
                    if not isinstance(config, dict):
                        raise ConfigError(f"{self.path} is not a kubeconfig (no mapping at the top)")
                    rest = RestClient(config, self.path, self.retries)
                except (yaml.YAMLError, ConfigError, OSError, ValueError) as exc:
                    raise KubeError(f"{self.cluster}: the kubeconfig cannot be used: {exc}", hint=hint) from None
                if self._rest is not None:
                    self._rest.close()
                self._rest, self._stamp = rest, (st.st_mtime_ns, st.st_size)
            return self._rest

    def _call(self, what: str, method: str, path: str, query: list[tuple[str, str]] | None = None,
              body: dict | None = None, content_type: str | None = None, accept: str | None = None) -> dict | None:
        """One API request by path → its JSON body, or None for 404. Every other failure is a KubeError: with the
        HTTP `status` when the API answered (409 for a conflicting patch, 429 for a refused eviction, ...), with a
        hint when it did not answer within `request_timeout` seconds."""
        rest = self._client()
        try:
            response = rest.request(method, path, query, body, content_type, timeout=self.request_timeout,
                                    accept=accept)
        except Exception as exc:  # noqa: BLE001 - urllib3 connection, TLS and timeout errors have no common base
            raise KubeError(
                f"{self.cluster}: {what}: the API server at {rest.server} did not answer ({exc})",
                hint="is the control plane VM running and at that address? `labctl status` shows both",
            ) from None
        if response.status == 404:
            return None
        if response.status >= 400:
            raise KubeError(f"{self.cluster}: {what}: the API answered {response.status} {response.reason}: "
                            f"{response.message()[:300]}", status=response.status)
        try:
            return response.json()
        except ValueError:
            raise KubeError(f"{self.cluster}: {what}: the API answered {response.status} with something that is "
                            f"not JSON: {response.data[:200]!r}") from None

    def close(self) -> None:
        with self._lock:
            if self._rest is not None:
                self._rest.close()
            self._rest = None

    # -- nodes ------------------------------------------------------------------------------------------------
    def nodes(self) -> list[NodeInfo]:
        body = self._call("list nodes", "GET", "/api/v1/nodes") or {}
        return [NodeInfo.from_object(item) for item in body.get("items", [])]

    def node(self, name: str) -> NodeInfo | None:
        obj = self._call(f"read node {name}", "GET", f"/api/v1/nodes/{name}")
        return NodeInfo.from_object(obj) if obj else None

    def patch_node(self, name: str, patch: dict) -> NodeInfo:
        """A JSON merge patch (RFC 7386). Put metadata.resourceVersion in it to make it conditional."""
        obj = self._call(f"patch node {name}", "PATCH", f"/api/v1/nodes/{name}", body=patch, content_type=MERGE_PATCH)
        if obj is None:
            raise KubeError(f"{self.cluster}: node {name} does not exist")
        return NodeInfo.from_object(obj)

    def label_node(self, name: str, labels: dict[str, str | None]) -> NodeInfo:
        """Set labels; a None value removes that label."""
        return self.patch_node(name, {"metadata": {"labels": labels}})

    def set_taints(self, name: str, taints: list[dict[str, str]], resource_version: str = "") -> NodeInfo:
        """Replace the node's taint list (merge patch replaces lists); pass the resourceVersion it was read at."""
        patch: dict = {"spec": {"taints": taints}}
        if resource_version:
            patch["metadata"] = {"resourceVersion": resource_version}
        return self.patch_node(name, patch)

    def cordon(self, name: str) -> NodeInfo:
        return self.patch_node(name, {"spec": {"unschedulable": True}})

    def uncordon(self, name: str) -> NodeInfo:
        return self.patch_node(name, {"spec": {"unschedulable": None}})

    def delete_node(self, name: str) -> bool:
        return self._call(f"delete node {name}", "DELETE", f"/api/v1/nodes/{name}") is not None

    def drain(self, name: str, timeout: float = 120) -> int:
        """Cordon the node (marked as labctl's doing) and evict its pods; returns how many were evicted.

        Like `kubectl drain --ignore-daemonsets`: DaemonSet pods would only come back, and static (mirror) pods are
        the kubelet's own. Evictions respect PodDisruptionBudgets; a refused one (429) is retried until `timeout`.
        """
        self.patch_node(name, {"metadata": {"annotations": {DRAINED: "true"}}, "spec": {"unschedulable": True}})
        body = self._call(f"list pods on {name}", "GET", "/api/v1/pods",
                          [("fieldSelector", f"spec.nodeName={name}")]) or {}
        pods = [p["metadata"] for p in body.get("items", []) if _evictable(p)]
        for meta in pods:
            eviction = {"apiVersion": "policy/v1", "kind": "Eviction",
                        "metadata": {"name": meta["name"], "namespace": meta["namespace"]}}

            def evicted(meta=meta, eviction=eviction):
                try:
                    self._call(f"evict {meta['namespace']}/{meta['name']}", "POST",
                               f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/eviction", body=eviction)
                except KubeError as exc:
                    if exc.status == 429:  # a PodDisruptionBudget says not now
                        return False, str(exc)
                    raise
                return True, "evicted"

            self.wait_for(f"evict {meta['namespace']}/{meta['name']} from {name}", evicted, timeout)
        return len(pods)

    def undrain(self, name: str) -> bool:
        """Uncordon a node only if labctl drained it (a node cordoned by hand stays cordoned)."""
        node = self.node(name)
        if node is None or not node.unschedulable or DRAINED not in node.annotations:
            return False
        self.patch_node(name, {"metadata": {"annotations": {DRAINED: None}}, "spec": {"unschedulable": None}})
        return True

    # -- workloads --------------------------------------------------------------------------------------------
    def daemonset_ready(self, namespace: str, name: str) -> Readiness:
        obj = self._call(f"read daemonset {namespace}/{name}", "GET", _apps(namespace, "daemonsets", name))
        return daemonset_readiness(obj, f"DaemonSet {namespace}/{name}")

    def deployment_ready(self, namespace: str, name: str) -> Readiness:
        obj = self._call(f"read deployment {namespace}/{name}", "GET", _apps(namespace, "deployments", name))
        return deployment_readiness(obj, f"Deployment {namespace}/{name}")

    def statefulset_ready(self, namespace: str, name: str) -> Readiness:
        obj = self._call(f"read statefulset {namespace}/{name}", "GET", _apps(namespace, "statefulsets", name))
        return statefulset_readiness(obj, f"StatefulSet {namespace}/{name}")

    def rollout_restart(self, namespace: str, kind: str, name: str) -> bool:
        """`kubectl rollout restart`: stamp the pod template with the annotation kubectl uses
        (`kubectl.kubernetes.io/restartedAt`, RFC 3339; kubectl's polymorphichelpers/objectrestarter.go), so the
        controller replaces every pod as in a rollout. `kind` is "DaemonSet" or "Deployment". False when it does
        not exist; KubeError for any other failure.

        The stamp has microseconds, unlike kubectl's: a second restart within the same second (e.g. after `init`
        and again after the workers' `join` moved their API name) would otherwise patch in the very same value,
        which changes nothing, and the pods started in between would keep their old /etc/hosts copy."""
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
        patch = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: stamp}}}}}
        path = self._path("apps/v1", kind, namespace, name)
        return self._call(f"restart {kind} {namespace}/{name}", "PATCH", path, body=patch,
                          content_type=MERGE_PATCH) is not None

    def ciliumnodes(self) -> list[str]:
        body = self._call("list ciliumnodes", "GET", "/apis/cilium.io/v2/ciliumnodes") or {}
        return sorted(item["metadata"]["name"] for item in body.get("items", []))

    # -- any object: discovery, server-side apply, readiness ------------------------------------------------------
    def resource(self, api_version: str, kind: str) -> tuple[str, bool] | None:
        """(plural, namespaced) of a kind as the API server serves it now, from discovery; None when it does not
        (e.g. a custom resource whose CRD is not there yet). A group version's answer is kept for every kind it
        lists; a miss is asked again (a CRD may arrive), but callers that waited on one request share its answer
        (or its KubeError: a failure is not kept for later callers either):
        a check asking about 30 objects of one group at once costs one discovery request, not 30."""
        with self._lock:
            if (api_version, kind) in self._resources:
                return self._resources[(api_version, kind)]
            gate = self._discovering.setdefault(api_version, threading.Lock())
            answered = self._discovered.get(api_version, (0, None))[0]
        with gate:
            with self._lock:
                count, failed = self._discovered.get(api_version, (0, None))
                if count != answered:  # asked while this caller waited: its answer (or error) is this caller's
                    if failed is not None:
                        raise KubeError(failed.message, failed.hint, failed.status)
                    return self._resources.get((api_version, kind))
            path = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            try:
                body = self._call(f"discover {api_version}", "GET", path) or {}
            except KubeError as exc:
                # its waiters share the failure too: each asking again in turn, N callers would wait N timeouts of a
                # hung API server where they used to wait one. The next question asks again.
                with self._lock:
                    self._discovered[api_version] = (answered + 1, exc)
                raise
            served = {(api_version, res["kind"]): (res["name"], bool(res.get("namespaced")))
                      for res in body.get("resources", []) if res.get("kind") and "/" not in res.get("name", "")}
            with self._lock:
                self._resources.update(served)
                self._discovered[api_version] = (answered + 1, None)
                return self._resources.get((api_version, kind))

    def _path(self, api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
        res = self.resource(api_version, kind)
        if res is None:
            raise KubeError(f"{self.cluster}: the API does not serve {kind} ({api_version}) yet",
                            hint="its CustomResourceDefinition is missing or not Established; the stack that "
                            "provides it must be installed first", status=404)
        plural, namespaced = res
        base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        # namespace None: every namespace (a list across them); "" for a namespaced kind: `default`, as kubectl does
        where = f"/namespaces/{namespace or 'default'}" if namespaced and namespace is not None else ""
        return f"{base}{where}/{plural}" + (f"/{name}" if name else "")

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict | None:
        """One object as JSON, or None when it (or its kind) does not exist."""
        if self.resource(api_version, kind) is None:
            return None
        return self._call(f"read {kind} {namespace}/{name}", "GET", self._path(api_version, kind, namespace, name))

    def _items(self, api_version: str, kind: str, namespace: str | None, label_selector: str,
               accept: str | None = None) -> list[dict] | None:
        """One list request's items; None when the kind is not served."""
        if self.resource(api_version, kind) is None:
            return None
        query = [("labelSelector", label_selector)] if label_selector else []
        body = self._call(f"list {kind}", "GET", self._path(api_version, kind, namespace), query, accept=accept) or {}
        return body.get("items", [])

    def list(self, api_version: str, kind: str, namespace: str | None = "", label_selector: str = "") -> list[dict]:
        """The objects of a kind in `namespace` (None: in every namespace); [] when the kind is not served."""
        return self._items(api_version, kind, namespace, label_selector) or []

    def names(self, api_version: str, kind: str, namespace: str | None = "", label_selector: str = "") -> \
            dict[str, dict] | None:
        """Name → metadata of the objects of a kind in `namespace` (None: every namespace), from one metadata-only
        list (METADATA_ONLY: no specs, no data; a server that cannot serve it sends the whole objects, read the
        same); None when the kind is not served."""
        items = self._items(api_version, kind, namespace, label_selector, METADATA_ONLY)
        if items is None:
            return None
        return {(item.get("metadata") or {}).get("name", ""): item.get("metadata") or {} for item in items}

    def apply(self, obj: dict, namespace: str = "") -> dict:
        """Server-side apply of one object with labctl as the field manager (force: labctl owns what it declares).

        `namespace` is used when the object names none and its kind is namespaced. Raises KubeError (404 with a
        hint when the kind is not served, e.g. its CRD is missing)."""
        meta = obj["metadata"]
        ns = meta.get("namespace") or namespace
        path = self._path(obj["apiVersion"], obj["kind"], ns, meta["name"])
        if "/namespaces/" in path and not meta.get("namespace"):
            obj = {**obj, "metadata": {**meta, "namespace": ns or "default"}}
        what = f"apply {obj['kind']} {ns + '/' if ns else ''}{meta['name']}"
        out = self._call(what, "PATCH", path, [("fieldManager", FIELD_MANAGER), ("force", "true")], obj, APPLY_PATCH)
        if out is None:  # server-side apply creates what is missing: a 404 is about its namespace
            raise KubeError(f"{self.cluster}: {what}: namespace {ns!r} does not exist",
                            hint="add a Namespace object for it to the stack's manifests, or leave metadata.namespace "
                            "out (the stack's own namespace is created for it)", status=404)
        return out

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        """Delete one object (background propagation); False when it was not there."""
        if self.resource(api_version, kind) is None:
            return False
        path = self._path(api_version, kind, namespace, name)
        return self._call(f"delete {kind} {namespace}/{name}", "DELETE", path,
                         [("propagationPolicy", "Background")]) is not None

    def crd_established(self, name: str) -> Readiness:
        obj = self.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", "", name)
        return condition_readiness(obj, f"CRD {name}", "Established")

    def ready(self, kind: str, namespace: str, name: str) -> Readiness:
        """Readiness of one object by kind: rollouts for workloads, conditions for APIServices and CRDs."""
        if kind == "Deployment":
            return self.deployment_ready(namespace, name)
        if kind == "StatefulSet":
            return self.statefulset_ready(namespace, name)
        if kind == "DaemonSet":
            return self.daemonset_ready(namespace, name)
        if kind == "APIService":
            obj = self.get("apiregistration.k8s.io/v1", "APIService", "", name)
            return condition_readiness(obj, f"APIService {name}", "Available")
        if kind == "CustomResourceDefinition":
            return self.crd_established(name)
        raise KubeError(f"{self.cluster}: labctl cannot tell whether a {kind} is ready")

    # -- configuration ----------------------------------------------------------------------------------------
    def secret(self, namespace: str, name: str) -> dict[str, bytes] | None:
        obj = self._call(f"read secret {namespace}/{name}", "GET", f"/api/v1/namespaces/{namespace}/secrets/{name}")
        if obj is None:
            return None
        return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}

    def configmap(self, namespace: str, name: str) -> dict[str, str] | None:
        obj = self._call(f"read configmap {namespace}/{name}", "GET",
                         f"/api/v1/namespaces/{namespace}/configmaps/{name}")
        return None if obj is None else dict(obj.get("data") or {})

    def helm_release(self, namespace: str, name: str) -> HelmRelease | None:
        """The newest revision of a Helm release, read from its Secrets (no helm CLI on the host): the revisions'
        labels first (a metadata-only list: Helm keeps up to 10 revisions, each with the whole rendered chart), then
        the newest one's Secret."""
        labelled = self.names("v1", "Secret", namespace, f"owner=helm,name={name}") or {}
        # Helm's storage driver names them sh.helm.release.v1.<release>.v<revision> (helm/pkg/storage/driver)
        revisions = {n: meta for n, meta in labelled.items() if n.startswith("sh.helm.release.v1.")}
        if not revisions:
            return None
        def revision(name: str) -> int:
            label = str((revisions[name].get("labels") or {}).get("version", ""))
            return int(label) if label.isdigit() else -1  # Helm writes numbers; anything else is not its newest

        newest = max(revisions, key=revision)
        secret = self._call(f"read helm release {namespace}/{name}", "GET",
                            f"/api/v1/namespaces/{namespace}/secrets/{newest}")
        if secret is None or secret.get("type", "helm.sh/release.v1") != "helm.sh/release.v1":
            return None
        try:
            release = decode_helm_release(secret["data"]["release"])
        except (KeyError, ValueError, OSError) as exc:
            raise KubeError(f"{self.cluster}: Helm release {namespace}/{name} cannot be read ({exc})") from None
        return HelmRelease(
            name=name,
            revision=int(release.get("version", 0)),
            status=(release.get("info") or {}).get("status", ""),
            chart_version=((release.get("chart") or {}).get("metadata") or {}).get("version", ""),
            values=release.get("config") or {},
        )

    # -- waiting ----------------------------------------------------------------------------------------------
    def wait_for(self, what: str, predicate: Callable[[], tuple[bool, str]], timeout: float, interval: float = 3.0,
                 sleep: Callable[[float], None] = time.sleep) -> str:
        """Poll `predicate` (→ done, detail) until done; API errors count as "not yet" (it may be restarting).
        Returns the last detail; raises StepError with it after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                done, detail = predicate()
            except KubeError as exc:
                done, detail = False, str(exc)
            if done:
                return detail
            if time.monotonic() >= deadline:
                raise StepError(f"{self.cluster}: {what}: not after {timeout:.0f} s: {detail}")
            sleep(interval)

