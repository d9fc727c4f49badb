"""The simulated cluster serves what the stacks phase relies on: Helm for stacks (scripts stacks.helm-install and
stacks.helm-uninstall, answered by id), kubelet serving CSRs, the generic controllers, metrics-server behind its
APIService. Each test installs a two-node cluster (`--skip stacks`, ~3 s) and drives the scripts and the API
itself, through the real kubernetes client and the kubeconfig labctl wrote.
"""

from __future__ import annotations

import base64
import json

import pytest
import yaml

from labctl.context import Context
from labctl.kube.client import Kube
from labctl.render import script
from labctl.state import LabState
from tests.conftest import run_cli
from tests.sim.fake_tart import wait_for
from tests.sim.kube_resources import CSR_PREFIX, CSRS
from tests.sim.sim_certificates import KUBELET_CLIENT, KUBELET_SERVING
from tests.sim.test_sim_stacks import open_sim

pytestmark = pytest.mark.sim

ENV = {"LABCTL_HOST_MEMORY_MIB": str(256 * 1024)}
MASTER, WORKER = "dev-master", "dev-worker1"
LAB = {"clusters": [{
    "name": "dev", "pod_cidr": "10.20.0.0/16", "service_cidr": "10.97.0.0/16", "stacks": ["metrics-server"],
    "nodes": [{"name": MASTER, "role": "master", "cpu": 2, "memory": 4096, "disk": 20},
              {"name": WORKER, "role": "worker", "cpu": 2, "memory": 4096, "disk": 20}]}]}
VALUES = "/etc/labctl/stacks/test/values.yaml"


@pytest.fixture
def sim(fake_tart, lab_dir):
    """dev installed up to (not including) its stacks: kubeadm with serverTLSBootstrap, Cilium, node config."""
    with open_sim(lab_dir, fake_tart, LAB) as lab:
        result = run_cli("--json", "install", "--skip", "stacks", env=ENV)
        assert result.code == 0, result.out
        lab.ctx = Context(lab.model, LabState(lab_dir / ".labctl"), **lab.overrides())
        lab.kubeconfig = lab_dir / ".labctl" / "kubeconfig" / "dev.yaml"
        yield lab
        lab.ctx.close()


def api(sim):
    from kubernetes import config

    return config.new_client_from_config(str(sim.kubeconfig))


def get(sim, path: str) -> tuple[int, dict]:
    client = api(sim)
    method, url, headers, _, _ = client.param_serialize(method="GET", resource_path=path,
                                                        header_params={"Accept": "application/json"})
    response = client.call_api(method, url, header_params=headers)
    return response.status, json.loads(response.read() or b"{}")


def helm(sim, stack: str, release: str, chart: str, version: str, namespace: str, values: dict | None = None,
         crds_path: str = "", helm_version: str | None = None, put: bool = True):
    """stacks.helm-install on the control plane, with the parameters labctl renders the script from."""
    transport = sim.ctx.transport(MASTER)
    if put:
        transport.put(VALUES, yaml.safe_dump(values or {}).encode(), 0o600)
    repo = "https://charts.example.com/"
    params = dict(cluster="dev", stack=stack, release=release, chart=chart, chart_ref=f"labctl-0123456789/{chart}",
                  repo_url=repo, repo_name="labctl-0123456789", oci=False, version=version, namespace=namespace,
                  values_path=VALUES, timeout="10m", helm_version=helm_version or f"v{sim.model.versions.helm}",
                  rollback_flag="--atomic", crds_path=crds_path)
    return transport.run(script("stacks.helm-install", "cluster/stack-helm-install.sh.j2", **params), check=False)


def uninstall(sim, stack: str, release: str, namespace: str):
    params = dict(cluster="dev", stack=stack, release=release, namespace=namespace, timeout="10m",
                  helm_version=f"v{sim.model.versions.helm}")
    return sim.ctx.transport(MASTER).run(
        script("stacks.helm-uninstall", "cluster/stack-helm-uninstall.sh.j2", **params), check=False)


def metrics_server(sim):
    return helm(sim, "metrics-server", "metrics-server", "metrics-server", "3.13.1", "kube-system",
                {"args": ["--kubelet-preferred-address-types=InternalIP"]})


def approve(sim, name: str) -> None:
    """`kubectl certificate approve`, through the typed client and the approval subresource."""
    from kubernetes import client

    certs = client.CertificatesV1Api(api(sim))
    csr = certs.read_certificate_signing_request(name)
    csr.status.conditions = [client.V1CertificateSigningRequestCondition(
        type="Approved", status="True", reason="TestApprove", message="approved by the test")]
    certs.replace_certificate_signing_request_approval(name, csr)


# ---- kubelet serving certificates and metrics-server ------------------------------------------------------------

def test_kubelets_ask_for_serving_certificates_and_metrics_server_needs_one(sim):
    store = sim.clusters["dev"].store
    # what kubeadm init left: the system namespaces, and what the controllers put in each
    assert {"default", "kube-system", "kube-public", "kube-node-lease"} <= {
        n["metadata"]["name"] for n in store.list("api/v1", "namespaces")}
    assert store.get("api/v1", "configmaps", "kube-root-ca.crt", "kube-public") is not None
    assert store.get("api/v1", "serviceaccounts", "default", "kube-node-lease") is not None
    assert store.get("api/v1", "services", "kubernetes", "default")["spec"]["clusterIP"] == "10.97.0.1"

    # each kubelet (serverTLSBootstrap in the init config) asks for a serving certificate; the worker's client
    # certificate came through the bootstrap token, approved and issued by the controller-manager
    csrs = sim.csrs("dev")
    serving = {c["node"]: c for c in csrs if c["signer"] == KUBELET_SERVING}
    assert sorted(serving) == [MASTER, WORKER]
    for node, c in serving.items():
        assert (c["username"], c["condition"], c["issued"]) == (f"system:node:{node}", "Pending", False)
        assert c["sans"] == [node, sim.address(node)]
    (client_csr,) = [c for c in csrs if c["signer"] == KUBELET_CLIENT]
    assert client_csr["node"] == WORKER and client_csr["username"].startswith("system:bootstrap:")
    assert (client_csr["condition"], client_csr["issued"]) == ("Approved", True)
    raw = store.get(CSR_PREFIX, CSRS, serving[WORKER]["name"])
    assert raw["spec"]["groups"] == ["system:nodes", "system:authenticated"]
    assert raw["spec"]["usages"] == ["digital signature", "server auth"]
    from cryptography import x509

    request = x509.load_pem_x509_csr(base64.b64decode(raw["spec"]["request"]))
    assert request.subject.rfc4514_string() == f"CN=system:node:{WORKER},O=system:nodes"

    # no kubelet serves TLS yet: metrics-server never gets Ready, `helm --wait` runs out, --atomic uninstalls
    result = metrics_server(sim)
    assert result.rc == 1
    assert "release metrics-server failed, and has been uninstalled due to atomic being set" in result.stdout
    assert "Deployment kube-system/metrics-server not ready" in result.stdout
    assert sim.releases("dev") == {"kube-system/cilium": {"chart": "cilium", "version": sim.model.versions.cilium,
                                                          "revision": 1, "status": "deployed"}}
    assert store.get("apis/apps/v1", "deployments", "metrics-server", "kube-system") is None

    # one approval (the worker's) is enough for metrics-server to become Ready: it scraped a kubelet
    approve(sim, serving[WORKER]["name"])
    get(sim, "/version")  # any request: the signer runs
    assert sim.serving_certificates("dev") == {MASTER: None, WORKER: sim.address(WORKER)}
    issued = store.get(CSR_PREFIX, CSRS, serving[WORKER]["name"])["status"]["certificate"]
    cert = x509.load_pem_x509_certificate(base64.b64decode(issued))
    assert cert.subject == request.subject and cert.public_key() == request.public_key()

    result = metrics_server(sim)
    assert result.rc == 0, result.stdout
    assert 'Release "metrics-server" does not exist. Installing it now.' in result.stdout
    assert "REVISION: 1" in result.stdout
    kube = Kube("dev", sim.kubeconfig)
    assert kube.ready("Deployment", "kube-system", "metrics-server")
    service = kube.ready("APIService", "", "v1beta1.metrics.k8s.io")
    assert service, service.detail
    status, nodes = get(sim, "/apis/metrics.k8s.io/v1beta1/nodes")
    assert status == 200 and [n["metadata"]["name"] for n in nodes["items"]] == [WORKER]
    assert get(sim, f"/apis/metrics.k8s.io/v1beta1/nodes/{MASTER}")[0] == 404  # its kubelet cannot be scraped
    deployment = store.get("apis/apps/v1", "deployments", "metrics-server", "kube-system")
    assert deployment["metadata"]["annotations"]["meta.helm.sh/release-name"] == "metrics-server"
    assert deployment["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"

    # the same install again is a new revision (Helm does not compare); the release is what labctl reads back
    assert metrics_server(sim).rc == 0
    release = kube.helm_release("kube-system", "metrics-server")
    assert (release.revision, release.status, release.chart_version) == (2, "deployed", "3.13.1")
    assert release.values == {"args": ["--kubelet-preferred-address-types=InternalIP"]}
    statuses = {s["metadata"]["name"]: s["metadata"]["labels"]["status"]
                for s in store.list("api/v1", "secrets", "kube-system") if s.get("type") == "helm.sh/release.v1"}
    assert statuses == {"sh.helm.release.v1.cilium.v1": "deployed",
                        "sh.helm.release.v1.metrics-server.v1": "superseded",
                        "sh.helm.release.v1.metrics-server.v2": "deployed"}
    assert sim.world()["stacks"]["dev"]["releases"]["kube-system/metrics-server"] == {
        "chart": "metrics-server", "version": "3.13.1", "revision": 2, "status": "deployed"}

    # uninstall: the objects and the history go; a second one is Helm's "not found" (exit 1)
    result = uninstall(sim, "metrics-server", "metrics-server", "kube-system")
    assert (result.rc, result.stdout) == (0, 'release "metrics-server" uninstalled')
    assert kube.get("apiregistration.k8s.io/v1", "APIService", "", "v1beta1.metrics.k8s.io") is None
    assert not kube.deployment_ready("kube-system", "metrics-server").found
    assert kube.helm_release("kube-system", "metrics-server") is None
    result = uninstall(sim, "metrics-server", "metrics-server", "kube-system")
    assert (result.rc, result.stdout) == (1, "Error: uninstall: Release not loaded: metrics-server: release: not found")


def test_helm_install_failures_like_helm(sim):
    result = helm(sim, "metrics-server", "metrics-server", "metrics-server", "3.13.1", "kube-system",
                  helm_version="v3.0.0")
    assert (result.rc, result.stdout) == (127, "helm: command not found")
    sim.nodes[MASTER].files.pop(VALUES, None)
    result = helm(sim, "metrics-server", "metrics-server", "metrics-server", "3.13.1", "kube-system", put=False)
    assert result.rc == 1 and "no such file or directory" in result.stdout
    # an object of the same name that Helm did not create for this release: Helm will not adopt it
    Kube("dev", sim.kubeconfig).apply({"apiVersion": "apps/v1", "kind": "Deployment",
                                       "metadata": {"name": "metrics-server", "namespace": "kube-system"},
                                       "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {
                                           "metadata": {"labels": {"a": "b"}},
                                           "spec": {"containers": [{"name": "c", "image": "x"}]}}}})
    sim.approve_csrs("dev")
    result = metrics_server(sim)
    assert result.rc == 1
    assert result.stdout.startswith('Error: INSTALLATION FAILED: Unable to continue with install: Deployment '
                                    '"metrics-server" in namespace "kube-system" exists and cannot be imported into '
                                    "the current release: invalid ownership metadata; label validation error: "
                                    'missing key "app.kubernetes.io/managed-by": must be set to "Helm"')
    assert sim.releases("dev").keys() == {"kube-system/cilium"}


def test_catalogue_charts_bring_their_crds_and_workloads_a_user_chart_only_its_release(sim):
    kube = Kube("dev", sim.kubeconfig)
    assert kube.resource("argoproj.io/v1alpha1", "Application") is None
    result = helm(sim, "argocd", "argocd", "argo-cd", "10.1.1", "argocd", {"server": {"insecure": True}})
    assert result.rc == 0, result.stdout
    assert kube.get("v1", "Namespace", "", "argocd")["metadata"]["labels"]["name"] == "argocd"  # --create-namespace
    for name in ("applications.argoproj.io", "applicationsets.argoproj.io", "appprojects.argoproj.io"):
        crd = kube.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", "", name)
        assert kube.crd_established(name) and crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert kube.resource("argoproj.io/v1alpha1", "AppProject") == ("appprojects", True)
    for kind, name in (("Deployment", "argocd-server"), ("Deployment", "argocd-repo-server"),
                       ("StatefulSet", "argocd-application-controller")):
        assert kube.ready(kind, "argocd", name), kind
    kube.apply({"apiVersion": "argoproj.io/v1alpha1", "kind": "AppProject", "metadata": {"name": "lab"},
                "spec": {"destinations": [{"server": "*", "namespace": "*"}]}}, "argocd")
    assert uninstall(sim, "argocd", "argocd", "argocd").rc == 0
    assert kube.crd_established("applications.argoproj.io")  # kept (resource-policy keep), and so is the project
    assert kube.get("argoproj.io/v1alpha1", "AppProject", "argocd", "lab") is not None
    assert not kube.deployment_ready("argocd", "argocd-server").found

    # CRDs from the chart's crds/ folder: labctl's kubectl applies them (server-side, manager labctl); the
    # operator's own objects appear once every release of the stack is deployed
    monitoring = [("kube-prometheus-stack", "kube-prometheus-stack", "88.5.3", "charts/crds/crds"),
                  ("loki", "loki", "18.11.0", ""), ("alloy", "alloy", "1.11.1", "")]
    for release, chart, version, crds in monitoring:
        assert kube.get("apps/v1", "StatefulSet", "monitoring", "prometheus-kube-prometheus-stack-prometheus") is None
        assert helm(sim, "monitoring", release, chart, version, "monitoring", crds_path=crds).rc == 0
    crd = kube.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", "", "prometheusrules.monitoring.coreos.com")
    assert [e["manager"] for e in crd["metadata"]["managedFields"]] == ["labctl"]
    assert kube.ready("StatefulSet", "monitoring", "prometheus-kube-prometheus-stack-prometheus")
    assert kube.ready("DaemonSet", "monitoring", "kube-prometheus-stack-prometheus-node-exporter")

    result = helm(sim, "mine", "mine", "podinfo", "6.9.0", "mine", {"replicaCount": 2})
    assert result.rc == 0
    assert sim.releases("dev")["mine/mine"] == {"chart": "podinfo", "version": "6.9.0", "revision": 1,
                                                "status": "deployed"}
    assert kube.list("apps/v1", "Deployment", "mine") == []


# ---- the generic controllers ----------------------------------------------------------------------------------

def _workload(kind: str, name: str, **extra) -> dict:
    labels = {"app": name}
    spec = {"selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": name, "image": "x"}]}}}
    spec["template"]["spec"].update(extra.pop("pod", {}))
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name}, "spec": {**spec, **extra}}


def test_workloads_get_the_status_of_healthy_controllers_while_a_node_can_run_them(sim, fake_tart):
    kube = Kube("dev", sim.kubeconfig, request_timeout=5)
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "apps"}})
    kube.apply(_workload("Deployment", "web", replicas=2), "apps")
    kube.apply(_workload("StatefulSet", "db", serviceName="db"), "apps")
    kube.apply(_workload("DaemonSet", "agent"), "apps")
    kube.apply(_workload("DaemonSet", "everywhere", pod={"tolerations": [{"operator": "Exists"}]}), "apps")
    kube.apply({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "once"},
                "spec": {"template": {"spec": {"restartPolicy": "Never",
                                               "containers": [{"name": "c", "image": "x"}]}}}}, "apps")
    kube.apply({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {
        "name": "local-path", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": "rancher.io/local-path", "volumeBindingMode": "WaitForFirstConsumer"})
    kube.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1024Mi"}}}}, "apps")

    assert kube.ready("Deployment", "apps", "web") and kube.ready("StatefulSet", "apps", "db")
    web = kube.get("apps/v1", "Deployment", "apps", "web")
    assert web["status"]["observedGeneration"] == web["metadata"]["generation"] == 1
    assert web["status"]["availableReplicas"] == 2
    db = kube.get("apps/v1", "StatefulSet", "apps", "db")["status"]
    assert db["readyReplicas"] == 1 and db["currentRevision"] == db["updateRevision"]
    # the control plane's NoSchedule taint keeps an ordinary DaemonSet to the worker
    assert kube.get("apps/v1", "DaemonSet", "apps", "agent")["status"]["desiredNumberScheduled"] == 1
    assert kube.get("apps/v1", "DaemonSet", "apps", "everywhere")["status"]["numberReady"] == 2
    job = kube.get("batch/v1", "Job", "apps", "once")["status"]
    assert {"type": "Complete", "status": "True"} in job["conditions"]
    pvc = kube.get("v1", "PersistentVolumeClaim", "apps", "data")
    assert pvc["spec"]["storageClassName"] == "local-path" and pvc["status"]["phase"] == "Bound"
    assert pvc["status"]["capacity"] == {"storage": "1Gi"}

    kube.apply(_workload("Deployment", "web", replicas=3), "apps")  # a new spec: observed at once here
    web = kube.get("apps/v1", "Deployment", "apps", "web")
    assert web["metadata"]["generation"] == 2 and web["status"]["observedGeneration"] == 2
    assert kube.ready("Deployment", "apps", "web")

    # the worker goes away: nothing can run the pods (the control plane is tainted), the worker DaemonSet too
    fake_tart.poweroff(WORKER)
    wait_for(lambda: not fake_tart.running_pid(WORKER), 10, "the worker to power off")
    web = kube.ready("Deployment", "apps", "web")
    assert not web and web.detail == "Deployment apps/web: 0/3 available, 3 updated"
    assert not kube.ready("StatefulSet", "apps", "db")
    assert kube.get("apps/v1", "DaemonSet", "apps", "agent")["status"]["desiredNumberScheduled"] == 0
    assert kube.get("apps/v1", "DaemonSet", "apps", "everywhere")["status"]["numberReady"] == 1


def test_a_kubelet_at_a_new_address_asks_for_a_new_serving_certificate(sim, fake_tart):
    sim.approve_csrs("dev")
    get(sim, "/version")
    before = sim.address(WORKER)
    assert sim.serving_certificates("dev") == {MASTER: sim.address(MASTER), WORKER: before}
    assert sorted(sim.clusters["dev"].scrapable()) == [MASTER, WORKER]

    fake_tart.new_ip_on_next_boot(WORKER)
    assert run_cli("--json", "shutdown", env=ENV).code == 0
    assert run_cli("--json", "boot", env=ENV).code == 0
    after = sim.address(WORKER)
    assert after != before
    pending = [c for c in sim.csrs("dev") if c["condition"] == "Pending"]
    assert [(c["node"], c["sans"]) for c in pending] == [(WORKER, [WORKER, after])]
    # its certificate still names the old address: metrics-server cannot verify it until the new one is issued
    assert sim.serving_certificates("dev")[WORKER] == before
    assert sim.clusters["dev"].scrapable() == [MASTER]
    approve(sim, pending[0]["name"])
    get(sim, "/version")
    assert sim.serving_certificates("dev")[WORKER] == after
    assert sorted(sim.clusters["dev"].scrapable()) == [MASTER, WORKER]
