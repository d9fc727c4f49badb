"""The istio stack in the simulated lab: istiod's sidecar injection under the quotas stack's LimitRange (a pod's
admission chain on a bare simulated store: tests/sim/sim_stack_istio.py, sim_stack_quotas.py), and Cilium's values
following the cluster's istio (one `helm upgrade` when istio is added, none on a second install)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from labctl import model
from labctl import stacks as S
from phases import cni
from tests.conftest import run_cli
from tests.sim.kube_resources import APPS
from tests.sim.test_sim_stacks import open_sim
from tests.sim.sim_stack_controllers import pod_rejection
from tests.sim.sim_stack_istio import AdmissionOnly, inject_sidecar

# the predecessor's istiod values (reference/stacks.md phase 12): proxy 50m/64Mi, proxy_init 10m/16Mi
PREDECESSOR_ISTIOD = {"global": {"proxy": {"resources": {"requests": {"cpu": "50m", "memory": "64Mi"}}},
                                 "proxy_init": {"resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}}}
# the highest LimitRange minimum of the predecessor's phase 16 (prod): what labctl's sidecars must clear everywhere
PROD_MINIMUM = {"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": "demo-limitrange", "namespace": "demo"},
                "spec": {"limits": [{"type": "Container", "min": {"cpu": "100m", "memory": "128Mi"}}]}}
SHIPPED = Path(__file__).resolve().parents[2] / "clusters.json"
APP = {"metadata": {"labels": {"app": "httpbin"}},
       "spec": {"containers": [{"name": "httpbin", "image": "ghcr.io/mccutchen/go-httpbin:2.25.0",
                                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                                              "limits": {"cpu": "200m", "memory": "256Mi"}}}]}}


class BareCluster(AdmissionOnly):
    """AdmissionOnly with a Deployment (LimitRanger's defaulting names the pod after its workload)."""

    def deployment(self, namespace: str, template: dict) -> dict:
        obj = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "httpbin", "namespace": namespace},
               "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "httpbin"}},
                        "template": copy.deepcopy(template)}}
        self.store.put(APPS, "deployments", obj, namespace)
        return obj


def labctl_istiod_values(cluster_name: str = "dev") -> dict:
    """The istiod values labctl renders for a dev cluster declaring istio."""
    lab = model.parse(json.dumps({"clusters": [{
        "name": cluster_name, "pod_cidr": "10.20.0.0/16", "service_cidr": "10.97.0.0/16",
        "stacks": ["metrics-server", "istio"],
        "nodes": [{"name": f"{cluster_name}-master", "role": "master", "cpu": 2, "memory": 4096, "disk": 20},
                  {"name": f"{cluster_name}-worker1", "role": "worker", "cpu": 4, "memory": 8192, "disk": 20}]}]}),
        source="test")
    stack = S.resolve(lab, lab.clusters[0], "istio", lab_dir=Path("."))
    return next(r.values for r in stack.releases if r.release == "istiod")


def injected(cluster: BareCluster, namespace: str, template: dict) -> dict:
    pod = copy.deepcopy(template)
    inject_sidecar(cluster, namespace, pod)
    return pod


@pytest.mark.parametrize(("values", "refused"), [(PREDECESSOR_ISTIOD, True), (None, False)],
                         ids=["predecessor-values", "labctl-values"])
def test_istio_init_below_the_limitrange_minimum_is_rejected(values, refused):
    """Defect (e) of the predecessor's phase 12: its injected istio-init (and sidecar) requested less than the
    namespace's LimitRange minimum, so every new injected pod was forbidden. labctl's values clear the highest
    minimum the predecessor ever set (prod's 100m/128Mi) for both injected containers."""
    cluster = BareCluster()
    cluster.namespace("demo", {"istio-injection": "enabled"})
    cluster.store.put("api/v1", "limitranges", copy.deepcopy(PROD_MINIMUM), "demo")
    cluster.istiod(values if values is not None else labctl_istiod_values())
    cluster.deployment("demo", APP)
    message = pod_rejection(cluster, "demo", APP)
    if refused:
        assert message and "is forbidden" in message and "minimum cpu usage per Container is 100m, but request is " \
            "50m" in message, message
    else:
        assert message is None
    pod = injected(cluster, "demo", APP)
    init = {c["name"]: c for c in pod["spec"]["initContainers"]}
    assert set(init) == {"istio-init", "istio-proxy"}  # Kubernetes 1.35 nodes: a native sidecar (restartable init)


def test_injection_follows_the_namespace_label_and_istiod():
    cluster = BareCluster()
    cluster.namespace("demo", {"istio-injection": "enabled"})
    cluster.namespace("plain", {})
    assert injected(cluster, "demo", APP) == APP, "no istiod release yet: no webhook, nothing injected"
    cluster.istiod({"global": {"proxy": {"resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                                                       "limits": {"cpu": "200m", "memory": "256Mi"}}}}})
    assert injected(cluster, "plain", APP) == APP
    pod = injected(cluster, "demo", APP)
    want = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "200m", "memory": "256Mi"}}
    assert [(c["name"], c["resources"]) for c in pod["spec"]["initContainers"]] == \
        [("istio-init", want), ("istio-proxy", want)]
    assert pod["spec"]["initContainers"][1]["restartPolicy"] == "Always"
    assert injected(cluster, "demo", pod) == pod, "a second injection adds nothing"
    opted_out = copy.deepcopy(APP)
    opted_out["metadata"]["labels"]["sidecar.istio.io/inject"] = "false"
    assert injected(cluster, "demo", opted_out) == opted_out
    # the pod's own annotations win over the chart value (injection-template.yaml, define "resources")
    annotated = copy.deepcopy(APP)
    annotated["metadata"]["annotations"] = {"sidecar.istio.io/proxyCPU": "150m"}
    assert injected(cluster, "demo", annotated)["spec"]["initContainers"][0]["resources"] == \
        {"requests": {"cpu": "150m"}}


def test_injection_before_native_sidecars_appends_the_proxy_container():
    cluster = BareCluster(kubelet="v1.32.9")
    cluster.namespace("demo", {"istio-injection": "enabled"})
    cluster.istiod({})  # the chart's default resources
    pod = injected(cluster, "demo", APP)
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["istio-init"]
    assert [c["name"] for c in pod["spec"]["containers"]] == ["httpbin", "istio-proxy"]
    assert pod["spec"]["containers"][1]["resources"]["requests"] == {"cpu": "100m", "memory": "128Mi"}


# ---- (a): Cilium's socket LB limited to the host namespace where istio runs -------------------------------------

ENV = {"LABCTL_HOST_MEMORY_MIB": str(256 * 1024)}
LAB = {"clusters": [{
    "name": "dev", "pod_cidr": "10.20.0.0/16", "service_cidr": "10.97.0.0/16", "stacks": ["metrics-server"],
    "nodes": [{"name": "dev-master", "role": "master", "cpu": 2, "memory": 4096, "disk": 20},
              {"name": "dev-worker1", "role": "worker", "cpu": 2, "memory": 8192, "disk": 20}]}]}


@pytest.mark.sim
def test_cilium_socket_lb_bypassing_istio_is_fixed_by_one_upgrade(fake_tart, lab_dir):
    """Defect (a) of the predecessor's phase 12: with kube-proxy replacement, Cilium's socket load balancing in the
    pods' namespaces bypasses Istio's routing (the canary split, the circuit breaker) unless socketLB.hostNamespaceOnly
    is set (Cilium docs, "Integration with Istio"). Declaring istio upgrades Cilium once with it; a second install
    changes nothing."""
    config = lab_dir / "clusters.json"
    with open_sim(lab_dir, fake_tart, LAB) as lab:
        result = run_cli("--json", "install", "--skip", "stacks", env=ENV)
        assert result.code == 0, result.out
        sim = lab.clusters["dev"]
        before = sim.helm_revisions
        assert "socketLB" not in sim.cilium
        with_istio = copy.deepcopy(LAB)
        with_istio["clusters"][0]["stacks"].append("istio")
        config.write_text(json.dumps(with_istio))
        result = run_cli("--json", "install", "--skip", "stacks", env=ENV)
        assert result.code == 0, result.out
        assert sim.helm_revisions == before + 1
        assert sim.cilium["socketLB"] == {"hostNamespaceOnly": True}
        result = run_cli("--json", "install", "--skip", "stacks", env=ENV)
        assert result.code == 0, result.out
        assert sim.helm_revisions == before + 1, "a second install upgraded Cilium again"


def test_shipped_lab_limits_socket_lb_only_where_istio_is_declared():
    lab = model.parse(SHIPPED.read_text(), source=str(SHIPPED))
    has = {c.name: "socketLB" in yaml.safe_load(cni.cilium_values(lab, c)) for c in lab.clusters}
    assert has == {c.name: "istio" in c.stack_names for c in lab.clusters}
    assert has["dev"] and not has["platform"] and not has["prod"]
