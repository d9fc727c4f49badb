"""Failures that say what to do, through the CLI: text and exit code (issue 18, item 2)."""

from __future__ import annotations

import json
import platform

import pytest

from labctl import lab as lab_mod
from tests.conftest import SHIPPED, run_cli

NO_TART = {"PATH": "/usr/bin:/bin", "LABCTL_HOST_MEMORY_MIB": "16384"}  # no tart, and too little memory for all


def test_no_tart_is_said_before_the_memory_budget(lab_file):
    result = run_cli("-c", str(lab_file), "install", env=NO_TART)
    assert result.code == 1
    assert result.err.startswith("error: tart not found") and "MiB of memory" not in result.err


@pytest.mark.skipif(platform.system() == "Darwin", reason="the Linux advice")
def test_no_tart_on_linux_points_at_the_qemu_provider_and_doctor(lab_file):
    for command in (["install"], ["boot"], ["status"]):
        result = run_cli("-c", str(lab_file), *command, env=NO_TART)
        assert result.code == 1, (command, result)
        assert "labctl init --provider qemu" in result.err and "labctl doctor" in result.err, (command, result.err)


def test_the_memory_budget_counts_only_the_chosen_clusters(lab_file, monkeypatch):
    monkeypatch.setattr(lab_mod, "require_provider", lambda lab: "test")
    everything = run_cli("-c", str(lab_file), "install", env=NO_TART)
    assert everything.code == 1 and "the lab needs 69632 MiB" in everything.err
    assert "one cluster at a time with --cluster" in everything.err
    calls = []
    monkeypatch.setattr(lab_mod, "run", lambda lab, steps, opts, command, **kw: calls.append(opts) or _ok())
    dev = run_cli("-c", str(lab_file), "install", "--cluster", "dev", env=NO_TART)  # 12 GiB: fits in 12 GiB usable
    assert dev.code == 0, dev.err
    assert calls and calls[0].selection.clusters == ["dev"]
    two = run_cli("-c", str(lab_file), "install", "--cluster", "platform,prod", env=NO_TART)
    assert two.code == 1 and "clusters platform, prod needs" in two.err


def _ok():
    from labctl.engine import Summary

    return Summary(results=[], elapsed=0.0)


def test_a_missing_lab_file_names_the_full_path_for_every_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for command in (["validate"], ["plan"], ["install"], ["status"], ["boot"], ["kubeconfig"]):
        result = run_cli("-c", "nope.json", *command)
        assert result.code == 2, (command, result)
        assert f"file not found: looked for {tmp_path / 'nope.json'}" in result.err, (command, result.err)
        assert "labctl init" in result.err and "internal error" not in result.err


def test_init_honours_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "labs").mkdir()
    result = run_cli("-c", "labs/mine.json", "init", "--provider", "qemu")
    assert result.code == 0, result.err
    assert (tmp_path / "labs" / "mine.json").is_file() and not (tmp_path / "clusters.json").exists()
    assert f"labctl -c {tmp_path / 'labs' / 'mine.json'} validate" in result.out
    assert run_cli("-c", "labs/mine.json", "validate").code == 0
    again = run_cli("-c", "labs/mine.json", "init")
    assert again.code == 2 and "already exists" in again.err
    nowhere = run_cli("-c", "missing/x.json", "init")
    assert nowhere.code == 2 and f"{tmp_path / 'missing'} does not exist" in nowhere.err


def test_init_force_over_a_folder_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "clusters.json").mkdir()
    result = run_cli("init", "--force")
    assert result.code == 2
    assert f"{tmp_path / 'clusters.json'} is a folder, not a file" in result.err and "--config" in result.err
    assert "internal error" not in result.err and (tmp_path / "clusters.json").is_dir()
    read = run_cli("validate")
    assert read.code == 2 and "is a folder, not a file" in read.err


def test_an_unwritable_lab_folder_is_a_plain_error_naming_it(tmp_path, monkeypatch):
    """As root (CI) a chmod stops nothing: the write layer fails as a read-only filesystem would."""
    import errno
    import os

    monkeypatch.chdir(tmp_path)
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if str(path).startswith(str(tmp_path)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    result = run_cli("init", "--provider", "qemu")
    assert result.code != 0 and "internal error" not in result.err and "Traceback" not in result.err
    assert f"cannot write {tmp_path / 'clusters.json'}" in result.err and "read-only" in result.err
    monkeypatch.setattr(os, "open", real_open)
    (tmp_path / "clusters.json").write_bytes(SHIPPED.read_bytes())
    monkeypatch.setattr(os, "open", read_only)
    monkeypatch.setattr(lab_mod, "require_provider", lambda lab: "test")
    result = run_cli("install", "--cluster", "dev", env={"LABCTL_HOST_MEMORY_MIB": "262144"})
    assert result.code == 1 and "internal error" not in result.err and "Traceback" not in result.err
    assert f"cannot write {tmp_path / '.labctl'}" in result.err and "read-only" in result.err


def test_stacks_this_lab_cannot_install_are_shown_by_validate_and_plan(lab_file):
    raw = json.loads(lab_file.read_text())
    dev = next(c for c in raw["clusters"] if c["name"] == "dev")
    dev["stacks"] += ["harbor", {"name": "mine", "manifests": "not-there"}]  # harbor: amd64 only; Tart VMs: arm64
    lab_file.write_text(json.dumps(raw))
    for command in ("validate", "plan"):
        result = run_cli("-c", str(lab_file), command, env={"PATH": "/usr/bin:/bin"})
        assert result.code == 2, (command, result)
        assert "stack 'harbor' runs only on amd64 VMs" in result.err, (command, result.err)
        assert f"{lab_file.parent / 'not-there'} is not a folder" in result.err, (command, result.err)
