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
import threading
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labctl.kube import endpoint_host, hosts_address
from labctl.remote import facts as F
from labctl.remote.base import Script
from tests.sim.fake_tart import read_json
from tests.sim.sim_cluster_scripts import ClusterScripts, f_exists

if TYPE_CHECKING:
    from tests.sim.sim_lab import SimLab

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "facts"
FRESH = json.loads((FIXTURES / "ubuntu-24.04-fresh.json").read_text())
# What Ubuntu 24.04's containerd 1.7 package brings: its `config default`, and the effective config before labctl
# configures it (cgroupfs, the old pause image).
_CONTAINERD = json.loads((FIXTURES / "containerd-1.7-cgroupfs.json").read_text())["containerd"]
CONTAINERD_VERSION_OUTPUT = _CONTAINERD["version_output"]
CONTAINERD_DEFAULT = _CONTAINERD["config_default"]
CONTAINERD_DUMP = _CONTAINERD["config_dump"]
CONTAINERD_PACKAGE = {"version": "1.7.28-0ubuntu1~24.04.1", "status": "ii "}


class SimNode(ClusterScripts):
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
