"""The cluster phases (init, join, cni, nodeconfig) against a small recorded world: exact scripts and parameters,
no second `kubeadm init`/`helm upgrade` on a converged lab, NotReady joined nodes reported, join waves, the address
repair (a pure plan, table-tested, and its execution), the kubeconfig files, the Kube facade against the fake API
server, and every rendered cluster script through `bash -n` and shellcheck.
"""

from __future__ import annotations

import base64
import copy
import gzip
import json
import re
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from labctl import model
from labctl.engine import CannotCheck, Engine, Target, build_steps
from labctl.errors import StepError
from labctl.kube import AddressProbe, Repair, hosts_address, kubeconfig, plan_repair
from labctl.kube.client import (
    HelmRelease,
    Kube,
    KubeError,
    NodeInfo,
    Readiness,
    daemonset_readiness,
    decode_helm_release,
    deployment_readiness,
    statefulset_readiness,
)
from labctl.remote.base import Result
from labctl.remote.facts import (
    ADMIN_CONF,
    BOOTSTRAP_KUBELET_CONF,
    HOSTS,
    KUBELET_CONF,
    KUBELET_CONFIG,
    MANIFESTS,
    SCHEMA,
    NodeFacts,
)
from labctl.state import LabState
from phases import cni, init, join, nodeconfig
from tests.conftest import PREDECESSOR, ROOT, SHIPPED, check_bash_scripts
from tests.sim.fake_kube import FakeKube
from tests.sim.kube_certs import make_certificates
from tests.sim.kube_patch import merge_patch

SERVICE_IP = "10.96.0.1"
PHASES = [init.phase, join.phase, cni.phase, nodeconfig.phase]
HEAVY = {"init.kubeadm", "join.kubeadm", "join.token", "cni.helm-install", "cni.helm-binary"}


def addresses_for(lab: model.Lab, start: int = 10) -> dict[str, str]:
    return {node.name: f"192.168.64.{start + i}" for i, (_, node) in enumerate(lab.nodes)}


def predecessor() -> model.Lab:
    return model.parse(PREDECESSOR.read_text())


def ha_lab(**versions) -> model.Lab:
    node = lambda name, role: {"name": name, "role": role, "cpu": 2, "memory": 4096}
    return model.parse(json.dumps({"versions": versions, "clusters": [
        {"name": "ha", "pod_cidr": "10.50.0.0/16", "service_cidr": "10.100.0.0/16", "nodes": [
            node("ha-m1", "master"), node("ha-m2", "master"), node("ha-m3", "master"),
            node("ha-w1", "worker"), node("ha-w2", "worker")]},
        {"name": "solo", "pod_cidr": "10.60.0.0/16", "service_cidr": "10.100.0.0/16", "nodes": [
            node("solo-m", "master")]},
    ]}))


# ---- the recorded world ---------------------------------------------------------------------------------------

class FakeApi:
    """Stands in for labctl.kube.client.Kube: the same methods, over plain objects."""

    def __init__(self, cluster: str):
        self.cluster = cluster
        self.nodes_raw: dict[str, dict] = {}
        self.release: HelmRelease | None = None
        self.cilium: dict[str, Readiness] = {}
        self.cilium_nodes: list[str] = []
        self.patches: list[tuple[str, dict]] = []
        self.restarts: list[str] = []  # rollout restarts, "Kind ns/name"
        self.down = False

    def _up(self):
        if self.down:
            raise KubeError(f"{self.cluster}: the API server did not answer")

    def add_node(self, name: str, address: str, ready: str = "False", labels: dict | None = None,
                 taints: list | None = None) -> None:
        self.nodes_raw[name] = {
            "metadata": {"name": name, "labels": labels or {}, "resourceVersion": "1"},
            "spec": {"taints": taints or []},
            "status": {"conditions": [{"type": "Ready", "status": ready, "reason": "KubeletNotReady",
                                       "message": "container runtime network not ready"}],
                       "addresses": [{"type": "InternalIP", "address": address}],
                       "nodeInfo": {"kubeletVersion": "v1.35.6"}},
        }

    def set_ready(self, name: str, status: str = "True") -> None:
        self.nodes_raw[name]["status"]["conditions"][0]["status"] = status

    def nodes(self):
        self._up()
        return [NodeInfo.from_object(o) for o in self.nodes_raw.values()]

    def node(self, name):
        self._up()
        return NodeInfo.from_object(self.nodes_raw[name]) if name in self.nodes_raw else None

    def patch_node(self, name, patch):
        self._up()
        self.patches.append((name, copy.deepcopy(patch)))
        patch = copy.deepcopy(patch)
        patch.get("metadata", {}).pop("resourceVersion", None)
        self.nodes_raw[name] = merge_patch(self.nodes_raw[name], patch)
        return NodeInfo.from_object(self.nodes_raw[name])

    def daemonset_ready(self, ns, name):
        self._up()
        return self.cilium.get(name, Readiness(False, f"DaemonSet {ns}/{name} not found", found=False))

    deployment_ready = daemonset_ready

    def rollout_restart(self, ns, kind, name):
        self._up()
        if name not in self.cilium:
            return False
        self.restarts.append(f"{kind} {ns}/{name}")
        return True

    def ciliumnodes(self):
        self._up()
        return list(self.cilium_nodes)

    def helm_release(self, ns, name):
        self._up()
        return self.release

    def wait_for(self, what, predicate, timeout, interval=3.0, sleep=None):
        detail = ""
        for _ in range(3):
            try:
                done, detail = predicate()
            except KubeError as exc:
                done, detail = False, str(exc)
            if done:
                return detail
        raise StepError(f"{self.cluster}: {what}: not after {timeout:.0f} s: {detail}")


class World:
    """Nodes with kubeadm marker files, /etc/hosts and address facts; one FakeApi per cluster; every script and put
    recorded. Scripts act by identity, reading their parameters, like the simulated lab."""

    def __init__(self, lab: model.Lab, addresses: dict[str, str]):
        self.lab = lab
        self.addresses = dict(addresses)
        self.files: dict[str, set[str]] = {n.name: set() for _, n in lab.nodes}
        self.hosts = {n.name: "127.0.0.1 localhost\n" for _, n in lab.nodes}
        self.probe = {n.name: AddressProbe() for _, n in lab.nodes}
        self.apis = {c.name: FakeApi(c.name) for c in lab.clusters}
        self.ca = {c.name: make_certificates([f"{c.name}-api.labctl.internal"])[0] for c in lab.clusters}
        self.runs: list[tuple[str, object, bool]] = []  # (node, Script, sudo)
        self.puts: dict[tuple[str, str], tuple[bytes, int]] = {}
        self.fail: dict[str, int] = {}  # script id -> exit code

    def cluster_of(self, node: str) -> model.Cluster:
        return next(c for c, n in self.lab.nodes if n.name == node)

    def ids(self, node: str | None = None) -> list[str]:
        return [s.id for n, s, _ in self.runs if node is None or n == node]

    def admin_conf(self, cluster: str) -> bytes:
        return yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "kubernetes-admin@" + cluster,
            "clusters": [{"name": cluster, "cluster": {
                "server": f"https://{cluster}-api.labctl.internal:6443",
                "certificate-authority-data": base64.b64encode(self.ca[cluster]).decode()}}],
            "users": [{"name": "kubernetes-admin", "user": {"client-certificate-data": "Y2VydA==",
                                                             "client-key-data": "a2V5"}}],
            "contexts": [{"name": "kubernetes-admin@" + cluster,
                          "context": {"cluster": cluster, "user": "kubernetes-admin"}}],
        }).encode()

    # -- what the scripts do -------------------------------------------------------------------------------
    def run(self, node: str, s, sudo: bool) -> Result:
        from labctl.errors import CommandError

        self.runs.append((node, s, sudo))
        if s.id in self.fail:
            raise CommandError(node, s.id, self.fail[s.id], "it broke")
        p, cluster = s.params, self.cluster_of(node)
        api, probe = self.apis[cluster.name], self.probe[node]
        if s.id == "endpoint.hosts":
            self.hosts[node] = f"127.0.0.1 localhost\n{p['address']} {p['name']} # labctl\n"
            self.probe[node] = probe.__class__(**{**probe.__dict__, "endpoint_ip": p["address"]})
        elif s.id == "init.kubeadm":
            self.files[node] |= {*MANIFESTS, ADMIN_CONF, KUBELET_CONF, KUBELET_CONFIG}
            self._set(node, node_ip=p["address"], advertised=p["address"], cert_ips=(SERVICE_IP, p["address"]))
            api.add_node(node, p["address"], labels={"node-role.kubernetes.io/control-plane": ""},
                         taints=[{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}])
        elif s.id == "join.token":  # `kubeadm token create [token]` prints the token it stored
            return Result(0, f"{p['token']}\n")
        elif s.id == "join.kubeadm":
            self.files[node] |= {KUBELET_CONF, KUBELET_CONFIG} | (set(MANIFESTS) if p["control_plane"] else set())
            self._set(node, node_ip=p["address"])
            if p["control_plane"]:
                self._set(node, advertised=p["address"], cert_ips=(SERVICE_IP, p["address"]))
            api.add_node(node, p["address"], ready="True" if api.release else "False")
        elif s.id == "cni.helm-install":
            values = yaml.safe_load(self.puts[(node, cni.VALUES_PATH)][0])
            api.release = HelmRelease("cilium", 1 + (api.release.revision if api.release else 0), "deployed",
                                      p["version"], values)
            api.cilium = {name: Readiness(True, f"{name} ready")
                          for name in ("cilium", "cilium-envoy", "cilium-operator", "hubble-relay", "hubble-ui")}
            api.cilium_nodes = sorted(api.nodes_raw)
            for name in api.nodes_raw:
                api.set_ready(name)
        elif s.id == "repair.probe":
            lines = [f"{k}={v}" for k, v in (("node_ip", probe.node_ip), ("advertised", probe.advertised),
                                                ("endpoint_ip", probe.endpoint_ip)) if v]
            return Result(0, "\n".join(lines + [f"cert_ip={ip}" for ip in probe.cert_ips]) + "\n")
        elif s.id == "repair.node-ip":
            self._set(node, node_ip=p["new"])
            api.nodes_raw[node]["status"]["addresses"][0]["address"] = p["new"]
        elif s.id == "repair.control-plane":
            self._set(node, advertised=p["new"], cert_ips=(SERVICE_IP, p["new"]))
        return Result(0, "")

    def _set(self, node: str, **changes) -> None:
        self.probe[node] = AddressProbe(**{**self.probe[node].__dict__, **changes})

    def facts(self, node: str) -> NodeFacts:
        return NodeFacts.model_validate({"schema": SCHEMA, "files": {f: True for f in self.files[node]},
                                         "texts": {HOSTS: self.hosts[node]}})

    # -- shortcuts to a state ------------------------------------------------------------------------------
    def converge(self, tmp_path: Path) -> Ctx:
        ctx = Ctx(self, tmp_path)
        summary = Engine(ctx, parallel=4).run(build_steps(self.lab, PHASES))
        assert summary.ok, [(r.step.id, r.detail) for r in summary.results if r.status != "changed"]
        self.runs.clear()
        return ctx


class FakeTransport:
    def __init__(self, world: World, node: str):
        self.world, self.node = world, node

    def run(self, s, *, sudo=False, timeout=None, check=True):
        return self.world.run(self.node, s, sudo)

    def put(self, path, data, mode=0o644, *, sudo=False):
        self.world.puts[(self.node, path)] = (data, mode)

    def get(self, path, *, sudo=False):
        cluster = self.world.cluster_of(self.node).name
        if path == ADMIN_CONF and ADMIN_CONF in self.world.files[self.node]:
            return self.world.admin_conf(cluster)
        if path == init.CA_CERT and ADMIN_CONF in self.world.files[self.node]:
            return self.world.ca[cluster]
        raise FileNotFoundError(path)


class FakeProvider:
    def __init__(self, world: World):
        self.world = world
        self.no_network: str | None = None

    def network_problem(self):
        return self.no_network

    def ip(self, node, wait=0):
        return self.world.addresses.get(node.name)

    def host_endpoint(self, node, guest_port, address=None):
        return address or self.ip(node), guest_port  # the host is on the VMs' network, as with Tart


class Ctx:
    """The slice of labctl.context.Context the cluster phases use."""

    def __init__(self, world: World, tmp_path: Path):
        self.world, self.lab = world, world.lab
        self.state = LabState(tmp_path / ".labctl")
        self.provider = FakeProvider(world)
        self._once: dict = {}
        self._once_lock = threading.Lock()  # the engine runs a wave's nodes in parallel, like the real Context
        self.notes: list[str] = []

    def node(self, name):
        return next((c, n) for c, n in self.lab.nodes if n.name == name)

    def transport(self, name):
        return FakeTransport(self.world, name)

    def facts(self, name, refresh=False):
        return self.world.facts(name)

    def address(self, node):
        return self.provider.ip(node, wait=0)  # no cache: these tests move addresses between calls

    def invalidate(self, name):
        pass

    def kube(self, cluster):
        return self.world.apis[cluster.name]

    def once(self, key, fn):
        with self._once_lock:
            if key not in self._once:
                self._once[key] = fn()
            return self._once[key]

    def note(self, text):
        self.notes.append(text)

    def debug(self, message, exc=None):
        pass


@pytest.fixture
def world():
    lab = predecessor()
    return World(lab, addresses_for(lab))


# ---- init ---------------------------------------------------------------------------------------------------

def test_init_on_a_fresh_node_runs_kubeadm_init_with_the_rendered_config(world, tmp_path):
    ctx, dev = Ctx(world, tmp_path), world.lab.cluster("dev")
    target = Target("dev")
    check = init.phase.check(ctx, target)
    assert not check.done and check.detail == "kubeadm init on dev-master (192.168.64.13)"

    init.phase.apply(ctx, target)
    assert world.ids() == ["endpoint.hosts", "init.kubeadm"]
    hosts, kubeadm = (s for _, s, _ in world.runs)
    assert hosts.params == {"cluster": "dev", "name": "dev-api.labctl.internal", "address": "192.168.64.13",
                            "hosts_file": "/etc/hosts", "hosts_lock": "/run/lock/labctl-hosts.lock"}
    assert kubeadm.params == {
        "config_path": "/etc/labctl/kubeadm-init.yaml", "skip_token_print": True, "cluster": "dev", "node": "dev-master",
        "address": "192.168.64.13", "port": 6443, "endpoint_host": "dev-api.labctl.internal",
        "kubernetes_version": "1.35.6", "pod_cidr": "10.20.0.0/16", "service_cidr": "10.97.0.0/16",
        "cri_socket": "unix:///var/run/containerd/containerd.sock",
    }
    assert all(sudo for _, _, sudo in world.runs)
    commands = [line for line in kubeadm.text.splitlines() if not line.lstrip().startswith("#")]
    assert 'kubeadm init --config "$config" --skip-token-print' in commands and not any("reset" in line for line in commands)
    data, mode = world.puts[("dev-master", init.INIT_CONFIG)]
    assert data.decode() == init.init_config(world.lab, dev, "192.168.64.13") and mode == 0o600

    local = kubeconfig.read(ctx.state, "dev")
    assert kubeconfig.server(local) == "https://192.168.64.13:6443"
    assert local["current-context"] == "labctl-dev"
    assert stat.S_IMODE(kubeconfig.cluster_path(ctx.state, "dev").stat().st_mode) == 0o600
    assert init.phase.check(ctx, target).done


def test_without_a_shared_network_no_cluster_is_attempted(world, tmp_path):
    ctx = Ctx(world, tmp_path)
    ctx.provider.no_network = "the VMs are on user-mode networking"  # the qemu provider's, for one
    with pytest.raises(CannotCheck) as err:  # a plan shows it as unknown; a run fails the step, before any change
        init.phase.check(ctx, Target("dev"))  # join, cni and the rest wait for init: blocked behind it
    assert err.value.message == "dev-master: the VMs are on user-mode networking"
    assert "--only vms,prepare,runtime,kubepkgs" in err.value.hint
    assert world.runs == [] and world.puts == {}


def test_init_never_reinitialises_and_reports_half_made_control_planes(world, tmp_path):
    ctx = Ctx(world, tmp_path)
    world.files["dev-master"] = {MANIFESTS[1], MANIFESTS[3]}  # kubeadm ran, but no API server / admin.conf
    check = init.phase.check(ctx, Target("dev"))
    assert not check.done and "reported" in check.detail
    with pytest.raises(StepError, match="does not reset a node on its own") as err:
        init.phase.apply(ctx, Target("dev"))
    assert "kubeadm reset -f" in err.value.hint
    assert world.runs == []


def test_init_rewrites_a_kubeconfig_from_another_cluster(world, tmp_path):
    ctx = world.converge(tmp_path)
    world.ca["dev"] = make_certificates(["x"])[0]  # the VM was recreated: new CA, same address
    check = init.phase.check(ctx, Target("dev"))
    assert not check.done and "another cluster" in check.detail


# ---- a whole install, and a second one ----------------------------------------------------------------------

def test_fresh_install_then_a_second_install_changes_nothing(world, tmp_path):
    ctx = Ctx(world, tmp_path)
    first = Engine(ctx, parallel=4).run(build_steps(world.lab, PHASES))
    assert first.ok and first.count("changed") == len(first.results) - first.count("unchanged")
    assert world.ids().count("init.kubeadm") == 4
    assert world.ids().count("join.kubeadm") == 6
    assert world.ids().count("cni.helm-install") == 4
    assert world.ids().count("join.token") == 4  # one per cluster and run, however many nodes join
    merged = yaml.safe_load(kubeconfig.merged_path(ctx.state).read_text())
    assert sorted(c["name"] for c in merged["contexts"]) == ["labctl-dev", "labctl-platform", "labctl-prod",
                                                             "labctl-staging"]

    patches = sum(len(api.patches) for api in world.apis.values())
    assert patches == 6  # the worker role label on every worker

    world.runs.clear()
    second = Engine(Ctx(world, tmp_path), parallel=4).run(build_steps(world.lab, PHASES))
    assert second.ok and second.count("unchanged") == len(second.results)
    assert world.runs == [] and sum(len(api.patches) for api in world.apis.values()) == patches


def test_join_token_is_fetched_once_per_cluster_and_run(world, tmp_path):
    ctx = Ctx(world, tmp_path)
    Engine(ctx, parallel=4).run(build_steps(world.lab, PHASES))
    tokens = [n for n, s, _ in world.runs if s.id == "join.token"]
    assert sorted(tokens) == ["dev-master", "platform-master", "prod-master", "staging-master"]


def test_cni_check_sees_a_changed_clusters_json(world, tmp_path):
    ctx = world.converge(tmp_path)
    raw = json.loads(PREDECESSOR.read_text())
    raw["clusters"][1]["cilium"] = {"hubble": False}
    raw["versions"] = {"cilium": "1.19.5"}
    world.lab = ctx.lab = model.parse(json.dumps(raw))
    check = cni.phase.check(ctx, Target("dev"))
    assert not check.done
    assert check.detail == "Cilium chart 1.19.6, want 1.19.5; Cilium values differ from clusters.json"
    cni.phase.apply(ctx, Target("dev"))
    assert world.ids() == ["cni.helm-binary", "cni.helm-install"]
    assert cni.phase.check(ctx, Target("dev")).done


@pytest.mark.parametrize(("helm", "flag"), [("3.20.2", "--atomic"), ("4.1.0", "--rollback-on-failure")])
def test_helm_install_command_for_the_pinned_helm_major(tmp_path, helm, flag):
    raw = json.loads(PREDECESSOR.read_text())
    raw["versions"] = {"helm": helm}
    lab = model.parse(json.dumps(raw))
    world = World(lab, addresses_for(lab))
    ctx = Ctx(world, tmp_path)
    for phase in (init.phase, join.phase):
        for target in ([Target("dev")] if phase.scope == "cluster" else [Target("dev", "dev-worker1")]):
            phase.apply(ctx, target)
    world.runs.clear()
    cni.phase.apply(ctx, Target("dev"))
    binary, install = (s for _, s, _ in world.runs)
    assert binary.params == {"version": f"v{helm}"}
    assert install.params["rollback_flag"] == flag and install.params["helm_major"] == int(helm[0])
    assert install.params["values_path"] == "/etc/labctl/cilium-values.yaml"
    assert install.params["version"] == "1.19.6" and install.params["chart"] == "cilium/cilium"
    text = install.text
    assert "helm upgrade --install cilium cilium/cilium" in text
    assert f"--wait --timeout 10m \\\n  {flag}" in text and "--namespace kube-system" in text
    assert "helm repo add cilium https://helm.cilium.io/ --force-update" in text
    assert "get.helm.sh" in binary.text and "sha256sum --check" in binary.text


# ---- join ----------------------------------------------------------------------------------------------------

def test_join_waves_control_planes_one_at_a_time_then_workers():
    lab = ha_lab()
    ha, solo = lab.clusters
    assert [[n.name for n in w] for w in join.phase.waves(ha)] == [["ha-m2"], ["ha-m3"], ["ha-w1", "ha-w2"]]
    assert not join.phase.applies(lab, solo)
    steps = {s.id: s for s in build_steps(lab, [init.phase, join.phase])}
    assert {d.id for d in steps["join:ha/ha-m3"].deps} == {"join:ha/ha-m2", "init:ha"}
    assert {d.id for d in steps["join:ha/ha-w1"].deps} == {"join:ha/ha-m3", "init:ha"}
    assert "join:solo/solo-m" not in steps and "join:ha/ha-m1" not in steps
    only_workers = predecessor().cluster("platform")
    assert [[n.name for n in w] for w in join.phase.waves(only_workers)] == [["platform-worker1", "platform-worker2"]]


def test_control_plane_join_uploads_certificates_once_and_joins_with_the_key(tmp_path):
    lab = ha_lab()
    world = World(lab, addresses_for(lab))
    ctx = Ctx(world, tmp_path)
    init.phase.apply(ctx, Target("ha"))
    world.runs.clear()
    for node in ("ha-m2", "ha-m3", "ha-w1"):
        join.phase.apply(ctx, Target("ha", node))
    # HA (docs/ha.md): a joining master points the stable name at a live member, then at itself (127.0.0.1); a
    # worker gets its local haproxy before its hosts line names 127.0.0.1
    assert [(n, i) for n, s, _ in world.runs for i in [s.id]] == [
        ("ha-m2", "endpoint.hosts"), ("ha-m1", "join.token"), ("ha-m1", "join.upload-certs"), ("ha-m2", "join.kubeadm"),
        ("ha-m2", "endpoint.hosts"),
        ("ha-m3", "endpoint.hosts"), ("ha-m3", "join.kubeadm"), ("ha-m3", "endpoint.hosts"),
        ("ha-w1", "endpoint.haproxy"), ("ha-w1", "endpoint.hosts"), ("ha-w1", "join.kubeadm"),
    ]
    hosts = [(n, s.params["address"]) for n, s, _ in world.runs if s.id == "endpoint.hosts"]
    assert hosts[:2] == [("ha-m2", "192.168.64.10"), ("ha-m2", "127.0.0.1")] and hosts[-1] == ("ha-w1", "127.0.0.1")
    upload = next(s for _, s, _ in world.runs if s.id == "join.upload-certs")
    key = upload.params["certificate_key"]
    assert len(key) == 64 and int(key, 16) >= 0
    m2 = yaml.safe_load(world.puts[("ha-m2", join.JOIN_CONFIG)][0])
    assert m2["controlPlane"] == {"localAPIEndpoint": {"advertiseAddress": "192.168.64.11", "bindPort": 6443},
                                  "certificateKey": key}
    token = next(s for _, s, _ in world.runs if s.id == "join.token").params["token"]
    assert re.fullmatch(r"[a-z0-9]{6}\.[a-z0-9]{16}", token)  # kubeadm's token format
    assert m2["discovery"]["bootstrapToken"]["token"] == token
    assert m2["discovery"]["bootstrapToken"]["caCertHashes"] == [join.ca_cert_hash(world.ca["ha"])]
    assert world.puts[("ha-m2", join.JOIN_CONFIG)][1] == 0o600
    w1 = yaml.safe_load(world.puts[("ha-w1", join.JOIN_CONFIG)][0])
    assert "controlPlane" not in w1
    kubeadm = [s for _, s, _ in world.runs if s.id == "join.kubeadm"]
    assert [s.params["control_plane"] for s in kubeadm] == [True, True, False]
    assert all("token" not in s.params and "certificate_key" not in s.params for s in kubeadm)
    assert all('rm -f -- "$config"' in s.text for s in kubeadm)


def test_a_joined_node_before_the_cni_counts_as_joined(world, tmp_path):
    ctx = Ctx(world, tmp_path)
    init.phase.apply(ctx, Target("dev"))
    join.phase.apply(ctx, Target("dev", "dev-worker1"))
    check = join.phase.check(ctx, Target("dev", "dev-worker1"))
    assert check.done and check.detail == "joined; NotReady until the CNI is installed"


@pytest.mark.parametrize("status", ["False", "Unknown"])
def test_a_joined_notready_node_is_reported_not_joined_again(world, tmp_path, status):
    ctx = world.converge(tmp_path)
    world.apis["dev"].set_ready("dev-worker1", status)
    check = join.phase.check(ctx, Target("dev", "dev-worker1"))
    assert not check.done and f"joined but NotReady ({status}" in check.detail and "reported" in check.detail
    with pytest.raises(StepError, match="labctl does not join a node twice") as err:
        join.phase.apply(ctx, Target("dev", "dev-worker1"))
    assert "kubeadm reset -f" in err.value.hint and "kubectl delete node dev-worker1" in err.value.hint
    assert world.runs == []


def test_a_half_joined_node_is_reported(world, tmp_path):
    ctx = world.converge(tmp_path)
    world.files["dev-worker1"] = {BOOTSTRAP_KUBELET_CONF}
    with pytest.raises(StepError, match="never finished joining"):
        join.phase.apply(ctx, Target("dev", "dev-worker1"))
    assert world.runs == []


def test_a_node_missing_from_the_api_is_reported(world, tmp_path):
    ctx = world.converge(tmp_path)
    del world.apis["dev"].nodes_raw["dev-worker1"]
    assert not join.phase.check(ctx, Target("dev", "dev-worker1")).done
    with pytest.raises(StepError, match="no Node of this name"):
        join.phase.apply(ctx, Target("dev", "dev-worker1"))


def test_ca_cert_hash_matches_openssl(tmp_path):
    if not shutil.which("openssl"):
        pytest.skip("no openssl")
    ca = make_certificates(["x"])[0]
    (tmp_path / "ca.crt").write_bytes(ca)
    pub = subprocess.run(["openssl", "x509", "-pubkey", "-noout", "-in", str(tmp_path / "ca.crt")],
                         capture_output=True, check=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "der"], input=pub, capture_output=True,
                         check=True).stdout
    import hashlib

    assert join.ca_cert_hash(ca) == "sha256:" + hashlib.sha256(der).hexdigest()


# ---- address drift -----------------------------------------------------------------------------------------

DRIFT_LAB = predecessor()
DEV = DRIFT_LAB.cluster("dev")
HA = ha_lab().clusters[0]
M, W = "dev-master", "dev-worker1"
EP = "dev-api.labctl.internal"


def settled(master_ip: str, worker_ip: str, **master) -> dict[str, AddressProbe]:
    return {
        M: AddressProbe(**{"node_ip": master_ip, "advertised": master_ip, "cert_ips": (SERVICE_IP, master_ip),
                           "endpoint_ip": master_ip, **master}),
        W: AddressProbe(node_ip=worker_ip, endpoint_ip=master_ip),
    }


DRIFT_CASES = {
    "nothing moved": (DEV, {M: "192.168.64.10", W: "192.168.64.11"}, settled("192.168.64.10", "192.168.64.11"), []),
    "control plane moved": (
        DEV, {M: "192.168.64.20", W: "192.168.64.11"}, settled("192.168.64.10", "192.168.64.11"),
        [Repair("hosts", M, "192.168.64.20", "192.168.64.10"), Repair("hosts", W, "192.168.64.20", "192.168.64.10"),
         Repair("node-ip", M, "192.168.64.20", "192.168.64.10"),
         Repair("control-plane", M, "192.168.64.20", "192.168.64.10", regenerate_certs=True)]),
    "worker moved": (DEV, {M: "192.168.64.10", W: "192.168.64.21"}, settled("192.168.64.10", "192.168.64.11"),
                     [Repair("node-ip", W, "192.168.64.21", "192.168.64.11")]),
    "files moved, certificate not yet (an interrupted repair)": (
        DEV, {M: "192.168.64.20", W: "192.168.64.11"},
        settled("192.168.64.20", "192.168.64.11", cert_ips=(SERVICE_IP, "192.168.64.10")),
        [Repair("control-plane", M, "192.168.64.20", None, regenerate_certs=True)]),
    "hosts line missing on a worker": (
        DEV, {M: "192.168.64.10", W: "192.168.64.11"},
        {**settled("192.168.64.10", "192.168.64.11"), W: AddressProbe(node_ip="192.168.64.11")},
        [Repair("hosts", W, "192.168.64.10", None)]),
    "an unreachable worker is left out": (
        DEV, {M: "192.168.64.20"}, {M: settled("192.168.64.10", "x")[M]},
        [Repair("hosts", M, "192.168.64.20", "192.168.64.10"), Repair("node-ip", M, "192.168.64.20", "192.168.64.10"),
         Repair("control-plane", M, "192.168.64.20", "192.168.64.10", regenerate_certs=True)]),
    "a worker not joined yet has no node ip to fix": (
        DEV, {M: "192.168.64.10", W: "192.168.64.30"},
        {**settled("192.168.64.10", "x"), W: AddressProbe(endpoint_ip="192.168.64.10")}, []),
}


@pytest.mark.parametrize("case", DRIFT_CASES, ids=list(DRIFT_CASES))
def test_plan_repair(case):
    cluster, addresses, probes, expected = DRIFT_CASES[case]
    assert plan_repair(cluster, addresses, probes) == expected


def test_plan_repair_of_an_ha_master_updates_its_etcd_member_first_and_refuses_without_quorum():
    probes = {"ha-m1": AddressProbe(node_ip="192.168.64.10", advertised="192.168.64.10",
                                    cert_ips=("192.168.64.10",), endpoint_ip="127.0.0.1")}  # HA: itself, docs/ha.md
    peers = {"ha-m1": "192.168.64.10", "ha-m2": "192.168.64.11"}
    assert plan_repair(HA, {"ha-m1": "192.168.64.10"}, probes, peers) == []
    assert plan_repair(HA, {"ha-m1": "192.168.64.20"}, probes, peers) == [
        Repair("node-ip", "ha-m1", "192.168.64.20", "192.168.64.10"),
        Repair("etcd-peer", "ha-m1", "192.168.64.20", "192.168.64.10"),
        Repair("control-plane", "ha-m1", "192.168.64.20", "192.168.64.10", regenerate_certs=True)]
    # an interrupted repair: the files moved, the member's peer URL did not
    moved = {"ha-m1": AddressProbe(node_ip="192.168.64.20", advertised="192.168.64.20",
                                   cert_ips=("192.168.64.20",), endpoint_ip="127.0.0.1")}
    assert plan_repair(HA, {"ha-m1": "192.168.64.20"}, moved, peers) == [
        Repair("etcd-peer", "ha-m1", "192.168.64.20", "192.168.64.10")]
    with pytest.raises(StepError, match="no etcd member of ha has quorum"):
        plan_repair(HA, {"ha-m1": "192.168.64.20"}, probes, None)


def test_plan_repair_recovers_etcd_only_when_the_masters_cannot_form_quorum_as_they_are():
    def master(address: str) -> AddressProbe:
        return AddressProbe(node_ip=address, advertised=address, cert_ips=(address,), endpoint_ip="127.0.0.1")

    was = {"ha-m1": "192.168.64.10", "ha-m2": "192.168.64.11", "ha-m3": "192.168.64.12"}
    probes = {name: master(address) for name, address in was.items()}
    now = {"ha-m1": "192.168.64.20", "ha-m2": "192.168.64.21", "ha-m3": "192.168.64.12"}  # 2 of 3 moved
    plan = [r for r in plan_repair(HA, now, probes, None) if r.kind != "node-ip"]
    assert plan == [
        Repair("control-plane", "ha-m1", "192.168.64.20", "192.168.64.10", regenerate_certs=True),
        Repair("etcd-force", "ha-m1", "192.168.64.20"),
        Repair("control-plane", "ha-m2", "192.168.64.21", "192.168.64.11", regenerate_certs=True, rejoin=True),
        # it did not move, but its member went with --force-new-cluster: only its etcd joins again
        Repair("control-plane", "ha-m3", "192.168.64.12", None, regenerate_certs=False, rejoin=True)]
    # one moved and no quorum: the two at their addresses may be starting: never forced
    with pytest.raises(StepError, match="no etcd member of ha has quorum"):
        plan_repair(HA, {**was, "ha-m1": "192.168.64.20"}, probes, None)
    # a master not probed (off): labctl cannot tell, nothing forced
    with pytest.raises(StepError, match="no etcd member of ha has quorum"):
        plan_repair(HA, {"ha-m1": "192.168.64.20", "ha-m2": "192.168.64.21"},
                    {n: probes[n] for n in ("ha-m1", "ha-m2")}, None)
    # after the forced member: the others, not members any more, join anew (an interrupted recovery goes on)
    forced = {**probes, "ha-m1": master("192.168.64.20")}
    assert [r for r in plan_repair(HA, now, forced, {"ha-m1": "192.168.64.20"}) if r.kind != "node-ip"] == [
        Repair("control-plane", "ha-m2", "192.168.64.21", "192.168.64.11", regenerate_certs=True, rejoin=True),
        Repair("control-plane", "ha-m3", "192.168.64.12", None, regenerate_certs=False, rejoin=True)]


def test_address_probe_parses_the_probe_output():
    text = ("node_ip=192.168.64.10\nadvertised=192.168.64.10\ncert_ip=10.96.0.1\ncert_ip=192.168.64.10\n"
            "endpoint_ip=192.168.64.10\nnoise without equals\n")
    assert AddressProbe.parse(text) == AddressProbe("192.168.64.10", "192.168.64.10", (SERVICE_IP, "192.168.64.10"),
                                                    "192.168.64.10")
    assert AddressProbe.parse("") == AddressProbe()


def test_hosts_address():
    text = "127.0.0.1 localhost\n# 1.2.3.4 dev-api.labctl.internal\n192.168.64.9 a dev-api.labctl.internal # x\n"
    assert hosts_address(text, EP) == "192.168.64.9"
    assert hosts_address("127.0.0.1 localhost # dev-api.labctl.internal\n", EP) is None


def test_install_after_the_control_plane_moved_repairs_in_place(world, tmp_path):
    ctx = world.converge(tmp_path)
    world.addresses["dev-master"] = "192.168.64.40"
    check = init.phase.check(ctx, Target("dev"))
    assert not check.done and "192.168.64.40" in check.detail

    summary = Engine(Ctx(world, tmp_path), parallel=4).run(build_steps(world.lab, PHASES))
    assert summary.ok, [(r.step.id, r.detail) for r in summary.results if r.status == "failed"]
    changed = {r.step.id for r in summary.results if r.status == "changed"}
    assert changed == {"init:dev"}  # the worker's hosts line was refreshed by the repair, before join looked
    assert "init.kubeadm" not in world.ids() and "cni.helm-install" not in world.ids()
    dev_runs = [(n, s.id) for n, s, _ in world.runs if n.startswith("dev-")]
    assert dev_runs == [
        ("dev-master", "repair.probe"), ("dev-worker1", "repair.probe"),
        ("dev-master", "endpoint.hosts"), ("dev-worker1", "endpoint.hosts"),
        ("dev-master", "repair.node-ip"), ("dev-master", "repair.control-plane"),
    ]
    repair = next(s for _, s, _ in world.runs if s.id == "repair.control-plane")
    assert repair.params["old"] == "192.168.64.13" and repair.params["new"] == "192.168.64.40"
    assert repair.params["regenerate_certs"] is True
    assert "kubeadm init phase certs apiserver --config" in repair.text
    reput = yaml.safe_load_all(world.puts[("dev-master", init.INIT_CONFIG)][0])
    assert next(reput)["localAPIEndpoint"]["advertiseAddress"] == "192.168.64.40"
    assert kubeconfig.server(kubeconfig.read(ctx.state, "dev")) == "https://192.168.64.40:6443"
    assert world.hosts["dev-worker1"].split("\n")[1].startswith("192.168.64.40 dev-api.labctl.internal")


def test_a_moved_worker_is_repaired_by_join_without_rejoining(world, tmp_path):
    ctx = world.converge(tmp_path)
    world.addresses["prod-worker2"] = "192.168.64.77"
    check = join.phase.check(ctx, Target("prod", "prod-worker2"))
    assert not check.done and "the VM is at 192.168.64.77" in check.detail
    note = join.phase.apply(ctx, Target("prod", "prod-worker2"))
    assert [(n, s.id) for n, s, _ in world.runs] == [("prod-worker2", "repair.probe"),
                                                     ("prod-worker2", "repair.node-ip")]
    assert "kubelet --node-ip 192.168.64.19 → 192.168.64.77" in note
    assert join.phase.check(ctx, Target("prod", "prod-worker2")).done


def test_reconcile_after_boot_repairs_then_does_nothing(world, tmp_path):
    """What `boot` calls per cluster: repairs what moved, rewrites the kubeconfig; run again, only reads."""
    ctx = world.converge(tmp_path)
    dev = world.lab.cluster("dev")
    world.addresses.update({"dev-master": "192.168.64.40", "dev-worker1": "192.168.64.41"})
    assert [r.kind for r in init.pending_repairs(ctx, dev)] == ["hosts", "hosts", "node-ip", "node-ip",
                                                                "control-plane"]
    assert set(world.ids()) == {"repair.probe"}  # looking changes nothing
    done = init.reconcile_addresses(ctx, dev)
    assert done[:3] == ["dev-master: API endpoint in /etc/hosts 192.168.64.13 → 192.168.64.40",
                        "dev-worker1: API endpoint in /etc/hosts 192.168.64.13 → 192.168.64.40",
                        "dev-master: kubelet --node-ip 192.168.64.13 → 192.168.64.40"]
    assert "dev-worker1: kubelet --node-ip 192.168.64.14 → 192.168.64.41" in done
    assert "control plane address 192.168.64.13 → 192.168.64.40, new API server/etcd certificates" in done[4]
    assert done[-2].startswith("kubeconfig ") and "points at https://192.168.64.13:6443" in done[-2]
    # the hosts lines changed under running Cilium pods (their /etc/hosts is a copy): restarted, once
    assert done[-1] == "restarted DaemonSet cilium, Deployment cilium-operator (new API address)"
    api = world.apis["dev"]
    assert api.restarts == ["DaemonSet kube-system/cilium", "Deployment kube-system/cilium-operator"]
    world.runs.clear()
    assert init.reconcile_addresses(ctx, dev) == []
    assert set(world.ids()) == {"repair.probe"} and len(api.restarts) == 2


def _run_script(s, tmp_path: Path) -> str:
    path = tmp_path / f"{s.id}.sh"
    path.write_text(s.text)
    return subprocess.run(["bash", str(path)], capture_output=True, text=True, check=True).stdout


def test_the_hosts_script_converges_an_etc_hosts_file(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n# 10.0.0.9 dev-api.labctl.internal (a comment stays)\n"
                     "192.168.64.9 dev-api.labctl.internal # stale\n192.168.64.2 other\n")
    dev = predecessor().cluster("dev")
    s = init.hosts_entry(dev, "192.168.64.13")
    s = s.__class__(s.id, s.text.replace("hosts=/etc/hosts", f"hosts={hosts}"), s.params)
    assert _run_script(s, tmp_path) == "changed\n"
    assert hosts.read_text() == ("127.0.0.1 localhost\n# 10.0.0.9 dev-api.labctl.internal (a comment stays)\n"
                                 "192.168.64.2 other\n192.168.64.13 dev-api.labctl.internal # labctl: API endpoint "
                                 "of cluster dev\n")
    assert _run_script(s, tmp_path) == "unchanged\n"
    assert hosts_address(hosts.read_text(), EP) == "192.168.64.13"


def test_the_probe_script_reads_real_files(tmp_path):
    if not shutil.which("openssl"):
        pytest.skip("no openssl")
    _, cert, _ = make_certificates(["kubernetes", SERVICE_IP, "192.168.64.13", EP])  # CA, server cert, key
    files = {"flags": 'KUBELET_KUBEADM_ARGS="--container-runtime-endpoint=unix:///run/containerd/containerd.sock '
                      '--node-ip=192.168.64.13 --pod-infra-container-image=registry.k8s.io/pause:3.10"\n',
             "manifest": "spec:\n  containers:\n  - command:\n    - kube-apiserver\n"
                         "    - --advertise-address=192.168.64.13\n    - --allow-privileged=true\n",
             "hosts": "127.0.0.1 localhost\n192.168.64.13 dev-api.labctl.internal # labctl\n"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "apiserver.crt").write_bytes(cert)
    s = init.address_probe(predecessor().cluster("dev"))
    text = s.text
    for param, name in (("kubeadm_flags", "flags"), ("apiserver_manifest", "manifest"), ("hosts_file", "hosts"),
                        ("apiserver_cert", "apiserver.crt")):
        text = text.replace(f"={s.params[param]}\n", f"={tmp_path / name}\n")
    probe = AddressProbe.parse(_run_script(s.__class__(s.id, text, s.params), tmp_path))
    assert probe == AddressProbe("192.168.64.13", "192.168.64.13", (SERVICE_IP, "192.168.64.13"), "192.168.64.13")
    for name in ("flags", "manifest", "apiserver.crt"):
        (tmp_path / name).unlink()
    assert AddressProbe.parse(_run_script(s.__class__(s.id, text, s.params), tmp_path)) == AddressProbe(
        endpoint_ip="192.168.64.13")


# ---- nodeconfig --------------------------------------------------------------------------------------------

def _node(**kw) -> model.Node:
    return model.Node(**{"name": "n1", "role": "worker", "cpu": 2, "memory": 2048, **kw})


def _info(labels=None, taints=None, annotations=None) -> NodeInfo:
    return NodeInfo.from_object({"metadata": {"name": "n1", "labels": labels or {}, "annotations": annotations or {},
                                              "resourceVersion": "7"}, "spec": {"taints": taints or []}})


CP_TAINT = {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}
NOTES = {nodeconfig.LABELS_NOTE: "node-role.kubernetes.io/worker,tier", nodeconfig.TAINTS_NOTE: "ci:NoSchedule"}


def test_node_patch_sets_labels_and_taints_and_remembers_them():
    node = _node(labels={"tier": "apps"}, taints=[{"key": "ci", "effect": "NoSchedule"}])
    patch = nodeconfig.node_patch(node, _info(taints=[CP_TAINT]))
    assert patch == {
        "metadata": {"labels": {"tier": "apps", "node-role.kubernetes.io/worker": ""}, "annotations": NOTES,
                     "resourceVersion": "7"},
        "spec": {"taints": [CP_TAINT, {"key": "ci", "effect": "NoSchedule"}]},
    }


def test_node_patch_is_none_when_converged():
    node = _node(labels={"tier": "apps"}, taints=[{"key": "ci", "effect": "NoSchedule"}])
    info = _info(labels={"tier": "apps", "node-role.kubernetes.io/worker": "", "other": "x"},
                 taints=[CP_TAINT, {"key": "ci", "effect": "NoSchedule", "timeAdded": None}], annotations=NOTES)
    assert nodeconfig.node_patch(node, info) is None


def test_node_patch_removes_only_what_labctl_set_before():
    node = _node()  # clusters.json no longer lists tier=apps nor the ci taint
    info = _info(labels={"tier": "apps", "node-role.kubernetes.io/worker": "", "other": "x"},
                 taints=[CP_TAINT, {"key": "ci", "effect": "NoSchedule"}], annotations=NOTES)
    patch = nodeconfig.node_patch(node, info)
    assert patch["metadata"]["labels"] == {"tier": None}
    assert patch["spec"]["taints"] == [CP_TAINT]
    assert patch["metadata"]["annotations"] == {nodeconfig.LABELS_NOTE: "node-role.kubernetes.io/worker",
                                                nodeconfig.TAINTS_NOTE: ""}


def test_nodeconfig_phase_patches_through_the_api(tmp_path):
    raw = json.loads(PREDECESSOR.read_text())
    raw["clusters"][1]["nodes"][1]["labels"] = {"tier": "apps"}
    lab = model.parse(json.dumps(raw))
    world = World(lab, addresses_for(lab))
    ctx = world.converge(tmp_path)
    api = world.apis["dev"]
    assert NodeInfo.from_object(api.nodes_raw["dev-worker1"]).labels["tier"] == "apps"
    assert nodeconfig.phase.check(ctx, Target("dev")).done
    api.patches.clear()
    assert nodeconfig.phase.check(ctx, Target("dev")).done and not api.patches


# ---- kubeconfig files ----------------------------------------------------------------------------------------

def test_kubeconfig_merge_updates_one_cluster_and_removes_on_destroy(world, tmp_path):
    state = LabState(tmp_path / ".labctl")
    for name, ip in (("dev", "192.168.64.13"), ("prod", "192.168.64.17")):
        kubeconfig.write(state, name, kubeconfig.from_admin_conf(world.admin_conf(name), name, f"https://{ip}:6443"))
    kubeconfig.write(state, "dev", kubeconfig.from_admin_conf(world.admin_conf("dev"), "dev", "https://192.168.64.50:6443"))
    merged = yaml.safe_load(kubeconfig.merged_path(state).read_text())
    servers = {c["name"]: c["cluster"]["server"] for c in merged["clusters"]}
    assert servers == {"labctl-prod": "https://192.168.64.17:6443", "labctl-dev": "https://192.168.64.50:6443"}
    assert merged["current-context"] == "labctl-dev"
    assert stat.S_IMODE(kubeconfig.merged_path(state).stat().st_mode) == 0o600
    cfg = kubeconfig.read(state, "dev")
    assert kubeconfig.ca_pem(cfg) == world.ca["dev"]
    assert cfg["users"][0]["user"] == {"client-certificate-data": "Y2VydA==", "client-key-data": "a2V5"}

    kubeconfig.remove(state, "dev")
    merged = yaml.safe_load(kubeconfig.merged_path(state).read_text())
    assert [c["name"] for c in merged["contexts"]] == ["labctl-prod"] and merged["current-context"] == "labctl-prod"
    assert not kubeconfig.cluster_path(state, "dev").exists()
    kubeconfig.remove(state, "prod")
    assert not kubeconfig.merged_path(state).exists()


# ---- the Kube facade against the fake API server ---------------------------------------------------------------

@pytest.fixture
def api(tmp_path):
    server = FakeKube().start()
    path = tmp_path / "kubeconfig.yaml"
    path.write_text(yaml.safe_dump(server.kubeconfig("dev")))
    yield server, Kube("dev", path, request_timeout=5)
    server.stop()


def helm_secret(revision: int, status: str, version: str, values: dict) -> dict:
    body = json.dumps({"name": "cilium", "version": revision, "info": {"status": status},
                       "chart": {"metadata": {"name": "cilium", "version": version}}, "config": values})
    helm = base64.b64encode(gzip.compress(body.encode()))
    return {"metadata": {"name": f"sh.helm.release.v1.cilium.v{revision}",
                         "labels": {"owner": "helm", "name": "cilium", "version": str(revision), "status": status}},
            "type": "helm.sh/release.v1", "data": {"release": base64.b64encode(helm).decode()}}


def test_kube_facade_reads_nodes_workloads_and_helm_releases(api):
    server, kube = api
    store = server.store
    store.put("api/v1", "nodes", {"metadata": {"name": "n1", "labels": {"node-role.kubernetes.io/control-plane": ""}},
                                  "status": {"conditions": [{"type": "Ready", "status": "True"}],
                                             "addresses": [{"type": "InternalIP", "address": "192.168.64.10"}]}})
    store.put("apis/apps/v1", "daemonsets", {"metadata": {"name": "cilium", "generation": 2},
                                             "status": {"observedGeneration": 2, "desiredNumberScheduled": 2,
                                                        "numberReady": 1, "updatedNumberScheduled": 2}}, "kube-system")
    store.put("apis/cilium.io/v2", "ciliumnodes", {"metadata": {"name": "n1"}})
    for rev, status in ((1, "superseded"), (2, "deployed")):
        store.put("api/v1", "secrets", helm_secret(rev, status, "1.19.6", {"a": rev}), "kube-system")

    (node,) = kube.nodes()
    assert (node.name, node.ready, node.internal_ip, node.roles) == ("n1", True, "192.168.64.10", ("control-plane",))
    assert kube.node("nope") is None
    ds = kube.daemonset_ready("kube-system", "cilium")
    assert not ds and ds.found and ds.detail == "DaemonSet kube-system/cilium: 1/2 ready, 2 updated"
    assert not kube.deployment_ready("kube-system", "cilium-operator").found
    assert kube.ciliumnodes() == ["n1"]
    assert kube.helm_release("kube-system", "cilium") == HelmRelease("cilium", 2, "deployed", "1.19.6", {"a": 2})
    assert kube.helm_release("kube-system", "other") is None

    kube.label_node("n1", {"tier": "apps"})
    kube.cordon("n1")
    info = kube.node("n1")
    assert info.labels["tier"] == "apps" and info.unschedulable
    assert not kube.uncordon("n1").unschedulable
    assert ("PATCH", "/api/v1/nodes/n1") in store.requests
    assert kube.secret("kube-system", "sh.helm.release.v1.cilium.v1")["release"]
    assert kube.configmap("kube-system", "missing") is None


def test_kube_facade_errors_and_waits(api, tmp_path):
    server, kube = api
    server.fail = lambda method, path: 500 if path == "/api/v1/nodes" else None
    with pytest.raises(KubeError, match="answered 500") as err:
        kube.nodes()
    assert err.value.status == 500
    sleeps: list[float] = []
    calls = iter([(False, "1/2"), (False, "still 1/2"), (True, "2/2")])
    assert kube.wait_for("x", lambda: next(calls), timeout=60, interval=1, sleep=sleeps.append) == "2/2"
    assert sleeps == [1, 1]
    with pytest.raises(StepError, match="dev: y: not after 0 s: API said"):
        kube.wait_for("y", lambda: (_ for _ in ()).throw(KubeError("API said no")), timeout=0, sleep=sleeps.append)
    missing = Kube("dev", tmp_path / "absent.yaml")
    with pytest.raises(KubeError, match="no kubeconfig") as err:
        missing.nodes()
    assert "--from init" in err.value.hint


def test_kube_facade_follows_a_rewritten_kubeconfig(api, tmp_path):
    server, kube = api
    server.store.put("api/v1", "nodes", {"metadata": {"name": "old"}})
    assert [n.name for n in kube.nodes()] == ["old"]
    other = FakeKube().start()
    try:
        other.store.put("api/v1", "nodes", {"metadata": {"name": "new"}})
        kube.path.write_text(yaml.safe_dump(other.kubeconfig("dev")) + "\n# moved\n")
        assert [n.name for n in kube.nodes()] == ["new"]
    finally:
        other.stop()
    unreachable = tmp_path / "unreachable.yaml"
    unreachable.write_text(yaml.safe_dump({**server.kubeconfig("dev"), "clusters": [
        {"name": "dev", "cluster": {"server": "http://127.0.0.1:1"}}]}))
    with pytest.raises(KubeError, match="did not answer") as err:
        Kube("dev", unreachable, request_timeout=2).nodes()
    assert "labctl status" in err.value.hint


def test_readiness_rules():
    assert deployment_readiness({"metadata": {"generation": 1}, "spec": {"replicas": 2},
                                 "status": {"observedGeneration": 1, "updatedReplicas": 2, "availableReplicas": 2}},
                                "d").ready
    assert not deployment_readiness({"metadata": {"generation": 2}, "spec": {"replicas": 1},
                                     "status": {"observedGeneration": 1, "updatedReplicas": 1,
                                                "availableReplicas": 1}}, "d").ready
    assert daemonset_readiness({"status": {"desiredNumberScheduled": 3, "numberReady": 3,
                                           "updatedNumberScheduled": 3}}, "ds").ready
    assert not statefulset_readiness({"spec": {"replicas": 1}, "status": {"readyReplicas": 1, "currentRevision": "a",
                                                                          "updateRevision": "b"}}, "s").ready
    assert statefulset_readiness({"spec": {"replicas": 1}, "status": {"readyReplicas": 1, "currentRevision": "a",
                                                                      "updateRevision": "a"}}, "s").ready
    assert decode_helm_release(helm_secret(1, "deployed", "1", {})["data"]["release"])["info"]["status"] == "deployed"


def test_importing_the_phases_does_not_import_kubernetes():
    code = "import sys, phases.init, phases.join, phases.cni, phases.nodeconfig, labctl.kube.client; " \
           "sys.exit('kubernetes' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=False).returncode == 0


# ---- every cluster script: bash -n and shellcheck --------------------------------------------------------------

def all_cluster_scripts(tmp_path: Path) -> dict[str, str]:
    """Every cluster script as the phases render it: a fresh install, an HA join, a repair, Helm 4."""
    out: dict[str, str] = {}
    lab = predecessor()
    world = World(lab, addresses_for(lab))
    Engine(Ctx(world, tmp_path / "a"), parallel=4).run(build_steps(lab, PHASES))
    world.addresses["dev-master"] = "192.168.64.40"
    world.addresses["dev-worker1"] = "192.168.64.41"
    Engine(Ctx(world, tmp_path / "a"), parallel=4).run(build_steps(lab, PHASES))
    ha = ha_lab(helm="4.1.0")
    ha_world = World(ha, addresses_for(ha))
    Engine(Ctx(ha_world, tmp_path / "b"), parallel=4).run(build_steps(ha, PHASES))
    for w in (world, ha_world):
        for node, s, _ in w.runs:
            out.setdefault(f"{s.id}@{node}", s.text)
    return out


def stack_scripts() -> dict[str, str]:
    """The stacks phase's Helm scripts for every release of the shipped lab (Helm repositories, CRDs first)."""
    from labctl import stacks
    from labctl.render import script

    lab = model.load(SHIPPED)
    out = {}
    for cluster in lab.clusters:
        for name in stacks.installable(cluster):
            for r in stacks.resolve(lab, cluster, name, ROOT).releases:
                params = dict(cluster=cluster.name, stack=name, release=r.release, namespace=r.namespace,
                              helm_version="v3.20.2", timeout="10m")
                out[f"stacks.helm-install@{cluster.name}/{r.release}"] = script(
                    "stacks.helm-install", "cluster/stack-helm-install.sh.j2", **params, chart=r.chart,
                    chart_ref=r.chart_ref, repo_url=r.repo, repo_name=r.repo_name, oci=r.repo.startswith("oci://"),
                    version=r.version, values_path=f"/etc/labctl/stacks/{name}/{r.release}.yaml",
                    rollback_flag="--atomic", crds_path=r.crds or "").text
                out[f"stacks.helm-uninstall@{cluster.name}/{r.release}"] = script(
                    "stacks.helm-uninstall", "cluster/stack-helm-uninstall.sh.j2", **params).text
                for status in ("pending-install", "pending-upgrade"):
                    out[f"helm.recover@{cluster.name}/{r.release}/{status}"] = script(
                        "helm.recover", "cluster/helm-recover.sh.j2", **params, status=status,
                        uninstall=status == "pending-install").text
    return out


def test_every_cluster_script_passes_bash_n_and_shellcheck(tmp_path):
    from labctl import etcd
    from labctl.render import script

    ha = ha_lab().clusters[0]
    member = etcd.Member("ha-m1", "https://192.168.64.10:2380", "https://192.168.64.10:2379", id=0x8e9e05c52164694d)
    membership = {f"etcd.member-{action}": etcd.member_script(ha, action, member, etcd.peer_url("192.168.64.20")).text
                  for action in ("update", "remove", "add")}
    # the recovery when a majority of the masters moved (docs/ha.md): the forced member, and a master joining anew
    rejoin = script("repair.control-plane", "cluster/repair-control-plane.sh.j2", cluster="ha", node="ha-m2",
                    old="192.168.64.11", new="192.168.64.21", regenerate_certs=True, config_path="/etc/labctl/x.yaml",
                    all_kubeconfigs=False, rejoin=True, etcd_data=etcd.ETCD_DATA, etcd_manifest=etcd.ETCD_MANIFEST,
                    initial_cluster="ha-m1=https://192.168.64.20:2380,ha-m2=https://192.168.64.21:2380").text
    scripts = {**all_cluster_scripts(tmp_path), **stack_scripts(), "etcd.status": etcd.status_script().text,
               **membership, "etcd.force-new-cluster": etcd.force_script(ha, "ha-m1").text,
               "repair.control-plane@rejoin": rejoin}
    ids = {name.split("@")[0] for name in scripts}
    templates = sorted(p.name for p in (ROOT / "templates" / "cluster").glob("*.sh.j2"))
    balancer = {"endpoint.haproxy", "endpoint.haproxy-probe"}  # templates/node/haproxy.sh.j2 (HA workers)
    assert ids == {"endpoint.hosts", "init.kubeadm", "join.token", "join.upload-certs", "join.kubeadm",
                   "cni.helm-binary", "cni.helm-install", "repair.probe", "repair.node-ip", "repair.control-plane",
                   "stacks.helm-install", "stacks.helm-uninstall", "helm.recover", "etcd.status", *balancer,
                   *membership, "etcd.force-new-cluster"}
    # one template per script, but etcd.member-update/-remove/-add share templates/cluster/etcd-member.sh.j2
    assert len(templates) == len(ids - balancer) - 2
    check_bash_scripts(scripts, tmp_path)
