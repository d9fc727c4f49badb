"""clusters.json as pydantic models: defaults beside each field, strict decoding, every problem at once.

The predecessor's file format loads unchanged: every field added since then is optional with a default.
Loading is `load(path)`: JSON syntax → field validation (pydantic) → whole-lab checks (names, CIDRs, roles).
Problems from both passes are reported together, each with its JSON path.
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import json
import re
from datetime import date
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, StrictInt, ValidationError, field_validator, model_validator

from . import catalog
from .errors import ConfigError, LabctlError, Problem

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)\Z")
LABEL_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
VERSION = re.compile(r"^\d+\.\d+\.\d+\Z")


class Strict(BaseModel):
    # Unknown fields are errors (a typo must never be silently ignored); see _problems() for the suggestion.
    model_config = ConfigDict(extra="forbid", frozen=True)


def _dns_label(value: str, max_len: int) -> str:
    if len(value) > max_len:
        raise ValueError(f"{value!r} is longer than {max_len} characters")
    if not DNS_LABEL.match(value):
        raise ValueError(
            f"{value!r} is not a DNS-1123 label: use lowercase letters, digits and '-', starting and ending "
            "with a letter or digit"
        )
    return value


def _ipv4_cidr(value: str) -> str:
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a valid CIDR ({exc}); write it like 10.10.0.0/16") from None
    if net.version != 4:
        raise ValueError(f"{value!r} is IPv6; labctl labs are IPv4")
    return value


class Taint(Strict):
    key: str
    value: str = ""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] = "NoSchedule"


class Node(Strict):
    name: str = Field(description="VM name and Kubernetes node name; unique across the whole lab")
    role: Literal["master", "worker"] = Field(description="`master` runs the control plane")
    cpu: StrictInt = Field(gt=0, description="vCPUs (may be overcommitted across the lab)")
    memory: StrictInt = Field(gt=0, description="memory in MiB (never overcommitted across the lab)")
    disk: StrictInt = Field(
        default=catalog.IMAGE_DISK_GB,
        ge=catalog.IMAGE_DISK_GB,
        description="disk in GB; Tart disks only grow, and the image's is 20 GB",
    )
    labels: dict[str, str] = Field(default_factory=dict, description="Kubernetes node labels")
    taints: list[Taint] = Field(default_factory=list, description="Kubernetes node taints")

    _name = field_validator("name")(lambda v: _dns_label(v, 63))

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: dict[str, str]) -> dict[str, str]:
        for key, value in labels.items():
            prefix, _, name = key.rpartition("/")
            if (prefix and (len(prefix) > 253 or not LABEL_PREFIX.match(prefix))) or len(name) > 63 or not (
                LABEL_NAME.match(name)
            ):
                raise ValueError(f"label key {key!r} is not a valid Kubernetes label key")
            if value and (len(value) > 63 or not LABEL_NAME.match(value)):
                raise ValueError(f"label {key}={value!r}: values are ≤63 of [A-Za-z0-9._-], alphanumeric at both ends")
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

    _name = field_validator("name")(lambda v: _dns_label(v, 53))


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

    _name = field_validator("name")(lambda v: _dns_label(v, 32))
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
            raise ValueError(f"{v!r} is not an exact version like 1.35.6")
        return v

    @field_validator("kubernetes")
    @classmethod
    def _known_minor(cls, v: str) -> str:
        minor = int(v.split(".")[1])
        known = sorted(catalog.KUBERNETES_MINORS)
        if not v.startswith("1.") or minor not in catalog.KUBERNETES_MINORS:
            raise ValueError(f"{v!r}: labctl supports Kubernetes 1.{known[0]} to 1.{known[-1]} (kubeadm v1beta4)")
        return v


class TartSettings(Strict):
    network: Literal["shared", "softnet", "bridged"] = Field(
        default="shared", description="shared NAT (default), softnet (isolated), or bridged to `bridge_interface`"
    )
    bridge_interface: str | None = Field(default=None, description="host interface for `bridged`, e.g. en0")
    softnet_allow: list[str] = Field(default_factory=list, description="CIDRs softnet lets the VMs reach")
    ip_resolver: Literal["dhcp", "arp", "agent"] = "dhcp"
    ip_wait_seconds: StrictInt = Field(default=120, ge=0, description="how long `tart ip --wait` waits for a lease")

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
    network: Literal["user", "bridge"] = Field(
        default="user",
        description="user: every VM alone behind QEMU's NAT, reached through its forwarded SSH port (the node phases "
        "run, but no cluster forms); bridge: also a NIC on `bridge`, where the VMs reach each other and get their "
        "addresses from its DHCP server (fixed when the VM is created)")
    bridge: str = Field(
        default="virbr0", pattern=r"^[A-Za-z0-9_.-]{1,15}$",
        description="host bridge for network bridge, attached through qemu-bridge-helper (/etc/qemu/bridge.conf "
        "must allow it); libvirt's default network is virbr0")
    leases: str | None = Field(
        default=None, description="the bridge's DHCP leases, where labctl finds each VM's address by its MAC: "
        "libvirt's <bridge>.status or a dnsmasq leases file (default: /var/lib/libvirt/dnsmasq/<bridge>.status)")
    ip_wait_seconds: StrictInt = Field(
        default=180, ge=0, description="network bridge: how long to wait for a started VM's DHCP lease")

    @model_validator(mode="after")
    def _kernel_options(self) -> QemuSettings:
        for field in ("initrd", "append"):
            if getattr(self, field) is not None and self.kernel is None:
                raise ValueError(f"{field} only applies with kernel (a direct kernel boot); set kernel too")
        if self.leases is not None and self.network != "bridge":
            raise ValueError("leases only applies with network bridge")
        return self


class ProviderSettings(Strict):
    type: Literal["tart", "qemu"] = Field(
        default="tart", description="the VM provider: tart (macOS on Apple silicon) or qemu (Linux hosts)")
    tart: TartSettings = Field(default_factory=TartSettings)
    qemu: QemuSettings = Field(default_factory=QemuSettings)


class Lab(Strict):
    base_image: str = Field(
        default="ghcr.io/cirruslabs/ubuntu:latest",
        description="image every VM is cloned from; tart: an OCI image, qemu: a local qcow2 or raw disk image file "
        "(relative paths are beside clusters.json)",
    )
    ssh_user: str = Field(default="admin")
    ssh_password: SecretStr | None = Field(
        default=SecretStr("admin"), description="first-contact password; labctl then installs its own key"
    )
    ssh_key: str | None = Field(default=None, description="first-contact private key file instead of a password")
    provider: ProviderSettings = Field(default_factory=ProviderSettings)
    versions: Versions = Field(default_factory=Versions)
    clusters: list[Cluster] = Field(min_length=1)

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


# ---- whole-lab checks ------------------------------------------------------------------------------------------

# The network the nodes live on, per provider: a pod or service CIDR there would shadow the nodes' own addresses.
NODE_NETWORKS = {
    "tart": {"tart shared NAT": ipaddress.ip_network("192.168.64.0/24")},
    "qemu": {"qemu user-mode": ipaddress.ip_network("10.0.2.0/24")},
}


def _cidr_or_none(value: Any) -> ipaddress.IPv4Network | None:
    try:
        net = ipaddress.ip_network(value, strict=True)
    except (TypeError, ValueError):
        return None  # already reported by field validation
    return net if net.version == 4 else None


def _lab_problems(raw: dict, base_dir: Path | None = None) -> list[Problem]:
    """Checks that span fields. Runs on the raw data so it still reports when some fields failed to parse."""
    problems: list[Problem] = []
    clusters = raw.get("clusters") if isinstance(raw.get("clusters"), list) else []
    provider = raw.get("provider") if isinstance(raw.get("provider"), dict) else {}
    provider_type = provider.get("type", "tart")
    if provider_type == "qemu" and "base_image" not in raw:
        problems.append(Problem("base_image", "provider qemu boots a local disk image: set base_image to a qcow2 or "
                                "raw image file (the default is Tart's OCI image)"))
    seen_clusters: dict[str, str] = {}
    seen_nodes: dict[str, str] = {}
    networks: list[tuple[str, str, ipaddress.IPv4Network]] = []  # (path, kind, net)

    for ci, cluster in enumerate(clusters):
        if not isinstance(cluster, dict):
            continue
        cpath = f"clusters[{ci}]"
        cname = cluster.get("name")
        if isinstance(cname, str):
            if cname in seen_clusters:
                problems.append(Problem(f"{cpath}.name", f"cluster {cname!r} is already defined at {seen_clusters[cname]}"))
            seen_clusters.setdefault(cname, cpath)
        nodes = cluster.get("nodes") if isinstance(cluster.get("nodes"), list) else []
        roles = [n.get("role") for n in nodes if isinstance(n, dict)]
        if nodes and "master" not in roles:
            problems.append(Problem(f"{cpath}.nodes", f"cluster {cname!r} has no node with role 'master'; add one"))
        for ni, node in enumerate(nodes):
            if not isinstance(node, dict):
                continue
            npath = f"{cpath}.nodes[{ni}]"
            nname = node.get("name")
            if isinstance(nname, str):
                if nname in seen_nodes:
                    problems.append(
                        Problem(f"{npath}.name", f"VM name {nname!r} is already used at {seen_nodes[nname]}; "
                                "VM names are global across all clusters")
                    )
                seen_nodes.setdefault(nname, npath)
            if node.get("role") == "master":
                cpu, mem = node.get("cpu"), node.get("memory")
                if isinstance(cpu, int) and 0 < cpu < catalog.CONTROL_PLANE_MIN_CPU:
                    problems.append(Problem(f"{npath}.cpu", f"a master needs at least {catalog.CONTROL_PLANE_MIN_CPU} "
                                            f"CPUs (kubeadm preflight); {nname!r} has {cpu}"))
                if isinstance(mem, int) and 0 < mem < catalog.CONTROL_PLANE_MIN_MEMORY_MB:
                    problems.append(Problem(f"{npath}.memory", f"a master needs at least "
                                            f"{catalog.CONTROL_PLANE_MIN_MEMORY_MB} MB (kubeadm preflight); "
                                            f"{nname!r} has {mem}"))
        problems += _stack_problems(cluster, cpath, base_dir)
        for field, kind in (("pod_cidr", "pod"), ("service_cidr", "service")):
            net = _cidr_or_none(cluster.get(field))
            if net is not None:
                networks.append((f"{cpath}.{field}", kind, net))
                if kind == "service" and net.prefixlen < catalog.SERVICE_CIDR_MIN_PREFIX:
                    problems.append(Problem(f"{cpath}.{field}", f"{net} is larger than /{catalog.SERVICE_CIDR_MIN_PREFIX}"
                                            " (the kube-apiserver refuses it); use a /12 to /24"))

    # Cilium's cluster.id must differ between clusters that may ever mesh; the default is the cluster's position, so
    # an explicit id can collide with another cluster's default.
    ids: dict[int, str] = {}
    for ci, cluster in enumerate(clusters):
        if not isinstance(cluster, dict):
            continue
        cilium = cluster.get("cilium") if isinstance(cluster.get("cilium"), dict) else {}
        explicit = cilium.get("cluster_id")
        cid = explicit if isinstance(explicit, int) else ci + 1
        where = f"clusters[{ci}].cilium.cluster_id"
        if cid in ids:
            how = "set here" if isinstance(explicit, int) else "by default: its position"
            problems.append(Problem(where, f"Cilium cluster_id {cid} ({how}) is already {ids[cid]}; give each cluster "
                                    "its own cilium.cluster_id (1-255)"))
        else:
            ids[cid] = f"the id of {cluster.get('name')!r}" + ("" if isinstance(explicit, int) else " by position")
    # Pods are routed between clusters (ClusterMesh-ready), so a pod CIDR may overlap nothing; services are
    # cluster-local, so two clusters may reuse a service range, but never one that is some cluster's pod range.
    for i, (path_a, kind_a, a) in enumerate(networks):
        for path_b, kind_b, b in networks[i + 1 :]:
            if (kind_a == "pod" or kind_b == "pod") and a.overlaps(b):
                problems.append(Problem(path_b, f"{b} overlaps {a} ({path_a}); {kind_a} and {kind_b} ranges "
                                        "must not overlap"))
        for what, node_net in NODE_NETWORKS.get(provider_type, NODE_NETWORKS["tart"]).items():
            if a.overlaps(node_net):
                problems.append(Problem(path_a, f"{a} overlaps the {what} network {node_net} the VMs live on"))
    return problems


# System pods on every node (Cilium agent and Envoy, kubelet, containerd, the OS itself) before any stack: a rough
# reserve, so the fit check errs on the side of warning early rather than leaving pods Pending.
NODE_RESERVE_CPU_M = 300
NODE_RESERVE_MEMORY_MIB = 768


def _schedulable(nodes: list) -> list[dict]:
    """The nodes that take a stack's pods: the workers, or every node of a cluster without workers."""
    nodes = [n for n in nodes if isinstance(n, dict)]
    workers = [n for n in nodes if n.get("role") == "worker"]
    return workers or nodes


def _stack_problems(cluster: dict, cpath: str, base_dir: Path | None) -> list[Problem]:
    """Each entry of a cluster's `stacks`, and the list as a whole: known names, user stacks complete, requirements
    present and acyclic, NodePorts unique in the cluster, and the declared requests fitting the nodes."""
    from . import stacks as S

    entries = cluster.get("stacks")
    if not isinstance(entries, list):
        return []
    catalogue = S.catalogue()
    problems: list[Problem] = []
    names: dict[str, str] = {}
    requires: dict[str, list[tuple[str, str | None]]] = {}  # stack → (needed stack, path of a user `requires` entry)
    ports: dict[int, str] = {}
    cilium = cluster.get("cilium") if isinstance(cluster.get("cilium"), dict) else {}
    if cilium.get("hubble", True):
        ports[cilium.get("hubble_ui_node_port", 31235)] = "the Hubble UI (cilium.hubble_ui_node_port)"
    cpu_m = memory = 0
    releases: dict[tuple[str, str], str] = {}  # (namespace, release) → which stack installs it
    for si, entry in enumerate(entries):
        spath = f"{cpath}.stacks[{si}]"
        spec = {"name": entry} if isinstance(entry, str) else entry
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            continue  # reported by field validation
        name = spec["name"]
        if name in names:
            problems.append(Problem(f"{spath}.name" if isinstance(entry, dict) else spath,
                                    f"stack {name!r} is already listed at {names[name]}; list each stack once"))
            continue
        names[name] = spath
        own = spec.get("requires")
        own_requires = [(r, f"{spath}.requires[{i}]") for i, r in enumerate(own if isinstance(own, list) else [])
                        if isinstance(r, str)]
        user_fields = [f for f in ("chart", "repo", "version", "release", "namespace", "manifests") if f in spec]
        if name in catalogue or name in S.PLANNED:
            if user_fields:
                problems.append(Problem(f"{spath}.{user_fields[0]}", f"{name!r} is a catalogue stack: only `values` "
                                        f"and `requires` can be set on it, not `{user_fields[0]}`; for your own chart "
                                        "or manifests give the stack another name"))
            descriptor = catalogue.get(name)
            requires[name] = [*((r, None) for r in (descriptor.requires if descriptor else [])), *own_requires]
            problems += _values_problems(name, descriptor, spec.get("values"), spath)
            for r in descriptor.releases if descriptor else []:
                problems += _claim_release(releases, r.namespace or descriptor.namespace, r.release, name, spath)
            if descriptor is not None:
                for port_name, port in descriptor.node_ports.items():
                    problems += _claim(ports, port, f"stack {name!r} ({port_name})", spath)
                cpu_m += S.cpu_millis(descriptor.requests.get("cpu", "0"))
                memory += S.memory_bytes(descriptor.requests.get("memory", "0"))
            continue
        requires[name] = own_requires
        if "chart" in spec and "manifests" in spec:
            problems.append(Problem(spath, f"stack {name!r} sets both `chart` and `manifests`: a user stack is either "
                                    "a Helm chart or a folder of manifests; make them two stacks"))
        elif "chart" in spec:
            problems += _chart_problems(spec, spath)
            namespace, release = spec.get("namespace", name), spec.get("release", name)
            if isinstance(namespace, str) and isinstance(release, str):
                problems += _claim_release(releases, namespace, release, name, spath)
        elif "manifests" in spec:
            for field in ("repo", "version", "release", "values"):
                if field in spec:
                    problems.append(Problem(f"{spath}.{field}", f"`{field}` only applies to a chart; stack {name!r} "
                                            "is a manifests folder, applied as it is"))
            found, more = _manifest_problems(spec.get("manifests"), spath, base_dir)
            problems += found
            for port, what in more:
                problems += _claim(ports, port, f"stack {name!r} ({what})", spath)
        elif chart_fields := [f for f in ("repo", "version", "release") if f in spec]:
            problems.append(Problem(f"{spath}.chart", f"stack {name!r} sets {', '.join(f'`{f}`' for f in chart_fields)}"
                                    " but no `chart`: a user chart stack needs `chart`, `repo` and `version`"))
        else:
            known = S.known_names()
            near = difflib.get_close_matches(name.lower(), known, n=1)
            tip = f"did you mean {near[0]!r}?" if near else f"the catalogue has {', '.join(known)}."
            problems.append(Problem(f"{spath}.name" if isinstance(entry, dict) else spath,
                                    f"unknown stack {name!r}: {tip} Your own stack needs `chart`, `repo` and "
                                    "`version`, or `manifests`"))
        for field, limit in (("namespace", 63), ("release", 53)):
            value = spec.get(field)
            if isinstance(value, str):
                try:
                    _dns_label(value, limit)
                except ValueError as exc:
                    problems.append(Problem(f"{spath}.{field}", str(exc)))
    for name, needs in requires.items():
        for need, path in needs:
            if need == name and path:
                problems.append(Problem(path, f"stack {name!r} cannot require itself"))
            elif need in names:
                continue
            elif path is None:
                problems.append(Problem(names[name], f"stack {name!r} needs {need!r}: add {need!r} to this cluster's "
                                        "stacks"))
            else:
                near = difflib.get_close_matches(need, [n for n in names if n != name], n=1)
                tip = f"did you mean {near[0]!r}? " if near else ""
                problems.append(Problem(path, f"stack {name!r} requires {need!r}, which this cluster does not list: "
                                        f"{tip}add {need!r} to its stacks or drop it from `requires`"))
    cycle = _cycle({name: [need for need, _ in needs if need != name] for name, needs in requires.items()})
    if cycle:
        problems.append(Problem(f"{cpath}.stacks", f"stacks require each other in a circle: {' → '.join(cycle)}; "
                                "drop one of these requirements"))
    problems += _fit_problems(cluster, cpath, cpu_m, memory)
    return problems


def _values_problems(name: str, descriptor: Any, values: Any, spath: str) -> list[Problem]:
    """`values` of a catalogue stack must reach a Helm release: one-release stacks take them as they are,
    several-release stacks keyed by release name; a stack of manifests only (or not installable yet) takes none."""
    if not isinstance(values, dict) or not values:
        return []
    if descriptor is None or not descriptor.releases:
        why = "is not installable by this labctl version yet" if descriptor is None else "has no Helm release (it is " \
              "manifests only)"
        return [Problem(f"{spath}.values", f"stack {name!r} {why}, so `values` would be ignored; remove them")]
    if len(descriptor.releases) == 1:
        return []
    known = [r.release for r in descriptor.releases]
    return [Problem(f"{spath}.values.{key}", f"stack {name!r} installs several Helm releases, so its `values` are keyed "
                    f"by release: {', '.join(known)}; {key!r} is none of them (e.g. {{\"{known[0]}\": {{...}}}})")
            for key in values if key not in known]


def _claim_release(releases: dict[tuple[str, str], str], namespace: str, release: str, stack: str,
                   path: str) -> list[Problem]:
    """Two stacks installing the same Helm release would overwrite each other on every install."""
    owner = releases.setdefault((namespace, release), stack)
    if owner == stack:
        return []
    return [Problem(path, f"stack {stack!r} installs Helm release {release!r} in namespace {namespace!r}, which stack "
                    f"{owner!r} installs too; give it another `release` or `namespace`")]


def _claim(ports: dict[int, str], port: Any, what: str, path: str) -> list[Problem]:
    if not isinstance(port, int):
        return []
    if port in ports:
        return [Problem(path, f"NodePort {port} of {what} is already taken by {ports[port]} in this cluster; "
                        "change one of the two ports or drop a stack")]
    ports[port] = what
    return []


def _chart_problems(spec: dict, spath: str) -> list[Problem]:
    from . import stacks as S

    problems = []
    chart, repo, version = spec.get("chart"), spec.get("repo"), spec.get("version")
    if isinstance(chart, str) and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", chart):
        problems.append(Problem(f"{spath}.chart", f"{chart!r} is not a chart name: `chart` is the chart's name in "
                                "`repo` (like redis), without the repository's name or path"))
    if isinstance(repo, str) and isinstance(chart, str) and repo.startswith("oci://") and \
            repo.rstrip("/").rsplit("/", 1)[-1] == chart:
        problems.append(Problem(f"{spath}.repo", f"{repo!r} ends with the chart's name: `repo` is the registry path "
                                f"without it ({repo.rstrip('/').rsplit('/', 1)[0]!r}); labctl adds `/{chart}`"))
    if repo is None:
        problems.append(Problem(f"{spath}.repo", "a chart stack needs `repo`: the Helm repository URL (https://…) or "
                                "the OCI registry path (oci://…) the chart is in"))
    elif isinstance(repo, str) and not re.fullmatch(r"(https?|oci)://[^/\s]+(/[^\s]*)?", repo):
        problems.append(Problem(f"{spath}.repo", f"{repo!r} is not a Helm repository URL (https://…) nor an OCI "
                                "registry path (oci://…)"))
    if version is None:
        problems.append(Problem(f"{spath}.version", "a chart stack needs `version`, the exact chart version: labctl "
                                "never installs an unpinned chart (`helm search repo <chart> --versions` lists them)"))
    elif isinstance(version, str) and not S.EXACT_VERSION.match(version):
        problems.append(Problem(f"{spath}.version", f"{version!r} is not an exact chart version (like 1.2.3): ranges, "
                                "wildcards and tags are not allowed, so every install gets the same chart"))
    return problems


def _manifest_problems(folder: Any, spath: str, base_dir: Path | None) -> tuple[list[Problem], list[tuple[int, str]]]:
    """Problems of a user manifests folder, and the NodePorts its Services claim."""
    from .stacks import read_manifests

    if not isinstance(folder, str):
        return [], []
    if not folder.strip():
        return [Problem(f"{spath}.manifests", "name the folder of YAML files, relative to clusters.json (e.g. "
                        "\"manifests/demo\")")], []
    path = Path(folder) if base_dir is None else base_dir / folder
    try:
        objects = read_manifests(path)
    except LabctlError as exc:
        return [Problem(f"{spath}.manifests", exc.message)], []
    problems, ports = [], []
    for obj in objects:
        if obj.get("kind") == "Service":
            for p in (obj.get("spec") or {}).get("ports") or []:
                if isinstance(p, dict) and isinstance(p.get("nodePort"), int):
                    what = f"Service {obj['metadata']['name']}"
                    low, high = 30000, 32767  # the API server's default --service-node-port-range (kubeadm's)
                    if not low <= p["nodePort"] <= high:
                        problems.append(Problem(f"{spath}.manifests", f"{what}: nodePort {p['nodePort']} is outside "
                                                f"the cluster's NodePort range {low}-{high}"))
                    else:
                        ports.append((p["nodePort"], what))
    return problems, ports


def _cycle(requires: dict[str, list[str]]) -> list[str]:
    """One requirement cycle as a path (a → b → a), or [] when there is none."""
    state: dict[str, int] = {}

    def visit(name: str, path: list[str]) -> list[str]:
        state[name] = 1
        for need in requires.get(name, []):
            if state.get(need) == 1:
                return [*path[path.index(need):], need]
            if need in requires and need not in state:
                found = visit(need, [*path, need])
                if found:
                    return found
        state[name] = 2
        return []

    for name in requires:
        if name not in state:
            found = visit(name, [name])
            if found:
                return found
    return []


def _fit_problems(cluster: dict, cpath: str, cpu_m: int, memory: int) -> list[Problem]:
    def _size(mib: float) -> str:
        return f"{mib / 1024:.1f} GiB" if mib >= 1024 else f"{mib:.0f} MiB"

    nodes = _schedulable(cluster.get("nodes") if isinstance(cluster.get("nodes"), list) else [])
    if not nodes or not (cpu_m or memory):
        return []
    have_cpu = sum(max(0, n["cpu"] * 1000 - NODE_RESERVE_CPU_M) for n in nodes if isinstance(n.get("cpu"), int))
    have_mem = sum(max(0, n["memory"] - NODE_RESERVE_MEMORY_MIB) for n in nodes if isinstance(n.get("memory"), int))
    need_mem = memory / 2**20
    who = "workers" if any(n.get("role") == "worker" for n in nodes) else "nodes"
    short = []
    if cpu_m > have_cpu:
        short.append(f"{cpu_m - have_cpu}m CPU (the stacks request {cpu_m}m, the {who} offer {have_cpu}m)")
    if need_mem > have_mem:
        short.append(f"{_size(need_mem - have_mem)} of memory (the stacks request {_size(need_mem)}, the {who} "
                     f"offer {_size(have_mem)})")
    if not short:
        return []
    return [Problem(f"{cpath}.stacks", f"the declared stacks do not fit the cluster's {who}: short of "
                    f"{' and '.join(short)}, counting {NODE_RESERVE_CPU_M}m CPU and "
                    f"{NODE_RESERVE_MEMORY_MIB} MiB per node for the system; add a worker, give the {who} more "
                    "CPU/memory, or drop a stack")]


# ---- loading ---------------------------------------------------------------------------------------------------

def _path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _model_at(loc: tuple) -> type[BaseModel]:
    """The model class that owns the container at `loc` (used to suggest field names)."""
    model: type[BaseModel] = Lab
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            break
        ann = field.annotation
        inner = list(getattr(ann, "__args__", (ann,)))
        for t in list(inner):  # one level deeper: list[str | StackSpec]
            inner += getattr(t, "__args__", ())
        nxt = next((t for t in inner if isinstance(t, type) and issubclass(t, BaseModel)), None)
        if nxt is None:
            break
        model = nxt
    return model


# pydantic's type errors in JSON's words ("dictionary" is not one of them)
JSON_TYPES = {"list_type": "must be a list", "dict_type": "must be an object", "string_type": "must be a string",
              "int_type": "must be a whole number", "bool_type": "must be true or false"}


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _problems(exc: ValidationError) -> list[Problem]:
    problems = []
    for err in exc.errors():
        loc: tuple | None = tuple(err["loc"])
        # A `stacks` entry is `str | StackSpec`: pydantic tries both members and tags each error with the one it tried.
        # Say what is wrong with the object (or that the entry is neither), at the entry's own path.
        for i in range(len(loc) - 2):
            if loc[i] == "stacks" and isinstance(loc[i + 1], int) and loc[i + 2] in ("str", "StackSpec"):
                if loc[i + 2] == "str":
                    loc = None  # not a string; the StackSpec member's errors say what is wrong
                elif len(loc) == i + 3:
                    loc, err = loc[: i + 2], {**err, "type": "stack", "msg": "a stack is a name (a string) or an "
                                              "object with `name`"}
                else:
                    loc = loc[: i + 2] + loc[i + 3:]
                break
        if loc is None:
            continue
        if err["type"] == "extra_forbidden":
            field = str(loc[-1])
            known = list(_model_at(loc[:-1]).model_fields)
            near = difflib.get_close_matches(field, known, n=1, cutoff=0.6)
            msg = f"unknown field {field!r}" + (f"; did you mean {near[0]!r}?" if near else f"; known: {', '.join(known)}")
        elif err["type"] == "missing":
            msg = "required field is missing"
        elif err["type"] in JSON_TYPES:
            msg = f"{JSON_TYPES[err['type']]}, not {_json_type(err.get('input'))} ({json.dumps(err.get('input'))[:60]})"
            if loc and loc[-1] == "stacks" and isinstance(err.get("input"), str):
                msg += f'; write ["{err["input"]}"]'
            elif err["type"] == "string_type" and isinstance(err.get("input"), (int, float)):
                msg += f'; quote it: "{err["input"]}"'
        else:
            msg = err["msg"].removeprefix("Value error, ")
        problems.append(Problem(_path(loc), msg))
    return problems


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def parse(text: str, source: str = "clusters.json", base_dir: Path | None = None) -> Lab:
    """clusters.json text → Lab. `base_dir`: where relative paths in it (user manifests) are; default: the current
    directory. Raises ConfigError with every problem found."""
    try:
        raw = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise ConfigError(source, [Problem("", f"line {exc.lineno}, column {exc.colno}: {exc.msg}")]) from None
    except ValueError as exc:  # duplicate key
        raise ConfigError(source, [Problem("", str(exc))]) from None
    if not isinstance(raw, dict):
        raise ConfigError(source, [Problem("", "the top level must be a JSON object with a `clusters` list")])
    problems: list[Problem] = []
    lab = None
    try:
        lab = Lab.model_validate(raw)
    except ValidationError as exc:
        problems += _problems(exc)
    problems += _lab_problems(raw, base_dir)
    if problems:
        raise ConfigError(source, problems)
    assert lab is not None
    return lab


def load(path: Path) -> Lab:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), [Problem("", "file not found; create one with `labctl init` or pass --config")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [Problem("", f"cannot read it: {exc}")]) from None
    lab = parse(text, str(path), path.resolve().parent)
    if lab.ssh_key and not Path(lab.ssh_key).expanduser().is_absolute():
        # a relative key path means "beside clusters.json", not "wherever labctl happens to be started"
        lab = lab.model_copy(update={"ssh_key": str(path.resolve().parent / lab.ssh_key)})
    return lab


# ---- derived facts -----------------------------------------------------------------------------------------------

def warnings(lab: Lab, today: date | None = None) -> list[str]:
    """Things that are legal but deserve a word (shown by validate and plan)."""
    out = []
    minor = int(lab.versions.kubernetes.split(".")[1])
    eol = date.fromisoformat(catalog.KUBERNETES_MINORS[minor])
    if (today or date.today()) > eol:
        out.append(f"versions.kubernetes: 1.{minor} reached end of life on {eol}; consider 1.{max(catalog.KUBERNETES_MINORS)}")
    from .stacks import PLANNED

    for cluster in lab.clusters:
        later = [name for name in cluster.stack_names if name in PLANNED]
        if later:
            out.append(f"{cluster.name}: stacks {', '.join(later)} arrive with a later labctl version: accepted, not "
                       "installed yet (`labctl status` lists them as skipped)")
    for cluster, node in lab.nodes:
        if node.role == "master" and node.memory < 2048:
            out.append(f"{node.name}: {node.memory} MiB leaves little room for the control plane; 2048+ is safer")
    return out


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
