"""Node facts: one read-only probe script, its JSON as a pydantic model, and what the node phases read from it.

`gather(transport)` runs templates/node/facts.sh.j2 (as root: some files are root-only, but every probe tolerates
not being root) and parses the one JSON object it prints. What the script looks at is declared here, once — the
paths, modules, sysctls, packages — and passed to the template, so the phases and the script cannot drift apart.

The script ships raw text where parsing in bash would be fragile (`containerd config dump`, /etc/fstab, /etc/hosts,
apt source lines); this module parses it. containerd's TOML is read with tomllib, for both layouts:
`version = 2` (containerd 1.x) and `version = 3` (containerd 2.x).
"""

from __future__ import annotations

import configparser
import json
import re
import tomllib
from functools import lru_cache
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import LabctlError

# ---- what the script probes (single source for the script and the phases) ----------------------------------

MODULES = ("overlay", "br_netfilter")
SYSCTLS = ("net.ipv4.ip_forward", "net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables")
KUBE_PACKAGES = ("kubeadm", "kubelet", "kubectl")
# haproxy: the local API balancer on the workers of an HA cluster (labctl/kube/balancer.py)
PACKAGES = ("containerd", "containerd.io", "runc", *KUBE_PACKAGES, "kubernetes-cni", "cri-tools", "haproxy")
TOOLS = ("apt-get", "curl", "gpg", "systemctl", "hostnamectl", "modprobe", "python3", "jq")

FSTAB = "/etc/fstab"
HOSTS = "/etc/hosts"
# flock(1)ed by every labctl script that rewrites /etc/hosts (prepare's hostname line, the API endpoint's line, the
# lab registries' lines): several of them may run on one node at once, and read-modify-writes would lose lines
HOSTS_LOCK = "/run/lock/labctl-hosts.lock"
HOSTNAME_FILE = "/etc/hostname"
MODULES_CONF = "/etc/modules-load.d/k8s.conf"
SYSCTL_CONF = "/etc/sysctl.d/k8s.conf"
CLOUD_CFG_DIR = "/etc/cloud/cloud.cfg.d"
CLOUD_HOSTNAME_CFG = "/etc/cloud/cloud.cfg.d/99-labctl-hostname.cfg"
CONTAINERD_CONFIG = "/etc/containerd/config.toml"
CONTAINERD_SOCKET = "unix:///run/containerd/containerd.sock"
CRICTL_YAML = "/etc/crictl.yaml"
KUBE_LIST = "/etc/apt/sources.list.d/kubernetes.list"
KUBE_KEYRING = "/etc/apt/keyrings/kubernetes-apt-keyring.gpg"

# kubeadm's own "already done?" markers (reference/k8s-bootstrap.md §3).
ADMIN_CONF = "/etc/kubernetes/admin.conf"
KUBELET_CONF = "/etc/kubernetes/kubelet.conf"
BOOTSTRAP_KUBELET_CONF = "/etc/kubernetes/bootstrap-kubelet.conf"
KUBELET_CONFIG = "/var/lib/kubelet/config.yaml"
KUBEADM_FLAGS = "/var/lib/kubelet/kubeadm-flags.env"
MANIFESTS = tuple(
    f"/etc/kubernetes/manifests/{component}.yaml"
    for component in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd")
)
KUBEADM_FILES = (ADMIN_CONF, "/etc/kubernetes/super-admin.conf", KUBELET_CONF, BOOTSTRAP_KUBELET_CONF, KUBELET_CONFIG,
                 KUBEADM_FLAGS, "/etc/kubernetes/pki/ca.crt", *MANIFESTS)

# What turns swap on at boot besides /etc/fstab and .swap unit files: services that run `swapon` themselves, so
# masking the device's .swap unit does not stop them — zram-tools' zramswap.service (/usr/sbin/zramswap), Ubuntu's
# zram-config.service (init-zram-swapping), dphys-swapfile.service (Debian, Raspberry Pi OS) and swapspace.service
# (their Debian packages' unit files).
SWAP_SERVICES = ("zramswap.service", "zram-config.service", "dphys-swapfile.service", "swapspace.service")
# zram-generator (systemd-zram-generator): a systemd generator that makes one dev-zramN.swap unit, behind
# systemd-zram-setup@zramN.service, for every [zramN] section of its config, at every boot. Installed at
# /usr/lib/systemd/system-generators (Debian 12's package: /lib/...). A file of the same name in
# /etc/systemd/system-generators overrides it; a symlink to /dev/null masks it (systemd.generator(7)).
# Its config: the first of ZRAM_CONFIGS found, then every drop-in *.conf in ZRAM_DROPIN_DIRS (zram-generator's
# README and zram-generator.conf(5)).
ZRAM_GENERATORS = ("/usr/lib/systemd/system-generators/zram-generator", "/lib/systemd/system-generators/zram-generator")
ZRAM_GENERATOR_MASK = "/etc/systemd/system-generators/zram-generator"
ZRAM_CONFIGS = ("/run/systemd/zram-generator.conf", "/etc/systemd/zram-generator.conf",
                "/usr/local/lib/systemd/zram-generator.conf", "/usr/lib/systemd/zram-generator.conf")
ZRAM_DROPIN_DIRS = tuple(f"{path}.d" for path in ZRAM_CONFIGS)

FILES = (*KUBEADM_FILES, KUBE_KEYRING, CONTAINERD_CONFIG, CLOUD_CFG_DIR, CLOUD_HOSTNAME_CFG)
TEXTS = (FSTAB, HOSTS, HOSTNAME_FILE, MODULES_CONF, SYSCTL_CONF, CRICTL_YAML, KUBE_LIST)

SCHEMA = 2  # bumped with every change to the JSON the script prints


def probe_params() -> dict[str, Any]:
    """The facts script's parameters: everything it looks at, named here."""
    return {
        "schema": SCHEMA,
        "modules": list(MODULES),
        "sysctls": list(SYSCTLS),
        "packages": list(PACKAGES),
        "tools": list(TOOLS),
        "files": list(FILES),
        "texts": list(TEXTS),
        "containerd_config": CONTAINERD_CONFIG,
        "swap_services": list(SWAP_SERVICES),
        "zram_configs": [*ZRAM_CONFIGS, *ZRAM_DROPIN_DIRS],
        "zram_generators": list(ZRAM_GENERATORS),
        "zram_generator_mask": ZRAM_GENERATOR_MASK,
    }


# ---- the model -------------------------------------------------------------------------------------------------

class _Facts(BaseModel):
    # The script and this model ship together: an unknown field is a bug in one of them, never silently dropped.
    model_config = ConfigDict(extra="forbid", frozen=True)


class OSRelease(_Facts):
    id: str = ""
    version_id: str = ""
    codename: str = ""
    pretty_name: str = ""


class Service(_Facts):
    """`systemctl is-active` / `is-enabled` words as printed ("" when systemd could not be asked)."""

    active: str = ""
    enabled: str = ""
    started_at: int | None = None  # epoch seconds of the last start (ActiveEnterTimestamp)

    @property
    def running(self) -> bool:
        return self.active == "active"

    @property
    def is_enabled(self) -> bool:
        return self.enabled in ("enabled", "enabled-runtime")


class SwapUnit(_Facts):
    unit: str
    load: str = ""
    active: str = ""


class Swap(_Facts):
    devices: list[str] = Field(default_factory=list, description="active swap, from /proc/swaps")
    units: list[SwapUnit] = Field(default_factory=list, description="swap units systemd has loaded")
    unit_files: dict[str, str] = Field(default_factory=dict, description="swap unit files and their state")
    services: dict[str, Service] = Field(default_factory=dict, description="SWAP_SERVICES that are installed")
    zram_generator: str = Field("", description='"installed", "masked" (ZRAM_GENERATOR_MASK exists) or ""')
    zram_config: dict[str, str] = Field(default_factory=dict,
                                        description="zram-generator's config files and drop-ins: path → text")


class Containerd(_Facts):
    installed: bool = False
    version_output: str = ""
    service: Service = Field(default_factory=Service)
    config_mtime: int | None = None
    config_dump: str | None = None  # `containerd config dump`: the effective config (file + imports + defaults)
    config_dump_error: str = ""
    config_default: str | None = None  # `containerd config default`: what the runtime phase edits

    @property
    def version(self) -> tuple[int, int, int] | None:
        return parse_version(self.version_output)

    @property
    def effective(self) -> dict[str, Any] | None:
        """The dump as TOML data (do not modify it: it is shared); None when there is none or it does not parse."""
        return _toml(self.config_dump) if self.config_dump else None


class Package(_Facts):
    version: str
    status: str  # dpkg's db:Status-Abbrev: want, status, error flag (e.g. "ii ", "hi ", "rc ")

    @property
    def installed(self) -> bool:
        return len(self.status) > 1 and self.status[1] == "i"

    @property
    def held(self) -> bool:
        # `apt-mark hold` is dpkg's selection state "hold": the want flag `h`.
        return self.status[:1] == "h"

    @property
    def upstream(self) -> str:
        """"1.35.6-1.1" → "1.35.6" (epoch and Debian revision dropped)."""
        return self.version.split(":", 1)[-1].rsplit("-", 1)[0]


class AptLine(_Facts):
    file: str
    line: str


class Interface(_Facts):
    name: str
    mac: str = ""
    ipv4: list[str] = Field(default_factory=list, description="address/prefix")


class Memory(_Facts):
    total_kb: int | None = None
    available_kb: int | None = None


class Disk(_Facts):
    total_kb: int | None = None
    available_kb: int | None = None


class NodeFacts(_Facts):
    schema_: int = Field(alias="schema")
    uid: int | None = None
    os: OSRelease = Field(default_factory=OSRelease)
    arch: str = ""
    dpkg_arch: str = ""
    kernel: str = ""
    hostname: str = ""
    machine_id: str = ""
    product_uuid: str | None = None
    boot_id: str = ""
    uptime_seconds: float | None = None
    swap: Swap = Field(default_factory=Swap)
    modules: dict[str, bool] = Field(default_factory=dict)
    sysctl: dict[str, str | None] = Field(default_factory=dict)
    containerd: Containerd = Field(default_factory=Containerd)
    packages: dict[str, Package] = Field(default_factory=dict)
    kubelet: Service = Field(default_factory=Service)
    apt_k8s_sources: list[AptLine] = Field(default_factory=list)
    files: dict[str, bool] = Field(default_factory=dict)
    texts: dict[str, str | None] = Field(default_factory=dict)
    tools: dict[str, bool] = Field(default_factory=dict)
    interfaces: list[Interface] = Field(default_factory=list)
    cpus: int | None = None
    memory: Memory = Field(default_factory=Memory)
    disk: Disk = Field(default_factory=Disk)
    load: list[float] = Field(default_factory=list, description="1, 5 and 15 minute load averages")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    # -- parsing -------------------------------------------------------------------------------------------
    @classmethod
    def parse(cls, output: str, node: str = "?") -> NodeFacts:
        """The script's stdout → NodeFacts, or a FactsError naming the node and showing what came back."""
        text = output.strip()
        data: Any = None
        try:
            data = json.loads(text)
        except ValueError:
            # Something (a login banner, a warning) may precede the object: the object is the last line.
            last = text.rsplit("\n", 1)[-1].strip()
            try:
                data = json.loads(last)
            except ValueError as exc:
                raise FactsError(node, f"the facts script printed no valid JSON ({exc})", output) from None
        if not isinstance(data, dict):
            raise FactsError(node, "the facts script printed JSON that is not an object", output)
        if data.get("schema") != SCHEMA:
            raise FactsError(node, f"facts schema {data.get('schema')!r}, expected {SCHEMA} (a stale script?)", output)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
            raise FactsError(node, f"the facts do not match the expected shape: {problems}", output) from None

    # -- files ---------------------------------------------------------------------------------------------
    def exists(self, path: str) -> bool:
        return self.files.get(path, False)

    def text(self, path: str) -> str | None:
        return self.texts.get(path)

    # -- swap ----------------------------------------------------------------------------------------------
    @property
    def fstab_swap(self) -> list[str]:
        """Active (uncommented) swap entries in /etc/fstab: the swap comes back at boot while these exist."""
        out = []
        for line in (self.text(FSTAB) or "").splitlines():
            fields = line.split()
            if len(fields) >= 3 and not fields[0].startswith("#") and fields[2] == "swap":
                out.append(fields[0])
        return out

    @property
    def swap_units_to_mask(self) -> list[str]:
        """Swap units that are on now or would start at boot, and are not masked yet."""
        units = {u.unit for u in self.swap.units if u.active == "active" and u.load != "masked"}
        units |= {name for name, state in self.swap.unit_files.items() if state in ("enabled", "enabled-runtime")}
        return sorted(units)

    @property
    def swap_services_to_disable(self) -> list[str]:
        """SWAP_SERVICES that run now or would start at boot, and are not masked yet: each turns swap on by itself."""
        return sorted(unit for unit, s in self.swap.services.items()
                      if s.enabled not in OFF_STATES and (s.running or s.enabled not in ("", "disabled")))

    @property
    def zram_generator_devices(self) -> list[str]:
        """The zram swap devices ("zram0") zram-generator makes at every boot: the [zramN] sections of its config
        that are not file systems (no mount-point), while the generator is installed and not masked."""
        if self.swap.zram_generator != "installed":
            return []
        config = self.swap.zram_config
        texts = [next((config[p] for p in ZRAM_CONFIGS if p in config), "")]
        # drop-ins override the main file, in the order of their file names across the directories
        dropins = sorted((p for p in config if p not in ZRAM_CONFIGS), key=lambda p: p.rsplit("/", 1)[-1])
        texts += [config[p] for p in dropins]
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        for text in texts:
            try:
                parser.read_string(text)
            except configparser.Error:
                continue  # zram-generator refuses an unreadable file too
        return [name for name in parser.sections() if re.fullmatch(r"zram\d+", name)
                and "mount-point" not in parser[name]]

    @property
    def swap_at_boot(self) -> list[str]:
        """Everything that turns swap on at the next boot, as "what (source)"; empty when swap stays off."""
        out = [f"{device} ({FSTAB})" for device in self.fstab_swap]
        out += [f"{unit} (swap unit {state})" for unit, state in sorted(self.swap.unit_files.items())
                if state in ("enabled", "enabled-runtime")]
        out += [f"{unit} (service, runs swapon itself)" for unit in self.swap_services_to_disable]
        out += [f"/dev/{device} (zram-generator)" for device in self.zram_generator_devices]
        return out

    # -- names ---------------------------------------------------------------------------------------------
    @property
    def static_hostname(self) -> str:
        return (self.text(HOSTNAME_FILE) or "").strip()

    def hosts_resolves(self, name: str) -> bool:
        """Does /etc/hosts map `name` to some address (so the node resolves its own name without DNS)?"""
        for line in (self.text(HOSTS) or "").splitlines():
            fields = line.split("#", 1)[0].split()
            if len(fields) >= 2 and name in fields[1:]:
                return True
        return False

    # -- config files written as `key = value` / `key: value` lines ----------------------------------------
    def conf_values(self, path: str, sep: str = "=") -> dict[str, str]:
        out = {}
        for line in (self.text(path) or "").splitlines():
            line = line.strip()
            if not line or line.startswith(("#", ";")) or sep not in line:
                continue
            key, _, value = line.partition(sep)
            out[key.strip()] = value.strip().strip("\"'")
        return out

    def conf_lines(self, path: str) -> list[str]:
        lines = (line.strip() for line in (self.text(path) or "").splitlines())
        return [line for line in lines if line and not line.startswith("#")]

    # -- containerd ----------------------------------------------------------------------------------------
    @property
    def containerd_version(self) -> str | None:
        v = self.containerd.version
        return ".".join(map(str, v)) if v else None

    @property
    def containerd_layout(self) -> int | None:
        """The effective config's `version` (2 = containerd 1.x paths, 3 = 2.x paths)."""
        cfg = self.containerd.effective
        if cfg is None:
            return None
        try:
            return int(cfg.get("version", 1))  # no `version` key means the original (1) layout
        except (TypeError, ValueError):
            return None

    @property
    def containerd_runc_options(self) -> dict[str, Any] | None:
        """The runc runtime's options table of the effective config ({} when absent); None = no usable dump."""
        cfg = self.containerd.effective
        layout = CONTAINERD_LAYOUTS.get(self.containerd_layout or 0)
        if cfg is None or layout is None:
            return None
        options = _dig(cfg, layout.runc_options)
        return options if isinstance(options, dict) else {}

    @property
    def containerd_systemd_cgroup(self) -> bool | None:
        """SystemdCgroup of the runc runtime as containerd will use it; False when the key is absent (that is
        containerd's default, and what 2.0.0–2.0.6 / 2.1.0–2.1.4 leave out of `config default`). None = no dump."""
        options = self.containerd_runc_options
        return None if options is None else options.get("SystemdCgroup", False) is True

    @property
    def sandbox_image(self) -> str | None:
        cfg = self.containerd.effective
        layout = CONTAINERD_LAYOUTS.get(self.containerd_layout or 0)
        if cfg is None or layout is None:
            return None
        table = _dig(cfg, layout.sandbox_table)
        value = table.get(layout.sandbox_key) if isinstance(table, dict) else None
        return value if isinstance(value, str) else None

    @property
    def containerd_config_path(self) -> str | None:
        """The registry `config_path` of the effective config as `config dump` shows it ("" when empty or absent;
        None = no usable dump). Empty means containerd 1.x ignores every hosts.toml; 2.x on Linux then falls back to
        /etc/containerd/certs.d:/etc/docker/certs.d at start (containerd plugins/cri/images/plugin.go), which the
        dump does not show."""
        cfg = self.containerd.effective
        layout = CONTAINERD_LAYOUTS.get(self.containerd_layout or 0)
        if cfg is None or layout is None:
            return None
        table = _dig(cfg, layout.registry_table)
        value = table.get("config_path") if isinstance(table, dict) else None
        return value if isinstance(value, str) else ""

    @property
    def cri_disabled(self) -> bool:
        """Docker's containerd.io ships `disabled_plugins = ["cri"]`: then there is no CRI for the kubelet."""
        cfg = self.containerd.effective or {}
        disabled = cfg.get("disabled_plugins") or []
        return any(p in ("cri", "io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime") for p in disabled)

    @property
    def containerd_config_stale(self) -> bool:
        """The config file changed after containerd last started: the running daemon does not use it yet."""
        started, mtime = self.containerd.service.started_at, self.containerd.config_mtime
        return self.containerd.service.running and started is not None and mtime is not None and mtime > started

    # -- Kubernetes packages -------------------------------------------------------------------------------
    @property
    def kube_versions(self) -> dict[str, str | None]:
        """kubeadm/kubelet/kubectl → installed upstream version ("1.35.6"), None when not installed."""
        out: dict[str, str | None] = {}
        for name in KUBE_PACKAGES:
            pkg = self.packages.get(name)
            out[name] = pkg.upstream if pkg is not None and pkg.installed else None
        return out

    @property
    def held(self) -> set[str]:
        return {name for name, pkg in self.packages.items() if pkg.held}

    @property
    def k8s_repo_minor(self) -> str | None:
        """The minor ("1.35") of the pkgs.k8s.io repository in kubernetes.list, None when there is none."""
        for line in self.conf_lines(KUBE_LIST):
            m = K8S_REPO.search(line)
            if m:
                return m.group(1)
        return None

    # -- kubeadm state -------------------------------------------------------------------------------------
    @property
    def kubeadm_ran(self) -> bool:
        """kubeadm init or join has run here: the node belongs to a cluster (or a half-made one)."""
        return any(self.exists(p) for p in (KUBELET_CONF, BOOTSTRAP_KUBELET_CONF, ADMIN_CONF, *MANIFESTS))

    @property
    def control_plane_initialised(self) -> bool:
        return self.exists(MANIFESTS[0]) and self.exists(ADMIN_CONF)

    @property
    def joined(self) -> bool:
        return self.exists(KUBELET_CONF) and self.exists(KUBELET_CONFIG)

    # -- addresses -----------------------------------------------------------------------------------------
    @property
    def ipv4(self) -> dict[str, list[str]]:
        """Interface → IPv4 addresses (without prefix), loopback left out."""
        return {i.name: [a.split("/")[0] for a in i.ipv4] for i in self.interfaces if i.name != "lo" and i.ipv4}


class ContainerdLayout(NamedTuple):
    runc_options: tuple[str, ...]
    sandbox_table: tuple[str, ...]
    sandbox_key: str
    registry_table: tuple[str, ...]  # holds `config_path`, the directory of the registries' hosts.toml files


# Where the settings live in each config layout (reference/k8s-bootstrap.md §1; containerd docs/cri/config.md; the
# registry table: containerd docs/hosts.md, "CRI": 1.x `plugins."io.containerd.grpc.v1.cri".registry`, 2.x
# `plugins."io.containerd.cri.v1.images".registry`).
CONTAINERD_LAYOUTS = {
    2: ContainerdLayout(
        ("plugins", "io.containerd.grpc.v1.cri", "containerd", "runtimes", "runc", "options"),
        ("plugins", "io.containerd.grpc.v1.cri"),
        "sandbox_image",
        ("plugins", "io.containerd.grpc.v1.cri", "registry"),
    ),
    3: ContainerdLayout(
        ("plugins", "io.containerd.cri.v1.runtime", "containerd", "runtimes", "runc", "options"),
        ("plugins", "io.containerd.cri.v1.images", "pinned_images"),
        "sandbox",
        ("plugins", "io.containerd.cri.v1.images", "registry"),
    ),
}

# `systemctl is-enabled` words of a unit that cannot start (systemctl(1)); "" when it is not installed.
OFF_STATES = ("masked", "masked-runtime", "not-found", "bad")

K8S_REPO = re.compile(r"pkgs\.k8s\.io/core:/stable:/v(\d+\.\d+)/deb")
_VERSION = re.compile(r"(?<![\d.])v?(\d+)\.(\d+)\.(\d+)")


def parse_version(text: str) -> tuple[int, int, int] | None:
    """The first x.y.z in a --version line: "containerd github.com/containerd/containerd 1.7.28 …" → (1, 7, 28)."""
    m = _VERSION.search(text or "")
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


# Parsed once per distinct text, not once per property access. Not cached_property: pydantic's model_copy
# would carry a cached value over to a copy whose dump differs.
@lru_cache(maxsize=64)
def _toml(text: str) -> dict[str, Any] | None:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return None


def _dig(data: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


# ---- what node phases derive from facts ---------------------------------------------------------------------

class Action(NamedTuple):
    """One thing a node phase will do: its name (the switch in the node script) and why (what differs)."""

    name: str
    why: str


def describe(actions: list[Action]) -> str:
    return "; ".join(a.why for a in actions)


# ---- gathering ---------------------------------------------------------------------------------------------

class FactsError(LabctlError):
    """The facts script's output could not be understood."""

    TAIL = 15

    def __init__(self, node: str, problem: str, output: str):
        tail = "\n".join(output.rstrip().splitlines()[-self.TAIL :]) or "(no output)"
        # Long lines (one-line JSON) are cut: the point is to show what came back, not all of it.
        tail = "\n".join(line if len(line) <= 400 else line[:400] + " …" for line in tail.splitlines())
        self.node = node
        super().__init__(
            f"{node}: {problem}\n" + "\n".join("    " + line for line in tail.splitlines()),
            hint="run the facts script by hand on the node (`labctl` logs it under .labctl/logs/) and check its output",
        )


FACTS_TIMEOUT = 90.0  # containerd config dump/default and apt-free probes only; seconds on a slow first boot


def gather(transport) -> NodeFacts:
    """Run the read-only facts script on the node (sudo) and parse what it prints."""
    from ..render import script

    probe = script("facts", "node/facts.sh.j2", **probe_params())
    result = transport.run(probe, sudo=True, timeout=FACTS_TIMEOUT)
    return NodeFacts.parse(result.stdout, node=getattr(transport, "node", "?"))
