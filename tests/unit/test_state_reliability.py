"""Reliability of .labctl (issue 13): one run per lab under destroy races, secrets masked and private, and damaged
or unwritable files ending in a plain error or a rebuild instead of a crash or lost data."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from labctl import errors
from labctl import lab as lab_mod
from labctl.errors import LabctlError, LockedError
from labctl.state import LabState, write_atomic

LAB = {
    "ssh_user": "admin",
    "ssh_password": "sup3r-s3cret-pw",
    "clusters": [{"name": "dev", "pod_cidr": "10.244.0.0/16", "service_cidr": "10.96.0.0/12",
                  "nodes": [{"name": "dev-master", "role": "master", "cpu": 2, "memory": 2048},
                            {"name": "dev-worker1", "role": "worker", "cpu": 2, "memory": 2048}]}],
}


def open_lab(tmp_path: Path) -> lab_mod.LabSession:
    config = tmp_path / "clusters.json"
    config.write_text(json.dumps(LAB))
    return lab_mod.LabSession.open(config)


# -- 2: one lab, one run ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_destroy_removing_the_lock_never_lets_two_runs_hold_the_lab(tmp_path, monkeypatch):
    """Whole-lab destroys race installs 200 times; the gap before the lock file is removed is widened (a test hook
    on Path.unlink) so that an install opening the old file and one creating a new file would both get in."""
    lab = open_lab(tmp_path)
    root = lab.state.root
    real_unlink = Path.unlink
    holders: list[str] = []
    overlaps: list[list[str]] = []
    guard = threading.Lock()
    stop = threading.Event()
    attempted = threading.Condition()
    attempts = [0]
    errors: list[BaseException] = []

    def widened_unlink(self, *args, **kwargs):
        if self == root / "lock":  # let an install try in the gap before the file goes
            with attempted:
                seen = attempts[0]
                attempted.wait_for(lambda: attempts[0] >= seen + 2 or stop.is_set(), timeout=5)
        return real_unlink(self, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", widened_unlink)

    def install(name: str) -> None:
        state = LabState(root)  # a process of its own: its own lock fd
        while not stop.is_set():
            try:
                with state.locked("install"):
                    with guard:
                        holders.append(name)
                        if len(holders) > 1:
                            overlaps.append(list(holders))
                    with attempted:  # hold the lab until another attempt was made meanwhile
                        seen = attempts[0]
                        attempted.notify_all()
                        attempted.wait_for(lambda: attempts[0] >= seen + 1 or stop.is_set(), timeout=0.05)
                    with guard:
                        holders.remove(name)
            except LockedError:
                pass
            except BaseException as exc:  # noqa: BLE001 - reported by the test, not lost with the thread
                errors.append(exc)
                stop.set()
            with attempted:
                attempts[0] += 1
                attempted.notify_all()

    threads = [threading.Thread(target=install, args=(f"install-{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    try:
        destroys = 0
        while destroys < 200 and not stop.is_set():
            try:
                lab_mod._forget_clusters(lab, ["dev"], everything=True)
                destroys += 1
            except LockedError:
                continue
    finally:
        stop.set()
        with attempted:
            attempted.notify_all()
        for t in threads:
            t.join()
    assert errors == [] and overlaps == [] and destroys == 200


# -- 3: secrets ------------------------------------------------------------------------------------------------------

def test_node_logs_mask_registered_secrets_and_are_private(tmp_path):
    from labctl import redact

    state = LabState(tmp_path / ".labctl")
    state.logs.mkdir(parents=True)
    old = state.node_log("n1")
    old.write_text("from an older labctl\n")
    old.chmod(0o644)
    redact.register("abcdef.0123456789abcdef", "0123456789abcdef")
    state.log("n1", "kubeadm join x --token abcdef.0123456789abcdef\nsecret half 0123456789abcdef")
    state.log("n2", "hello")
    text = old.read_text()
    assert "0123456789abcdef" not in text and text.count(redact.MASK) == 2
    for path in state.logs.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_a_step_record_masks_secrets(tmp_path):
    from labctl import redact

    state = LabState(tmp_path / ".labctl")
    redact.register("pw-in-an-error-tail-1234")
    state.record_step("x:dev", "failed", "tail: pw-in-an-error-tail-1234", 1.0, None)
    assert "pw-in-an-error-tail-1234" not in state.path.read_text()


# -- 4: damaged or unwritable .labctl ---------------------------------------------------------------------------------

@pytest.mark.parametrize("content", ["[]", "null", '{"steps": []}', '{"specs": "x"}', '{"stacks": []}', "{trunc"])
def test_a_record_of_the_wrong_shape_reads_as_empty_and_only_a_write_moves_it(tmp_path, content):
    state = LabState(tmp_path / ".labctl")
    state.root.mkdir()
    state.path.write_text(content)
    data = state.read()
    assert data["steps"] == {} and data["specs"] == {}
    assert state.path.read_text() == content  # read-only: not moved, not rewritten
    state.record_step("vms:dev/dev-master", "changed", "", 1.0, "h")
    assert json.loads(state.path.read_text())["steps"]["vms:dev/dev-master"]["status"] == "changed"
    aside = [p for p in state.root.iterdir() if p.name.startswith("state.json.corrupt-")]
    assert len(aside) == 1 and aside[0].read_text() == content


def test_the_spec_record_survives_a_truncated_state_json_so_prune_still_sees_removed_workers(tmp_path):
    lab = open_lab(tmp_path)
    lab.state.set_specs({**lab_mod.spec_hashes(lab.model), "dev/dev-worker2": "old"})
    lab.state.path.write_text(lab.state.path.read_text()[:40])  # truncated
    assert lab_mod.removed_nodes(lab) == [("dev", "dev-worker2")]


def test_plan_reads_a_damaged_record_without_moving_it(tmp_path):
    lab = open_lab(tmp_path)
    lab.state.root.mkdir()
    lab.state.path.write_text("{}}")
    lab_mod.removed_nodes(lab)
    lab_mod.removed_stacks(lab)
    assert sorted(p.name for p in lab.state.root.iterdir()) == ["state.json"]


def _fail_writes_under(monkeypatch, root: Path, code: int) -> None:
    """A test hook at the write layer: opening a file for writing under `root` fails with `code`."""
    real_open = os.open

    def failing_open(path, flags, *args, **kwargs):
        if str(path).startswith(str(root)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", failing_open)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_an_unwritable_lab_directory_is_a_plain_error_naming_the_file_and_filesystem(tmp_path, monkeypatch, code):
    state = LabState(tmp_path / ".labctl")
    state.ensure()
    _fail_writes_under(monkeypatch, state.root, code)
    with pytest.raises(errors.FileError) as err:
        with state.locked("install"):
            pass
    assert str(state.root / "lock") in err.value.message and "filesystem mounted at /" in err.value.message
    assert err.value.hint
    with pytest.raises(errors.FileError) as err:
        state.record_step("x:dev", "changed", "", 1.0, None)
    assert str(state.root) in err.value.message
    state.log("n1", "a line")  # a log line never fails the step that writes it ...
    assert list(state.write_failures) == [str(state.node_log("n1"))]  # ... it is reported after the run


def test_a_full_disk_during_a_run_marks_every_step_prints_the_summary_and_names_the_file(tmp_path, monkeypatch):
    from tests.conftest import run_cli

    config = tmp_path / "clusters.json"
    config.write_text(json.dumps(LAB))
    root = tmp_path / ".labctl"
    real = lab_mod.run

    def run_then_fill(lab, steps, opts, command, **kw):
        real_record = LabState.record_step

        def record_on_full_disk(self, *args):
            _fail_writes_under(monkeypatch, root, errno.ENOSPC)
            return real_record(self, *args)

        monkeypatch.setattr(LabState, "record_step", record_on_full_disk)
        return real(lab, steps, opts, command, **kw)

    monkeypatch.setattr(lab_mod, "run", run_then_fill)
    monkeypatch.setattr(lab_mod, "require_provider", lambda lab: "test")
    monkeypatch.setenv("LABCTL_DEBUG_LOG", str(tmp_path / "debug.log"))
    result = run_cli("-c", str(config), "shutdown")
    assert result.code == 1, result
    assert "internal error" not in result.err
    assert f"cannot write {root}" in result.err and "No space left on device" in result.err, result.err
    assert "labctl shutdown:" in result.out  # the summary, after every step's line


def test_a_truncated_lab_ssh_key_is_named_with_the_fix(tmp_path):
    from labctl.remote import credentials

    state = LabState(tmp_path / ".labctl")
    credentials.lab_key(state)
    path = credentials.key_path(state)
    path.write_bytes(path.read_bytes()[:120])
    with pytest.raises(LabctlError) as err:
        credentials.lab_key(state)
    assert str(path) in err.value.message and "damaged" in err.value.message and err.value.hint


def test_an_empty_kubeconfig_says_how_to_get_it_back_and_a_garbage_merged_file_is_rebuilt(tmp_path):
    from labctl.kube import kubeconfig

    state = LabState(tmp_path / ".labctl")
    config = {"apiVersion": "v1", "kind": "Config",
              "clusters": [{"name": "labctl-dev", "cluster": {"server": "https://10.0.0.1:6443"}}],
              "users": [{"name": "labctl-dev", "user": {"token": "t"}}],
              "contexts": [{"name": "labctl-dev", "context": {"cluster": "labctl-dev", "user": "labctl-dev"}}]}
    kubeconfig.write(state, "dev", json.loads(json.dumps(config)))
    other = json.loads(json.dumps(config).replace("labctl-dev", "labctl-prod"))
    kubeconfig.write(state, "prod", other)
    kubeconfig.cluster_path(state, "dev").write_text("")
    with pytest.raises(kubeconfig.DamagedKubeconfig) as err:
        kubeconfig.read(state, "dev")
    assert "--from init" in err.value.hint
    kubeconfig.merged_path(state).write_text("\x00garbage: [")
    assert kubeconfig.merged_problem(state)
    kubeconfig.write(state, "dev", json.loads(json.dumps(config)))
    merged = kubeconfig._load(kubeconfig.merged_path(state).read_bytes(), "merged")
    assert sorted(c["name"] for c in merged["contexts"]) == ["labctl-dev", "labctl-prod"]
    assert kubeconfig.merged_problem(state) is None


def test_write_atomic_names_the_filesystem_on_a_real_full_disk(tmp_path):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("cannot mount tmpfs here")
    try:
        with pytest.raises(errors.FileError) as err:
            write_atomic(mnt / "state.json", b"x" * 200_000)
        assert f"cannot write {mnt / 'state.json'}: No space left on device" in err.value.message
        assert f"filesystem mounted at {mnt}" in err.value.message
        assert [p.name for p in mnt.iterdir()] == []  # no temp file left behind
    finally:
        subprocess.run(["umount", "-l", str(mnt)])
