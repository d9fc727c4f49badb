"""kubeadm configs and Cilium values as the phases render them for the shipped lab: golden files, field by field
against reference/k8s-bootstrap.md §3 and §5, and the Node fields labctl owns through kubernetes-validate.

The lab is the predecessor's clusters.json (4 clusters, 10 nodes); addresses are inputs: 192.168.64.10 upwards in
node order. Regenerate the goldens after an intended change with
`UPDATE_GOLDEN=1 python -m pytest tests/unit/test_kubeadm_render.py` and review the diff.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest
import yaml

from labctl import model
from phases import cni, init, join, nodeconfig
from tests.conftest import PREDECESSOR, ROOT, assert_golden

GOLDEN = ROOT / "tests" / "golden"
TOKEN = "abcdef.0123456789abcdef"
CA_HASH = "sha256:" + "0123456789abcdef" * 4
CERT_KEY = "f" * 64

LAB = model.parse(PREDECESSOR.read_text(), str(PREDECESSOR))
ADDRESSES = {node.name: str(ipaddress.IPv4Address("192.168.64.10") + i) for i, (_, node) in enumerate(LAB.nodes)}


def renders() -> dict[str, str]:
    """golden path (relative to tests/golden) → rendered text, for every config of the shipped lab."""
    out = {}
    for cluster in LAB.clusters:
        master = cluster.masters[0]
        out[f"kubeadm/{cluster.name}-init.yaml"] = init.init_config(LAB, cluster, ADDRESSES[master.name])
        for node in cluster.nodes[1:]:
            address = ADDRESSES[node.name]
            out[f"kubeadm/{node.name}-join.yaml"] = join.join_config(cluster, node, address, TOKEN, CA_HASH)
        out[f"cilium/{cluster.name}-values.yaml"] = cni.cilium_values(LAB, cluster)
    return out


RENDERS = renders()


def docs(text: str) -> dict[str, dict]:
    return {d["kind"]: d for d in yaml.safe_load_all(text) if d}


def args(items: list[dict]) -> dict[str, str]:
    """v1beta4 extraArgs/kubeletExtraArgs: a list of {name, value} (never a map); → a dict for asserting."""
    assert isinstance(items, list) and all(set(i) == {"name", "value"} for i in items), items
    return {i["name"]: i["value"] for i in items}


def test_the_lab_is_the_shipped_one():
    assert [c.name for c in LAB.clusters] == ["platform", "dev", "staging", "prod"]
    assert len(LAB.nodes) == 10
    assert len(RENDERS) == 4 + 6 + 4  # init per cluster, join per non-first node, values per cluster


@pytest.mark.parametrize("name", sorted(RENDERS))
def test_golden(name):
    assert_golden(GOLDEN, name, RENDERS[name])


def test_no_stale_golden_files():
    on_disk = {str(p.relative_to(GOLDEN)) for p in GOLDEN.rglob("*.yaml") if p.parent.name in ("kubeadm", "cilium")}
    assert on_disk == set(RENDERS)


@pytest.mark.parametrize("cluster", LAB.clusters, ids=lambda c: c.name)
def test_init_config_fields(cluster):
    master = cluster.masters[0]
    address = ADDRESSES[master.name]
    d = docs(init.init_config(LAB, cluster, address))
    assert set(d) == {"InitConfiguration", "ClusterConfiguration", "KubeletConfiguration"}
    i, c, k = d["InitConfiguration"], d["ClusterConfiguration"], d["KubeletConfiguration"]
    assert i["apiVersion"] == c["apiVersion"] == "kubeadm.k8s.io/v1beta4"
    assert k["apiVersion"] == "kubelet.config.k8s.io/v1beta1"

    assert i["localAPIEndpoint"] == {"advertiseAddress": address, "bindPort": 6443}
    reg = i["nodeRegistration"]
    assert reg["name"] == master.name
    assert reg["criSocket"] == "unix:///var/run/containerd/containerd.sock"
    assert args(reg["kubeletExtraArgs"]) == {"node-ip": address}
    assert i["skipPhases"] == ["addon/kube-proxy"]
    assert "bootstrapTokens" not in i and "certificateKey" not in i  # no secrets in a file that stays on the node

    stable = f"{cluster.name}-api.labctl.internal"
    assert c["kubernetesVersion"] == f"v{LAB.versions.kubernetes}"
    assert c["clusterName"] == cluster.name
    assert c["controlPlaneEndpoint"] == f"{stable}:6443"
    assert c["networking"] == {"podSubnet": cluster.pod_cidr, "serviceSubnet": cluster.service_cidr,
                               "dnsDomain": "cluster.local"}
    assert c["apiServer"]["certSANs"] == [stable, address]
    assert args(c["controllerManager"]["extraArgs"]) == {"bind-address": "0.0.0.0"}
    assert args(c["scheduler"]["extraArgs"]) == {"bind-address": "0.0.0.0"}
    assert args(c["etcd"]["local"]["extraArgs"]) == {"listen-metrics-urls": "http://0.0.0.0:2381"}
    assert c["proxy"] == {"disabled": True}
    assert k["cgroupDriver"] == "systemd"


@pytest.mark.parametrize("node", [n for c in LAB.clusters for n in c.nodes[1:]], ids=lambda n: n.name)
def test_worker_join_config_fields(node):
    cluster, _ = next((c, n) for c, n in LAB.nodes if n is node)
    d = docs(join.join_config(cluster, node, ADDRESSES[node.name], TOKEN, CA_HASH))
    j = d["JoinConfiguration"]
    assert list(d) == ["JoinConfiguration"] and j["apiVersion"] == "kubeadm.k8s.io/v1beta4"
    assert j["discovery"] == {"bootstrapToken": {"apiServerEndpoint": f"{cluster.name}-api.labctl.internal:6443",
                                                 "token": TOKEN, "caCertHashes": [CA_HASH]}}
    reg = j["nodeRegistration"]
    assert reg["name"] == node.name
    assert reg["criSocket"] == "unix:///var/run/containerd/containerd.sock"
    assert args(reg["kubeletExtraArgs"]) == {"node-ip": ADDRESSES[node.name]}
    assert "controlPlane" not in j


def test_control_plane_join_config_fields():
    cluster = LAB.clusters[0]
    extra = model.Node(name="platform-master2", role="master", cpu=2, memory=4096)
    j = docs(join.join_config(cluster, extra, "192.168.64.40", TOKEN, CA_HASH, CERT_KEY))["JoinConfiguration"]
    assert j["controlPlane"] == {"localAPIEndpoint": {"advertiseAddress": "192.168.64.40", "bindPort": 6443},
                                 "certificateKey": CERT_KEY}
    assert args(j["nodeRegistration"]["kubeletExtraArgs"]) == {"node-ip": "192.168.64.40"}


@pytest.mark.parametrize("cluster", LAB.clusters, ids=lambda c: c.name)
def test_cilium_values_fields(cluster):
    v = yaml.safe_load(cni.cilium_values(LAB, cluster))
    assert v["kubeProxyReplacement"] == "true"  # the string: the chart's own default is the string "false"
    assert v["k8sServiceHost"] == f"{cluster.name}-api.labctl.internal"
    assert v["k8sServicePort"] == 6443
    assert v["ipam"] == {"mode": "cluster-pool", "operator": {"clusterPoolIPv4PodCIDRList": [cluster.pod_cidr],
                                                              "clusterPoolIPv4MaskSize": 24}}
    assert v["operator"] == {"replicas": 1 if len(cluster.nodes) < 3 else 2}
    assert v["cluster"] == {"name": cluster.name, "id": LAB.cluster_id(cluster)}
    assert v["hubble"] == {"enabled": True, "relay": {"enabled": True},
                           "ui": {"enabled": True, "service": {"type": "NodePort", "nodePort": 31235}}}
    assert "socketLB" not in v


def _variant(**cluster_overrides) -> tuple[model.Lab, model.Cluster]:
    raw = json.loads(PREDECESSOR.read_text())
    raw["clusters"][1].update(cluster_overrides)
    lab = model.parse(json.dumps(raw))
    return lab, lab.clusters[1]


def test_cilium_values_hubble_off_custom_port_and_istio():
    lab, cluster = _variant(cilium={"hubble": False, "cluster_id": 42}, stacks=["istio"])
    v = yaml.safe_load(cni.cilium_values(lab, cluster))
    assert v["hubble"] == {"enabled": False, "relay": {"enabled": False}, "ui": {"enabled": False}}
    assert v["cluster"]["id"] == 42
    assert v["socketLB"] == {"hostNamespaceOnly": True}
    lab, cluster = _variant(cilium={"hubble_ui_node_port": 30999})
    assert yaml.safe_load(cni.cilium_values(lab, cluster))["hubble"]["ui"]["service"]["nodePort"] == 30999


def test_cluster_ids_are_unique_and_in_range():
    ids = [LAB.cluster_id(c) for c in LAB.clusters]
    assert len(set(ids)) == len(ids) and all(1 <= i <= 255 for i in ids)


def test_node_fields_pass_kubernetes_validate():
    """The Node labels/taints nodeconfig applies, as a manifest, against the Kubernetes schema (strict)."""
    import kubernetes_validate

    raw = json.loads(PREDECESSOR.read_text())
    raw["clusters"][0]["nodes"][1].update(labels={"tier": "apps", "example.com/zone": "a"},
                                          taints=[{"key": "dedicated", "value": "ci", "effect": "NoSchedule"},
                                                  {"key": "spot", "effect": "PreferNoSchedule"}])
    lab = model.parse(json.dumps(raw))
    minor = ".".join(lab.versions.kubernetes.split(".")[:2])
    for _, node in lab.nodes:
        kubernetes_validate.validate(nodeconfig.node_object(node), f"{minor}.0", strict=True)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "x"},
                                      "spec": {"taints": [{"key": "a", "effect": 3}]}}, f"{minor}.0", strict=True)


@pytest.mark.parametrize("name", sorted(RENDERS))
def test_every_render_is_yaml_without_template_leftovers(name):
    text = RENDERS[name]
    assert "{{" not in text and "{%" not in text
    assert all(d is not None for d in yaml.safe_load_all(text))
    assert Path(name).suffix == ".yaml"
