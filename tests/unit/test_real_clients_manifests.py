"""The real kubectl reads every catalogue stack's manifests as the objects we mean.

For each catalogue stack with manifests, rendered for the catalogue conformance lab (every catalogue stack on one
cluster, tests/unit/test_stack_catalogue.py), `kubectl create --dry-run=client --validate=false -o json` parses
 - the objects labctl applies (labctl.stacks.resolve: PyYAML's reading of the rendered templates, sent as JSON), and
 - the rendered template text itself (what a person would `kubectl apply -f`: kubectl reads it with its own YAML 1.1
   parser, where e.g. an unquoted `y`, `on` or `0755` means something else than to PyYAML),
and must give back exactly those objects, in order, as the kinds, names and namespaces we declared.

kubectl needs an API server to map kinds to resources even for a client-side dry run: a FakeKube (tests/sim) serves
discovery, with the CRDs the catalogue's releases provide. Nothing is sent to it but discovery. The real kubectl
comes from tests/realclients.py (skipped without it, failed under CI=true).
"""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from labctl import stacks
from labctl.render import render
from tests.realclients import real_clients
from tests.sim.fake_kube import FakeKube
from tests.sim.sim_helm import CILIUM_CRDS
from tests.sim.kube_resources import CRD_PREFIX, CRDS, crd_object
from tests.unit.test_stack_catalogue import STACK_NAMES, _descriptor_or_none, cluster, lab, rendered

WITH_MANIFESTS = [n for n in STACK_NAMES if (d := _descriptor_or_none(n)) and d.manifests]


def test_the_catalogue_has_manifests_to_check():
    assert {"storage", "hpa-demo", "alerting", "argocd"} <= set(WITH_MANIFESTS)


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """A plain-HTTP FakeKube serving discovery for the built-ins and every CRD a catalogue release provides; the
    kubeconfig for it."""
    kube = FakeKube()
    for name in STACK_NAMES:
        descriptor = _descriptor_or_none(name)
        for release in descriptor.releases if descriptor else []:
            for crd in release.provides_crds:
                plural, _, group = crd.name.partition(".")
                kube.store.put(CRD_PREFIX, CRDS, crd_object(group, crd.version, plural, crd.kind, crd.scope))
    # what every cluster has from Cilium's operator, and the kinds Gatekeeper compiles from the catalogue's templates
    for version, plural, kind, scope, _ in CILIUM_CRDS:
        kube.store.put(CRD_PREFIX, CRDS, crd_object("cilium.io", version, plural, kind, scope))
    for obj in (o for n in WITH_MANIFESTS for o in rendered(n).objects if o["kind"] == "ConstraintTemplate"):
        kind = obj["spec"]["crd"]["spec"]["names"]["kind"]
        kube.store.put(CRD_PREFIX, CRDS, crd_object("constraints.gatekeeper.sh", "v1beta1", kind.lower(), kind,
                                                    "Cluster"))
    kube.start()
    folder = tmp_path_factory.mktemp("kubectl")
    config = folder / "kubeconfig.yaml"
    config.write_text(yaml.safe_dump(kube.kubeconfig()))
    yield config, folder / "cache"
    kube.stop()


def template_text(name: str) -> str:
    """The stack's manifest templates rendered as resolve() renders them, as text (documents in order)."""
    descriptor = stacks.catalogue()[name]
    params = stacks._template_params(lab(), cluster(), name, descriptor)
    return "\n---\n".join(render(f"stacks/{name}/{m}", **params) for m in descriptor.manifests)


def json_stream(text: str) -> list[dict]:
    """`create -o json` prints one JSON document per object, one after the other (a List's items for a List)."""
    decoder, out, at = json.JSONDecoder(), [], 0
    while text[at:].strip():
        at += len(text[at:]) - len(text[at:].lstrip())
        doc, at = decoder.raw_decode(text, at)
        out.extend(doc["items"] if doc.get("kind") == "List" and "items" in doc else [doc])
    return out


def identity(obj: dict) -> tuple[str, str, str, str]:
    meta = obj.get("metadata") or {}
    return obj.get("apiVersion"), obj.get("kind"), meta.get("namespace", ""), meta.get("name")


@pytest.mark.parametrize("name", WITH_MANIFESTS)
def test_kubectl_reads_the_rendered_manifests_as_the_objects_we_mean(name, api, tmp_path):
    kubectl = real_clients().kubectl
    config, cache = api
    stack = rendered(name)
    objects = stack.objects
    assert objects, name
    as_json = tmp_path / "objects.json"  # what labctl sends: one JSON document per object
    as_json.write_text("".join(f"---\n{json.dumps(o)}\n" for o in objects))
    as_yaml = tmp_path / "rendered.yaml"
    as_yaml.write_text(template_text(name))
    assert [d for d in yaml.safe_load_all(as_yaml.read_text()) if d is not None] == objects  # same as resolve()

    # kubectl refuses `-n X` for an object that names another namespace: a stack whose objects all name theirs
    # (e.g. sealed-secrets' demo objects beside the controller's namespace) is read without it
    own = {o["metadata"].get("namespace") for o in objects} - {None}
    namespace = [] if own and stack.namespace not in own else ["-n", stack.namespace]
    for source in (as_json, as_yaml):
        done = subprocess.run([str(kubectl), "create", "--dry-run=client", "--validate=false", "-o", "json",
                               "--kubeconfig", str(config), "--cache-dir", str(cache), *namespace,
                               "-f", str(source)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{name} ({source.name}): {done.stderr}"
        read = json_stream(done.stdout)
        assert [identity(o) for o in read] == [identity(o) for o in objects], source.name
        # field for field: kubectl's reading is ours (a namespace it filled in from -n aside)
        for theirs, ours in zip(read, objects, strict=True):
            if "namespace" not in ours["metadata"]:
                theirs["metadata"].pop("namespace", None)
            assert theirs == ours, f"{name} ({source.name}): kubectl reads {identity(ours)} differently"
