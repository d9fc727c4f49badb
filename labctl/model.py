"""clusters.json as pydantic models: defaults beside each field, strict decoding, every problem at once.

The predecessor's file format loads unchanged: every field added since then is optional with a default.
Loading is `load(path)`: JSON syntax (config_json.py) → field validation (pydantic, here) → whole-lab checks (names,
CIDRs, roles, stacks: validation.py). Problems from both passes are reported together, each with its JSON path.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, StrictInt, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from . import catalog, config_json
from .config_json import SHOW_MAX, show
from .errors import ConfigError, Problem

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)\Z")
LABEL_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
# ASCII digits only: `\d` also matches other scripts' digits (e.g. Arabic-Indic), which no tool downloads by.
VERSION = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+\Z")
# useradd(8): a user name is at most 32 characters; this is the portable set (POSIX 3.437) adduser accepts.
USER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}\Z")
# Tart's argument types (cirruslabs/tart Sources/tart/Commands): `set --cpu` and `--disk-size` are UInt16,
# `set --memory` is a UInt64 of MiB that Tart multiplies by 2^20, `ip --wait` is UInt16. A bigger number makes
# tart exit with a parse error (or overflow) mid-install, so it is a validation error here.
TART_UINT16_MAX = 2**16 - 1
TART_MEMORY_MAX_MIB = (2**64 - 1) // 2**20


class Strict(BaseModel):
    # Unknown fields are errors (a typo must never be silently ignored); see validation.field_problems() for the suggestion.
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*")
    @classmethod
    def _printable(cls, value: Any) -> Any:
        """No control character (NUL, newline, …) in a string field or a list of them: each ends up in an argv, a
        file name or a script, where it truncates or splits the value. (Helm `values` are dicts and not checked.)"""
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and any(ord(c) < 32 or ord(c) == 127 for c in item):
                raise ValueError(f"{show(item)} contains a control character (a NUL, newline or tab); remove it")
        return value


def dns_label(value: str, max_len: int) -> str:
    """`value` if it is a DNS-1123 label of at most `max_len` characters; ValueError saying why not."""
    if len(value) > max_len:
        raise ValueError(f"{show(value)} is longer than {max_len} characters")
    if not DNS_LABEL.match(value):
        raise ValueError(
            f"{show(value)} is not a DNS-1123 label: use lowercase letters, digits and '-', starting and ending "
            "with a letter or digit"
        )
    return value


def _ipv4_cidr(value: str) -> str:
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        why = str(exc).replace(value, "it") if len(value) <= SHOW_MAX else "not an address/prefix"
        raise ValueError(f"{show(value)} is not a valid CIDR ({why}); write it like 10.10.0.0/16") from None
    if net.version != 4:
        raise ValueError(f"{show(value)} is IPv6; labctl labs are IPv4")
    return value


def _label_key(key: str, what: str = "label key") -> str:
    """A Kubernetes qualified name, optionally prefixed by a DNS subdomain (apimachinery IsQualifiedName)."""
    prefix, _, name = key.rpartition("/")
    if (prefix and (len(prefix) > 253 or not LABEL_PREFIX.match(prefix))) or len(name) > 63 or not (
        LABEL_NAME.match(name)
    ):
        raise ValueError(f"{what} {show(key)} is not a valid Kubernetes {what} ([prefix/]name, name ≤63 of "
                         "[A-Za-z0-9._-], alphanumeric at both ends)")
    return key


def _label_value(key: str, value: str, what: str = "label") -> str:
    """Empty, or ≤63 of [A-Za-z0-9._-] with an alphanumeric at both ends (apimachinery IsValidLabelValue)."""
    if value and (len(value) > 63 or not LABEL_NAME.match(value)):
        raise ValueError(f"{what} {show(key)}={show(value)}: values are ≤63 of [A-Za-z0-9._-], alphanumeric at "
                         "both ends")
    return value


class Taint(Strict):
    key: str
    value: str = ""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] = "NoSchedule"

    # a taint's key and value follow the label rules (Kubernetes validateTaints)
    _key = field_validator("key")(lambda v: _label_key(v, "taint key"))

    @field_validator("value")
    @classmethod
    def _value(cls, v: str, info: ValidationInfo) -> str:
        return _label_value(info.data.get("key", ""), v, "taint")


class Node(Strict):
    name: str = Field(description="VM name and Kubernetes node name; unique across the whole lab")
    role: Literal["master", "worker"] = Field(description="`master` runs the control plane")
    # None only on a static node (a machine labctl does not size); validation.static_problems requires them on a VM
    cpu: StrictInt | None = Field(default=None, gt=0, le=TART_UINT16_MAX,
                                  description="vCPUs (may be overcommitted across the lab); required for a VM")
    memory: StrictInt | None = Field(default=None, gt=0, le=TART_MEMORY_MAX_MIB,
                                     description="memory in MiB (never overcommitted across the lab); required for a VM")
    disk: StrictInt = Field(
        default=catalog.IMAGE_DISK_GB,
        ge=catalog.IMAGE_DISK_GB,
        le=TART_UINT16_MAX,
        description="disk in GB; Tart disks only grow, and the image's is 20 GB",
    )
    labels: dict[str, str] = Field(default_factory=dict, description="Kubernetes node labels")
    taints: list[Taint] = Field(default_factory=list, description="Kubernetes node taints")
    provider: Literal["static"] | None = Field(
        default=None, description="`static`: an existing machine labctl reaches over SSH at `address` and never "
        "creates, resizes, powers off or deletes (docs/byo-nodes.md); default: a VM of the lab's provider")
    address: str | None = Field(default=None, description="static node: the machine's IPv4 address or DNS name")
    ssh_user: str | None = Field(default=None, description="static node: its SSH user (default: the lab's ssh_user)")
    ssh_port: StrictInt | None = Field(default=None, ge=1, le=65535, description="static node: its SSH port (default 22)")
    ssh_key: str | None = Field(default=None, description="static node: first-contact private key file (default: the "
                                "lab's ssh_key, else its ssh_password)")

    _name = field_validator("name")(lambda v: dns_label(v, 63))

    @property
    def static(self) -> bool:
        """An existing machine (provider "static"), not a VM labctl creates."""
        return self.provider == "static"

    @field_validator("ssh_user")
    @classmethod
    def _node_user(cls, v: str | None) -> str | None:
        if v is not None and not USER_NAME.match(v):
            raise ValueError(f"{show(v)} is not a user name: ≤32 of [A-Za-z0-9_.-], not starting with '-', '.' or "
                             "a digit")
        return v

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: dict[str, str]) -> dict[str, str]:
        for key, value in labels.items():
            _label_key(key)
            _label_value(key, value)
        return labels


class CiliumSettings(Strict):
    hubble: bool = Field(default=True, description="Hubble relay and UI")
    hubble_ui_node_port: StrictInt = Field(default=31235, ge=30000, le=32767)
    cluster_id: StrictInt | None = Field(
        default=None, ge=1, le=255, description="ClusterMesh id; default: the cluster's position (1-based)"
    )


class StackSpec(Strict):
    """One entry of a cluster's `stacks` written as an object (a plain string is the same with only `name`)."""

    name: str = Field(description="a catalogue stack, or the name of your own stack (a DNS-1123 label)")
    values: dict[str, Any] = Field(
        default_factory=dict, description="Helm values deep-merged over labctl's (catalogue stacks) or given to the "
        "chart (user chart stacks); for a catalogue stack with several releases, key them by release name")
    chart: str | None = Field(default=None, description="user chart stack: the chart's name in `repo`")
    repo: str | None = Field(default=None, description="user chart stack: https:// Helm repository or oci:// registry")
    version: str | None = Field(default=None, description="user chart stack: the exact chart version (required)")
    release: str | None = Field(default=None, description="user chart stack: the release name (default: name)")
    namespace: str | None = Field(default=None, description="user stacks: the namespace (default: name)")
    manifests: str | None = Field(
        default=None, description="user manifests stack: a folder of YAML files, relative to clusters.json, applied "
        "server-side")
    requires: list[str] = Field(default_factory=list, description="stacks of this cluster to install first")

    _name = field_validator("name")(lambda v: dns_label(v, 53))


class Cluster(Strict):
    name: str = Field(description="DNS-1123 label, ≤32 characters (Cilium's cluster.name limit)")
    pod_cidr: str = Field(description="pod network; must not overlap any other cluster's pod or service CIDR")
    service_cidr: str = Field(description="service network; /12 or smaller (kube-apiserver limit)")
    nodes: list[Node] = Field(min_length=1)
    stacks: list[str | StackSpec] = Field(
        default_factory=list,
        description="stacks to install on this cluster: a catalogue name, or an object (a catalogue stack with "
        "`values`, a user chart, or a user manifests folder); see docs/stacks.md",
    )
    cilium: CiliumSettings = Field(default_factory=CiliumSettings)

    _name = field_validator("name")(lambda v: dns_label(v, 32))
    _cidrs = field_validator("pod_cidr", "service_cidr")(_ipv4_cidr)

    @property
    def stack_specs(self) -> list[StackSpec]:
        """Every declared stack as a StackSpec (a plain name is a catalogue stack without overrides)."""
        return [StackSpec(name=s) if isinstance(s, str) else s for s in self.stacks]

    @property
    def stack_names(self) -> list[str]:
        return [s.name for s in self.stack_specs]

    def stack(self, name: str) -> StackSpec:
        for spec in self.stack_specs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    @property
    def masters(self) -> list[Node]:
        return [n for n in self.nodes if n.role == "master"]

    @property
    def workers(self) -> list[Node]:
        return [n for n in self.nodes if n.role == "worker"]


class Versions(Strict):
    kubernetes: str = Field(default=catalog.DEFAULT_KUBERNETES, description="exact Kubernetes version (x.y.z)")
    containerd: str = Field(default=catalog.DEFAULT_CONTAINERD, description="lowest containerd version accepted")
    cilium: str = Field(default=catalog.DEFAULT_CILIUM, description="Cilium Helm chart version")
    helm: str = Field(default=catalog.DEFAULT_HELM, description="Helm version installed on control planes")

    @field_validator("kubernetes", "containerd", "cilium", "helm")
    @classmethod
    def _semver(cls, v: str) -> str:
        if not VERSION.match(v):
            raise ValueError(f"{show(v)} is not an exact version like 1.35.6")
        return v

    @field_validator("kubernetes")
    @classmethod
    def _known_minor(cls, v: str) -> str:
        """Minors older than the catalogue's are refused (end of life, and kubeadm's v1beta4 config that labctl
        renders needs 1.31+); newer ones are accepted with a warning (see warnings())."""
        major, minor = (int(part) for part in v.split(".")[:2])
        oldest = min(catalog.KUBERNETES_MINORS)
        supported = f"labctl supports Kubernetes 1.{oldest} and newer (kubeadm v1beta4); the default is " \
                    f"{catalog.DEFAULT_KUBERNETES}"
        if major != 1:
            raise ValueError(f"{v!r}: {supported}")
        if minor < oldest:
            eol = catalog.KUBERNETES_EOL_BEFORE_CATALOGUE.get(minor)
            when = f"on {eol}" if eol else f"before {min(catalog.KUBERNETES_EOL_BEFORE_CATALOGUE.values())}"
            raise ValueError(f"{v!r}: Kubernetes 1.{minor} reached end of life {when}; {supported}")
        return v


class TartSettings(Strict):
    network: Literal["shared", "softnet", "bridged"] = Field(
        default="shared", description="shared NAT (default), softnet (isolated), or bridged to `bridge_interface`"
    )
    bridge_interface: str | None = Field(default=None, description="host interface for `bridged`, e.g. en0")
    softnet_allow: list[str] = Field(default_factory=list, description="CIDRs softnet lets the VMs reach")
    ip_resolver: Literal["dhcp", "arp", "agent"] = "dhcp"
    ip_wait_seconds: StrictInt = Field(default=120, ge=0, le=TART_UINT16_MAX,
                                       description="how long `tart ip --wait` waits for a lease")

    @field_validator("softnet_allow")
    @classmethod
    def _allow(cls, cidrs: list[str]) -> list[str]:
        return [_ipv4_cidr(c) for c in cidrs]

    @model_validator(mode="after")
    def _bridge(self) -> TartSettings:
        if self.network == "bridged" and not self.bridge_interface:
            raise ValueError("network 'bridged' needs bridge_interface (the Mac's interface, e.g. en0)")
        return self


class QemuSettings(Strict):
    accel: Literal["auto", "kvm", "tcg"] = Field(
        default="auto",
        description="auto: KVM when it works (probed with a short boot), else TCG; LABCTL_QEMU_ACCEL overrides it",
    )
    kernel: str | None = Field(
        default=None, description="boot this kernel directly (-kernel) instead of the disk's bootloader; "
        "relative paths are beside clusters.json")
    initrd: str | None = Field(default=None, description="initrd for `kernel`")
    append: str | None = Field(
        default=None,
        description="kernel command line for `kernel` (default: 'root=/dev/vda rw console=ttyS0 net.ifnames=0')")
    cloud_init: bool = Field(
        default=True, description="attach a NoCloud seed (user, password, SSH keys, hostname) for cloud images")
    ssh_port_base: StrictInt = Field(
        default=10022, ge=1024, le=65000, description="first 127.0.0.1 port forwarded to a VM's SSH (one per VM)")
    network: Literal["user", "bridge", "lab"] = Field(
        default="user",
        description="user: every VM alone behind QEMU's NAT, reached through its forwarded SSH port (the node phases "
        "run, but no cluster forms); lab: also a NIC on a segment all the lab's VMs share (QEMU multicast on the "
        "host's loopback: no root, no bridge) with a static address from `lab_subnet`, the API and NodePorts "
        "forwarded to 127.0.0.1; bridge: also a NIC on `bridge`, where the VMs reach each other and get their "
        "addresses from its DHCP server. Fixed when the VM is created")
    lab_subnet: str = Field(
        default="10.213.0.0/24",
        description="network lab: the VMs' addresses on the lab segment, one per VM given at create (must not "
        "overlap a pod or service CIDR, nor 10.0.2.0/24 where QEMU's user-mode NIC lives)")
    bridge: str = Field(
        default="virbr0", pattern=r"^[A-Za-z0-9_.-]{1,15}$",
        description="host bridge for network bridge, attached through qemu-bridge-helper (/etc/qemu/bridge.conf "
        "must allow it); libvirt's default network is virbr0")
    leases: str | None = Field(
        default=None, description="the bridge's DHCP leases, where labctl finds each VM's address by its MAC: "
        "libvirt's <bridge>.status or a dnsmasq leases file (default: /var/lib/libvirt/dnsmasq/<bridge>.status)")
    ip_wait_seconds: StrictInt = Field(
        default=180, ge=0, le=TART_UINT16_MAX,  # the same bound as Tart's, ~18 hours
        description="network bridge: how long to wait for a started VM's DHCP lease")
    ssh_wait_seconds: StrictInt | None = Field(
        default=None, ge=1, le=TART_UINT16_MAX,
        description="how long to wait for a booting VM's sshd (default: 300 under KVM, 1200 under TCG, which is "
        "several times slower); LABCTL_SSH_WAIT overrides it")
    image_checksums: str | None = Field(
        default=None, pattern=r"^https?://",
        description="base_image given by URL: the URL of the publisher's SHA-256 checksum file it is verified "
        "against (default: SHA256SUMS in the image's directory)")

    @model_validator(mode="after")
    def _kernel_options(self) -> QemuSettings:
        for field in ("initrd", "append"):
            if getattr(self, field) is not None and self.kernel is None:
                raise ValueError(f"{field} only applies with kernel (a direct kernel boot); set kernel too")
        if self.leases is not None and self.network != "bridge":
            raise ValueError("leases only applies with network bridge")
        return self

    @field_validator("lab_subnet")
    @classmethod
    def _lab_subnet(cls, value: str) -> str:
        net = ipaddress.ip_network(_ipv4_cidr(value))
        if net.prefixlen > 28:  # room for a lab's VMs: 14 addresses
            raise ValueError(f"{show(value)} is too small for a lab's VMs; use a /28 or larger, e.g. 10.213.0.0/24")
        return value


class OrchardSettings(Strict):
    """An Orchard controller that places the lab's Tart VMs on its workers (reference/orchard.md). The token is
    never in clusters.json: it is read from the environment variable `token_env`."""

    controller_url: str | None = Field(
        default=None, pattern=r"^https?://[^\s/]+(/\S*)?$",
        description="the controller's base URL, e.g. https://orchard.example.com:6120 (its API is under /v1)")
    service_account: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9:._-]{1,253}$", description="the service account labctl signs in as "
        "(needs the roles compute:read and compute:write)")
    @field_validator("controller_url")
    @classmethod
    def _tls(cls, url: str | None) -> str | None:
        """Plain http only to this machine: elsewhere the service account's token would cross the network in clear
        (HTTP Basic)."""
        if url and url.startswith("http://"):
            host = url[len("http://"):].split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
            if host not in ("127.0.0.1", "localhost", "::1"):
                raise ValueError(f"{show(url)} is plain http: the service account's token would cross the network "
                                 "in clear; use the controller's https:// URL (with ca_cert for its self-signed "
                                 "certificate)")
        return url

    token_env: str = Field(
        default="ORCHARD_SERVICE_ACCOUNT_TOKEN", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$",
        description="the environment variable that holds the service account's token (Orchard's own name by default)")
    ca_cert: str | None = Field(
        default=None, description="PEM file of the controller's certificate or its CA (Orchard makes a self-signed "
        "one by default); relative paths are beside clusters.json")
    bridge_interface: str = Field(
        default="en0", pattern=r"^[A-Za-z0-9_.-]{1,15}$",
        description="the workers' interface the VMs are bridged to (`net-bridged`): only bridged VMs are reachable "
        "from this machine and from VMs on other workers")
    labels: dict[str, str] = Field(
        default_factory=dict, description="worker labels every VM requires (Orchard places it only on such workers)")
    ip_wait_seconds: StrictInt = Field(
        default=120, ge=0, le=TART_UINT16_MAX, description="how long the controller may wait for a VM's address")
    start_wait_seconds: StrictInt = Field(
        default=900, ge=1, le=86400,
        description="how long a new VM may take to be placed, pulled, cloned and booted by its worker")


class ProviderSettings(Strict):
    type: Literal["tart", "qemu", "orchard"] = Field(
        default="tart", description="the VM provider: tart (macOS on Apple silicon), qemu (Linux hosts) or orchard "
        "(Tart VMs on the Macs of an Orchard controller)")
    tart: TartSettings = Field(default_factory=TartSettings)
    qemu: QemuSettings = Field(default_factory=QemuSettings)
    orchard: OrchardSettings = Field(default_factory=OrchardSettings)

    @model_validator(mode="after")
    def _orchard(self) -> ProviderSettings:
        if self.type == "orchard":
            missing = [f for f in ("controller_url", "service_account") if getattr(self.orchard, f) is None]
            if missing:
                raise ValueError(f"provider type 'orchard' needs orchard.{' and orchard.'.join(missing)} "
                                 "(the controller's URL and the service account labctl signs in as)")
        return self


class Lab(Strict):
    # problems of files clusters.json names (errors.Problem.of_file), refused by validate/plan/install only
    _file_problems: list = PrivateAttr(default_factory=list)

    base_image: str = Field(
        default="ghcr.io/cirruslabs/ubuntu:latest",
        description="image every VM is cloned from; tart: an OCI image, qemu: a local qcow2 or raw disk image file "
        "(relative paths are beside clusters.json) or an https:// URL of one, downloaded once into "
        "~/.cache/labctl/images and verified against the publisher's SHA256SUMS",
    )
    ssh_user: str = Field(default="admin", description="the VMs' user with passwordless sudo")
    ssh_password: SecretStr | None = Field(
        default=SecretStr("admin"), description="first-contact password; labctl then installs its own key"
    )
    ssh_key: str | None = Field(default=None, description="first-contact private key file instead of a password")
    provider: ProviderSettings = Field(default_factory=ProviderSettings)
    versions: Versions = Field(default_factory=Versions)
    clusters: list[Cluster] = Field(min_length=1)

    @field_validator("ssh_user")
    @classmethod
    def _user(cls, v: str) -> str:
        if not USER_NAME.match(v):
            raise ValueError(f"{show(v)} is not a user name: ≤32 of [A-Za-z0-9_.-], not starting with '-', '.' or "
                             "a digit")
        return v

    @field_validator("base_image")
    @classmethod
    def _image(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("name the image: an OCI image (tart) or a disk image file or URL (qemu)")
        return v

    @property
    def nodes(self) -> list[tuple[Cluster, Node]]:
        return [(c, n) for c in self.clusters for n in c.nodes]

    def cluster(self, name: str) -> Cluster:
        for c in self.clusters:
            if c.name == name:
                return c
        raise KeyError(name)

    def cluster_id(self, cluster: Cluster) -> int:
        return cluster.cilium.cluster_id or self.clusters.index(cluster) + 1


# ---- loading ---------------------------------------------------------------------------------------------------

def parse(text: str, source: str = "clusters.json", base_dir: Path | None = None) -> Lab:
    """clusters.json text → Lab. `base_dir`: where relative paths in it (user manifests) are; default: the current
    directory. Raises ConfigError with every problem found (only ConfigError, whatever the text: fuzzed by
    tests/unit/test_model_fuzz.py), in time linear in the text's size."""
    # validation builds on this module's models, so it is imported here rather than at the top
    from .validation import field_problems, lab_problems

    raw = config_json.read(text, source)
    if isinstance(raw.get("$schema"), str):  # an editor's pointer to `labctl schema`'s output: not labctl's business
        raw = {key: value for key, value in raw.items() if key != "$schema"}
    problems: list[Problem] = []
    lab = None
    try:
        lab = Lab.model_validate(raw)
    except ValidationError as exc:
        problems += field_problems(exc)
    problems += lab_problems(raw, base_dir)
    if [p for p in problems if not p.of_file]:
        raise ConfigError(source, problems)
    assert lab is not None
    lab._file_problems = problems
    return lab


def load(path: Path) -> Lab:
    """The clusters.json at `path` → Lab, as parse() does, with relative paths in it (user manifests, ssh_key) taken
    from beside the file. Raises ConfigError naming `path`: unreadable, or every problem parse() finds."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        # the full path: a relative --config, LABCTL_CONFIG or the default is read from wherever labctl was started
        error = ConfigError(str(path), [Problem("", f"file not found: looked for {path.absolute()}")])
        error.hint = ("`labctl init` writes a starter clusters.json there (`--config PATH` elsewhere); or point "
                      "--config (or LABCTL_CONFIG) at your lab file")
        raise error from None
    except IsADirectoryError:
        raise ConfigError(str(path), [Problem("", f"{path.absolute()} is a folder, not a file: pass --config "
                                              "with the lab file's path")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [Problem("", f"cannot read {path.absolute()}: "
                                              f"{getattr(exc, 'strerror', None) or exc}")]) from None
    lab = parse(text, str(path), path.resolve().parent)
    if lab.ssh_key:
        try:
            key = Path(lab.ssh_key).expanduser()
        except RuntimeError:  # `~someone/…` for a user this host does not have
            raise ConfigError(str(path), [Problem("ssh_key", f"{show(lab.ssh_key)}: no such user on this host to "
                                                  "expand `~user`; give the key file's full path")]) from None
    if lab.ssh_key and not key.is_absolute():
        # a relative key path means "beside clusters.json", not "wherever labctl happens to be started"
        lab = lab.model_copy(update={"ssh_key": str(path.resolve().parent / lab.ssh_key)})
    return _static_keys(lab, path.resolve().parent)


def _static_keys(lab: Lab, base: Path) -> Lab:
    """Static nodes' relative ssh_key paths made absolute (beside clusters.json), like the lab's own."""
    if not any(n.ssh_key and not Path(n.ssh_key).expanduser().is_absolute() for _, n in lab.nodes):
        return lab
    clusters = [c.model_copy(update={"nodes": [
        n.model_copy(update={"ssh_key": str(base / n.ssh_key)})
        if n.ssh_key and not Path(n.ssh_key).expanduser().is_absolute() else n for n in c.nodes]})
        for c in lab.clusters]
    return lab.model_copy(update={"clusters": clusters})


# ---- spec hashes -------------------------------------------------------------------------------------------------

def spec_hash(*parts: BaseModel | str) -> str:
    """A short stable hash of model parts: what clusters.json asked for, to spot what changed since last run."""
    h = hashlib.sha256()
    for part in parts:
        data = part.model_dump(mode="json") if isinstance(part, BaseModel) else part
        h.update(json.dumps(data, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def node_hash(lab: Lab, node: Node) -> str:
    return spec_hash(node, lab.base_image, lab.versions)


def cluster_hash(lab: Lab, cluster: Cluster) -> str:
    return spec_hash(cluster, lab.versions)
