"""One simulated cluster (`SimCluster`): its control plane as the API shows it, fed from its SimNodes.

- The API servers (`SimApiServer`): one FakeKube per control plane (the first's from `kubeadm init`, each further
  one's from `kubeadm join --control-plane`) on its (loopback) address, port 6443, all serving the same objects
  (one Store: etcd), with TLS from the cluster CA made at `kubeadm init`; each certificate names its advertise
  address and the stable name `<cluster>-api.labctl.internal`. Stacked etcd (tests/sim/sim_etcd.py): an API server
  answers only while a majority of the etcd members runs.
  labctl reaches it only through the kubeconfig it writes from the
  admin.conf the node serves, whose client certificate (CN kubernetes-admin, O kubeadm:cluster-admins, from the same
  CA) is its user; another cluster's certificate is refused (tests/sim/fake_kube.py). A server whose control plane
  VM is off, hung, or at another address does not answer.
- The nodes reach the API by the stable name through their /etc/hosts line (`route`): to a master's address, or to
  127.0.0.1 — on a control plane its own API server, on a worker its local haproxy (tests/sim/sim_haproxy.py),
  which forwards to the servers its config lists whose API server answers.
- IP drift: after `new_ip_on_next_boot` the API server comes back on the new address with its OLD certificate (TLS
  verification fails) until `repair.control-plane` issues a new one from the init config labctl put.
- At every request (`refresh`) Node objects, Ready conditions, Cilium's workloads and CiliumNodes are derived from
  the simulated nodes, like a kubelet posting status, so a VM that stops shows up as NotReady/Unknown; then the
  kubelets' certificates (tests/sim/sim_certificates.py) and the generic controllers (sim_controllers.py) catch up.
  Helm's side of the cluster is tests/sim/sim_helm.py.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from labctl.kube import API_PORT, LOCAL_API, endpoint_host
from tests.sim.fake_kube import ApiHandler, FakeKube
from tests.sim.fake_tart import read_json, read_json_settled
from tests.sim.kube_certs import CertificateAuthority, admin_client_certificate
from tests.sim.kube_requests import write_object
from tests.sim.kube_resources import APPS
from tests.sim.kube_store import Store
from tests.sim.sim_certificates import KubeletCertificates, b64
from tests.sim.sim_controllers import KUBE_SYSTEM, Controllers, deployment_object
from tests.sim.sim_etcd import SimEtcd
from tests.sim.sim_helm import SimHelm
from tests.sim.sim_node import SimNode, containerd_version

if TYPE_CHECKING:
    from tests.sim.sim_lab import SimLab

NOT_READY_TAINT = "node.kubernetes.io/not-ready"
UNREACHABLE_TAINT = "node.kubernetes.io/unreachable"
CNI_NOT_READY = ("container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady "
                 "message:Network plugin returns error: cni plugin not initialized")


class _SimHandler(ApiHandler):
    """FakeKube's handler, plus what a real API server in front of real kubelets does.

    Before each request the cluster's live objects are brought up to date from the simulated nodes (the kubelets
    post their status, the controllers reconcile: SimCluster.refresh). A server whose control plane VM is off,
    hung, or at another address by now does not answer (the connection drops). (A write naming a stale
    resourceVersion is a 409 Conflict in FakeKube itself; labctl's taint patch relies on that.)
    """

    kube: SimApiServer

    def _handle(self, method: str) -> None:
        arrived = time.monotonic_ns()
        cluster = self.kube.cluster
        if self.kube.node.hung.is_set():
            self.kube.node.swallow(self.connection)
        if not cluster.answers(self.kube):
            self._read_body()
            self.close_connection = True  # no response at all: to the client this is a dead host
            return
        cluster.refresh_since(arrived)
        return super()._handle(method)


class SimApiServer(FakeKube):
    """The API server of control plane `node` on `host`:6443 with a certificate from the cluster CA for `sans`."""

    def __init__(self, cluster: SimCluster, node: SimNode, host: str, sans: list[str], workdir: Path):
        super().__init__(host=host, port=API_PORT)  # plain HTTP first; the TLS below uses the cluster's own CA
        self.cluster, self.node = cluster, node
        self.sans = list(sans)
        self.store = cluster.store  # etcd: the objects survive restarts of the API server
        self.aggregated = {("metrics.k8s.io", "v1beta1"): cluster.metrics_api}  # metrics-server, behind its APIService
        self.server.RequestHandlerClass = type("Handler", (_SimHandler,), {"kube": self})
        cert, key = cluster.ca.issue("kube-apiserver", sans)
        self.serve_tls(workdir, "apiserver", cert, key, cluster.ca.cert_pem)
        # stop() waits for the serve loop to look at its flag: every 50 ms, not the default 500 (restarts on repair)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True, name=f"sim-api-{node.name}")


class SimCluster(KubeletCertificates, SimHelm, Controllers):
    """One cluster's control plane as the API shows it, fed from its SimNodes. Its kubelet certificates, Helm and
    generic controllers are the mixins' (sim_certificates.py, sim_helm.py, sim_controllers.py)."""

    def __init__(self, lab: SimLab, name: str, nodes: list[SimNode]):
        self.lab, self.name, self.nodes = lab, name, nodes
        self.masters = [n for n in nodes if n.role == "master"]
        self.master = self.masters[0]  # the first control plane: `kubeadm init` runs there
        self.lock = threading.RLock()
        self._refreshing = threading.Lock()
        self._fresh_as_of = 0  # time.monotonic_ns() when the newest finished refresh began
        # seconds a test moved this cluster's clock on (what expires with time: the uploaded certificates' 2 h)
        self.elapsed = 0.0
        self.reset()

    def reset(self) -> None:
        self.store = Store()
        self.ca: CertificateAuthority | None = None
        self.client_cert: tuple[bytes, bytes] | None = None
        self.servers: dict[str, SimApiServer] = {}  # control plane → its API server
        self.etcd = SimEtcd()
        self.etcd_log: list[tuple[str, int, int]] = []  # (event, members, members alive): `etcd_event`
        self.tokens: set[str] = set()
        # certificate key → when `upload-certs` stored the certificates under it (the kubeadm-certs Secret)
        self.certificate_keys: dict[str, float] = {}
        self.cilium: dict | None = None  # the values of the deployed release
        self.helm_revisions = 0  # how often Cilium's `helm upgrade --install` really ran
        self.inits = 0  # how often `kubeadm init` really ran
        self.kubelet_config: dict = {}  # the KubeletConfiguration of `kubeadm init`
        self.cluster_config: dict = {}
        self.csr_records: dict[str, tuple[str, str | None]] = {}  # CSR name → (node, address it asks for)
        self.operator_objects: dict[str, list[tuple[str, str, str, str]]] = {}  # stack → what its operator made
        self.kubelets: dict[str, bool] = {}  # node → its kubelet posts status (as of the last refresh)
        # (workload, node) → (boot, pod template, API address) of Cilium's host-network container there: the address
        # its copy of /etc/hosts gives the stable name, taken when the kubelet (re)started it (`_hosts_copy`)
        self.hosts_copies: dict[tuple[str, str], tuple[int, str, str | None]] = {}

    # -- the control plane ---------------------------------------------------------------------------------------
    @property
    def server(self) -> SimApiServer | None:
        """The first control plane's API server (the only one of a single-master cluster)."""
        return self.servers.get(self.master.name)

    def now(self) -> float:
        return time.time() + self.elapsed

    def certificate_key_valid(self, key: str | None) -> bool:
        """kubeadm deletes the uploaded certificates 2 h after `upload-certs` (reference/k8s-bootstrap.md §3)."""
        uploaded = self.certificate_keys.get(key or "")
        return uploaded is not None and self.now() - uploaded < 2 * 3600

    def _etcd_running(self) -> dict[str, str]:
        """member name → address now, for every control plane whose etcd static pod runs."""
        out = {}
        for master in self.masters:
            running, address, _ = master.vm_state()
            if running and address and master.advertised is not None and not master.hung.is_set() \
                    and master.static_pods_up() and (len(self.etcd.members) < 2 or master.advertised == address) \
                    and self._etcd_data_starts(master, address):
                # (with peers, a member whose etcd.yaml still names its old address cannot bind its listeners
                # there: it crash-loops until its files are repaired)
                out[master.name] = address
                self.etcd.publish(master.name, address)
        return out

    def _etcd_running_alone(self, master: SimNode) -> bool:
        """Whether `master`'s etcd starts when it needs no peers (--force-new-cluster): its files name its address
        now and its data dir holds a current member's data."""
        running, address, _ = master.vm_state()
        return bool(running and address and master.advertised == address and not master.hung.is_set()
                    and master.static_pods_up() and master.etcd_data is not None
                    and any(m.id == master.etcd_data for m in self.etcd.members))

    def _etcd_data_starts(self, master: SimNode, address: str) -> bool:
        """Whether etcd starts on `master`'s data dir (tests/sim/sim_etcd.py): the data of a current member does;
        that of a removed member does not ("the member has been permanently removed from the cluster"); an empty
        one joins as the added, unstarted member at its peer URL when etcd.yaml says
        --initial-cluster-state=existing with an --initial-cluster naming every member (else etcd exits: "member
        count is unequal" / no such member), which starts it (the kubelet keeps restarting etcd until it does)."""
        with self.lock:
            if master.etcd_data is not None:
                return any(m.id == master.etcd_data for m in self.etcd.members)
            peer = f"https://{address}:2380"
            added = next((m for m in self.etcd.members if not m.started and m.peer_url == peer), None)
            named = dict(item.split("=", 1) for item in (master.etcd_join or "").split(",") if "=" in item)
            want = {m.name: m.peer_url for m in self.etcd.members if m.started}
            if added is None or named.get(master.name) != peer or any(named.get(n) != u for n, u in want.items()):
                return False
            self.etcd.start(added.id)
            master.etcd_data, master.etcd_join = added.id, None
            return True

    def etcd_event(self, what: str) -> None:
        """Record the membership and how many members are alive right now (tests assert quorum at every step)."""
        running = self._etcd_running()
        self.etcd_log.append((what, len(self.etcd.members), sum(self.etcd.alive(m.name, running)
                                                                for m in self.etcd.members)))

    def api_up_on(self, master: SimNode) -> bool:
        """The API server of `master` runs and answers: its VM is up (not hung), kubeadm made a control plane there,
        after a boot the kubelet had `SimLab.api_start_seconds` to start the static pods, and etcd has quorum."""
        running, address, _ = master.vm_state()
        if not (running and address is not None and master.advertised is not None):
            return False
        if self.lab.api_start_seconds:
            booted = read_json_settled(self.lab.fake.home / "fake" / master.name / "run.json", {}).get("boot_time", 0)
            if time.time() < booted + self.lab.api_start_seconds:
                return False
        # etcd and the API server are static pods: not while a restore has their manifests aside (sim_backup.py)
        if master.hung.is_set() or not master.static_pods_up():
            return False
        running = self._etcd_running()  # it reads and writes through its own member (stacked etcd)
        return self.etcd.quorum(running) and self.etcd.alive(master.name, running)

    def api_up(self) -> bool:
        """The cluster's API answers on at least one control plane."""
        return any(self.api_up_on(m) for m in self.masters)

    def route(self, node: SimNode, ip: str | None, masters: dict[str, tuple[str | None, bool]] | None = None) -> bool:
        """Whether a connection from `node` to `ip`:6443 reaches an API server that answers: a master's address, or
        127.0.0.1 — the node's own API server on a control plane, its haproxy's live servers on a worker.
        `masters`: each master's (address, API answers) when the caller looked already (`refresh`, once for all)."""
        if ip is None:
            return False
        masters = masters if masters is not None else self._masters_now()
        if ip == LOCAL_API:
            if node.advertised is not None:
                return masters[node.name][1]
            targets = set(node.haproxy_backends(API_PORT))
        else:
            targets = {ip}
        return any(address in targets and up for address, up in masters.values())

    def _masters_now(self) -> dict[str, tuple[str | None, bool]]:
        """Each control plane's address now and whether its API server answers."""
        return {m.name: (m.vm_state()[1], self.api_up_on(m)) for m in self.masters}

    def endpoint_ok(self, node: SimNode) -> bool:
        """The node's hosts line gives the stable name the address labctl keeps there: 127.0.0.1 in an HA cluster,
        the first control plane's address otherwise."""
        # (a test may add masters later, or remove some, the first one too)
        present = [m for m in self.masters if self.lab.fake.exists(m.name)]
        want = LOCAL_API if len(present) > 1 else (present or [self.master])[0].vm_state()[1]
        return node.endpoint_ip() is not None and node.endpoint_ip() == want

    def answers(self, server: SimApiServer) -> bool:
        return (self.servers.get(server.node.name) is server and self.api_up_on(server.node)
                and server.node.vm_state()[1] == server.host)

    def sync(self) -> None:
        """Serve where each control plane is now: started on its address, moved when the address changed (keeping
        the old certificate until the repair), stopped when its VM is off."""
        observed = {m.name: m.observe() for m in self.masters}  # before the lock: observing takes the node's own
        with self.lock:
            for master in self.masters:
                running, address, _ = observed[master.name]
                want = master.advertised is not None and running and address is not None
                current = self.servers.get(master.name)
                if current is not None and (not want or current.host != address or current.sans != master.cert_sans):
                    del self.servers[master.name]
                    current.stop()
                if want and master.name not in self.servers:
                    suffix = "" if master is self.master else f"-{master.name}"
                    workdir = self.lab.workdir / f"{self.name}-api{suffix}"
                    self.servers[master.name] = SimApiServer(self, master, address, master.cert_sans, workdir).start()

    def initialised(self, master: SimNode) -> None:
        """What `kubeadm init` leaves in the API: the system namespaces (kube-apiserver makes them at its first
        start), kubeadm's ConfigMaps, the `kubernetes` and `kube-dns` Services, CoreDNS, the first Node."""
        with self.lock:
            self.inits += 1
            self.client_cert = admin_client_certificate(self.ca)
            store = self.store
            service_cidr = (self.cluster_config.get("networking") or {}).get("serviceSubnet", "10.96.0.0/12")
            store.service_cidr = service_cidr
            store.ensure_namespaces()
            hosts = ipaddress.ip_network(service_cidr)
            store.put("api/v1", "configmaps", {"metadata": {"name": "kubeadm-config"}, "data": {
                "ClusterConfiguration": yaml.safe_dump(self.cluster_config, sort_keys=False)}}, KUBE_SYSTEM)
            store.put("api/v1", "configmaps", {"metadata": {"name": "kubelet-config"}, "data": {
                "kubelet": yaml.safe_dump(self.kubelet_config, sort_keys=False)}}, KUBE_SYSTEM)
            for ns, name, ip, ports in (
                    ("default", "kubernetes", hosts[1], [{"name": "https", "port": 443, "targetPort": 6443}]),
                    (KUBE_SYSTEM, "kube-dns", hosts[10], [{"name": "dns", "port": 53, "protocol": "UDP"},
                                                          {"name": "dns-tcp", "port": 53}])):
                write_object(store, "api/v1", "services", {"metadata": {"name": name, "namespace": ns},
                                                           "spec": {"clusterIP": str(ip), "ports": ports}},
                             "kube-apiserver")
            store.put(APPS, "deployments", deployment_object("coredns", 2), KUBE_SYSTEM)
            master.etcd_data = self.etcd.add(master.name, master.advertised).id
            self.register(master)
        self.sync()

    def control_plane_joined(self, master: SimNode) -> None:
        """What `kubeadm join --control-plane` leaves: a new etcd member, the Node, and an API server of its own."""
        master.etcd_data = self.etcd.add(master.name, master.advertised).id
        self.register(master)
        self.sync()

    def admin_conf(self) -> bytes:
        cert, key = self.client_cert
        conf = {
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": self.name, "cluster": {"certificate-authority-data": b64(self.ca.cert_pem),
                                                         "server": f"https://{endpoint_host(self.name)}:{API_PORT}"}}],
            "contexts": [{"name": f"kubernetes-admin@{self.name}",
                          "context": {"cluster": self.name, "user": "kubernetes-admin"}}],
            "current-context": f"kubernetes-admin@{self.name}",
            "users": [{"name": "kubernetes-admin",
                       "user": {"client-certificate-data": b64(cert), "client-key-data": b64(key)}}],
            "preferences": {},
        }
        return yaml.safe_dump(conf, sort_keys=False).encode()

    def register(self, node: SimNode) -> None:
        """The kubelet's first status post: the Node object (kubeadm labels and taints the control plane), with the
        VM's CPUs and memory as capacity and, less the kubelet's default eviction threshold (memory.available
        100Mi), as allocatable (what `kubectl top nodes` divides by)."""
        labels = {"kubernetes.io/hostname": node.name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "arm64",
                  "beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": "arm64"}
        taints = []
        if node.role == "master":
            labels.update({"node-role.kubernetes.io/control-plane": "",
                           "node.kubernetes.io/exclude-from-external-load-balancers": ""})
            taints.append({"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"})
        obj = {"apiVersion": "v1", "kind": "Node",
               "metadata": {"name": node.name, "labels": labels,
                            "annotations": {"node.alpha.kubernetes.io/ttl": "0",
                                            "volumes.kubernetes.io/controller-managed-attach-detach": "true"}},
               "spec": {"taints": taints, "podCIDR": ""}, "status": {}}
        vm = read_json(self.lab.fake.vm_dir(node.name) / "config.json")
        if vm:
            memory_ki = vm["memorySize"] // 1024
            capacity = {"cpu": str(vm["cpuCount"]), "memory": f"{memory_ki}Ki", "pods": "110"}
            obj["status"] = {"capacity": capacity, "allocatable": {**capacity, "memory": f"{memory_ki - 102400}Ki"}}
        with self.store.lock:
            if self.store.get("api/v1", "nodes", node.name) is None:
                self.store.put("api/v1", "nodes", obj)

    # -- what the kubelets and controllers keep up to date ---------------------------------------------------
    def refresh_since(self, arrived: int) -> None:
        """`refresh`, unless one that began after `arrived` (time.monotonic_ns()) has finished: a request sees every
        change made before it arrived, and requests that arrive together share one refresh instead of each running
        its own (which made the sim, not labctl, the cost of a status that asks 100 questions at once)."""
        with self._refreshing:
            if self._fresh_as_of >= arrived:
                return
            began = time.monotonic_ns()
            self.refresh()
            self._fresh_as_of = began

    def refresh(self) -> None:
        """Bring Nodes, Cilium's workloads and CiliumNodes in line with the simulated nodes, as the kubelets and
        controllers would; then the generic controllers (workloads, jobs, PVCs, APIServices, per-namespace objects)
        and the kubelets' certificate requests. Everything is looked at first, then written under the store's lock
        (never both: a node's command may be waiting for that lock while holding its own)."""
        states = {n.name: n.observe() for n in self.nodes}
        masters = self._masters_now()  # once: every node's route below asks about the same masters
        api = any(up for _, up in masters.values())

        def kubelet_up(node: SimNode) -> bool:
            # It posts status when its VM runs, it joined, its --node-ip is its address, and it reaches the API by
            # the stable name (its /etc/hosts line leads to an API server that answers: `route`).
            # It does not run while swap is on (failSwapOn, reference/k8s-bootstrap.md §1).
            running, address, _ = states[node.name]
            return (running and api and not node.hung.is_set() and node.joined and node.node_ip == address
                    and not node.facts["swap"]["devices"]
                    and self.route(node, node.endpoint_ip(), masters))

        def reaches_api(workload: str, node: SimNode) -> bool:
            # Cilium reaches the API through k8sServiceHost: the stable name (via ITS copy of /etc/hosts) or an IP
            if self.cilium is None or not up[node.name]:
                return False
            host = self.cilium.get("k8sServiceHost", "")
            if host == endpoint_host(self.name):
                host = self._hosts_copy(workload, node, states[node.name][2])
            return self.route(node, host, masters)

        up = {n.name: kubelet_up(n) for n in self.nodes}
        agents = {n.name: reaches_api("cilium", n) for n in self.nodes}
        operators = {n.name: reaches_api("cilium-operator", n) for n in self.nodes}
        with self.store.lock:
            self.kubelets = dict(up)
            registered = [o for o in self.store.list("api/v1", "nodes") if o["metadata"]["name"] in up]
            for obj in registered:
                name = obj["metadata"]["name"]
                self._node_status(obj, self.lab.nodes[name], up[name], agents[name])
            names = [o["metadata"]["name"] for o in registered]
            if self.cilium is not None:
                for name in names:
                    if agents[name] and self.store.get("apis/cilium.io/v2", "ciliumnodes", name) is None:
                        self.store.put("apis/cilium.io/v2", "ciliumnodes",
                                       {"metadata": {"name": name}, "spec": {}, "status": {}})
                ready = sum(agents[n] for n in names)
                for name in ("cilium", "cilium-envoy"):
                    self._set_status("daemonsets", name, {"desiredNumberScheduled": len(names), "numberReady": ready,
                                                          "updatedNumberScheduled": len(names),
                                                          "numberAvailable": ready})
                self._scale("cilium-operator", sum(operators[n] for n in names))
                for name in ("hubble-relay", "hubble-ui"):
                    self._scale(name, sum(up[n] for n in names))
            self._scale("coredns", sum(agents[n] for n in names))
            if self.ca is not None:
                self._kubelet_certificates(up)
            if api:
                self._controllers(registered)

    def _node_status(self, obj: dict, node: SimNode, up: bool, ready: bool) -> None:
        old = copy.deepcopy(obj)
        if up:
            condition = ({"status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status"}
                         if ready else {"status": "False", "reason": "KubeletNotReady", "message": CNI_NOT_READY})
            status = obj.get("status") or {}
            status.update(addresses=[{"type": "InternalIP", "address": node.node_ip},
                                     {"type": "Hostname", "address": node.name}],
                          # the kubelet's NodeSystemInfo: the runtime as its CRI Version call names it, the OS and
                          # kernel of the guest (`kubectl get nodes -o wide` shows all four)
                          nodeInfo={"kubeletVersion": "v" + (node.kube_installed or "?"),
                                    "containerRuntimeVersion": "containerd://" + (
                                        containerd_version(node.facts["containerd"]) or "?"),
                                    "osImage": node.facts["os"]["pretty_name"], "kernelVersion": node.facts["kernel"],
                                    "operatingSystem": "linux", "architecture": "arm64"})
        else:  # the node controller's view once the kubelet stops posting
            condition = {"status": "Unknown", "reason": "NodeStatusUnknown",
                         "message": "Kubelet stopped posting node status."}
            status = obj.get("status") or {}
        status["conditions"] = [{"type": "Ready", **condition}]
        obj["status"] = status
        controller = {"True": None, "False": NOT_READY_TAINT, "Unknown": UNREACHABLE_TAINT}[condition["status"]]
        taints = [t for t in obj.get("spec", {}).get("taints") or [] if t["key"] not in (NOT_READY_TAINT,
                                                                                       UNREACHABLE_TAINT)]
        if controller:
            taints.append({"key": controller, "effect": "NoSchedule"})
        obj.setdefault("spec", {})["taints"] = taints
        if obj != old:
            self.store.put("api/v1", "nodes", obj)

    def _hosts_copy(self, workload: str, node: SimNode, boot: int) -> str | None:
        """The address the stable API name has in the /etc/hosts of `workload`'s container on `node` (asked only
        while the kubelet runs pods there). The kubelet writes a host-network container's /etc/hosts as a copy of
        the node's when it starts the container (kubelet_pods.go ensureHostsFile; kubernetes.io: "can be
        overwritten during Pod creation/restart") and never again while it runs. It starts a new container after a
        reboot and when the pod template changes (a rollout restart's annotation, a Helm upgrade); the liveness
        restarts of a container cut off from the API, minutes later for real, are not modelled."""
        obj = self.store.get(APPS, "daemonsets" if workload == "cilium" else "deployments", workload, KUBE_SYSTEM)
        template = json.dumps((obj or {}).get("spec", {}).get("template"), sort_keys=True)
        held = self.hosts_copies.get((workload, node.name))
        if held is None or held[:2] != (boot, template):
            held = self.hosts_copies[(workload, node.name)] = (boot, template, node.endpoint_ip())
        return held[2]

    def _set_status(self, plural: str, name: str, status: dict) -> None:
        obj = self.store.get(APPS, plural, name, KUBE_SYSTEM)
        if obj is not None:  # the controller has seen the newest spec (e.g. a rollout restart's template)
            status = {**status, "observedGeneration": obj["metadata"].get("generation", 1)}
        if obj is not None and {**obj["status"], **status} != obj["status"]:
            obj["status"] = {**obj["status"], **status}
            self.store.put(APPS, plural, obj, KUBE_SYSTEM)

    def _scale(self, name: str, nodes_up: int) -> None:
        obj = self.store.get(APPS, "deployments", name, KUBE_SYSTEM)
        if obj is not None:
            available = min(obj["spec"]["replicas"], nodes_up)
            self._set_status("deployments", name, {"availableReplicas": available, "readyReplicas": available,
                                                   "updatedReplicas": obj["spec"]["replicas"]})

    def stop(self) -> None:
        with self.lock:
            servers, self.servers = list(self.servers.values()), {}
        for server in servers:
            server.stop()
