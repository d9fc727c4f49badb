"""Simulated Helm, on a simulated cluster's API: release records exactly as Helm stores them.

- Cilium (`helm_upgrade`, script cni.helm-install): a new revision and the chart's workloads; its operator registers
  Cilium's CRDs.
- Stacks (`helm_install` / `helm_uninstall`, scripts stacks.helm-install / stacks.helm-uninstall): no chart is
  rendered; what a release creates, its CRDs and `ready` objects, is read from labctl's catalogue. Like Helm: a new
  revision every time (history beyond --history-max deleted), its ownership check, `--wait` failing (and --atomic
  undoing the install or rolling the upgrade back) when a workload of the release would not get ready; what a
  stack's operator makes appears once every release of the stack is deployed, and goes with the uninstall.
"""

from __future__ import annotations

import base64
import copy
import gzip
import json
import time

import yaml

from tests.sim.kube_requests import write_object
from tests.sim.kube_resources import APPS, CRD_PREFIX, CRDS, ApiError, crd_object
from tests.sim.kube_store import namespace_object, timestamp
from tests.sim.sim_controllers import daemonset_object, deployment_object

# The CRDs Cilium's operator registers when it starts (kinds labctl or a stack may use).
CILIUM_CRDS = [
    ("v2", "ciliumnodes", "CiliumNode", "Cluster", ("cn", "ciliumn")),
    ("v2", "ciliumendpoints", "CiliumEndpoint", "Namespaced", ("cep", "ciliumep")),
    ("v2", "ciliumidentities", "CiliumIdentity", "Cluster", ("ciliumid",)),
    ("v2", "ciliumnetworkpolicies", "CiliumNetworkPolicy", "Namespaced", ("cnp", "ciliumnp")),
    ("v2", "ciliumclusterwidenetworkpolicies", "CiliumClusterwideNetworkPolicy", "Cluster", ("ccnp",)),
    ("v2", "ciliumlocalredirectpolicies", "CiliumLocalRedirectPolicy", "Namespaced", ("clrp",)),
    ("v2", "ciliumenvoyconfigs", "CiliumEnvoyConfig", "Namespaced", ("cec",)),
    ("v2", "ciliumclusterwideenvoyconfigs", "CiliumClusterwideEnvoyConfig", "Cluster", ("ccec",)),
    ("v2", "ciliumloadbalancerippools", "CiliumLoadBalancerIPPool", "Cluster", ("ippools", "lbippool")),
    ("v2", "ciliumcidrgroups", "CiliumCIDRGroup", "Cluster", ("ccg",)),
    ("v2", "ciliumnodeconfigs", "CiliumNodeConfig", "Namespaced", ()),
    ("v2alpha1", "ciliuml2announcementpolicies", "CiliumL2AnnouncementPolicy", "Cluster", ("l2announcement",)),
]
HELM_HISTORY_MAX = 10  # `helm upgrade --history-max` default: older revisions are deleted
HELM_OWNER = ("app.kubernetes.io/managed-by", "meta.helm.sh/release-name", "meta.helm.sh/release-namespace")


class SimHelm:
    """Helm's side of a SimCluster (mixed into it: uses its `store` and `refresh()`; keeps its `cilium`,
    `helm_revisions` and `operator_objects`)."""

    def _release_secrets(self, namespace: str, release: str) -> list[dict]:
        return sorted((s for s in self.store.list("api/v1", "secrets", namespace)
                       if s.get("type") == "helm.sh/release.v1"
                       and (s["metadata"].get("labels") or {}).get("owner") == "helm"
                       and s["metadata"]["labels"].get("name") == release),
                      key=lambda s: int(s["metadata"]["labels"].get("version", 0)))

    def _write_release(self, namespace: str, release: str, chart: str, version: str, values: dict, manifest: str,
                       status: str = "deployed", description: str = "") -> int:
        """A new revision in Helm's storage (Secret `sh.helm.release.v1.<name>.v<n>`, base64(gzip(json)) in its
        data); the deployed one before it becomes superseded, and history beyond --history-max is deleted."""
        with self.store.lock:
            previous = self._release_secrets(namespace, release)
            revision = int(previous[-1]["metadata"]["labels"]["version"]) + 1 if previous else 1
            first = decode_release(previous[0])["info"]["first_deployed"] if previous else timestamp()
            for secret in previous:
                if secret["metadata"]["labels"].get("status") == "deployed" and status == "deployed":
                    record = decode_release(secret)
                    record["info"]["status"] = "superseded"
                    secret["metadata"]["labels"]["status"] = "superseded"
                    secret["data"] = {"release": encode_release(record)}
                    self.store.put("api/v1", "secrets", secret, namespace)
            record = {"name": release, "namespace": namespace, "version": revision,
                      "info": {"first_deployed": first, "last_deployed": timestamp(), "deleted": "",
                               "description": description or ("Upgrade complete" if previous else "Install complete"),
                               "status": status},
                      "chart": {"metadata": {"name": chart, "version": version, "apiVersion": "v2"},
                                "templates": [], "values": {}, "files": []},
                      "config": values, "manifest": manifest, "hooks": []}
            self.store.put("api/v1", "secrets", {
                "metadata": {"name": f"sh.helm.release.v1.{release}.v{revision}",
                             "labels": {"owner": "helm", "name": release, "version": str(revision), "status": status,
                                        "modifiedAt": str(int(time.time()))}},
                "type": "helm.sh/release.v1",
                "data": {"release": encode_release(record)}}, namespace)
            for secret in self._release_secrets(namespace, release)[:-HELM_HISTORY_MAX]:
                self.store.delete("api/v1", "secrets", secret["metadata"]["name"], namespace)
            return revision

    def pending(self, namespace: str, release: str) -> str | None:
        """Helm's errPending (pkg/action/upgrade.go): while the newest revision is pending-install/-upgrade/
        -rollback (a Helm stopped mid-operation), every upgrade fails with this message; None when it may go on."""
        secrets = self._release_secrets(namespace, release)
        if secrets and secrets[-1]["metadata"]["labels"].get("status", "").startswith("pending"):
            return "Error: UPGRADE FAILED: another operation (install/upgrade/rollback) is in progress"
        return None

    def helm_rollback(self, release: str, namespace: str) -> tuple[int, str]:
        """`helm rollback <release>` (no revision: the one before the newest; pkg/action/rollback.go): a new revision
        with that revision's chart, values and manifest, deployed; the newest and every deployed one superseded."""
        with self.store.lock:
            secrets = self._release_secrets(namespace, release)
            if not secrets:
                return 1, f"Error: release: not found"
            current = decode_release(secrets[-1])
            target = next((s for s in secrets if int(s["metadata"]["labels"]["version"]) == current["version"] - 1),
                          None)
            if target is None:
                return 1, f"Error: release has no {current['version'] - 1} version"
            old = decode_release(target)
            for secret in secrets:  # the pending one too: rollback supersedes the current release
                if secret["metadata"]["labels"].get("status") in ("deployed", current["info"]["status"]):
                    record = decode_release(secret)
                    record["info"]["status"] = "superseded"
                    secret["metadata"]["labels"]["status"] = "superseded"
                    secret["data"] = {"release": encode_release(record)}
                    self.store.put("api/v1", "secrets", secret, namespace)
            chart = old["chart"]["metadata"]
            self._write_release(namespace, release, chart["name"], chart["version"], old.get("config") or {},
                                old.get("manifest") or "", description=f"Rollback to {old['version']}")
        return 0, "Rollback was a success! Happy Helming!"

    def helm_upgrade(self, p: dict, values: dict) -> int:
        """Cilium's `helm upgrade --install --wait`: a new release revision and the chart's workloads; its operator
        registers Cilium's CRDs."""
        with self.store.lock:
            self.helm_revisions += 1
            revision = self._write_release(p["namespace"], p["release"], "cilium", p["version"], values, "")
            self.cilium = values
            ns = p["namespace"]
            for version, plural, kind, scope, short in CILIUM_CRDS:
                if self.store.get(CRD_PREFIX, CRDS, f"{plural}.cilium.io") is None:
                    self.store.put(CRD_PREFIX, CRDS, crd_object("cilium.io", version, plural, kind, scope, short))
            for name in ("cilium", "cilium-envoy"):
                self.store.put(APPS, "daemonsets", daemonset_object(name), ns)
            operator = (values.get("operator") or {}).get("replicas", 2)
            self.store.put(APPS, "deployments", deployment_object("cilium-operator", operator), ns)
            hubble = values.get("hubble") or {}
            for name, on in (("hubble-relay", (hubble.get("relay") or {}).get("enabled")),
                             ("hubble-ui", (hubble.get("ui") or {}).get("enabled"))):
                if on:
                    self.store.put(APPS, "deployments", deployment_object(name, 1), ns)
                elif self.store.get(APPS, "deployments", name, ns):
                    self.store.delete(APPS, "deployments", name, ns)
        return revision

    def helm_install(self, p: dict, values: dict) -> tuple[int, str]:
        """`helm upgrade --install --wait --create-namespace <release>` of a stack release (script
        stacks.helm-install), as (exit code, output).

        What the chart creates is read from labctl's catalogue (templates/stacks/<stack>/stack.yaml): the release's
        `ready` objects and `provides_crds` (applied by labctl's kubectl beforehand when `crds_path` is set, else
        part of the chart with helm.sh/resource-policy keep). A chart outside the catalogue creates nothing here but
        its release record. Like Helm: a new revision every time; objects that exist without this release's
        ownership labels stop the install; `--wait` fails when a workload of the release would not become ready
        (then --atomic / --rollback-on-failure uninstalls a first install or rolls an upgrade back). When every
        release of a catalogue stack is deployed, the stack's own `ready` objects appear (what its operator makes)."""
        release, namespace = p["release"], p["namespace"]
        if refused := self.pending(namespace, release):
            return 1, refused
        stack, rel = _catalogue_release(p["stack"], release)
        with self.store.lock:
            if self.store.get("api/v1", "namespaces", namespace) is None:  # --create-namespace
                write_object(self.store, "api/v1", "namespaces", namespace_object(namespace, {"name": namespace}),
                             "helm")
            previous = [s for s in self._release_secrets(namespace, release)]
            deployed = next((s for s in reversed(previous) if s["metadata"]["labels"].get("status") == "deployed"),
                            None)
            verb = "UPGRADE FAILED" if previous else "INSTALLATION FAILED"
            if p.get("crds_path") and rel is not None:  # the script's `kubectl apply --server-side` of crds/
                for crd in _provided_crds(rel):
                    write_object(self.store, CRD_PREFIX, CRDS, crd, "labctl", replace=_merge_spec, operation="Apply")
            objects = _chart_objects(p, rel)
            problem = self._ownership(objects, release, namespace)
            if problem:
                action = "update" if previous else "install"
                return 1, f"Error: {verb}: Unable to continue with {action}: {problem}"
            try:
                for obj in objects:
                    self._helm_write(obj)
            except ApiError as exc:
                return 1, f"Error: {verb}: {exc.message}"
            manifest = yaml.safe_dump_all(objects, sort_keys=False)
            revision = self._write_release(namespace, release, p["chart"], p["version"], values, manifest)
        waiting = self._not_ready(objects)
        if waiting:
            return self._helm_failed(p, values, previous, deployed, revision, objects, waiting)
        if stack is not None:
            self._operator(p["stack"], stack)
        head = (f'Release "{release}" has been upgraded. Happy Helming!' if previous
                else f'Release "{release}" does not exist. Installing it now.')
        return 0, (f"{head}\nNAME: {release}\nLAST DEPLOYED: {timestamp()}\nNAMESPACE: {namespace}\nSTATUS: deployed\n"
                   f"REVISION: {revision}\nTEST SUITE: None")

    def _helm_failed(self, p, values, previous, deployed, revision, objects, waiting) -> tuple[int, str]:
        """`--wait` ran out of time: the revision is failed; with the rollback flag Helm uninstalls a first install
        or rolls back to the last deployed revision (a new revision with its chart and values)."""
        release, namespace = p["release"], p["namespace"]
        flag = (p.get("rollback_flag") or "").lstrip("-")
        with self.store.lock:
            secret = self._release_secrets(namespace, release)[-1]
            record = decode_release(secret)
            record["info"].update(status="failed", description=f"Release \"{release}\" failed: context deadline "
                                                               "exceeded")
            secret["metadata"]["labels"]["status"] = "failed"
            secret["data"] = {"release": encode_release(record)}
            self.store.put("api/v1", "secrets", secret, namespace)
            reason = f"context deadline exceeded ({'; '.join(waiting)})"
            if not flag:
                return 1, f"Error: {'UPGRADE' if previous else 'INSTALLATION'} FAILED: {reason}"
            if deployed is None:
                self.helm_uninstall(release, namespace, None)
                return 1, (f"Error: INSTALLATION FAILED: release {release} failed, and has been uninstalled due to "
                           f"{flag} being set: {reason}")
            old = decode_release(deployed)
            for obj in yaml.safe_load_all(old.get("manifest") or ""):
                if obj:
                    self._helm_write(obj)
            self._write_release(namespace, release, old["chart"]["metadata"]["name"],
                                old["chart"]["metadata"]["version"], old.get("config") or {}, old.get("manifest", ""),
                                description=f"Rollback to {old['version']}")
        return 1, (f"Error: UPGRADE FAILED: release {release} failed, and has been rolled back due to {flag} being "
                   f"set: {reason}")

    def helm_uninstall(self, release: str, namespace: str, stack: str | None) -> tuple[int, str]:
        """`helm uninstall`: the objects of the release's manifest (not those marked helm.sh/resource-policy keep)
        and its history; what the stack's operator made goes with it (garbage collection of its owners)."""
        with self.store.lock:
            secrets = self._release_secrets(namespace, release)
            if not secrets:
                return 1, f"Error: uninstall: Release not loaded: {release}: release: not found"
            manifest = decode_release(secrets[-1]).get("manifest") or ""
            for obj in yaml.safe_load_all(manifest):
                if not obj or (obj["metadata"].get("annotations") or {}).get("helm.sh/resource-policy") == "keep":
                    continue
                res = self.store.resource_for(obj["apiVersion"], obj["kind"])
                if res is not None:
                    self.store.delete(res.prefix, res.plural, obj["metadata"]["name"],
                                      obj["metadata"].get("namespace", "") if res.namespaced else "")
            for secret in secrets:
                self.store.delete("api/v1", "secrets", secret["metadata"]["name"], namespace)
            for key in self.operator_objects.pop(stack or "", []):
                self.store.delete(*key)
        return 0, f'release "{release}" uninstalled'

    def _ownership(self, objects: list[dict], release: str, namespace: str) -> str | None:
        """Helm refuses to adopt an object it did not create for this release (invalid ownership metadata)."""
        for obj in objects:
            res = self.store.resource_for(obj["apiVersion"], obj["kind"])
            meta = obj["metadata"]
            live = res and self.store.get(res.prefix, res.plural, meta["name"], meta.get("namespace", ""))
            if not live:
                continue
            labels, annotations = live["metadata"].get("labels") or {}, live["metadata"].get("annotations") or {}
            errors = []
            for key, have, want in ((HELM_OWNER[0], labels, "Helm"), (HELM_OWNER[1], annotations, release),
                                    (HELM_OWNER[2], annotations, namespace)):
                which = "label" if have is labels else "annotation"
                if key not in have:
                    errors.append(f'{which} validation error: missing key "{key}": must be set to "{want}"')
                elif have[key] != want:
                    errors.append(f'{which} validation error: key "{key}" must equal "{want}": current value is '
                                  f'"{have[key]}"')
            if errors:
                where = f' in namespace "{meta["namespace"]}"' if meta.get("namespace") else ""
                return (f'{obj["kind"]} "{meta["name"]}"{where} exists and cannot be imported into the current '
                        f"release: invalid ownership metadata; " + "; ".join(errors))
        return None

    def _helm_write(self, obj: dict) -> None:
        res = self.store.resource_for(obj["apiVersion"], obj["kind"])
        write_object(self.store, res.prefix, res.plural, obj, "helm", obj["metadata"].get("namespace", ""),
                     replace=_merge_spec)

    def _not_ready(self, objects: list[dict]) -> list[str]:
        """What `helm --wait` waits for among these: Deployments, StatefulSets, DaemonSets (after the controllers
        had their go)."""
        self.refresh()
        waiting = []
        with self.store.lock:
            for obj in objects:
                kind, meta = obj["kind"], obj["metadata"]
                if kind not in ("Deployment", "StatefulSet", "DaemonSet"):
                    continue
                live = self.store.get(APPS, kind.lower() + "s", meta["name"], meta["namespace"]) or {}
                spec, status = live.get("spec") or {}, live.get("status") or {}
                if kind == "DaemonSet":
                    ok = status.get("numberReady", 0) >= status.get("desiredNumberScheduled", 0)
                else:
                    ok = status.get("readyReplicas", 0) >= spec.get("replicas", 1)
                if not ok:
                    waiting.append(f"{kind} {meta['namespace']}/{meta['name']} not ready")
        return waiting

    def _operator(self, name: str, stack) -> None:
        """A catalogue stack's own `ready` objects (e.g. the StatefulSets prometheus-operator makes from the chart's
        Prometheus) appear once every release of the stack is deployed."""
        from labctl import stacks as S

        with self.store.lock:
            for r in stack.releases:
                ns = r.namespace or stack.namespace
                secrets = self._release_secrets(ns, r.release)
                if not secrets or secrets[-1]["metadata"]["labels"].get("status") != "deployed":
                    return
            made = []
            for entry in stack.ready:
                kind, ns, obj_name = S.parse_ready(entry, stack.namespace)
                obj = _workload(kind, ns, obj_name, {"app.kubernetes.io/managed-by": f"{name}-operator"}, {},
                                f"{name}-operator", "operator")
                if obj is None:
                    continue
                res = self.store.resource_for(obj["apiVersion"], obj["kind"])
                try:
                    write_object(self.store, res.prefix, res.plural, obj, "operator", ns, replace=_merge_spec)
                except ApiError:
                    continue  # e.g. its namespace is not there: the operator cannot make it either
                made.append((res.prefix, res.plural, obj_name, ns))
            self.operator_objects[name] = made


def encode_release(record: dict) -> str:
    """The Secret's data value: base64 (API) of base64(gzip(json)) (Helm)."""
    inner = base64.b64encode(gzip.compress(json.dumps(record).encode()))
    return base64.b64encode(inner).decode()


def decode_release(secret: dict) -> dict:
    raw = base64.b64decode(base64.b64decode(secret["data"]["release"]))
    return json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)


def _catalogue_release(stack: str, release: str):
    """(the catalogue Descriptor, its Release) for a stack release; (None, None) for a user chart. labctl's own
    catalogue is the truth of what a chart creates: the sim renders no chart."""
    from labctl import stacks as S

    descriptor = S.catalogue().get(stack)
    rel = next((r for r in descriptor.releases if r.release == release), None) if descriptor else None
    return (descriptor, rel) if rel is not None else (None, None)


def _provided_crds(rel) -> list[dict]:
    out = []
    for crd in rel.provides_crds:
        plural, _, group = crd.name.partition(".")
        out.append(crd_object(group, crd.version, plural, crd.kind, crd.scope))
    return out


def _chart_objects(p: dict, rel) -> list[dict]:
    """What the simulated chart renders: its CRDs when they are templates (no crds_path), and its `ready` objects,
    each with Helm's ownership labels and annotations."""
    from labctl import stacks as S

    if rel is None:
        return []
    release, namespace = p["release"], p["namespace"]
    labels = {"app.kubernetes.io/managed-by": "Helm", "helm.sh/chart": f"{p['chart']}-{p['version']}",
              "app.kubernetes.io/instance": release}
    annotations = {"meta.helm.sh/release-name": release, "meta.helm.sh/release-namespace": namespace}
    out = []
    if not p.get("crds_path"):
        for crd in _provided_crds(rel):
            crd["metadata"]["labels"] = dict(labels)
            crd["metadata"]["annotations"] = {**annotations, "helm.sh/resource-policy": "keep"}
            out.append(crd)
    ready = [S.parse_ready(e, namespace) for e in rel.ready]
    backend = next(((ns, name) for kind, ns, name in ready if kind == "Deployment"), (namespace, release))
    for kind, ns, name in ready:
        obj = _workload(kind, ns, name, labels, annotations, release, p["chart"], backend)
        if obj is not None:
            out.append(obj)
    return out


def _workload(kind: str, ns: str, name: str, labels: dict, annotations: dict, instance: str, image: str = "sim",
              backend: tuple[str, str] | None = None) -> dict | None:
    if kind == "APIService":
        version, _, group = name.partition(".")
        svc_ns, svc_name = backend or ("default", name)
        return {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
                "metadata": {"name": name, "labels": dict(labels), "annotations": dict(annotations)},
                "spec": {"group": group, "version": version, "groupPriorityMinimum": 100, "versionPriority": 100,
                         "insecureSkipTLSVerify": True,
                         "service": {"name": svc_name, "namespace": svc_ns, "port": 443}}}
    if kind not in ("Deployment", "StatefulSet", "DaemonSet"):
        return None
    selector = {"app.kubernetes.io/name": name, "app.kubernetes.io/instance": instance}
    spec: dict = {"selector": {"matchLabels": selector},
                  "template": {"metadata": {"labels": dict(selector)},
                               "spec": {"containers": [{"name": name, "image": f"sim.local/{image}:latest"}]}}}
    if kind != "DaemonSet":
        spec["replicas"] = 1
    if kind == "StatefulSet":
        spec["serviceName"] = name
    return {"apiVersion": "apps/v1", "kind": kind,
            "metadata": {"name": name, "namespace": ns, "labels": {**labels, **selector},
                         "annotations": dict(annotations)},
            "spec": spec}


def _merge_spec(current: dict, obj: dict) -> dict:
    """An update by a client that owns the object's spec (Helm's upgrade, kubectl apply of a CRD): labels and
    annotations merged, the spec replaced."""
    out = copy.deepcopy(current)
    meta = out.setdefault("metadata", {})
    for key in ("labels", "annotations"):
        if obj["metadata"].get(key):
            meta[key] = {**(meta.get(key) or {}), **obj["metadata"][key]}
    out["spec"] = copy.deepcopy(obj.get("spec"))
    return out
