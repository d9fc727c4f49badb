"""The fake API server answers the real kubernetes client the way a real API server would (HTTP and TLS).

Each test runs its own FakeKube on a free port (parallel-safe) and talks to it through the real client: the typed
APIs, the dynamic client (discovery) and raw requests like labctl's Kube facade makes.
"""

from __future__ import annotations

import base64
import json

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from tests.sim.fake_kube import FakeKube
from tests.sim.kube_normalise import canonical_quantity
from tests.sim.kube_resources import APISERVICE_PREFIX, APISERVICES, crd_object

MERGE = "application/merge-patch+json"
APPLY = "application/apply-patch+yaml"


@pytest.fixture
def kube():
    server = FakeKube().start()
    yield server
    server.stop()


def api_client(kube: FakeKube, tmp_path):
    from kubernetes import config

    path = tmp_path / "kubeconfig.yaml"
    path.write_text(yaml.safe_dump(kube.kubeconfig()))
    return config.new_client_from_config(str(path))


def client_for(kube: FakeKube, tmp_path):
    from kubernetes import client

    return client.CoreV1Api(api_client(kube, tmp_path))


def raw(api, method: str, path: str, body=None, content_type: str = "application/json",
        query: list[tuple[str, str]] | None = None) -> tuple[int, dict]:
    """A request by path through the client's own plumbing: (status, JSON body). The body goes as an object: the
    client serialises it for JSON and YAML content types (a str would be encoded once more)."""
    headers = {"Accept": "application/json", "Content-Type": content_type}
    method, url, headers, _, _ = api.param_serialize(method=method, resource_path=path, query_params=query or [],
                                                     header_params=headers)
    response = api.call_api(method, url, header_params=headers, body=body)
    text = response.read()
    try:
        return response.status, json.loads(text or b"{}")
    except ValueError:
        return response.status, {"text": text.decode()}


def apply(api, path: str, obj: dict, manager: str = "labctl", force: bool = True) -> tuple[int, dict]:
    query = [("fieldManager", manager)] + ([("force", "true")] if force else [])
    return raw(api, "PATCH", path, obj, APPLY, query)


def deployment(name: str, replicas: int | None = None, **spec) -> dict:
    labels = {"app": name}
    out = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
           "spec": {"selector": {"matchLabels": labels},
                    "template": {"metadata": {"labels": labels},
                                 "spec": {"containers": [{"name": name, "image": "nginx:1.29"}]}}, **spec}}
    if replicas is not None:
        out["spec"]["replicas"] = replicas
    return out


# ---- what the first version already did (kept) --------------------------------------------------------------

@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_real_client_reads_and_patches_nodes(tmp_path, tls):
    kube = FakeKube(tls_sans=["127.0.0.1"] if tls else None, workdir=tmp_path / "pki").start()
    try:
        kube.store.put("api/v1", "nodes", {"metadata": {"name": "dev-master", "labels": {"a": "1"}},
                                           "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
        core = client_for(kube, tmp_path)
        nodes = core.list_node().items
        assert [n.metadata.name for n in nodes] == ["dev-master"]
        assert nodes[0].status.conditions[0].status == "True"
        core.patch_node("dev-master", {"metadata": {"labels": {"b": "2"}}, "spec": {"unschedulable": True}},
                        _content_type=MERGE)
        stored = kube.store.get("api/v1", "nodes", "dev-master")
        assert stored["metadata"]["labels"] == {"a": "1", "b": "2"} and stored["spec"]["unschedulable"] is True
        with pytest.raises(ApiException) as info:
            core.read_namespaced_secret("nope", "kube-system")
        assert info.value.status == 404
        assert json.loads(info.value.body)["message"] == 'secrets "nope" not found'
        # without a content type the client sends a dict as a strategic merge patch (rest.py), a merge here
        core.patch_node("dev-master", {"spec": {"unschedulable": False}})
        assert kube.store.get("api/v1", "nodes", "dev-master")["spec"]["unschedulable"] is False
    finally:
        kube.stop()


def test_tls_refuses_a_certificate_without_the_address(tmp_path):
    """What the simulated lab relies on to test IP drift: the cert does not name 127.0.0.1, so TLS must fail."""
    from urllib3.exceptions import MaxRetryError

    kube = FakeKube(tls_sans=["192.0.2.10"], workdir=tmp_path / "pki").start()
    try:
        core = client_for(kube, tmp_path)
        core.api_client.configuration.retries = 0
        with pytest.raises(MaxRetryError):
            core.list_node(_request_timeout=5)
    finally:
        kube.stop()


# ---- discovery --------------------------------------------------------------------------------------------------

# (apiVersion, kind, plural, namespaced) the stacks need discovered
KINDS = [
    ("v1", "Namespace", "namespaces", False), ("v1", "ServiceAccount", "serviceaccounts", True),
    ("v1", "PersistentVolumeClaim", "persistentvolumeclaims", True),
    ("v1", "PersistentVolume", "persistentvolumes", False), ("v1", "Endpoints", "endpoints", True),
    ("v1", "Event", "events", True), ("v1", "Secret", "secrets", True), ("v1", "ConfigMap", "configmaps", True),
    ("v1", "Service", "services", True), ("apps/v1", "Deployment", "deployments", True),
    ("apps/v1", "StatefulSet", "statefulsets", True), ("apps/v1", "DaemonSet", "daemonsets", True),
    ("rbac.authorization.k8s.io/v1", "Role", "roles", True),
    ("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings", True),
    ("rbac.authorization.k8s.io/v1", "ClusterRole", "clusterroles", False),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "clusterrolebindings", False),
    ("storage.k8s.io/v1", "StorageClass", "storageclasses", False),
    ("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers", True),
    ("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets", True),
    ("apiregistration.k8s.io/v1", "APIService", "apiservices", False),
    ("certificates.k8s.io/v1", "CertificateSigningRequest", "certificatesigningrequests", False),
    ("networking.k8s.io/v1", "Ingress", "ingresses", True),
    ("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies", True),
    ("batch/v1", "Job", "jobs", True), ("batch/v1", "CronJob", "cronjobs", True),
    ("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration", "validatingwebhookconfigurations", False),
    ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration", "mutatingwebhookconfigurations", False),
    ("coordination.k8s.io/v1", "Lease", "leases", True),
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition", "customresourcedefinitions", False),
]


def test_discovery_lists_groups_versions_and_resources_like_a_real_server(kube, tmp_path):
    api = api_client(kube, tmp_path)
    status, versions = raw(api, "GET", "/api")
    assert status == 200 and versions["kind"] == "APIVersions" and versions["versions"] == ["v1"]
    status, groups = raw(api, "GET", "/apis")
    assert status == 200 and groups["kind"] == "APIGroupList"
    by_name = {g["name"]: g for g in groups["groups"]}
    assert by_name["apps"]["preferredVersion"] == {"groupVersion": "apps/v1", "version": "v1"}
    assert by_name["autoscaling"]["versions"] == [{"groupVersion": "autoscaling/v2", "version": "v2"}]
    status, group = raw(api, "GET", "/apis/apps")
    assert status == 200 and group["kind"] == "APIGroup" and group["name"] == "apps"

    for api_version, kind, plural, namespaced in KINDS:
        path = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        status, listing = raw(api, "GET", path)
        assert status == 200 and listing["kind"] == "APIResourceList" and listing["groupVersion"] == api_version
        entry = next(r for r in listing["resources"] if r["name"] == plural)
        assert (entry["kind"], entry["namespaced"], entry["singularName"]) == (kind, namespaced, kind.lower())
        assert {"create", "get", "list", "patch", "delete"} <= set(entry["verbs"])

    _, core = raw(api, "GET", "/api/v1")
    subresources = {r["name"]: r for r in core["resources"] if "/" in r["name"]}
    assert subresources["pods/eviction"]["kind"] == "Eviction" and subresources["pods/eviction"]["group"] == "policy"
    assert subresources["namespaces/status"]["verbs"] == ["get", "patch", "update"]
    _, apps = raw(api, "GET", "/apis/apps/v1")
    names = {r["name"] for r in apps["resources"]}
    assert {"deployments/status", "deployments/scale", "statefulsets/status", "daemonsets/status"} <= names
    _, certs = raw(api, "GET", "/apis/certificates.k8s.io/v1")
    assert {r["name"] for r in certs["resources"]} == {"certificatesigningrequests",
                                                       "certificatesigningrequests/approval",
                                                       "certificatesigningrequests/status"}
    assert raw(api, "GET", "/apis/monitoring.coreos.com/v1")[0] == 404
    assert raw(api, "GET", "/apis/nope")[0] == 404


def test_the_dynamic_client_discovers_builtins_and_crds(kube, tmp_path):
    from kubernetes import dynamic
    from kubernetes.dynamic.exceptions import ResourceNotFoundError

    api = api_client(kube, tmp_path)
    dyn = dynamic.DynamicClient(api, cache_file=str(tmp_path / "discovery.json"))
    for api_version, kind, plural, namespaced in KINDS:
        res = dyn.resources.get(api_version=api_version, kind=kind)
        assert (res.name, res.namespaced) == (plural, namespaced)
    assert set(dyn.resources.get(api_version="apps/v1", kind="Deployment").subresources) == {"scale", "status"}
    with pytest.raises(ResourceNotFoundError):
        dyn.resources.get(api_version="example.com/v1", kind="Widget")
    crds = dyn.resources.get(api_version="apiextensions.k8s.io/v1", kind="CustomResourceDefinition")
    dyn.create(crds, body=crd_object("example.com", "v1", "widgets", "Widget"))
    widgets = dyn.resources.get(api_version="example.com/v1", kind="Widget")  # discovery is asked again
    made = dyn.create(widgets, namespace="default", body={"apiVersion": "example.com/v1", "kind": "Widget",
                                                          "metadata": {"name": "w1"}, "spec": {"size": 3}})
    assert made.spec.size == 3 and made.metadata.generation == 1


# ---- CRDs ---------------------------------------------------------------------------------------------------

def test_a_custom_resource_is_served_exactly_while_its_crd_exists(kube, tmp_path):
    from kubernetes import client

    api = api_client(kube, tmp_path)
    path = "/apis/monitoring.coreos.com/v1/namespaces/default/servicemonitors"
    monitor = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": {"name": "app"},
               "spec": {"endpoints": [{"port": "http"}]}}
    for method, where, body in (("GET", path, None), ("POST", path, monitor), ("GET", f"{path}/app", None)):
        status, answer = raw(api, method, where, body)
        assert (status, answer["reason"], answer["message"]) == (404, "NotFound",
                                                                 "the server could not find the requested resource")
    assert apply(api, f"{path}/app", monitor)[0] == 404

    ext = client.ApiextensionsV1Api(api)
    crd = crd_object("monitoring.coreos.com", "v1", "servicemonitors", "ServiceMonitor", short_names=("smon",))
    created = ext.create_custom_resource_definition(crd)
    conditions = {c.type: c.status for c in created.status.conditions}
    assert conditions == {"NamesAccepted": "True", "Established": "True"}
    assert created.status.accepted_names.kind == "ServiceMonitor" and created.status.stored_versions == ["v1"]

    _, listing = raw(api, "GET", "/apis/monitoring.coreos.com/v1")
    entry = next(r for r in listing["resources"] if r["name"] == "servicemonitors")
    assert (entry["kind"], entry["namespaced"], entry["shortNames"]) == ("ServiceMonitor", True, ["smon"])
    assert "servicemonitors/status" in {r["name"] for r in listing["resources"]}
    assert "monitoring.coreos.com" in {g["name"] for g in raw(api, "GET", "/apis")[1]["groups"]}
    status, made = apply(api, f"{path}/app", monitor)
    assert status == 201 and made["apiVersion"] == "monitoring.coreos.com/v1" and made["kind"] == "ServiceMonitor"
    assert raw(api, "GET", f"{path}/app")[1]["spec"] == {"endpoints": [{"port": "http"}]}
    listed = raw(api, "GET", path)[1]
    assert listed["kind"] == "ServiceMonitorList" and listed["items"][0]["kind"] == "ServiceMonitor"
    # cluster-wide list of a namespaced kind; the namespace of a custom resource must exist too
    assert len(raw(api, "GET", "/apis/monitoring.coreos.com/v1/servicemonitors")[1]["items"]) == 1
    status, answer = apply(api, "/apis/monitoring.coreos.com/v1/namespaces/ghost/servicemonitors/app", monitor)
    assert (status, answer["message"]) == (404, 'namespaces "ghost" not found')

    ext.delete_custom_resource_definition("servicemonitors.monitoring.coreos.com")
    assert raw(api, "GET", f"{path}/app")[0] == 404
    assert raw(api, "GET", "/apis/monitoring.coreos.com/v1")[0] == 404
    assert not kube.store.list("apis/monitoring.coreos.com/v1", "servicemonitors")  # the CRs went with it


def test_crds_are_validated_and_cluster_scoped_and_multi_version_crds_serve_one_object(kube, tmp_path):
    api = api_client(kube, tmp_path)
    base = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    wrong = crd_object("example.com", "v1", "gadgets", "Gadget")
    wrong["metadata"]["name"] = "gadget.example.com"
    status, answer = raw(api, "POST", base, wrong)
    assert status == 422 and "must be spec.names.plural+\".\"+spec.group" in answer["message"]

    issuers = crd_object("cert-manager.io", "v1", "clusterissuers", "ClusterIssuer", scope="Cluster")
    assert raw(api, "POST", base, issuers)[0] == 201
    issuer = {"apiVersion": "cert-manager.io/v1", "kind": "ClusterIssuer", "metadata": {"name": "self"},
              "spec": {"selfSigned": {}}}
    assert apply(api, "/apis/cert-manager.io/v1/clusterissuers/self", issuer)[0] == 201
    assert raw(api, "GET", "/apis/cert-manager.io/v1/namespaces/default/clusterissuers/self")[0] == 404

    routes = crd_object("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute", versions=["v1", "v1beta1"])
    assert raw(api, "POST", base, routes)[0] == 201
    _, groups = raw(api, "GET", "/apis")
    gateway = next(g for g in groups["groups"] if g["name"] == "gateway.networking.k8s.io")
    assert [v["version"] for v in gateway["versions"]] == ["v1", "v1beta1"]  # preferred first
    route = {"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "HTTPRoute", "metadata": {"name": "r"},
             "spec": {"hostnames": ["a.lab"]}}
    assert apply(api, "/apis/gateway.networking.k8s.io/v1beta1/namespaces/default/httproutes/r", route)[0] == 201
    status, at_v1 = raw(api, "GET", "/apis/gateway.networking.k8s.io/v1/namespaces/default/httproutes/r")
    assert status == 200 and at_v1["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert at_v1["spec"] == {"hostnames": ["a.lab"]}


# ---- writes ------------------------------------------------------------------------------------------------

def test_server_side_apply_creates_merges_and_records_managed_fields(kube, tmp_path):
    api = api_client(kube, tmp_path)
    path = "/apis/apps/v1/namespaces/default/deployments/web"
    status, made = apply(api, path, deployment("web", 2, minReadySeconds=5))
    assert status == 201
    meta = made["metadata"]
    assert (made["apiVersion"], made["kind"], meta["namespace"], meta["generation"]) == ("apps/v1", "Deployment",
                                                                                         "default", 1)
    assert made["status"] == {} and made["spec"]["revisionHistoryLimit"] == 10  # the server's defaults
    (entry,) = meta["managedFields"]
    assert (entry["manager"], entry["operation"], entry["apiVersion"], entry["fieldsType"]) == (
        "labctl", "Apply", "apps/v1", "FieldsV1")
    assert entry["fieldsV1"]["f:spec"]["f:replicas"] == {} and "f:template" in entry["fieldsV1"]["f:spec"]

    # the same apply again: nothing changes, not even the resourceVersion (a real server skips no-op writes)
    assert apply(api, path, deployment("web", 2, minReadySeconds=5))[1]["metadata"]["resourceVersion"] == \
        meta["resourceVersion"]

    # a second apply merges into the object, replaces lists, bumps generation for the spec change
    changed = deployment("web", 3)
    changed["metadata"]["labels"] = {"tier": "front"}
    changed["spec"]["template"]["spec"]["containers"] = [{"name": "web", "image": "nginx:1.30"}]
    status, merged = apply(api, path, changed)
    assert status == 200 and merged["metadata"]["generation"] == 2
    assert merged["spec"]["replicas"] == 3 and merged["spec"]["minReadySeconds"] == 5  # merge approximation
    assert merged["spec"]["template"]["spec"]["containers"] == [{"name": "web", "image": "nginx:1.30"}]
    assert merged["metadata"]["labels"] == {"tier": "front"}

    # another manager changes replicas by a merge patch: it owns that field now
    status, patched = raw(api, "PATCH", f"{path}", {"spec": {"replicas": 5}}, MERGE,
                          [("fieldManager", "kubectl-scale")])
    assert status == 200 and patched["metadata"]["generation"] == 3
    managers = {e["manager"]: e for e in patched["metadata"]["managedFields"]}
    assert managers["kubectl-scale"]["operation"] == "Update"
    assert managers["kubectl-scale"]["fieldsV1"] == {"f:spec": {"f:replicas": {}}}
    assert "f:replicas" not in managers["labctl"]["fieldsV1"]["f:spec"]
    # labctl applying another value without force: a conflict, as on a real server; with force it takes it back
    status, answer = apply(api, path, deployment("web", 3), force=False)
    assert status == 409 and 'conflict with "kubectl-scale"' in answer["message"] and ".spec.replicas" in \
        answer["message"]
    assert apply(api, path, deployment("web", 3))[1]["spec"]["replicas"] == 3

    # status is the status subresource's: an apply of status to the main resource is ignored
    with_status = {**deployment("web", 3), "status": {"availableReplicas": 99}}
    assert apply(api, path, with_status)[1]["status"] == {}
    status, answer = apply(api, path, deployment("web"), manager="")
    assert status == 400 and "fieldManager: Required value" in answer["message"]
    wrong_kind = {**deployment("web"), "kind": "StatefulSet"}
    assert apply(api, path, wrong_kind)[0] == 400


def test_create_get_delete_answer_like_the_api_server(kube, tmp_path):
    api = api_client(kube, tmp_path)
    base = "/apis/apps/v1/namespaces/default/deployments"
    status, made = raw(api, "POST", base, deployment("web"))
    assert status == 201 and made["metadata"]["generation"] == 1 and made["spec"]["replicas"] == 1
    status, again = raw(api, "POST", base, deployment("web"))
    assert (status, again["reason"], again["message"]) == (409, "AlreadyExists",
                                                           'deployments.apps "web" already exists')
    status, missing = raw(api, "GET", f"{base}/nope")
    assert status == 404 and missing == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'deployments.apps "nope" not found', "reason": "NotFound",
        "details": {"name": "nope", "group": "apps", "kind": "deployments"}, "code": 404}
    status, answer = raw(api, "POST", "/apis/apps/v1/namespaces/ghost/deployments", deployment("web"))
    assert (status, answer["message"], answer["details"]) == (404, 'namespaces "ghost" not found',
                                                               {"name": "ghost", "kind": "namespaces"})
    status, answer = raw(api, "POST", base, {**deployment("x"), "metadata": {"name": "x", "namespace": "other"}})
    assert status == 400 and "does not match the namespace" in answer["message"]
    no_selector = deployment("bad")
    del no_selector["spec"]["selector"]
    status, answer = raw(api, "POST", base, no_selector)
    assert status == 422 and 'Deployment.apps "bad" is invalid: spec.selector: Required value' in answer["message"]

    # PUT with a stale resourceVersion: 409 Conflict; the status of the main resource is kept
    current = raw(api, "GET", f"{base}/web")[1]
    current["status"] = {"replicas": 42}
    same = raw(api, "PUT", f"{base}/web", current)[1]  # only the status differs: a no-op
    assert same["status"] == {} and same["metadata"]["resourceVersion"] == current["metadata"]["resourceVersion"]
    current["metadata"]["labels"] = {"v": "2"}
    assert raw(api, "PUT", f"{base}/web", current)[0] == 200
    status, answer = raw(api, "PUT", f"{base}/web", current)
    assert status == 409 and "the object has been modified" in answer["message"]
    # the status subresource takes only the status
    current = raw(api, "GET", f"{base}/web/status")[1]
    current["status"] = {"replicas": 1, "availableReplicas": 1}
    current["spec"]["replicas"] = 7
    updated = raw(api, "PUT", f"{base}/web/status", current)[1]
    assert updated["status"]["availableReplicas"] == 1 and updated["spec"]["replicas"] == 1
    assert updated["metadata"]["generation"] == 1
    # scale
    status, scale = raw(api, "PATCH", f"{base}/web/scale", {"spec": {"replicas": 4}}, MERGE)
    assert status == 200 and scale["kind"] == "Scale" and scale["spec"]["replicas"] == 4
    assert raw(api, "GET", f"{base}/web")[1]["metadata"]["generation"] == 2

    status, gone = raw(api, "DELETE", f"{base}/web")
    assert status == 200 and gone["kind"] == "Status" and gone["status"] == "Success"
    assert gone["details"]["name"] == "web"
    assert raw(api, "DELETE", f"{base}/web")[0] == 404

    # generateName; a namespace takes its objects with it
    status, ns = apply(api, "/api/v1/namespaces/team", {"apiVersion": "v1", "kind": "Namespace",
                                                        "metadata": {"name": "team"}})
    assert status == 201 and ns["status"] == {"phase": "Active"}
    assert ns["metadata"]["labels"] == {"kubernetes.io/metadata.name": "team"}
    status, cm = raw(api, "POST", "/api/v1/namespaces/team/configmaps",
                     {"metadata": {"generateName": "settings-"}, "data": {"a": "1"}})
    assert status == 201 and cm["metadata"]["name"].startswith("settings-") and len(cm["metadata"]["name"]) == 14
    assert "generation" not in cm["metadata"]
    assert raw(api, "DELETE", "/api/v1/namespaces/team")[0] == 200
    assert kube.store.list("api/v1", "configmaps", "team") == []
    assert [n["metadata"]["name"] for n in kube.store.list("api/v1", "namespaces")] == [
        "default", "kube-node-lease", "kube-public", "kube-system"]


def test_names_with_dots_and_aggregated_apis(kube, tmp_path):
    api = api_client(kube, tmp_path)
    service = {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
               "metadata": {"name": "v1beta1.metrics.k8s.io"},
               "spec": {"group": "metrics.k8s.io", "version": "v1beta1", "groupPriorityMinimum": 100,
                        "versionPriority": 100, "service": {"name": "metrics-server", "namespace": "kube-system"}}}
    status, made = apply(api, "/apis/apiregistration.k8s.io/v1/apiservices/v1beta1.metrics.k8s.io", service)
    assert status == 201 and made["metadata"]["name"] == "v1beta1.metrics.k8s.io"
    assert raw(api, "GET", "/apis/apiregistration.k8s.io/v1/apiservices/v1beta1.metrics.k8s.io")[0] == 200
    wrong = {**service, "metadata": {"name": "metrics"}}
    assert apply(api, "/apis/apiregistration.k8s.io/v1/apiservices/metrics", wrong)[0] == 422
    # registered but not Available: listed as a group, answered 503 (the aggregator's "unable to handle")
    assert "metrics.k8s.io" in {g["name"] for g in raw(api, "GET", "/apis")[1]["groups"]}
    status, answer = raw(api, "GET", "/apis/metrics.k8s.io/v1beta1/nodes")
    assert (status, answer["reason"]) == (503, "ServiceUnavailable")
    kube.aggregated[("metrics.k8s.io", "v1beta1")] = lambda method, rest, query: (200, {"items": rest})
    svc = kube.store.get(APISERVICE_PREFIX, APISERVICES, "v1beta1.metrics.k8s.io")
    svc["status"] = {"conditions": [{"type": "Available", "status": "True"}]}
    assert raw(api, "GET", "/apis/metrics.k8s.io/v1beta1/nodes") == (200, {"items": ["nodes"]})


def test_csr_approval_through_the_typed_client(kube, tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    from kubernetes import client

    key = ec.generate_private_key(ec.SECP256R1())
    request = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
                                        x509.NameAttribute(NameOID.COMMON_NAME, "system:node:w1")]))
               .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    certs = client.CertificatesV1Api(api_client(kube, tmp_path))
    body = {"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
            "metadata": {"generateName": "csr-"},
            "spec": {"request": base64.b64encode(request).decode(), "signerName": "kubernetes.io/kubelet-serving",
                     "usages": ["digital signature", "server auth"], "username": "system:node:w1"}}
    made = certs.create_certificate_signing_request(body)
    name = made.metadata.name
    assert name.startswith("csr-") and made.spec.username == "kubernetes-admin"  # the server sets the requester

    csr = certs.read_certificate_signing_request(name)
    csr.status.conditions = [client.V1CertificateSigningRequestCondition(
        type="Approved", status="True", reason="LabctlApprove", message="test")]
    csr.spec.signer_name = "example.com/other"  # only the conditions go through the approval subresource
    approved = certs.replace_certificate_signing_request_approval(name, csr)
    assert [(c.type, c.status, c.reason) for c in approved.status.conditions] == [("Approved", "True",
                                                                                   "LabctlApprove")]
    assert approved.spec.signer_name == "kubernetes.io/kubelet-serving"

    csr = certs.read_certificate_signing_request(name)
    csr.status.conditions.append(client.V1CertificateSigningRequestCondition(type="Denied", status="True"))
    with pytest.raises(ApiException) as info:
        certs.replace_certificate_signing_request_approval(name, csr)
    assert info.value.status == 422 and "mutually exclusive" in json.loads(info.value.body)["message"]
    # the main resource ignores a status change
    csr = certs.read_certificate_signing_request(name)
    csr.status.conditions = []
    assert len(certs.replace_certificate_signing_request(name, csr).status.conditions) == 1
    bad = dict(body, spec={**body["spec"], "request": base64.b64encode(b"junk").decode()})
    with pytest.raises(ApiException) as info:
        certs.create_certificate_signing_request(bad)
    assert info.value.status == 422


# ---- what the API server normalises -----------------------------------------------------------------------------

@pytest.mark.parametrize("given, stored", [
    ("1024Mi", "1Gi"), ("0.5", "500m"), ("1000m", "1"), ("1500m", "1500m"), ("1.5", "1500m"), ("1000", "1k"),
    ("0.5Gi", "512Mi"), ("1.5Gi", "1536Mi"), ("100M", "100M"), ("2048", "2048"), ("512Mi", "512Mi"), (1, "1"),
    (0.25, "250m"), ("1e3", "1e3"), ("12e6", "12e6"), ("0", "0"), ("0.1", "100m"), ("0.5Ki", "512"),
    ("200Mi", "200Mi"), ("100m", "100m"),
])
def test_quantities_are_stored_in_canonical_form(given, stored):
    assert canonical_quantity(given) == stored


def test_normalisation_defaults_and_validation_on_write(kube, tmp_path):
    api = api_client(kube, tmp_path)
    d = deployment("web")
    d["spec"]["template"]["spec"]["containers"][0]["resources"] = {"requests": {"cpu": 0.1, "memory": "1024Mi"},
                                                                   "limits": {"memory": "2Gi"}}
    made = apply(api, "/apis/apps/v1/namespaces/default/deployments/web", d)[1]
    resources = made["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources == {"requests": {"cpu": "100m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}
    d["spec"]["template"]["spec"]["containers"][0]["resources"] = {"requests": {"memory": "512MB"}}
    status, answer = apply(api, "/apis/apps/v1/namespaces/default/deployments/web", d)
    assert status == 422 and "quantities must match" in answer["message"]

    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "login"}, "stringData": {"password": "pw"}}
    made = apply(api, "/api/v1/namespaces/default/secrets/login", secret)[1]
    assert made["data"] == {"password": base64.b64encode(b"pw").decode()} and "stringData" not in made
    assert made["type"] == "Opaque"

    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "grafana"},
           "spec": {"type": "NodePort", "selector": {"app": "grafana"},
                    "ports": [{"name": "http", "port": 80, "nodePort": 30300}, {"name": "x", "port": 81}]}}
    made = apply(api, "/api/v1/namespaces/default/services/grafana", svc)[1]
    ports = made["spec"]["ports"]
    assert ports[0] == {"name": "http", "port": 80, "nodePort": 30300, "protocol": "TCP", "targetPort": 80}
    assert 30000 <= ports[1]["nodePort"] <= 32767 and made["spec"]["clusterIP"].startswith("10.")
    # applied again without the allocated port: it keeps it (and its clusterIP)
    again = apply(api, "/api/v1/namespaces/default/services/grafana", svc)[1]
    assert again["spec"]["ports"][1]["nodePort"] == ports[1]["nodePort"]
    assert again["spec"]["clusterIP"] == made["spec"]["clusterIP"]
    other = {**svc, "metadata": {"name": "other"}, "spec": {**svc["spec"], "ports": [{"port": 80,
                                                                                      "nodePort": 30300}]}}
    status, answer = apply(api, "/api/v1/namespaces/default/services/other", other)
    assert status == 422 and "30300: provided port is already allocated" in answer["message"]
    other["spec"]["ports"] = [{"port": 80, "nodePort": 8080}]
    status, answer = apply(api, "/api/v1/namespaces/default/services/other", other)
    assert status == 422 and "The range of valid ports is 30000-32767" in answer["message"]


def test_selectors_json_patch_and_strategic_merge(kube, tmp_path):
    api = api_client(kube, tmp_path)
    for name, labels in (("a", {"tier": "front", "env": "dev"}), ("b", {"tier": "back"}), ("c", {})):
        kube.store.put("api/v1", "configmaps", {"metadata": {"name": name, "labels": labels}}, "default")

    def names(selector: str) -> list[str]:
        status, body = raw(api, "GET", "/api/v1/namespaces/default/configmaps", query=[("labelSelector", selector)])
        assert status == 200, body
        return [i["metadata"]["name"] for i in body["items"]]

    assert names("tier=front") == ["a"] and names("tier!=front") == ["b", "c"]
    assert names("tier in (front,back)") == ["a", "b"] and names("tier notin (front)") == ["b", "c"]
    assert names("tier,!env") == ["b"] and names("tier==back") == ["b"]
    assert raw(api, "GET", "/api/v1/namespaces/default/configmaps", query=[("labelSelector", "a b c")])[0] == 400
    listed = raw(api, "GET", "/api/v1/configmaps")[1]  # built-in list items carry no apiVersion/kind
    assert listed["kind"] == "ConfigMapList" and "kind" not in listed["items"][0]

    status, patched = raw(api, "PATCH", "/api/v1/namespaces/default/configmaps/a",
                          [{"op": "add", "path": "/data", "value": {"k": "v"}},
                           {"op": "remove", "path": "/metadata/labels/env"}], "application/json-patch+json")
    assert status == 200 and patched["data"] == {"k": "v"} and patched["metadata"]["labels"] == {"tier": "front"}
    status, _ = raw(api, "PATCH", "/api/v1/namespaces/default/configmaps/a",
                    [{"op": "test", "path": "/data/k", "value": "other"}], "application/json-patch+json")
    assert status == 422
    status, patched = raw(api, "PATCH", "/api/v1/namespaces/default/configmaps/a", {"data": {"j": "w"}},
                          "application/strategic-merge-patch+json")
    assert status == 200 and patched["data"] == {"k": "v", "j": "w"}
    kube.store.put("apis/apiextensions.k8s.io/v1", "customresourcedefinitions",
                   crd_object("example.com", "v1", "widgets", "Widget"))
    kube.store.put("apis/example.com/v1", "widgets", {"metadata": {"name": "w"}, "spec": {}}, "default")
    status, answer = raw(api, "PATCH", "/apis/example.com/v1/namespaces/default/widgets/w", {"spec": {"a": 1}},
                         "application/strategic-merge-patch+json")
    assert status == 415  # as a real server: no strategic merge for custom resources
    assert raw(api, "GET", "/api/v1/configmaps", query=[("watch", "true")])[0] == 405


# ---- who is asking: client certificates over TLS ----------------------------------------------------------------

def https(kube: FakeKube, tmp_path, method: str, path: str, cert: tuple[bytes, bytes] | None = None,
          body: dict | None = None) -> tuple[int, dict | str]:
    """One request over TLS with `cert` (PEM cert, key) as the client certificate, or none."""
    import http.client
    import ssl

    context = ssl.create_default_context(cadata=kube.ca_pem.decode())
    if cert is not None:
        (tmp_path / "client.crt").write_bytes(cert[0])
        (tmp_path / "client.key").write_bytes(cert[1])
        context.load_cert_chain(tmp_path / "client.crt", tmp_path / "client.key")
    conn = http.client.HTTPSConnection(kube.host, kube.port, context=context, timeout=10)
    try:
        conn.request(method, path, body=json.dumps(body) if body else None,
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read().decode()
        return response.status, json.loads(data) if "json" in response.getheader("Content-Type", "") else data
    finally:
        conn.close()


def test_tls_takes_the_client_certificate_as_the_user_and_the_rest_as_anonymous(tmp_path):
    """kube-apiserver's x509 authenticator: CN = user, O = groups (+ system:authenticated), verified against the
    cluster CA; no certificate = system:anonymous, allowed only the public-info paths; a certificate from another
    CA never gets a request through."""
    import ssl

    from tests.sim.kube_certs import CertificateAuthority

    kube = FakeKube(tls_sans=["127.0.0.1"], workdir=tmp_path / "pki").start()
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        request = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(
            ec.generate_private_key(ec.SECP256R1()), hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
        csr = {"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
               "spec": {"request": base64.b64encode(request).decode(), "signerName": "example.com/x",
                        "usages": ["client auth"]}}
        status, made = https(kube, tmp_path, "POST", "/apis/certificates.k8s.io/v1/certificatesigningrequests",
                             kube.client_cert, {**csr, "metadata": {"name": "by-admin"}})
        assert status == 201, made
        assert (made["spec"]["username"], made["spec"]["groups"]) == (
            "kubernetes-admin", ["kubeadm:cluster-admins", "system:authenticated"])
        jane = kube.ca.issue("jane", organizations=["devs", "ops"])
        status, made = https(kube, tmp_path, "POST", "/apis/certificates.k8s.io/v1/certificatesigningrequests",
                             jane, {**csr, "metadata": {"name": "by-jane"}})
        assert (made["spec"]["username"], made["spec"]["groups"]) == ("jane", ["devs", "ops", "system:authenticated"])

        assert https(kube, tmp_path, "GET", "/version")[0] == 200
        assert https(kube, tmp_path, "GET", "/readyz") == (200, "ok")
        status, body = https(kube, tmp_path, "GET", "/api/v1/nodes")
        assert (status, body["reason"], body["message"]) == (403, "Forbidden", (
            'nodes is forbidden: User "system:anonymous" cannot list resource "nodes" in API group "" at the '
            "cluster scope"))
        status, body = https(kube, tmp_path, "GET", "/apis/apps/v1/namespaces/default/deployments/web")
        assert body["message"] == ('deployments.apps "web" is forbidden: User "system:anonymous" cannot get resource '
                                   '"deployments" in API group "apps" in the namespace "default"')
        status, body = https(kube, tmp_path, "GET", "/api")
        assert (status, body["message"]) == (403, 'forbidden: User "system:anonymous" cannot get path "/api"')

        stranger = CertificateAuthority.create("another cluster").issue("kubernetes-admin",
                                                                         organizations=["kubeadm:cluster-admins"])
        with pytest.raises((ssl.SSLError, ConnectionError)):
            https(kube, tmp_path, "GET", "/api/v1/nodes", stranger)
    finally:
        kube.stop()


def test_nodes_print_as_kubectl_get_nodes_wide_shows_them(kube):
    """The Node printer of the real server (pkg/printers/internalversion printNode): every column, the wide ones
    with priority 1."""
    from tests.sim.kube_requests import ApiRequest

    kube.store.put("api/v1", "nodes", {
        "metadata": {"name": "a", "labels": {"node-role.kubernetes.io/control-plane": "",
                                             "node-role.kubernetes.io/etcd": "", "kubernetes.io/role": "infra"}},
        "spec": {"unschedulable": True},
        "status": {"conditions": [{"type": "Ready", "status": "True"}],
                   "addresses": [{"type": "InternalIP", "address": "192.168.64.5"},
                                 {"type": "ExternalIP", "address": "203.0.113.5"}],
                   "nodeInfo": {"kubeletVersion": "v1.35.6", "osImage": "Ubuntu 24.04.3 LTS",
                                "kernelVersion": "6.14.0-35-generic",
                                "containerRuntimeVersion": "containerd://2.2.0"}}})
    kube.store.put("api/v1", "nodes", {"metadata": {"name": "b"}, "status": {
        "conditions": [{"type": "Ready", "status": "Unknown"}]}})
    kube.store.put("api/v1", "nodes", {"metadata": {"name": "c"}})
    res = kube.store.resource("api/v1", "nodes")
    status, listed = ApiRequest(kube.store, "GET", res, None, None, None, {},
                                {"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"},
                                b"", kube).run()
    assert status == 200 and listed["kind"] == "Table"
    assert [(c["name"], c["priority"]) for c in listed["columnDefinitions"]] == [
        ("Name", 0), ("Status", 0), ("Roles", 0), ("Age", 0), ("Version", 0), ("Internal-IP", 1),
        ("External-IP", 1), ("OS-Image", 1), ("Kernel-Version", 1), ("Container-Runtime", 1)]
    rows = {r["cells"][0]: r["cells"][1:3] + r["cells"][4:] for r in listed["rows"]}
    assert rows == {
        "a": ["Ready,SchedulingDisabled", "control-plane,etcd,infra", "v1.35.6", "192.168.64.5", "203.0.113.5",
              "Ubuntu 24.04.3 LTS", "6.14.0-35-generic", "containerd://2.2.0"],
        "b": ["NotReady", "<none>", "", "<none>", "<none>", "<unknown>", "<unknown>", "<unknown>"],
        "c": ["Unknown", "<none>", "", "<none>", "<none>", "<unknown>", "<unknown>", "<unknown>"]}
