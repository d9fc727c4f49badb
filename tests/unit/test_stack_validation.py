"""`clusters[].stacks` that are valid: plain names, value overrides, user charts (https:// and oci://) and a user
manifests folder load, and resolve to what the stacks phase installs. Also the checks whose numbers come from the
descriptors (fit, NodePorts), and the generated stack reference in docs/stacks.md.

The invalid cases are fixtures: tests/fixtures/invalid/34-* onwards (tests/unit/test_model.py runs them)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from labctl import docgen, model, stack_validation, stacks
from tests.conftest import FIXTURES, ROOT, build_problems, run_cli

VALID = FIXTURES / "stacks" / "clusters.json"


@pytest.fixture(scope="module")
def lab():
    return model.load(VALID)


def _lab(stacks_: list, nodes: list[dict] | None = None, cilium: dict | None = None) -> str:
    cluster = {"name": "dev", "pod_cidr": "10.20.0.0/16", "service_cidr": "10.97.0.0/16", "stacks": stacks_,
               "nodes": nodes or [{"name": "dev-master", "role": "master", "cpu": 2, "memory": 4096},
                                  {"name": "dev-worker1", "role": "worker", "cpu": 4, "memory": 8192}]}
    if cilium is not None:
        cluster["cilium"] = cilium
    return json.dumps({"clusters": [cluster]})


def _problems(text: str, base_dir=None) -> list[str]:
    problems = build_problems(lambda: model.parse(text, base_dir=base_dir))
    assert problems, "no problem found"
    return [str(p) for p in problems]


# ---- valid declarations -------------------------------------------------------------------------------------------

def test_the_valid_stacks_fixture_validates_through_the_cli():
    result = run_cli("-c", str(VALID), "validate")
    assert result.code == 0, result.err
    assert "valid" in result.out and "Traceback" not in result.err


def test_plain_names_are_catalogue_stacks_without_overrides(lab):
    platform = lab.cluster("platform")
    assert platform.stack_names == ["storage", "monitoring", "alerting", "metrics-server"]
    assert platform.stacks[:3] == ["storage", "monitoring", "alerting"]  # kept as written
    spec = platform.stack("monitoring")
    assert isinstance(spec, model.StackSpec)
    assert (spec.name, spec.values, spec.requires, spec.chart, spec.manifests) == ("monitoring", {}, [], None, None)
    with pytest.raises(KeyError):
        platform.stack("jenkins")


def test_a_values_override_is_deep_merged_over_the_rendered_values(lab):
    platform = lab.cluster("platform")
    assert platform.stack("metrics-server").values == {"replicas": 2, "args": ["--v=2"]}
    stack = stacks.resolve(lab, platform, "metrics-server", VALID.parent)
    assert stack.source == "catalogue" and stack.namespace == "kube-system"
    (release,) = stack.releases
    assert release.values["replicas"] == 2
    assert release.values["args"] == ["--v=2"]  # a list is replaced, as Helm does for -f files
    assert release.values["resources"]["requests"]  # labctl's own values stay
    assert release.version == stacks.catalogue()["metrics-server"].releases[0].version


def test_a_user_chart_from_a_helm_repository_defaults_namespace_and_release_to_its_name(lab):
    dev = lab.cluster("dev")
    spec = dev.stack("cache")
    assert (spec.chart, spec.repo, spec.version) == ("redis", "https://charts.bitnami.com/bitnami", "20.6.2")
    assert spec.release is None and spec.namespace is None
    stack = stacks.resolve(lab, dev, "cache", VALID.parent)
    assert (stack.source, stack.namespace, stack.requires, stack.objects) == ("chart", "cache", [], [])
    (release,) = stack.releases
    assert (release.release, release.namespace, release.chart, release.version) == ("cache", "cache", "redis", "20.6.2")
    assert release.values == {"architecture": "standalone", "auth": {"enabled": False}}
    assert release.repo_name.startswith("labctl-") and release.chart_ref == f"{release.repo_name}/redis"
    assert stack.ready == [] and stack.credentials == [] and stack.node_ports == {}


def test_a_user_chart_from_an_oci_registry_keeps_its_namespace_release_and_requirements(lab):
    dev = lab.cluster("dev")
    stack = stacks.resolve(lab, dev, "web", VALID.parent)
    (release,) = stack.releases
    assert (stack.namespace, release.namespace, release.release) == ("apps", "apps", "frontend")
    assert release.chart_ref == "oci://ghcr.io/stefanprodan/charts/podinfo"
    assert stack.requires == ["cache"] and release.values == {}


def test_a_user_manifests_folder_resolves_to_its_objects_and_workloads(lab):
    dev = lab.cluster("dev")
    assert dev.stack("demo").manifests == "manifests/demo"
    stack = stacks.resolve(lab, dev, "demo", VALID.parent)
    assert (stack.source, stack.namespace, stack.releases) == ("manifests", "demo", [])
    assert stack.requires == ["cache", "web"]
    # sorted by file name, then document order; notes.txt is not YAML and not read
    assert [(o["kind"], o["metadata"]["name"]) for o in stack.objects] == [
        ("Deployment", "web"), ("Service", "web"), ("ConfigMap", "queue-config"), ("StatefulSet", "queue")]
    # ready = the workloads: in the stack's namespace (default: its name) unless the object names its own
    assert stack.ready == [("Deployment", "demo", "web"), ("StatefulSet", "demo-data", "queue")]


def test_user_stacks_and_catalogue_stacks_are_installable_in_declaration_order(lab):
    dev = lab.cluster("dev")
    assert dev.stack_names == ["rbac", "cache", "web", "demo"]
    assert stacks.installable(dev) == ["rbac", "cache", "web", "demo"]
    assert stacks.installable(lab.cluster("platform")) == ["storage", "monitoring", "alerting", "metrics-server"]


def test_manifests_are_read_beside_clusters_json_not_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert model.load(VALID).cluster("dev").stack("demo").manifests == "manifests/demo"
    problems = _problems(_lab([{"name": "demo", "manifests": "manifests/demo"}]), base_dir=tmp_path)
    assert problems == [f"clusters[0].stacks[0].manifests: {tmp_path / 'manifests/demo'} is not a folder (relative "
                        "paths are beside clusters.json)"]


@pytest.mark.parametrize("version", ["1.2.3", "v1.2.3", "1.2.3-rc.1", "0.0.1+build.5"])
def test_exact_chart_versions_are_accepted(version):
    model.parse(_lab([{"name": "x", "chart": "x", "repo": "oci://registry.example.org/charts", "version": version}]))


@pytest.mark.parametrize("version", ["^1.2.0", "~1.2", "1.x", ">=1.0.0", "latest", "1.2"])
def test_version_ranges_and_tags_are_refused(version):
    problems = _problems(_lab([{"name": "x", "chart": "x", "repo": "https://charts.example.org", "version": version}]))
    assert problems == [f"clusters[0].stacks[0].version: {version!r} is not an exact chart version (like 1.2.3): "
                        "ranges, wildcards and tags are not allowed, so every install gets the same chart"]


def test_requirements_may_be_declared_in_any_order():
    model.parse(_lab(["alerting", "monitoring", "storage"]))


def test_a_cluster_without_hubble_frees_the_hubble_ui_port(tmp_path):
    folder = tmp_path / "manifests" / "ui"
    folder.mkdir(parents=True)
    (folder / "svc.yaml").write_text("apiVersion: v1\nkind: Service\nmetadata: {name: ui}\n"
                                     "spec: {type: NodePort, ports: [{port: 80, nodePort: 31235}]}\n")
    stack = {"name": "ui", "manifests": "manifests/ui"}
    model.parse(_lab([stack], cilium={"hubble": False}), base_dir=tmp_path)
    assert "Hubble UI" in _problems(_lab([stack]), base_dir=tmp_path)[0]
    model.parse(_lab([stack], cilium={"hubble_ui_node_port": 31236}), base_dir=tmp_path)


# ---- checks whose numbers come from the descriptors -----------------------------------------------------------------

def test_two_catalogue_stacks_never_share_a_node_port():
    seen: dict[int, str] = {}
    for name, d in stacks.catalogue().items():
        for port in d.node_ports.values():
            assert port not in seen, f"{name} and {seen[port]} both take NodePort {port}"
            assert 30000 <= port <= 32767 and port != 31235, f"{name}: NodePort {port}"
            seen[port] = name


def test_every_catalogue_requirement_is_a_catalogue_stack():
    for name, d in stacks.catalogue().items():
        assert set(d.requires) <= set(stacks.catalogue()), name


def test_the_fit_message_says_by_how_much_from_the_descriptor_requests():
    d = stacks.catalogue()["metrics-server"]
    cpu_m, mem_mib = stacks.cpu_millis(d.requests["cpu"]), stacks.memory_bytes(d.requests["memory"]) // 2**20
    worker_mib = stack_validation.NODE_RESERVE_MEMORY_MIB + mem_mib // 2  # offers half of what metrics-server requests
    nodes = [{"name": "dev-master", "role": "master", "cpu": 2, "memory": 4096},
             {"name": "dev-worker1", "role": "worker", "cpu": 1, "memory": worker_mib}]
    (problem,) = _problems(_lab(["metrics-server"], nodes))
    offered = mem_mib // 2
    assert problem == (f"clusters[0].stacks: the declared stacks do not fit the cluster's workers: short of "
                       f"{mem_mib - offered} MiB of memory (the stacks request {mem_mib} MiB, the workers offer "
                       f"{offered} MiB), counting {stack_validation.NODE_RESERVE_CPU_M}m CPU and "
                       f"{stack_validation.NODE_RESERVE_MEMORY_MIB} MiB per node for the system; add a worker, give the "
                       "workers more CPU/memory, or drop a stack")
    assert cpu_m <= 1000 - stack_validation.NODE_RESERVE_CPU_M  # only memory is short here


def test_a_cluster_without_workers_offers_every_node():
    big = [{"name": "dev-master", "role": "master", "cpu": 4, "memory": 16384}]
    model.parse(_lab(["storage", "monitoring"], big))
    small = [{"name": "dev-master", "role": "master", "cpu": 2, "memory": 1800}]
    (problem,) = _problems(_lab(["storage", "monitoring"], small))
    assert problem.startswith("clusters[0].stacks: the declared stacks do not fit the cluster's nodes: short of ")


def test_a_broken_manifests_fixture_exits_2_without_a_traceback():
    for case in ("47-stack-manifests-invalid-yaml.json", "48-stack-manifests-not-an-object.json"):
        proc = subprocess.run([sys.executable, "-m", "labctl", "-c", str(FIXTURES / "invalid" / case), "validate"],
                              capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and "clusters[1].stacks[0].manifests: " in proc.stderr


# ---- docs/stacks.md -------------------------------------------------------------------------------------------------

def test_the_stack_reference_in_docs_is_generated_from_the_descriptors():
    text = docgen.STACKS_MD.read_text()
    assert docgen.generated_section(text) == docgen.stacks_markdown(), \
        "stale: run `python -m labctl.docgen --write`"


def test_the_stack_reference_names_every_stack_with_its_versions_ports_and_logins():
    text = docgen.STACKS_MD.read_text()
    for name, d in stacks.catalogue().items():
        row = next(line for line in text.splitlines() if line.startswith(f"| `{name}` |"))
        for r in d.releases:
            assert f"`{r.chart}` {r.version}" in row
        for port in d.node_ports.values():
            assert str(port) in row
        for c in d.credentials:
            assert c.name in row
            assert f"labctl credentials --cluster CLUSTER {name}`" in text


def test_the_contributor_example_shows_every_descriptor_field():
    text = docgen.STACKS_MD.read_text()
    example = text.split("# templates/stacks/echo/stack.yaml", 1)[1].split("```", 1)[0]
    for field in stacks.Descriptor.model_fields:
        assert re.search(rf"^{field}:", example, re.M), field
    for field in stacks.Release.model_fields:
        assert re.search(rf"^\s+(- |# )?{field}:", example, re.M), field
