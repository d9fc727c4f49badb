"""One simulated VM's guest (`SimNode`): the state its facts are printed from, and the node-side effect of every
script labctl runs on it, applied by the script's id and params (the shell text is never parsed).

Facts are printed from that state as NodeFacts JSON (starting from the fresh-clone fixture). A node is a fresh clone
of the base image after create, or once its VM was deleted and made again; a reboot keeps files and resets what is
live (loaded modules, sysctls, services). The scripts that prepare the host (prepare, runtime, kubepkgs, endpoint,
shutdown) are here; those that make, change and repair its cluster (kubeadm, Helm, repair) in
tests/sim/sim_cluster_scripts.py.
"""

from __future__ import annotations

import copy
import json
import secrets
import select
import socket
import threading
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labctl.kube import endpoint_host, hosts_address
from labctl.remote import facts as F
from labctl.remote.base import Script
from tests.sim import sim_swap
from tests.sim.sim_apt import AptWorld
from tests.sim.fake_tart import read_json_settled
from tests.sim.sim_cluster_scripts import ClusterScripts, f_exists
from tests.sim.sim_haproxy import HaproxyNode
from tests.sim.sim_etcd_status import EtcdStatusNode
from tests.sim.sim_registry import RegistryNode
from tests.sim.sim_backup import BackupScripts
from tests.sim.sim_logs import LogScripts

if TYPE_CHECKING:
    from tests.sim.sim_lab import SimLab

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "facts"
FRESH = json.loads((FIXTURES / "ubuntu-24.04-fresh.json").read_text())


def _containerd_package(fixture: str, package: dict | None = None, dump_is_default: bool = False) -> dict:
    """What `apt-get install containerd` brings, from a facts fixture: the package, its `--version` line, its
    `config default`, and the effective config before labctl configures it (`config dump`)."""
    facts = json.loads((FIXTURES / f"{fixture}.json").read_text())
    ctd = facts["containerd"]
    return {"package": package or facts["packages"]["containerd"], "version_output": ctd["version_output"],
            "config_default": ctd["config_default"],
            "config_dump": ctd["config_default"] if dump_is_default else ctd["config_dump"]}


# The distribution's containerd, by what `SimLab.containerd` names. Ubuntu 24.04 installs 2.2 from noble-updates
# (issue 12): config version 3, SystemdCgroup = false in its defaults (present again since 2.2.0, containerd#12101),
# pause 3.10.1 (reference/k8s-bootstrap.md §1); the package ships no config.toml, so the effective config is the
# defaults. 1.7 (the noble release pocket) stays a variant: config version 2, cgroupfs, the old pause image.
CONTAINERD_PACKAGES = {
    "2.2": _containerd_package("containerd-2.2-ready", dump_is_default=True),
    "1.7": _containerd_package("containerd-1.7-cgroupfs", {"version": "1.7.28-0ubuntu1~24.04.1", "status": "ii "}),
}
# Where containerd reads the runc options and the sandbox image, per config version (reference/k8s-bootstrap.md §1;
# containerd docs/cri/config.md). The simulation's own table, not labctl's: a wrong path in labctl fails here as it
# would on a node. containerd 2.x migrates a version 2 file in memory (so the old paths still count there); 1.x
# refuses a version 3 file.
CONTAINERD_PATHS = {
    2: (("io.containerd.grpc.v1.cri", "containerd", "runtimes", "runc", "options"),
        ("io.containerd.grpc.v1.cri",), "sandbox_image"),
    3: (("io.containerd.cri.v1.runtime", "containerd", "runtimes", "runc", "options"),
        ("io.containerd.cri.v1.images", "pinned_images"), "sandbox"),
}


def containerd_runs_with(ctd: dict) -> dict | None:
    """What containerd runs with, from the node's containerd facts: {"systemd_cgroup", "sandbox", "cri"}; None when
    it would not start on its config (not TOML, or a config version it does not know)."""
    try:
        config = tomllib.loads(ctd["config_dump"] or "")
    except tomllib.TOMLDecodeError:
        return None
    major = int((containerd_version(ctd) or "0").split(".")[0])
    version = int(config.get("version", 1))
    if version not in CONTAINERD_PATHS or (version == 3 and major < 2):
        return None

    def dig(keys: tuple[str, ...]) -> dict:
        table = config.get("plugins", {})
        for key in keys:
            table = table.get(key, {}) if isinstance(table, dict) else {}
        return table if isinstance(table, dict) else {}

    runc, sandbox_table, sandbox_key = CONTAINERD_PATHS[version]
    disabled = config.get("disabled_plugins") or []
    return {"systemd_cgroup": dig(runc).get("SystemdCgroup"), "sandbox": dig(sandbox_table).get(sandbox_key),
            "cri": not {"cri", "io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime"} & set(disabled)}


def containerd_version(ctd: dict) -> str | None:
    """x.y.z of an installed containerd, as its CRI reports it (the third word of `containerd --version`, no v)."""
    words = (ctd.get("version_output") or "").split()
    return words[2].lstrip("v") if ctd.get("installed") and len(words) > 2 else None


def _receive(conn: socket.socket) -> bytes:
    """A byte from a connection the guest will never answer (TLS or not): b"" once the client hung up."""
    try:
        return conn.recv(1)
    except (OSError, ValueError):
        return b""


class SimNode(ClusterScripts, RegistryNode, BackupScripts, LogScripts, HaproxyNode, EtcdStatusNode):
    """One VM's guest: the state its facts are printed from, and the node-side effect of every script."""

    def __init__(self, lab: SimLab, cluster: str, name: str, role: str):
        self.lab, self.cluster, self.name, self.role = lab, cluster, name, role
        # Two locks, never held while waiting for another node's: `lock` runs one command at a time on the node,
        # `state_lock` guards catching up with its VM (asked from API server threads while commands run).
        self.lock = threading.RLock()
        self.state_lock = threading.Lock()
        self.hung = threading.Event()
        self.unhung = threading.Event()
        self.image: dict[str, Any] = FRESH  # the base image's facts its clones start from (a test may give another)
        self.apt = AptWorld()  # its apt: locks held by unattended-upgrades, a repository apt refuses
        # Requests a hung guest took and never answered (SSH banners, API requests), and how many of them came after
        # the client had given up on an earlier one: a client that waits one timeout in all asks nothing late.
        self.unanswered = self.late = 0
        self._abandoned = False
        self.fresh()

    def swallow(self, conn: socket.socket) -> None:
        """A hung guest takes a request on `conn` and never answers it (the kernel completes the TCP handshake); it
        returns when the node is unhung or the client hangs up. Counted, so that a test can tell one timeout from one
        per question without timing anything."""
        with self.state_lock:
            self.unanswered += 1
            self.late += self._abandoned
        while not self.unhung.is_set():
            readable, _, _ = select.select([conn], [], [], 0.05)
            if readable and not _receive(conn):
                with self.state_lock:
                    self._abandoned = True
                return

    def fresh(self) -> None:
        """A new clone of the base image (after create, or after its VM was deleted)."""
        self.facts: dict[str, Any] = copy.deepcopy(self.image)  # hostname "ubuntu" and the image's machine-id: shared
        self.files: dict[str, bytes] = {}  # what labctl put, by path
        self.images: list[str] = []  # pulled into containerd ahead of use (golden.bake)
        self.node_ip: str | None = None  # kubelet --node-ip (kubeadm-flags.env)
        self.advertised: str | None = None  # kube-apiserver --advertise-address (a control plane)
        # /var/lib/etcd: the id of the etcd member whose data it holds (None: empty, or moved aside), and what etcd.yaml
        # says for a first start: its --initial-cluster when --initial-cluster-state=existing (tests/sim/sim_etcd.py)
        self.etcd_data: int | None = None
        self.etcd_join: str | None = None
        self.etcd_aside: list[int] = []  # data dirs moved aside (/var/lib/etcd.removed-*): their members' ids
        self.cert_sans: list[str] = []  # the API server certificate's SANs
        self.helm: str | None = None  # the Helm version in /usr/local/bin
        # kubelet serving certificate (KubeletConfiguration serverTLSBootstrap): whether this kubelet asks for one,
        # its current CSR and the address it asks for, and the address of the certificate it got (kept on disk)
        self.serving_bootstrap = False
        self.csr_name: str | None = None
        self.csr_ip: str | None = None
        self.serving_cert_ip: str | None = None
        self.seen_boot: int | None = None
        self.haproxy_fresh()  # the local API balancer (workers of an HA cluster): tests/sim/sim_haproxy.py
        self.gone = False  # its VM was seen deleted: the next one of this name is a new clone

    # -- the VM, as the fake tart has it ---------------------------------------------------------------------
    def vm_state(self) -> tuple[bool, str | None, int]:
        """(running, address, boot count). No address while it is off: its stale lease is no address."""
        fake = self.lab.fake
        config = read_json_settled(fake.vm_dir(self.name) / "config.json")
        if config is None:
            return False, None, 0
        running = fake.running_pid(self.name) is not None
        boots = fake.boots(self.name)
        if not running:
            return False, None, boots
        leases = read_json_settled(fake.home / "fake" / "leases.json", {"leases": {}})
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
                if not self.facts["machine_id"]:  # emptied (golden.bake): systemd makes one at boot (machine-id(5))
                    self.facts["machine_id"] = secrets.token_hex(16)
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
        sim_swap.boot(f, self.lab.tick)
        ctd = f["containerd"]
        if ctd["installed"]:
            enabled = ctd["service"]["enabled"] == "enabled"
            ctd["service"] = {**ctd["service"], "active": "active" if enabled else "inactive",
                              "started_at": self.lab.tick() if enabled else None}
        self.haproxy_rebooted()
        if f["kubelet"]["enabled"] == "enabled":
            # it exits at once while swap is on (failSwapOn, reference/k8s-bootstrap.md §1): systemd restarts it
            up = self.node_ip and not f["swap"]["devices"]
            f["kubelet"] = {**f["kubelet"], "active": "active" if up else "activating",
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
        """containerd runs with a CRI, and with the cgroup driver the kubelet uses: kubeadm tells the kubelet
        systemd, but a 1.34+ kubelet on containerd 2.x takes the driver from the CRI instead
        (KubeletCgroupDriverFromCRI), so there containerd's SystemdCgroup decides and either value works
        (reference/k8s-bootstrap.md §1)."""
        ctd = self.facts["containerd"]
        if not (ctd["installed"] and ctd["service"]["active"] == "active"):
            return False
        effective = containerd_runs_with(ctd)
        if effective is None or not effective["cri"]:
            return False
        kubelet_minor = int((self.kube_installed or "0.0").split(".")[1])
        from_cri = int(containerd_version(ctd).split(".")[0]) >= 2 and kubelet_minor >= 34
        return effective["systemd_cgroup"] is True or from_cri

    def endpoint_ip(self) -> str | None:
        return hosts_address(self.text(F.HOSTS), endpoint_host(self.cluster))

    @property
    def joined(self) -> bool:
        return bool(self.facts["files"].get(F.KUBELET_CONF))

    # -- scripts (the host's here; the cluster's: ClusterScripts) ------------------------------------------------
    def execute(self, script: Script, address: str) -> tuple[int, str]:
        """Apply one script by its identity; returns (exit code, output)."""
        handler = getattr(self, "_" + script.id.replace(".", "_").replace("-", "_"), None)
        if handler is None:
            self.lab.unknown.append(script.id)
            return 127, f"sim: no model for script {script.id!r}"
        with self.lock:
            return handler(script.params, address)

    def _facts(self, p, address):
        facts = json.loads(self.facts_json(address))
        # the script prints its schema and only what its parameters name (a labctl without these asks none of it)
        facts["schema"] = p["schema"]
        for key, param in (("services", "swap_services"), ("zram_generator", "zram_generators"),
                           ("zram_config", "zram_configs")):
            if param not in p:
                facts["swap"].pop(key, None)
        return 0, json.dumps(facts)

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
        sim_swap.prepare(f, actions, p)
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
        if "install" in actions and (failed := self.apt.wait(p)):
            return failed
        if "install" in actions:
            # apt installs, enables and starts it with the package's own config (cgroupfs)
            package = CONTAINERD_PACKAGES[self.lab.containerd]
            f["packages"]["containerd"] = dict(package["package"])
            f["packages"].setdefault("runc", {"version": "1.3.3-0ubuntu1~24.04.3", "status": "ii "})
            ctd.update(installed=True, version_output=package["version_output"],
                       config_default=package["config_default"], config_dump=package["config_dump"],
                       config_dump_error="",
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
        if {"repo", "install", "hold"} & set(actions) and (failed := self.apt.wait(p)):
            return failed
        if {"repo", "install"} & set(actions) and (failed := self.apt.read_kubernetes_repo(p)):
            return failed  # nothing written: the script puts the previous source list back
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
        if "haproxy" in actions:
            self.haproxy_package_installed()
        return 0, "kubepkgs: done: " + " ".join(actions)

    def _golden_bake(self, p, address):
        """labctl image build's last script (templates/node/golden-bake.sh.j2): pulls, the marker, identity cleared."""
        ctd = self.facts["containerd"]
        if p["kubeadm_images"] and not self.kube_installed:
            return 127, "bash: line 14: kubeadm: command not found"
        if (p["kubeadm_images"] or p["images"]) and not (ctd["installed"] and ctd["service"]["active"] == "active"):
            return 1, "failed to connect: dial unix /run/containerd/containerd.sock: connect: no such file or directory"
        pulled = [f"kubeadm config images v{p['kubernetes']}"] if p["kubeadm_images"] else []
        self.images = sorted({*self.images, *pulled, *p["images"]})
        self.files[p["marker"]] = p["marker_json"].encode() + b"\n"
        self.facts["machine_id"] = ""
        return 0, "golden.bake: done"

    def _endpoint_hosts(self, p, address):
        kept = [ln for ln in self.text(p["hosts_file"]).splitlines()
                if not (ln.split()[:1] and not ln.lstrip().startswith("#")
                        and p["name"] in ln.split("#", 1)[0].split()[1:])]
        new = "\n".join(kept + [f"{p['address']} {p['name']} # labctl: API endpoint of cluster {p['cluster']}"])
        if new == self.text(p["hosts_file"]):
            return 0, "unchanged"
        self.facts["texts"][p["hosts_file"]] = new
        return 0, "changed"

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
