"""The generic controllers of a simulated cluster (everything that is not Cilium's: SimCluster.refresh does those).

`Controllers`, part of SimCluster, runs at every API request: every Deployment, StatefulSet, DaemonSet and Job gets
a healthy controller's status while a Ready node can run its pods (taints, tolerations, cordon); PVCs bind when
their class exists (the default class is assigned retroactively); APIServices are Available when the workload
behind their service is; every namespace gets its `default` ServiceAccount and `kube-root-ca.crt`. metrics-server
is Ready only while it can scrape a kubelet (SimCluster.scrapable), as its readiness needs a successful scrape.

Also the kube-system workloads as the installers create them (`deployment_object`, `daemonset_object`).
"""

from __future__ import annotations

import hashlib
import json

from tests.sim.kube_normalise import default_storage_class
from tests.sim.kube_resources import APISERVICE_PREFIX, APISERVICES, APPS
from tests.sim.kube_store import timestamp
from tests.sim.sim_stack_controllers import pod_rejection, run_controllers

KUBE_SYSTEM = "kube-system"
# What `cni` installs in kube-system and refresh() keeps up to date from the Cilium agents (not the generic loop).
CILIUM_WORKLOADS = ("cilium", "cilium-envoy", "cilium-operator", "coredns", "hubble-relay", "hubble-ui")
# DaemonSet pods get these tolerations from the DaemonSet controller (AddOrUpdateDaemonPodTolerations)
DAEMON_TOLERATED = {"node.kubernetes.io/unschedulable", "node.kubernetes.io/disk-pressure",
                    "node.kubernetes.io/memory-pressure", "node.kubernetes.io/pid-pressure"}


class Controllers:
    """The generic controllers of a SimCluster (mixed into it: uses its `store`, `ca` and `scrapable()`)."""

    def _controllers(self, nodes: list[dict]) -> None:
        """Deployment, StatefulSet, DaemonSet, Job, PVC, APIService status as healthy controllers would set them,
        and the objects every namespace gets (ServiceAccount default, ConfigMap kube-root-ca.crt)."""
        store = self.store
        for plural in ("deployments", "statefulsets", "daemonsets"):
            for obj in store.list(APPS, plural):
                meta = obj["metadata"]
                if meta.get("namespace") == KUBE_SYSTEM and meta["name"] in CILIUM_WORKLOADS:
                    continue
                self._put_status(APPS, plural, obj, self._workload_status(plural, obj, nodes))
        for job in store.list("apis/batch/v1", "jobs"):
            if not any(c.get("type") == "Complete" for c in (job.get("status") or {}).get("conditions") or []):
                template = ((job.get("spec") or {}).get("template") or {}).get("spec") or {}
                # a Job whose pods admission refuses never completes (its controller records FailedCreate)
                if any(_schedulable(n, template.get("tolerations") or [], False) for n in nodes) and not \
                        pod_rejection(self, job["metadata"].get("namespace", ""), job["spec"].get("template") or {}):
                    done = (job.get("spec") or {}).get("completions", 1)
                    self._put_status("apis/batch/v1", "jobs", job, {
                        "succeeded": done, "active": 0, "ready": 0, "terminating": 0, "startTime": timestamp(),
                        "completionTime": timestamp(), "conditions": [
                            {"type": "SuccessCriteriaMet", "status": "True"}, {"type": "Complete", "status": "True"}]})
        classes = {sc["metadata"]["name"] for sc in store.list("apis/storage.k8s.io/v1", "storageclasses")}
        for pvc in store.list("api/v1", "persistentvolumeclaims"):
            spec = pvc.setdefault("spec", {})
            if "storageClassName" not in spec and (default := default_storage_class(store)):
                spec["storageClassName"] = default  # retroactive default class assignment (1.28+)
            # bound as if its consumer were scheduled (WaitForFirstConsumer classes bind then)
            bound = spec.get("storageClassName") in classes
            status = {"phase": "Bound", "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                      "capacity": {"storage": ((spec.get("resources") or {}).get("requests") or {}).get("storage", "0")}
                      } if bound else {"phase": "Pending"}
            self._put_status("api/v1", "persistentvolumeclaims", pvc, status)
        for svc in store.list(APISERVICE_PREFIX, APISERVICES):
            self._put_status(APISERVICE_PREFIX, APISERVICES, svc, {"conditions": [self._apiservice(svc)]})
        run_controllers(self)
        ca = {"ca.crt": self.ca.cert_pem.decode()} if self.ca else {}
        for ns in store.list("api/v1", "namespaces"):
            name = ns["metadata"]["name"]
            if store.get("api/v1", "serviceaccounts", "default", name) is None:
                store.put("api/v1", "serviceaccounts", {"metadata": {"name": "default"}}, name)
            if ca and store.get("api/v1", "configmaps", "kube-root-ca.crt", name) is None:
                store.put("api/v1", "configmaps", {"metadata": {"name": "kube-root-ca.crt", "annotations": {
                    "kubernetes.io/description": "Contains a CA bundle that can be used to verify the "
                                                 "kube-apiserver when using internal endpoints such as the internal "
                                                 "service IP or kubernetes.default.svc. No other usage is guaranteed "
                                                 "across distributions of Kubernetes clusters."}}, "data": ca}, name)

    def _put_status(self, prefix: str, plural: str, obj: dict, status: dict) -> None:
        if obj.get("status") != status:
            obj["status"] = status
            self.store.put(prefix, plural, obj, obj["metadata"].get("namespace", ""))

    def _workload_status(self, plural: str, obj: dict, nodes: list[dict]) -> dict:
        """A healthy controller's status: every replica runs as soon as one node can take the pods (Ready, not
        cordoned, taints tolerated); a DaemonSet on every Ready node whose taints it tolerates. metrics-server is
        Ready only once it scraped a kubelet (its readiness probe: "metrics-server needs at least 2 scrapes")."""
        spec, meta = obj.get("spec") or {}, obj["metadata"]
        template = spec.get("template") or {}
        tolerations = (template.get("spec") or {}).get("tolerations") or []
        generation = meta.get("generation", 1)
        if plural == "daemonsets":
            if pod_rejection(self, meta.get("namespace", ""), template):
                return {"observedGeneration": generation, "desiredNumberScheduled": 0, "currentNumberScheduled": 0,
                        "numberReady": 0, "updatedNumberScheduled": 0, "numberAvailable": 0, "numberMisscheduled": 0}
            n = sum(_schedulable(node, tolerations, True) for node in nodes)
            return {"observedGeneration": generation, "desiredNumberScheduled": n, "currentNumberScheduled": n,
                    "numberReady": n, "updatedNumberScheduled": n, "numberAvailable": n, "numberMisscheduled": 0}
        want = spec.get("replicas", 1)
        rejected = pod_rejection(self, meta.get("namespace", ""), template)
        runs = not rejected and any(_schedulable(node, tolerations, False) for node in nodes)
        labels = meta.get("labels") or {}
        if plural == "deployments" and "metrics-server" in (meta["name"], labels.get("app.kubernetes.io/name")):
            runs = runs and bool(self.scrapable())
        ready = want if runs else 0
        if plural == "deployments":
            available = {"type": "Available", "status": "True" if ready >= want else "False",
                         "reason": "MinimumReplicasAvailable" if ready >= want else "MinimumReplicasUnavailable",
                         "message": "Deployment has minimum availability." if ready >= want
                         else "Deployment does not have minimum availability."}
            status = {"observedGeneration": generation, "replicas": want, "updatedReplicas": want,
                      "readyReplicas": ready, "availableReplicas": ready,
                      "conditions": [available, {"type": "Progressing", "status": "True",
                                                 "reason": "NewReplicaSetAvailable"}]}
            if want > ready:
                status["unavailableReplicas"] = want - ready
            if rejected:  # the Deployment controller surfaces its ReplicaSet's FailedCreate like this
                status["conditions"].append({"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                                             "message": rejected})
            return status
        revision = f"{meta['name']}-{hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]}"
        return {"observedGeneration": generation, "replicas": want, "readyReplicas": ready, "currentReplicas": want,
                "updatedReplicas": want, "availableReplicas": ready, "currentRevision": revision,
                "updateRevision": revision, "collisionCount": 0}

    def _apiservice(self, svc: dict) -> dict:
        """The aggregator's availability check: local groups always; a service-backed one when its endpoints (the
        ready pods of the workload of the service's name) exist."""
        service = (svc.get("spec") or {}).get("service")
        if not service:
            return {"type": "Available", "status": "True", "reason": "Local",
                    "message": "Local APIServices are always available"}
        ns, name = service.get("namespace", ""), service.get("name", "")
        backing = [o for plural in ("deployments", "statefulsets") if (o := self.store.get(APPS, plural, name, ns))]
        if backing and not any((o.get("status") or {}).get("readyReplicas") for o in backing):
            return {"type": "Available", "status": "False", "reason": "MissingEndpoints",
                    "message": f'endpoints for service/{name} in "{ns}" have no addresses with port name "https"'}
        return {"type": "Available", "status": "True", "reason": "Passed", "message": "all checks passed"}


def _tolerates(toleration: dict, taint: dict) -> bool:
    if toleration.get("effect") and toleration["effect"] != taint.get("effect"):
        return False
    if toleration.get("operator") == "Exists":
        return not toleration.get("key") or toleration["key"] == taint.get("key")
    return toleration.get("key") == taint.get("key") and toleration.get("value", "") == taint.get("value", "")


def _schedulable(node: dict, tolerations: list[dict], daemon: bool) -> bool:
    """May a pod with `tolerations` run on this Node now: Ready, not cordoned (DaemonSet pods ignore that), every
    NoSchedule/NoExecute taint tolerated."""
    ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                for c in (node.get("status") or {}).get("conditions") or [])
    spec = node.get("spec") or {}
    if not ready or (spec.get("unschedulable") and not daemon):
        return False
    for taint in spec.get("taints") or []:
        if taint.get("effect") not in ("NoSchedule", "NoExecute") or (daemon and taint.get("key") in DAEMON_TOLERATED):
            continue
        if not any(_tolerates(t, taint) for t in tolerations):
            return False
    return True


def _pod_spec(name: str) -> dict:
    """A selector and the pod template it matches (what the API validates on every write, e.g. a rollout restart)."""
    labels = {"k8s-app": name}
    return {"selector": {"matchLabels": labels}, "template": {"metadata": {"labels": labels}}}


def deployment_object(name: str, replicas: int) -> dict:
    return {"metadata": {"name": name, "generation": 1}, "spec": {"replicas": replicas, **_pod_spec(name)},
            "status": {"observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas,
                       "availableReplicas": 0, "readyReplicas": 0}}


def daemonset_object(name: str) -> dict:
    return {"metadata": {"name": name, "generation": 1}, "spec": _pod_spec(name),
            "status": {"observedGeneration": 1, "desiredNumberScheduled": 0, "numberReady": 0,
                       "updatedNumberScheduled": 0}}
