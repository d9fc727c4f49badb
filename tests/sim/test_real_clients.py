"""The real kubectl and helm against a lab labctl installed in the simulated lab.

One cluster (master + worker) with metrics-server, storage and a user manifests stack is installed through the CLI;
then the real clients (tests/realclients.py: kubectl v1.33, helm v4, linux x86_64) read it through the kubeconfig
labctl wrote, .labctl/kubeconfig/<cluster>.yaml, over TLS to the simulated API server:
- `kubectl top nodes` lists both nodes with usage and percentages: metrics.k8s.io is discovered and served behind
  its APIService once labctl approved the kubelet-serving CSRs;
- `kubectl get storageclass` shows local-path as (default); `kubectl get apiservice` shows v1beta1.metrics.k8s.io
  Available; `kubectl get csr` shows each node's kubelet-serving CSR Approved,Issued;
- `kubectl get deploy -n demo -o json` shows the demo Deployment applied by labctl (server-side apply manager);
- `helm list -A` (helm v4 reads the release Secrets through the API) shows the metrics-server release, chart
  metrics-server-3.13.1, deployed, and `helm get values` gives back the values labctl rendered: the simulated
  Helm writes its release Secrets in the format real Helm reads.
And for two clusters without stacks, with the containerd Ubuntu 24.04 installs (2.2, config version 3) and with 1.7
(config version 2): `kubectl get nodes -o wide` through each cluster's kubeconfig lists exactly its nodes, Ready,
with their roles, kubelet version, InternalIP, OS image, kernel and `containerd://<version>` (server-side printing
and discovery faithful enough for the real client); the API server takes the kubeconfig's client certificate as
its user, and refuses a certificate from another cluster's CA.
Skipped where the real clients are not installed (failed under CI=true).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from labctl import catalog, model, stacks
from tests.realclients import RealClients, real_clients
from tests.sim.test_sim_e2e import labctl, summary_of
from tests.sim.test_sim_stacks import open_sim, results

pytestmark = pytest.mark.sim

CLUSTER = "solo"
NODES = ("solo-master", "solo-worker1")
LAB = {"clusters": [{
    "name": CLUSTER, "pod_cidr": "10.10.0.0/16", "service_cidr": "10.96.0.0/16",
    "stacks": ["metrics-server", "storage", {"name": "demo", "manifests": "manifests/demo"}],
    "nodes": [{"name": "solo-master", "role": "master", "cpu": 2, "memory": 4096},
              {"name": "solo-worker1", "role": "worker", "cpu": 2, "memory": 4096}]}]}
DEMO = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: hello}
spec:
  selector: {matchLabels: {app: hello}}
  template:
    metadata: {labels: {app: hello}}
    spec:
      containers:
        - {name: hello, image: 'nginx:1.30.4-alpine'}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: hello-config}
data: {greeting: hi}
"""


def table(text: str) -> list[dict[str, str]]:
    """kubectl's/helm's column output as rows by header (columns are separated by two or more blanks or a tab)."""
    lines = [line for line in text.splitlines() if line.strip()]
    split = re.compile(r"\s*\t\s*|\s{2,}")
    header = split.split(lines[0].strip())
    return [dict(zip(header, split.split(line.strip()), strict=False)) for line in lines[1:]]


def test_real_kubectl_and_helm_read_the_installed_lab(lab_dir, fake_tart):
    clients = real_clients()
    demo = lab_dir / "manifests" / "demo"
    demo.mkdir(parents=True)
    (demo / "app.yaml").write_text(DEMO)
    with open_sim(lab_dir, fake_tart, LAB):
        result = labctl("--json", "install")
        assert result.code == 0, summary_of(result.out)["failed"]
        assert {s: v for s, v in results(result.out).items() if s.startswith("stacks:")} == {
            f"stacks:{CLUSTER}/metrics-server": "changed", f"stacks:{CLUSTER}/storage": "changed",
            f"stacks:{CLUSTER}/demo": "changed"}
        kubeconfig = lab_dir / ".labctl" / "kubeconfig" / f"{CLUSTER}.yaml"
        assert kubeconfig.is_file()
        home = lab_dir / "clients-home"  # kubectl's discovery cache and helm's folders: this test's own
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "HELM_"))}
        env.update(HOME=str(home), HELM_CACHE_HOME=str(home / "helm-cache"),
                   HELM_CONFIG_HOME=str(home / "helm-config"), HELM_DATA_HOME=str(home / "helm-data"))

        def run(tool: Path, *args: str) -> str:
            done = subprocess.run([str(tool), *args, "--kubeconfig", str(kubeconfig)], capture_output=True,
                                  text=True, timeout=60, env=env)
            assert done.returncode == 0, f"{tool.name} {' '.join(args)}: exit {done.returncode}\n{done.stderr}"
            return done.stdout

        def kubectl(*args: str) -> str:
            return run(clients.kubectl, "--cache-dir", str(home / "kube-cache"), *args)

        def helm(*args: str) -> str:
            return run(clients.helm, *args)

        # -- kubectl top nodes: both nodes, with usage and a percentage of their allocatable
        top = {row["NAME"]: row for row in table(kubectl("top", "nodes"))}
        assert sorted(top) == sorted(NODES), top
        for name, row in top.items():
            assert re.fullmatch(r"\d+m", row["CPU(cores)"]) and re.fullmatch(r"\d+Mi", row["MEMORY(bytes)"]), row
            assert re.fullmatch(r"\d+%", row["CPU(%)"]) and re.fullmatch(r"\d+%", row["MEMORY(%)"]), row

        # -- the storage stack's class is the default one
        classes = {row["NAME"]: row for row in table(kubectl("get", "storageclass"))}
        assert "local-path (default)" in classes, classes
        assert classes["local-path (default)"]["PROVISIONER"] == "rancher.io/local-path"
        assert len([n for n in classes if n.endswith("(default)")]) == 1

        # -- the demo stack's Deployment, applied server-side by labctl
        listed = json.loads(kubectl("get", "deploy", "-n", "demo", "-o", "json", "--show-managed-fields"))
        hello = {d["metadata"]["name"]: d for d in listed["items"]}["hello"]
        assert hello["kind"] == "Deployment" and hello["metadata"]["namespace"] == "demo"
        assert ("labctl", "Apply") in {(m["manager"], m["operation"]) for m in hello["metadata"]["managedFields"]}
        assert hello["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.30.4-alpine"

        # -- metrics-server's APIService is Available
        (service,) = table(kubectl("get", "apiservice", "v1beta1.metrics.k8s.io"))
        assert service["NAME"] == "v1beta1.metrics.k8s.io" and service["AVAILABLE"] == "True", service
        assert service["SERVICE"] == "kube-system/metrics-server"

        # -- every kubelet's serving CSR: approved (by labctl's hook) and issued
        serving = {row["REQUESTOR"]: row for row in table(kubectl("get", "csr"))
                   if row["SIGNERNAME"] == "kubernetes.io/kubelet-serving"}
        assert sorted(serving) == sorted(f"system:node:{n}" for n in NODES), serving
        assert {row["CONDITION"] for row in serving.values()} == {"Approved,Issued"}, serving

        # -- helm v4 reads the simulated Helm's release Secrets
        releases = {(r["namespace"], r["name"]): r for r in json.loads(helm("list", "-A", "-o", "json"))}
        metrics = releases[("kube-system", "metrics-server")]
        assert metrics["chart"] == "metrics-server-3.13.1" and metrics["status"] == "deployed", metrics
        assert str(metrics["revision"]) == "1"
        shown = {(row["NAMESPACE"], row["NAME"]): row for row in table(helm("list", "-A"))}
        assert shown[("kube-system", "metrics-server")]["STATUS"] == "deployed"
        assert shown[("kube-system", "metrics-server")]["CHART"] == "metrics-server-3.13.1"
        lab = model.parse(json.dumps(LAB), source="test lab")
        wanted = stacks.resolve(lab, lab.cluster(CLUSTER), "metrics-server", lab_dir).releases[0].values
        assert json.loads(helm("get", "values", "metrics-server", "-n", "kube-system", "-o", "json")) == wanted


TWO = {"clusters": [
    {"name": "alpha", "pod_cidr": "10.10.0.0/16", "service_cidr": "10.96.0.0/16",
     "nodes": [{"name": "alpha-master", "role": "master", "cpu": 2, "memory": 4096},
               {"name": "alpha-worker1", "role": "worker", "cpu": 2, "memory": 4096}]},
    {"name": "beta", "pod_cidr": "10.20.0.0/16", "service_cidr": "10.97.0.0/16", "cilium": {"cluster_id": 2},
     "nodes": [{"name": "beta-master", "role": "master", "cpu": 2, "memory": 4096}]}]}


def kubectl_run(clients: RealClients, home: Path, config: Path, *args: str) -> subprocess.CompletedProcess:
    """The real kubectl with `config` only (no KUBE* from the environment, its own cache under `home`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
    env["HOME"] = str(home)
    return subprocess.run([str(clients.kubectl), "--kubeconfig", str(config), "--cache-dir", str(home / "cache"),
                           "--request-timeout", "20s", *args], capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize("containerd, runtime", [("2.2", r"containerd://2\.2\.\d+"),
                                                  ("1.7", r"containerd://1\.7\.\d+")])
def test_real_kubectl_lists_the_nodes_through_labctls_kubeconfigs(lab_dir, fake_tart,
                                                                   containerd, runtime):
    clients = real_clients()
    with open_sim(lab_dir, fake_tart, TWO) as sim:
        sim.containerd = containerd  # what `apt-get install containerd` brings on every node
        result = labctl("--json", "install")
        assert result.code == 0, summary_of(result.out)["failed"]
        configs = {c: lab_dir / ".labctl" / "kubeconfig" / f"{c}.yaml" for c in ("alpha", "beta")}
        # labctl configured this containerd at its config version's paths (2: io.containerd.grpc.v1.cri,
        # 3: io.containerd.cri.v1.runtime / cri.v1.images), as the simulated containerd reads them
        runtimes = {name: node["containerd"] for name, node in sim.world()["nodes"].items()}
        assert all(r["running"] and r["systemd_cgroup"] is True and r["sandbox"] == "registry.k8s.io/pause:3.10.1"
                   and r["version"].startswith(containerd + ".") for r in runtimes.values()), runtimes

        for cluster, config in configs.items():
            done = kubectl_run(clients, lab_dir / "home", config, "get", "nodes", "-o", "wide")
            assert done.returncode == 0, f"kubectl get nodes -o wide ({cluster}): {done.stderr}"
            rows = {row["NAME"]: row for row in table(done.stdout)}
            members = [n["name"] for c in TWO["clusters"] if c["name"] == cluster for n in c["nodes"]]
            assert sorted(rows) == sorted(members), done.stdout
            for name, row in rows.items():
                assert row["STATUS"] == "Ready", row
                # kubeadm labels the control plane, labctl the workers (phases/nodeconfig.py)
                assert row["ROLES"] == ("control-plane" if name.endswith("-master") else "worker"), row
                assert row["VERSION"] == f"v{catalog.DEFAULT_KUBERNETES}", row
                assert row["INTERNAL-IP"] == sim.address(name) and row["EXTERNAL-IP"] == "<none>", row
                assert row["OS-IMAGE"] == "Ubuntu 24.04.3 LTS" and row["KERNEL-VERSION"].endswith("-generic"), row
                assert re.fullmatch(runtime, row["CONTAINER-RUNTIME"]), row

        # beta's admin credentials against alpha's API server: its CA never signed them
        alpha, beta = (yaml.safe_load(configs[c].read_text()) for c in ("alpha", "beta"))
        wrong = lab_dir / "wrong.yaml"
        wrong.write_text(yaml.safe_dump({**alpha, "users": [{**alpha["users"][0], "user": beta["users"][0]["user"]}]}))
        done = kubectl_run(clients, lab_dir / "home", wrong, "get", "nodes")
        assert done.returncode != 0 and "alpha-master" not in done.stdout, done.stdout
        assert "tls: unknown certificate authority" in done.stderr, done.stderr

