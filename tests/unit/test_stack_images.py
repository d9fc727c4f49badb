"""The images each catalogue stack runs (descriptor `images`, labctl/stacks.py `images`) and the golden image's pull
list (labctl/golden.py): every chart image a descriptor lists is one reference/charts/<chart>/chart.txt gives for
exactly the pinned chart version, or one labctl's values put in (`set_by`) or tag (`tag_from`); Cilium's pinned list
is that chart's; the build of the shipped lab pulls every image of the stacks it declares, and another set of stacks
makes another image."""

from __future__ import annotations

import json

import pytest

from labctl import golden, stacks
from labctl.model import parse
from tests.conftest import SHIPPED
from tests.unit import reference as ref
from tests.unit.test_stack_catalogue import STACK_NAMES, lab, need_reference, release_of

RELEASES = [(name, r.release) for name in STACK_NAMES for r in stacks.catalogue()[name].releases]


def _at(values: dict, dotted: str):
    for key in dotted.split("."):
        values = values[key]
    return values


@pytest.mark.parametrize("stack,release", RELEASES, ids=[f"{s}/{r}" for s, r in RELEASES])
def test_a_release_lists_the_images_of_its_pinned_chart(stack, release):
    need_reference()
    spec, done = release_of(stack, release)
    facts = ref.chart_folder(spec.chart)
    assert facts is not None, f"{stack}/{release}: no reference/charts folder for chart {spec.chart}"
    assert facts.version == spec.version, (
        f"{stack}/{release}: pins chart {spec.version}, reference/charts/{facts.folder} has {facts.version}: "
        "take the images (and the rest) from the chart at the pinned version")
    defaults = ref.default_images(facts.folder)
    for image in spec.images:
        if image.set_by:  # not a chart default: labctl's values must be what names it
            assert image.ref in json.dumps(_at(done.values, image.set_by)), \
                f"{stack}/{release}: {image.ref} is not in our values' {image.set_by}"
        else:
            assert image.ref in defaults, \
                f"{stack}/{release}: {image.ref} is not a default image of {facts.folder} {facts.version}"
        if image.tag_from:
            assert image.ref.rsplit(":", 1)[1] == str(_at(done.values, image.tag_from)), \
                f"{stack}/{release}: {image.ref}'s tag is not our values' {image.tag_from}"
    # a chart that runs images must have them listed (istio's base runs none; the gateway's proxy is istiod's)
    if defaults and facts.folder != "istio-gateway":
        assert spec.images, f"{stack}/{release}: chart {facts.folder} runs images; list them in `images`"


def test_ciliums_pinned_images_are_its_charts():
    need_reference()
    facts = ref.charts()["cilium"]
    assert sorted(golden.cilium_images(facts.version)) == sorted(ref.default_images("cilium"))


def test_a_stacks_images_include_its_manifests_workloads_and_its_own():
    everything = lab()
    storage = stacks.images(everything, everything.cluster("lab"), "storage")
    assert storage == ["docker.io/rancher/local-path-provisioner:v0.0.37", "docker.io/library/busybox:1.37.0"]
    demo = stacks.images(everything, everything.cluster("lab"), "hpa-demo")
    assert "quay.io/keycloak/keycloak:26.1.5" in demo and "ghcr.io/mccutchen/go-httpbin:2.25.0" in demo
    assert stacks.images(everything, everything.cluster("lab"), "rbac") == []


@pytest.mark.parametrize("short,full", [
    ("openpolicyagent/gatekeeper:v3.23.0", "docker.io/openpolicyagent/gatekeeper:v3.23.0"),
    ("busybox:1.37.0", "docker.io/library/busybox:1.37.0"),
    ("quay.io/minio/mc:RELEASE.2024-11-21T17-21-54Z", "quay.io/minio/mc:RELEASE.2024-11-21T17-21-54Z"),
    ("localhost/app:1", "localhost/app:1"),
    ("registry.lab:30500/app:1", "registry.lab:30500/app:1"),
])
def test_short_names_are_pulled_by_their_full_reference(short, full):
    assert golden.full_ref(short) == full


def test_the_shipped_labs_build_pulls_every_declared_stacks_images():
    shipped = parse(SHIPPED.read_text())
    pulled = set(golden.recipe(shipped).images)
    assert pulled == set(golden.image_list(shipped))
    for c in shipped.clusters:
        for name in c.stack_names:
            descriptor = stacks.catalogue()[name]
            want = [i.ref for r in descriptor.releases for i in r.images] + stacks.images(shipped, c, name)
            missing = {golden.full_ref(i) for i in want} - pulled
            assert not missing, f"{c.name}/{name}: not pulled by the build: {sorted(missing)}"
    # spot checks: a chart image, a values-set image, a manifest workload, a short name made full
    assert {"docker.io/grafana/loki:3.7.6", "docker.io/velero/velero-plugin-for-aws:v1.14.2",
            "quay.io/keycloak/keycloak:26.1.5", "docker.io/openpolicyagent/gatekeeper:v3.23.0"} <= pulled


def test_another_set_of_stacks_is_another_image():
    spec = json.loads(SHIPPED.read_text())
    base = golden.recipe(parse(json.dumps(spec)))
    spec["clusters"][0]["stacks"] = [s for s in spec["clusters"][0]["stacks"] if s not in ("monitoring", "alerting")]
    fewer = golden.recipe(parse(json.dumps(spec)))
    assert fewer.name != base.name
    assert "docker.io/grafana/grafana:13.2.0" in base.images and "docker.io/grafana/grafana:13.2.0" not in fewer.images
