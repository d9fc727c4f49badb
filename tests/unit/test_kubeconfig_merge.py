"""`kubeconfig --merge` targets, and the merged copies following labctl's own kubeconfig (refresh, destroy)."""

from __future__ import annotations

import os
import stat

import pytest
import yaml

from labctl.kube import kubeconfig
from labctl.state import LabState


def _config(cluster, server, ca="Q0E="):
    name = kubeconfig.context_name(cluster)
    return {"apiVersion": "v1", "kind": "Config", "current-context": name,
            "clusters": [{"name": name, "cluster": {"server": server, "certificate-authority-data": ca}}],
            "users": [{"name": name, "user": {"token": "t"}}],
            "contexts": [{"name": name, "context": {"cluster": name, "user": name}}]}


WORK = {"apiVersion": "v1", "kind": "Config", "current-context": "work",
        "clusters": [{"name": "work", "cluster": {"server": "https://work"}}],
        "users": [{"name": "work", "user": {}}],
        "contexts": [{"name": "work", "context": {"cluster": "work", "user": "work", "namespace": "team"}}]}


@pytest.fixture
def state(tmp_path):
    state = LabState(tmp_path / ".labctl")
    kubeconfig.write(state, "dev", _config("dev", "https://10.0.0.2:6443"))
    kubeconfig.write(state, "prod", _config("prod", "https://10.0.0.3:6443"))
    return state


def servers(path):
    return {c["name"]: c["cluster"]["server"] for c in yaml.safe_load(path.read_text())["clusters"]}


def test_merge_target_follows_kubectls_rule(tmp_path):
    home = tmp_path / "home"
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert kubeconfig.merge_target("labctl-dev", None, home) == home / ".kube" / "config"
    assert kubeconfig.merge_target("labctl-dev", "", home) == home / ".kube" / "config"
    chain = os.pathsep.join(map(str, (a, b, c)))
    assert kubeconfig.merge_target("labctl-dev", chain, home) == c  # none exists: the last one is created
    b.write_text(yaml.safe_dump(WORK))
    c.write_text(yaml.safe_dump(WORK))
    assert kubeconfig.merge_target("labctl-dev", chain, home) == b  # created in the first file that exists
    c.write_text(yaml.safe_dump(_config("dev", "https://old:6443")))
    assert kubeconfig.merge_target("labctl-dev", chain, home) == c  # modified where it is defined


def test_refresh_follows_a_new_address_and_keeps_the_rest_of_the_users_file(state, tmp_path):
    user = tmp_path / "kube" / "config"
    user.parent.mkdir()
    user.write_text(yaml.safe_dump(WORK))
    user.chmod(0o640)
    kubeconfig.export(state, ["dev", "prod"], str(user), tmp_path)
    assert kubeconfig.stale_merged(state, "dev") == []
    # the user set a namespace on labctl's context: a refresh keeps it
    data = yaml.safe_load(user.read_text())
    next(c for c in data["contexts"] if c["name"] == "labctl-dev")["context"]["namespace"] = "apps"
    user.write_text(yaml.safe_dump(data))

    kubeconfig.write(state, "dev", _config("dev", "https://10.0.0.3:6443"))  # dev moved to prod's old address
    kubeconfig.write(state, "prod", _config("prod", "https://10.0.0.2:6443"))
    assert kubeconfig.stale_merged(state, "dev") == [user]
    lines = kubeconfig.sync_merged(state, "dev") + kubeconfig.sync_merged(state, "prod")
    assert len(lines) == 2 and "labctl-dev" in lines[0] and "10.0.0.3" in lines[0]
    assert servers(user) == {"work": "https://work", "labctl-dev": "https://10.0.0.3:6443",
                             "labctl-prod": "https://10.0.0.2:6443"}
    data = yaml.safe_load(user.read_text())
    assert data["current-context"] == "work" and data["contexts"][0] == WORK["contexts"][0]
    assert next(c for c in data["contexts"] if c["name"] == "labctl-dev")["context"]["namespace"] == "apps"
    assert stat.S_IMODE(user.stat().st_mode) == 0o600  # cluster-admin keys: no longer group-readable
    assert kubeconfig.stale_merged(state, "dev") == [] and kubeconfig.sync_merged(state, "dev") == []


def test_a_file_that_is_gone_or_no_longer_holds_the_context_is_forgotten_quietly(state, tmp_path):
    gone, cleaned = tmp_path / "gone", tmp_path / "cleaned"
    kubeconfig.export(state, ["dev"], str(gone), tmp_path)
    kubeconfig.export(state, ["dev"], str(cleaned), tmp_path)
    gone.unlink()
    cleaned.write_text(yaml.safe_dump(WORK))  # the user removed labctl's entries
    kubeconfig.write(state, "dev", _config("dev", "https://10.0.0.9:6443"))
    assert kubeconfig.stale_merged(state, "dev") == []
    assert kubeconfig.sync_merged(state, "dev") == []
    assert not gone.exists() and yaml.safe_load(cleaned.read_text()) == WORK
    assert "dev" not in state.read().get(kubeconfig.MERGES, {})


def test_an_unwritable_file_is_reported_with_the_command_that_fixes_it(state, tmp_path, monkeypatch):
    user = tmp_path / "config"
    kubeconfig.export(state, ["dev"], str(user), tmp_path)
    kubeconfig.write(state, "dev", _config("dev", "https://10.0.0.9:6443"))
    real_write = kubeconfig.write_atomic

    def refuse(path, data, mode=0o644):
        if path == user:  # as a read-only home or a file owned by root would (the tests may run as root)
            raise PermissionError(13, "Permission denied", str(path))
        real_write(path, data, mode)

    monkeypatch.setattr(kubeconfig, "write_atomic", refuse)
    [line] = kubeconfig.sync_merged(state, "dev")
    assert f"context labctl-dev in {user} is stale (Permission denied)" in line
    assert f"KUBECONFIG={user} labctl kubeconfig --merge --cluster dev" in line
    assert servers(user)["labctl-dev"] == "https://10.0.0.2:6443"
    assert kubeconfig.stale_merged(state, "dev") == [user]  # still recorded: the next run tries again


def test_destroy_removes_the_clusters_entries_from_merged_files(state, tmp_path):
    user = tmp_path / "config"
    user.write_text(yaml.safe_dump({**WORK, "current-context": "labctl-dev"}))
    kubeconfig.export(state, ["dev", "prod"], str(user), tmp_path)
    kubeconfig.remove(state, "dev")
    data = yaml.safe_load(user.read_text())
    assert [c["name"] for c in data["contexts"]] == ["work", "labctl-prod"]
    assert [c["name"] for c in data["clusters"]] == ["work", "labctl-prod"]
    assert data["current-context"] == ""  # it named the destroyed cluster's context
    assert list(state.read()[kubeconfig.MERGES]) == ["prod"]


def test_a_symlinked_kubeconfig_stays_a_symlink(state, tmp_path):
    real = tmp_path / "dotfiles" / "kubeconfig"
    real.parent.mkdir()
    real.write_text(yaml.safe_dump(WORK))
    link = tmp_path / "config"
    link.symlink_to(real)
    kubeconfig.export(state, ["dev"], str(link), tmp_path)
    kubeconfig.write(state, "dev", _config("dev", "https://10.0.0.9:6443"))
    kubeconfig.sync_merged(state, "dev")
    assert link.is_symlink() and servers(real)["labctl-dev"] == "https://10.0.0.9:6443"


def test_two_clusters_refreshing_one_user_file_at_once_both_land(state, tmp_path, monkeypatch):
    """boot repairs clusters in parallel threads; both refresh the same user kubeconfig. Reading it, each waits (up
    to 0.5 s) for the other to read too: without one lock around read-modify-write, both read the old file and the
    second write loses the first's entries (seen in CI: 'context labctl-dev ... is out of date' after a repair)."""
    import threading
    user = tmp_path / "kube" / "config"
    user.parent.mkdir()
    user.write_text(yaml.safe_dump(WORK))
    kubeconfig.export(state, ["dev", "prod"], str(user), tmp_path)
    kubeconfig.write(state, "dev", _config("dev", "https://10.0.0.3:6443"))
    kubeconfig.write(state, "prod", _config("prod", "https://10.0.0.2:6443"))
    read_user, both_read = kubeconfig._read_user, threading.Barrier(2, timeout=0.5)

    def slow_read(path):
        data = read_user(path)
        try:
            both_read.wait()
        except threading.BrokenBarrierError:
            pass  # the other thread waits for the lock: the point of the fix
        return data

    monkeypatch.setattr(kubeconfig, "_read_user", slow_read)
    threads = [threading.Thread(target=kubeconfig.sync_merged, args=(state, c)) for c in ("dev", "prod")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert servers(user) == {"work": "https://work", "labctl-dev": "https://10.0.0.3:6443",
                             "labctl-prod": "https://10.0.0.2:6443"}
