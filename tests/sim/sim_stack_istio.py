"""Istio's sidecar injector (istiod's mutating admission webhook) for the pods a simulated workload creates,
registered in ADMISSION (tests/sim/sim_stack_controllers.py) as a mutating entry: the validating ones after it (the
quotas stack's LimitRanger and ResourceQuota, tests/sim/sim_stack_quotas.py) see the injected containers, as for real.

What it models, from istio/istio at tag 1.30.3 (commit 56df41f63e513f834c9a3af33d8aed82d1d961f2, the chart version
labctl pins):
- When: istiod's release is deployed in the cluster (its MutatingWebhookConfiguration istio-sidecar-injector comes
  with it, reference/charts/istiod/workloads.txt) and the pod's namespace is labelled istio-injection=enabled (the
  webhook's namespaceSelector), unless the pod opts out with label sidecar.istio.io/inject=false or already has a
  proxy (a re-injection adds nothing).
- What: manifests/charts/istio-control/istio-discovery/files/injection-template.yaml adds the init container
  istio-init and the container istio-proxy, BOTH with the same `resources` (its `define "resources"`): the pod's
  annotations sidecar.istio.io/proxyCPU, proxyMemory, proxyCPULimit, proxyMemoryLimit when any is set, else
  the chart value global.proxy.resources. There is no global.proxy_init.resources in 1.30 (older Istio had one).
  The chart's default global.proxy.resources is requests 100m/128Mi, limits 2000m/1024Mi
  (reference/charts/istiod/chart.txt notes).
- Where: with native sidecars (pkg/kube/inject/webhook.go DetectNativeSidecar: ENABLE_NATIVE_SIDECARS=auto, on
  when every node's kubelet is 1.33 or newer) istio-proxy is an init container with restartPolicy Always, after
  istio-init; otherwise it is appended to the containers.
"""

from __future__ import annotations

import copy
import re

from tests.sim.sim_stack_controllers import ADMISSION

RELEASE = "istiod"
IMAGE = "docker.io/istio/proxyv2:1.30.3"
CHART_DEFAULT_RESOURCES = {"requests": {"cpu": "100m", "memory": "128Mi"},
                           "limits": {"cpu": "2000m", "memory": "1024Mi"}}
ANNOTATIONS = (("requests", "cpu", "sidecar.istio.io/proxyCPU"), ("requests", "memory", "sidecar.istio.io/proxyMemory"),
               ("limits", "cpu", "sidecar.istio.io/proxyCPULimit"),
               ("limits", "memory", "sidecar.istio.io/proxyMemoryLimit"))
NATIVE_SIDECAR_MINOR = 33  # webhook.go DetectNativeSidecar: "Native sidecars feature graduated to stable in 1.33"


def istiod_values(cluster) -> dict | None:
    """The user-supplied values of istiod's deployed release (Helm's record), or None when it is not installed."""
    from tests.sim.sim_helm import decode_release  # sim_helm imports the controllers, which import this module

    # Admission runs for every workload at every refresh: list and decode only when the store changed since
    # (Store.version counts every write), or the simulated API server slows down under it.
    cached = getattr(cluster, "_istiod_values", None)
    if cached is not None and cached[0] == cluster.store.version:
        return cached[1]
    found = None
    for secret in cluster.store.list("api/v1", "secrets"):
        labels = secret["metadata"].get("labels") or {}
        if secret.get("type") == "helm.sh/release.v1" and labels.get("owner") == "helm" and \
                labels.get("name") == RELEASE and labels.get("status") == "deployed":
            found = decode_release(secret).get("config") or {}
            break
    cluster._istiod_values = (cluster.store.version, found)
    return found


def proxy_resources(values: dict, annotations: dict) -> dict:
    """The `resources` of istio-init and istio-proxy (injection-template.yaml `define "resources"`)."""
    if any(key in annotations for _, _, key in ANNOTATIONS):
        out: dict = {}
        for part, resource, key in ANNOTATIONS:
            if key in annotations:
                out.setdefault(part, {})[resource] = annotations[key]
        return out
    proxy = ((values.get("global") or {}).get("proxy") or {})
    return copy.deepcopy(proxy["resources"] if "resources" in proxy else CHART_DEFAULT_RESOURCES)


def _native_sidecars(cluster) -> bool:
    for node in cluster.store.list("api/v1", "nodes"):
        version = ((node.get("status") or {}).get("nodeInfo") or {}).get("kubeletVersion", "")
        m = re.match(r"v?\d+\.(\d+)", version)
        if not m or int(m[1]) < NATIVE_SIDECAR_MINOR:
            return False
    return True


def inject_sidecar(cluster, namespace: str, pod: dict) -> None:
    """Mutating: add istio-init and istio-proxy to `pod` (a pod template, changed in place) as istiod would."""
    ns = cluster.store.get("api/v1", "namespaces", namespace) or {}
    if ((ns.get("metadata") or {}).get("labels") or {}).get("istio-injection") != "enabled":
        return None
    meta = pod.setdefault("metadata", {})
    if (meta.get("labels") or {}).get("sidecar.istio.io/inject") == "false":
        return None
    spec = pod.setdefault("spec", {})
    if spec.get("hostNetwork") or any(c.get("name") == "istio-proxy"
                                      for f in ("containers", "initContainers") for c in spec.get(f) or []):
        return None
    values = istiod_values(cluster)
    if values is None:
        return None
    resources = proxy_resources(values, meta.get("annotations") or {})
    init = {"name": "istio-init", "image": IMAGE, "args": ["istio-iptables"], "resources": copy.deepcopy(resources)}
    proxy = {"name": "istio-proxy", "image": IMAGE, "args": ["proxy", "sidecar"], "resources": resources}
    if _native_sidecars(cluster):
        spec["initContainers"] = [init, {**proxy, "restartPolicy": "Always"}, *(spec.get("initContainers") or [])]
    else:
        spec["initContainers"] = [init, *(spec.get("initContainers") or [])]
        spec["containers"] = [*(spec.get("containers") or []), proxy]
    meta.setdefault("annotations", {})["sidecar.istio.io/status"] = \
        '{"initContainers":["istio-init"],"containers":["istio-proxy"]}'
    return None


inject_sidecar.MUTATING = True
ADMISSION.append(inject_sidecar)


class AdmissionOnly:
    """What the admission chain reads of a SimCluster, without VMs or an API server: a store holding nodes,
    namespaces, LimitRanges, quotas, workloads and Helm's release records (for tests of a pod's admission)."""

    def __init__(self, kubelet: str = "v1.35.6"):
        from tests.sim.kube_store import Store

        self.store = Store()
        self.store.put("api/v1", "nodes", {"metadata": {"name": "worker1"},
                                           "status": {"nodeInfo": {"kubeletVersion": kubelet}}})

    def namespace(self, name: str, labels: dict) -> None:
        from tests.sim.kube_store import namespace_object

        self.store.put("api/v1", "namespaces", namespace_object(name, labels))

    def istiod(self, values: dict) -> None:
        """istiod's release deployed with these values (Helm's record, as sim_helm writes it)."""
        from tests.sim.sim_helm import SimHelm

        helm = SimHelm()  # only its record keeping, on this store
        helm.store = self.store
        helm._write_release("istio-system", RELEASE, "istiod", "1.30.3", values, "")
