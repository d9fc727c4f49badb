"""The istio stack with the demo apps and the quotas stack, rendered for clusters named dev, staging and prod: the
demo's pods with istiod's sidecar pass the quotas LimitRange and ResourceQuota (the same admission model the
simulated lab runs: tests/sim/sim_stack_quotas.py, sim_stack_istio.py); STRICT mTLS leaves the NodePorts reachable;
the demo namespace and pods follow the cluster's istio; hpa-demo installs after istio, quotas and gatekeeper."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labctl import model
from labctl import stacks as S
from phases.stacks import _requires
from tests.sim.kube_resources import APPS
from tests.sim.sim_stack_controllers import pod_rejection
from tests.sim.sim_stack_istio import AdmissionOnly, proxy_resources

PLURALS = {"Deployment": "deployments", "StatefulSet": "statefulsets", "DaemonSet": "daemonsets"}


def lab_for(name: str, stacks: list[str]) -> model.Lab:
    return model.parse(json.dumps({"clusters": [{
        "name": name, "pod_cidr": "10.20.0.0/16", "service_cidr": "10.97.0.0/16", "stacks": stacks,
        "nodes": [{"name": f"{name}-master", "role": "master", "cpu": 2, "memory": 4096, "disk": 20},
                  {"name": f"{name}-worker1", "role": "worker", "cpu": 8, "memory": 16384, "disk": 40}]}]}),
        source="test")


def rendered(lab: model.Lab, stack: str) -> S.StackDef:
    return S.resolve(lab, lab.clusters[0], stack, Path("."))


@pytest.mark.parametrize("name", ["dev", "staging", "prod"])
def test_injected_sidecars_pass_the_quotas_limitrange_and_quota(name):
    """Every demo pod, with the istio-init and istio-proxy istiod injects (resources from labctl's istiod values),
    is admitted under the quotas stack's LimitRange (each container within min/max) and ResourceQuota (the demo at
    its HPAs' minimum), on clusters named dev, staging and prod (the quotas profiles)."""
    if not (S.STACKS_DIR / "quotas" / "stack.yaml").exists():
        pytest.skip("templates/stacks/quotas is not there yet: no LimitRange to check the sidecars against")
    lab = lab_for(name, ["metrics-server", "hpa-demo", "istio", "quotas"])
    istiod = next(r.values for r in rendered(lab, "istio").releases if r.release == "istiod")
    demo = rendered(lab, "hpa-demo")
    cluster = AdmissionOnly()
    cluster.namespace(demo.namespace, {"istio-injection": "enabled"})
    cluster.istiod(istiod)
    limit_ranges = []
    for obj in rendered(lab, "quotas").objects + demo.objects:
        if obj["kind"] in ("LimitRange", "ResourceQuota", "HorizontalPodAutoscaler", *PLURALS):
            res = cluster.store.resource_for(obj["apiVersion"], obj["kind"])
            cluster.store.put(res.prefix, res.plural, obj, obj["metadata"].get("namespace", demo.namespace))
            limit_ranges += [obj] if obj["kind"] == "LimitRange" else []
    assert limit_ranges, f"the quotas stack renders no LimitRange for {name}"
    workloads = [o for o in demo.objects if o["kind"] in PLURALS]
    assert workloads
    for obj in workloads:
        template = obj["spec"]["template"]
        refused = pod_rejection(cluster, demo.namespace, template)
        assert refused is None, f"{name}: {obj['kind']} {obj['metadata']['name']}: {refused}"
    # and the sidecar itself, container by container, against each Container item's min and max
    sidecar = proxy_resources(istiod, {})
    for lr in limit_ranges:
        for item in lr["spec"]["limits"]:
            if item.get("type") != "Container":
                continue
            for key, low in (item.get("min") or {}).items():
                assert S.quantity(sidecar["requests"][key]) >= S.quantity(low), (name, key, sidecar)
            for key, high in (item.get("max") or {}).items():
                assert S.quantity(sidecar["limits"][key]) <= S.quantity(high), (name, key, sidecar)
    assert cluster.store.list(APPS, "deployments", demo.namespace)


def test_strict_mtls_rejecting_plaintext_on_the_nodeports_is_fixed():
    """Defect (b) of the predecessor's phase 12: PeerAuthentication STRICT for the whole namespace refused the
    plaintext clients of nginx's NodePort 30080 (outside the mesh). Every NodePort Service of the demo reaches a
    container port that a workload-level PeerAuthentication keeps PERMISSIVE; the namespace's default stays STRICT."""
    demo = rendered(lab_for("dev", ["metrics-server", "hpa-demo", "istio"]), "hpa-demo")
    auth = [o for o in demo.objects if o["kind"] == "PeerAuthentication"]
    default = [a for a in auth if not a["spec"].get("selector")]
    assert [a["spec"]["mtls"]["mode"] for a in default] == ["STRICT"]
    services = [o for o in demo.objects if o["kind"] == "Service" and o["spec"].get("type") == "NodePort"]
    assert {s["metadata"]["name"] for s in services} >= {"nginx", "keycloak"}
    for svc in services:
        selector = svc["spec"]["selector"]
        pods = [o["spec"]["template"] for o in demo.objects if o["kind"] in PLURALS
                and selector.items() <= o["spec"]["template"]["metadata"]["labels"].items()]
        assert pods, svc["metadata"]["name"]
        for port in svc["spec"]["ports"]:
            target = port["targetPort"]
            numbers = {p["containerPort"] for pod in pods for c in pod["spec"]["containers"]
                       for p in c.get("ports") or [] if target in (p.get("name"), p["containerPort"])}
            assert numbers, (svc["metadata"]["name"], target)
            for number in numbers:
                modes = [a["spec"].get("portLevelMtls", {}).get(str(number), {}).get("mode") for a in auth
                         if a["spec"].get("selector") and a["spec"]["selector"]["matchLabels"].items()
                         <= pods[0]["metadata"]["labels"].items()]
                assert "PERMISSIVE" in modes, f"NodePort {port['nodePort']} → {svc['metadata']['name']}:{number} " \
                                              "is refused to plaintext clients by STRICT mTLS"


def test_demo_namespace_and_pods_follow_the_clusters_istio():
    """Declaring istio labels the demo namespace for injection and changes every demo pod template (so the pods
    roll and get their sidecar); without it the label says disabled and the mesh objects are not rendered."""
    def parts(stacks):
        demo = rendered(lab_for("dev", stacks), "hpa-demo")
        ns = next(o for o in demo.objects if o["kind"] == "Namespace")
        templates = {o["metadata"]["name"]: o["spec"]["template"] for o in demo.objects if o["kind"] in PLURALS}
        return ns, templates, {o["kind"] for o in demo.objects}

    ns_off, off, kinds_off = parts(["metrics-server", "hpa-demo"])
    ns_on, on, kinds_on = parts(["metrics-server", "hpa-demo", "istio"])
    assert ns_off["metadata"]["labels"]["istio-injection"] == "disabled"
    assert ns_on["metadata"]["labels"]["istio-injection"] == "enabled"
    assert ns_on["metadata"]["labels"][S.STACK_LABEL] == "hpa-demo"
    assert all(on[name] != off[name] for name in off), "a pod template that does not change keeps its old pods"
    assert not kinds_off & {"PeerAuthentication", "DestinationRule", "VirtualService", "Gateway"}
    assert {"PeerAuthentication", "DestinationRule", "VirtualService", "Gateway"} <= kinds_on
    assert "httpbin-v2" in on and "httpbin-v2" not in off


def test_hpa_demo_installs_after_istio_quotas_and_gatekeeper_when_declared():
    lab = lab_for("dev", ["metrics-server", "quotas", "hpa-demo", "istio"])
    assert set(_requires(lab.clusters[0], "hpa-demo")) >= {"metrics-server", "istio", "quotas"}
    lab = lab_for("dev", ["metrics-server", "hpa-demo"])
    assert _requires(lab.clusters[0], "hpa-demo") == ["metrics-server"]


def test_istio_canary_routes_and_circuit_breaker():
    demo = rendered(lab_for("dev", ["metrics-server", "hpa-demo", "istio"]), "hpa-demo")
    by = {(o["kind"], o["metadata"]["name"]): o for o in demo.objects}
    rule = by[("DestinationRule", "httpbin")]["spec"]
    assert rule["trafficPolicy"]["outlierDetection"]["consecutive5xxErrors"] == 3
    assert {s["name"]: s["labels"]["version"] for s in rule["subsets"]} == {"v1": "v1", "v2": "v2"}
    for vs in (by[("VirtualService", "httpbin")], by[("VirtualService", "demo-ingress")]):
        routes = vs["spec"]["http"]
        canary = [r for r in routes if any("x-canary" in (m.get("headers") or {}) for m in r.get("match") or [])]
        assert canary and all(d["destination"]["subset"] == "v2" for r in canary for d in r["route"])
        split = [r for r in routes if len(r["route"]) == 2]
        assert [[(d["destination"]["subset"], d["weight"]) for d in r["route"]] for r in split] == \
            [[("v1", 80), ("v2", 20)]]
    ingress = by[("VirtualService", "demo-ingress")]["spec"]["http"]
    assert ingress[-1]["route"][0]["destination"]["host"].startswith("nginx.")
    assert by[("Gateway", "demo-gateway")]["spec"]["selector"] == {"istio": "ingressgateway"}


def test_validation_counts_the_sidecars_a_mesh_adds_to_the_demo_pods():
    """A proxy per meshed pod is what decides whether the demo schedules on a small worker: the descriptors' numbers
    (istio's sidecar_requests, hpa-demo's meshed_pods) are the rendered ones, and validation adds them."""
    lab = lab_for("dev", ["metrics-server", "hpa-demo", "istio"])
    istio, demo = rendered(lab, "istio"), rendered(lab, "hpa-demo")
    istiod = next(r for r in istio.releases if r.release == "istiod")
    assert S.catalogue()["istio"].sidecar_requests == istiod.values["global"]["proxy"]["resources"]["requests"]
    minimum = {o["spec"]["scaleTargetRef"]["name"]: o["spec"]["minReplicas"]
               for o in demo.objects if o["kind"] == "HorizontalPodAutoscaler"}
    pods = sum(max(o["spec"].get("replicas", 1), minimum.get(o["metadata"]["name"], 0)) for o in demo.objects
               if o["kind"] in ("Deployment", "StatefulSet") and o["metadata"].get("namespace", demo.namespace) == "demo")
    assert S.catalogue()["hpa-demo"].meshed_pods == pods

    def lab_json(worker_cpu: int, with_istio: bool) -> str:
        return json.dumps({"clusters": [{
            "name": "dev", "pod_cidr": "10.20.0.0/16", "service_cidr": "10.97.0.0/16",
            "stacks": ["metrics-server", "hpa-demo", *(["istio"] if with_istio else [])],
            "nodes": [{"name": "dev-master", "role": "master", "cpu": 2, "memory": 4096},
                      {"name": "dev-worker1", "role": "worker", "cpu": worker_cpu, "memory": 8192}]}]})

    # 2 CPUs hold the demo alone (850m + 300m reserve) and istio's own 300m, but not ten 100m proxies beside them
    model.parse(lab_json(2, False))
    with pytest.raises(model.ConfigError, match="short of .*m CPU"):
        model.parse(lab_json(2, True))
    model.parse(lab_json(3, True))
