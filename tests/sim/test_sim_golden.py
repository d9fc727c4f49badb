"""Golden images in the simulated lab (labctl/golden.py): `labctl image build` bakes the node phases' work into an
image named by the versions' hash, `install` clones new VMs from it and the node phases find their work done, `plan`
says which image each node comes from and why, and an image for other versions is never used."""

from __future__ import annotations

import json
import re

import pytest

from labctl import golden
from labctl.model import load
from tests.sim.test_sim_e2e import events, labctl, sim, summary_of  # noqa: F401 (sim: the fixture)

pytestmark = pytest.mark.sim

DEV = ("dev-master", "dev-worker1")


def result(out: str, step: str) -> dict:
    return next(e for e in events(out) if e.get("event") == "result" and e["step"] == step)


def plan_detail(out: str, step: str) -> str:
    return next(s["detail"] for s in json.loads(out)["steps"] if s["step"] == step)


def build(sim):
    done = labctl("--json", "image", "build", "--yes")
    assert done.code == 0, done.out + done.err
    start = [m.start() for m in re.finditer(r"^\{$", done.out, re.M)][-1]  # the command's document, after events
    return json.JSONDecoder().raw_decode(done.out[start:])[0]


def test_install_from_the_golden_image_finds_the_node_phases_done(sim):
    r = golden.recipe(load(sim.config))
    doc = build(sim)
    assert doc["image"] == r.name and doc["built"] is True
    assert sim.fake.exists(r.name) and not sim.fake.exists(r.build_vm)  # kept as an image, build VM gone
    assert not sim.fake.running_pid(r.name)
    record = golden.records(sim.state)[r.name]
    assert record["versions"]["kubernetes"] == "1.35.6" and record["recipe"] == list(golden.RECIPE)
    baked = sim.build_nodes[r.build_vm]
    assert json.loads(baked.files[golden.MARKER])["name"] == r.name  # the marker, inside the image
    assert "kubeadm config images v1.35.6" in baked.images and "registry.k8s.io/pause:3.10.1" in baked.images
    assert any(i.startswith("quay.io/cilium/cilium:v1.19.6@sha256:") for i in baked.images)

    plan = labctl("--json", "plan", "--cluster", "dev")
    for node in DEV:
        assert f"golden image {r.name} (k8s 1.35.6, containerd ≥1.7.28, cilium 1.19.6)" in \
            plan_detail(plan.out, f"vms:dev/{node}")

    mark = sim.mark()
    install = labctl("--json", "install", "--cluster", "dev")
    assert install.code == 0, summary_of(install.out)["failed"]
    for node in DEV:
        assert result(install.out, f"runtime:dev/{node}")["status"] == "unchanged"
        assert result(install.out, f"kubepkgs:dev/{node}")["status"] == "unchanged"
        # the node's own name is the one thing an image shared by every node cannot carry
        assert result(install.out, f"prepare:dev/{node}")["detail"] == "hostname"
        assert set(golden.image_list(load(sim.config))) <= set(sim.nodes[node].images)  # pulled before install
    ran = sim.script_ids(mark)
    assert "runtime.apply" not in ran and "kubepkgs.apply" not in ran
    ids = [sim.nodes[n].facts["machine_id"] for n in DEV]
    assert all(ids) and len(set(ids)) == len(ids)  # emptied in the image: each clone made its own at first boot
    assert sim.world()["clusters"]["dev"]["nodes"]["dev-worker1"]["ready"] == "True"

    # a second build finds the image and changes nothing: no VM made, none cloned
    calls = len(sim.fake.calls())
    again = build(sim)
    assert again["built"] is False and again["image"] == r.name
    assert not [c for c in sim.fake.calls()[calls:] if c.get("argv", [""])[0] in ("clone", "run", "delete")]


def test_a_golden_image_for_other_versions_is_not_used_and_plan_says_why(sim):
    old = golden.recipe(load(sim.config))
    build(sim)
    spec = json.loads(sim.config.read_text())
    spec["versions"]["kubernetes"] = "1.35.5"
    sim.config.write_text(json.dumps(spec))
    new = golden.recipe(load(sim.config))
    assert new.name != old.name
    plan = labctl("--json", "plan", "--cluster", "dev")
    detail = plan_detail(plan.out, "vms:dev/dev-master")
    assert f"golden image {old.name} is for kubernetes 1.35.6" in detail and "base image" in detail, detail
    mark = sim.mark()
    install = labctl("--json", "install", "--cluster", "dev")
    assert install.code == 0, summary_of(install.out)["failed"]
    assert result(install.out, "runtime:dev/dev-master")["status"] == "changed"  # from the base image: all of it
    assert "kubepkgs.apply" in sim.script_ids(mark)
    assert sim.nodes["dev-master"].images == []


def test_plan_without_a_golden_image_names_the_base_image(sim):
    plan = labctl("--json", "plan", "--cluster", "dev")
    detail = plan_detail(plan.out, "vms:dev/dev-master")
    assert "base image ghcr.io/" in detail and "no golden image for these versions" in detail, detail


def test_push_goes_through_tart_push(sim):
    r = golden.recipe(load(sim.config))
    done = labctl("--json", "image", "build", "--yes", "--push", "ghcr.io/example/labctl-k8s:1.35.6")
    assert done.code == 0, done.out + done.err
    pushed = (sim.fake.home / "fake" / "pushed.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in pushed] == [{"vm": r.name, "remote": "ghcr.io/example/labctl-k8s:1.35.6"}]


def test_build_without_yes_off_a_terminal_is_refused_before_anything_runs(sim):
    done = labctl("image", "build")
    assert done.code == 2 and "--yes" in done.err
    assert sim.fake.vms() == []
