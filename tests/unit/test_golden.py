"""Golden images (labctl/golden.py): the name's hash follows every version the image's content depends on and
nothing else; the bake script is clean shell; the QEMU provider keeps an image as a flattened qcow2 in the cache
and clones new VMs from it; a push under QEMU is refused."""

from __future__ import annotations

import json
import subprocess

import pytest

from labctl import golden
from labctl.errors import ProviderError
from labctl.model import parse
from tests.conftest import SHIPPED, shellcheck

LAB = json.loads(SHIPPED.read_text())


def lab_with(**changes):
    spec = json.loads(json.dumps(LAB))
    for path, value in changes.items():
        *parents, key = path.split(".")
        table = spec
        for p in parents:
            table = table.setdefault(p, {})
        table[key] = value
    return parse(json.dumps(spec))


def name(**changes) -> str:
    return golden.recipe(lab_with(**changes)).name


def test_the_name_is_a_prefix_and_twelve_hex_digits_and_stable():
    first, again = name(), name()
    assert first == again
    assert first.startswith("labctl-k8s-") and len(first) == len("labctl-k8s-") + 12
    int(first.removeprefix("labctl-k8s-"), 16)


@pytest.mark.parametrize("path,value", [
    ("versions.kubernetes", "1.35.5"),  # another patch: other packages
    ("versions.kubernetes", "1.36.2"),  # another minor: other repository and pause image
    ("versions.containerd", "2.2.0"),
    ("versions.cilium", "1.18.4"),
    ("base_image", "ghcr.io/cirruslabs/ubuntu:24.04"),
])
def test_the_hash_changes_with_each_version(path, value):
    assert name(**{path: value}) != name()


def test_what_the_image_does_not_hold_leaves_the_hash_alone():
    """Node sizes, the helm version (control planes install Helm at init), cluster names: not in the image."""
    spec = json.loads(json.dumps(LAB))
    spec["versions"]["helm"] = "3.19.0"
    spec["clusters"][0]["nodes"][0]["memory"] += 512
    spec["clusters"][1]["name"] = "other"
    assert golden.recipe(parse(json.dumps(spec))).name == name()


def test_a_registry_stack_changes_the_image_containerd_reads_its_hosts():
    spec = json.loads(json.dumps(LAB))
    for cluster in spec["clusters"]:
        cluster["stacks"] = [s for s in cluster.get("stacks", [])
                             if (s if isinstance(s, str) else s["name"]) not in ("registry", "harbor")]
    without = parse(json.dumps(spec))
    assert golden.version_set(lab_with())["registry_hosts"] is True  # the shipped lab declares one
    assert golden.version_set(without)["registry_hosts"] is False
    assert golden.recipe(without).name != name()


def test_the_image_list_has_the_pause_image_and_ciliums_pinned_by_digest():
    images = golden.image_list(lab_with())
    assert "registry.k8s.io/pause:3.10.1" in images
    cilium = [i for i in images if i.startswith("quay.io/cilium/")]
    assert len(cilium) == 6 and all("@sha256:" in i for i in cilium)
    other = golden.image_list(lab_with(**{"versions.cilium": "1.18.4"}))
    assert "quay.io/cilium/cilium:v1.18.4" in other and not any("1.19.6" in i for i in other)


def test_the_bake_script_is_clean_shell_and_quotes_its_values(tmp_path):
    lab = lab_with()
    r = golden.recipe(lab)
    paths = []
    for phases, pull in ((golden.RECIPE, True), (("prepare", "runtime"), False)):
        text = golden.bake_script(lab, r, phases, pull).text
        path = tmp_path / f"bake-{len(paths)}.sh"
        path.write_text(text)
        paths.append(path)
    full = paths[0].read_text()
    assert "kubeadm config images pull --kubernetes-version 1.35.6" in full
    assert all(f"crictl pull {i}" in full or f"crictl pull '{i}'" in full for i in r.images)
    assert "kubeadm" not in paths[1].read_text().split("# 2. The marker")[0].split("# 1. Images")[1].replace(
        "kubeadm's", "").replace("kubeadm init/join", "")
    result = subprocess.run([shellcheck(), "--shell=bash", "--severity=style", "--format=gcc", *map(str, paths)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# ---- the QEMU provider's images ------------------------------------------------------------------------------

def test_qemu_keeps_a_flattened_qcow2_in_the_cache_and_clones_from_it(tmp_path, fake_qemu, monkeypatch):
    from tests.unit.test_qemu_provider import make_lab, make_provider, node, vm_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    spec, settings = make_lab(tmp_path)
    provider = make_provider(tmp_path, settings, spec)
    provider.own("labctl-build-abc")
    build = node(spec, "w1").model_copy(update={"name": "labctl-build-abc"})
    assert provider.create(build)
    assert provider.golden_source("labctl-k8s-abc") is None
    provider.keep_golden("labctl-build-abc", "labctl-k8s-abc")
    kept = tmp_path / "cache" / "labctl" / "images" / "labctl-k8s-abc.qcow2"
    assert provider.golden_source("labctl-k8s-abc") == str(kept)
    assert "backing" not in json.loads(kept.read_text())  # standalone: the base image may go
    assert ["qemu-img", "convert", "-O", "qcow2", str(vm_dir(tmp_path, "labctl-build-abc") / "disk.qcow2"),
            str(kept) + ".part"] in fake_qemu.argvs(tool="qemu-img")
    assert provider.create(node(spec, "m1"), image=str(kept))
    assert json.loads((vm_dir(tmp_path, "m1") / "disk.qcow2").read_text())["backing"] == str(kept)
    with pytest.raises(ProviderError, match="no registry to push to"):
        provider.push_golden("labctl-k8s-abc", "ghcr.io/x/y:1")
    with pytest.raises(ProviderError, match="overlays on"):  # m1's disk would lose its backing file
        provider.delete_golden("labctl-k8s-abc")
    assert kept.exists()
    provider.delete(node(spec, "m1"))
    assert provider.delete_golden("labctl-k8s-abc") and not kept.exists()


def test_push_under_qemu_is_refused_before_anything_runs(tmp_path):
    from tests.conftest import run_cli

    config = tmp_path / "clusters.json"
    assert run_cli("-c", str(config), "init", "--provider", "qemu").code == 0
    done = run_cli("-c", str(config), "image", "build", "--yes", "--push", "ghcr.io/me/labctl-k8s:1")
    assert done.code == 2 and "no registry to push to" in done.err, done.err
    assert not (tmp_path / ".labctl").exists()
