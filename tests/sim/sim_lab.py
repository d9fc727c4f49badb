"""The simulated lab (DESIGN.md "three worlds", world 3): whole labctl flows without Tart, SSH, kubeadm or Helm.

What is real and what is simulated:
- VMs: the real TartProvider drives the fake `tart` (tests/sim/fake_tart.py) on PATH. `SimTartProvider` only
  adds observation hooks (after a call it lets the simulated world catch up, e.g. move an API server to a VM's new
  address), the latency model, and the port of the node's simulated SSH server for `status`.
- Nodes: `SimNode` holds a node's state and prints NodeFacts JSON from it (built from the fresh-clone fixture).
  `SimTransport` (the Transport protocol) answers each script BY ITS ID and reads its params — the shell text is
  never parsed. A node whose VM is not running (or that rebooted under an open connection) is an unreachable host:
  TransportError. Files labctl `put`s (kubeadm configs, Cilium values) are kept and read back as YAML, so what
  labctl rendered is what the simulated kubeadm/Helm act on.
- Clusters: `SimCluster` runs one FakeKube per cluster on the first control plane's (loopback) address, port 6443,
  with TLS from a cluster CA made at `kubeadm init`; the certificate names the advertise address and the stable
  name `<cluster>-api.labctl.internal`. labctl reaches it only through the kubeconfig it writes from the admin.conf
  the node serves. Node objects, Ready conditions, Cilium workloads and CiliumNodes are derived from the simulated
  nodes at every request (like a kubelet posting status), so a VM that stops shows up as NotReady/Unknown.
- IP drift: after `new_ip_on_next_boot` the API server comes back on the new address with its OLD certificate
  (TLS verification fails) until `repair.control-plane` issues a new one from the init config labctl put.
- Controllers (SimCluster.refresh, at every request): besides Cilium's own, every Deployment, StatefulSet,
  DaemonSet, Job gets a healthy controller's status while a Ready node can run its pods (taints, cordon); PVCs bind
  when their class exists; APIServices are Available when the workload behind their service is; every namespace
  gets its `default` ServiceAccount and `kube-root-ca.crt`.
- Kubelet certificates: with `serverTLSBootstrap: true` in the KubeletConfiguration of the init config labctl put,
  each kubelet files a kubelet-serving CSR (a real PEM request for its name and InternalIP) once it posts status,
  and a new one when its address changed; the signer issues what was approved (the `approval` subresource), and
  the kubelet serves only its current CSR's certificate. Joining workers' client CSRs are approved and issued at
  once. metrics-server is Ready (hence its Deployment available, its APIService Available, metrics.k8s.io served)
  only while it can scrape at least one kubelet, as the real one (its readiness needs a successful scrape).
- Helm for stacks (`stacks.helm-install` / `stacks.helm-uninstall`): release records exactly as Helm stores them,
  the chart's CRDs and `ready` objects taken from labctl's catalogue (no chart is rendered), Helm's ownership
  check, `--wait` failing (and --atomic undoing the install) when a workload of the release would not get ready.

`SimLab` wires it into `labctl.lab.CONTEXT_OVERRIDES`; use it as a context manager. On it: failure injection per
script (`fail`), crash injection at the Nth script call (`crash_at`: Ctrl-C, or labctl dying there), a latency model
per script id and tart command (`latency`, for the benchmark), the record of every script call (`calls`), test
controls (`hang` a node, `approve_csrs`), `world()`, a normalised picture of the whole lab for end-state assertions
(its "stacks" section: Helm releases and object counts per cluster), and readers: `releases`, `object_counts`,
`csrs`, `serving_certificates`.
Speed: an install makes a few hundred tart calls, so the fake tart is served from a preloaded fork server
(`SimLab._speed_up_tart`; same code, same behaviour).
"""

from __future__ import annotations

import base64
import copy
import datetime
import gzip
import hashlib
import ipaddress
import json
import random
import secrets
import signal
import socketserver
import ssl
import sys
import threading
import time
import tomllib
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from labctl import lab as lab_module
from labctl import model as model_module
from labctl.context import lab_dir
from labctl.errors import CommandError, TransportError
from labctl.kube import API_PORT, endpoint_host, hosts_address
from labctl.kube.client import client_for
from labctl.providers.tart import TartProvider
from labctl.remote import facts as F
from labctl.remote.base import Result, Script
from labctl.state import LabState
from tests.sim.fake_kube import (
    APISERVICE_PREFIX,
    APISERVICES,
    CRD_PREFIX,
    CRDS,
    GENERATE_ALPHABET,
    ApiError,
    FakeKube,
    Store,
    _Handler,
    crd_object,
    namespace_object,
    subject_alt_names,
    write_object,
)
from tests.sim.fake_tart import FakeTart, read_json, wait_for

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "facts"
FRESH = json.loads((FIXTURES / "ubuntu-24.04-fresh.json").read_text())
# What Ubuntu 24.04's containerd 1.7 package brings: its `config default`, and the effective config before labctl
# configures it (cgroupfs, the old pause image).
_CONTAINERD = json.loads((FIXTURES / "containerd-1.7-cgroupfs.json").read_text())["containerd"]
CONTAINERD_VERSION_OUTPUT = _CONTAINERD["version_output"]
CONTAINERD_DEFAULT = _CONTAINERD["config_default"]
CONTAINERD_DUMP = _CONTAINERD["config_dump"]
CONTAINERD_PACKAGE = {"version": "1.7.28-0ubuntu1~24.04.1", "status": "ii "}

KUBE_SYSTEM = "kube-system"
NOT_READY_TAINT = "node.kubernetes.io/not-ready"
UNREACHABLE_TAINT = "node.kubernetes.io/unreachable"
CNI_NOT_READY = ("container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady "
                 "message:Network plugin returns error: cni plugin not initialized")
SSH_BANNER = b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13.5 (labctl sim)\r\n"


class SimKilled(BaseException):  # not an Exception: no phase may catch it, labctl "died" there
    """labctl was killed at this point (crash injection). A BaseException, so no phase can swallow it."""


# ---- certificates: one CA per cluster, kept across API server restarts (kubeadm keeps it too) ---------------------

@dataclass
class ClusterCA:
    cert_pem: bytes
    key: Any

    @classmethod
    def create(cls, cluster: str) -> ClusterCA:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"kubernetes ({cluster}, sim)")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=2))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(key, hashes.SHA256()))
        return cls(cert.public_bytes(serialization.Encoding.PEM), key)

    def issue(self, common_name: str, sans: list[str] = ()) -> tuple[bytes, bytes]:
        """(cert PEM, key PEM) signed by this CA; `sans` are IPs or DNS names (none: a client certificate)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        ca = x509.load_pem_x509_certificate(self.cert_pem)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
                   .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1)))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(subject_alt_names(sans)), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        pem = serialization.Encoding.PEM
        return cert.public_bytes(pem), key.private_bytes(pem, serialization.PrivateFormat.TraditionalOpenSSL,
                                                         serialization.NoEncryption())

    def spki_hash(self) -> str:
        """kubeadm's discovery-token-ca-cert-hash of this CA."""
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        key = x509.load_pem_x509_certificate(self.cert_pem).public_key()
        return "sha256:" + hashlib.sha256(key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).hexdigest()


def _ips(sans: list[str]) -> list[str]:
    out = []
    for san in sans:
        try:
            out.append(str(ipaddress.IPv4Address(san)))
        except ValueError:
            continue
    return out


# ---- the API server ----------------------------------------------------------------------------------------------

class _SimHandler(_Handler):
    """FakeKube's handler, plus what a real API server in front of real kubelets does.

    Before each request the cluster's live objects are brought up to date from the simulated nodes (the kubelets
    post their status, the controllers reconcile: SimCluster.refresh). A server whose control plane VM is off,
    hung, or at another address by now does not answer (the connection drops). (A write naming a stale
    resourceVersion is a 409 Conflict in FakeKube itself; labctl's taint patch relies on that.)
    """

    kube: SimApiServer

    def _handle(self, method: str) -> None:
        cluster = self.kube.cluster
        if cluster.master.hung.is_set():
            cluster.master.unhung.wait(60)  # a hung host: the request is taken and never answered
        if not cluster.answers(self.kube):
            self._read_body()
            self.close_connection = True  # no response at all: to the client this is a dead host
            return
        cluster.refresh()
        return super()._handle(method)


class SimApiServer(FakeKube):
    """One cluster's API server on `host`:6443 with a certificate from the cluster CA for `sans`."""

    def __init__(self, cluster: SimCluster, host: str, sans: list[str], workdir: Path):
        super().__init__(host=host, port=API_PORT)  # plain HTTP first; the TLS below uses the cluster's own CA
        self.cluster = cluster
        self.sans = list(sans)
        self.store = cluster.store  # etcd: the objects survive restarts of the API server
        self.aggregated = {("metrics.k8s.io", "v1beta1"): cluster.metrics_api}  # metrics-server, behind its APIService
        self.server.RequestHandlerClass = type("Handler", (_SimHandler,), {"kube": self})
        cert, key = cluster.ca.issue("kube-apiserver", sans)
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "apiserver.crt").write_bytes(cert + cluster.ca.cert_pem)
        (workdir / "apiserver.key").write_bytes(key)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(workdir / "apiserver.crt", workdir / "apiserver.key")
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.ca_pem = cluster.ca.cert_pem
        # stop() waits for the serve loop to look at its flag: every 50 ms, not the default 500 (restarts on repair)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True, name=f"sim-api-{cluster.name}")


# ---- the SSH banner (what `status` knocks on) ------------------------------------------------------------------------

class _BannerServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, node: SimNode, address: str):
        self.node = node
        self.address = address
        super().__init__((address, 0), _BannerHandler)
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
                                       name=f"sim-sshd-{node.name}")
        self.thread.start()


class _BannerHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        node: SimNode = self.server.node
        if node.hung.is_set():
            node.unhung.wait(60)  # a hung guest: the TCP handshake happens (the kernel), the banner never comes
            return
        running, address, _ = node.vm_state()
        if running and address == self.server.address:
            self.request.sendall(SSH_BANNER)


# ---- nodes -------------------------------------------------------------------------------------------------------

class SimNode:
    """One VM's guest: the state its facts are printed from, and the node-side effect of every script."""

    def __init__(self, lab: SimLab, cluster: str, name: str, role: str):
        self.lab, self.cluster, self.name, self.role = lab, cluster, name, role
        # Two locks, never held while waiting for another node's: `lock` runs one command at a time on the node,
        # `state_lock` guards catching up with its VM (asked from API server threads while commands run).
        self.lock = threading.RLock()
        self.state_lock = threading.Lock()
        self.hung = threading.Event()
        self.unhung = threading.Event()
        self.fresh()

    def fresh(self) -> None:
        """A new clone of the base image (after create, or after its VM was deleted)."""
        self.facts: dict[str, Any] = copy.deepcopy(FRESH)  # hostname "ubuntu" and the image's machine-id: shared
        self.files: dict[str, bytes] = {}  # what labctl put, by path
        self.node_ip: str | None = None  # kubelet --node-ip (kubeadm-flags.env)
        self.advertised: str | None = None  # kube-apiserver --advertise-address (first control plane)
        self.cert_sans: list[str] = []  # the API server certificate's SANs
        self.helm: str | None = None  # the Helm version in /usr/local/bin
        # kubelet serving certificate (KubeletConfiguration serverTLSBootstrap): whether this kubelet asks for one,
        # its current CSR and the address it asks for, and the address of the certificate it got (kept on disk)
        self.serving_bootstrap = False
        self.csr_name: str | None = None
        self.csr_ip: str | None = None
        self.serving_cert_ip: str | None = None
        self.seen_boot: int | None = None
        self.gone = False  # its VM was seen deleted: the next one of this name is a new clone

    # -- the VM, as the fake tart has it ---------------------------------------------------------------------
    def vm_state(self) -> tuple[bool, str | None, int]:
        """(running, address, boot count). No address while it is off: its stale lease is no address."""
        fake = self.lab.fake
        config = read_json(fake.vm_dir(self.name) / "config.json")
        if config is None:
            return False, None, 0
        running = fake.running_pid(self.name) is not None
        boots = fake.boots(self.name)
        if not running:
            return False, None, boots
        leases = read_json(fake.home / "fake" / "leases.json", {"leases": {}})
        return True, leases["leases"].get(config["macAddress"]), boots

    def observe(self) -> tuple[bool, str | None, int]:
        """Catch up with the VM: a deleted-and-recreated VM is a fresh clone; a reboot resets runtime state."""
        running, address, boots = self.vm_state()
        with self.state_lock:
            exists = self.lab.fake.exists(self.name)
            if not exists:
                self.gone = True
            elif self.gone:
                self.fresh()
            if running and boots != self.seen_boot:
                if self.seen_boot is not None:
                    self._rebooted()
                self.seen_boot = boots
                self.facts["boot_id"] = f"{secrets.token_hex(4)}-sim-boot-{boots}"
        return running, address, boots

    def forget_vm(self) -> None:
        with self.state_lock:
            self.gone = True

    def _rebooted(self) -> None:
        """What a reboot keeps (files) and what it resets (loaded modules, live sysctls, services)."""
        f = self.facts
        listed = self._conf_lines(F.MODULES_CONF)
        f["modules"] = {m: m in listed for m in F.MODULES}
        persisted = self._conf_values(F.SYSCTL_CONF)
        defaults = {"net.ipv4.ip_forward": "0"}
        bridged = f["modules"].get("br_netfilter")
        f["sysctl"] = {k: persisted.get(k, defaults.get(k, "1" if bridged else None)) for k in F.SYSCTLS}
        if f["files"].get(F.CLOUD_CFG_DIR) and not f["files"].get(F.CLOUD_HOSTNAME_CFG):
            f["hostname"] = FRESH["hostname"]  # cloud-init puts the image's name back
        else:
            f["hostname"] = (f["texts"].get(F.HOSTNAME_FILE) or f["hostname"]).strip()
        ctd = f["containerd"]
        if ctd["installed"]:
            enabled = ctd["service"]["enabled"] == "enabled"
            ctd["service"] = {**ctd["service"], "active": "active" if enabled else "inactive",
                              "started_at": self.lab.tick() if enabled else None}
        if f["kubelet"]["enabled"] == "enabled":
            f["kubelet"] = {**f["kubelet"], "active": "active" if self.node_ip else "activating",
                            "started_at": self.lab.tick()}

    # -- facts -----------------------------------------------------------------------------------------------
    def facts_json(self, address: str | None) -> str:
        f = copy.deepcopy(self.facts)
        f["interfaces"] = [i for i in f["interfaces"] if i["name"] == "lo"]
        if address:
            f["interfaces"].insert(0, {"name": "enp0s1", "mac": "6e:00:00:00:00:01", "ipv4": [f"{address}/24"]})
        f["uptime_seconds"] = 60.0
        return json.dumps(f)

    def text(self, path: str) -> str:
        return self.facts["texts"].get(path) or ""

    def _conf_lines(self, path: str) -> list[str]:
        return [ln.strip() for ln in self.text(path).splitlines() if ln.strip() and not ln.strip().startswith("#")]

    def _conf_values(self, path: str, sep: str = "=") -> dict[str, str]:
        out = {}
        for line in self._conf_lines(path):
            key, found, value = line.partition(sep)
            if found:
                out[key.strip()] = value.strip()
        return out

    @property
    def kube_installed(self) -> str | None:
        pkg = self.facts["packages"].get("kubeadm")
        return pkg["version"].rsplit("-", 1)[0] if pkg and pkg["status"][1:2] == "i" else None

    @property
    def containerd_ok(self) -> bool:
        """containerd runs with a CRI and the systemd cgroup driver (the kubelet is told to use systemd)."""
        ctd = self.facts["containerd"]
        if not (ctd["installed"] and ctd["service"]["active"] == "active"):
            return False
        try:
            config = tomllib.loads(ctd["config_dump"] or "")
        except tomllib.TOMLDecodeError:
            return False
        runc = config.get("plugins", {}).get("io.containerd.grpc.v1.cri", {}).get("containerd", {}) \
            .get("runtimes", {}).get("runc", {}).get("options", {})
        return runc.get("SystemdCgroup") is True and "cri" not in (config.get("disabled_plugins") or [])

    def endpoint_ip(self) -> str | None:
        return hosts_address(self.text(F.HOSTS), endpoint_host(self.cluster))

    @property
    def joined(self) -> bool:
        return bool(self.facts["files"].get(F.KUBELET_CONF))

    # -- scripts -------------------------------------------------------------------------------------------------
    def execute(self, script: Script, address: str) -> tuple[int, str]:
        """Apply one script by its identity; returns (exit code, output)."""
        handler = getattr(self, "_" + script.id.replace(".", "_").replace("-", "_"), None)
        if handler is None:
            self.lab.unknown.append(script.id)
            return 127, f"sim: no model for script {script.id!r}"
        with self.lock:
            return handler(script.params, address)

    def _facts(self, p, address):
        return 0, self.facts_json(address)

    def _prepare_apply(self, p, address):
        f, actions = self.facts, p["actions"]
        if "swapoff" in actions:
            f["swap"]["devices"] = []
        if "swap-fstab" in actions:
            lines = [ln for ln in self.text(F.FSTAB).splitlines()
                     if not (len(ln.split()) >= 3 and not ln.startswith("#") and ln.split()[2] == "swap")]
            f["texts"][F.FSTAB] = "\n".join(lines)
        if "swap-units" in actions:
            for unit in p["swap_units"]:
                f["swap"]["unit_files"][unit] = "masked"
            f["swap"]["units"] = [{**u, "load": "masked", "active": "inactive"} for u in f["swap"]["units"]]
        if "modules" in actions:
            f["modules"] = {m: True for m in p["modules"]}
            f["texts"][p["modules_conf"]] = "# Written by labctl\n" + "\n".join(p["modules"])
        if "sysctl" in actions:
            f["sysctl"] = {**f["sysctl"], **p["sysctls"]}
            f["texts"][p["sysctl_conf"]] = "# Written by labctl\n" + "\n".join(
                f"{k} = {v}" for k, v in p["sysctls"].items())
        if "hostname" in actions:
            name = p["node_name"]
            f["hostname"] = name
            f["texts"][F.HOSTNAME_FILE] = name
            lines = self.text(F.HOSTS).splitlines()
            if any(ln.split()[:1] == ["127.0.1.1"] for ln in lines):
                lines = [f"127.0.1.1\t{name}" if ln.split()[:1] == ["127.0.1.1"] else ln for ln in lines]
            else:
                lines.append(f"127.0.1.1\t{name}")
            f["texts"][F.HOSTS] = "\n".join(lines)
            if f["files"].get(p["cloud_cfg_dir"]):
                f["files"][p["cloud_hostname_cfg"]] = True
        if "machine-id" in actions and f["machine_id"] == p["machine_id"]:
            f["machine_id"] = secrets.token_hex(16)
        return 0, "prepare: done: " + " ".join(actions)

    def _runtime_apply(self, p, address):
        f, actions = self.facts, p["actions"]
        ctd = f["containerd"]
        restart = "restart" in actions
        if "install" in actions:
            # apt installs, enables and starts it with the package's own config (cgroupfs, old pause image)
            f["packages"]["containerd"] = dict(CONTAINERD_PACKAGE)
            f["packages"].setdefault("runc", {"version": "1.3.3-0ubuntu1~24.04.3", "status": "ii "})
            ctd.update(installed=True, version_output=CONTAINERD_VERSION_OUTPUT, config_default=CONTAINERD_DEFAULT,
                       config_dump=CONTAINERD_DUMP, config_dump_error="",
                       service={"active": "active", "enabled": "enabled", "started_at": self.lab.tick()})
        if "config" in actions and p["config"]:
            if not ctd["installed"]:
                return 1, "write /etc/containerd/config.toml: containerd is not installed"
            try:
                tomllib.loads(p["config"])
            except tomllib.TOMLDecodeError as exc:  # containerd would refuse to start on it
                ctd["service"] = {**ctd["service"], "active": "failed"}
                return 1, f"containerd: failed to load TOML: {exc}"
            if ctd["config_dump"] != p["config"]:
                ctd["config_dump"] = p["config"]  # the file is labctl's whole config: the dump is the file
                ctd["config_mtime"] = self.lab.tick()
                f["files"][p["containerd_config"]] = True
                restart = True
        if "crictl" in actions:
            f["texts"][p["crictl_yaml"]] = p["crictl"]
        if "enable" in actions:
            ctd["service"] = {**ctd["service"], "enabled": "enabled"}
        if restart:
            if not ctd["installed"]:
                return 5, "Failed to restart containerd.service: Unit containerd.service not found."
            ctd["service"] = {**ctd["service"], "active": "active", "started_at": self.lab.tick()}
        return 0, "runtime: done: " + " ".join(actions)

    def _kubepkgs_apply(self, p, address):
        f, actions = self.facts, p["actions"]
        if "repo" in actions:
            f["files"][p["keyring"]] = True
            f["texts"][p["list_file"]] = p["source_line"]
            f["apt_k8s_sources"] = [{"file": p["list_file"], "line": p["source_line"]}]
        if "install" in actions:
            listed = self._conf_lines(p["list_file"])
            if not f["files"].get(p["keyring"]) or f"/v{p['minor']}/deb/" not in " ".join(listed):
                return 11, f"kubeadm {p['version']} is not in the Kubernetes repository"
            for name in p["packages"]:
                held = f["packages"].get(name, {}).get("status", "ii ")[:1] == "h"
                f["packages"][name] = {"version": f"{p['version']}-1.1", "status": ("h" if held else "i") + "i "}
            f["packages"].setdefault("kubernetes-cni", {"version": "1.7.1-1.1", "status": "ii "})
            f["packages"].setdefault("cri-tools", {"version": "1.35.0-1.1", "status": "ii "})
            # the package enables the kubelet, which crash-loops until kubeadm gives it a config
            f["kubelet"] = {"active": "activating", "enabled": "enabled", "started_at": self.lab.tick()}
        if "hold" in actions:
            for name in p["packages"]:
                if name in f["packages"]:
                    f["packages"][name]["status"] = "h" + f["packages"][name]["status"][1:]
        if "enable-kubelet" in actions:
            f["kubelet"] = {**f["kubelet"], "enabled": "enabled"}
        return 0, "kubepkgs: done: " + " ".join(actions)

    def _endpoint_hosts(self, p, address):
        kept = [ln for ln in self.text(p["hosts_file"]).splitlines()
                if not (ln.split()[:1] and not ln.lstrip().startswith("#")
                        and p["name"] in ln.split("#", 1)[0].split()[1:])]
        new = "\n".join(kept + [f"{p['address']} {p['name']} # labctl: API endpoint of cluster {p['cluster']}"])
        if new == self.text(p["hosts_file"]):
            return 0, "unchanged"
        self.facts["texts"][p["hosts_file"]] = new
        return 0, "changed"

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
        cluster.ca = cluster.ca or ClusterCA.create(self.cluster)
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
        return 0, (f"[init] Using Kubernetes version: {cc['kubernetesVersion']}\n"
                   "Your Kubernetes control-plane has initialized successfully!")

    def _join_token(self, p, address):
        cluster = self.lab.clusters[self.cluster]
        if not f_exists(self, F.ADMIN_CONF):
            return 1, "failed to load admin kubeconfig: open /etc/kubernetes/admin.conf: no such file"
        alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
        token = "".join(random.choice(alphabet) for _ in range(6)) + "." + \
            "".join(random.choice(alphabet) for _ in range(16))
        cluster.tokens.add(token)
        return 0, f"W0101 00:00:00.000000    1234 common.go:1] sim: a warning kubeadm prints first\n{token}"

    def _join_upload_certs(self, p, address):
        if not f_exists(self, F.ADMIN_CONF):
            return 1, "failed to load admin kubeconfig"
        self.lab.clusters[self.cluster].certificate_keys.add(p["certificate_key"])
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
        master_ip = cluster.master.vm_state()[1]
        if hosts_address(self.text(F.HOSTS), host) != master_ip or not cluster.api_up():
            errors.append(f"[ERROR]: cannot reach the API server at {discovery['apiServerEndpoint']}")
        elif discovery["token"] not in cluster.tokens:
            errors.append("[ERROR]: the bootstrap token is unknown to the cluster")
        elif cluster.ca is None or cluster.ca.spki_hash() not in discovery.get("caCertHashes", []):
            errors.append("[ERROR]: cluster CA found in cluster-info does not match the given hash")
        node_ip = _arg(join["nodeRegistration"].get("kubeletExtraArgs"), "node-ip")
        if node_ip != address:
            errors.append(f"[ERROR]: node-ip {node_ip} is not an address of this host")
        if "controlPlane" in join:
            errors.append("[ERROR]: the simulated lab has one control plane per cluster")
        if errors:
            return 1, "[preflight] Some fatal errors occurred:\n\t" + "\n\t".join(errors)
        self.node_ip = node_ip
        self.serving_bootstrap = cluster.kubelet_config.get("serverTLSBootstrap") is True
        for path in (F.KUBELET_CONF, F.KUBELET_CONFIG, F.KUBEADM_FLAGS, "/etc/kubernetes/pki/ca.crt"):
            f["files"][path] = True
        f["kubelet"] = {**f["kubelet"], "active": "active", "started_at": self.lab.tick()}
        cluster.bootstrap_client_csr(self, discovery["token"])
        cluster.register(self)
        return 0, "This node has joined the cluster"

    def _cni_helm_binary(self, p, address):
        if self.helm == p["version"]:
            return 0, f"helm {p['version']} is already installed"
        self.helm = p["version"]
        return 0, f"installed helm {p['version']}"

    def _cni_helm_install(self, p, address):
        if self.helm != p["helm_version"]:
            return 127, "helm: command not found"
        if not f_exists(self, F.ADMIN_CONF):
            return 1, "Error: Kubernetes cluster unreachable: no admin.conf"
        raw = self.files.get(p["values_path"])
        if raw is None:
            return 1, f"Error: open {p['values_path']}: no such file or directory"
        cluster = self.lab.clusters[self.cluster]
        if not cluster.api_up():
            return 1, "Error: Kubernetes cluster unreachable"
        revision = cluster.helm_upgrade(p, yaml.safe_load(raw) or {})
        return 0, (f'Release "{p["release"]}" has been upgraded. Happy Helming!\nNAME: {p["release"]}\n'
                   f"NAMESPACE: {p['namespace']}\nSTATUS: deployed\nREVISION: {revision}")

    def _stacks_helm_install(self, p, address):
        """`helm upgrade --install --wait --create-namespace` of one stack release (SimCluster.helm_install)."""
        if self.helm != p["helm_version"]:
            return 127, "helm: command not found"
        if not f_exists(self, F.ADMIN_CONF):
            return 1, "Error: Kubernetes cluster unreachable: no admin.conf"
        raw = self.files.get(p["values_path"])
        if raw is None:
            return 1, f"Error: open {p['values_path']}: no such file or directory"
        try:
            values = yaml.safe_load(raw) or {}
        except yaml.YAMLError as exc:
            return 1, f"Error: failed to parse {p['values_path']}: error converting YAML to JSON: {exc}"
        cluster = self.lab.clusters[self.cluster]
        if not cluster.api_up():
            return 1, "Error: Kubernetes cluster unreachable"
        return cluster.helm_install(p, values)

    def _stacks_helm_uninstall(self, p, address):
        """`helm uninstall --wait`: exit 1 "release: not found" when it is not installed, like Helm."""
        if self.helm != p["helm_version"]:
            return 127, "helm: command not found"
        if not f_exists(self, F.ADMIN_CONF):
            return 1, "Error: Kubernetes cluster unreachable: no admin.conf"
        cluster = self.lab.clusters[self.cluster]
        if not cluster.api_up():
            return 1, "Error: Kubernetes cluster unreachable"
        return cluster.helm_uninstall(p["release"], p["namespace"], p.get("stack"))

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
        self.facts["kubelet"] = {**self.facts["kubelet"], "started_at": self.lab.tick()}
        self.lab.clusters[self.cluster].sync()  # the kubelet restarts the API server with the new certificate
        return 0, "[certs] Generating \"apiserver\" certificate and key"

    def _shutdown_poweroff(self, p, address):
        self.lab.fake.poweroff(self.name)  # the guest goes down a moment after answering
        return 0, ""

    # -- files ---------------------------------------------------------------------------------------------------
    def read(self, path: str) -> bytes | None:
        cluster = self.lab.clusters[self.cluster]
        if path == F.ADMIN_CONF and f_exists(self, F.ADMIN_CONF):
            return cluster.admin_conf()
        if path == "/etc/kubernetes/pki/ca.crt" and f_exists(self, path) and cluster.ca is not None:
            return cluster.ca.cert_pem
        return self.files.get(path)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def f_exists(node: SimNode, path: str) -> bool:
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


# ---- the transport -----------------------------------------------------------------------------------------------

class SimTransport:
    """The Transport protocol over one SimNode, like one SSH connection: it dies with the boot it was opened in."""

    def __init__(self, lab: SimLab, node: SimNode, state: LabState, address: str, boot: int):
        self.lab, self.sim, self.state = lab, node, state
        self.node = node.name
        self.address, self.boot = address, boot
        self.closed = False

    def _alive(self) -> str:
        if self.lab.killed:
            raise SimKilled(self.node)
        running, address, boot = self.sim.observe()
        if self.closed:
            raise TransportError(self.node, "the connection was closed")
        if not running or address != self.address or boot != self.boot:
            raise TransportError(self.node, f"lost the connection to {self.address}:22 (the VM stopped or restarted)",
                                 hint="`labctl status` shows the VM")
        if self.sim.hung.is_set():
            raise TransportError(self.node, f"connection to {self.address}:22 timed out")
        return address

    def run(self, script: Script, *, sudo: bool = False, timeout: float | None = None, check: bool = True) -> Result:
        address = self._alive()
        applied = self.lab.before_script(self.sim, script)
        self.state.log(self.node, f"$ {script.id}{' (sudo)' if sudo else ''}")
        rule = self.lab.injected(self.node, script.id)
        if rule is not None:
            rc, out = rule.rc, rule.output
        elif applied is False:  # killed before the node ran it
            raise SimKilled(self.node)
        else:
            rc, out = self.sim.execute(script, address)
        if script.id != "facts":  # like the SSH transport's log: the facts JSON is not worth a node log
            for line in out.splitlines():
                self.state.log(self.node, line)
        self.state.log(self.node, f"= {script.id}: exit {rc}")
        if applied is not None:  # the crash point: the node ran the command, labctl never heard back
            raise SimKilled(self.node)
        if check and rc != 0:
            raise CommandError(self.node, script.id, rc, out)
        return Result(rc, out)  # one stream: the simulated commands do not tell stdout from stderr

    def put(self, path: str, data: bytes, mode: int = 0o644, *, sudo: bool = False) -> None:
        self._alive()
        self.lab.before_io(self.sim, f"put {path}")
        with self.sim.lock:
            self.sim.files[path] = bytes(data)
        self.state.log(self.node, f"$ put {path} ({len(data)} bytes, mode {mode:o})")

    def get(self, path: str, *, sudo: bool = False) -> bytes:
        self._alive()
        self.lab.before_io(self.sim, f"get {path}")
        with self.sim.lock:
            data = self.sim.read(path)
        if data is None:
            raise CommandError(self.node, f"get {path}", 1, f"cat: {path}: No such file or directory")
        return data

    def close(self) -> None:
        self.closed = True


# ---- clusters ----------------------------------------------------------------------------------------------------

APPS = "apis/apps/v1"
CSR_PREFIX, CSRS = "apis/certificates.k8s.io/v1", "certificatesigningrequests"
KUBELET_SERVING = "kubernetes.io/kubelet-serving"
KUBELET_CLIENT = "kubernetes.io/kube-apiserver-client-kubelet"
METRICS_APISERVICE = "v1beta1.metrics.k8s.io"
# What `cni` installs in kube-system and refresh() keeps up to date from the Cilium agents (not the generic loop).
CILIUM_WORKLOADS = ("cilium", "cilium-envoy", "cilium-operator", "coredns", "hubble-relay", "hubble-ui")
# The CRDs Cilium's operator registers when it starts (kinds labctl or a stack may use).
CILIUM_CRDS = [
    ("v2", "ciliumnodes", "CiliumNode", "Cluster", ("cn", "ciliumn")),
    ("v2", "ciliumendpoints", "CiliumEndpoint", "Namespaced", ("cep", "ciliumep")),
    ("v2", "ciliumidentities", "CiliumIdentity", "Cluster", ("ciliumid",)),
    ("v2", "ciliumnetworkpolicies", "CiliumNetworkPolicy", "Namespaced", ("cnp", "ciliumnp")),
    ("v2", "ciliumclusterwidenetworkpolicies", "CiliumClusterwideNetworkPolicy", "Cluster", ("ccnp",)),
    ("v2", "ciliumlocalredirectpolicies", "CiliumLocalRedirectPolicy", "Namespaced", ("clrp",)),
    ("v2", "ciliumenvoyconfigs", "CiliumEnvoyConfig", "Namespaced", ("cec",)),
    ("v2", "ciliumclusterwideenvoyconfigs", "CiliumClusterwideEnvoyConfig", "Cluster", ("ccec",)),
    ("v2", "ciliumloadbalancerippools", "CiliumLoadBalancerIPPool", "Cluster", ("ippools", "lbippool")),
    ("v2", "ciliumcidrgroups", "CiliumCIDRGroup", "Cluster", ("ccg",)),
    ("v2", "ciliumnodeconfigs", "CiliumNodeConfig", "Namespaced", ()),
    ("v2alpha1", "ciliuml2announcementpolicies", "CiliumL2AnnouncementPolicy", "Cluster", ("l2announcement",)),
]
HELM_HISTORY_MAX = 10  # `helm upgrade --history-max` default: older revisions are deleted
HELM_OWNER = ("app.kubernetes.io/managed-by", "meta.helm.sh/release-name", "meta.helm.sh/release-namespace")
# DaemonSet pods get these tolerations from the DaemonSet controller (AddOrUpdateDaemonPodTolerations)
DAEMON_TOLERATED = {"node.kubernetes.io/unschedulable", "node.kubernetes.io/disk-pressure",
                    "node.kubernetes.io/memory-pressure", "node.kubernetes.io/pid-pressure"}


class SimCluster:
    """One cluster's control plane as the API shows it, fed from its SimNodes."""

    def __init__(self, lab: SimLab, name: str, nodes: list[SimNode]):
        self.lab, self.name, self.nodes = lab, name, nodes
        self.master = next(n for n in nodes if n.role == "master")
        self.lock = threading.RLock()
        self.reset()

    def reset(self) -> None:
        self.store = Store()
        self.ca: ClusterCA | None = None
        self.client_cert: tuple[bytes, bytes] | None = None
        self.server: SimApiServer | None = None
        self.tokens: set[str] = set()
        self.certificate_keys: set[str] = set()
        self.cilium: dict | None = None  # the values of the deployed release
        self.helm_revisions = 0  # how often Cilium's `helm upgrade --install` really ran
        self.inits = 0  # how often `kubeadm init` really ran
        self.kubelet_config: dict = {}  # the KubeletConfiguration of `kubeadm init`
        self.cluster_config: dict = {}
        self.csr_records: dict[str, tuple[str, str | None]] = {}  # CSR name → (node, address it asks for)
        self.operator_objects: dict[str, list[tuple[str, str, str, str]]] = {}  # stack → what its operator made
        self.kubelets: dict[str, bool] = {}  # node → its kubelet posts status (as of the last refresh)

    # -- the control plane ---------------------------------------------------------------------------------------
    def api_up(self) -> bool:
        """The API server runs: its VM is up (not hung), kubeadm made a control plane there, and after a boot the
        kubelet had `SimLab.api_start_seconds` to start the static pods."""
        running, address, _ = self.master.vm_state()
        if not (running and address is not None and self.master.advertised is not None):
            return False
        if self.lab.api_start_seconds:
            booted = read_json(self.lab.fake.home / "fake" / self.master.name / "run.json", {}).get("boot_time", 0)
            if time.time() < booted + self.lab.api_start_seconds:
                return False
        return not self.master.hung.is_set()

    def answers(self, server: SimApiServer) -> bool:
        return server is self.server and self.api_up() and self.master.vm_state()[1] == server.host

    def sync(self) -> None:
        """Serve where the control plane is now: started on its address, moved when the address changed (keeping
        the old certificate until the repair), stopped when its VM is off."""
        running, address, _ = self.master.observe()  # before the lock: observing takes the node's own
        with self.lock:
            want = self.master.advertised is not None and running and address is not None
            current = self.server
            if current is not None and (not want or current.host != address or current.sans != self.master.cert_sans):
                self.server = None
                current.stop()
            if want and self.server is None:
                workdir = self.lab.workdir / f"{self.name}-api"
                self.server = SimApiServer(self, address, self.master.cert_sans, workdir).start()

    def initialised(self, master: SimNode) -> None:
        """What `kubeadm init` leaves in the API: the system namespaces (kube-apiserver makes them at its first
        start), kubeadm's ConfigMaps, the `kubernetes` and `kube-dns` Services, CoreDNS, the first Node."""
        with self.lock:
            self.inits += 1
            self.client_cert = self.ca.issue("kubernetes-admin")
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
            store.put(APPS, "deployments", _deployment("coredns", 2), KUBE_SYSTEM)
            self.register(master)
        self.sync()

    def admin_conf(self) -> bytes:
        cert, key = self.client_cert
        conf = {
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": self.name, "cluster": {"certificate-authority-data": _b64(self.ca.cert_pem),
                                                         "server": f"https://{endpoint_host(self.name)}:{API_PORT}"}}],
            "contexts": [{"name": f"kubernetes-admin@{self.name}",
                          "context": {"cluster": self.name, "user": "kubernetes-admin"}}],
            "current-context": f"kubernetes-admin@{self.name}",
            "users": [{"name": "kubernetes-admin",
                       "user": {"client-certificate-data": _b64(cert), "client-key-data": _b64(key)}}],
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

    # -- kubelet certificates ------------------------------------------------------------------------------------
    def bootstrap_client_csr(self, node: SimNode, token: str) -> None:
        """`kubeadm join`: the kubelet asks for its client certificate with the bootstrap token; kube-controller-
        manager approves and signs it at once (kubeadm's RBAC lets it). Not a serving certificate: labctl must
        leave these alone."""
        with self.store.lock:
            self._new_csr(node, KUBELET_CLIENT, ["digital signature", "client auth"], None,
                          f"system:bootstrap:{token.split('.')[0]}",
                          ["system:bootstrappers", "system:bootstrappers:kubeadm:default-node-token",
                           "system:authenticated"],
                          approved="Auto approving kubelet client certificate after SubjectAccessReview.")

    def _new_csr(self, node: SimNode, signer: str, usages: list[str], ip: str | None, user: str, groups: list[str],
                 approved: str = "") -> dict:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        # the kubelet's template: pkix.Name{CommonName, Organization}, which Go encodes O first
        builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{node.name}")]))
        if ip is not None:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName(node.name), x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
        request = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
        while True:
            name = "csr-" + "".join(random.choice(GENERATE_ALPHABET) for _ in range(5))
            if self.store.get(CSR_PREFIX, CSRS, name) is None:
                break
        obj = {"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
               "metadata": {"name": name, "generateName": "csr-"},
               "spec": {"request": _b64(request), "signerName": signer, "usages": usages, "username": user,
                        "groups": groups, "uid": str(uuid.uuid4())},
               "status": {}}
        if approved:
            obj["status"]["conditions"] = [{"type": "Approved", "status": "True", "reason": "AutoApproved",
                                            "message": approved, "lastUpdateTime": _utc(),
                                            "lastTransitionTime": _utc()}]
            obj["status"]["certificate"] = _b64(self._sign(obj))
        self.csr_records[name] = (node.name, ip)
        return self.store.put(CSR_PREFIX, CSRS, obj)

    def _sign(self, csr: dict) -> bytes:
        """kube-controller-manager's signer: a certificate from the cluster CA for the request's key and names."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.x509.oid import ExtendedKeyUsageOID

        request = x509.load_pem_x509_csr(base64.b64decode(csr["spec"]["request"]))
        ca = x509.load_pem_x509_certificate(self.ca.cert_pem)
        now = datetime.datetime.now(datetime.UTC)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if "server auth" in csr["spec"].get("usages", []) \
            else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (x509.CertificateBuilder().subject_name(request.subject).issuer_name(ca.subject)
                   .public_key(request.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=365))
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        try:
            sans = request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            builder = builder.add_extension(sans, critical=False)
        except x509.ExtensionNotFound:
            pass
        return builder.sign(self.ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    def _kubelet_certificates(self, up: dict[str, bool]) -> None:
        """Kubelets with serverTLSBootstrap ask for a serving certificate once they post status, and again when
        their address changed (the certificate names it); the signer signs what an admin approved. A kubelet takes
        the certificate of its current CSR only."""
        for node in self.nodes:
            if up.get(node.name) and node.serving_bootstrap and node.csr_ip != node.node_ip:
                csr = self._new_csr(node, KUBELET_SERVING, ["digital signature", "server auth"], node.node_ip,
                                    f"system:node:{node.name}", ["system:nodes", "system:authenticated"])
                node.csr_name, node.csr_ip = csr["metadata"]["name"], node.node_ip
        for csr in self.store.list(CSR_PREFIX, CSRS):
            status = csr.get("status") or {}
            verdicts = {c.get("type") for c in status.get("conditions") or [] if c.get("status") == "True"}
            if "Approved" not in verdicts or verdicts & {"Denied", "Failed"} or status.get("certificate"):
                continue
            if csr["spec"].get("signerName") not in (KUBELET_SERVING, KUBELET_CLIENT):
                continue  # no signer for it in this cluster: it stays approved, never issued
            csr["status"] = {**status, "certificate": _b64(self._sign(csr))}
            self.store.put(CSR_PREFIX, CSRS, csr)
            node_name, ip = self.csr_records.get(csr["metadata"]["name"], (None, None))
            node = self.lab.nodes.get(node_name)
            if node is not None and node.csr_name == csr["metadata"]["name"]:
                node.serving_cert_ip = ip

    def scrapable(self) -> list[str]:
        """Nodes whose kubelet metrics-server can scrape: it posts status and serves a certificate (from the cluster
        CA) naming its current address (metrics-server runs with --kubelet-preferred-address-types=InternalIP and
        verifies it). Without one the kubelet has no serving certificate at all: the TLS handshake fails."""
        return [n.name for n in self.nodes
                if self.kubelets.get(n.name) and n.serving_cert_ip is not None and n.serving_cert_ip == n.node_ip]

    def metrics_api(self, method: str, rest: list[str], query: dict) -> tuple[int, dict]:
        """metrics.k8s.io/v1beta1 as metrics-server serves it (behind the APIService): NodeMetrics of the nodes it
        scraped; no pods are simulated."""
        if method != "GET":
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        if not rest:
            return 200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "metrics.k8s.io/v1beta1",
                         "resources": [{"name": "nodes", "singularName": "", "namespaced": False, "kind": "NodeMetrics",
                                        "verbs": ["get", "list"]},
                                       {"name": "pods", "singularName": "", "namespaced": True, "kind": "PodMetrics",
                                        "verbs": ["get", "list"]}]}

        def item(name: str) -> dict:
            return {"metadata": {"name": name, "creationTimestamp": _utc()}, "timestamp": _utc(), "window": "20.05s",
                    "usage": {"cpu": "123456789n", "memory": "1048576Ki"}}

        nodes = self.scrapable()
        if rest == ["nodes"]:
            return 200, {"kind": "NodeMetricsList", "apiVersion": "metrics.k8s.io/v1beta1", "metadata": {},
                         "items": [item(n) for n in nodes]}
        if len(rest) == 2 and rest[0] == "nodes":
            if rest[1] not in nodes:
                raise ApiError(404, "NotFound", f'nodemetrics.metrics.k8s.io "{rest[1]}" not found')
            return 200, {"kind": "NodeMetrics", "apiVersion": "metrics.k8s.io/v1beta1", **item(rest[1])}
        if rest == ["pods"] or (len(rest) == 3 and rest[0] == "namespaces" and rest[2] == "pods"):
            return 200, {"kind": "PodMetricsList", "apiVersion": "metrics.k8s.io/v1beta1", "metadata": {}, "items": []}
        raise ApiError(404, "NotFound", "the server could not find the requested resource", {})

    # -- Helm -------------------------------------------------------------------------------------------------
    def _release_secrets(self, namespace: str, release: str) -> list[dict]:
        return sorted((s for s in self.store.list("api/v1", "secrets", namespace)
                       if s.get("type") == "helm.sh/release.v1"
                       and (s["metadata"].get("labels") or {}).get("owner") == "helm"
                       and s["metadata"]["labels"].get("name") == release),
                      key=lambda s: int(s["metadata"]["labels"].get("version", 0)))

    def _write_release(self, namespace: str, release: str, chart: str, version: str, values: dict, manifest: str,
                       status: str = "deployed", description: str = "") -> int:
        """A new revision in Helm's storage (Secret `sh.helm.release.v1.<name>.v<n>`, base64(gzip(json)) in its
        data); the deployed one before it becomes superseded, and history beyond --history-max is deleted."""
        with self.store.lock:
            previous = self._release_secrets(namespace, release)
            revision = int(previous[-1]["metadata"]["labels"]["version"]) + 1 if previous else 1
            first = _decode_release(previous[0])["info"]["first_deployed"] if previous else _utc()
            for secret in previous:
                if secret["metadata"]["labels"].get("status") == "deployed" and status == "deployed":
                    record = _decode_release(secret)
                    record["info"]["status"] = "superseded"
                    secret["metadata"]["labels"]["status"] = "superseded"
                    secret["data"] = {"release": _encode_release(record)}
                    self.store.put("api/v1", "secrets", secret, namespace)
            record = {"name": release, "namespace": namespace, "version": revision,
                      "info": {"first_deployed": first, "last_deployed": _utc(), "deleted": "",
                               "description": description or ("Upgrade complete" if previous else "Install complete"),
                               "status": status},
                      "chart": {"metadata": {"name": chart, "version": version, "apiVersion": "v2"},
                                "templates": [], "values": {}, "files": []},
                      "config": values, "manifest": manifest, "hooks": []}
            self.store.put("api/v1", "secrets", {
                "metadata": {"name": f"sh.helm.release.v1.{release}.v{revision}",
                             "labels": {"owner": "helm", "name": release, "version": str(revision), "status": status,
                                        "modifiedAt": str(int(time.time()))}},
                "type": "helm.sh/release.v1",
                "data": {"release": _encode_release(record)}}, namespace)
            for secret in self._release_secrets(namespace, release)[:-HELM_HISTORY_MAX]:
                self.store.delete("api/v1", "secrets", secret["metadata"]["name"], namespace)
            return revision

    def helm_upgrade(self, p: dict, values: dict) -> int:
        """Cilium's `helm upgrade --install --wait`: a new release revision and the chart's workloads; its operator
        registers Cilium's CRDs."""
        with self.store.lock:
            self.helm_revisions += 1
            revision = self._write_release(p["namespace"], p["release"], "cilium", p["version"], values, "")
            self.cilium = values
            ns = p["namespace"]
            for version, plural, kind, scope, short in CILIUM_CRDS:
                if self.store.get(CRD_PREFIX, CRDS, f"{plural}.cilium.io") is None:
                    self.store.put(CRD_PREFIX, CRDS, crd_object("cilium.io", version, plural, kind, scope, short))
            for name in ("cilium", "cilium-envoy"):
                self.store.put(APPS, "daemonsets", _daemonset(name), ns)
            operator = (values.get("operator") or {}).get("replicas", 2)
            self.store.put(APPS, "deployments", _deployment("cilium-operator", operator), ns)
            hubble = values.get("hubble") or {}
            for name, on in (("hubble-relay", (hubble.get("relay") or {}).get("enabled")),
                             ("hubble-ui", (hubble.get("ui") or {}).get("enabled"))):
                if on:
                    self.store.put(APPS, "deployments", _deployment(name, 1), ns)
                elif self.store.get(APPS, "deployments", name, ns):
                    self.store.delete(APPS, "deployments", name, ns)
        return revision

    def helm_install(self, p: dict, values: dict) -> tuple[int, str]:
        """`helm upgrade --install --wait --create-namespace <release>` of a stack release (script
        stacks.helm-install), as (exit code, output).

        What the chart creates is read from labctl's catalogue (templates/stacks/<stack>/stack.yaml): the release's
        `ready` objects and `provides_crds` (applied by labctl's kubectl beforehand when `crds_path` is set, else
        part of the chart with helm.sh/resource-policy keep). A chart outside the catalogue creates nothing here but
        its release record. Like Helm: a new revision every time; objects that exist without this release's
        ownership labels stop the install; `--wait` fails when a workload of the release would not become ready
        (then --atomic / --rollback-on-failure uninstalls a first install or rolls an upgrade back). When every
        release of a catalogue stack is deployed, the stack's own `ready` objects appear (what its operator makes)."""
        release, namespace = p["release"], p["namespace"]
        stack, rel = _catalogue_release(p["stack"], release)
        with self.store.lock:
            if self.store.get("api/v1", "namespaces", namespace) is None:  # --create-namespace
                write_object(self.store, "api/v1", "namespaces", namespace_object(namespace, {"name": namespace}),
                             "helm")
            previous = [s for s in self._release_secrets(namespace, release)]
            deployed = next((s for s in reversed(previous) if s["metadata"]["labels"].get("status") == "deployed"),
                            None)
            verb = "UPGRADE FAILED" if previous else "INSTALLATION FAILED"
            if p.get("crds_path") and rel is not None:  # the script's `kubectl apply --server-side` of crds/
                for crd in _provided_crds(rel):
                    write_object(self.store, CRD_PREFIX, CRDS, crd, "labctl", replace=_merge_spec, operation="Apply")
            objects = _chart_objects(p, rel)
            problem = self._ownership(objects, release, namespace)
            if problem:
                action = "update" if previous else "install"
                return 1, f"Error: {verb}: Unable to continue with {action}: {problem}"
            try:
                for obj in objects:
                    self._helm_write(obj)
            except ApiError as exc:
                return 1, f"Error: {verb}: {exc.message}"
            manifest = yaml.safe_dump_all(objects, sort_keys=False)
            revision = self._write_release(namespace, release, p["chart"], p["version"], values, manifest)
        waiting = self._not_ready(objects)
        if waiting:
            return self._helm_failed(p, values, previous, deployed, revision, objects, waiting)
        if stack is not None:
            self._operator(p["stack"], stack)
        head = (f'Release "{release}" has been upgraded. Happy Helming!' if previous
                else f'Release "{release}" does not exist. Installing it now.')
        return 0, (f"{head}\nNAME: {release}\nLAST DEPLOYED: {_utc()}\nNAMESPACE: {namespace}\nSTATUS: deployed\n"
                   f"REVISION: {revision}\nTEST SUITE: None")

    def _helm_failed(self, p, values, previous, deployed, revision, objects, waiting) -> tuple[int, str]:
        """`--wait` ran out of time: the revision is failed; with the rollback flag Helm uninstalls a first install
        or rolls back to the last deployed revision (a new revision with its chart and values)."""
        release, namespace = p["release"], p["namespace"]
        flag = (p.get("rollback_flag") or "").lstrip("-")
        with self.store.lock:
            secret = self._release_secrets(namespace, release)[-1]
            record = _decode_release(secret)
            record["info"].update(status="failed", description=f"Release \"{release}\" failed: context deadline "
                                                               "exceeded")
            secret["metadata"]["labels"]["status"] = "failed"
            secret["data"] = {"release": _encode_release(record)}
            self.store.put("api/v1", "secrets", secret, namespace)
            reason = f"context deadline exceeded ({'; '.join(waiting)})"
            if not flag:
                return 1, f"Error: {'UPGRADE' if previous else 'INSTALLATION'} FAILED: {reason}"
            if deployed is None:
                self.helm_uninstall(release, namespace, None)
                return 1, (f"Error: INSTALLATION FAILED: release {release} failed, and has been uninstalled due to "
                           f"{flag} being set: {reason}")
            old = _decode_release(deployed)
            for obj in yaml.safe_load_all(old.get("manifest") or ""):
                if obj:
                    self._helm_write(obj)
            self._write_release(namespace, release, old["chart"]["metadata"]["name"],
                                old["chart"]["metadata"]["version"], old.get("config") or {}, old.get("manifest", ""),
                                description=f"Rollback to {old['version']}")
        return 1, (f"Error: UPGRADE FAILED: release {release} failed, and has been rolled back due to {flag} being "
                   f"set: {reason}")

    def helm_uninstall(self, release: str, namespace: str, stack: str | None) -> tuple[int, str]:
        """`helm uninstall`: the objects of the release's manifest (not those marked helm.sh/resource-policy keep)
        and its history; what the stack's operator made goes with it (garbage collection of its owners)."""
        with self.store.lock:
            secrets = self._release_secrets(namespace, release)
            if not secrets:
                return 1, f"Error: uninstall: Release not loaded: {release}: release: not found"
            manifest = _decode_release(secrets[-1]).get("manifest") or ""
            for obj in yaml.safe_load_all(manifest):
                if not obj or (obj["metadata"].get("annotations") or {}).get("helm.sh/resource-policy") == "keep":
                    continue
                res = self.store.resource_for(obj["apiVersion"], obj["kind"])
                if res is not None:
                    self.store.delete(res.prefix, res.plural, obj["metadata"]["name"],
                                      obj["metadata"].get("namespace", "") if res.namespaced else "")
            for secret in secrets:
                self.store.delete("api/v1", "secrets", secret["metadata"]["name"], namespace)
            for key in self.operator_objects.pop(stack or "", []):
                self.store.delete(*key)
        return 0, f'release "{release}" uninstalled'

    def _ownership(self, objects: list[dict], release: str, namespace: str) -> str | None:
        """Helm refuses to adopt an object it did not create for this release (invalid ownership metadata)."""
        for obj in objects:
            res = self.store.resource_for(obj["apiVersion"], obj["kind"])
            meta = obj["metadata"]
            live = res and self.store.get(res.prefix, res.plural, meta["name"], meta.get("namespace", ""))
            if not live:
                continue
            labels, annotations = live["metadata"].get("labels") or {}, live["metadata"].get("annotations") or {}
            errors = []
            for key, have, want in ((HELM_OWNER[0], labels, "Helm"), (HELM_OWNER[1], annotations, release),
                                    (HELM_OWNER[2], annotations, namespace)):
                which = "label" if have is labels else "annotation"
                if key not in have:
                    errors.append(f'{which} validation error: missing key "{key}": must be set to "{want}"')
                elif have[key] != want:
                    errors.append(f'{which} validation error: key "{key}" must equal "{want}": current value is '
                                  f'"{have[key]}"')
            if errors:
                where = f' in namespace "{meta["namespace"]}"' if meta.get("namespace") else ""
                return (f'{obj["kind"]} "{meta["name"]}"{where} exists and cannot be imported into the current '
                        f"release: invalid ownership metadata; " + "; ".join(errors))
        return None

    def _helm_write(self, obj: dict) -> None:
        res = self.store.resource_for(obj["apiVersion"], obj["kind"])
        write_object(self.store, res.prefix, res.plural, obj, "helm", obj["metadata"].get("namespace", ""),
                     replace=_merge_spec)

    def _not_ready(self, objects: list[dict]) -> list[str]:
        """What `helm --wait` waits for among these: Deployments, StatefulSets, DaemonSets (after the controllers
        had their go)."""
        self.refresh()
        waiting = []
        with self.store.lock:
            for obj in objects:
                kind, meta = obj["kind"], obj["metadata"]
                if kind not in ("Deployment", "StatefulSet", "DaemonSet"):
                    continue
                live = self.store.get(APPS, kind.lower() + "s", meta["name"], meta["namespace"]) or {}
                spec, status = live.get("spec") or {}, live.get("status") or {}
                if kind == "DaemonSet":
                    ok = status.get("numberReady", 0) >= status.get("desiredNumberScheduled", 0)
                else:
                    ok = status.get("readyReplicas", 0) >= spec.get("replicas", 1)
                if not ok:
                    waiting.append(f"{kind} {meta['namespace']}/{meta['name']} not ready")
        return waiting

    def _operator(self, name: str, stack) -> None:
        """A catalogue stack's own `ready` objects (e.g. the StatefulSets prometheus-operator makes from the chart's
        Prometheus) appear once every release of the stack is deployed."""
        from labctl import stacks as S

        with self.store.lock:
            for r in stack.releases:
                ns = r.namespace or stack.namespace
                secrets = self._release_secrets(ns, r.release)
                if not secrets or secrets[-1]["metadata"]["labels"].get("status") != "deployed":
                    return
            made = []
            for entry in stack.ready:
                kind, ns, obj_name = S.parse_ready(entry, stack.namespace)
                obj = _workload(kind, ns, obj_name, {"app.kubernetes.io/managed-by": f"{name}-operator"}, {},
                                f"{name}-operator", "operator")
                if obj is None:
                    continue
                res = self.store.resource_for(obj["apiVersion"], obj["kind"])
                try:
                    write_object(self.store, res.prefix, res.plural, obj, "operator", ns, replace=_merge_spec)
                except ApiError:
                    continue  # e.g. its namespace is not there: the operator cannot make it either
                made.append((res.prefix, res.plural, obj_name, ns))
            self.operator_objects[name] = made

    # -- what the kubelets and controllers keep up to date ---------------------------------------------------
    def refresh(self) -> None:
        """Bring Nodes, Cilium's workloads and CiliumNodes in line with the simulated nodes, as the kubelets and
        controllers would; then the generic controllers (workloads, jobs, PVCs, APIServices, per-namespace objects)
        and the kubelets' certificate requests. Everything is looked at first, then written under the store's lock
        (never both: a node's command may be waiting for that lock while holding its own)."""
        states = {n.name: n.observe() for n in self.nodes}
        master_address = states[self.master.name][1]
        api = self.api_up()

        def kubelet_up(node: SimNode) -> bool:
            # It posts status when its VM runs, it joined, its --node-ip is its address, and it reaches the API by
            # the stable name (its /etc/hosts line points at the control plane's current address).
            running, address, _ = states[node.name]
            return (running and api and not node.hung.is_set() and node.joined and node.node_ip == address
                    and node.endpoint_ip() == master_address)

        def agent_up(node: SimNode) -> bool:
            # Cilium's agent reaches the API through k8sServiceHost: the stable name (via /etc/hosts) or an IP
            if self.cilium is None or not kubelet_up(node):
                return False
            host = self.cilium.get("k8sServiceHost", "")
            return (node.endpoint_ip() if host == endpoint_host(self.name) else host) == master_address

        up = {n.name: kubelet_up(n) for n in self.nodes}
        agents = {n.name: agent_up(n) for n in self.nodes}
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
                for name in ("cilium-operator", "hubble-relay", "hubble-ui"):
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
                          nodeInfo={"kubeletVersion": "v" + (node.kube_installed or "?"),
                                    "containerRuntimeVersion": "containerd://1.7.28",
                                    "osImage": FRESH["os"]["pretty_name"], "architecture": "arm64"})
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

    def _set_status(self, plural: str, name: str, status: dict) -> None:
        obj = self.store.get(APPS, plural, name, KUBE_SYSTEM)
        if obj is not None and {**obj["status"], **status} != obj["status"]:
            obj["status"] = {**obj["status"], **status}
            self.store.put(APPS, plural, obj, KUBE_SYSTEM)

    def _scale(self, name: str, nodes_up: int) -> None:
        obj = self.store.get(APPS, "deployments", name, KUBE_SYSTEM)
        if obj is not None:
            available = min(obj["spec"]["replicas"], nodes_up)
            self._set_status("deployments", name, {"availableReplicas": available, "readyReplicas": available,
                                                   "updatedReplicas": obj["spec"]["replicas"]})

    # -- generic controllers (everything that is not Cilium's) ------------------------------------------------
    def _controllers(self, nodes: list[dict]) -> None:
        """Deployment, StatefulSet, DaemonSet, Job, PVC, APIService status as healthy controllers would set them,
        and the objects every namespace gets (ServiceAccount default, ConfigMap kube-root-ca.crt)."""
        store = self.store
        for plural in ("deployments", "statefulsets", "daemonsets"):
            for obj in store.list(APPS, plural):
                meta = obj["metadata"]
                if meta.get("namespace") == KUBE_SYSTEM and meta["name"] in CILIUM_WORKLOADS:
                    continue
                self._put_status(APPS, plural, obj, self._workload_status(plural, obj, nodes))
        for job in store.list("apis/batch/v1", "jobs"):
            if not any(c.get("type") == "Complete" for c in (job.get("status") or {}).get("conditions") or []):
                template = ((job.get("spec") or {}).get("template") or {}).get("spec") or {}
                if any(_schedulable(n, template.get("tolerations") or [], False) for n in nodes):
                    done = (job.get("spec") or {}).get("completions", 1)
                    self._put_status("apis/batch/v1", "jobs", job, {
                        "succeeded": done, "active": 0, "ready": 0, "terminating": 0, "startTime": _utc(),
                        "completionTime": _utc(), "conditions": [
                            {"type": "SuccessCriteriaMet", "status": "True"}, {"type": "Complete", "status": "True"}]})
        classes = {sc["metadata"]["name"] for sc in store.list("apis/storage.k8s.io/v1", "storageclasses")}
        for pvc in store.list("api/v1", "persistentvolumeclaims"):
            spec = pvc.setdefault("spec", {})
            if "storageClassName" not in spec and (default := _default_class(store)):
                spec["storageClassName"] = default  # retroactive default class assignment (1.28+)
            # bound as if its consumer were scheduled (WaitForFirstConsumer classes bind then)
            bound = spec.get("storageClassName") in classes
            status = {"phase": "Bound", "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                      "capacity": {"storage": ((spec.get("resources") or {}).get("requests") or {}).get("storage", "0")}
                      } if bound else {"phase": "Pending"}
            self._put_status("api/v1", "persistentvolumeclaims", pvc, status)
        for svc in store.list(APISERVICE_PREFIX, APISERVICES):
            self._put_status(APISERVICE_PREFIX, APISERVICES, svc, {"conditions": [self._apiservice(svc)]})
        ca = {"ca.crt": self.ca.cert_pem.decode()} if self.ca else {}
        for ns in store.list("api/v1", "namespaces"):
            name = ns["metadata"]["name"]
            if store.get("api/v1", "serviceaccounts", "default", name) is None:
                store.put("api/v1", "serviceaccounts", {"metadata": {"name": "default"}}, name)
            if ca and store.get("api/v1", "configmaps", "kube-root-ca.crt", name) is None:
                store.put("api/v1", "configmaps", {"metadata": {"name": "kube-root-ca.crt", "annotations": {
                    "kubernetes.io/description": "Contains a CA bundle that can be used to verify the "
                                                 "kube-apiserver when using internal endpoints such as the internal "
                                                 "service IP or kubernetes.default.svc. No other usage is guaranteed "
                                                 "across distributions of Kubernetes clusters."}}, "data": ca}, name)

    def _put_status(self, prefix: str, plural: str, obj: dict, status: dict) -> None:
        if obj.get("status") != status:
            obj["status"] = status
            self.store.put(prefix, plural, obj, obj["metadata"].get("namespace", ""))

    def _workload_status(self, plural: str, obj: dict, nodes: list[dict]) -> dict:
        """A healthy controller's status: every replica runs as soon as one node can take the pods (Ready, not
        cordoned, taints tolerated); a DaemonSet on every Ready node whose taints it tolerates. metrics-server is
        Ready only once it scraped a kubelet (its readiness probe: "metrics-server needs at least 2 scrapes")."""
        spec, meta = obj.get("spec") or {}, obj["metadata"]
        template = spec.get("template") or {}
        tolerations = (template.get("spec") or {}).get("tolerations") or []
        generation = meta.get("generation", 1)
        if plural == "daemonsets":
            n = sum(_schedulable(node, tolerations, True) for node in nodes)
            return {"observedGeneration": generation, "desiredNumberScheduled": n, "currentNumberScheduled": n,
                    "numberReady": n, "updatedNumberScheduled": n, "numberAvailable": n, "numberMisscheduled": 0}
        want = spec.get("replicas", 1)
        runs = any(_schedulable(node, tolerations, False) for node in nodes)
        labels = meta.get("labels") or {}
        if plural == "deployments" and "metrics-server" in (meta["name"], labels.get("app.kubernetes.io/name")):
            runs = runs and bool(self.scrapable())
        ready = want if runs else 0
        if plural == "deployments":
            available = {"type": "Available", "status": "True" if ready >= want else "False",
                         "reason": "MinimumReplicasAvailable" if ready >= want else "MinimumReplicasUnavailable",
                         "message": "Deployment has minimum availability." if ready >= want
                         else "Deployment does not have minimum availability."}
            status = {"observedGeneration": generation, "replicas": want, "updatedReplicas": want,
                      "readyReplicas": ready, "availableReplicas": ready,
                      "conditions": [available, {"type": "Progressing", "status": "True",
                                                 "reason": "NewReplicaSetAvailable"}]}
            if want > ready:
                status["unavailableReplicas"] = want - ready
            return status
        revision = f"{meta['name']}-{hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]}"
        return {"observedGeneration": generation, "replicas": want, "readyReplicas": ready, "currentReplicas": want,
                "updatedReplicas": want, "availableReplicas": ready, "currentRevision": revision,
                "updateRevision": revision, "collisionCount": 0}

    def _apiservice(self, svc: dict) -> dict:
        """The aggregator's availability check: local groups always; a service-backed one when its endpoints (the
        ready pods of the workload of the service's name) exist."""
        service = (svc.get("spec") or {}).get("service")
        if not service:
            return {"type": "Available", "status": "True", "reason": "Local",
                    "message": "Local APIServices are always available"}
        ns, name = service.get("namespace", ""), service.get("name", "")
        backing = [o for plural in ("deployments", "statefulsets") if (o := self.store.get(APPS, plural, name, ns))]
        if backing and not any((o.get("status") or {}).get("readyReplicas") for o in backing):
            return {"type": "Available", "status": "False", "reason": "MissingEndpoints",
                    "message": f'endpoints for service/{name} in "{ns}" have no addresses with port name "https"'}
        return {"type": "Available", "status": "True", "reason": "Passed", "message": "all checks passed"}

    def stop(self) -> None:
        with self.lock:
            if self.server is not None:
                self.server.stop()
                self.server = None


def _utc() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _encode_release(record: dict) -> str:
    """The Secret's data value: base64 (API) of base64(gzip(json)) (Helm)."""
    inner = base64.b64encode(gzip.compress(json.dumps(record).encode()))
    return base64.b64encode(inner).decode()


def _decode_release(secret: dict) -> dict:
    raw = base64.b64decode(base64.b64decode(secret["data"]["release"]))
    return json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)


def _catalogue_release(stack: str, release: str):
    """(the catalogue Descriptor, its Release) for a stack release; (None, None) for a user chart. labctl's own
    catalogue is the truth of what a chart creates: the sim renders no chart."""
    from labctl import stacks as S

    descriptor = S.catalogue().get(stack)
    rel = next((r for r in descriptor.releases if r.release == release), None) if descriptor else None
    return (descriptor, rel) if rel is not None else (None, None)


def _provided_crds(rel) -> list[dict]:
    out = []
    for crd in rel.provides_crds:
        plural, _, group = crd.name.partition(".")
        # ProvidedCrd names no scope: by convention cluster-wide kinds are Cluster*
        scope = "Cluster" if crd.kind.startswith("Cluster") or crd.kind == "ConstraintTemplate" else "Namespaced"
        out.append(crd_object(group, crd.version, plural, crd.kind, scope))
    return out


def _chart_objects(p: dict, rel) -> list[dict]:
    """What the simulated chart renders: its CRDs when they are templates (no crds_path), and its `ready` objects,
    each with Helm's ownership labels and annotations."""
    from labctl import stacks as S

    if rel is None:
        return []
    release, namespace = p["release"], p["namespace"]
    labels = {"app.kubernetes.io/managed-by": "Helm", "helm.sh/chart": f"{p['chart']}-{p['version']}",
              "app.kubernetes.io/instance": release}
    annotations = {"meta.helm.sh/release-name": release, "meta.helm.sh/release-namespace": namespace}
    out = []
    if not p.get("crds_path"):
        for crd in _provided_crds(rel):
            crd["metadata"]["labels"] = dict(labels)
            crd["metadata"]["annotations"] = {**annotations, "helm.sh/resource-policy": "keep"}
            out.append(crd)
    ready = [S.parse_ready(e, namespace) for e in rel.ready]
    backend = next(((ns, name) for kind, ns, name in ready if kind == "Deployment"), (namespace, release))
    for kind, ns, name in ready:
        obj = _workload(kind, ns, name, labels, annotations, release, p["chart"], backend)
        if obj is not None:
            out.append(obj)
    return out


def _workload(kind: str, ns: str, name: str, labels: dict, annotations: dict, instance: str, image: str = "sim",
              backend: tuple[str, str] | None = None) -> dict | None:
    if kind == "APIService":
        version, _, group = name.partition(".")
        svc_ns, svc_name = backend or ("default", name)
        return {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
                "metadata": {"name": name, "labels": dict(labels), "annotations": dict(annotations)},
                "spec": {"group": group, "version": version, "groupPriorityMinimum": 100, "versionPriority": 100,
                         "insecureSkipTLSVerify": True,
                         "service": {"name": svc_name, "namespace": svc_ns, "port": 443}}}
    if kind not in ("Deployment", "StatefulSet", "DaemonSet"):
        return None
    selector = {"app.kubernetes.io/name": name, "app.kubernetes.io/instance": instance}
    spec: dict = {"selector": {"matchLabels": selector},
                  "template": {"metadata": {"labels": dict(selector)},
                               "spec": {"containers": [{"name": name, "image": f"sim.local/{image}:latest"}]}}}
    if kind != "DaemonSet":
        spec["replicas"] = 1
    if kind == "StatefulSet":
        spec["serviceName"] = name
    return {"apiVersion": "apps/v1", "kind": kind,
            "metadata": {"name": name, "namespace": ns, "labels": {**labels, **selector},
                         "annotations": dict(annotations)},
            "spec": spec}


def _merge_spec(current: dict, obj: dict) -> dict:
    """An update by a client that owns the object's spec (Helm's upgrade, kubectl apply of a CRD): labels and
    annotations merged, the spec replaced."""
    out = copy.deepcopy(current)
    meta = out.setdefault("metadata", {})
    for key in ("labels", "annotations"):
        if obj["metadata"].get(key):
            meta[key] = {**(meta.get(key) or {}), **obj["metadata"][key]}
    out["spec"] = copy.deepcopy(obj.get("spec"))
    return out


def _default_class(store: Store) -> str | None:
    from tests.sim.fake_kube import default_storage_class

    return default_storage_class(store)


def _tolerates(toleration: dict, taint: dict) -> bool:
    if toleration.get("effect") and toleration["effect"] != taint.get("effect"):
        return False
    if toleration.get("operator") == "Exists":
        return not toleration.get("key") or toleration["key"] == taint.get("key")
    return toleration.get("key") == taint.get("key") and toleration.get("value", "") == taint.get("value", "")


def _schedulable(node: dict, tolerations: list[dict], daemon: bool) -> bool:
    """May a pod with `tolerations` run on this Node now: Ready, not cordoned (DaemonSet pods ignore that), every
    NoSchedule/NoExecute taint tolerated."""
    ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                for c in (node.get("status") or {}).get("conditions") or [])
    spec = node.get("spec") or {}
    if not ready or (spec.get("unschedulable") and not daemon):
        return False
    for taint in spec.get("taints") or []:
        if taint.get("effect") not in ("NoSchedule", "NoExecute") or (daemon and taint.get("key") in DAEMON_TOLERATED):
            continue
        if not any(_tolerates(t, taint) for t in tolerations):
            return False
    return True


def _deployment(name: str, replicas: int) -> dict:
    return {"metadata": {"name": name, "generation": 1}, "spec": {"replicas": replicas},
            "status": {"observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas,
                       "availableReplicas": 0, "readyReplicas": 0}}


def _daemonset(name: str) -> dict:
    return {"metadata": {"name": name, "generation": 1}, "spec": {},
            "status": {"observedGeneration": 1, "desiredNumberScheduled": 0, "numberReady": 0,
                       "updatedNumberScheduled": 0}}


# ---- the provider ------------------------------------------------------------------------------------------------

class SimTartProvider(TartProvider):
    """The real TartProvider (the fake tart on PATH does the work) with the simulated world kept in step: after a
    call that can start, stop, move or delete a VM the API servers follow, and `ssh_address` names the port of the
    node's simulated SSH server (the real one says 22, which only root could bind here)."""

    POLL = 0.02  # the fake's state changes within its own 20 ms poll; the real default waits 100 ms per look

    def __init__(self, lab, state, sim: SimLab):
        super().__init__(lab, state=state)
        self.sim = sim

    def _tart(self, args, vm=None, **kwargs):
        self.sim.before_tart(args)
        return super()._tart(args, vm, **kwargs)

    def ip(self, node, wait: int = 0):
        address = super().ip(node, wait)
        self.sim.sync()  # the host learns an address only after the simulated world has it
        return address

    def start(self, node) -> bool:
        try:
            return super().start(node)
        finally:
            self.sim.sync()

    def stop(self, node, timeout: float = 60, *, guest_poweroff: bool = False) -> str:
        try:
            return super().stop(node, timeout, guest_poweroff=guest_poweroff)
        finally:
            self.sim.sync()

    def delete(self, node) -> bool:
        try:
            return super().delete(node)
        finally:
            name = node if isinstance(node, str) else node.name
            if name in self.sim.nodes and self.sim.fake.exists(name) is False:
                self.sim.nodes[name].forget_vm()
                cluster = self.sim.clusters[self.sim.nodes[name].cluster]
                if cluster.master.name == name:
                    cluster.stop()
                    cluster.reset()
            self.sim.sync()

    def ssh_address(self, node) -> tuple[str, int]:
        host, _ = super().ssh_address(node)
        return host, self.sim.ssh_port(node.name, host)


# ---- the lab -----------------------------------------------------------------------------------------------------

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
        self.calls: list[Call] = []
        self.unknown: list[str] = []
        self.rules: list[Injected] = []
        self.crash: Crash | None = None
        self.crashed_at: Call | None = None
        self.killed = False
        self._clock = int(time.time())
        self._lock = threading.RLock()
        self._banners: dict[tuple[str, str], _BannerServer] = {}
        self.nodes: dict[str, SimNode] = {}
        self.clusters: dict[str, SimCluster] = {}
        for cluster in self.model.clusters:
            members = [SimNode(self, cluster.name, n.name, n.role) for n in cluster.nodes]
            self.nodes.update({n.name: n for n in members})
            self.clusters[cluster.name] = SimCluster(self, cluster.name, members)
        self.provider = SimTartProvider(self.model, self.state, self)
        self._saved: dict[str, Any] | None = None
        self._speed_up_tart()

    def _speed_up_tart(self) -> None:
        """Serve the fake tart's short calls from one preloaded process.

        Every tart call is a new interpreter that imports the fake (~50 ms of CPU), and an install makes a few
        hundred of them. The `tart` on PATH becomes a minimal client (~15 ms) that hands its argv, environment and
        stdio to a fork server in which the fake is already imported; the forked child runs the very same
        `fake_tart.main`, so behaviour, calls.jsonl and exit codes are unchanged. `tart run` (a long-lived process
        whose PID labctl signals) and any call made while the server is down run the fake directly, as before.
        """
        import subprocess
        import tempfile

        here = str(Path(__file__).resolve().parent)
        self._tart_dir = Path(tempfile.mkdtemp(prefix="labctl-sim-"))  # short: a socket path has ~100 bytes
        sock = str(self._tart_dir / "tart.sock")
        self._tart_server = subprocess.Popen([sys.executable, "-S", "-c", _TART_SERVER, sock, here],
                                             stdin=subprocess.DEVNULL, start_new_session=True)
        self.fake.exe.write_text(_TART_CLIENT.format(python=sys.executable, sock=sock, here=here))
        wait_for(lambda: Path(sock).exists() or self._tart_server.poll() is not None, 10, "the tart fork server")

    def _stop_tart_server(self) -> None:
        import shutil

        self._tart_server.terminate()
        self._tart_server.wait(10)
        shutil.rmtree(self._tart_dir, ignore_errors=True)

    # -- wiring ----------------------------------------------------------------------------------------------------
    def overrides(self) -> dict[str, Any]:
        return {"provider": self.provider, "transport_factory": self.transport_for, "kube_factory": self.kube_for}

    def __enter__(self):
        self._saved = dict(lab_module.CONTEXT_OVERRIDES)
        lab_module.CONTEXT_OVERRIDES.clear()
        lab_module.CONTEXT_OVERRIDES.update(self.overrides())
        return self

    def __exit__(self, *exc) -> None:
        lab_module.CONTEXT_OVERRIDES.clear()
        lab_module.CONTEXT_OVERRIDES.update(self._saved or {})
        for cluster in self.clusters.values():
            cluster.stop()
        for node in self.nodes.values():
            node.unhung.set()
        for banner in self._banners.values():
            banner.shutdown()
            banner.server_close()
        self._stop_tart_server()

    def transport_for(self, ctx, node) -> SimTransport:
        """Like labctl.remote.ssh.transport_for: the address comes from the provider (waiting for the lease)."""
        if self.killed:
            raise SimKilled(node.name)
        sim = self.nodes[node.name]
        running, _, _ = sim.observe()
        if not running:
            raise TransportError(node.name, "no route to host (the VM is not running)",
                                 hint="`labctl boot` starts it")
        host, _ = ctx.provider.ssh_address(node)
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

    def sync(self) -> None:
        for cluster in self.clusters.values():
            cluster.sync()

    def ssh_port(self, node: str, address: str) -> int:
        with self._lock:
            key = (node, address)
            if key not in self._banners:
                self._banners[key] = _BannerServer(self.nodes[node], address)
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
        self.nodes[node].unhung.clear()
        self.nodes[node].hung.set()

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
            out["vms"][name] = "running" if running else ("stopped" if self.fake.exists(name) else "absent")
            if not self.fake.exists(name):
                continue
            f = node.facts
            ctd = f["containerd"]
            try:
                dump = tomllib.loads(ctd["config_dump"] or "")
            except tomllib.TOMLDecodeError:
                dump = {}
            cri = dump.get("plugins", {}).get("io.containerd.grpc.v1.cri", {})
            master = self.clusters[node.cluster].master
            out["nodes"][name] = {
                "hostname": f["hostname"],
                "machine_id_unique": machine_ids.count(f["machine_id"]) == 1,
                "swap": f["swap"]["devices"],
                "modules": sorted(m for m, on in f["modules"].items() if on),
                "modules_persisted": node._conf_lines(F.MODULES_CONF),
                "sysctl": {k: v for k, v in f["sysctl"].items()},
                "sysctl_persisted": node._conf_values(F.SYSCTL_CONF),
                "containerd": {"version": ctd["version_output"].rsplit(" ", 1)[-1] if ctd["installed"] else None,
                               "running": ctd["service"]["active"] == "active",
                               "systemd_cgroup": cri.get("containerd", {}).get("runtimes", {}).get("runc", {})
                               .get("options", {}).get("SystemdCgroup"),
                               "sandbox": cri.get("sandbox_image")},
                "crictl": node.text(F.CRICTL_YAML),
                "packages": {k: (v["version"], v["status"]) for k, v in f["packages"].items()
                             if k in F.KUBE_PACKAGES},
                "kubelet": (f["kubelet"]["active"], f["kubelet"]["enabled"]),
                "joined": node.joined,
                "control_plane": node.advertised is not None,
                "node_ip_current": node.node_ip is not None and node.node_ip == address,
                "endpoint_is_master": node.endpoint_ip() is not None and node.endpoint_ip() == master.vm_state()[1],
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
            record = _decode_release(secret)
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


# The `tart` on PATH: hand the call to the fork server, or run the fake itself (see SimLab._speed_up_tart).
_TART_CLIENT = """#!{python} -S
import _socket, array, marshal, os, sys
argv = sys.argv[1:]
if argv[:1] != ["run"]:
    try:
        s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        s.connect({sock!r})
    except OSError:
        s = None
    if s is not None:
        data = marshal.dumps((argv, dict(os.environ), os.getcwd()))
        s.sendmsg([len(data).to_bytes(4, "big") + data],
                  [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, array.array("i", [0, 1, 2]))])
        rc = b""
        while len(rc) < 4:
            chunk = s.recv(4 - len(rc))
            if not chunk:
                break
            rc += chunk
        sys.exit(int.from_bytes(rc, "big", signed=True) if len(rc) == 4 else 70)
sys.path.insert(0, {here!r})
import fake_tart
sys.exit(fake_tart.main(argv))
"""

_TART_SERVER = """
import marshal, os, signal, socket, sys, traceback
sock_path, here = sys.argv[1], sys.argv[2]
sys.path.insert(0, here)
import fake_tart
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(sock_path)
server.listen(128)
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children reap themselves; each sends its exit code back
while True:
    conn, _ = server.accept()
    if os.fork():
        conn.close()
        continue
    server.close()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    msg, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
    size = int.from_bytes(msg[:4], "big")
    while len(msg) < 4 + size:
        msg += conn.recv(1 << 20)
    argv, env, cwd = marshal.loads(msg[4:4 + size])
    for number, fd in enumerate(fds):
        os.dup2(fd, number)
        os.close(fd)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    fake_tart.LEASE_PREFIX = env.get("FAKE_TART_LEASE_PREFIX", "127.64.0")  # read at import in the fake
    try:
        rc = fake_tart.main(argv)
    except BaseException:
        traceback.print_exc()
        rc = 70
    sys.stdout.flush()
    sys.stderr.flush()
    conn.sendall(int(rc or 0).to_bytes(4, "big", signed=True))
    os._exit(0)
"""
