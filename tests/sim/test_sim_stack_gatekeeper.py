"""The gatekeeper and rbac stacks in the simulated lab, through the real CLI: Gatekeeper's controller compiles each
ConstraintTemplate into its constraint CRD some reconciles after the template is written (tests/sim/
sim_stack_gatekeeper.py), so labctl must wait for each constraint kind to be served (the predecessor slept 5 s and
raced it); its webhook refuses privileged pods outside the exempt namespaces, and never the lab's own stacks."""

from __future__ import annotations

import pytest

from tests.sim import sim_stack_gatekeeper as gk
from tests.sim.kube_resources import APPS, CRD_PREFIX, CRDS
from tests.sim.kube_store import namespace_object
from tests.sim.test_sim_e2e import labctl, summary_of
from tests.sim.test_sim_stacks import applies, helm_installs, open_sim, results

pytestmark = pytest.mark.sim

LAB = {"clusters": [
    {"name": "dev", "pod_cidr": "10.20.0.0/16", "service_cidr": "10.97.0.0/16",
     "stacks": ["rbac", "metrics-server", "hpa-demo", "gatekeeper"],
     "nodes": [{"name": "dev-master", "role": "master", "cpu": 2, "memory": 4096},
               {"name": "dev-worker1", "role": "worker", "cpu": 4, "memory": 8192}]}]}
CONSTRAINTS = {"K8sBlockNodePort": "block-nodeport", "K8sContainerLimits": "require-container-limits",
               "K8sPSPPrivilegedContainer": "disallow-privileged", "K8sRequiredLabels": "require-app-label"}


def deployment(name: str, privileged: bool) -> dict:
    labels = {"app": name}
    container = {"name": name, "image": "busybox:1.37.0", "securityContext": {"privileged": privileged}}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}}}}


def replica_failure(store, name: str, namespace: str) -> str | None:
    status = store.get(APPS, "deployments", name, namespace)["status"]
    return next((c["message"] for c in status.get("conditions") or [] if c["type"] == "ReplicaFailure"), None)


def test_constraint_kinds_applied_before_their_crd_wait_for_it(lab_dir, fake_tart):
    """Each constraint is applied only after labctl found its kind not served, asked again and found it served:
    a wait on the real condition (the CRD Gatekeeper makes from the template), no failure and no fixed sleep."""
    with open_sim(lab_dir, fake_tart, LAB) as sim:
        result = labctl("--json", "install")
        assert result.code == 0, summary_of(result.out)["failed"]
        assert results(result.out)["stacks:dev/gatekeeper"] == "changed"
        store = sim.clusters["dev"].store
        requests = store.requests
        discovery = ("GET", f"/apis/{gk.GROUP}/{gk.VERSION}")
        for kind, name in CONSTRAINTS.items():
            template = requests.index(("PATCH", f"/apis/templates.gatekeeper.sh/v1/constrainttemplates/{kind.lower()}"))
            constraint = requests.index(("PATCH", f"/apis/{gk.GROUP}/{gk.VERSION}/{kind.lower()}/{name}"))
            # asked at least twice in between: not served yet, then served
            assert requests[template:constraint].count(discovery) >= 2, kind
            crd = store.get(CRD_PREFIX, CRDS, f"{kind.lower()}.{gk.GROUP}")
            assert {"type": "Established", "status": "True"}.items() <= crd["status"]["conditions"][-1].items()
            assert store.get(*gk.TEMPLATES, kind.lower())["status"]["created"] is True
        assert {c["metadata"]["name"] for c in gk.constraints(sim.clusters["dev"])} == set(CONSTRAINTS.values())

        # the lab's own stacks are up under the constraints (hpa-demo's pods were admitted)
        for name in ("nginx", "httpbin", "redis", "postgres", "rabbitmq", "keycloak"):
            live = store.get(APPS, "deployments", name, "demo") or store.get(APPS, "statefulsets", name, "demo")
            assert live and live["status"].get("readyReplicas"), name
        assert store.get("apis/rbac.authorization.k8s.io/v1", "clusterroles", "cluster-readonly") is not None
        assert store.get("apis/rbac.authorization.k8s.io/v1", "rolebindings", "namespace-admins", "sandbox")

        # a second install changes nothing
        mark, patches = len(sim.calls), applies(sim)
        again = labctl("--json", "install")
        assert again.code == 0 and summary_of(again.out)["counts"]["changed"] == 0
        assert helm_installs(sim, mark) == [] and applies(sim) == patches

        # the controller compiles a template on a later reconcile than the one that first sees it
        cluster = sim.clusters["dev"]
        template = store.get(*gk.TEMPLATES, "k8srequiredlabels")
        store.delete(*gk.TEMPLATES, "k8srequiredlabels")
        cluster.refresh()
        assert store.get(CRD_PREFIX, CRDS, f"k8srequiredlabels.{gk.GROUP}") is None  # its constraints went with it
        template = {k: v for k, v in template.items() if k != "status"}
        template["metadata"] = {"name": "k8srequiredlabels"}
        store.put(*gk.TEMPLATES, template)
        cluster.refresh()
        assert store.get(CRD_PREFIX, CRDS, f"k8srequiredlabels.{gk.GROUP}") is None
        cluster.refresh()
        assert store.get(CRD_PREFIX, CRDS, f"k8srequiredlabels.{gk.GROUP}") is not None
        repaired = labctl("--json", "install")  # the constraint is back with the next install
        assert repaired.code == 0 and results(repaired.out)["stacks:dev/gatekeeper"] == "changed"
        assert store.get(f"apis/{gk.GROUP}/{gk.VERSION}", "k8srequiredlabels", "require-app-label") is not None


def test_a_privileged_user_pod_in_a_user_namespace_is_denied(lab_dir, fake_tart):
    with open_sim(lab_dir, fake_tart, LAB) as sim:
        assert labctl("install").code == 0
        cluster = sim.clusters["dev"]
        store = cluster.store
        store.put("api/v1", "namespaces", namespace_object("tools"))
        store.put(APPS, "deployments", deployment("shell", privileged=True), "tools")
        store.put(APPS, "deployments", deployment("plain", privileged=False), "tools")  # warned (no limits), admitted
        store.put(APPS, "deployments", deployment("agent", privileged=True), "kube-system")  # exempt
        cluster.refresh()
        assert replica_failure(store, "shell", "tools") == (
            'admission webhook "validation.gatekeeper.sh" denied the request: [disallow-privileged] Privileged '
            "container is not allowed: shell")
        assert store.get(APPS, "deployments", "shell", "tools")["status"]["readyReplicas"] == 0
        for name, namespace in (("plain", "tools"), ("agent", "kube-system")):
            assert replica_failure(store, name, namespace) is None
            assert store.get(APPS, "deployments", name, namespace)["status"]["readyReplicas"] == 1

        # only `deny` denies: the same constraint in dryrun (like the warn ones) lets the pod be created
        constraint = store.get(f"apis/{gk.GROUP}/{gk.VERSION}", "k8spspprivilegedcontainer", "disallow-privileged")
        constraint["spec"]["enforcementAction"] = "dryrun"
        store.put(f"apis/{gk.GROUP}/{gk.VERSION}", "k8spspprivilegedcontainer", constraint)
        cluster.refresh()
        assert replica_failure(store, "shell", "tools") is None
