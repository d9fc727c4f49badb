"""The node side of the scripts that make, change and repair a cluster (`ClusterScripts`, part of SimNode).

`kubeadm init` and `join` with their preflight checks, the join token and certificate key, Cilium's and the stacks'
Helm, and the repairs after an address change. They read the files labctl `put` (kubeadm configs, Helm values) as
YAML, so what labctl rendered is what the simulated kubeadm and Helm act on; what they do to the cluster itself is
SimCluster's (tests/sim/sim_cluster.py, sim_helm.py).
"""

from __future__ import annotations

import copy
import ipaddress
import random
from typing import TYPE_CHECKING

import yaml

from labctl.kube import hosts_address
from labctl.remote import facts as F
from tests.sim.sim_certificates import cluster_ca

if TYPE_CHECKING:
    from tests.sim.sim_node import SimNode


def _random_token() -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(random.choice(alphabet) for _ in range(6)) + "." + \
        "".join(random.choice(alphabet) for _ in range(16))


class ClusterScripts:
    """The cluster scripts of a SimNode (mixed into it: uses its `facts`, `files`, `lab`, `cluster` and the state
    kubeadm leaves: `node_ip`, `advertised`, `cert_sans`, `helm`, `serving_bootstrap`)."""

    def _preflight(self, kubernetes: str | None = None) -> list[str]:
        f = self.facts
        errors = []
        if not self.containerd_ok:
            errors.append("[ERROR CRI]: container runtime is not running or not using the systemd cgroup driver")
        if not self.kube_installed or (kubernetes and self.kube_installed != kubernetes):
            errors.append(f"[ERROR KubeadmVersion]: kubeadm {self.kube_installed or 'missing'}")
        if f["swap"]["devices"]:
            errors.append("[ERROR Swap]: running with swap on is not supported")
        if f["sysctl"].get("net.ipv4.ip_forward") != "1":
            errors.append("[ERROR FileContent--proc-sys-net-ipv4-ip_forward]: contents are not set to 1")
        if not f["modules"].get("br_netfilter"):
            errors.append("[ERROR SystemVerification]: br_netfilter is not loaded")
        return errors

    def _config_docs(self, path: str) -> dict[str, dict] | None:
        raw = self.files.get(path)
        return None if raw is None else {d["kind"]: d for d in yaml.safe_load_all(raw) if d}

    def _init_kubeadm(self, p, address):
        f = self.facts
        if f["files"].get(F.MANIFESTS[0]) and f["files"].get(F.ADMIN_CONF):
            return 0, "the control plane is already initialised; nothing to do"
        docs = self._config_docs(p["config_path"])
        if docs is None:
            return 1, f"open {p['config_path']}: no such file or directory"
        errors = self._preflight(docs["ClusterConfiguration"]["kubernetesVersion"].lstrip("v"))
        init, cc = docs["InitConfiguration"], docs["ClusterConfiguration"]
        advertise = init["localAPIEndpoint"]["advertiseAddress"]
        node_ip = _arg(init["nodeRegistration"].get("kubeletExtraArgs"), "node-ip")
        name = cc["controlPlaneEndpoint"].rsplit(":", 1)[0]
        if advertise != address or node_ip != address:
            errors.append(f"[ERROR]: advertiseAddress {advertise} / node-ip {node_ip}: not an address of this host")
        if hosts_address(self.text(F.HOSTS), name) != address:
            errors.append(f"[ERROR]: {name} does not resolve to this host: the API never answers at it")
        if errors:
            return 1, "[preflight] Some fatal errors occurred:\n\t" + "\n\t".join(errors)
        cluster = self.lab.clusters[self.cluster]
        cluster.ca = cluster.ca or cluster_ca(self.cluster)
        # kubeadm uploads the KubeletConfiguration (kubelet-config ConfigMap); every kubelet, this one first, runs
        # with it from its start (a node that joined before a change keeps its own)
        cluster.kubelet_config = copy.deepcopy(docs.get("KubeletConfiguration") or {})
        cluster.cluster_config = copy.deepcopy(cc)
        self.serving_bootstrap = cluster.kubelet_config.get("serverTLSBootstrap") is True
        self.advertised, self.node_ip = advertise, node_ip
        self.cert_sans = _apiserver_sans(self.name, advertise, cc)
        for path in (*F.KUBEADM_FILES,):
            if path != F.BOOTSTRAP_KUBELET_CONF:
                f["files"][path] = True
        f["kubelet"] = {**f["kubelet"], "active": "active", "started_at": self.lab.tick()}
        cluster.initialised(self)
        out = (f"[init] Using Kubernetes version: {cc['kubernetesVersion']}\n"
               "Your Kubernetes control-plane has initialized successfully!")
        # kubeadm init makes a 24 h bootstrap token and prints it in the join command, unless --skip-token-print
        # (https://kubernetes.io/docs/reference/setup-tools/kubeadm/kubeadm-init/)
        if not p.get("skip_token_print"):
            token = _random_token()
            cluster.tokens.add(token)
            out += f"\n\nkubeadm join {cc['controlPlaneEndpoint']} --token {token} \\\n\t--discovery-token-ca-cert-hash"
        return 0, out

    def _join_token(self, p, address):
        cluster = self.lab.clusters[self.cluster]
        if not f_exists(self, F.ADMIN_CONF):
            return 1, "failed to load admin kubeconfig: open /etc/kubernetes/admin.conf: no such file"
        # `kubeadm token create [token]` stores the given token (or makes one) and prints it on its last line
        token = p.get("token") or _random_token()
        cluster.tokens.add(token)
        return 0, f"W0101 00:00:00.000000    1234 common.go:1] sim: a warning kubeadm prints first\n{token}"

    def _join_upload_certs(self, p, address):
        if not f_exists(self, F.ADMIN_CONF):
            return 1, "failed to load admin kubeconfig"
        cluster = self.lab.clusters[self.cluster]
        cluster.certificate_keys[p["certificate_key"]] = cluster.now()
        return 0, "[upload-certs] Using certificate key:\n" + p["certificate_key"]

    def _join_kubeadm(self, p, address):
        f = self.facts
        if f["files"].get(F.KUBELET_CONF):
            return 0, "this node already joined a cluster; nothing to do"
        docs = self._config_docs(p["config_path"])
        if docs is None:
            return 1, f"open {p['config_path']}: no such file or directory"
        self.files.pop(p["config_path"], None)  # the script removes it (it holds the token) whatever happens
        join = docs["JoinConfiguration"]
        cluster = self.lab.clusters[self.cluster]
        discovery = join["discovery"]["bootstrapToken"]
        errors = self._preflight()
        host = discovery["apiServerEndpoint"].rsplit(":", 1)[0]
        if not cluster.route(self, hosts_address(self.text(F.HOSTS), host)):
            errors.append(f"[ERROR]: cannot reach the API server at {discovery['apiServerEndpoint']}")
        elif discovery["token"] not in cluster.tokens:
            errors.append("[ERROR]: the bootstrap token is unknown to the cluster")
        elif cluster.ca is None or cluster.ca.spki_hash() not in discovery.get("caCertHashes", []):
            errors.append("[ERROR]: cluster CA found in cluster-info does not match the given hash")
        node_ip = _arg(join["nodeRegistration"].get("kubeletExtraArgs"), "node-ip")
        if node_ip != address:
            errors.append(f"[ERROR]: node-ip {node_ip} is not an address of this host")
        control_plane = join.get("controlPlane")
        if control_plane is not None:
            errors += self._control_plane_join_errors(control_plane, address)
        if errors:
            return 1, "[preflight] Some fatal errors occurred:\n\t" + "\n\t".join(errors)
        self.node_ip = node_ip
        self.serving_bootstrap = cluster.kubelet_config.get("serverTLSBootstrap") is True
        for path in (F.KUBELET_CONF, F.KUBELET_CONFIG, F.KUBEADM_FLAGS, "/etc/kubernetes/pki/ca.crt"):
            f["files"][path] = True
        f["kubelet"] = {**f["kubelet"], "active": "active", "started_at": self.lab.tick()}
        cluster.bootstrap_client_csr(self, discovery["token"])
        if control_plane is not None:
            # kubeadm downloads the certificates (kubeadm-certs), writes this node's API server/etcd certificates
            # for its advertise address, the control-plane kubeconfigs and static pods, and adds its etcd member
            self.advertised = control_plane["localAPIEndpoint"]["advertiseAddress"]
            self.cert_sans = _apiserver_sans(self.name, self.advertised, cluster.cluster_config)
            for path in (F.ADMIN_CONF, *F.MANIFESTS):
                f["files"][path] = True
            cluster.control_plane_joined(self)
            return 0, "This node has joined the cluster and a new control plane instance was created"
        cluster.register(self)
        return 0, "This node has joined the cluster"

    def _control_plane_join_errors(self, control_plane: dict, address: str) -> list[str]:
        """kubeadm join --control-plane's own checks: the advertise address is this host's, the certificates
        uploaded under the given key are still there (2 h), and no member of this name exists in etcd yet."""
        cluster = self.lab.clusters[self.cluster]
        errors = []
        if self.role != "master":
            errors.append("[ERROR]: the simulated lab joins only nodes declared as masters as control planes")
        if control_plane.get("localAPIEndpoint", {}).get("advertiseAddress") != address:
            errors.append("[ERROR]: localAPIEndpoint.advertiseAddress is not an address of this host")
        if not cluster.certificate_key_valid(control_plane.get("certificateKey")):
            errors.append('error downloading certs: error downloading the secret: secrets "kubeadm-certs" not found '
                          "(the certificates are deleted 2 h after upload; upload them again with a new key)")
        if self.name in cluster.etcd.names():
            errors.append(f"[ERROR]: etcd already has a member named {self.name}")
        return errors

    def _cni_helm_binary(self, p, address):
        if self.helm == p["version"]:
            return 0, f"helm {p['version']} is already installed"
        self.helm = p["version"]
        return 0, f"installed helm {p['version']}"

    def _helm_fails(self, p, values: bool = True) -> tuple[int, str] | None:
        """How `helm` fails before it asks the cluster anything: not installed (at this version), no admin.conf, no
        values file (when it takes one). None: it gets that far."""
        if self.helm != p["helm_version"]:
            return 127, "helm: command not found"
        if not f_exists(self, F.ADMIN_CONF):
            return 1, "Error: Kubernetes cluster unreachable: no admin.conf"
        if values and self.files.get(p["values_path"]) is None:
            return 1, f"Error: open {p['values_path']}: no such file or directory"
        return None

    def _cni_helm_install(self, p, address):
        if failed := self._helm_fails(p):
            return failed
        cluster = self.lab.clusters[self.cluster]
        if not cluster.api_up():
            return 1, "Error: Kubernetes cluster unreachable"
        if refused := cluster.pending(p["namespace"], p["release"]):
            return 1, refused
        revision = cluster.helm_upgrade(p, yaml.safe_load(self.files[p["values_path"]]) or {})
        return 0, (f'Release "{p["release"]}" has been upgraded. Happy Helming!\nNAME: {p["release"]}\n'
                   f"NAMESPACE: {p['namespace']}\nSTATUS: deployed\nREVISION: {revision}")

    def _stacks_helm_install(self, p, address):
        """`helm upgrade --install --wait --create-namespace` of one stack release (SimCluster.helm_install)."""
        if failed := self._helm_fails(p):
            return failed
        try:
            values = yaml.safe_load(self.files[p["values_path"]]) or {}
        except yaml.YAMLError as exc:
            return 1, f"Error: failed to parse {p['values_path']}: error converting YAML to JSON: {exc}"
        cluster = self.lab.clusters[self.cluster]
        if not cluster.api_up():
            return 1, "Error: Kubernetes cluster unreachable"
        return cluster.helm_install(p, values)

    def _stacks_helm_uninstall(self, p, address):
        """`helm uninstall --wait`: exit 1 "release: not found" when it is not installed, like Helm."""
        if failed := self._helm_fails(p, values=False):
            return failed
        cluster = self.lab.clusters[self.cluster]
        if not cluster.api_up():
            return 1, "Error: Kubernetes cluster unreachable"
        return cluster.helm_uninstall(p["release"], p["namespace"], p.get("stack"))

    def _helm_recover(self, p, address):
        """labctl's way out of a pending release: `helm rollback`, or `helm uninstall` of an unfinished first
        install (script helm.recover)."""
        if failed := self._helm_fails(p, values=False):
            return failed
        cluster = self.lab.clusters[self.cluster]
        if not cluster.api_up():
            return 1, "Error: Kubernetes cluster unreachable"
        if p["uninstall"]:
            return cluster.helm_uninstall(p["release"], p["namespace"], None)
        return cluster.helm_rollback(p["release"], p["namespace"])

    def _repair_probe(self, p, address):
        lines = []
        if self.node_ip:
            lines.append(f"node_ip={self.node_ip}")
        if self.advertised:
            lines.append(f"advertised={self.advertised}")
            lines += [f"cert_ip={ip}" for ip in _ips(self.cert_sans)]
        endpoint = hosts_address(self.text(p["hosts_file"]), p["endpoint_host"])
        if endpoint:
            lines.append(f"endpoint_ip={endpoint}")
        return 0, "\n".join(lines)

    def _repair_node_ip(self, p, address):
        if self.node_ip == p["old"]:
            self.node_ip = p["new"]
        self.facts["kubelet"] = {**self.facts["kubelet"], "started_at": self.lab.tick()}
        return 0, ""

    def _repair_control_plane(self, p, address):
        if self.advertised is None:
            return 1, "no control plane on this node"
        docs = self._config_docs(p["config_path"])
        if docs is None:
            return 1, f"open {p['config_path']}: no such file or directory"
        if p["old"] and self.advertised == p["old"]:
            self.advertised = p["new"]  # the sed over the manifests
        if p["regenerate_certs"]:
            # kubeadm issues the certificate from the config labctl put: whatever address that config names
            init = docs["InitConfiguration"]
            self.cert_sans = _apiserver_sans(self.name, init["localAPIEndpoint"]["advertiseAddress"],
                                             docs["ClusterConfiguration"])
        if p.get("rejoin"):
            # the old member's data moved aside (kept: `etcd_aside`), etcd.yaml set to join the members there are
            if self.etcd_data is not None:
                self.etcd_aside.append(self.etcd_data)
                self.etcd_data = None
            self.etcd_join = p["initial_cluster"]
        self.facts["kubelet"] = {**self.facts["kubelet"], "started_at": self.lab.tick()}
        self.lab.clusters[self.cluster].sync()  # the kubelet restarts the API server with the new certificate
        return 0, "[certs] Generating \"apiserver\" certificate and key"


def f_exists(node: SimNode, path: str) -> bool:
    """Whether the node has the file at `path` (as its facts list the files labctl checks)."""
    return bool(node.facts["files"].get(path))


def _arg(args: list[dict] | None, name: str) -> str | None:
    """A v1beta4 list-form extra argument's value."""
    return next((a.get("value") for a in args or [] if a.get("name") == name), None)


def _apiserver_sans(node: str, advertise: str, cluster_config: dict) -> list[str]:
    """What `kubeadm init phase certs apiserver` puts in the certificate (reference §3)."""
    service = cluster_config.get("networking", {}).get("serviceSubnet", "10.96.0.0/12")
    first_service_ip = str(next(ipaddress.IPv4Network(service).hosts()))
    sans = [node, "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local",
            first_service_ip, advertise, cluster_config["controlPlaneEndpoint"].rsplit(":", 1)[0]]
    sans += cluster_config.get("apiServer", {}).get("certSANs") or []
    return list(dict.fromkeys(sans))


def _ips(sans: list[str]) -> list[str]:
    """The IPv4 addresses among a certificate's SANs."""
    out = []
    for san in sans:
        try:
            out.append(str(ipaddress.IPv4Address(san)))
        except ValueError:
            continue
    return out
