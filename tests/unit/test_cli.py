"""The CLI on a machine without Tart: plan prints the whole lab, JSON is parseable, errors are clean."""

from __future__ import annotations

import json
import os

from tests.conftest import run_cli

NO_TART = {"PATH": "/usr/bin:/bin"}  # no tart anywhere on PATH, as on any Linux machine


def test_plan_without_tart_prints_the_whole_lab(lab_file):
    result = run_cli("-c", str(lab_file), "plan", env=NO_TART)
    assert result.code == 0, result.err
    for cluster in ("platform", "dev", "staging", "prod"):
        assert f"{cluster}:" in result.out
    assert result.out.count("? vms") == 10 and "tart not found" in result.out
    assert "plan: " in result.out.splitlines()[-1]
    assert not (lab_file.parent / ".labctl").exists()  # a plan writes nothing


def test_plan_json_is_one_documented_document(lab_file):
    result = run_cli("--json", "-c", str(lab_file), "plan", env=NO_TART)
    doc = json.loads(result.out)
    assert set(doc) == {"config", "changes", "counts", "steps"}
    nodes = {s["node"] for s in doc["steps"] if s["node"]}
    assert len(nodes) == 10
    assert {s["cluster"] for s in doc["steps"]} == {"platform", "dev", "staging", "prod"}
    assert set(doc["steps"][0]) == {"step", "phase", "cluster", "node", "status", "detail", "elapsed"}
    assert all(s["status"] in ("unchanged", "would-change", "unknown", "pending") for s in doc["steps"])
    vms = [s for s in doc["steps"] if s["phase"] == "vms"]
    assert len(vms) == 10 and all(s["status"] == "unknown" for s in vms)


def test_install_dry_run_is_the_plan(lab_file):
    plan = run_cli("--json", "-c", str(lab_file), "plan", env=NO_TART)
    dry = run_cli("--json", "-c", str(lab_file), "install", "--dry-run", env=NO_TART)
    strip = lambda out: [(s["step"], s["status"]) for s in json.loads(out)["steps"]]  # noqa: E731
    assert dry.code == 0 and strip(dry.out) == strip(plan.out)


def test_plan_selection_and_bad_names(lab_file):
    only = json.loads(run_cli("--json", "-c", str(lab_file), "plan", "--only", "vms", "--cluster", "dev",
                              env=NO_TART).out)
    assert [s["step"] for s in only["steps"]] == ["vms:dev/dev-master", "vms:dev/dev-worker1"]
    bad = run_cli("-c", str(lab_file), "plan", "--only", "vsm")
    assert bad.code == 2 and "unknown phase 'vsm'" in bad.err and "phases are: vms" in bad.err
    bad = run_cli("-c", str(lab_file), "plan", "--cluster", "qa")
    assert bad.code == 2 and "unknown cluster 'qa'" in bad.err


def test_install_refuses_a_lab_that_does_not_fit_in_memory(lab_file, monkeypatch):
    from labctl import lab as lab_mod

    monkeypatch.setattr(lab_mod, "require_provider", lambda lab: "test")  # a missing tart is said first otherwise
    result = run_cli("-c", str(lab_file), "install", env={**NO_TART, "LABCTL_HOST_MEMORY_MIB": "16384"})
    assert result.code == 1
    assert "needs 69632 MiB of memory" in result.err and "hint:" in result.err
    assert not (lab_file.parent / ".labctl").exists()  # refused before anything was touched


def test_missing_tart_is_one_clear_message_on_install(lab_file):
    result = run_cli("-c", str(lab_file), "install", "--only", "vms", "--cluster", "dev",
                     env={**NO_TART, "LABCTL_HOST_MEMORY_MIB": str(256 * 1024)})
    assert result.code == 1
    assert result.err.count("tart not found") == 1  # once, before any step, not once per node
    assert "Traceback" not in result.out + result.err
    assert not (lab_file.parent / ".labctl").exists()


def test_destroy_needs_yes_without_a_terminal(lab_file):
    result = run_cli("-c", str(lab_file), "destroy")
    assert result.code == 2 and "--yes" in result.err


def test_json_errors_are_json_too(tmp_path):
    result = run_cli("--json", "-c", str(tmp_path / "missing.json"), "validate")
    assert result.code == 2
    error = json.loads(result.out)
    assert error["event"] == "error" and error["exit_code"] == 2 and "file not found" in error["error"]


def test_unexpected_errors_are_one_line_and_logged(lab_file, monkeypatch, tmp_path):
    import labctl.lab

    def boom(*args, **kwargs):
        raise ZeroDivisionError("surprise")

    monkeypatch.setattr(labctl.lab, "plan", boom)
    result = run_cli("-c", str(lab_file), "plan")
    assert result.code == 1
    assert "internal error: ZeroDivisionError: surprise" in result.err and "Traceback" not in result.err
    assert "Traceback" in (tmp_path / "debug.log").read_text()


def test_help_lists_every_command():
    out = run_cli("--help").out
    for command in ("init", "validate", "schema", "plan", "install", "boot", "shutdown", "destroy"):
        assert command in out
    assert os.environ.get("LABCTL_CONFIG") is None
