"""The conventions users bring from kubectl, kind and k3d (issue 18, item 1), each through the CLI: global flags
after the command, -o json|yaml|wide, validate's problems as a list quoting the values, the schema's $schema/$id,
NO_COLOR, -q, a closed pipe, the heartbeat of long waits without a terminal."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading

import pytest
import yaml

from tests.conftest import FIXTURES, ROOT, run_cli

NO_TART = {"PATH": "/usr/bin:/bin"}  # no tart anywhere on PATH: plan shows every VM as unknown, quickly
ESCAPE = "\x1b["


# ---- global flags after the command ------------------------------------------------------------------------------

def test_global_flags_work_after_the_command_as_before_it(lab_file):
    before = run_cli("--json", "-c", str(lab_file), "plan", env=NO_TART)
    after = run_cli("plan", "--json", "-c", str(lab_file), env=NO_TART)
    assert before.code == after.code == 0, after.err
    steps = lambda out: [(s["step"], s["status"]) for s in json.loads(out)["steps"]]  # noqa: E731
    assert steps(after.out) == steps(before.out) and len(steps(after.out)) > 10

    valid = run_cli("validate", "--config", str(lab_file), "--json")
    assert valid.code == 0 and json.loads(valid.out)["valid"] is True

    quiet = run_cli("validate", "-q", "-c", str(lab_file))
    assert quiet.code == 0 and quiet.out == f"{lab_file}: valid — 4 clusters, 10 nodes\n"


def _leaf_commands(group, prefix=()):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _leaf_commands(command, (*prefix, name))
        else:
            yield (*prefix, name)


def test_every_command_help_shows_the_global_flags():
    from typer.main import get_command

    from labctl.cli import app

    commands = list(_leaf_commands(get_command(app)))
    assert ("plan",) in commands and ("terraform", "render") in commands
    for command in commands:
        result = run_cli(*command, "--help")
        assert result.code == 0, (command, result.err)
        for flag in ("-c, --config", "--json", "-v, --verbose", "-q, --quiet"):
            assert flag in result.out, f"{' '.join(command)} --help does not show {flag}:\n{result.out}"


def test_flags_after_the_command_win_and_bad_ones_are_usage_errors(lab_file, tmp_path):
    missing = tmp_path / "nope.json"
    result = run_cli("-c", str(missing), "validate", "-c", str(lab_file))
    assert result.code == 0 and "valid" in result.out
    result = run_cli("validate", "--jsn", "-c", str(lab_file))
    assert result.code == 2 and "No such option: --jsn" in result.err


# ---- -o json|yaml|wide -----------------------------------------------------------------------------------------

def test_output_json_is_json_and_yaml_is_the_same_document(lab_file):
    as_json = run_cli("-c", str(lab_file), "plan", "--json", env=NO_TART)
    o_json = run_cli("-c", str(lab_file), "plan", "-o", "json", env=NO_TART)
    o_yaml = run_cli("-c", str(lab_file), "plan", "-o", "yaml", env=NO_TART)
    assert as_json.code == o_json.code == o_yaml.code == 0, o_yaml.err
    drop_time = lambda doc: [{k: v for k, v in s.items() if k != "elapsed"} for s in doc["steps"]]  # noqa: E731
    assert drop_time(json.loads(o_json.out)) == drop_time(json.loads(as_json.out))
    assert not o_yaml.out.lstrip().startswith("{")  # YAML's block style, not JSON
    assert drop_time(yaml.safe_load(o_yaml.out)) == drop_time(json.loads(as_json.out))

    valid = run_cli("-c", str(lab_file), "validate", "-o", "yaml")
    assert valid.code == 0 and yaml.safe_load(valid.out)["valid"] is True


def test_output_wide_shows_more_columns_and_a_bad_format_is_a_usage_error(lab_file):
    narrow = run_cli("-c", str(lab_file), "plan", env=NO_TART)
    wide = run_cli("-c", str(lab_file), "plan", "-o", "wide", env=NO_TART)
    assert narrow.code == wide.code == 0
    line = next(x for x in wide.out.splitlines() if "dev-master" in x and "vms" in x)
    assert re.search(r"\? vms +dev-master +unknown +vms:dev/dev-master +tart not found", line), line
    assert "vms:dev/dev-master" not in narrow.out
    # every line of a step's detail, not only the first: the hint under "tart not found" too
    assert wide.out.count("on Linux use the QEMU provider") == 10 and "on Linux use" not in narrow.out

    bad = run_cli("-c", str(lab_file), "plan", "-o", "table")
    assert bad.code == 2 and "'table' is not one of json, yaml, wide" in bad.err


# ---- validate --json: problems as a list, each quoting the value it rejects ---------------------------------------

def test_validate_json_lists_the_problems_each_quoting_the_rejected_value():
    result = run_cli("validate", "--json", "-c", str(FIXTURES / "invalid" / "09-bad-role.json"))
    assert result.code == 2
    doc = json.loads(result.out)
    assert doc["event"] == "error" and doc["exit_code"] == 2
    assert doc["problems"] == [
        {"path": "clusters[0].nodes[0].role", "message": "'boss' is not one of master, worker"},
        {"path": "clusters[0].nodes", "message": "cluster 'platform' has no node with role 'master'; add one"},
    ]
    bounds = run_cli("--json", "-c", str(FIXTURES / "invalid" / "17-negative-memory.json"), "validate")
    assert json.loads(bounds.out)["problems"] == [
        {"path": "clusters[0].nodes[1].memory", "message": "-8192 is not greater than 0"}]


# ---- schema: $schema and $id; clusters.json may point at it ------------------------------------------------------

def test_schema_has_schema_and_id_and_a_file_pointing_at_it_is_valid(lab_file, tmp_path):
    import jsonschema

    result = run_cli("schema")
    assert result.code == 0
    schema = json.loads(result.out)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == "urn:labctl:clusters.json"
    (tmp_path / "clusters.schema.json").write_text(result.out)
    data = {"$schema": "./clusters.schema.json", **json.loads(lab_file.read_text())}
    lab_file.write_text(json.dumps(data, indent=2))
    jsonschema.Draft202012Validator(schema).validate(data)  # an editor checking against it finds nothing
    valid = run_cli("-c", str(lab_file), "validate")
    assert valid.code == 0 and "valid — 4 clusters, 10 nodes" in valid.out, valid.err
    plan = run_cli("-c", str(lab_file), "plan", "--json", env=NO_TART)
    assert plan.code == 0 and json.loads(plan.out)["changes"] == []


# ---- NO_COLOR ---------------------------------------------------------------------------------------------------

def test_no_color_removes_every_escape_code(lab_file, fake_tart):
    forced = {"FORCE_COLOR": "1", "LABCTL_HOST_MEMORY_MIB": str(256 * 1024)}  # rich styles even into a pipe
    styled = run_cli("-c", str(lab_file), "status", "--cluster", "dev", env=forced)
    assert styled.code == 1 and "dev-master" in styled.out
    assert ESCAPE in styled.out  # the check below can fail: with colour there are escape codes
    plain = run_cli("-c", str(lab_file), "status", "--cluster", "dev", env={**forced, "NO_COLOR": "1"})
    assert plain.code == 1 and "dev-master" in plain.out and "not healthy" in plain.out
    assert ESCAPE not in plain.out, repr(plain.out[:300])


# ---- -q --------------------------------------------------------------------------------------------------------

def test_quiet_prints_only_the_result(lab_file, fake_tart):
    plan = run_cli("-c", str(lab_file), "plan", "-q", env=NO_TART)
    assert plan.code == 0 and plan.out == "plan: 81 steps: ? 10 unknown, … 71 pending\n"

    roomy = {"LABCTL_HOST_MEMORY_MIB": str(256 * 1024)}
    status = run_cli("-c", str(lab_file), "status", "-q", "--cluster", "dev,prod", env=roomy)
    assert status.code == 1 and status.out == "dev: not healthy\nprod: not healthy\n"

    loud = run_cli("-c", str(lab_file), "boot", "--cluster", "dev", env=roomy)
    quiet = run_cli("-c", str(lab_file), "boot", "--cluster", "dev", "-q", env=roomy)
    assert quiet.code == loud.code == 1  # there are no VMs to boot yet
    result = [line for line in quiet.out.splitlines() if line.startswith("labctl boot: ")]
    untimed = lambda line: re.sub(r" in [0-9.]+s$", "", line)  # noqa: E731
    assert len(result) == 1 and untimed(result[0]) in map(untimed, loud.out.splitlines())
    # the failed steps (✗ and their detail) and the summary: none of the other lines of the loud run
    assert all(line.startswith(("✗", "    ", "labctl boot: ", "  logs: ")) for line in quiet.out.splitlines()), \
        quiet.out
    assert "dev-master: there is no VM for this node" in quiet.out
    assert any(not line.startswith(("✗", "    ", "labctl boot: ", "  logs: ")) for line in loud.out.splitlines())


def test_quiet_install_shows_no_warnings_only_the_error(lab_file):
    loud = run_cli("-c", str(lab_file), "install", "--cluster", "dev", env=NO_TART)
    quiet = run_cli("-c", str(lab_file), "install", "--cluster", "dev", "-q", env=NO_TART)
    assert quiet.code == loud.code != 0
    assert quiet.out == "" and "tart not found" in quiet.err and quiet.err.count("error:") == 1


# ---- a closed pipe ------------------------------------------------------------------------------------------------

LABCTL = [sys.executable, "-m", "labctl"]


@pytest.mark.parametrize("args", [["plan"], ["plan", "--json"], ["plan", "-o", "yaml"], ["schema"], ["validate"]])
def test_a_closed_pipe_is_not_an_error(lab_file, args):
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before labctl writes its first line: every write meets EPIPE
    try:
        proc = subprocess.run([*LABCTL, "-c", str(lab_file), *args], stdout=write_end, stderr=subprocess.PIPE,
                              text=True, cwd=ROOT, env={**os.environ, **NO_TART}, timeout=120)
    finally:
        os.close(write_end)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no traceback, no "Exception ignored", no error line


def test_plan_piped_into_head_exits_0(lab_file):
    command = f"set -o pipefail; {' '.join(LABCTL)} -c {lab_file} plan | head -1"
    proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **NO_TART}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    whole = run_cli("-c", str(lab_file), "plan", env=NO_TART)
    assert proc.stdout == whole.out.splitlines(keepends=True)[0]


# ---- the heartbeat of long waits without a terminal --------------------------------------------------------------

def test_a_long_wait_without_a_terminal_prints_a_heartbeat(lab_file, monkeypatch):
    """A step silent for longer than the heartbeat period gets a line naming it, its time so far and its last note;
    the period is made short here (30 s in use), and the step ends once that line was printed."""
    import labctl.lab
    import labctl.ui
    from labctl.engine import build_steps
    from labctl.lab import phases_for
    from labctl.model import load
    from labctl.steps import Event, StepResult, Summary

    monkeypatch.setattr(labctl.ui, "HEARTBEAT_SECONDS", 0.05)
    printed = threading.Event()
    real_print = labctl.ui.Reporter._print

    def watching_print(self, text, style=""):
        real_print(self, text, style)
        if "still running" in text:
            printed.set()

    monkeypatch.setattr(labctl.ui.Reporter, "_print", watching_print)

    def slow_boot(lab, opts, emit, notify, on_start):
        step = build_steps(load(lab_file), phases_for("boot"), opts.selection)[0]
        on_start([step])
        emit(Event("start", step))
        emit(Event("note", step, detail="waiting for an IP address from tart"))
        assert printed.wait(60), "no heartbeat"
        emit(Event("result", step, status="changed", elapsed=1.0))
        return Summary([StepResult(step, "changed")], elapsed=1.0)

    monkeypatch.setattr(labctl.lab, "boot", slow_boot)
    result = run_cli("-c", str(lab_file), "boot", "--cluster", "dev")
    assert result.code == 0, result.err
    beat = next(line for line in result.out.splitlines() if "still running" in line)
    assert re.fullmatch(r"  … still running after \d+s: boot dev-master \(waiting for an IP address from tart\)",
                        beat), beat
    assert result.out.splitlines()[-1].startswith("labctl boot: 1 changed")
