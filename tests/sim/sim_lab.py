"""The simulated lab (DESIGN.md "three worlds", world 3): whole labctl flows without Tart, SSH, kubeadm or Helm.

What is real and what is simulated, and where (all in tests/sim/):
- VMs: the real TartProvider drives the fake `tart` (fake_tart.py) on PATH. `SimTartProvider` (sim_tart.py) only
  adds observation hooks (after a call it lets the simulated world catch up, e.g. move an API server to a VM's new
  address), the latency model, and the port of the node's simulated SSH server for `status`.
- Nodes: `SimNode` (sim_node.py, its cluster scripts in sim_cluster_scripts.py) holds a node's state and prints
  NodeFacts JSON from it (built from the fresh-clone fixture). `SimTransport` (sim_transport.py, the Transport
  protocol) answers each script BY ITS ID and reads its params — the shell text is never parsed. A node whose VM is
  not running (or that rebooted under an open connection) is an unreachable host: TransportError. Files labctl
  `put`s (kubeadm configs, Cilium values) are kept and read back as YAML, so what labctl rendered is what the
  simulated kubeadm/Helm act on.
- Clusters: `SimCluster` (sim_cluster.py) runs one FakeKube (fake_kube.py) per cluster on the first control plane's
  (loopback) address, port 6443, with TLS from a cluster CA made at `kubeadm init`; the certificate names the
  advertise address and the stable name `<cluster>-api.labctl.internal`. labctl reaches it only through the
  kubeconfig it writes from the admin.conf the node serves. Node objects, Ready conditions, Cilium workloads and
  CiliumNodes are derived from the simulated nodes at every request (like a kubelet posting status), so a VM that
  stops shows up as NotReady/Unknown.
- IP drift: after `new_ip_on_next_boot` the API server comes back on the new address with its OLD certificate
  (TLS verification fails) until `repair.control-plane` issues a new one from the init config labctl put.
- Controllers (sim_controllers.py, at every request): besides Cilium's own, every Deployment, StatefulSet,
  DaemonSet, Job gets a healthy controller's status while a Ready node can run its pods (taints, cordon); PVCs bind
  when their class exists; APIServices are Available when the workload behind their service is; every namespace
  gets its `default` ServiceAccount and `kube-root-ca.crt`.
- Kubelet certificates (sim_certificates.py): with `serverTLSBootstrap: true` in the KubeletConfiguration of the
  init config labctl put, each kubelet files a kubelet-serving CSR (a real PEM request for its name and InternalIP)
  once it posts status, and a new one when its address changed; the signer issues what was approved (the
  `approval` subresource), and the kubelet serves only its current CSR's certificate. Joining workers' client CSRs
  are approved and issued at once. metrics-server is Ready (hence its Deployment available, its APIService
  Available, metrics.k8s.io served) only while it can scrape at least one kubelet, as the real one (its readiness
  needs a successful scrape).
- Helm for stacks (sim_helm.py; `stacks.helm-install` / `stacks.helm-uninstall`): release records exactly as Helm
  stores them, the chart's CRDs and `ready` objects taken from labctl's catalogue (no chart is rendered), Helm's
  ownership check, `--wait` failing (and --atomic undoing the install) when a workload of the release would not
  get ready.

`SimLab` (this module) wires it into `labctl.lab.CONTEXT_OVERRIDES`; use it as a context manager. On it: failure
injection per script (`fail`), crash injection at the Nth script call (`crash_at`: Ctrl-C, or labctl dying there),
a latency model per script id and tart command (`latency`, for the benchmark), the record of every script call
(`calls`), test controls (`hang` a node, `approve_csrs`), `world()`, a normalised picture of the whole lab for
end-state assertions (its "stacks" section: Helm releases and object counts per cluster), and readers: `releases`,
`object_counts`, `csrs`, `serving_certificates`.
Speed: an install makes a few hundred tart calls, so the fake tart is served from a preloaded fork server
(`TartForkServer` in sim_tart.py; same code, same behaviour).
"""

from __future__ import annotations

import base64
import copy
import random
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labctl import golden
from labctl import lab as lab_module
from labctl import model as model_module
from labctl.context import lab_dir
from labctl.errors import TransportError
from labctl.kube.client import client_for
from labctl.providers.static import route
from labctl.remote import facts as F
from labctl.remote.base import Script
from labctl.state import LabState
from tests.sim.fake_tart import FakeTart
from tests.sim.kube_resources import APPS, CSR_PREFIX, CSRS
from tests.sim.kube_store import Store
from tests.sim.sim_certificates import KUBELET_SERVING
from tests.sim.sim_cluster import SimCluster
from tests.sim.sim_controllers import CILIUM_WORKLOADS, KUBE_SYSTEM
from tests.sim.sim_helm import decode_release
from tests.sim.sim_node import SimNode, containerd_runs_with, containerd_version
from tests.sim.sim_static import SimStaticProvider, StaticSimNode
from tests.sim.sim_tart import SimTartProvider, TartForkServer
from tests.sim.sim_transport import BannerServer, SimKilled, SimTransport


@dataclass
class Call:
    node: str
    script: str
    params: dict
    start: float


@dataclass
class Injected:
    script: str
    node: str | None
    rc: int
    output: str
    times: int | None  # None: every time


@dataclass
class Crash:
    at: int  # the Nth script call (1-based) of the lab, or of `script` when that is given
    mode: str  # "sigint": Ctrl-C reaches labctl's main thread; "kill": labctl dies there
    ran: bool  # "kill" only: whether the node still ran that command
    script: str | None = None
    seen: int = 0


def _copied(value: Any) -> Any:
    """A deep copy of a piece of simulated disk; a Store (etcd) without its lock, key material by reference."""
    if isinstance(value, Store):
        store = Store(value.service_cidr, value.node_ports)
        with value.lock:
            store.objects, store.version = copy.deepcopy(value.objects), value.version
            store._storage = dict(value._storage)
        return store
    try:
        return copy.deepcopy(value)
    except TypeError:  # keys and certificates (cryptography objects): never changed in place
        return value


def lease_prefix(rng: random.Random | None = None) -> str:
    """A loopback /24 of our own for the fake tart's leases: parallel tests must never share an address (each
    cluster's API server binds <master>:6443). Never 127.0.0.x (the host's) nor the fake's default 127.64.0."""
    rng = rng or random.SystemRandom()
    while True:
        a, b = rng.randrange(100, 255), rng.randrange(0, 256)
        if (a, b) != (64, 0):
            return f"127.{a}.{b}"


class SimLab:
    """The whole simulated world for one clusters.json and one fake tart home. Use as a context manager: it plugs
    itself into labctl.lab.CONTEXT_OVERRIDES on entry and stops every server on exit."""

    def __init__(self, config: Path, fake: FakeTart, latency: dict[str, float] | None = None):
        self.config = config
        self.fake = fake
        self.model = model_module.load(config)
        self.state = LabState(lab_dir(config) / ".labctl")
        self.workdir = fake.home.parent / "sim"
        self.latency: dict[str, float] = dict(latency or {})
        self.api_start_seconds = 0.0  # from a control plane VM's boot until its API server answers
        self.containerd = "2.2"  # the containerd `apt-get install` brings: a key of sim_node.CONTAINERD_PACKAGES
        self.calls: list[Call] = []
        self.unknown: list[str] = []
        self.rules: list[Injected] = []
        self.crash: Crash | None = None
        self.crashed_at: Call | None = None
        self.killed = False
        self._clock = int(time.time())
        self._lock = threading.RLock()
        self._banners: dict[tuple[str, str], BannerServer] = {}
        self.nodes: dict[str, SimNode] = {}
        self.build_nodes: dict[str, SimNode] = {}  # golden image build VMs (vm_node)
        self.clusters: dict[str, SimCluster] = {}
        for cluster in self.model.clusters:
            # a static node is an existing machine no fake tart made (sim_static.py)
            members = [(StaticSimNode if n.static else SimNode)(self, cluster.name, n.name, n.role)
                       for n in cluster.nodes]
            self.nodes.update({n.name: n for n in members})
            self.clusters[cluster.name] = SimCluster(self, cluster.name, members)
        # the lab's provider as Context routes it: static nodes' calls to their own (labctl/providers/static.py)
        self.provider = route(self.model, SimTartProvider(self.model, self.state, self),
                              SimStaticProvider(self.model, self))
        # The guest disks of VMs that are no lab node (snapshot VMs): what a copy of a node's VM carries (vm_cloned)
        self.disks: dict[str, dict[str, Any]] = {}
        self._saved: dict[str, Any] | None = None
        self._entered = False
        self._tart_server = TartForkServer(fake)

    # -- wiring ----------------------------------------------------------------------------------------------------
    def overrides(self) -> dict[str, Any]:
        return {"provider": self.provider, "transport_factory": self.transport_for, "kube_factory": self.kube_for}

    def __enter__(self):
        # entered twice (a helper enters it, then the test's `with`): what to restore is what was there before the
        # first, else the exit would leave this lab's overrides behind for the next test in the process
        if not self._entered:
            self._saved, self._entered = dict(lab_module.CONTEXT_OVERRIDES), True
        lab_module.CONTEXT_OVERRIDES.clear()
        lab_module.CONTEXT_OVERRIDES.update(self.overrides())
        return self

    def __exit__(self, *exc) -> None:
        lab_module.CONTEXT_OVERRIDES.clear()
        lab_module.CONTEXT_OVERRIDES.update(self._saved or {})
        self._entered = False
        for cluster in self.clusters.values():
            cluster.stop()
        for node in [*self.nodes.values(), *self.build_nodes.values()]:
            node.unhung.set()
        for banner in self._banners.values():
            banner.shutdown()
            banner.server_close()
        self._tart_server.stop()

    def transport_for(self, ctx, node) -> SimTransport:
        """Like labctl.remote.ssh.transport_for: the address comes from the provider (waiting for the lease)."""
        if self.killed:
            raise SimKilled(node.name)
        sim = self.vm_node(node.name)
        running, _, _ = sim.observe()
        if not running:
            raise TransportError(node.name, "no route to host (the VM is not running)",
                                 hint="`labctl boot` starts it")
        host, _ = ctx.provider.ssh_address(node, ctx.address(node))
        running, address, boot = sim.observe()
        if not running or address != host:
            raise TransportError(node.name, f"cannot connect to {host}:22")
        return SimTransport(self, sim, ctx.state, host, boot)

    def kube_for(self, ctx, cluster):
        """labctl's own Kube facade (client_for), guarded so that a "killed" labctl asks the API nothing more."""
        kube = client_for(ctx, cluster)
        call = kube._call

        def guarded(*args, **kwargs):
            if self.killed:
                raise SimKilled(cluster.name)
            return call(*args, **kwargs)

        kube._call = guarded
        return kube

    def vm_node(self, name: str) -> SimNode:
        """The guest of the VM `name`: a lab node's, or the build VM's of `labctl image build` (labctl/golden.py),
        made on first use (it belongs to no cluster, so world() and the API servers never see it)."""
        if name in self.nodes:
            return self.nodes[name]
        if not name.startswith(golden.BUILD_PREFIX):
            raise KeyError(name)
        with self._lock:
            if name not in self.build_nodes:
                self.build_nodes[name] = SimNode(self, golden.BUILD_CLUSTER, name, "master")
            return self.build_nodes[name]

    def guest_disk(self, name: str) -> dict[str, Any]:
        """The disk of a build VM's guest (vm_node), in the form `vm_cloned` copies (a node's part only: it has no
        cluster)."""
        node = self.build_nodes[name]
        with node.state_lock:
            return {"node": {k: copy.deepcopy(v) for k, v in vars(node).items() if k not in self._NOT_DISK}}

    def sync(self) -> None:
        for cluster in self.clusters.values():
            cluster.sync()

    def ssh_port(self, node: str, address: str) -> int:
        with self._lock:
            key = (node, address)
            if key not in self._banners:
                self._banners[key] = BannerServer(self.vm_node(node), address)
            return self._banners[key].server_address[1]

    def tick(self) -> int:
        """Strictly increasing epoch seconds for service start and file times (stale-config checks compare them)."""
        with self._lock:
            self._clock += 1
            return self._clock

    # -- injection and the record --------------------------------------------------------------------------------
    def fail(self, script: str, node: str | None = None, rc: int = 1, output: str = "", times: int | None = None):
        """Make `script` (on `node`, or anywhere) exit `rc` with `output` instead of running."""
        self.rules.append(Injected(script, node, rc, output or f"sim: injected failure of {script}", times))

    def clear_failures(self) -> None:
        self.rules.clear()

    def injected(self, node: str, script: str) -> Injected | None:
        with self._lock:
            for rule in self.rules:
                if rule.script == script and rule.node in (None, node) and rule.times != 0:
                    if rule.times is not None:
                        rule.times -= 1
                    return rule
        return None

    def crash_at(self, n: int, mode: str, ran: bool = True, script: str | None = None) -> None:
        """Crash at the `n`th script call (of `script` only, when given). "kill": labctl dies right there, and
        `ran` says whether the node still ran that command; "sigint": Ctrl-C, the command itself goes on."""
        assert mode in ("sigint", "kill")
        self.crash = Crash(n, mode, ran, script)

    def revive(self) -> None:
        """labctl "runs again" after a kill."""
        self.crash, self.killed = None, False

    def before_script(self, node: SimNode, script: Script) -> bool | None:
        """Record the call, apply its latency; at the crash point return whether the node runs it (kill) — None
        everywhere else."""
        with self._lock:
            if self.killed:
                raise SimKilled(node.name)
            self.calls.append(Call(node.name, script.id, dict(script.params), time.monotonic()))
            crash = None
            if self.crash and self.crash.script in (None, script.id):
                self.crash.seen += 1
                crash = self.crash if self.crash.seen == self.crash.at else None
                if crash:
                    self.crashed_at = self.calls[-1]
            if crash and crash.mode == "kill":
                self.killed = True
        self._sleep(self.cost(script))
        if crash is None:
            return None
        if crash.mode == "sigint":
            # Ctrl-C: the signal lands in the main thread (the engine's scheduler); this command goes on.
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            return None
        return crash.ran

    def before_io(self, node: SimNode, what: str) -> None:
        if self.killed:
            raise SimKilled(node.name)
        self._sleep(self.latency.get(what.split(" ", 1)[0], 0.0))

    def before_tart(self, args: list[str]) -> None:
        if self.killed:
            raise SimKilled("tart")
        self._sleep(self.latency.get(f"tart:{args[0]}", 0.0))

    def cost(self, script: Script) -> float:
        """The modelled duration: per script id, plus per action for scripts that carry `actions`."""
        actions = script.params.get("actions") or []
        return self.latency.get(script.id, 0.0) + sum(self.latency.get(f"{script.id}:{a}", 0.0) for a in actions)

    @staticmethod
    def _sleep(seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)  # the latency model: a stand-in for work that takes this long on a real node

    def script_ids(self, since: int = 0) -> list[str]:
        return [c.script for c in self.calls[since:]]

    def mark(self) -> int:
        return len(self.calls)

    # -- test controls ---------------------------------------------------------------------------------------------
    def hang(self, node: str) -> None:
        """The guest hangs: SSH connects but never answers, its kubelet stops posting status."""
        sim = self.nodes[node]
        sim.unhung.clear()
        with sim.state_lock:
            sim.unanswered = sim.late = 0
            sim._abandoned = False
        sim.hung.set()

    def vm_deleted(self, node: str) -> None:
        """A node's VM is gone with its disk. The cluster (its CA and etcd) goes with the last control plane's: in
        an HA cluster each master holds a copy (its etcd member, the CA files kubeadm copied there), so deleting one
        costs that member only (and its API server)."""
        sim = self.nodes[node]
        cluster = self.clusters[sim.cluster]
        others = [m for m in cluster.masters if m is not sim and m.advertised is not None and not m.gone
                  and self.fake.exists(m.name)]
        sim.forget_vm()
        if sim.role == "master" and sim.advertised is not None:
            cluster.etcd_event(f"{node} VM deleted")
        if cluster.master.name == node and not others:
            cluster.stop()
            cluster.reset()

    def lose_vm(self, node: str) -> None:
        """The user deletes a node's VM behind labctl's back (`tart stop` + `tart delete`)."""
        self.fake.tart("stop", node)
        self.fake.tart("delete", node)
        self.vm_deleted(node)
        self.sync()

    # The attributes of a SimNode / SimCluster that are not on the guest's disk: the simulation's own plumbing and
    # what lives only while the VM runs. Everything else of a node is its disk; a first control plane's disk also
    # holds its cluster (etcd, the CA and kubeadm's configs, Helm's releases as Secrets).
    _NOT_DISK = frozenset({"lab", "cluster", "name", "role", "lock", "state_lock", "hung", "unhung", "image", "apt",
                           "unanswered", "late", "_abandoned", "seen_boot", "gone", "static_pods",
                           "restart_countdown"})
    _NOT_ETCD = frozenset({"lab", "name", "nodes", "master", "masters", "lock", "server", "servers", "kubelets"})

    def _disk_of(self, name: str) -> dict[str, Any]:
        """A copy of the guest disk of VM `name` (a node's, or a snapshot VM's), as a stopped VM has it."""
        if name not in self.nodes:
            return {part: {k: _copied(v) for k, v in values.items()} for part, values in self.disks[name].items()}
        node = self.nodes[name]
        self.sync()
        with node.state_lock:
            disk: dict[str, Any] = {"node": {k: copy.deepcopy(v) for k, v in vars(node).items()
                                             if k not in self._NOT_DISK}}
        cluster = self.clusters[node.cluster]
        if cluster.master is node:
            with cluster.lock:
                disk["cluster"] = {k: _copied(v) for k, v in vars(cluster).items() if k not in self._NOT_ETCD}
        return disk

    def vm_cloned(self, source: str, target: str) -> None:
        """`tart clone SOURCE TARGET` of a stopped VM copied its disk: the target's guest is the source's as it was
        (a node's restored from a snapshot VM boots with the files, packages and, on a first control plane, the etcd
        the node had when the snapshot was taken)."""
        disk = self._disk_of(source)
        if target not in self.nodes:
            self.disks[target] = disk
            return
        node = self.nodes[target]
        with node.state_lock:
            node.fresh()
            for key, value in disk["node"].items():
                setattr(node, key, value)
            node.gone = False
            node.seen_boot = 0  # its first boot is a reboot of that disk: runtime state starts from the files
        cluster = self.clusters[node.cluster]
        if cluster.master is node and "cluster" in disk:
            cluster.stop()
            with cluster.lock:
                for key, value in disk["cluster"].items():
                    setattr(cluster, key, _copied(value))

    def unhang(self, node: str) -> None:
        self.nodes[node].hung.clear()
        self.nodes[node].unhung.set()

    def address(self, node: str) -> str | None:
        return self.nodes[node].observe()[1]

    # -- what the world looks like (for end-state assertions) ----------------------------------------------------
    def world(self) -> dict[str, Any]:
        """A normalised picture of the lab: addresses and random ids replaced by what they should be equal to."""
        out: dict[str, Any] = {"vms": {}, "nodes": {}, "clusters": {}, "stacks": {}}
        machine_ids = [n.facts["machine_id"] for n in self.nodes.values()]
        for name, node in self.nodes.items():
            running, address, _ = node.observe()
            exists = getattr(node, "static", False) or self.fake.exists(name)  # a static machine always is
            out["vms"][name] = "running" if running else ("stopped" if exists else "absent")
            if not exists:
                continue
            f = node.facts
            ctd = f["containerd"]
            effective = containerd_runs_with(ctd) or {}
            master = self.clusters[node.cluster].master
            out["nodes"][name] = {
                "hostname": f["hostname"],
                "machine_id_unique": machine_ids.count(f["machine_id"]) == 1,
                "swap": f["swap"]["devices"],
                "modules": sorted(m for m, on in f["modules"].items() if on),
                "modules_persisted": node._conf_lines(F.MODULES_CONF),
                "sysctl": {k: v for k, v in f["sysctl"].items()},
                "sysctl_persisted": node._conf_values(F.SYSCTL_CONF),
                "containerd": {"version": containerd_version(ctd), "running": ctd["service"]["active"] == "active",
                               "systemd_cgroup": effective.get("systemd_cgroup"),
                               "sandbox": effective.get("sandbox")},
                "crictl": node.text(F.CRICTL_YAML),
                "packages": {k: (v["version"], v["status"]) for k, v in f["packages"].items()
                             if k in F.KUBE_PACKAGES},
                "kubelet": (f["kubelet"]["active"], f["kubelet"]["enabled"]),
                "joined": node.joined,
                "control_plane": node.advertised is not None,
                "node_ip_current": node.node_ip is not None and node.node_ip == address,
                # (the name is older than HA: in an HA cluster the endpoint labctl keeps is 127.0.0.1)
                "endpoint_is_master": self.clusters[node.cluster].endpoint_ok(node),
                "helm": node.helm,
            }
        for name, cluster in self.clusters.items():
            cluster.refresh()
            store = cluster.store
            nodes = {}
            for obj in store.list("api/v1", "nodes"):
                meta = obj["metadata"]
                ready = next((c["status"] for c in obj["status"].get("conditions", []) if c["type"] == "Ready"), None)
                internal = next((a["address"] for a in obj["status"].get("addresses", [])
                                 if a["type"] == "InternalIP"), None)
                nodes[meta["name"]] = {
                    "ready": ready,
                    "internal_ip_current": internal == self.nodes[meta["name"]].observe()[1],
                    "labels": {k: v for k, v in meta.get("labels", {}).items()
                               if not k.startswith(("kubernetes.io/", "beta.kubernetes.io/"))},
                    "taints": sorted(f"{t['key']}:{t['effect']}" for t in obj["spec"].get("taints") or []),
                    "unschedulable": bool(obj["spec"].get("unschedulable")),
                }
            workloads = {}
            for plural in ("daemonsets", "deployments"):
                for obj in store.list(APPS, plural, KUBE_SYSTEM):
                    if obj["metadata"]["name"] not in CILIUM_WORKLOADS:
                        continue  # the stacks' own are in out["stacks"]
                    s = obj["status"]
                    if plural == "daemonsets":
                        ok = s["numberReady"] == s["desiredNumberScheduled"] > 0
                    else:
                        ok = s.get("availableReplicas") == obj["spec"]["replicas"]
                    workloads[obj["metadata"]["name"]] = ok
            out["clusters"][name] = {
                "api": "up" if cluster.api_up() else "down",
                "nodes": nodes,
                "workloads": workloads,
                "ciliumnodes": sorted(o["metadata"]["name"] for o in store.list("apis/cilium.io/v2", "ciliumnodes")
                                      ) if store.resource("apis/cilium.io/v2", "ciliumnodes") else [],
                "helm_revisions": len(cluster._release_secrets(KUBE_SYSTEM, "cilium")),
                "cilium_service_host": (cluster.cilium or {}).get("k8sServiceHost"),
            }
            # a section of its own, so that comparisons of out["clusters"] are not changed by the stacks
            out["stacks"][name] = {"releases": self.releases(name), "objects": self.object_counts(name)}
        return out

    # -- stacks: what Helm and the API hold ------------------------------------------------------------------
    def releases(self, cluster: str) -> dict[str, dict]:
        """Every Helm release of the cluster: "namespace/name" → its newest revision's chart, version, revision and
        status (as `helm list -A` shows them), read from Helm's own storage."""
        store = self.clusters[cluster].store
        newest: dict[str, dict] = {}
        for secret in store.list("api/v1", "secrets"):
            labels = secret["metadata"].get("labels") or {}
            if secret.get("type") != "helm.sh/release.v1" or labels.get("owner") != "helm":
                continue
            key = f"{secret['metadata']['namespace']}/{labels.get('name')}"
            if key not in newest or int(labels.get("version", 0)) > int(newest[key]["metadata"]["labels"]["version"]):
                newest[key] = secret
        out = {}
        for key, secret in sorted(newest.items()):
            record = decode_release(secret)
            out[key] = {"chart": record["chart"]["metadata"]["name"], "version": record["chart"]["metadata"]["version"],
                        "revision": record["version"], "status": record["info"]["status"]}
        return out

    def object_counts(self, cluster: str) -> dict[str, int]:
        """How many objects of each kind the cluster's API holds."""
        counts: dict[str, int] = {}
        store = self.clusters[cluster].store
        with store.lock:
            for obj in store.objects.values():
                counts[obj.get("kind", "?")] = counts.get(obj.get("kind", "?"), 0) + 1
        return dict(sorted(counts.items()))

    def csrs(self, cluster: str) -> list[dict]:
        """The cluster's CertificateSigningRequests, oldest first, as `kubectl get csr` sums them up: name, signer,
        requestor, node (from the subject), the names the request asks for, condition, issued."""
        from cryptography import x509

        out = []
        store = self.clusters[cluster].store
        for csr in sorted(store.list(CSR_PREFIX, CSRS), key=lambda c: int(c["metadata"]["resourceVersion"])):
            spec, status = csr.get("spec") or {}, csr.get("status") or {}
            request = x509.load_pem_x509_csr(base64.b64decode(spec["request"]))
            try:
                alt = request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                sans = [*alt.get_values_for_type(x509.DNSName), *map(str, alt.get_values_for_type(x509.IPAddress))]
            except x509.ExtensionNotFound:
                sans = []
            conditions = [c["type"] for c in status.get("conditions") or [] if c.get("status") == "True"]
            out.append({"name": csr["metadata"]["name"], "signer": spec.get("signerName"),
                        "username": spec.get("username"),
                        "node": request.subject.rfc4514_string().split("CN=system:node:", 1)[-1].split(",")[0],
                        "sans": sans, "condition": ",".join(conditions) or "Pending",
                        "issued": bool(status.get("certificate"))})
        return out

    def approve_csrs(self, cluster: str, signer: str = KUBELET_SERVING) -> list[str]:
        """An admin's `kubectl certificate approve` of every pending CSR of `signer` (straight into the store);
        returns their names. The signer issues them at the next API request."""
        store = self.clusters[cluster].store
        approved = []
        with store.lock:
            for csr in store.list(CSR_PREFIX, CSRS):
                status = csr.setdefault("status", {})
                if (csr["spec"].get("signerName") == signer
                        and not any(c.get("type") in ("Approved", "Denied") for c in status.get("conditions") or [])):
                    status["conditions"] = [{"type": "Approved", "status": "True", "reason": "KubectlApprove",
                                             "message": "This CSR was approved by kubectl certificate approve."}]
                    store.put(CSR_PREFIX, CSRS, csr)
                    approved.append(csr["metadata"]["name"])
        return approved

    def serving_certificates(self, cluster: str) -> dict[str, str | None]:
        """node → the address its kubelet's serving certificate names (None: it has none yet)."""
        return {n.name: n.serving_cert_ip for n in self.clusters[cluster].nodes}
