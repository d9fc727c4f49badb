"""Adversarial tests of stacks: crashes, prune edge cases, hostile input, concurrency, secrets.

Scenarios from trying to break the feature, kept as regression tests: those that held from the start, and those
that found a defect since fixed (a Helm release left pending, a user chart moved to another namespace, a missing
manifests folder locking the user out of `credentials` and `destroy`).

Runtime: the simulated labs are module-scoped "scenario" fixtures. Each runs its whole story once (installs,
crashes, prunes...) and records what it saw in a `Facts` object; the tests only assert on those facts. So a lab is
installed once however many tests read it (under pytest-xdist, once per worker that needs it), and a test never
depends on another test having run first. A scenario step that raised is re-raised by the test that needs it.
Labs are master-only clusters where no workload has to run (installs in ~2 s); `workers` has a worker for the
catalogue stacks whose workloads must become ready.
"""

from __future__ import annotations

import base64
import copy
import json
import multiprocessing
import os
import shutil
import subprocess
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from labctl import credentials as C
from labctl import model
from labctl import stacks as S
from labctl.errors import ConfigError, LabctlError
from labctl.state import LabState
from tests.conftest import build_problems
from tests.sim.kube_resources import CRD_PREFIX, CRDS
from tests.sim.sim_helm import decode_release, encode_release
from tests.sim.sim_lab import SimLab, lease_prefix
from tests.sim.test_sim_e2e import ctrl_c_raises, events, labctl, summary_of

pytestmark = pytest.mark.sim


# ---- plumbing -------------------------------------------------------------------------------------------------------

@dataclass
class Facts:
    """What a scenario saw, by name; `errors` holds the traceback of a step that raised."""

    values: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)

    def __getitem__(self, key):
        for step, tb in self.errors.items():
            if key.startswith(step):
                pytest.fail(f"scenario step {step!r} raised:\n{tb}")
        return self.values[key]

    def __setitem__(self, key, value):
        self.values[key] = value

    def play(self, world: World, *steps) -> None:
        """Run the scenario's steps in order, each guarded (its traceback recorded), then close the world: the tests
        read only these facts."""
        try:
            for name, fn in steps:
                started = time.monotonic()
                try:
                    fn()
                except Exception:  # noqa: BLE001 - recorded for the test that needs it
                    self.errors[name] = traceback.format_exc()
                self.values[f"seconds.{name}"] = round(time.monotonic() - started, 1)
        finally:
            world.close()


def results(out: str) -> dict[str, str]:
    return {e["step"]: e["status"] for e in events(out) if e.get("event") == "result"}


def details(out: str) -> dict[str, str]:
    return {e["step"]: e.get("detail", "") for e in events(out) if e.get("event") == "result"}


class World:
    """A simulated lab in a directory of its own, with module-scoped fake tart and environment."""

    def __init__(self, root: Path, raw: dict, files: dict[str, str] | None = None):
        from tests.sim.fake_tart import FakeTart

        self.root, self.raw = root, raw
        self.mp = pytest.MonkeyPatch()
        self.fake = FakeTart(root)
        for key in list(os.environ):
            if key.startswith("FAKE_TART_"):
                self.mp.delenv(key)
        for key, value in self.fake.env().items():
            self.mp.setenv(key, value)
        self.mp.setenv("FAKE_TART_LEASE_PREFIX", lease_prefix())
        self.mp.setenv("FAKE_TART_IP_DELAY", "0")
        self.mp.setenv("LABCTL_DEBUG_LOG", str(root / "debug.log"))
        self.mp.chdir(root)
        for rel, text in (files or {}).items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
        self.config = root / "clusters.json"
        self.write(raw)
        try:
            self.sim = SimLab(self.config, self.fake).__enter__()
        except BaseException:
            self.fake.kill_all()
            self.mp.undo()
            raise
        self.outputs: list[str] = []  # every CLI output, for the secrets grep

    def write(self, raw: dict) -> None:
        self.config.write_text(json.dumps(raw, indent=2))

    def run(self, *args: str):
        result = labctl(*args)
        self.outputs += [result.out, result.err]
        return result

    def store(self, cluster: str):
        return self.sim.clusters[cluster].store

    @property
    def state(self) -> LabState:
        return LabState(self.root / ".labctl")

    def close(self) -> None:
        try:
            self.sim.__exit__(None, None, None)
        finally:
            self.fake.kill_all()
            self.mp.undo()


def master_only(name: str, cidr: int, stacks: list) -> dict:
    """A one-node cluster: enough for stacks whose objects need no pod to run (ConfigMaps, CRDs, user charts)."""
    return {"name": name, "pod_cidr": f"10.{cidr}.0.0/16", "service_cidr": f"10.{cidr + 100}.0.0/16",
            "stacks": stacks, "nodes": [{"name": f"{name}-master", "role": "master", "cpu": 2, "memory": 4096}]}


def cm(name: str, namespace: str | None = None) -> str:
    ns = f", namespace: {namespace}" if namespace else ""
    return f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}{ns}}}\ndata: {{k: v}}\n"


def chart(name: str, **extra) -> dict:
    return {"name": name, "chart": "redis", "repo": "https://charts.example.com/stable", "version": "1.2.3", **extra}


def release_secret(store, namespace: str, release: str, revision: int, status: str) -> None:
    """A release revision written straight into Helm's storage (as a Helm killed mid-operation leaves it)."""
    newest = max((s for s in store.list("api/v1", "secrets", namespace) if s.get("type") == "helm.sh/release.v1"
                  and s["metadata"]["labels"].get("name") == release),
                 key=lambda s: int(s["metadata"]["labels"]["version"]))
    record = decode_release(newest)
    record["version"] = revision
    record["info"]["status"] = status
    store.put("api/v1", "secrets", {
        "metadata": {"name": f"sh.helm.release.v1.{release}.v{revision}",
                     "labels": {"owner": "helm", "name": release, "version": str(revision), "status": status}},
        "type": "helm.sh/release.v1", "data": {"release": encode_release(record)}}, namespace)


# ---- scenario 1: a lab with a worker (catalogue stacks with logins), crashed and resumed -----------------------------

WORKERS = {"clusters": [
    {"name": "alpha", "pod_cidr": "10.10.0.0/16", "service_cidr": "10.110.0.0/16",
     # argocd first (the others require it), so the first `stacks.helm-install` is deterministically argocd's
     "stacks": ["storage", "argocd",
                {"name": "jenkins", "requires": ["argocd"]},
                {"name": "metrics-server", "requires": ["argocd"],
                 "values": {"resources": None, "args": ["--kubelet-preferred-address-types=InternalIP",
                                                         "--metric-resolution=20s"]}}],
     "nodes": [{"name": "alpha-master", "role": "master", "cpu": 2, "memory": 4096},
               {"name": "alpha-worker1", "role": "worker", "cpu": 4, "memory": 8192}]},
    master_only("beta", 20, []),  # installed, so Argo CD on alpha registers it as a destination
]}


def secret_ok(w: World, cluster: str, stack: str) -> dict[str, bool]:
    """Each login of `stack`: does its Secret on the cluster hold the password credentials.json keeps?"""
    stored = C.read_all(w.state).get(cluster, {})
    out = {}
    for cred in S.catalogue()[stack].credentials:
        live = w.store(cluster).get("api/v1", "secrets", cred.secret, cred.namespace)
        out[cred.name] = cred.name in stored and C.secret_matches(cred, stored[cred.name], live)
    return out


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    w = World(tmp_path_factory.mktemp("workers"), copy.deepcopy(WORKERS))
    f = Facts()
    sim, raw = w.sim, w.raw

    def passwords():
        return {c: {n: e["password"] for n, e in v.items()} for c, v in C.read_all(w.state).items()}

    def killed_in_first_install():
        # VMs, Kubernetes and Cilium first (once more if the sim had a hiccup), so that the crash point is surely
        # reached: the first `stacks.helm-install` of the lab, argocd's (the other stacks with a release require it)
        base = w.run("--json", "install", "--skip", "stacks")
        if base.code:
            base = w.run("--json", "install", "--skip", "stacks")
        f["base"] = (base.code, summary_of(base.out)["failed"])
        sim.crash_at(1, "kill", ran=True, script="stacks.helm-install")
        first = w.run("--json", "install")
        f["kill.code"] = first.code
        f["kill.failed"] = summary_of(first.out)["failed"]
        f["kill.at"] = sim.crashed_at and sim.crashed_at.params["stack"]
        f["kill.passwords"] = passwords()
        sim.revive()
        resumed = w.run("--json", "install")
        f["kill.resume"] = (resumed.code, summary_of(resumed.out)["failed"])
        again = w.run("--json", "install")
        f["kill.third"] = (again.code, summary_of(again.out)["counts"])
        f["kill.passwords.after"] = passwords()
        f["kill.secrets"] = {s: secret_ok(w, "alpha", s) for s in ("argocd", "jenkins")}

    def ctrl_c_in_upgrade():
        raw["clusters"][0]["stacks"][1] = {"name": "argocd", "values": {"server": {"replicas": 1}}}
        w.write(raw)
        sim.crash_at(1, "sigint", script="stacks.helm-install")
        with ctrl_c_raises():
            f["sigint.code"] = w.run("--json", "install").code
        f["sigint.at"] = sim.crashed_at and sim.crashed_at.params["stack"]
        sim.revive()
        resumed = w.run("--json", "install")
        f["sigint.resume"] = (resumed.code, summary_of(resumed.out)["failed"])
        again = w.run("--json", "install")
        f["sigint.third"] = (again.code, summary_of(again.out)["counts"])

    def killed_before_helm_ran():
        raw["clusters"][0]["stacks"][2] = {"name": "jenkins", "requires": ["argocd"],
                                           "values": {"controller": {"numExecutors": 2}}}
        w.write(raw)
        sim.crash_at(1, "kill", ran=False, script="stacks.helm-install")
        f["kill2.code"] = w.run("--json", "install").code
        f["kill2.at"] = sim.crashed_at and sim.crashed_at.params["stack"]
        sim.revive()
        resumed = w.run("--json", "install")
        f["kill2.resume"] = (resumed.code, summary_of(resumed.out)["failed"])
        mark = len(sim.calls)
        again = w.run("--json", "install")
        f["kill2.third"] = (again.code, summary_of(again.out)["counts"],
                            [c.script for c in sim.calls[mark:] if c.script == "stacks.helm-install"])
        f["final.passwords"] = passwords()
        f["final.secrets"] = {s: secret_ok(w, "alpha", s) for s in ("argocd", "jenkins")}
        f["releases"] = sim.releases("alpha")
        store = w.store("alpha")
        secret = next(s for s in store.list("api/v1", "secrets", "kube-system")
                      if s.get("type") == "helm.sh/release.v1" and s["metadata"]["labels"]["name"] == "metrics-server"
                      and s["metadata"]["labels"]["status"] == "deployed")
        f["metrics-server.config"] = decode_release(secret)["config"]

    def secrets_grep():
        w.run("plan")
        w.run("--json", "status", "--timeout", "3")
        w.run("smoke", "--timeout", "3", "--junit", str(w.root / "smoke.xml"))
        w.run("-v", "install")
        state = w.root / ".labctl"
        texts = list(w.outputs)
        texts += [p.read_text(errors="replace") for p in state.rglob("*")
                  if p.is_file() and p.name != "credentials.json" and "kubeconfig" not in p.parts]
        texts += [(w.root / "smoke.xml").read_text()]
        if (w.root / "debug.log").exists():
            texts.append((w.root / "debug.log").read_text(errors="replace"))
        for node in sim.nodes.values():
            texts += [v.decode(errors="replace") for k, v in node.files.items() if k.startswith("/etc/labctl/")]
        store = w.store("alpha")
        for secret in store.list("api/v1", "secrets"):  # Helm's release records: the values of every release
            if secret.get("type") == "helm.sh/release.v1":
                texts.append(json.dumps(decode_release(secret)))
        needles = {f"password {c}/{n}": p for c, v in C.read_all(w.state).items() for n, p in
                   ((n, e["password"]) for n, e in v.items())}
        destination = store.get("api/v1", "secrets", "cluster-beta", "argocd")
        f["destination.registered"] = destination is not None
        if destination is not None:
            config = json.loads(base64.b64decode(destination["data"]["config"]))
            key = config["tlsClientConfig"]["keyData"]
            needles["argocd destination keyData"] = key
            needles["argocd destination key PEM"] = base64.b64decode(key).decode().splitlines()[1]
        f["leaks"] = sorted(name for name, needle in needles.items() if any(needle in t for t in texts))
        f["needles"] = len(needles)

    def crd_deleted_by_hand():
        import phases.stacks as P

        store = w.store("alpha")
        store.delete(CRD_PREFIX, CRDS, "appprojects.argoproj.io")
        report = json.loads(w.run("--json", "status", "--cluster", "alpha", "--timeout", "3").out)
        f["crd.status"] = report["clusters"][0]["stacks"]["argocd"]
        w.mp.setattr(P, "CRD_WAIT", 2)  # the wait for a CRD that never comes back: 2 s instead of 120 s
        result = w.run("--json", "install", "--only", "stacks", "--cluster", "alpha")
        f["crd.install"] = (result.code, details(result.out).get("stacks:alpha/argocd", ""))
        f["crd.restored"] = store.get(CRD_PREFIX, CRDS, "appprojects.argoproj.io") is not None

    def destroyed_destination():
        f["destroy.code"] = w.run("destroy", "--cluster", "beta", "--yes").code
        result = w.run("--json", "install", "--cluster", "alpha")
        f["destroy.install"] = result.code
        f["destroy.secret"] = w.store("alpha").get("api/v1", "secrets", "cluster-beta", "argocd") is not None

    f.play(w, ("kill", killed_in_first_install), ("sigint", ctrl_c_in_upgrade), ("kill2", killed_before_helm_ran),
           ("secrets", secrets_grep), ("destroy", destroyed_destination),
           ("crd", crd_deleted_by_hand))  # last: it leaves argocd broken
    yield f


def test_an_install_killed_in_a_stack_helm_install_resumes_and_then_changes_nothing(workers):
    f = workers
    assert f["base"] == (0, [])
    assert f["kill.code"] == 1 and f["kill.at"] == "argocd", f["kill.failed"]
    assert f["kill.resume"] == (0, [])
    code, counts = f["kill.third"]
    assert code == 0 and counts["changed"] == 0 and counts["failed"] == 0
    assert f["releases"]["argocd/argocd"]["status"] == "deployed"


def test_ctrl_c_and_a_kill_before_helm_ran_during_upgrades_resume_too(workers):
    f = workers
    assert f["sigint.code"] == 130 and f["sigint.at"] == "argocd"
    assert f["sigint.resume"] == (0, [])
    assert f["sigint.third"][0] == 0 and f["sigint.third"][1]["changed"] == 0
    assert f["kill2.code"] == 1 and f["kill2.at"] == "jenkins"
    assert f["kill2.resume"] == (0, [])
    code, counts, helm = f["kill2.third"]
    assert code == 0 and counts["changed"] == 0 and helm == []
    assert f["releases"]["jenkins/jenkins"]["revision"] == 2  # the upgrade ran exactly once, after the resume


def test_passwords_survive_crashes_and_the_secrets_hold_them(workers):
    f = workers
    argocd = f["kill.passwords"]["alpha"]["argocd"]  # generated before the kill, kept through every crash
    assert f["kill.passwords.after"]["alpha"]["argocd"] == argocd
    assert f["final.passwords"]["alpha"]["argocd"] == argocd
    assert f["final.passwords"]["alpha"]["jenkins"] == f["kill.passwords.after"]["alpha"]["jenkins"]
    assert f["kill.secrets"] == {"argocd": {"argocd": True}, "jenkins": {"jenkins": True}}
    assert f["final.secrets"] == {"argocd": {"argocd": True}, "jenkins": {"jenkins": True}}


def test_values_override_null_removes_a_key_and_a_list_replaces_and_the_next_install_is_a_no_op(workers):
    config = workers["metrics-server.config"]
    assert "resources" not in config
    assert config["args"] == ["--kubelet-preferred-address-types=InternalIP", "--metric-resolution=20s"]
    assert workers["releases"]["kube-system/metrics-server"]["revision"] == 1  # never upgraded by a re-run


def test_no_password_nor_argocd_cluster_key_reaches_outputs_logs_state_or_helm_values(workers):
    assert workers["destination.registered"]
    assert workers["needles"] >= 4
    assert workers["leaks"] == []


def test_status_names_the_missing_object_when_a_stack_crd_is_deleted_by_hand(workers):
    probe = workers["crd.status"]
    assert not probe["ok"] and "AppProject" in probe["detail"] and "missing" in probe["detail"]


def test_install_restores_a_chart_crd_deleted_by_hand(workers):
    code, detail = workers["crd.install"]
    assert code == 0, detail
    assert workers["crd.restored"]


def test_the_argocd_destination_of_a_destroyed_cluster_is_removed(workers):
    assert workers["destroy.code"] == 0 and workers["destroy.install"] == 0
    assert not workers["destroy.secret"]


# ---- scenario 2: prune -----------------------------------------------------------------------------------------------

SYSTEM_NS = """apiVersion: v1
kind: Namespace
metadata:
  name: kube-system
  labels: {team: platform}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: platform-info, namespace: kube-system}
data: {owner: platform}
"""

PRUNE = {"clusters": [
    master_only("alpha", 30, [
        {"name": "a", "manifests": "m/a", "namespace": "shared"},
        {"name": "b", "manifests": "m/b", "namespace": "shared", "requires": ["a"]},  # a creates `shared`
        chart("cache"),
        chart("moved", namespace="m1"),
        chart("handgone"),
        {"name": "sys", "manifests": "m/sys"},
        {"name": "keep", "manifests": "m/keep"},
    ]),
    master_only("beta", 40, [chart("other"), chart("gone")]),
]}


@pytest.fixture(scope="module")
def prune(tmp_path_factory):
    files = {"m/a/a.yaml": cm("cm-a"), "m/b/b.yaml": cm("cm-b"), "m/sys/sys.yaml": SYSTEM_NS,
             "m/keep/keep.yaml": cm("cm-keep")}
    w = World(tmp_path_factory.mktemp("prune"), copy.deepcopy(PRUNE), files)
    f = Facts()
    alpha = w.store("alpha")

    def installed():
        result = w.run("--json", "install")
        f["install"] = (result.code, summary_of(result.out)["failed"])

    def changed_config():
        raw = copy.deepcopy(PRUNE)
        stacks = raw["clusters"][0]["stacks"]
        keep = {"b", "moved", "keep"}
        stacks[:] = [s for s in stacks if s["name"] in keep]
        stacks[0]["requires"] = []
        stacks[1]["namespace"] = "m2"  # `moved` changes namespace: a new release there
        stacks.append(chart("kv", release="cache", namespace="cache"))  # `cache` renamed, same release
        raw["clusters"][1]["stacks"] = [chart("other")]
        w.write(raw)
        w.sim.clusters["alpha"].helm_uninstall("handgone", "handgone", None)  # by hand, before the prune
        plan = w.run("plan")
        f["plan"] = plan.out + plan.err

    def beta_api_down():
        path = w.root / ".labctl" / "kubeconfig" / "beta.yaml"
        saved = path.read_bytes()
        config = yaml.safe_load(saved)
        config["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:9"  # nothing listens there
        path.write_text(yaml.safe_dump(config))
        try:
            result = w.run("--json", "install", "--prune", "--only", "stacks", "--cluster", "beta")
            f["down.code"] = result.code
            f["down.gone"] = w.sim.releases("beta").get("gone/gone")
            f["down.recorded"] = "gone" in w.state.read()["stacks"]["beta"]
        finally:
            path.write_bytes(saved)
        result = w.run("--json", "install", "--prune", "--cluster", "beta")
        f["beta.code"] = (result.code, summary_of(result.out)["failed"])
        f["beta.gone"] = w.sim.releases("beta").get("gone/gone")
        f["beta.other"] = w.sim.releases("beta").get("other/other")
        f["beta.alpha-untouched"] = alpha.get("api/v1", "configmaps", "cm-a", "shared") is not None
        f["beta.recorded"] = sorted(w.state.read()["stacks"]["beta"])

    def pruned():
        mark = len(alpha.requests)
        result = w.run("--json", "install", "--prune")
        f["prune"] = (result.code, summary_of(result.out)["failed"], result.err)
        f["deletes"] = [path for method, path in alpha.requests[mark:] if method == "DELETE"]
        f["cm-b"] = alpha.get("api/v1", "configmaps", "cm-b", "shared") is not None
        f["cm-keep"] = alpha.get("api/v1", "configmaps", "cm-keep", "keep") is not None
        f["releases"] = w.sim.releases("alpha")
        f["recorded"] = sorted(w.state.read()["stacks"]["alpha"])
        report = json.loads(w.run("--json", "status", "--cluster", "alpha", "--timeout", "3").out)["clusters"][0]
        f["status"] = report["stacks"]
        plan = w.run("plan")
        f["plan.after"] = plan.out + plan.err

    f.play(w, ("install", installed), ("config", changed_config), ("down", beta_api_down), ("prune", pruned))
    yield f


def test_prune_skips_a_cluster_whose_api_is_down_honours_cluster_and_tolerates_a_hand_uninstalled_release(prune):
    f = prune
    assert f["install"] == (0, [])
    assert "stack gone on beta is no longer in clusters.json" in f["plan"]
    assert "stack handgone on alpha is no longer in clusters.json" in f["plan"]
    # beta's API down: the install fails, nothing is pruned, the record stays for the next try
    assert f["down.code"] == 1 and f["down.gone"] is not None and f["down.recorded"]
    # --cluster beta prunes beta's dropped stack only; alpha's dropped stacks are left for later
    assert f["beta.code"] == (0, [])
    assert f["beta.gone"] is None and f["beta.other"]["status"] == "deployed" and f["beta.recorded"] == ["other"]
    assert f["beta.alpha-untouched"]
    # the whole prune: a release uninstalled by hand is no error, the kept stacks stay, the records go
    code, failed, err = f["prune"]
    assert code == 0, (failed, err)
    assert f["cm-keep"] and f["releases"]["m2/moved"]["status"] == "deployed"
    assert "handgone" not in f["recorded"] and "a" not in f["recorded"] and "sys" not in f["recorded"]
    assert "no longer in clusters.json" not in f["plan.after"]


def test_prune_keeps_a_namespace_another_declared_stack_still_uses(prune):
    assert prune["prune"][0] == 0
    assert prune["cm-b"], "stack b's ConfigMap went with the namespace `shared` when stack a was pruned"
    assert prune["status"]["b"]["ok"], prune["status"]["b"]


def test_prune_after_a_rename_keeps_the_release_the_new_stack_owns(prune):
    assert prune["prune"][0] == 0
    assert "cache/cache" in prune["releases"], "kv's release was uninstalled as the old stack `cache`"
    assert prune["status"]["kv"]["ok"], prune["status"]["kv"]


def test_a_user_chart_moved_to_another_namespace_does_not_leave_its_old_release_behind(prune):
    assert prune["releases"]["m2/moved"]["status"] == "deployed"
    assert "m1/moved" not in prune["releases"] or "m1" in prune["plan.after"]


def test_prune_never_deletes_a_namespace_the_stack_did_not_create(prune):
    assert not any(path.endswith("/namespaces/kube-system") for path in prune["deletes"]), prune["deletes"]


# ---- scenario 3: checks that never converge, Helm left pending, plan writing passwords ---------------------------

CRD_AND_CR = """apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  scope: Cluster
  names: {plural: widgets, singular: widget, kind: Widget, listKind: WidgetList}
  versions:
    - name: v1
      served: true
      storage: true
      schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
---
apiVersion: example.com/v1
kind: Widget
metadata: {name: w1}
spec: {size: 3}
"""
QUOTA = """apiVersion: v1
kind: ResourceQuota
metadata: {name: compute}
spec:
  hard: {requests.cpu: 1, requests.memory: 1024Mi}
"""
CLUSTER_ROLE = """apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: pod-reader, namespace: scoped}
rules: [{apiGroups: [""], resources: [pods], verbs: [get, list]}]
"""
NAMESPACED_CRD = CRD_AND_CR.replace("scope: Cluster", "scope: Namespaced").replace("widgets", "gadgets") \
    .replace("Widget", "Gadget").replace("widget", "gadget")

QUIRKS = {"clusters": [master_only("solo", 50, [
    {"name": "crds", "manifests": "m/crds"},
    {"name": "nscrds", "manifests": "m/nscrds"},
    {"name": "quota", "manifests": "m/quota"},
    {"name": "scoped", "manifests": "m/scoped"},
    chart("pend"),
    chart("failing"),
])]}


@pytest.fixture(scope="module")
def quirks(tmp_path_factory):
    files = {"m/crds/crds.yaml": CRD_AND_CR, "m/nscrds/crds.yaml": NAMESPACED_CRD, "m/quota/quota.yaml": QUOTA,
             "m/scoped/role.yaml": CLUSTER_ROLE}
    w = World(tmp_path_factory.mktemp("quirks"), copy.deepcopy(QUIRKS), files)
    f = Facts()
    store = w.store("solo")

    def three_installs():
        # the first Helm call of the lab fails (a registry hiccup); the next install must simply redo it
        w.sim.fail("stacks.helm-install", rc=1, output="Error: failed to fetch chart: 503 Service Unavailable",
                   times=1)
        for i in (1, 2, 3):
            mark = len(store.requests)
            result = w.run("--json", "install")
            f[f"install{i}"] = results(result.out)
            f[f"details{i}"] = details(result.out)
            f[f"deletes{i}"] = [p for m, p in store.requests[mark:] if m == "DELETE"]

    def helm_left_pending():
        release_secret(store, "pend", "pend", 2, "pending-upgrade")
        release_secret(store, "failing", "failing", 2, "failed")
        plan = w.run("plan")
        f["pending.plan"] = plan.out
        for i in (1, 2):
            result = w.run("--json", "install", "--only", "stacks")
            f[f"pending.install{i}"] = (results(result.out), details(result.out))
        f["pending.releases"] = w.sim.releases("solo")

    def plan_with_a_new_login():
        creds = w.root / ".labctl" / "credentials.json"
        before = creds.read_text() if creds.exists() else None
        raw = copy.deepcopy(QUIRKS)
        raw["clusters"][0]["stacks"].append("argocd")
        w.write(raw)
        try:
            plan = w.run("plan")
            f["plan.code"] = plan.code
            generated = C.read_all(w.state).get("solo", {}).get("argocd", {}).get("password")
            f["plan.password shown"] = bool(generated) and (generated in plan.out + plan.err
                                                            or generated in w.state.path.read_text())
            after = creds.read_text() if creds.exists() else None
            f["plan.credentials"] = {"existed before": before is not None, "exists after": after is not None,
                                     "changed": before != after}
        finally:
            w.write(QUIRKS)

    def kubeconfig_missing():
        path = w.root / ".labctl" / "kubeconfig" / "solo.yaml"
        saved = path.read_bytes()
        path.unlink()
        try:
            result = w.run("--json", "status", "--timeout", "2")
            f["nokubeconfig"] = (result.code, json.loads(result.out)["clusters"][0])
        finally:
            path.write_bytes(saved)

    f.play(w, ("install", three_installs), ("pending", helm_left_pending), ("plan", plan_with_a_new_login),
           ("nokubeconfig", kubeconfig_missing))
    yield f


def test_a_namespaced_custom_resource_with_its_crd_in_the_same_folder_installs_at_once(quirks):
    assert quirks["install1"]["stacks:solo/nscrds"] == "changed", quirks["details1"]["stacks:solo/nscrds"]
    assert quirks["install2"]["stacks:solo/nscrds"] == "unchanged"


def test_a_cluster_scoped_custom_resource_with_its_crd_in_the_same_folder_installs_at_once(quirks):
    assert quirks["install1"]["stacks:solo/crds"] == "changed", quirks["details1"]["stacks:solo/crds"]
    assert not any("/widgets/" in p for p in quirks["deletes2"] + quirks["deletes3"])


def test_a_manifest_with_non_canonical_quantities_converges(quirks):
    assert quirks["install1"]["stacks:solo/quota"] == "changed", quirks["details1"]["stacks:solo/quota"]
    assert quirks["install2"]["stacks:solo/quota"] == "unchanged"


def test_a_cluster_scoped_manifest_with_a_namespace_converges(quirks):
    assert quirks["install1"]["stacks:solo/scoped"] == "changed", quirks["details1"]["stacks:solo/scoped"]
    assert quirks["install2"]["stacks:solo/scoped"] == "unchanged"


def test_a_helm_install_that_failed_once_is_redone_by_the_next_install(quirks):
    failed = [s for s in ("stacks:solo/pend", "stacks:solo/failing") if quirks["install1"][s] == "failed"]
    assert len(failed) == 1 and "503 Service Unavailable" in quirks["details1"][failed[0]]
    assert quirks["install2"][failed[0]] == "changed" and quirks["install3"][failed[0]] == "unchanged"


def test_plan_shows_no_password(quirks):
    assert quirks["plan.password shown"] is False


def test_a_user_chart_whose_last_revision_failed_is_upgraded_back_to_deployed(quirks):
    assert "release failing is failed" in quirks["pending.plan"]
    statuses, _ = quirks["pending.install1"]
    assert statuses["stacks:solo/failing"] == "changed"
    assert quirks["pending.releases"]["failing/failing"]["status"] == "deployed"


def test_a_user_chart_left_pending_by_an_interrupted_helm_is_recovered(quirks):
    assert "release pend is pending-upgrade" in quirks["pending.plan"]
    statuses, detail = quirks["pending.install2"]
    assert statuses["stacks:solo/pend"] in ("changed", "unchanged"), detail["stacks:solo/pend"]
    assert quirks["pending.releases"]["pend/pend"]["status"] == "deployed"


def test_plan_does_not_write_credentials(quirks):
    assert quirks["plan.code"] == 0
    assert not quirks["plan.credentials"]["changed"], quirks["plan.credentials"]


def test_status_without_a_kubeconfig_is_unhealthy_and_skips_the_stacks(quirks):
    code, cluster = quirks["nokubeconfig"]
    assert code == 1 and not cluster["healthy"]
    assert all(p["skipped"] for p in cluster["stacks"].values())


# ---- a cluster without workers ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def solo_stack(tmp_path_factory):
    w = World(tmp_path_factory.mktemp("solo"), {"clusters": [master_only("one", 60, ["metrics-server"])]})
    f = Facts()

    def install():
        result = w.run("--json", "install")
        f["install"] = (result.code, details(result.out).get("stacks:one/metrics-server"))

    f.play(w, ("install", install))
    yield f


def test_a_catalogue_stack_installs_on_a_cluster_without_workers(solo_stack):
    code, detail = solo_stack["install"]
    assert code == 0, detail


# ---- hostile input: validation and the Helm script -------------------------------------------------------------------

def lab_json(stack: dict) -> str:
    return json.dumps({"clusters": [master_only("c", 70, [stack])]})


def helm_scripts(stack: dict, tmp_path: Path) -> list:
    """The scripts phases/stacks.py would run for `stack` (its real `_helm`, a recording transport)."""
    from phases.stacks import Stacks

    lab = model.parse(lab_json(stack), base_dir=tmp_path)
    cluster = lab.clusters[0]
    resolved = S.resolve(lab, cluster, stack["name"], tmp_path)

    class Transport:
        def __init__(self):
            self.scripts, self.files = [], {}

        def run(self, script, **kwargs):
            self.scripts.append(script)

        def put(self, path, data, mode=0o644, **kwargs):
            self.files[path] = (data, mode)

    transport = Transport()

    class Ctx:
        def __init__(self):
            self.lab = lab

        def transport(self, name):
            return transport

        def note(self, text):
            pass

        def kube(self, cluster):  # no release of it yet: nothing pending to recover first
            return type("Kube", (), {"helm_release": staticmethod(lambda namespace, release: None)})()

    Stacks()._helm(Ctx(), cluster, resolved, resolved.releases)
    return [s for s in transport.scripts if s.id == "stacks.helm-install"]


def run_with_stub_helm(text: str, tmp_path: Path) -> list[str]:
    """Run a rendered helm script under bash with a `helm` stub logging each call: one line, arguments `|`-separated
    (newlines inside an argument shown as `~`)."""
    system = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    if shutil.which("helm", path=system):
        pytest.skip("a real helm is installed; the script would run it")
    stubs = tmp_path / "stubs"
    stubs.mkdir(exist_ok=True)
    log = tmp_path / "helm.log"
    stub = stubs / "helm"
    stub.write_text(f"#!/bin/sh\n{{ printf '%s|' \"$@\" | tr '\\n' '~'; echo; }} >> {log}\n")
    stub.chmod(0o755)
    subprocess.run(["bash", "-c", text], env={"PATH": f"/usr/bin:/bin:{stubs}"}, cwd=tmp_path,
                   capture_output=True, timeout=30)
    return log.read_text().splitlines() if log.exists() else []


def test_a_trailing_newline_cannot_turn_the_helm_script_comment_into_commands(tmp_path):
    def accepted(field_: str, value: str) -> bool:
        try:
            model.parse(lab_json({**chart("demo"), field_: value}))
        except ConfigError:
            return False
        return True

    passed = [f for f, v in (("name", "demo\n"), ("chart", "redis\n"), ("release", "r\n"), ("namespace", "n\n"),
                             ("version", "1.2.3\n")) if accepted(f, v)]
    consequence = None
    if "version" in passed:  # what the control plane would run
        [install] = helm_scripts(chart("demo", version="1.2.3\n"), tmp_path)
        header = install.text.split("set -euo pipefail")[0]
        consequence = {"uncommented lines before `set -e`": [line for line in header.splitlines()
                                                              if line.strip() and not line.startswith("#")],
                       "helm calls": run_with_stub_helm(install.text, tmp_path)}
    assert passed == [], (passed, consequence)


def test_hostile_repo_urls_and_names_stay_quoted_or_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(ConfigError):  # whitespace in a repository URL: refused outright
        model.parse(lab_json(chart("demo", repo=f"https://charts.example.com/x;touch {marker}")))
    repo = f"https://charts.example.com/x;touch${{IFS}}{marker}`touch${{IFS}}{marker}`$(touch${{IFS}}{marker})"
    [install] = helm_scripts(chart("demo", repo=repo), tmp_path)
    calls = run_with_stub_helm(install.text, tmp_path)
    assert not marker.exists()
    assert len(calls) == 2 and calls[0].startswith("repo|add|labctl-") and f"|{repo}|--force-update|" in calls[0]
    assert calls[1].startswith("upgrade|--install|demo|labctl-")
    for bad in ({"name": "a;b"}, {"name": "../x"}, {"name": "Demo"}, {"release": "x y"}, {"namespace": "a/b"},
                {"chart": "../etc"}, {"chart": "x;y"}, {"version": "1.2.3;id"}, {"repo": "file:///etc"},
                {"version": "^1.2.0"}, {"name": "harbor"}, {"name": "monitoring"}):
        with pytest.raises(ConfigError):
            model.parse(lab_json({**chart("demo"), **bad}))


def test_a_manifests_folder_with_a_symlink_to_etc_passwd_is_refused_without_quoting_it(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "passwd.yaml").symlink_to("/etc/passwd")
    problems = build_problems(lambda: model.parse(
        json.dumps({"clusters": [master_only("c", 70, [{"name": "d", "manifests": "m"}])]}), base_dir=tmp_path))
    text = "\n".join(map(str, problems))
    assert "passwd.yaml" in text and "not a Kubernetes object" in text
    assert "root:" not in text and "/bin/" not in text


def test_a_missing_manifests_folder_does_not_lock_the_user_out_of_credentials_and_destroy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = {"clusters": [master_only("c", 70, ["metrics-server", {"name": "d", "manifests": "moved-away"}])]}
    (tmp_path / "clusters.json").write_text(json.dumps(raw))
    assert labctl("credentials").code == 0
    assert labctl("--json", "status").code != 2  # unhealthy (nothing runs), but not refused
    for command in ("validate", "plan", "install"):  # those that build the lab still refuse it, naming the field
        result = labctl(command)
        assert result.code == 2 and "clusters[0].stacks[1].manifests" in result.out + result.err, (command, result)


BILLION_LAUGHS = "\n".join([
    "apiVersion: v1", "kind: ConfigMap", "metadata: {name: lol}", "data: {k: v}", "lol:",
    '  l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
    *(f"  l{i}: &l{i} [{','.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)),
    "  l9: [*l8,*l8,*l8,*l8,*l8,*l8,*l8,*l8,*l8]", ""])


def test_a_billion_laughs_manifest_is_refused(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "bomb.yaml").write_text(BILLION_LAUGHS)
    assert len(BILLION_LAUGHS) < 1200
    with pytest.raises(LabctlError):
        S.read_manifests(folder)


# ---- credentials.json under concurrency ------------------------------------------------------------------------------

def _ensure_in_another_process(root: str, name: str, barrier, queue) -> None:
    """One labctl process generating the login `name`. Its read of credentials.json waits (up to 2 s) for the other
    process's read: the interleaving two processes get by chance, made certain. With a cross-process lock around
    the read-modify-write the second process blocks on the lock instead, the wait times out, and nothing is lost."""
    real = C._read

    def read_then_wait(state):
        data = real(state)
        try:
            barrier.wait(timeout=2)
        except threading.BrokenBarrierError:
            pass
        return data

    C._read = read_then_wait
    cred = S.Credential(name=name, namespace="ns", secret="s", password_key="password")
    queue.put((name, C.ensure(LabState(Path(root)), "c", cred)["password"]))


def test_credentials_from_many_threads_are_all_kept(tmp_path):
    state = LabState(tmp_path / ".labctl")
    barrier, got, lock = threading.Barrier(8), {}, threading.Lock()

    def work(i):
        barrier.wait()
        for j in range(5):
            cred = S.Credential(name=f"login{i}-{j}", namespace="ns", secret="s", password_key="password")
            password = C.ensure(state, f"cluster{i % 2}", cred)["password"]
            with lock:
                got[(f"cluster{i % 2}", cred.name)] = password

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stored = C.read_all(state)
    assert {(c, n): e["password"] for c, v in stored.items() for n, e in v.items()} == got
    assert oct((state.root / "credentials.json").stat().st_mode & 0o777) == "0o600"


def test_credentials_from_several_processes_are_all_kept(tmp_path):
    context = multiprocessing.get_context("fork")
    barrier, queue = context.Barrier(2), context.Queue()
    procs = [context.Process(target=_ensure_in_another_process, args=(str(tmp_path), name, barrier, queue))
             for name in ("grafana", "argocd")]
    for p in procs:
        p.start()
    got = dict(queue.get(timeout=30) for _ in procs)
    for p in procs:
        p.join(10)
    stored = C.read_all(LabState(tmp_path)).get("c", {})
    assert sorted(stored) == ["argocd", "grafana"], f"stored {sorted(stored)}; one process's new password was lost"
    assert all(stored[k]["password"] == v for k, v in got.items())


# ---- values overrides ------------------------------------------------------------------------------------------------

def test_deep_merge_follows_helms_rule_for_values_files():
    base = {"a": {"b": 1, "c": [1, 2]}, "d": "x", "e": {"f": 1}}
    merged = S.deep_merge(base, {"a": {"c": [3]}, "d": None, "e": {"g": 2}})
    assert merged == {"a": {"b": 1, "c": [3]}, "e": {"f": 1, "g": 2}}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": "x", "e": {"f": 1}}  # the rendered values are not changed

