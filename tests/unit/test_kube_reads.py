"""How many questions the Kube facade asks: discovery once per group version, presence by one metadata-only list per
kind and namespace, Helm revisions by their labels, a bounded connection pool (issue 14: status made 265 requests on
89 connections before). Against the fake API server (tests/sim/fake_kube.py), which records every request."""

from __future__ import annotations

import base64
import gzip
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

from labctl import stacks
from labctl.kube.client import HelmRelease, Kube, KubeError, parallel
from labctl.kube.rest import POOL_SIZE
from tests.sim.fake_kube import FakeKube
from tests.sim.kube_resources import CRD_PREFIX, CRDS, crd_object

RBAC = "rbac.authorization.k8s.io/v1"


@pytest.fixture
def api(tmp_path):
    server = FakeKube().start()
    path = tmp_path / "kubeconfig.yaml"
    path.write_text(yaml.safe_dump(server.kubeconfig("dev")))
    kube = Kube("dev", path, request_timeout=5)
    yield server, kube
    kube.close()
    server.stop()


def asked(server, path: str) -> int:
    return sum(1 for method, p in server.store.requests if method == "GET" and p == path)


def slow(path: str, seconds: float = 0.2):
    """A `FakeKube.fail` hook that answers `path` late (so that concurrent callers overlap), failing nothing."""
    def hook(method, requested):
        if requested == path:
            time.sleep(seconds)
        return None
    return hook


def test_callers_asking_about_one_group_at_once_share_one_discovery_request(api):
    server, kube = api
    server.fail = slow(f"/apis/{RBAC}")
    start = threading.Barrier(12)

    def ask(_):
        start.wait()
        return kube.resource(RBAC, "ClusterRole")

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(ask, range(12)))
    assert answers == [("clusterroles", False)] * 12
    assert asked(server, f"/apis/{RBAC}") == 1
    # the answer named every kind of the group version: another kind of it costs nothing
    assert kube.resource(RBAC, "RoleBinding") == ("rolebindings", True)
    assert asked(server, f"/apis/{RBAC}") == 1


CALLERS = 6


class CountingLock:
    """A lock that counts the callers that came to it (holding it or waiting for it)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.arrived = threading.Condition()
        self.count = 0

    def __enter__(self):
        with self.arrived:
            self.count += 1
            self.arrived.notify_all()
        return self._lock.__enter__()

    def __exit__(self, *exc):
        return self._lock.__exit__(*exc)


def test_callers_waiting_on_a_failed_discovery_share_its_failure_instead_of_each_asking_in_turn(api):
    """A discovery request that fails (a 500, or a timeout after request_timeout seconds) while other callers wait for
    it: each waiter asking again in turn made N callers wait N timeouts (status against a hung aggregated API), where
    asking at once had cost one. They get the same error; the next question asks again."""
    server, kube = api
    gate = CountingLock()
    kube._discovering["apps/v1"] = gate  # to know when every caller is waiting on the one request

    def hook(method, path):
        if path != "/apis/apps/v1":
            return None
        with gate.arrived:  # answer only once every caller is there (not after a guessed delay)
            gate.arrived.wait_for(lambda: gate.count >= CALLERS, timeout=10)
        return 500

    server.fail = hook

    def ask(_):
        try:
            return kube.resource("apps/v1", "Deployment")
        except KubeError as exc:
            return f"KubeError: {exc.message}"

    with ThreadPoolExecutor(CALLERS) as pool:
        answers = list(pool.map(ask, range(CALLERS)))
    assert all(a.startswith("KubeError: dev: discover apps/v1") for a in answers), answers
    assert sum(1 for m, p in server.store.requests if p == "/apis/apps/v1") == 1
    server.fail = None  # a failure is not kept: the next question asks again
    assert kube.resource("apps/v1", "Deployment") == ("deployments", True)


def test_a_kind_not_served_is_asked_again_later_because_its_crd_may_arrive(api):
    server, kube = api
    crd = crd_object("example.com", "v1", "widgets", "Widget")
    assert kube.resource("example.com/v1", "Widget") is None
    server.store.put(CRD_PREFIX, CRDS, crd)
    assert kube.resource("example.com/v1", "Widget") == ("widgets", True)
    assert asked(server, "/apis/example.com/v1") == 2


def test_names_is_one_metadata_only_list(api):
    server, kube = api
    server.store.put("api/v1", "namespaces", {"metadata": {"name": "apps"}})
    for name in ("a", "b"):
        server.store.put("api/v1", "configmaps", {"metadata": {"name": name, "labels": {"x": name}},
                                                  "data": {"big": "y" * 100_000}}, "apps")
    found = kube.names("v1", "ConfigMap", "apps")
    assert sorted(found) == ["a", "b"] and found["a"]["labels"] == {"x": "a"}
    assert "data" not in json.dumps(found)
    assert kube.names("v1", "ConfigMap", "apps", label_selector="x=b").keys() == {"b"}
    assert kube.names("example.com/v1", "Widget", "apps") is None  # not served: None, not "none there"
    assert asked(server, "/api/v1/namespaces/apps/configmaps") == 2


def helm_revision(name: str, revision: int, status: str, version: str) -> dict:
    body = json.dumps({"name": name, "version": revision, "info": {"status": status},
                       "chart": {"metadata": {"name": name, "version": version}}, "config": {"rev": revision}})
    payload = base64.b64encode(gzip.compress(body.encode()))
    return {"metadata": {"name": f"sh.helm.release.v1.{name}.v{revision}",
                         "labels": {"owner": "helm", "name": name, "version": str(revision), "status": status}},
            "type": "helm.sh/release.v1", "data": {"release": base64.b64encode(payload).decode()}}


def test_a_helm_release_is_read_from_its_newest_revision_only(api):
    server, kube = api
    for revision, status in ((1, "superseded"), (2, "superseded"), (10, "deployed"), (9, "superseded")):
        server.store.put("api/v1", "secrets", helm_revision("loki", revision, status, f"6.{revision}.0"), "monitoring")
    # a Secret that merely carries Helm's labels is not a revision
    server.store.put("api/v1", "secrets", {"metadata": {"name": "impostor", "labels": {
        "owner": "helm", "name": "loki", "version": "99"}}, "data": {}}, "monitoring")
    # nor does a revision label that is not a number make the read fail
    server.store.put("api/v1", "secrets", {"metadata": {"name": "sh.helm.release.v1.loki.vx", "labels": {
        "owner": "helm", "name": "loki", "version": "x"}}, "data": {}}, "monitoring")
    assert kube.helm_release("monitoring", "loki") == HelmRelease("loki", 10, "deployed", "6.10.0", {"rev": 10})
    reads = [p for m, p in server.store.requests if p.startswith("/api/v1/namespaces/monitoring/secrets/")]
    assert reads == ["/api/v1/namespaces/monitoring/secrets/sh.helm.release.v1.loki.v10"]
    assert kube.helm_release("monitoring", "absent") is None


def test_many_parallel_reads_share_a_bounded_pool_of_connections(api):
    server, kube = api
    server.fail = slow("/api/v1/nodes", 0.05)
    with ThreadPoolExecutor(40) as threads:  # more threads than connections: they wait for one, none is opened
        assert list(threads.map(lambda _: kube.nodes(), range(40))) == [[]] * 40
    assert parallel(*([kube.nodes] * 20)) == [[]] * 20
    pool = kube._client()._pool.connection_from_url(kube._client().server)
    assert pool.num_connections <= POOL_SIZE


def stack(objects: list[dict]) -> stacks.StackDef:
    return stacks.StackDef(name="rbac", source="catalogue", namespace="sandbox", requires=[], releases=[],
                           objects=objects, ready=[], node_ports={}, urls={}, credentials=[], hooks=[])


def test_stack_health_lists_each_kind_once_and_names_the_first_missing_object(api):
    server, kube = api
    server.store.put("api/v1", "namespaces", {"metadata": {"name": "sandbox"}})
    roles = [{"apiVersion": RBAC, "kind": "ClusterRole", "metadata": {"name": f"role-{i}"}} for i in range(6)]
    bindings = [{"apiVersion": RBAC, "kind": "RoleBinding", "metadata": {"name": f"bind-{i}"}} for i in range(4)]
    for obj in roles:
        server.store.put("apis/" + RBAC, "clusterroles", dict(obj))
    for obj in bindings[:3]:
        server.store.put("apis/" + RBAC, "rolebindings", dict(obj), "sandbox")

    assert stacks.health(kube, stack(roles)) == (True, "6 objects present")
    assert stacks.health(kube, stack(roles + bindings)) == (False, "RoleBinding sandbox/bind-3 missing")
    assert asked(server, f"/apis/{RBAC}/clusterroles") == 2
    assert asked(server, f"/apis/{RBAC}/namespaces/sandbox/rolebindings") == 1
    assert not [p for m, p in server.store.requests if "/clusterroles/" in p or "/rolebindings/" in p]
