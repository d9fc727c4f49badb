"""`labctl ssh` and `labctl logs` (issue 18) through the CLI on a small simulated lab (one master, one worker).

ssh: the exact argv of the system ssh labctl execs (the lab key, 0600; labctl's pinned known_hosts; strict host key
checking under the node's name; the provider's SSH address and port), and its clear errors. logs: a node's journal,
bad units and durations refused, and `--collect` with the worker stopped: the master's journals, crictl listing,
static pod logs, dmesg, labctl's and the console log are collected and redacted, the worker is recorded as not
reachable and does not stop the collection, and nothing is left behind on the node.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tarfile

import pytest

from labctl.state import LabState
from tests.sim.test_sim_stacks import open_sim
from tests.sim.test_sim_e2e import labctl, summary_of

pytestmark = pytest.mark.sim

PASSWORD = "sim-ssh-password-0123"
LAB = {"ssh_password": PASSWORD,
       "clusters": [{"name": "dev", "pod_cidr": "10.20.0.0/16", "service_cidr": "10.97.0.0/16",
                     "nodes": [{"name": "dev-master", "role": "master", "cpu": 2, "memory": 4096},
                               {"name": "dev-worker1", "role": "worker", "cpu": 2, "memory": 4096}]}]}


@pytest.fixture
def small(lab_dir, fake_tart):
    with open_sim(lab_dir, fake_tart, LAB) as sim:
        yield sim


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_ssh_execs_the_system_client_with_the_lab_key_and_the_pinned_host_key(small, tmp_path, monkeypatch):
    result = labctl("--json", "install", "--only", "vms")
    assert result.code == 0, summary_of(result.out)["failed"]
    execs = []
    monkeypatch.setattr(os, "execvp", lambda file, argv: execs.append((file, argv)))

    result = labctl("ssh", "dev-worker1", "--", "ls", "-l", "a b")
    assert result.code == 0, result.err
    state = LabState(tmp_path / ".labctl")
    key = state.ssh_dir / "id_ed25519"
    ssh = shutil.which("ssh")
    # the provider's SSH endpoint (the simulated node's sshd listens on a port of its own)
    host, port = small.provider.ssh_address(next(n for _, n in small.model.nodes if n.name == "dev-worker1"))
    assert execs == [(ssh, [
        ssh, "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", f'UserKnownHostsFile="{state.known_hosts}"',
        "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes", "-o", "HostKeyAlias=dev-worker1",
        "-p", str(port), "--", f"admin@{host}", "ls -l 'a b'"])]
    assert mode(key) == 0o600
    assert PASSWORD not in result.out + result.err and "PRIVATE KEY" not in result.out + result.err
    # a node labctl never reached is contacted once through its own transport (pins the host key, installs the key)
    assert "ssh.first-contact" in small.script_ids()

    execs.clear()
    assert labctl("ssh", "dev-master").code == 0  # no command: an interactive login shell
    assert execs[0][1][-2:] == ["--", f"admin@{small.address('dev-master')}"]

    key.chmod(0o644)
    result = labctl("ssh", "dev-master", "--", "true")
    assert result.code == 1 and "readable by others (mode 0644)" in result.err and "chmod 600" in result.err
    key.chmod(0o600)

    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "ssh" else real_which(name, *a, **k))
    result = labctl("ssh", "dev-master")
    assert result.code == 1 and "`ssh` is not installed" in result.err and "openssh-client" in result.err
    monkeypatch.setattr(shutil, "which", real_which)

    result = labctl("ssh", "nope")
    assert result.code == 2 and "no node 'nope'" in result.err
    small.fake.poweroff("dev-worker1")
    result = labctl("ssh", "dev-worker1")
    assert result.code == 1 and "dev-worker1: the VM is stopped" in result.err and "labctl boot" in result.err
    assert len(execs) == 1  # none of the refused ones exec'd anything


def test_logs_prints_a_journal_and_collect_records_a_stopped_node_without_stopping(small, tmp_path):
    result = labctl("--json", "install")
    assert result.code == 0, summary_of(result.out)["failed"]
    master = small.nodes["dev-master"]

    result = labctl("logs", "dev-master")
    assert result.code == 0, result.err
    assert "kubelet.service: active" in result.out
    result = labctl("logs", "dev-master", "--unit", "containerd", "--since", "2h")
    assert result.code == 0 and "containerd.service: active" in result.out
    assert [c.script for c in small.calls if c.script.startswith("logs.")][-2:] == ["logs.collect", "logs.cleanup"]

    result = labctl("logs", "dev-master", "--since", "2 hours")
    assert result.code == 2 and "--since '2 hours': not a duration" in result.err
    result = labctl("logs", "dev-master", "--unit", "etcd")
    assert result.code == 2 and "--unit 'etcd': use one of kubelet, containerd" in result.err
    result = labctl("logs")
    assert result.code == 2 and "name a node, or pass --collect DIR" in result.err

    # the worker is down; the console log holds the password (a guest printed it): collected masked
    small.fake.poweroff("dev-worker1")
    console = tmp_path / ".labctl" / "logs" / "dev-master.tart.log"
    with console.open("a") as f:
        f.write(f"login password {PASSWORD}\n")
    out = tmp_path / "bug"
    result = labctl("logs", "--collect", str(out), "--archive")
    assert result.code == 0, result.err
    assert "dev-worker1: not reachable" in result.out and "dev-worker1: the VM is stopped" in result.out
    assert "logs of 2 nodes in" in result.out

    got = out / "dev" / "dev-master"
    files = sorted(str(p.relative_to(got)) for p in got.rglob("*") if p.is_file())
    pods = [f for f in files if f.startswith("pods/")]
    assert {"journal-kubelet.log", "journal-containerd.log", "crictl-ps.txt", "dmesg.txt", "labctl.log",
            "console.log"} <= set(files)
    assert {p.split("/")[1].split("_")[0] for p in pods} == {"kube-system"}
    assert {p.split("/")[2] for p in pods} == {"kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd"}
    assert "kube-apiserver" in (got / "crictl-ps.txt").read_text()
    assert "<redacted>" in (got / "console.log").read_text()
    assert all(PASSWORD not in p.read_text() for p in out.rglob("*") if p.is_file())
    assert all(mode(p) == 0o600 for p in out.rglob("*") if p.is_file())
    assert not [path for path in master.files if path.startswith("/tmp/labctl-logs")]  # removed from the node

    down = out / "dev" / "dev-worker1"
    assert sorted(p.name for p in down.iterdir()) == ["console.log", "labctl.log", "unreachable.txt"]
    why = (down / "unreachable.txt").read_text()
    assert "dev-worker1: the VM is stopped" in why and "labctl boot" in why

    archive = tmp_path / "bug.tar.gz"
    assert mode(archive) == 0o600
    with tarfile.open(archive) as tar:
        assert "bug/dev/dev-master/journal-kubelet.log" in tar.getnames()
        assert "bug/dev/dev-worker1/unreachable.txt" in tar.getnames()

    result = labctl("logs", "--collect", str(out))  # a second collection never mixes with the first
    assert result.code == 2 and "is not an empty directory" in result.err
    result = labctl("--json", "logs", "--collect", str(tmp_path / "only"), "--node", "dev-worker1")
    assert result.code == 0
    doc = json.loads(result.out)
    assert [(n["node"], n["error"]) for n in doc["nodes"]] == [
        ("dev-worker1", "dev-worker1: the VM is stopped, so nothing answers SSH")]
    result = labctl("logs", "--collect", str(tmp_path / "x"), "--node", "nope")
    assert result.code == 2 and "--node 'nope'" in result.err
