"""Checks of clusters.json beyond single fields: pydantic's field errors in JSON's words, the rules that span fields
(unique names, a master per cluster, CIDR overlaps, Cilium cluster ids, each cluster's stacks), and whether labctl
builds this Kubernetes version today, plus the warnings for what is legal but risky.

The whole-lab rules run on the raw JSON data, not on the models, so they still report when some fields failed to
parse: model.parse() reports both passes at once, each problem at its JSON path.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
from datetime import date
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from . import catalog, images
from .config_json import json_path, show
from .errors import ConfigError, Problem
from .model import Lab
from .stack_validation import stack_problems
from .static_nodes import static_problems
from .host import guest_architecture


# ---- field problems --------------------------------------------------------------------------------------------

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


def field_problems(exc: ValidationError) -> list[Problem]:
    """pydantic's errors from validating a Lab, one Problem each at its JSON path, in JSON's words (an unknown field
    gets the nearest known name as a suggestion)."""
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
            msg = _quoting_value(err)
        problems.append(Problem(json_path(loc), msg))
    return problems


# pydantic's bound errors, said of the value: "-512 is not greater than 0"
BOUNDS = {"greater_than": ("gt", "greater than"), "greater_than_equal": ("ge", "greater than or equal to"),
          "less_than": ("lt", "less than"), "less_than_equal": ("le", "less than or equal to")}


def _quoting_value(err: dict) -> str:
    """pydantic's message for `err`, quoting the value it rejects (the reader sees what to fix without opening
    the file): a Literal as "'boss' is not one of master, worker", a bound as "-512 is not greater than 0", any
    other message gets ", not VALUE" unless it already names the value (labctl's own validators do)."""
    value, ctx = err.get("input"), err.get("ctx") or {}
    msg = err["msg"].removeprefix("Value error, ")
    if isinstance(value, (dict, list)) or value is None:
        return msg  # a container or a missing value: the path says where, there is no one value to quote
    shown = json.dumps(value) if isinstance(value, bool) else show(value)  # show() cuts a megabyte-long value
    if err["type"] == "literal_error":
        allowed = re.findall(r"'([^']*)'", str(ctx.get("expected", ""))) or [str(ctx.get("expected", ""))]
        return f"{shown} is not one of {', '.join(allowed)}"
    if err["type"] in BOUNDS:
        key, words = BOUNDS[err["type"]]
        return f"{shown} is not {words} {ctx.get(key)}"
    return msg if shown in msg else f"{msg}, not {shown}"


# ---- whole-lab checks ------------------------------------------------------------------------------------------

# The network the nodes live on, per provider: a pod or service CIDR there would shadow the nodes' own addresses.
NODE_NETWORKS = {
    "tart": {"tart shared NAT": ipaddress.ip_network("192.168.64.0/24")},
    "qemu": {"qemu user-mode": ipaddress.ip_network("10.0.2.0/24")},
}


MAX_MASTERS = 7  # etcd's own advice: more members cost write latency and add no useful fault tolerance in a lab


def master_count_problem(cluster: Any, masters: int) -> str | None:
    """Why `masters` control planes (stacked etcd members) do not make a sound cluster, or None (1, 3, 5, 7).

    etcd commits a write only with a majority, floor(n/2)+1 members running (etcd docs, "FAQ: What is failure
    tolerance?"): 3 members survive one loss, 5 two. An even count tolerates no more losses than the odd count
    below it (2 tolerate none, 4 one) while adding one more member that can fail, so it is refused.
    """
    if masters % 2 == 0 and masters > 0:
        survives = (masters - 1) // 2
        return (f"cluster {cluster!r} has {masters} masters (role 'master' in its nodes): etcd needs a majority, "
                f"{masters // 2 + 1} of {masters}, running, so {masters} masters survive only {survives} lost "
                f"({masters - 1} would survive as many) and add one more that can fail; use {masters - 1} or "
                f"{masters + 1} masters (1, 3, 5 or 7)")
    if masters > MAX_MASTERS:
        return (f"cluster {cluster!r} has {masters} masters; labctl supports 1, 3, 5 or 7 (more etcd members slow "
                "every write and tolerate no loss a lab needs)")
    return None


def _cidr_or_none(value: Any) -> ipaddress.IPv4Network | None:
    if not isinstance(value, str):  # ip_network() also takes ints (and so bools): field validation reports them
        return None
    try:
        net = ipaddress.ip_network(value, strict=True)
    except (TypeError, ValueError):
        return None  # already reported by field validation
    return net if net.version == 4 else None


def _is_file(base_dir: Path | None, value: str) -> bool:
    """Is `value` a file (relative: beside clusters.json)? False for anything the OS cannot even look up."""
    try:
        return ((base_dir or Path.cwd()) / value).is_file()
    except (OSError, ValueError):  # a name too long, a NUL byte: not a file
        return False


def lab_problems(raw: dict, base_dir: Path | None = None) -> list[Problem]:
    """Checks that span fields, on the raw top-level object (config_json.read()), so it still reports when some
    fields failed to parse. `base_dir`: where relative paths (user manifests) are. Returns every problem found."""
    problems: list[Problem] = []
    clusters = raw.get("clusters") if isinstance(raw.get("clusters"), list) else []
    provider = raw.get("provider") if isinstance(raw.get("provider"), dict) else {}
    provider_type = provider.get("type", "tart")
    provider_type = provider_type if isinstance(provider_type, str) else "tart"  # reported by field validation
    if provider_type == "qemu" and "base_image" not in raw:
        problems.append(Problem("base_image", "provider qemu boots a disk image: set base_image to a qcow2 or raw "
                                f"image file or an https:// URL of one, e.g. {images.ubuntu_cloud_image_or_example()} "
                                "(the default is Tart's OCI image)"))
    elif isinstance(raw.get("base_image"), str) and provider_type in ("tart", "qemu", "orchard"):
        kind = "tart" if provider_type == "orchard" else provider_type  # Orchard's workers clone with tart
        why = images.problem(kind, raw["base_image"], exists=lambda value: _is_file(base_dir, value))
        if why:
            problems.append(Problem("base_image", why))
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
        if problem := master_count_problem(cname, roles.count("master")):
            problems.append(Problem(f"{cpath}.nodes", problem))
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
        problems += stack_problems(cluster, cpath, base_dir, arch=guest_architecture(provider_type))
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
    problems += _overlap_problems(networks)
    problems += static_problems(clusters, provider_type, provider)
    node_networks = dict(NODE_NETWORKS.get(provider_type, NODE_NETWORKS["tart"]))
    if lab_net := _qemu_lab_subnet(provider):
        if lab_net.overlaps(node_networks["qemu user-mode"]):
            problems.append(Problem("provider.qemu.lab_subnet", f"{lab_net} overlaps QEMU's user-mode network "
                                    f"{node_networks['qemu user-mode']} (every VM's first NIC); pick another range"))
        node_networks["qemu lab"] = lab_net
    for path_a, _, a in networks:
        for what, node_net in node_networks.items():
            if a.overlaps(node_net):
                problems.append(Problem(path_a, f"{a} overlaps the {what} network {node_net} the VMs live on"))
    return problems


def _qemu_lab_subnet(provider: dict) -> ipaddress.IPv4Network | None:
    """provider.qemu.lab_subnet (or its default) when the lab's VMs live on it: type qemu, network lab."""
    from .model import QemuSettings

    qemu = provider.get("qemu") if isinstance(provider.get("qemu"), dict) else {}
    if provider.get("type") != "qemu" or qemu.get("network") != "lab":
        return None
    return _cidr_or_none(qemu.get("lab_subnet", QemuSettings.model_fields["lab_subnet"].default))


def _overlap_problems(networks: list[tuple[str, str, ipaddress.IPv4Network]]) -> list[Problem]:
    """Overlapping ranges where at least one of the two is a pod range: the later one (in file order) of each
    overlapping pair found is reported once, naming the other.

    A sweep by start address that remembers the range reaching furthest (of any kind, and of kind pod): n log n
    whatever the input, where comparing every pair would be quadratic in time and in output."""
    problems: dict[int, Problem] = {}
    furthest: dict[str, int | None] = {"any": None, "pod": None}  # index of the open range with the largest end

    def end(j: int) -> int:
        return int(networks[j][2].broadcast_address)

    for i in sorted(range(len(networks)), key=lambda k: int(networks[k][2].network_address)):
        start = int(networks[i][2].network_address)
        j = furthest["any" if networks[i][1] == "pod" else "pod"]
        if j is not None and end(j) >= start:
            first, later = min(i, j), max(i, j)
            (path_a, kind_a, a), (path_b, kind_b, b) = networks[first], networks[later]
            problems.setdefault(later, Problem(path_b, f"{b} overlaps {a} ({path_a}); {kind_a} and {kind_b} ranges "
                                               "must not overlap"))
        for kind in ("any", networks[i][1]):
            if kind in furthest and (furthest[kind] is None or end(i) > end(furthest[kind])):
                furthest[kind] = i
    return [problems[i] for i in sorted(problems)]


# ---- support and warnings ----------------------------------------------------------------------------------------

def support_problems(lab: Lab, today: date | None = None) -> list[Problem]:
    """Why labctl refuses to build this lab today (validate, plan and install ask; status, boot, shutdown and
    destroy do not, so a lab whose Kubernetes went end of life can still be run and torn down): a Kubernetes minor
    past its end of life (catalog.KUBERNETES_MINORS, from https://kubernetes.io/releases/), and the problems of files
    clusters.json names (a user manifests folder moved or broken). Returns [] or problems for ConfigError."""
    day = today or date.today()
    minor = int(lab.versions.kubernetes.split(".")[1])
    eol = catalog.KUBERNETES_MINORS.get(minor)
    if eol is None or day <= date.fromisoformat(eol):
        return list(lab._file_problems)
    alive = [m for m, end in catalog.KUBERNETES_MINORS.items() if date.fromisoformat(end) >= day]
    tip = f"e.g. 1.{max(alive)}" if alive else f"newer than 1.{max(catalog.KUBERNETES_MINORS)}"
    return [Problem("versions.kubernetes", f"Kubernetes 1.{minor} reached end of life on {eol} (no more security "
                    f"fixes; https://kubernetes.io/releases/): set a supported minor ({tip})"), *lab._file_problems]


def check_supported(lab: Lab, source: str, today: date | None = None) -> None:
    """Raise ConfigError (exit 2) with support_problems(), if any."""
    problems = support_problems(lab, today)
    if problems:
        raise ConfigError(source, problems)


def warnings(lab: Lab, today: date | None = None) -> list[str]:
    """Things that are legal but deserve a word: printed once by validate, plan and install (text and --json)."""
    out = []
    minor = int(lab.versions.kubernetes.split(".")[1])
    newest = max(catalog.KUBERNETES_MINORS)
    if minor > newest:
        out.append(f"versions.kubernetes: 1.{minor} is newer than the Kubernetes versions labctl knows (up to "
                   f"1.{newest}): it installs it like 1.{newest} (kubeadm v1beta4, 1.{newest}'s pause image), untested")
    for cluster, node in lab.nodes:
        if node.role == "master" and node.memory is not None and node.memory < 2048:
            out.append(f"{node.name}: {node.memory} MiB leaves little room for the control plane; 2048+ is safer")
    return out
