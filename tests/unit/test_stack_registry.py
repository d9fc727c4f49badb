"""registry and harbor: validation refuses harbor where its images do not run, the runtime phase sets containerd's
registry config_path at the path of each config layout, and the registry.hosts node script writes hosts.toml and
the /etc/hosts line only when they differ (run for real with bash, on files in a temporary folder)."""

from __future__ import annotations

import json
import subprocess
import tomllib
from unittest import mock

import pytest

from labctl import model
from labctl.errors import ConfigError
from labctl.registry_hosts import CERTS_D, hosts_toml
from labctl.render import script
from phases import runtime
from tests.conftest import SHIPPED, shellcheck
from tests.unit.test_node_phases import load_facts


def shipped_with(stack: str, provider: dict | None = None) -> str:
    raw = json.loads(SHIPPED.read_text())
    platform = raw["clusters"][0]
    platform["stacks"] = [stack if s == "registry" else s for s in platform["stacks"]]
    if provider:
        raw["provider"], raw["base_image"] = provider, "lab.qcow2"
    return json.dumps(raw)


def test_harbor_on_arm64():
    """Predecessor defect (reference/stacks.md phase 17): Harbor's images were amd64-only, so its pods failed on
    Apple silicon. labctl validate refuses harbor on Tart (always arm64) and on QEMU on an arm64 host, naming the
    clusters.json entry and the multi-arch alternative."""
    raw = json.loads(shipped_with("harbor"))
    index = raw["clusters"][0]["stacks"].index("harbor")
    with pytest.raises(ConfigError) as refused:
        model.parse(shipped_with("harbor"), source="clusters.json")
    text = str(refused.value)
    assert f"clusters[0].stacks[{index}]" in text and "'harbor' runs only on amd64" in text
    assert "declare 'registry' instead" in text
    with mock.patch("labctl.host.platform.machine", return_value="aarch64"), pytest.raises(ConfigError):
        model.parse(shipped_with("harbor", {"type": "qemu"}), source="clusters.json")
    with mock.patch("labctl.host.platform.machine", return_value="x86_64"):
        lab = model.parse(shipped_with("harbor", {"type": "qemu"}), source="clusters.json")
    assert "harbor" in lab.cluster("platform").stack_names


def test_the_shipped_lab_declares_the_multi_arch_registry():
    lab = model.parse(SHIPPED.read_text(), source="clusters.json")
    assert "registry" in lab.cluster("platform").stack_names and "harbor" not in lab.cluster("platform").stack_names


@pytest.mark.parametrize(("fixture", "table"), [
    ("containerd-1.7-cgroupfs", ("io.containerd.grpc.v1.cri", "registry")),
    ("containerd-2.2-ready", ("io.containerd.cri.v1.images", "registry")),
])
def test_runtime_sets_config_path_in_the_nodes_layout(fixture, table):
    facts = load_facts(fixture)
    assert facts.containerd_config_path == ""  # both packages' defaults leave it empty
    pending = runtime.actions(facts, "1.35.6", "1.7.28", registry=True)
    config = next(a for a in pending if a.name == "config")
    assert "config_path is empty" in config.why
    written = runtime.params(facts, "1.35.6", "1.7.28", pending, registry=True)["config"]
    plugins = tomllib.loads(written)["plugins"]
    assert plugins[table[0]][table[1]]["config_path"] == CERTS_D
    # without a registry in the lab, config_path is none of the runtime phase's business
    assert "config_path" not in " ".join(a.why for a in runtime.actions(facts, "1.35.6", "1.7.28"))
    configured = facts.model_copy(update={"containerd": facts.containerd.model_copy(
        update={"config_dump": written})})
    assert configured.containerd_config_path == CERTS_D
    assert not [a for a in runtime.actions(configured, "1.35.6", "1.7.28", registry=True) if a.name == "config"]


def render(tmp_path, apply: bool, address: str = "192.168.64.5", cluster: str = "platform"):
    name = f"{cluster}-registry.labctl.internal"
    return script("registry.hosts", "node/registry-hosts.sh.j2", apply=apply, dir=f"{tmp_path}/certs.d/{name}:30500",
                  content=hosts_toml(name, 30500, [address, "192.168.64.6"]), name=name, address=address,
                  hosts_file=str(tmp_path / "hosts"), hosts_lock=str(tmp_path / "lock/hosts.lock"), cluster=cluster,
                  stack="registry")


def run(text: str) -> str:
    done = subprocess.run(["bash", "-c", text], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_registry_hosts_script_writes_only_what_differs(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n192.168.64.9 platform-registry.labctl.internal # old\n")
    toml = tmp_path / "certs.d/platform-registry.labctl.internal:30500/hosts.toml"
    assert run(render(tmp_path, apply=False).text).startswith("differs:")
    assert not toml.exists()  # the check writes nothing
    assert run(render(tmp_path, apply=True).text).startswith("changed:")
    parsed = tomllib.loads(toml.read_text())
    assert parsed["server"] == "http://platform-registry.labctl.internal:30500"
    assert list(parsed["host"]) == ["http://192.168.64.5:30500", "http://192.168.64.6:30500"]
    assert parsed["host"]["http://192.168.64.5:30500"]["capabilities"] == ["pull", "resolve", "push"]
    lines = hosts.read_text().splitlines()
    assert lines[0] == "127.0.0.1 localhost"
    assert [ln.split()[0] for ln in lines if "platform-registry" in ln] == ["192.168.64.5"]
    assert run(render(tmp_path, apply=True).text) == "unchanged"
    assert run(render(tmp_path, apply=False, address="192.168.64.7").text).startswith("differs:")


def test_two_registries_lines_both_stay_in_place_whatever_their_order(tmp_path):
    """Each registry's line only has to be there with its address: asking for it to be the last line made every
    registry's apply move the other's line, so no check ever passed in a lab with two registries."""
    (tmp_path / "hosts").write_text("127.0.0.1 localhost\n")
    assert run(render(tmp_path, apply=True, cluster="a").text).startswith("changed:")
    assert run(render(tmp_path, apply=True, address="192.168.64.8", cluster="b").text).startswith("changed:")
    for cluster, address in (("a", "192.168.64.5"), ("b", "192.168.64.8")):
        assert run(render(tmp_path, apply=False, address=address, cluster=cluster).text) == "unchanged"
    before = (tmp_path / "hosts").read_text()
    assert run(render(tmp_path, apply=True, cluster="a").text) == "unchanged"
    assert (tmp_path / "hosts").read_text() == before


def test_registry_hosts_scripts_running_at_once_on_one_node_keep_every_line(tmp_path):
    """The registry hooks of several clusters run on one node at the same time: the /etc/hosts lock keeps each
    read-modify-write whole (without it, a `mv` of one copy drops the line the other just added)."""
    (tmp_path / "hosts").write_text("127.0.0.1 localhost\n")
    texts = [render(tmp_path, apply=True, address=f"192.168.64.{10 + i}", cluster=f"c{i}").text for i in range(12)]
    procs = [subprocess.Popen(["bash", "-c", text], stdout=subprocess.PIPE, text=True) for text in texts]
    assert all(p.wait() == 0 for p in procs)
    lines = (tmp_path / "hosts").read_text().splitlines()
    assert sorted(ln.split()[1] for ln in lines[1:]) == sorted(f"c{i}-registry.labctl.internal" for i in range(12))


def test_registry_hosts_script_is_shellcheck_clean(tmp_path):
    path = tmp_path / "registry-hosts.sh"
    path.write_text(render(tmp_path, apply=True).text)
    done = subprocess.run([shellcheck(), "--shell=bash", "--severity=style", str(path)], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stdout


def _rendered_for_amd64(name: str):
    """`name` rendered for a QEMU lab on an amd64 host (where validation lets harbor run)."""
    from pathlib import Path

    from labctl import stacks

    raw = json.loads(shipped_with(name, {"type": "qemu", "qemu": {"network": "lab"}}))
    raw["base_image"] = "images/base.qcow2"
    with mock.patch("platform.machine", return_value="x86_64"):
        lab = model.parse(json.dumps(raw), base_dir=Path("."))
    return stacks.resolve(lab, lab.cluster("platform"), name, Path("."))


def _sizes(node) -> list[str]:
    """Every `size`/`storage` quantity under a values or manifest tree."""
    if isinstance(node, dict):
        return [v for k, v in node.items() if k in ("size", "storage") and isinstance(v, str)] + \
            [s for v in node.values() for s in _sizes(v)]
    return [s for v in node for s in _sizes(v)] if isinstance(node, list) else []


def test_port_30500_is_exposed_where_the_nodes_pull_from():
    """The predecessor wrote hosts.toml for <worker>:30500 but never exposed 30500 (Harbor's /v2 was on 30400)."""
    stack = _rendered_for_amd64("registry")
    service = next(o for o in stack.objects if o["kind"] == "Service" and o["spec"].get("type") == "NodePort")
    assert [p["nodePort"] for p in service["spec"]["ports"]] == [30500] == list(stack.node_ports.values())
    assert '[host."http://10.0.0.5:30500"]' in hosts_toml("platform-registry.labctl.internal", 30500, ["10.0.0.5"])


def test_harbor_external_url_is_not_localhost():
    """externalURL is where Harbor's token service sends clients: localhost sent every node to itself."""
    values = _rendered_for_amd64("harbor").releases[0].values
    assert "localhost" not in values["externalURL"] and "127.0.0.1" not in values["externalURL"]
    assert values["externalURL"].endswith(":30400")


@pytest.mark.parametrize("name", ["registry", "harbor"])
def test_fifteen_gi_of_claims_on_20_gb_disks_no_more(name):
    """The predecessor's Harbor claimed ~15Gi on 20 GB node disks that also hold the OS and every image: a registry
    stack claims at most half a node's disk."""
    from labctl import stacks

    stack = _rendered_for_amd64(name)
    claims = _sizes([r.values for r in stack.releases]) + _sizes(stack.objects)
    assert claims and sum(stacks.memory_bytes(q) for q in claims) <= 10 * 2**30
