"""clusters.json models: the shipped and the predecessor's files load; every invalid fixture fails as documented."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from labctl import catalog, host, model, validation
from labctl.errors import ConfigError
from tests.conftest import FIXTURES, PREDECESSOR, ROOT, SHIPPED, build_problems, run_cli

INVALID = FIXTURES / "invalid"
CASES = json.loads((INVALID / "cases.json").read_text())


def test_predecessor_fixture_is_byte_for_byte_the_shared_one():
    shared = ROOT.parent / "shared" / "fixtures" / "predecessor-clusters.json"
    if not shared.exists():
        pytest.skip("shared/ is not beside this checkout")
    assert PREDECESSOR.read_bytes() == shared.read_bytes()


@pytest.mark.parametrize("path", [SHIPPED, PREDECESSOR], ids=["shipped", "predecessor"])
def test_valid_files_load_and_validate(path):
    lab = model.load(path)
    assert [c.name for c in lab.clusters] == ["platform", "dev", "staging", "prod"]
    assert len(lab.nodes) == 10
    result = run_cli("-c", str(path), "validate")
    assert result.code == 0, result.err
    assert "4 clusters, 10 nodes" in result.out


def test_predecessor_file_gets_defaults_for_every_new_field():
    lab = model.load(PREDECESSOR)
    assert lab.versions.kubernetes == catalog.DEFAULT_KUBERNETES
    assert lab.provider.type == "tart" and lab.provider.tart.network == "shared"
    assert all(c.stacks == [] for c in lab.clusters)
    assert lab.ssh_password is not None and lab.ssh_password.get_secret_value() == "admin"
    assert "ssh_password=SecretStr('**********')" in repr(lab)  # the password is never shown


def test_shipped_lab_reproduces_the_predecessor_placement_and_sizes():
    lab = model.load(SHIPPED)
    old = model.load(PREDECESSOR)
    # one deliberate change: dev's worker has 3 vCPUs, not 2, as Istio's ten demo sidecars (100m each) would not
    # schedule beside the demo apps on 2 (validation counts them; the predecessor's dev never ran its meshed demo)
    resized = {"dev-worker1": 3}
    for new_c, old_c in zip(lab.clusters, old.clusters, strict=True):
        assert (new_c.name, new_c.pod_cidr, new_c.service_cidr) == (old_c.name, old_c.pod_cidr, old_c.service_cidr)
        assert [(n.name, n.role, n.cpu, n.memory, n.disk) for n in new_c.nodes] == [
            (n.name, n.role, resized.get(n.name, n.cpu), n.memory, n.disk) for n in old_c.nodes
        ]
    stacks = {c.name: set(c.stack_names) for c in lab.clusters}
    assert stacks["platform"] >= {"monitoring", "alerting", "argocd", "jenkins", "sealed-secrets", "backup", "registry"}
    assert stacks["dev"] >= {"network-policies", "metrics-server", "hpa-demo", "istio", "gatekeeper", "quotas"}
    assert stacks["staging"] >= {"metrics-server", "quotas"} and stacks["prod"] >= {"quotas"}
    assert all("rbac" in s for s in stacks.values())
    assert [lab.cluster_id(c) for c in lab.clusters] == [1, 2, 3, 4]
    assert int(lab.versions.kubernetes.split(".")[1]) > 31  # 1.31 is end-of-life


STACK_CASES = [c for c in CASES if "stack" in c["file"]]


def test_at_least_twenty_invalid_fixtures():
    assert len(CASES) >= 20
    assert sorted(c["file"] for c in CASES) == sorted(p.name for p in INVALID.glob("[0-9]*.json"))


def test_at_least_fifteen_invalid_stacks_fixtures_each_naming_paths_and_messages():
    assert len([c for c in STACK_CASES if int(c["file"].split("-")[0]) >= 34]) >= 15
    for case in STACK_CASES:
        assert case["paths"] and case["messages"], case["file"]
    # every manifests folder the fixtures point at belongs to a case (no stray or shared folders)
    folders = {p.name for p in (INVALID / "manifests").iterdir()}
    texts = [(INVALID / c["file"]).read_text() for c in STACK_CASES]
    assert [f for f in sorted(folders) if not any(f'"manifests/{f}"' in text for text in texts)] == []


@pytest.mark.parametrize("case", CASES, ids=[c["file"] for c in CASES])
def test_invalid_fixture(case):
    result = run_cli("-c", str(INVALID / case["file"]), "validate")
    assert result.code == 2, (result.out, result.err)
    assert "Traceback" not in result.err + result.out
    assert result.err.count("error:") == 1  # printed once
    for path in case["paths"]:
        assert f"  - {path}: " in result.err, f"{path} not named in:\n{result.err}"
    for message in case["messages"]:
        assert message in result.err


@pytest.mark.parametrize("case", STACK_CASES, ids=[c["file"] for c in STACK_CASES])
def test_invalid_stacks_fixture_reports_exactly_its_problems(case):
    """No stray problem beside the expected ones (e.g. one per member of `str | StackSpec`), no exception but
    ConfigError (a manifests folder is read relative to the fixture, like clusters.json's folder)."""
    problems = build_problems(lambda: model.load(INVALID / case["file"]))
    assert sorted(p.path for p in problems) == sorted(case["paths"]), problems


def test_every_problem_is_reported_with_its_path():
    with pytest.raises(ConfigError) as info:
        model.load(INVALID / "32-many-problems-at-once.json")
    paths = {p.path for p in info.value.problems}
    assert paths == {"clusters[0].nodes[0].cpu", "clusters[1].pod_cidr", "clusters[2].nodes[1].memroy", "clusters[3].name"}


def test_missing_file_is_a_clear_input_error(tmp_path):
    result = run_cli("-c", str(tmp_path / "nope.json"), "validate")
    assert result.code == 2
    assert "file not found" in result.err and "labctl init" in result.err


def test_real_entry_point_exits_2_without_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "labctl", "-c", str(INVALID / "07-duplicate-vm-name.json"), "validate"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "clusters[1].nodes[0].name" in proc.stderr


def test_validate_json_output_is_a_document():
    result = run_cli("--json", "-c", str(SHIPPED), "validate")
    doc = json.loads(result.out)
    assert doc["valid"] is True and doc["nodes"] == 10
    assert doc["budget"]["vcpus"] == 22 and doc["budget"]["memory_mib"] == 69632


def test_budget_never_overcommits_memory_and_reports_cpu_ratio():
    lab = model.load(SHIPPED)
    mac = host.Host("Darwin", "arm64", cpus=16, memory_mib=128 * 1024)
    b = host.budget(lab, mac)
    assert (b.vcpus, b.memory_mib) == (22, 69632)
    assert round(b.cpu_ratio, 2) == 1.38  # the seed's 1.31 (§7.1), with dev-worker1 at 3 vCPUs instead of 2
    assert b.memory_fits
    small = host.budget(lab, host.Host("Darwin", "arm64", cpus=8, memory_mib=32 * 1024))
    assert not small.memory_fits


def _with_kubernetes(version: str) -> str:
    return PREDECESSOR.read_text().replace('"ssh_user"', f'"versions": {{"kubernetes": "{version}"}}, "ssh_user"')


def test_end_of_life_kubernetes_is_refused_with_its_date_but_the_lab_still_loads():
    # loads: status, shutdown and destroy keep working on a lab whose Kubernetes went end of life
    lab = model.parse(_with_kubernetes("1.32.9"))
    assert validation.support_problems(lab, today=date(2026, 2, 28)) == []  # the last day of support
    [problem] = validation.support_problems(lab, today=date(2026, 3, 1))
    assert problem.path == "versions.kubernetes" and "end of life on 2026-02-28" in problem.message
    assert validation.support_problems(model.load(SHIPPED), today=date(2026, 11, 22)) == []
    with pytest.raises(ConfigError, match="1.29 reached end of life on 2025-02-28"):  # older than the catalogue
        model.parse(_with_kubernetes("1.29.4"))


def test_kubernetes_newer_than_the_catalogue_is_accepted_with_a_warning_in_validate(tmp_path):
    newer = f"1.{max(catalog.KUBERNETES_MINORS) + 1}.0"
    lab = model.parse(_with_kubernetes(newer))
    assert validation.support_problems(lab) == []
    [warning] = [w for w in validation.warnings(lab) if w.startswith("versions.kubernetes")]
    assert f"1.{max(catalog.KUBERNETES_MINORS) + 1} is newer" in warning
    path = tmp_path / "clusters.json"
    path.write_text(_with_kubernetes(newer))
    text = run_cli("-c", str(path), "validate")
    assert text.code == 0 and text.out.count(f"warning: {warning}") == 1
    doc = json.loads(run_cli("--json", "-c", str(path), "validate").out)
    assert warning in doc["warnings"]


def test_install_prints_the_labs_warnings_once_before_its_steps(monkeypatch, tmp_path):
    from labctl import lab as lab_module
    from labctl.engine import Summary

    path = tmp_path / "clusters.json"
    path.write_text(_with_kubernetes(f"1.{max(catalog.KUBERNETES_MINORS) + 1}.0"))
    monkeypatch.setattr(lab_module, "install", lambda lab, opts, **kw: Summary([]))
    for args in ([], ["--json"]):
        result = run_cli(*args, "-c", str(path), "install")
        assert result.code == 0, result.err
        assert result.out.count("warning: versions.kubernetes: ") == 1, result.out


def test_tart_argument_limits_are_validation_errors():
    # Tart's `set --cpu/--disk-size` and `ip --wait` are UInt16 (cirruslabs/tart Sources/tart/Commands)
    raw = json.loads(PREDECESSOR.read_text())
    raw["clusters"][0]["nodes"][0].update(cpu=65535, disk=65535)
    raw["provider"] = {"tart": {"ip_wait_seconds": 65535}}
    model.parse(json.dumps(raw))  # the largest values Tart takes are fine
    raw["clusters"][0]["nodes"][0].update(cpu=65536, disk=65536)
    raw["provider"] = {"tart": {"ip_wait_seconds": 65536}}
    with pytest.raises(ConfigError) as info:
        model.parse(json.dumps(raw))
    assert {p.path for p in info.value.problems} == {
        "clusters[0].nodes[0].cpu", "clusters[0].nodes[0].disk", "provider.tart.ip_wait_seconds"}


def test_a_huge_invalid_value_is_echoed_truncated():
    raw = json.loads(PREDECESSOR.read_text())
    raw["clusters"][0]["name"] = "X" * 1_000_000
    raw["clusters"][0]["pod_cidr"] = "Y" * 1_000_000
    with pytest.raises(ConfigError) as info:
        model.parse(json.dumps(raw))
    assert all(len(p.message) < 300 for p in info.value.problems)
    assert len(info.value.message) < 2000


def test_thousands_of_clashing_clusters_give_a_capped_list_of_problems():
    raw = json.loads(PREDECESSOR.read_text())
    raw["clusters"] = raw["clusters"][:1] * 2000
    with pytest.raises(ConfigError) as info:
        model.parse(json.dumps(raw))
    problems = info.value.problems
    # each clash once per cluster (not once per pair of clusters: that was millions of lines)
    assert len(problems) < 2000 * 8
    assert sum(p.path == "clusters[1999].pod_cidr" for p in problems) == 1
    lines = info.value.message.splitlines()
    assert len(lines) == 1 + ConfigError.MAX_SHOWN + 1 and lines[-1].startswith(f"  … and {len(problems) - 50} more")


def test_many_stacks_with_unknown_requirements_are_reported_without_suggestions():
    raw = json.loads(PREDECESSOR.read_text())
    raw["clusters"][0]["stacks"] = [{"name": f"s{i}", "manifests": "m", "requires": ["nope"]} for i in range(500)]
    with pytest.raises(ConfigError) as info:
        model.parse(json.dumps(raw))
    assert sum("requires 'nope'" in p.message for p in info.value.problems) == 500


@pytest.mark.parametrize("text, where", [
    ("[" * 100_000 + "]" * 100_000, "line 1, column 101: nested deeper than 100"),
    ('{"clusters": [], "x": {"a": 1,\n "a": 2}}', "x.a: duplicate key 'a'"),
    ('{"clusters": [], "n": 1' + "0" * 5000 + "}", "not a usable JSON number"),
])
def test_hostile_text_is_an_input_error_with_its_location(tmp_path, text, where):
    path = tmp_path / "clusters.json"
    path.write_text(text)
    result = run_cli("-c", str(path), "validate")
    assert result.code == 2 and "Traceback" not in result.err and "internal error" not in result.err
    assert where in result.err


def test_spec_hash_changes_only_for_the_changed_node():
    lab = model.load(SHIPPED)
    raw = json.loads(SHIPPED.read_text())
    raw["clusters"][1]["nodes"][1]["memory"] = 6144
    changed = model.parse(json.dumps(raw))
    before = {n.name: model.node_hash(lab, n) for _, n in lab.nodes}
    after = {n.name: model.node_hash(changed, n) for _, n in changed.nodes}
    assert [name for name in before if before[name] != after[name]] == ["dev-worker1"]


def test_schema_command_prints_the_json_schema():
    result = run_cli("schema")
    schema = json.loads(result.out)
    assert "clusters" in schema["properties"]
    assert schema["$defs"]["Node"]["additionalProperties"] is False


def test_init_writes_a_starter_file_and_refuses_to_overwrite(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_cli("init").code == 0
    assert model.load(Path("clusters.json")).clusters
    again = run_cli("init")
    assert again.code == 2 and "already exists" in again.err


@pytest.mark.parametrize("url, refused", [("http://orchard.example.com:6120", True), ("http://10.0.0.5", True),
                                          ("https://orchard.example.com:6120", False),
                                          ("http://127.0.0.1:6120", False), ("http://localhost:6120", False)])
def test_an_orchard_controller_is_reached_over_https_unless_it_is_this_machine(url, refused):
    raw = {"provider": {"type": "orchard", "orchard": {"controller_url": url, "service_account": "labctl"}},
           "clusters": [{"name": "c", "pod_cidr": "10.10.0.0/16", "service_cidr": "10.96.0.0/16",
                         "nodes": [{"name": "m", "role": "master", "cpu": 2, "memory": 2048}]}]}
    problems = build_problems(lambda: model.parse(json.dumps(raw)))
    assert bool([p for p in problems if p.path == "provider.orchard.controller_url" and "in clear" in p.message]) \
        == refused, problems
