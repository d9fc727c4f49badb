"""Checks of one cluster's `stacks` list, on the raw JSON data: known names, user stacks complete (a chart or a
manifests folder), requirements present and acyclic, Helm releases and NodePorts not claimed twice, and the declared
requests fitting the nodes. Called by validation.lab_problems() for each cluster.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

from .errors import LabctlError, Problem
from .model import dns_label

# System pods on every node (Cilium agent and Envoy, kubelet, containerd, the OS itself) before any stack: a rough
# reserve, so the fit check errs on the side of warning early rather than leaving pods Pending.
NODE_RESERVE_CPU_M = 300
NODE_RESERVE_MEMORY_MIB = 768


def _schedulable(nodes: list) -> list[dict]:
    """The nodes that take a stack's pods: the workers, or every node of a cluster without workers."""
    nodes = [n for n in nodes if isinstance(n, dict)]
    workers = [n for n in nodes if n.get("role") == "worker"]
    return workers or nodes


def stack_problems(cluster: dict, cpath: str, base_dir: Path | None, arch: str | None = None) -> list[Problem]:
    """Each entry of a cluster's `stacks`, and the list as a whole: known names, user stacks complete, requirements
    present and acyclic, NodePorts unique in the cluster, catalogue stacks whose images run on the VMs' architecture,
    and the declared requests fitting the nodes. `cluster`: the raw object at `cpath` (e.g. "clusters[0]");
    `base_dir`: where manifests folders are; `arch`: the VMs' architecture ("arm64", "amd64"; host.guest_architecture),
    None to skip that check. Returns every problem."""
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
        if name in catalogue:
            if user_fields:
                problems.append(Problem(f"{spath}.{user_fields[0]}", f"{name!r} is a catalogue stack: only `values` "
                                        f"and `requires` can be set on it, not `{user_fields[0]}`; for your own chart "
                                        "or manifests give the stack another name"))
            descriptor = catalogue.get(name)
            requires[name] = [*((r, None) for r in (descriptor.requires if descriptor else [])), *own_requires]
            problems += _values_problems(name, descriptor, spec.get("values"), spath)
            for r in descriptor.releases if descriptor else []:
                problems += _claim_release(releases, r.namespace or descriptor.namespace, r.release, name, spath)
            if descriptor is not None and arch and arch not in descriptor.architectures:
                problems.append(_architecture_problem(name, descriptor, arch, entry, spath))
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
            # the fix first: the catalogue's list grows with every stack, and long messages are cut at the end
            tip = f"did you mean {near[0]!r}? " if near else ""
            problems.append(Problem(f"{spath}.name" if isinstance(entry, dict) else spath,
                                    f"unknown stack {name!r}: {tip}your own stack needs `chart`, `repo` and "
                                    f"`version`, or `manifests`; the catalogue has {', '.join(known)}"))
        for field, limit in (("namespace", 63), ("release", 53)):
            value = spec.get(field)
            if isinstance(value, str):
                try:
                    dns_label(value, limit)
                except ValueError as exc:
                    problems.append(Problem(f"{spath}.{field}", str(exc)))
    for mesh in (catalogue[n] for n in names if n in catalogue and catalogue[n].sidecar_requests):
        # an injected proxy per meshed pod: on a small worker these decide whether the demo pods schedule at all
        pods = sum(catalogue[n].meshed_pods for n in names if n in catalogue)
        cpu_m += pods * S.cpu_millis(mesh.sidecar_requests.get("cpu", "0"))
        memory += pods * S.memory_bytes(mesh.sidecar_requests.get("memory", "0"))
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
                # a suggestion among a handful of names; thousands of stacks would make this quadratic
                near = difflib.get_close_matches(need, [n for n in names if n != name], n=1) if len(names) <= 100 else []
                tip = f"did you mean {near[0]!r}? " if near else ""
                problems.append(Problem(path, f"stack {name!r} requires {need!r}, which this cluster does not list: "
                                        f"{tip}add {need!r} to its stacks or drop it from `requires`"))
    order = {name: [need for need, _ in needs if need != name] for name, needs in requires.items()}
    for name in order:  # a descriptor's `after` orders its stack behind the declared ones: a loop would deadlock too
        order[name] += [a for a in getattr(catalogue.get(name), "after", []) if a in names]
    cycle = _cycle(order)
    if cycle:
        problems.append(Problem(f"{cpath}.stacks", f"stacks require each other in a circle: {' → '.join(cycle)}; "
                                "drop one of these requirements"))
    problems += _fit_problems(cluster, cpath, cpu_m, memory)
    return problems


def _architecture_problem(name: str, descriptor: Any, arch: str, entry: Any, spath: str) -> Problem:
    """A catalogue stack whose images are not published for the VMs' architecture: its pods would never start
    (`exec format error`), so validation says so before anything is installed."""
    instead = f"; declare {descriptor.alternative!r} instead" if descriptor.alternative else ""
    return Problem(f"{spath}.name" if isinstance(entry, dict) else spath,
                   f"stack {name!r} runs only on {', '.join(descriptor.architectures)} VMs (its pinned images have "
                   f"no {arch} build), and this lab's VMs are {arch} (Tart's always are; QEMU's are the host's "
                   f"architecture){instead}")


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
        return [Problem(f"{spath}.manifests", exc.message, of_file=True)], []
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

