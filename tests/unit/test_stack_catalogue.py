"""Conformance of every catalogue stack (templates/stacks/<name>/), rendered for a realistic lab.

Every folder with a stack.yaml is covered automatically: the tests are parametrized over the folders (per stack) and
over the releases their descriptors declare (per release). The lab declares every catalogue stack on one cluster,
plus whatever they require, on 1 master (2 CPU / 4 GiB) and 3 workers (4 CPU / 16 GiB).

Facts about the charts (versions, repositories, `helm template` objects, values keys, values schemas, CRD schemas)
come from ../shared/reference beside the checkout (tests/unit/reference.py reads them). When that folder is absent
the tests that need it are skipped, except under CI=true, where they fail.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

import pytest
import yaml

from labctl import credentials, model, stacks
from tests.unit import reference as ref

# ---- what is covered ------------------------------------------------------------------------------------------------

# Folders, not catalogue(): one broken descriptor must fail its own tests, not stop the module from being collected.
STACK_NAMES = sorted(p.parent.name for p in stacks.STACKS_DIR.glob("*/stack.yaml"))


def _descriptor_or_none(name: str) -> stacks.Descriptor | None:
    try:
        return stacks.Descriptor.model_validate(yaml.safe_load((stacks.STACKS_DIR / name / "stack.yaml").read_text()))
    except Exception:  # noqa: BLE001 - reported by test_descriptor_basics through catalogue()
        return None


RELEASES = [(s, r.release) for s in STACK_NAMES if (d := _descriptor_or_none(s)) for r in d.releases]
RELEASE_IDS = [f"{s}/{r}" for s, r in RELEASES]

# Custom resources allowed without a JSON Schema in reference/crd-schemas: (apiVersion, kind) → why. Keep it empty.
CR_WITHOUT_SCHEMA: dict[tuple[str, str], str] = {}

# Credential Secrets that a chart reads under a fixed name (hard-coded in its templates, so the name never appears in
# the values): (chart, Secret) → (values path that must be set, its value, why). The values setting is checked, so
# the entry still proves the chart is pointed at labctl's Secret rather than making its own.
FIXED_SECRET_NAMES: dict[tuple[str, str], tuple[str, Any, str]] = {
    ("argo-cd", "argocd-secret"): (
        "configs.secret.createSecret", False,
        "argo-cd's templates read the admin password from the fixed Secret argocd-secret; createSecret false makes "
        "the chart leave it to labctl"),
}

# Free-form maps that values-keys.txt does not mark ` {map}` (its marking is a heuristic, reference/charts/README.md):
# chart folder → {path: the reference's own words}. Only paths chart.txt itself calls free-form belong here.
EXTRA_FREE_MAPS: dict[str, dict[str, str]] = {
    "argo-cd": {"configs.params": "argo-cd/chart.txt notes: configs.params is a free-form map of "
                                  "argocd-cmd-params-cm keys (e.g. server.insecure)"},
}

# Lists a chart's template writes out whole (`toYaml`), so their items take every field of the Kubernetes type, not
# only those of the default items values-keys.txt lists: chart folder → {path: the chart source that shows it}.
PASSED_THROUGH_LISTS: dict[str, dict[str, str]] = {
    "istio-gateway": {"service.ports[]": "istio/istio 1.30.3 manifests/charts/gateway/templates/service.yaml writes "
                                         "`.Values.service.ports | toYaml` into the Service's ports (so nodePort)"},
}

# Kinds whose pods stay: their containers count towards `requests` and must declare requests.
POD_OWNERS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Pod"}


# ---- the lab ----------------------------------------------------------------------------------------------------

def _lab_json() -> str:
    """One cluster declaring every catalogue stack and what they require, requirements first."""
    catalogue = {n: d for n in STACK_NAMES if (d := _descriptor_or_none(n))}
    order: list[str] = []

    def visit(name: str, seen: tuple[str, ...] = ()) -> None:
        if name in order or name in seen:
            return
        descriptor = catalogue.get(name)
        for need in descriptor.requires if descriptor else []:
            visit(need, (*seen, name))
        order.append(name)

    for name in STACK_NAMES:
        visit(name)
    return json.dumps({
        "versions": {"kubernetes": "1.35.6"},
        # QEMU VMs on an amd64 host (lab() fixes the host's machine): harbor's images are amd64-only, and every stack
        # must validate here
        "provider": {"type": "qemu"}, "base_image": "lab.qcow2",
        "clusters": [{
            "name": "lab", "pod_cidr": "10.10.0.0/16", "service_cidr": "10.96.0.0/16",
            "stacks": order,
            "nodes": [
                {"name": "lab-master", "role": "master", "cpu": 2, "memory": 4096, "disk": 20},
                *({"name": f"lab-worker{i}", "role": "worker", "cpu": 4, "memory": 16384, "disk": 40,
                   "labels": {"node-role.kubernetes.io/worker": ""}} for i in (1, 2, 3)),
            ],
        }, {
            # a second cluster, so stacks that register the lab's other clusters (argocd) have one to see
            "name": "spoke", "pod_cidr": "10.20.0.0/16", "service_cidr": "10.97.0.0/16",
            "nodes": [{"name": "spoke-master", "role": "master", "cpu": 2, "memory": 4096, "disk": 20}],
        }],
    })


@lru_cache(maxsize=1)
def lab() -> model.Lab:
    from unittest import mock

    with mock.patch("labctl.host.platform.machine", return_value="x86_64"):
        return model.parse(_lab_json(), source="test lab")


def cluster() -> model.Cluster:
    return lab().cluster("lab")


@lru_cache(maxsize=None)
def rendered(name: str) -> stacks.StackDef:
    return stacks.resolve(lab(), cluster(), name, Path("."))


def descriptor(name: str) -> stacks.Descriptor:
    return stacks.catalogue()[name]


def release_of(stack: str, release: str) -> tuple[stacks.Release, stacks.ReleaseDef]:
    spec = next(r for r in descriptor(stack).releases if r.release == release)
    done = next(r for r in rendered(stack).releases if r.release == release)
    return spec, done


def need_reference() -> None:
    """Skip (or, with CI=true, fail) when ../shared/reference is not beside the checkout."""
    if (ref.CHARTS / "README.md").exists() and ref.CRD_SCHEMAS.is_dir():
        return
    why = f"reference facts not found at {ref.REFERENCE} (../shared/reference beside the checkout)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{why}; CI=true requires them")
    pytest.skip(why)


@pytest.fixture
def reference() -> None:
    need_reference()


def chart_facts(chart: str) -> ref.ChartFacts:
    facts = ref.chart_folder(chart)
    if facts is None:
        pytest.fail(f"no folder under {ref.CHARTS} has a chart.txt with `chart: {chart}` (exactly one is needed); "
                    f"known: {sorted(c.chart for c in ref.charts().values())}")
    return facts


def matching_renders(facts: ref.ChartFacts, release: stacks.ReleaseDef) -> list[ref.Render]:
    return [r for r in ref.renders(facts.folder) if r.release == release.release and r.namespace == release.namespace]


# ---- walking rendered data ----------------------------------------------------------------------------------------

def walk(value: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """Every (path, value) in a nested dict/list, the root included."""
    yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from walk(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from walk(v, (*path, i))


def strings(value: Any) -> Iterator[str]:
    for _, v in walk(value):
        if isinstance(v, str):
            yield v
        elif isinstance(v, dict):
            yield from (k for k in v if isinstance(k, str))


def obj_id(obj: dict) -> str:
    meta = obj.get("metadata") or {}
    return f"{obj.get('kind')} {meta.get('namespace', '') + '/' if meta.get('namespace') else ''}{meta.get('name')}"


def pod_specs(obj: dict) -> Iterator[dict]:
    """The pod specs of an object: a Pod's spec, a workload's template, a CronJob's job template."""
    spec = obj.get("spec") or {}
    if obj.get("kind") == "Pod":
        yield spec
    elif obj.get("kind") == "CronJob":
        yield ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template", {}).get("spec") or {}
    elif isinstance(spec.get("template"), dict):
        yield spec["template"].get("spec") or {}


def containers(obj: dict, init: bool = True) -> Iterator[dict]:
    for pod in pod_specs(obj):
        for field in ("containers", *(("initContainers", "ephemeralContainers") if init else ())):
            yield from (c for c in pod.get(field) or [] if isinstance(c, dict))


def escape(key: str) -> str:
    return str(key).replace("\\", "\\\\").replace(".", "\\.")


def key_paths(values: Any, prefix: str = "") -> Iterator[str]:
    """values-keys.txt paths of a values dict: `a.b`, a list as `a[]`, its items' keys as `a[].c`."""
    if not isinstance(values, dict):
        return
    for k, v in values.items():
        path = f"{prefix}.{escape(k)}" if prefix else escape(k)
        if isinstance(v, list):
            yield path + "[]"
            for item in v:
                yield from key_paths(item, path + "[]")
        else:
            yield path
            yield from key_paths(v, path)


def path_known(path: str, keys: ref.ValueKeys) -> bool:
    if path in keys.paths:
        return True
    # a list given where the default is null or a scalar (the key is listed without `[]`): no item shape is known
    if path.endswith("[]") and keys.free_scalar(path[:-2]):
        return True
    segments = re.split(r"(?<!\\)\.", path)
    for i in range(1, len(segments)):
        ancestor = ".".join(segments[:i])
        if ancestor in keys.maps or keys.free_list(ancestor):
            return True
        if ancestor.endswith("[]") and keys.free_scalar(ancestor[:-2]):
            return True
        # `x.resources` listed without sub-keys (commented out in values.yaml, read by a template): a container's
        # ResourceRequirements, which charts pass through with toYaml (e.g. harbor's core.resources)
        if segments[i - 1] == "resources" and keys.free_scalar(ancestor):
            return True
    return False


def get_path(values: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(values, dict) or part not in values:
            return None
        values = values[part]
    return values


# ---- 0. the catalogue and the lab -----------------------------------------------------------------------------

def test_catalogue_loads_every_folder():
    assert "metrics-server" in STACK_NAMES
    assert sorted(stacks.catalogue()) == STACK_NAMES


def test_lab_with_every_stack_validates():
    """model.parse accepts the lab (names, requirements, NodePort clashes, the fit check)."""
    parsed = lab()
    assert set(STACK_NAMES) <= set(parsed.cluster("lab").stack_names)


@pytest.mark.parametrize("name", STACK_NAMES)
def test_stack_renders(name):
    stack = rendered(name)
    descriptor_ = descriptor(name)
    assert [r.release for r in stack.releases] == [r.release for r in descriptor_.releases]
    assert stack.releases or stack.objects, f"{name}: neither a release nor a manifest object"
    for obj in stack.objects:
        assert isinstance(obj, dict) and obj.get("apiVersion") and obj.get("kind") and \
            (obj.get("metadata") or {}).get("name"), f"{name}: not a Kubernetes object: {str(obj)[:200]}"


# ---- 9. descriptor basics -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", STACK_NAMES)
def test_descriptor_basics(name):
    d = descriptor(name)
    problems = []
    if not d.summary.strip():
        problems.append("summary is empty")
    if not d.arm64.strip():
        problems.append("arm64 evidence is empty")
    catalogue = stacks.catalogue()
    problems += [f"requires {need!r}, which is not a catalogue stack" for need in d.requires if need not in catalogue]
    assert not problems, f"{name}: " + "; ".join(problems)


@pytest.mark.parametrize("name", STACK_NAMES)
def test_credential_secrets_are_referenced(name):
    """Every credential's Secret is named in the rendered values or manifests: the chart is pointed at it."""
    d = descriptor(name)
    if not d.credentials:
        pytest.skip(f"{name} has no credentials")
    stack = rendered(name)
    texts = [*(s for r in stack.releases for s in strings(r.values)), *(s for o in stack.objects for s in strings(o))]
    missing = []
    for cred in d.credentials:
        word = re.compile(rf"(?<![A-Za-z0-9-]){re.escape(cred.secret)}(?![A-Za-z0-9-])")
        if any(word.search(t) for t in texts):
            continue
        fixed = [(r, FIXED_SECRET_NAMES[(r.chart, cred.secret)]) for r in stack.releases
                 if (r.chart, cred.secret) in FIXED_SECRET_NAMES]
        if fixed and all(get_path(r.values, path) == want for r, (path, want, _) in fixed):
            continue
        missing.append(f"credential {cred.name}: Secret {cred.namespace}/{cred.secret}")
    assert not missing, f"{name}: not referenced by any rendered value or manifest: {missing}"


# ---- 2. chart, version, repository --------------------------------------------------------------------------

@pytest.mark.parametrize(("stack", "release"), RELEASES, ids=RELEASE_IDS)
def test_release_chart_matches_reference(reference, stack, release):
    _, r = release_of(stack, release)
    facts = chart_facts(r.chart)
    problems = []
    if r.version != facts.version:
        problems.append(f"version {r.version} != {facts.version} ({facts.folder}/chart.txt)")
    if not ref.repo_matches(facts, r.repo):
        problems.append(f"repo {r.repo} is none of {list(facts.repos)} ({facts.folder}/chart.txt)")
    assert not problems, f"{stack}/{release} (chart {r.chart}): " + "; ".join(problems)


# ---- 3. ready objects ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("stack", "release"), RELEASES, ids=RELEASE_IDS)
def test_release_ready_objects_are_in_the_render(reference, stack, release):
    spec, r = release_of(stack, release)
    facts = chart_facts(r.chart)
    found = matching_renders(facts, r)
    if not found:
        renders = [(x.release, x.namespace) for x in ref.renders(facts.folder)]
        pytest.fail(f"{stack}/{release}: workloads.txt of {facts.folder} has no render of release {r.release!r} in "
                    f"namespace {r.namespace!r}; renders: {renders} (the stacks use the renders' release names and "
                    "namespaces)")
    assert spec.ready, f"{stack}/{release}: no `ready` entries (what means this release is up?)"
    entries = {e.key: e for x in found for e in x.entries}
    problems = []
    for text in spec.ready:
        key = stacks.parse_ready(text, r.namespace)
        entry = entries.get(key)
        if entry is None:
            problems.append(f"{text!r} = {key} is not in the render")
        elif entry.operator_created:
            problems.append(f"{text!r} is created by an operator, not by Helm: move it to the descriptor's `ready`")
        elif entry.hook:
            problems.append(f"{text!r} is a Helm hook object, gone after install")
    assert not problems, f"{stack}/{release} ({facts.folder}/workloads.txt): " + "; ".join(problems)


@pytest.mark.parametrize("name", STACK_NAMES)
def test_descriptor_ready_objects_exist(reference, name):
    d = descriptor(name)
    if not d.ready:
        pytest.skip(f"{name} has no descriptor-level ready entries")
    stack = rendered(name)
    known = {(k, ns, n) for k, ns, n in stacks._workload_ready(stack.objects, d.namespace)}
    for r in stack.releases:
        facts = chart_facts(r.chart)
        known |= {e.key for x in matching_renders(facts, r) for e in x.entries if not e.hook}
    missing = [f"{text!r} = {key}" for text in d.ready
               if (key := stacks.parse_ready(text, d.namespace)) not in known]
    assert not missing, f"{name}: descriptor-level ready entries in no release's workloads.txt render nor the " \
                        f"stack's manifests: {missing}"


# ---- 4. values keys and values schemas ----------------------------------------------------------------------

@pytest.mark.parametrize(("stack", "release"), RELEASES, ids=RELEASE_IDS)
def test_release_values_keys_exist_in_chart(reference, stack, release):
    _, r = release_of(stack, release)
    facts = chart_facts(r.chart)
    keys = ref.value_keys(facts.folder)
    assert keys.paths, f"{facts.folder}: values-keys.txt is empty"
    keys = ref.ValueKeys(keys.paths, keys.maps | set(EXTRA_FREE_MAPS.get(facts.folder, {}))
                         | set(PASSED_THROUGH_LISTS.get(facts.folder, {})))
    unknown = sorted({p for p in key_paths(r.values) if not path_known(p, keys)})
    if unknown:
        print(f"{stack}/{release}: value paths unknown to {facts.folder}:", *unknown, sep="\n  ")
    assert not unknown, f"{stack}/{release}: {len(unknown)} value paths not in {facts.folder}/values-keys*.txt: " \
                        f"{unknown}"


@pytest.mark.parametrize(("stack", "release"), RELEASES, ids=RELEASE_IDS)
def test_release_values_match_chart_schema(reference, stack, release):
    """The rendered values against the chart's values.schema.json.

    Helm validates the *merged* values (chart defaults + ours), and we only have the key list of the defaults, not
    the defaults. So a `required` error (a property missing from our values) is not a failure when the missing key
    exists in values-keys.txt (the defaults supply it): those are reported as warnings. Every other error (a wrong
    type, an unknown key where additionalProperties is false, an enum miss) and a required key the defaults do not
    have either fail the test."""
    import jsonschema

    _, r = release_of(stack, release)
    facts = chart_facts(r.chart)
    schema = ref.values_schema(facts.folder)
    if schema is None:
        pytest.skip(f"chart {facts.folder} ships no values.schema.json")
    keys = ref.value_keys(facts.folder)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    failures, defaulted = [], []
    for error in cls(schema).iter_errors(r.values):
        where = ".".join(escape(p) if isinstance(p, str) else "[]" for p in error.absolute_path).replace(".[]", "[]")
        if error.validator == "required" and isinstance(error.instance, dict):
            for prop in error.validator_value:
                if prop in error.instance:
                    continue
                path = f"{where}.{escape(prop)}" if where else escape(prop)
                (defaulted if path in keys.paths else failures).append(f"{path}: required")
        else:
            failures.append(f"{where or '(root)'}: {error.message[:300]}")
    if defaulted:
        warnings.warn(f"{stack}/{release}: required by the schema, supplied by chart defaults: {defaulted}",
                      stacklevel=1)
    assert not failures, f"{stack}/{release}: values fail {facts.folder}/values.schema.json: {failures}"


# ---- 5. manifests validate -------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def k8s_schema_version() -> str:
    """The newest schema version kubernetes-validate has that is not newer than the lab's Kubernetes minor."""
    from kubernetes_validate import utils

    def minor(v: str) -> tuple[int, int]:
        return tuple(int(x) for x in v.split(".")[:2])  # type: ignore[return-value]

    want = minor(lab().versions.kubernetes)
    have = [v for v in utils.all_versions() if minor(v) <= want]
    assert have, f"kubernetes-validate has no schemas for Kubernetes ≤ {want}: {utils.all_versions()}"
    return have[-1]


def k8s_problems(obj: dict) -> list[str] | None:
    """kubernetes-validate (strict) problems of a built-in object; None when it has no schema (a custom resource)."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, k8s_schema_version(), strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return None
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.absolute_path) or "(root)"
        return [f"{obj_id(obj)}: {where}: {exc.message[:300]}"]
    return []


# Gatekeeper's constraint kinds have no CRD until its controller compiles their ConstraintTemplate, so
# reference/crd-schemas cannot hold them (its README: check them against the template). The CRD Gatekeeper generates:
# spec.match (gatekeeper pkg/target/matchcrd_constant.go, v3.23.0: its properties, glob-pattern namespace lists),
# spec.enforcementAction, spec.parameters = the template's openAPIV3Schema (open-policy-agent/frameworks
# constraint/pkg/client/crds.go createSchema). Unknown fields are refused here: the API server would prune them.
_NAMESPACE_GLOB = {"type": "string", "pattern": r"^\*?[-:a-z0-9]*\*?$"}
GATEKEEPER_MATCH = {"type": "object", "additionalProperties": False, "properties": {
    "excludedNamespaces": {"type": "array", "items": _NAMESPACE_GLOB},
    "namespaces": {"type": "array", "items": _NAMESPACE_GLOB},
    "kinds": {"type": "array", "items": {"type": "object", "additionalProperties": False, "properties": {
        "apiGroups": {"type": "array", "items": {"type": "string"}},
        "kinds": {"type": "array", "items": {"type": "string"}}}}},
    "labelSelector": {"type": "object"}, "namespaceSelector": {"type": "object"}, "name": _NAMESPACE_GLOB,
    "scope": {"type": "string"}, "source": {"enum": ["All", "Generated", "Original"]}}}


def constraint_schema(obj: dict, objects: list[dict]) -> dict | None:
    """The schema of a Gatekeeper constraint, from the ConstraintTemplate among `objects` that defines its kind;
    None when `obj` is no constraint or no template of the stack defines its kind."""
    if obj["apiVersion"].split("/")[0] != "constraints.gatekeeper.sh":
        return None
    template = next((o for o in objects if o.get("kind") == "ConstraintTemplate"
                     and o["spec"]["crd"]["spec"]["names"]["kind"] == obj["kind"]), None)
    if template is None:
        return None
    spec: dict = {"match": GATEKEEPER_MATCH, "enforcementAction": {"enum": ["deny", "dryrun", "warn"]}}
    parameters = ((template["spec"]["crd"]["spec"].get("validation") or {}).get("openAPIV3Schema"))
    if parameters:
        spec["parameters"] = parameters
    return {"type": "object", "required": ["spec"], "properties": {
        "metadata": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 63}}},
        "spec": {"type": "object", "additionalProperties": False, "properties": spec}}}


def cr_problems(obj: dict, objects: list[dict] = ()) -> list[str]:
    import jsonschema

    schema = ref.crd_schema(obj["apiVersion"], obj["kind"]) or constraint_schema(obj, list(objects))
    if schema is None:
        if (obj["apiVersion"], obj["kind"]) in CR_WITHOUT_SCHEMA:
            return []
        return [f"{obj_id(obj)}: {obj['apiVersion']} {obj['kind']} is not a built-in kind of Kubernetes "
                f"{k8s_schema_version()} and has no schema in {ref.CRD_SCHEMAS} (nor an entry in CR_WITHOUT_SCHEMA)"]
    validator = jsonschema.Draft7Validator(schema)
    return [f"{obj_id(obj)}: {'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message[:300]}"
            for e in validator.iter_errors(obj)]


@pytest.mark.parametrize("name", STACK_NAMES)
def test_manifests_validate(name):
    """Built-in kinds against kubernetes-validate (strict, the lab's minor); custom resources against
    reference/crd-schemas."""
    stack = rendered(name)
    if not stack.objects:
        pytest.skip(f"{name} has no manifests")
    problems = []
    for obj in stack.objects:
        found = k8s_problems(obj)
        if found is None:
            need_reference()
            found = cr_problems(obj, stack.objects)
        problems += found
    assert not problems, f"{name}: " + "\n".join(problems)


@pytest.mark.parametrize("name", STACK_NAMES)
def test_credential_secrets_validate(name):
    d = descriptor(name)
    if not d.credentials:
        pytest.skip(f"{name} has no credentials")
    entry = {"password": "p" * 24, "created": "2026-01-01T00:00:00Z"}
    problems = []
    for cred in d.credentials:
        secret = credentials.secret_object(cred, {**entry, "user": cred.user}, name)
        found = k8s_problems(secret)
        assert found is not None, f"kubernetes-validate has no schema for {secret['apiVersion']} {secret['kind']}"
        problems += found
    assert not problems, f"{name}: " + "\n".join(problems)


# ---- 6. NodePorts and URLs ----------------------------------------------------------------------------------------

def opened_node_ports(stack: stacks.StackDef) -> dict[int, str]:
    """NodePorts the rendered values set (any key containing `nodePort`, e.g. service.nodePort, nodePortHttp) and
    the manifests' Services open: port → where."""
    out: dict[int, str] = {}
    for r in stack.releases:
        for path, value in walk(r.values):
            if path and isinstance(path[-1], str) and "nodeport" in path[-1].lower():
                if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
                    out.setdefault(int(value), f"values of {r.release}: {'.'.join(map(str, path))}")
    for obj in stack.objects:
        if obj.get("kind") == "Service":
            for p in (obj.get("spec") or {}).get("ports") or []:
                if isinstance(p, dict) and isinstance(p.get("nodePort"), int):
                    out.setdefault(p["nodePort"], f"{obj_id(obj)} port {p.get('name') or p.get('port')}")
    return out


@pytest.mark.parametrize("name", STACK_NAMES)
def test_node_ports_are_opened_and_urls_use_them(name):
    d = descriptor(name)
    stack = rendered(name)
    opened = opened_node_ports(stack)
    if not d.node_ports and not d.urls and not opened:
        pytest.skip(f"{name} has no NodePorts and no URLs")
    problems = [f"node_ports.{k} = {port} is opened by no rendered value or manifest Service"
                for k, port in d.node_ports.items() if port not in opened]
    # the other way round: labctl's NodePort clash check only knows the declared ones
    problems += [f"NodePort {port} ({where}) is not declared in node_ports"
                 for port, where in opened.items() if port not in d.node_ports.values()]
    for k, url in d.urls.items():
        try:
            port = urlsplit(url.replace("{address}", "192.0.2.1")).port
        except ValueError as exc:
            problems.append(f"urls.{k} = {url}: {exc}")
            continue
        if port not in d.node_ports.values():
            problems.append(f"urls.{k} = {url}: port {port} is not one of node_ports {d.node_ports}")
    assert not problems, f"{name}: " + "; ".join(problems)


# ---- 7. images are pinned ----------------------------------------------------------------------------------------

def pinned(image: str) -> bool:
    if re.search(r"@sha256:[0-9a-f]{64}$", image):
        return True
    last = image.rsplit("/", 1)[-1]
    return ":" in last and last.rsplit(":", 1)[1] not in ("", "latest")


@pytest.mark.parametrize("name", STACK_NAMES)
def test_images_are_pinned(name):
    """Every image in the manifests has a tag other than latest (or a digest). In the values (where the chart's
    pinned defaults apply unless overridden): no `tag: latest`, no `…:latest` string (an image, a Jenkins plugin)."""
    stack = rendered(name)
    images = {(obj_id(o), c.get("name"), c.get("image")) for o in stack.objects for c in containers(o)}
    latest = [f"values of {r.release}: {'.'.join(map(str, path))} = {value}"
              for r in stack.releases for path, value in walk(r.values)
              if path and isinstance(value, str) and (value.endswith(":latest") or (
                  isinstance(path[-1], str) and path[-1].lower().endswith("tag") and value == "latest"))]
    if not images and not stack.releases:
        pytest.skip(f"{name}: no containers in the manifests and no release")
    problems = [f"{where} container {c}: image {image!r}" for where, c, image in sorted(images, key=str)
                if not (isinstance(image, str) and pinned(image))]
    assert not problems + latest, f"{name}: unpinned images: {problems + latest}"


# ---- 8. requests ----------------------------------------------------------------------------------------------

def _add(total: list[int], requests: Any, times: int, where: str, seen: list[str]) -> None:
    if not isinstance(requests, dict) or times <= 0:
        return
    cpu, mem = requests.get("cpu"), requests.get("memory")
    if cpu is None and mem is None:  # e.g. a volumeClaimTemplate's storage request
        return
    if cpu is not None:
        total[0] += stacks.cpu_millis(str(cpu)) * times
    if mem is not None:
        total[1] += stacks.memory_bytes(str(mem)) * times
    seen.append(f"{where} {cpu}/{mem} x{times}")


def requests_found(stack: stacks.StackDef, nodes: int, workers: int) -> tuple[int, int, list[str]]:
    """(CPU millis, memory bytes, what was counted) requested by the rendered values and manifests.

    Heuristic, documented here because it is one:
      * values: every `resources.requests` map, times a sibling `replicas` / `replicaCount` when there is an integer
        one (1 otherwise); a block whose `enabled` is false is left out. DaemonSets are not recognisable in values,
        so their pods count once, not once per node.
      * manifests: each workload's containers (init containers excluded: they do not run alongside) times
        `spec.replicas` (default 1), raised to an HPA's `minReplicas` when one targets it; a DaemonSet counts once
        per worker, or per node when it tolerates the control-plane taint. Jobs and CronJobs are not counted."""
    total, seen = [0, 0], []

    def values(node: Any, path: tuple, release: str) -> None:
        if isinstance(node, list):
            for i, item in enumerate(node):
                values(item, (*path, i), release)
        if not isinstance(node, dict) or node.get("enabled") is False:
            return
        resources = node.get("resources")
        if isinstance(resources, dict):
            reps = node.get("replicas", node.get("replicaCount", 1))
            _add(total, resources.get("requests"), reps if isinstance(reps, int) else 1,
                 f"{release}: {'.'.join(map(str, path)) or '(root)'}", seen)
        for k, v in node.items():
            if k != "resources":
                values(v, (*path, k), release)

    for r in stack.releases:
        values(r.values, (), r.release)
    hpa_min = {}
    for o in stack.objects:
        if o.get("kind") == "HorizontalPodAutoscaler":
            spec, target = o.get("spec") or {}, (o.get("spec") or {}).get("scaleTargetRef") or {}
            namespace = (o.get("metadata") or {}).get("namespace") or stack.namespace
            hpa_min[(namespace, target.get("kind"), target.get("name"))] = spec.get("minReplicas", 1)
    for obj in stack.objects:
        kind = obj.get("kind")
        if kind not in POD_OWNERS:
            continue
        spec = obj.get("spec") or {}
        if kind == "DaemonSet":
            tolerations = next(pod_specs(obj), {}).get("tolerations") or []
            everywhere = any(isinstance(t, dict) and t.get("operator") == "Exists"
                             and t.get("key") in (None, "node-role.kubernetes.io/control-plane") for t in tolerations)
            times = nodes if everywhere else workers
        elif kind == "Pod":
            times = 1
        else:
            times = spec.get("replicas", 1)
            meta = obj.get("metadata") or {}
            times = max(times, hpa_min.get((meta.get("namespace") or stack.namespace, kind, meta.get("name")), 0))
        for c in containers(obj, init=False):
            _add(total, (c.get("resources") or {}).get("requests"), times, f"{obj_id(obj)}/{c.get('name')}", seen)
    return total[0], total[1], seen


@pytest.mark.parametrize("name", STACK_NAMES)
def test_declared_requests_match_rendered(name):
    """The descriptor's `requests` (what the fit check adds up) within ±50% of what the rendered stack requests."""
    d = descriptor(name)
    c = cluster()
    cpu, mem, seen = requests_found(rendered(name), len(c.nodes), len(c.workers) or len(c.nodes))
    print(f"{name}: counted", *seen, sep="\n  ")
    problems = []
    for what, found, unit, parse in (("cpu", cpu, "m", stacks.cpu_millis), ("memory", mem, "Mi", stacks.memory_bytes)):
        declared = d.requests.get(what)
        shown = found if what == "cpu" else round(found / 2**20)
        if declared is None and found == 0:  # a stack without pods (policies, quotas) requests nothing
            continue
        if declared is None:
            problems.append(f"requests.{what} is not declared (rendered: {shown}{unit})")
        elif found == 0:
            problems.append(f"requests.{what} = {declared}, but no {what} request is in the rendered values or "
                            "manifests (the pods would run without one)")
        elif not 0.5 * found <= parse(declared) <= 1.5 * found:
            problems.append(f"requests.{what} = {declared} is not within ±50% of the rendered {shown}{unit}")
    assert not problems, f"{name}: " + "; ".join(problems) + "\ncounted:\n  " + "\n  ".join(seen)


@pytest.mark.parametrize("name", STACK_NAMES)
def test_manifest_containers_have_requests(name):
    """Every container of the manifests' workloads (Jobs included) requests CPU and memory: the per-container
    counterpart of the ±50% sum above, which is only a heuristic."""
    stack = rendered(name)
    owners = [o for o in stack.objects if o.get("kind") in POD_OWNERS | {"Job", "CronJob"}]
    if not owners:
        pytest.skip(f"{name}: no workloads in its manifests")
    missing = []
    for o in owners:
        for c in containers(o, init=False):
            lacking = {"cpu", "memory"} - set((c.get("resources") or {}).get("requests") or {})
            if lacking:
                missing.append(f"{obj_id(o)} container {c.get('name')}: no {' or '.join(sorted(lacking))} request")
    assert not missing, f"{name}: containers without cpu/memory requests: {missing}"
