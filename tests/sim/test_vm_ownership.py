"""VM ownership against the fake tart: labctl never resizes, starts or deletes a VM it did not create.

A user's VM that carries a node's name is refused by `vms` (naming it, pointing at --adopt) and left alone by
`destroy` and `shutdown` (their apply steps refuse it too, whatever the check said); `install --prune` refuses a
removed worker whose VM labctl did not create before draining it; `--adopt` takes it over; a lab recorded by an older
labctl (no ownership table) is not refused.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from labctl import lab as lab_module
from labctl.context import Context
from labctl.engine import Engine, Selection, Target, build_steps
from labctl.errors import StepError, TransportError
from labctl.kube import kubeconfig
from labctl.model import parse
from labctl.state import LabState
from phases.boot import phase as boot
from phases.destroy import phase as destroy
from phases.shutdown import phase as shutdown
from phases.vms import phase as vms
from tests.sim.fake_tart import wait_for

FIXTURE = Path(__file__).parents[1] / "fixtures" / "predecessor-clusters.json"
IMAGE = "ghcr.io/cirruslabs/ubuntu:latest"
MUTATING = {"clone", "set", "run", "stop", "delete"}


def one_cluster_json() -> str:
    raw = json.loads(FIXTURE.read_text())
    raw["clusters"] = [c for c in raw["clusters"] if c["name"] == "dev"]  # dev-master, dev-worker1
    return json.dumps(raw)


def one_cluster_lab():
    return parse(one_cluster_json())


def context(lab, tmp_path, transport_factory=None, **options):
    ctx = Context(lab, LabState(tmp_path / ".labctl"), transport_factory=transport_factory, notify=lambda _: None,
                  options=options)
    ctx.provider.POLL = 0.02
    return ctx


def run(lab, tmp_path, phase, transport_factory=None, **options):
    ctx = context(lab, tmp_path, transport_factory, **options)
    summary = Engine(ctx, parallel=2).run(build_steps(lab, [phase]))
    return {r.step.target.node: r for r in summary.results}


class NoSSH:
    """The transport factory: no node answers (a refused connection, at once); `asked` lists (node, script id) of
    every command labctl tried to run."""

    def __init__(self):
        self.asked: list[tuple[str, str]] = []

    def __call__(self, ctx, node):
        return SimpleNamespace(run=lambda script, **_: self._refuse(node.name, script), close=lambda: None)

    def _refuse(self, node: str, script):
        self.asked.append((node, script.id))
        raise TransportError(node, "connect: Connection refused")


@pytest.fixture
def users_running_vm(fake_tart):
    """The user's own VM `dev-master` (a node's name), running, started outside labctl; its pid."""
    assert fake_tart.tart("clone", IMAGE, "dev-master").returncode == 0
    process = subprocess.Popen([str(fake_tart.exe), "run", "dev-master", "--no-graphics"], start_new_session=True,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    yield wait_for(lambda: fake_tart.running_pid("dev-master"), timeout=60, what="the user's VM to run")
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)


def touched(fake_tart, mark, name):
    return [a for a in fake_tart.argvs(mark) if a[0] in MUTATING and name in a]


def test_a_users_vm_with_a_nodes_name_is_refused_left_alone_by_destroy_and_adopted_on_request(fake_tart, tmp_path):
    assert fake_tart.tart("clone", IMAGE, "dev-master").returncode == 0  # the user's own VM (4 CPUs, stopped)
    lab = one_cluster_lab()
    mark = fake_tart.mark()

    results = run(lab, tmp_path, vms)
    refused = results["dev-master"]
    assert refused.status == "failed"
    assert "dev-master" in refused.detail and "did not create" in refused.detail and "--adopt" in refused.detail
    assert results["dev-worker1"].status == "changed"  # the lab's own VM is made as usual
    assert touched(fake_tart, mark, "dev-master") == []  # not resized, not started
    assert fake_tart.config("dev-master")["cpuCount"] == 4 and not fake_tart.running_pid("dev-master")

    mark = fake_tart.mark()
    results = run(lab, tmp_path, destroy)
    assert results["dev-master"].status == "unchanged" and "left alone" in results["dev-master"].detail
    assert results["dev-worker1"].status == "changed"
    assert fake_tart.exists("dev-master") and not fake_tart.exists("dev-worker1")
    assert touched(fake_tart, mark, "dev-master") == []

    mark = fake_tart.mark()
    booted = run(lab, tmp_path, boot)["dev-master"]
    assert booted.status == "failed" and "did not create" in booted.detail
    assert touched(fake_tart, mark, "dev-master") == []

    # a refusal is not remembered as ownership: a second run refuses again
    assert run(lab, tmp_path, vms)["dev-master"].status == "failed"

    results = run(lab, tmp_path, vms, adopt=True)
    assert results["dev-master"].status == "changed" and "adopted" in results["dev-master"].detail
    assert fake_tart.config("dev-master")["cpuCount"] == 2 and fake_tart.running_pid("dev-master")
    assert run(lab, tmp_path, vms)["dev-master"].status == "unchanged"  # adopted once, labctl's from now on
    assert run(lab, tmp_path, destroy)["dev-master"].status == "changed"
    assert not fake_tart.exists("dev-master")


def test_a_lab_made_by_an_older_labctl_is_not_refused(fake_tart, tmp_path):
    lab = one_cluster_lab()
    for name in ("dev-master", "dev-worker1"):
        assert fake_tart.tart("clone", IMAGE, name).returncode == 0
    # what an older labctl left: step records, no ownership table
    state = LabState(tmp_path / ".labctl")
    state.record_step("vms:dev/dev-master", "changed", "cloned", 1.0, None)
    state.record_step("vms:dev/dev-worker1", "failed", "no IP address", 1.0, None)
    results = run(lab, tmp_path, vms)
    assert results["dev-master"].status == "changed"
    assert results["dev-worker1"].status == "failed" and "--adopt" in results["dev-worker1"].detail


def test_shutdown_leaves_a_users_vm_running_and_says_so(fake_tart, tmp_path, users_running_vm):
    lab = one_cluster_lab()
    # dev-worker1 is the lab's (recorded as made by an older labctl), running
    assert fake_tart.tart("clone", IMAGE, "dev-worker1").returncode == 0
    LabState(tmp_path / ".labctl").record_step("vms:dev/dev-worker1", "changed", "cloned", 1.0, None)
    context(lab, tmp_path).provider.start(lab.cluster("dev").workers[0])
    wait_for(lambda: fake_tart.running_pid("dev-worker1"), timeout=60, what="dev-worker1 to run")
    mark = fake_tart.mark()

    guests = NoSSH()
    results = run(lab, tmp_path, shutdown, guests, grace_seconds=30)
    assert results["dev-master"].status == "unchanged"
    assert results["dev-master"].detail == "left alone: VM dev-master was not created by labctl"
    assert results["dev-worker1"].detail == "stopped (sigusr2)" and not fake_tart.running_pid("dev-worker1")
    # the user's guest was not asked to power off (dev-worker1's was), nor stopped from outside
    assert guests.asked == [("dev-worker1", "shutdown.poweroff")]
    assert fake_tart.running_pid("dev-master") == users_running_vm and fake_tart.endings("dev-master") == []
    assert touched(fake_tart, mark, "dev-master") == []


@pytest.mark.parametrize("phase", [destroy, shutdown], ids=["destroy", "shutdown"])
def test_apply_refuses_a_users_vm_whatever_the_check_said(fake_tart, tmp_path, users_running_vm, phase):
    """The apply steps check ownership themselves: a check that let the VM through (or a state.json that changed
    between check and apply) still never deletes or stops it."""
    guests = NoSSH()
    ctx = context(one_cluster_lab(), tmp_path, guests)
    mark = fake_tart.mark()
    with pytest.raises(StepError) as refused:
        phase.apply(ctx, Target("dev", "dev-master"))
    assert refused.value.message == ("dev-master: a VM with this name already exists and labctl did not create it; "
                                     "it is left untouched")
    assert "--adopt" in refused.value.hint
    assert guests.asked == []  # not asked over SSH to power off either
    assert fake_tart.running_pid("dev-master") == users_running_vm and fake_tart.endings("dev-master") == []
    assert touched(fake_tart, mark, "dev-master") == []


class RecordingKube:
    """A cluster's API as prune sees it: every Node exists and is a worker; each call is recorded."""

    def __init__(self):
        self.calls: list[tuple] = []

    def __getattr__(self, name):
        def call(*args, **kwargs):
            self.calls.append((name, *args))
            return SimpleNamespace(roles=[]) if name == "node" else 0
        return call


def test_install_prune_refuses_a_removed_worker_whose_vm_labctl_did_not_create(fake_tart, tmp_path, monkeypatch):
    monkeypatch.setenv("LABCTL_HOST_MEMORY_MIB", str(64 * 1024))  # not about the budget
    lab = one_cluster_lab()
    config = tmp_path / "clusters.json"
    config.write_text(one_cluster_json())
    state = LabState(tmp_path / ".labctl")
    # dev-worker2 was a worker of this lab (its spec is recorded) and has left clusters.json; the VM that carries its
    # name now is the user's: labctl has no record of creating it
    state.set_specs({"dev/dev-worker2": "0" * 16})
    assert fake_tart.tart("clone", IMAGE, "dev-worker2").returncode == 0
    state.ensure()
    kubeconfig.cluster_path(state, "dev").parent.mkdir(parents=True, exist_ok=True)
    kubeconfig.cluster_path(state, "dev").write_text("apiVersion: v1\nkind: Config\n")  # so prune would drain
    kube = RecordingKube()
    monkeypatch.setitem(lab_module.CONTEXT_OVERRIDES, "kube_factory", lambda ctx, cluster: kube)
    mark = fake_tart.mark()

    with pytest.raises(StepError) as refused:
        lab_module.install(lab_module.LabSession(config, lab, state),
                           lab_module.RunOptions(Selection(only=["vms"])), prune=True)
    assert refused.value.message.startswith("dev-worker2: ") and "was not created by labctl" in refused.value.message
    assert "--adopt" not in refused.value.hint  # adopting is for declared nodes: a removed one cannot be adopted
    assert kube.calls == []  # refused before the Node is looked at, drained or deleted
    assert fake_tart.exists("dev-worker2") and touched(fake_tart, mark, "dev-worker2") == []
    assert "dev/dev-worker2" in state.read()["specs"]  # still known as removed: a later --prune tries again
    assert fake_tart.running_pid("dev-master") and fake_tart.running_pid("dev-worker1")  # the install itself ran


def test_install_prune_of_a_removed_worker_whose_vm_is_gone_cleans_up(fake_tart, tmp_path, monkeypatch):
    """No VM, no record of creating it (e.g. an older labctl whose `vms` step failed): nothing to protect, so the
    Node and the records go and the next --prune does not refuse again."""
    monkeypatch.setenv("LABCTL_HOST_MEMORY_MIB", str(64 * 1024))
    lab = one_cluster_lab()
    config = tmp_path / "clusters.json"
    config.write_text(one_cluster_json())
    state = LabState(tmp_path / ".labctl")
    state.set_specs({"dev/dev-worker2": "0" * 16})
    state.ensure()
    kubeconfig.cluster_path(state, "dev").parent.mkdir(parents=True, exist_ok=True)
    kubeconfig.cluster_path(state, "dev").write_text("apiVersion: v1\nkind: Config\n")
    kube = RecordingKube()
    monkeypatch.setitem(lab_module.CONTEXT_OVERRIDES, "kube_factory", lambda ctx, cluster: kube)
    mark = fake_tart.mark()

    lab_module.install(lab_module.LabSession(config, lab, state), lab_module.RunOptions(Selection(only=["vms"])),
                       prune=True)
    assert ("delete_node", "dev-worker2") in [c[:2] for c in kube.calls]
    assert "dev/dev-worker2" not in state.read()["specs"]
    assert touched(fake_tart, mark, "dev-worker2") == []
