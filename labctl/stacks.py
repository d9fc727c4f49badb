"""Stacks as data: the catalogue under templates/stacks/<name>/, user stacks from clusters.json, and what each one
renders to (Helm values, manifests) for one cluster.

A catalogue stack is a folder holding `stack.yaml` (the descriptor, `Descriptor` below), Helm values templates and
manifest templates. Adding a stack is adding a folder; `phases/stacks.py` installs any of them. Every pinned chart
version lives in its descriptor, nowhere else. User stacks (a pinned chart, or a folder of manifests) come from
clusters.json and resolve to the same `StackDef`, so one code path installs, checks and prunes both.

Templates get these parameters (StrictUndefined: a typo is an error):
  lab, cluster      the models; `cluster.name`, `cluster.nodes`, `lab.versions`, ...
  stacks            the names of every stack declared on this cluster (a values template may adapt, e.g. to istio)
  namespace         the stack's namespace
  node_ports        the descriptor's NodePorts by name
  schedulable       how many nodes take ordinary pods (the workers; every node of a cluster without workers)
  credentials       by name: the Secret (namespace, name, user_key, password_key) holding that login
"""

from __future__ import annotations

import copy
import re
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import LabctlError
from .resources import TEMPLATES

if TYPE_CHECKING:
    from .model import Cluster, Lab

STACKS_DIR = TEMPLATES / "stacks"
READY_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "APIService", "CustomResourceDefinition")
READY = re.compile(r"^(?P<kind>[A-Za-z]+) (?:(?P<namespace>[a-z0-9-]+)/)?(?P<name>[a-z0-9.-]+)\Z")
EXACT_VERSION = re.compile(r"^v?\d+\.\d+\.\d+([-+][0-9A-Za-z.-]+)?\Z")
FIELD_MANAGER = "labctl"
STACK_LABEL = "labctl.internal/stack"  # on what labctl creates for a stack: namespaces, credential Secrets, ...
# Namespaces every cluster has from kubeadm on: never created, labelled or deleted for a stack
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProvidedCrd(_Strict):
    """A CRD a chart installs: its name (`<plural>.<group>`), kind and served version."""

    name: str
    kind: str
    version: str
    scope: Literal["Namespaced", "Cluster"] = "Namespaced"


class StackImage(_Strict):
    """A container image a stack runs, as the pod spec names it (so the kubelet finds it pulled: golden images
    pre-pull these). Written as a plain string, or as a mapping when labctl's values decide it."""

    ref: str
    set_by: str | None = Field(default=None, description="key of labctl's values that puts this image in, where the "
                               "chart's defaults do not (its template must name the image)")
    tag_from: str | None = Field(default=None, description="key of labctl's values the tag follows: a user's override "
                                 "of that key runs another tag, which is then pulled at install")

    @model_validator(mode="before")
    @classmethod
    def _plain(cls, data: Any) -> Any:
        return {"ref": data} if isinstance(data, str) else data


class Release(_Strict):
    """One Helm release of a stack."""

    release: str
    chart: str = Field(description="the chart's name in its repository")
    repo: str = Field(description="Helm repository URL (https://…) or an OCI registry path (oci://…)")
    version: str = Field(description="the pinned chart version")
    namespace: str | None = Field(default=None, description="default: the stack's namespace")
    values: str | None = Field(default=None, description="values template, relative to the stack folder")
    crds: str | None = Field(
        default=None, description="folder inside the chart whose CRDs `helm upgrade` never upgrades; labctl applies "
        "them server-side before every install or upgrade")
    provides_crds: list[ProvidedCrd] = Field(default_factory=list)
    ready: list[str] = Field(
        default_factory=list, description="'Kind namespace/name' of what this release creates that means ready; each "
        "must be in the chart's `helm template` output (reference/charts/<chart>/workloads.txt)")
    images: list[StackImage] = Field(
        default_factory=list, description="the images the pinned chart version runs with labctl's values (from "
        "reference/charts/<chart>/chart.txt for exactly that version; tests/unit/test_stack_images.py checks them)")


class Credential(_Strict):
    """A login labctl generates for the lab and keeps in a Secret the chart is pointed at."""

    name: str = Field(description="what `labctl credentials` calls it, e.g. grafana")
    user: str = "admin"
    namespace: str
    secret: str
    user_key: str | None = None
    password_key: str
    hash: Literal["plain", "bcrypt"] = "plain"
    extra: dict[str, str] = Field(default_factory=dict, description="more keys of the Secret: fixed values, in which "
                                  "{user} and {password} stand for the login (e.g. an AWS credentials file)")
    labels: dict[str, str] = Field(default_factory=dict)
    sealed: bool = Field(default=False, description="delivered as a SealedSecret that the stack's hook seals to the "
                         "sealed-secrets controller's key (labctl/stack_hooks_sealed.py), never as a plain Secret")


class Descriptor(_Strict):
    """templates/stacks/<name>/stack.yaml."""

    summary: str
    namespace: str
    requires: list[str] = Field(default_factory=list)
    after: list[str] = Field(
        default_factory=list, description="stacks installed before this one when the cluster declares them too "
        "(ordering only, not a requirement): e.g. the demo apps after istio, so their pods start with a sidecar")
    releases: list[Release] = Field(default_factory=list)
    manifests: list[str] = Field(default_factory=list, description="manifest templates, applied in this order")
    images: list[StackImage] = Field(
        default_factory=list, description="images the manifests run that are not a container of a workload they "
        "render (e.g. a helper pod's template kept in a ConfigMap); the workloads' own come from the manifests")
    ready: list[str] = Field(
        default_factory=list, description="more 'Kind namespace/name' objects that mean ready, beyond the releases' "
        "own and the workloads in the manifests (e.g. what an operator creates)")
    node_ports: dict[str, int] = Field(default_factory=dict)
    urls: dict[str, str] = Field(default_factory=dict, description="name → URL with {address} for a node address")
    requests: dict[Literal["cpu", "memory"], str] = Field(default_factory=dict,
                                                          description="rough sum of the stack's requests")
    sidecar_requests: dict[Literal["cpu", "memory"], str] = Field(
        default_factory=dict, description="a service mesh: the requests of the proxy it injects into every pod of a "
        "meshed namespace (validation adds them per `meshed_pods` of the other stacks)")
    meshed_pods: int = Field(default=0, ge=0, description="pods (at their HPAs' minimum) this stack runs in a "
                             "namespace the mesh injects, when the cluster declares a mesh")
    credentials: list[Credential] = Field(default_factory=list)
    hooks: list[str] = Field(default_factory=list, description="named hooks in labctl/stack_hooks.py")
    arm64: str = Field(default="", description="evidence that every image runs on linux/arm64")
    architectures: list[Literal["amd64", "arm64"]] = Field(
        default=["amd64", "arm64"], description="the VM architectures its images run on; `labctl validate` refuses "
        "the stack on a provider whose VMs are another (e.g. harbor: amd64 only, not on Apple silicon)")
    alternative: str = Field(default="", description="the catalogue stack to declare instead where this one's "
                             "images do not run (validation names it)")
    docs: str = ""


@lru_cache(maxsize=1)
def catalogue() -> dict[str, Descriptor]:
    """Every catalogue stack by name, read from templates/stacks/*/stack.yaml.

    Raises LabctlError naming the file when a descriptor is not valid (a broken installation, not user input)."""
    import yaml

    out: dict[str, Descriptor] = {}
    for path in sorted(STACKS_DIR.glob("*/stack.yaml")):
        try:
            out[path.parent.name] = Descriptor.model_validate(yaml.load(path.read_text(), Loader=fast_loader()))
        except (ValidationError, yaml.YAMLError) as exc:
            raise LabctlError(f"{path}: not a valid stack descriptor: {exc}") from None
    return out


def known_names() -> list[str]:
    return sorted(catalogue())


def parse_ready(entry: str, default_namespace: str) -> tuple[str, str, str]:
    """'Deployment monitoring/grafana' → (kind, namespace, name); cluster-scoped kinds have namespace ''."""
    m = READY.match(entry)
    if not m:
        raise ValueError(f"{entry!r} is not 'Kind namespace/name'")
    namespaced = m["kind"] not in ("APIService", "CustomResourceDefinition")
    return m["kind"], (m["namespace"] or default_namespace) if namespaced else "", m["name"]


def cpu_millis(text: str) -> int:
    """'1500m' → 1500, '2' → 2000 (Kubernetes quantity, CPU)."""
    text = str(text)
    return int(text[:-1]) if text.endswith("m") else int(float(text) * 1000)


_MEMORY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def memory_bytes(text: str) -> int:
    """'512Mi' → 536870912 (Kubernetes quantity, memory)."""
    text = str(text)
    for suffix in sorted(_MEMORY, key=len, reverse=True):
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * _MEMORY[suffix])
    return int(text)


_QUANTITY = re.compile(r"([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?\Z")
_SUFFIX = {None: 1, "n": "1e-9", "u": "1e-6", "m": "1e-3", "k": "1e3", "M": "1e6", "G": "1e9", "T": "1e12",
           "P": "1e15", "E": "1e18", "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def quantity(value: Any):
    """A Kubernetes quantity's value as a Decimal ('500m' → 0.5, '1Gi' → 1073741824, 2 → 2), None if it is not one.
    Source: the quantity grammar of k8s.io/apimachinery/pkg/api/resource."""
    from decimal import Decimal, InvalidOperation

    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    m = _QUANTITY.match(str(value).strip())
    if not m:
        return None
    try:
        return Decimal(m[1]) * Decimal(str(_SUFFIX[m[2]]))
    except InvalidOperation:
        return None


def deep_merge(base: Any, override: Any) -> Any:
    """Helm's rule for -f files: maps merge key by key, anything else (lists too) is replaced; None removes."""
    if not isinstance(base, dict) or not isinstance(override, dict):
        return copy.deepcopy(override)
    out = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = deep_merge(out.get(key), value)
    return out


def fast_loader():
    """PyYAML's libyaml-backed safe loader (its wheels ship it; ~10x the pure-Python one, which made `validate` and
    `plan` spend most of their time parsing labctl's own stack templates), else the pure-Python SafeLoader. For
    labctl's own files: user manifests go through _no_alias_loader."""
    import yaml

    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@lru_cache(maxsize=1)
def _no_alias_loader():
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        """YAML without aliases: a few lines of nested aliases expand to billions of nodes ("billion laughs"), and
        Kubernetes manifests have no use for them."""

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in manifests",
                                                  event.start_mark)
            return super().compose_node(parent, index)

    return NoAliasLoader


def read_manifests(folder: Path) -> list[dict]:
    """Every object in the *.yaml / *.yml files of `folder` (sorted by file name, then document order).

    Raises LabctlError when the folder is missing, holds no YAML file or no object, a file does not parse, or a
    document is not a Kubernetes object (apiVersion, kind, metadata.name)."""
    import yaml

    if not folder.is_dir():
        raise LabctlError(f"{folder} is not a folder (relative paths are beside clusters.json)")
    files = sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    if not files:
        raise LabctlError(f"{folder} holds no .yaml or .yml file")
    objects = []
    for path in files:
        try:
            docs = list(yaml.load_all(path.read_text(encoding="utf-8"), Loader=_no_alias_loader()))
        except UnicodeDecodeError:
            raise LabctlError(f"{path.name} is not UTF-8 text") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise LabctlError(f"{path.name} is not valid YAML{where}: {problem}") from None
        for i, doc in enumerate(docs):
            if doc is None:
                continue
            if not isinstance(doc, dict):
                raise LabctlError(f"{path.name}, document {i + 1}: not a Kubernetes object (a mapping)")
            missing = [f for f, v in (("apiVersion", doc.get("apiVersion")), ("kind", doc.get("kind")),
                                      ("metadata.name", (doc.get("metadata") or {}).get("name")
                                       if isinstance(doc.get("metadata"), dict) else None)) if not v]
            if missing:
                raise LabctlError(f"{path.name}, document {i + 1}: not a Kubernetes object: {', '.join(missing)} "
                                  "missing")
            objects.append(doc)
    if not objects:
        raise LabctlError(f"{folder} holds no Kubernetes object")
    return objects


# ---- a stack resolved for one cluster ---------------------------------------------------------------------------

class ReleaseDef(_Strict):
    """A Helm release as it will be installed: everything the helm script and the check need."""

    release: str
    chart: str
    repo: str
    version: str
    namespace: str
    values: dict[str, Any]
    crds: str | None = None
    provides_crds: list[str] = Field(default_factory=list, description="names of the CRDs the chart installs")

    @property
    def chart_ref(self) -> str:
        """What `helm upgrade --install` gets: `<repo name>/<chart>` for a Helm repository, the full OCI path else."""
        return f"{self.repo.rstrip('/')}/{self.chart}" if self.repo.startswith("oci://") else f"{self.repo_name}/{self.chart}"

    @property
    def repo_name(self) -> str:
        """A local name for the repository: stable per URL, so two stacks sharing a repository share the entry."""
        import hashlib

        return "labctl-" + hashlib.sha256(self.repo.encode()).hexdigest()[:10]


class StackDef(_Strict):
    """One declared stack on one cluster, rendered: what to install, in which order, and what means ready."""

    name: str
    source: Literal["catalogue", "chart", "manifests"]
    namespace: str
    requires: list[str]
    releases: list[ReleaseDef]
    objects: list[dict[str, Any]]
    ready: list[tuple[str, str, str]]
    node_ports: dict[str, int]
    urls: dict[str, str]
    credentials: list[Credential]
    hooks: list[str]


def node_ports(objects: list[dict]) -> dict[str, int]:
    """The NodePorts the Services among `objects` claim: '<service>' (or '<service>-<port name>') → port."""
    out = {}
    for obj in objects:
        if obj.get("kind") != "Service":
            continue
        ports = [p for p in (obj.get("spec") or {}).get("ports") or [] if isinstance(p, dict) and "nodePort" in p]
        for p in ports:
            key = obj["metadata"]["name"] + (f"-{p['name']}" if len(ports) > 1 and p.get("name") else "")
            out[key] = p["nodePort"]
    return out


def _template_params(lab: Lab, cluster: Cluster, name: str, descriptor: Descriptor) -> dict[str, Any]:
    workers = [n for n in cluster.nodes if n.role == "worker"]
    return {
        "lab": lab,
        "cluster": cluster,
        "stacks": cluster.stack_names,
        "namespace": descriptor.namespace,
        "node_ports": descriptor.node_ports,
        "schedulable": len(workers) or len(cluster.nodes),
        "credentials": {c.name: c for c in descriptor.credentials},
    }


def _render_yaml(template: str, params: dict[str, Any]) -> list[dict]:
    import yaml

    from .render import render

    return [d for d in yaml.load_all(render(template, **params), Loader=fast_loader()) if d is not None]


def _workload_ready(objects: list[dict], namespace: str) -> list[tuple[str, str, str]]:
    """User manifests: their workloads are what 'ready' means."""
    out = []
    for obj in objects:
        if obj.get("kind") in READY_KINDS:
            meta = obj["metadata"]
            cluster_scoped = obj["kind"] in ("APIService", "CustomResourceDefinition")
            out.append((obj["kind"], "" if cluster_scoped else meta.get("namespace") or namespace, meta["name"]))
    return out


def resolve(lab: Lab, cluster: Cluster, name: str, lab_dir: Path) -> StackDef:
    """The stack `name` of `cluster` rendered for it. `lab_dir`: the folder of clusters.json (user manifests).

    Raises KeyError for a stack the cluster does not declare, LabctlError when a template or a manifest fails."""
    spec = cluster.stack(name)
    descriptor = catalogue().get(name)
    if descriptor is not None:
        params = _template_params(lab, cluster, name, descriptor)
        folder = f"stacks/{name}"
        releases = []
        for r in descriptor.releases:
            values = _render_yaml(f"{folder}/{r.values}", params)[0] if r.values else {}
            # overrides: keyed by release name for a stack of several releases, plain values for a one-release stack
            override = spec.values.get(r.release, {}) if len(descriptor.releases) > 1 else spec.values
            releases.append(ReleaseDef(release=r.release, chart=r.chart, repo=r.repo, version=r.version,
                                       namespace=r.namespace or descriptor.namespace,
                                       values=deep_merge(values, override or {}), crds=r.crds,
                                       provides_crds=[c.name for c in r.provides_crds]))
        objects = [o for m in descriptor.manifests for o in _render_yaml(f"{folder}/{m}", params)]
        return StackDef(
            name=name, source="catalogue", namespace=descriptor.namespace,
            requires=[*descriptor.requires, *spec.requires], releases=releases, objects=objects,
            ready=[*(parse_ready(e, rel.namespace) for r, rel in zip(descriptor.releases, releases, strict=True)
                     for e in r.ready),
                   *_workload_ready(objects, descriptor.namespace),
                   *(parse_ready(e, descriptor.namespace) for e in descriptor.ready)],
            node_ports=descriptor.node_ports, urls=descriptor.urls, credentials=descriptor.credentials,
            hooks=descriptor.hooks,
        )
    namespace = spec.namespace or name
    if spec.chart:
        release = ReleaseDef(release=spec.release or name, chart=spec.chart, repo=spec.repo or "",
                             version=spec.version or "", namespace=namespace, values=dict(spec.values))
        return StackDef(name=name, source="chart", namespace=namespace, requires=spec.requires, releases=[release],
                        objects=[], ready=[], node_ports={}, urls={}, credentials=[], hooks=[])
    if spec.manifests:
        objects = read_manifests(lab_dir / spec.manifests)
        ports = node_ports(objects)
        return StackDef(name=name, source="manifests", namespace=namespace, requires=spec.requires, releases=[],
                        objects=objects, ready=_workload_ready(objects, namespace), node_ports=ports,
                        urls={k: f"http://{{address}}:{p}/" for k, p in ports.items()}, credentials=[], hooks=[])
    raise LabctlError(f"{cluster.name}: stack {name!r} is not installable by this labctl version")


def _pod_spec(obj: dict) -> dict:
    """The pod template's spec of a workload object (Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job,
    CronJob), {} for any other kind."""
    spec = obj.get("spec") or {}
    if obj.get("kind") == "Pod":
        return spec
    if obj.get("kind") == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    return ((spec.get("template") or {}).get("spec")) or {}


def images(lab: Lab, cluster: Cluster, name: str) -> list[str]:
    """The images catalogue stack `name` runs on `cluster`, in order, without duplicates: its releases' (the
    descriptor's `images`, from reference/charts/<chart>/chart.txt at the pinned versions), the containers and init
    containers of the workloads its manifests render for this cluster, and the descriptor's own `images`. [] for a
    stack not in the catalogue (a user's chart or manifests: not known before install). Raises what `resolve`
    raises."""
    descriptor = catalogue().get(name)
    if descriptor is None:
        return []
    found = [i.ref for r in descriptor.releases for i in r.images]
    for obj in resolve(lab, cluster, name, Path()).objects:
        spec = _pod_spec(obj)
        found += [c["image"] for key in ("initContainers", "containers") for c in spec.get(key) or [] if c.get("image")]
    found += [i.ref for i in descriptor.images]
    return list(dict.fromkeys(found))


def installable(cluster: Cluster) -> list[str]:
    """The declared stacks this labctl can install (catalogue folders and user stacks), in declaration order."""
    return [s.name for s in cluster.stack_specs if s.name in catalogue() or s.chart or s.manifests]


def object_namespace(kube, obj: dict, default: str) -> str:
    """Where a manifest object lives: '' for a cluster-scoped kind (as the API serves it), else its own namespace or
    the stack's. A kind not served yet counts as namespaced."""
    resource = kube.resource(obj["apiVersion"], obj["kind"])
    if resource is not None and not resource[1]:
        return ""
    return obj["metadata"].get("namespace") or default


def health(kube, stack: StackDef) -> tuple[bool, str]:
    """How a stack is doing, for `status` and `smoke`: its releases deployed at the pinned versions, every manifest
    object present, and its ready-objects ready. (ok, detail); raises the facade's KubeError when the API cannot be
    asked."""
    from functools import partial

    from .kube.client import parallel

    # presence: one metadata-only list per kind and namespace, not one read per object (a stack declares tens)
    where = [(obj["apiVersion"], obj["kind"], object_namespace(kube, obj, stack.namespace), obj["metadata"]["name"])
             for obj in stack.objects]
    kinds = list(dict.fromkeys(w[:3] for w in where))
    # every question at once (one round trip, not one per question); the first problem in declaration order is told
    answers = parallel(*(partial(kube.helm_release, r.namespace, r.release) for r in stack.releases),
                       *(partial(kube.names, *k) for k in kinds),
                       *(partial(kube.ready, *entry) for entry in stack.ready))
    lives = answers[:len(stack.releases)]
    listed = dict(zip(kinds, answers[len(stack.releases):len(stack.releases) + len(kinds)], strict=True))
    readiness = answers[len(stack.releases) + len(kinds):]
    absent = [f"{kind} {namespace + '/' if namespace else ''}{name} missing"
              for api_version, kind, namespace, name in where
              if name not in (listed[(api_version, kind, namespace)] or {})]
    versions = []
    for r, live in zip(stack.releases, lives):
        if live is None:
            return False, f"release {r.release} not installed"
        if live.status != "deployed" or live.chart_version != r.version:
            return False, f"release {r.release}: {live.status}, chart {live.chart_version} (want {r.version})"
        versions.append(f"{r.chart} {live.chart_version}")
    problem = next(iter(absent), None) or next((r.detail for r in readiness if not r), None)
    if problem:
        return False, problem
    parts = [*versions]
    if stack.objects:
        parts.append(f"{len(stack.objects)} object{'s' if len(stack.objects) != 1 else ''} present")
    if stack.ready:
        parts.append(f"{len(stack.ready)} ready")
    return True, "; ".join(parts or ["deployed"])
