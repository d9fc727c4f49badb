"""The stack mechanism without a cluster: one step per stack in `requires` order, the comparisons the check makes,
the Helm scripts (shellcheck, exact commands), generated credentials, and the kubelet-serving CSR checks."""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import stat
import subprocess

import pytest

from labctl import credentials, model, stacks
from labctl.engine import Check, Phase, build_steps
from labctl.render import script
from labctl.stack_hooks import csr_verdict
from labctl.state import LabState
from phases.stacks import contains, normalised
from tests.conftest import shellcheck

LAB = """{"clusters": [
 {"name": "hub", "pod_cidr": "10.10.0.0/16", "service_cidr": "10.96.0.0/16",
  "stacks": ["metrics-server", {"name": "cache", "chart": "redis", "repo": "oci://registry-1.docker.io/bitnamicharts",
             "version": "21.2.5", "requires": ["metrics-server"]},
             {"name": "web", "chart": "nginx", "repo": "https://charts.example.org", "version": "1.0.0",
              "requires": ["cache"]}, "rbac"],
  "nodes": [{"name": "hub-master", "role": "master", "cpu": 2, "memory": 4096},
            {"name": "hub-worker1", "role": "worker", "cpu": 4, "memory": 8192}]},
 {"name": "spoke", "pod_cidr": "10.20.0.0/16", "service_cidr": "10.97.0.0/16",
  "nodes": [{"name": "spoke-master", "role": "master", "cpu": 2, "memory": 4096}]}]}"""


class Noop(Phase):
    def __init__(self, name, scope="cluster", after=()):
        self.name, self.scope, self.after = name, scope, tuple(after)

    def check(self, ctx, target):
        return Check(True)


class ItemPhase(Noop):
    def __init__(self, cross=False):
        super().__init__("stacks", after=("cni",))
        self.cross = cross

    def items(self, lab, cluster):
        return stacks.installable(cluster) or None

    def item_requires(self, lab, cluster, item):
        return cluster.stack(item).requires

    def cross_cluster(self, lab, cluster, item):
        return [("cni", c.name) for c in lab.clusters] if self.cross and item == "cache" else []


def test_one_step_per_installable_stack_in_requires_order():
    lab = model.parse(LAB)
    steps = {s.id: s for s in build_steps(lab, [Noop("cni"), ItemPhase(), Noop("after", after=("stacks",))])}
    # spoke declares nothing installable: one plain step per phase
    assert [i for i in steps if i.startswith("stacks:")] == ["stacks:hub/metrics-server", "stacks:hub/cache",
                                                            "stacks:hub/web", "stacks:hub/rbac", "stacks:spoke"]
    assert {d.id for d in steps["stacks:hub/cache"].deps} == {"cni:hub", "stacks:hub/metrics-server"}
    assert {d.id for d in steps["stacks:hub/web"].deps} == {"cni:hub", "stacks:hub/cache"}
    assert {d.id for d in steps["after:hub"].deps} == {"stacks:hub/metrics-server", "stacks:hub/cache",
                                                      "stacks:hub/web", "stacks:hub/rbac"}


def test_cross_cluster_dependencies_wait_for_the_other_clusters_only_when_selected():
    lab = model.parse(LAB)
    steps = {s.id: s for s in build_steps(lab, [Noop("cni"), ItemPhase(cross=True)])}
    assert {d.id for d in steps["stacks:hub/cache"].deps} == {"cni:hub", "cni:spoke", "stacks:hub/metrics-server"}
    from labctl.engine import Selection

    only_hub = {s.id: s for s in build_steps(lab, [Noop("cni"), ItemPhase(cross=True)], Selection(clusters=["hub"]))}
    assert {d.id for d in only_hub["stacks:hub/cache"].deps} == {"cni:hub", "stacks:hub/metrics-server"}


def test_user_chart_stacks_resolve_with_defaults(tmp_path):
    lab = model.parse(LAB)
    hub = lab.cluster("hub")
    cache = stacks.resolve(lab, hub, "cache", tmp_path)
    assert cache.source == "chart" and cache.namespace == "cache"
    (release,) = cache.releases
    assert release.release == "cache" and release.chart_ref == "oci://registry-1.docker.io/bitnamicharts/redis"
    web = stacks.resolve(lab, hub, "web", tmp_path).releases[0]
    assert web.chart_ref == f"{web.repo_name}/nginx" and web.repo_name.startswith("labctl-")


def test_catalogue_values_overrides_are_deep_merged(tmp_path):
    raw = json.loads(LAB)
    raw["clusters"][0]["stacks"][0] = {"name": "metrics-server", "values": {"resources": {"requests": {"cpu": "250m"}},
                                                                            "replicas": 2}}
    lab = model.parse(json.dumps(raw))
    (release,) = stacks.resolve(lab, lab.cluster("hub"), "metrics-server", tmp_path).releases
    assert release.values["resources"]["requests"] == {"cpu": "250m", "memory": "200Mi"}
    assert release.values["replicas"] == 2 and release.values["args"]  # labctl's own values stay


def test_deep_merge_follows_helm():
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    assert stacks.deep_merge(base, {"a": {"c": [3]}, "d": None, "e": {"f": 1}}) == {"a": {"b": 1, "c": [3]},
                                                                                    "e": {"f": 1}}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 1}  # not modified


def test_contains_compares_only_what_labctl_sets():
    live = {"metadata": {"name": "x", "uid": "1", "labels": {"a": "1", "b": "2"}}, "spec": {"ports": [{"port": 80,
            "protocol": "TCP"}]}}
    assert contains(live, {"metadata": {"name": "x", "labels": {"a": "1"}}, "spec": {"ports": [{"port": 80}]}})
    assert not contains(live, {"metadata": {"labels": {"a": "2"}}})
    assert not contains(live, {"spec": {"ports": [{"port": 80}, {"port": 81}]}})
    assert not contains(live, {"spec": {"missing": 1}})


def test_secret_string_data_is_compared_as_data():
    obj = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"k": "v"}}
    assert normalised(obj)["data"] == {"k": base64.b64encode(b"v").decode()}
    assert "stringData" not in normalised(obj)


@pytest.mark.parametrize("oci", [False, True])
@pytest.mark.parametrize("crds", ["", "charts/crds/crds"])
def test_helm_install_script_passes_shellcheck_and_says_exactly_what_it_runs(tmp_path, oci, crds):
    repo = "oci://ghcr.io/example/charts" if oci else "https://charts.example.org"
    release = stacks.ReleaseDef(release="r1", chart="thing", repo=repo, version="1.2.3", namespace="ns", values={})
    s = script("stacks.helm-install", "cluster/stack-helm-install.sh.j2", cluster="c", stack="st", release="r1",
               chart="thing", chart_ref=release.chart_ref, repo_url=repo, repo_name=release.repo_name, oci=oci,
               version="1.2.3", namespace="ns", values_path="/etc/labctl/stacks/st/r1.yaml", timeout="10m",
               helm_version="v3.20.2", rollback_flag="--atomic", crds_path=crds)
    path = tmp_path / "install.sh"
    path.write_text(s.text)
    subprocess.run(["bash", "-n", str(path)], check=True)
    subprocess.run([shellcheck(), "-s", "bash", str(path)], check=True)
    assert ("helm repo add" in s.text) is not oci
    assert ("kubectl apply --server-side --force-conflicts --field-manager=labctl" in s.text) is bool(crds)
    assert f"helm upgrade --install r1 {release.chart_ref} \\\n  --version 1.2.3 \\\n  --namespace ns --create-namespace" \
        in s.text
    uninstall = script("stacks.helm-uninstall", "cluster/stack-helm-uninstall.sh.j2", cluster="c", stack="st",
                       release="r1", namespace="ns", timeout="10m", helm_version="v3.20.2")
    path.write_text(uninstall.text)
    subprocess.run([shellcheck(), "-s", "bash", str(path)], check=True)
    assert "helm uninstall r1 --namespace ns --wait" in uninstall.text


def test_credentials_are_generated_once_private_and_carried_only_in_secrets(tmp_path):
    state = LabState(tmp_path / ".labctl")
    cred = stacks.Credential(name="grafana", namespace="monitoring", secret="grafana-admin", user_key="admin-user",
                             password_key="admin-password")
    first = credentials.ensure(state, "platform", cred)
    assert credentials.ensure(state, "platform", cred) == first  # never rotated by a re-run
    assert len(first["password"]) >= 24 and first["password"] != "admin"
    assert stat.S_IMODE(os.stat(state.root / "credentials.json").st_mode) == 0o600
    secret = credentials.secret_object(cred, first, "monitoring")
    assert base64.b64decode(secret["data"]["admin-password"]).decode() == first["password"]
    assert credentials.secret_matches(cred, first, secret)
    assert not credentials.secret_matches(cred, {**first, "password": "other"}, secret)
    credentials.forget(state, ["platform"])
    assert credentials.read_all(state) == {}


def test_bcrypt_credentials_store_only_a_hash():
    cred = stacks.Credential(name="argocd", namespace="argocd", secret="argocd-secret", password_key="admin.password",
                             hash="bcrypt", extra={"admin.passwordMtime": ""})
    entry = {"user": "admin", "password": "s3cret-pass", "created": "2026-11-30T10:00:00Z"}
    secret = credentials.secret_object(cred, entry, "argocd")
    stored = base64.b64decode(secret["data"]["admin.password"]).decode()
    assert stored.startswith("$2") and "s3cret-pass" not in stored
    assert base64.b64decode(secret["data"]["admin.passwordMtime"]).decode() == entry["created"]
    assert credentials.secret_matches(cred, entry, secret)
    assert not credentials.secret_matches(cred, {**entry, "password": "nope"}, secret)


def kubelet_csr(node: str, sans_dns: list[str], sans_ip: list[str], user: str | None = None, cn: str | None = None):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName(d) for d in sans_dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in sans_ip]
    req = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
                                    x509.NameAttribute(NameOID.COMMON_NAME, cn or f"system:node:{node}")]))
           .add_extension(x509.SubjectAlternativeName(names), critical=False).sign(key, hashes.SHA256()))
    pem = req.public_bytes(serialization.Encoding.PEM)
    return {"metadata": {"name": "csr-x"}, "spec": {"username": user or f"system:node:{node}",
                                                    "signerName": "kubernetes.io/kubelet-serving",
                                                    "request": base64.b64encode(pem).decode()}}


@pytest.mark.parametrize(("csr", "ok", "why"), [
    (kubelet_csr("dev-worker1", ["dev-worker1"], ["192.168.64.5"]), True, "dev-worker1"),
    (kubelet_csr("dev-worker1", ["dev-worker1"], ["192.168.64.9"]), False, "asks for"),
    (kubelet_csr("dev-worker1", ["kubernetes.default"], ["192.168.64.5"]), False, "asks for"),
    (kubelet_csr("intruder", ["intruder"], ["192.168.64.5"]), False, "not by a node of this cluster"),
    (kubelet_csr("dev-worker1", ["dev-worker1"], ["192.168.64.5"], user="system:node:dev-master"), False, "subject"),
    (kubelet_csr("dev-worker1", ["dev-worker1"], ["192.168.64.5"], cn="admin"), False, "subject"),
])
def test_kubelet_serving_csrs_are_approved_only_for_the_nodes_own_name_and_addresses(csr, ok, why):
    verdict, detail = csr_verdict(csr, {"dev-worker1": {"192.168.64.5"}, "dev-master": {"192.168.64.4"}})
    assert verdict is ok and why in detail


def test_a_failed_cross_cluster_dependency_is_waited_for_but_does_not_block(tmp_path):
    from labctl.context import Context
    from labctl.engine import Engine

    class Cni(Noop):
        def check(self, ctx, target):
            return Check(target.cluster in finished)

        def apply(self, ctx, target):
            if target.cluster == "spoke":
                raise RuntimeError("cilium broke on spoke")
            finished.append(target.cluster)

    class Stacks(ItemPhase):
        def check(self, ctx, target):
            ran.append((target.item, list(finished)))
            return Check(True)

    finished: list[str] = []
    ran: list[tuple[str, list[str]]] = []
    lab = model.parse(LAB)
    steps = build_steps(lab, [Cni("cni"), Stacks(cross=True)])
    summary = Engine(Context(lab, LabState(tmp_path / ".labctl")), parallel=4).run(steps)
    status = {r.step.id: r.status for r in summary.results}
    assert status["cni:spoke"] == "failed"
    assert status["stacks:hub/cache"] == "unchanged" and status["stacks:hub/web"] == "unchanged"
    assert status["stacks:spoke"] == "blocked"  # its own cluster's cni failed: a hard dependency
    assert ("cache", ["hub"]) in ran


def test_server_side_apply_into_a_missing_namespace_fails_at_once_and_says_so(tmp_path):
    import yaml

    from labctl.kube.client import Kube, KubeError
    from tests.sim.fake_kube import FakeKube

    server = FakeKube().start()
    try:
        path = tmp_path / "kubeconfig"
        path.write_text(yaml.safe_dump(server.kubeconfig()))
        kube = Kube("sim", path)
        cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "web"}, "data": {"a": "1"}}
        with pytest.raises(KubeError, match="namespace 'web' does not exist") as err:
            kube.apply(cm)
        assert "Namespace object" in err.value.hint
        kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "web"}})
        assert kube.apply(cm)["metadata"]["managedFields"][0]["manager"] == "labctl"
        assert kube.get("v1", "ConfigMap", "web", "c")["data"] == {"a": "1"}
        assert kube.get("example.com/v1", "Widget", "web", "w") is None  # a kind nobody serves: absent, no error
    finally:
        server.stop()


def test_a_descriptors_after_orders_only_behind_declared_stacks(monkeypatch):
    """`after` in stack.yaml: installed behind those stacks when the cluster declares them, never a requirement."""
    from phases.stacks import phase as stacks_phase

    demo = stacks.catalogue()["hpa-demo"].model_copy(update={"after": ["argocd", "jenkins"]})
    monkeypatch.setitem(stacks.catalogue(), "hpa-demo", demo)
    lab = model.parse(json.dumps({"clusters": [
        {"name": "dev", "pod_cidr": "10.20.0.0/16", "service_cidr": "10.97.0.0/16",
         "stacks": ["hpa-demo", "metrics-server", "argocd"],
         "nodes": [{"name": "dev-master", "role": "master", "cpu": 2, "memory": 4096},
                   {"name": "dev-worker1", "role": "worker", "cpu": 8, "memory": 16384}]}]}))
    steps = {s.id: s for s in build_steps(lab, [Noop("cni"), Noop("nodeconfig"), stacks_phase])}
    assert {d.id for d in steps["stacks:dev/hpa-demo"].deps} >= {"stacks:dev/metrics-server", "stacks:dev/argocd"}
    assert not any("jenkins" in d.id for d in steps["stacks:dev/hpa-demo"].deps)  # not declared: no wait, no error
