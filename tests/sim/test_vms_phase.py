"""The `vms` phase through the engine, against the fake tart (tests/sim/fake_tart.py).

The predecessor's lab (10 VMs in 4 clusters) comes up in parallel and a second run changes nothing; on day two a
changed node restarts only its own VM, a disk shrink is refused, a stopped VM is started again (its stale lease is
not mistaken for an address), and VMs that are not in clusters.json are never touched.
Each test installs the whole lab once (about 140 tart calls), so the scenarios share installs instead of repeating
them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labctl.context import Context
from labctl.engine import Engine, build_steps
from labctl.model import parse
from labctl.state import LabState
from phases.vms import phase
from tests.sim.fake_tart import max_overlap, vm_of

FIXTURE = Path(__file__).parents[1] / "fixtures" / "predecessor-clusters.json"
IMAGE = "ghcr.io/cirruslabs/ubuntu:latest"
MUTATING = {"clone", "set", "run", "stop", "delete", "pull", "rename", "prune"}


def lab_with(**changes):
    """The predecessor's lab; `changes` = {node name: {field: value}}."""
    raw = json.loads(FIXTURE.read_text())
    for cluster in raw["clusters"]:
        for node in cluster["nodes"]:
            node.update(changes.get(node["name"], {}))
    return parse(json.dumps(raw))


def run(lab, tmp_path):
    """One `labctl install --only vms`, as the CLI would drive it: a fresh Context over the same .labctl/."""
    notes: list[str] = []
    ctx = Context(lab, LabState(tmp_path / ".labctl"), notify=notes.append)
    ctx.provider.POLL = 0.02
    summary = Engine(ctx, parallel=10).run(build_steps(lab, [phase]))
    return {r.step.target.node: r for r in summary.results}, summary, notes


@pytest.fixture
def installed(fake_tart, tmp_path, monkeypatch):
    """The predecessor's lab after one run of the phase, with two VMs in the store that are not the lab's."""
    monkeypatch.setenv("FAKE_TART_IP_DELAY", "0.3")  # boot to DHCP lease, so the VMs' waits overlap visibly
    for foreign in ("my-own-vm", "dev-master-copy"):
        assert fake_tart.tart("clone", IMAGE, foreign).returncode == 0
    lab = lab_with()
    mark = fake_tart.mark()
    results, summary, notes = run(lab, tmp_path)
    assert summary.ok, [r.detail for r in summary.failed]
    return lab, results, notes, mark


def test_install_creates_all_vms_in_parallel_and_a_second_run_changes_nothing(installed, fake_tart, tmp_path):
    lab, results, notes, mark = installed
    names = sorted(n.name for _, n in lab.nodes)
    assert len(names) == 10 and {r.status for r in results.values()} == {"changed"}
    for _, node in lab.nodes:
        config = fake_tart.config(node.name)
        assert (config["cpuCount"], config["memorySize"] // 2**20, fake_tart.disk_gb(node.name)) == (
            node.cpu, node.memory, node.disk)
        assert fake_tart.running_pid(node.name)
        resized = [f"cpu 4 → {node.cpu}"] + ([f"memory 4096 → {node.memory} MiB"] if node.memory != 4096 else [])
        expected = ", ".join(["cloned", *resized, "started", "running at 127.64.0."])
        assert results[node.name].detail.startswith(expected)
    assert len({r.detail.rsplit(" ", 1)[-1] for r in results.values()}) == 10  # one lease each

    calls = fake_tart.calls()[mark:]
    argvs = [c["argv"] for c in calls]
    assert argvs.count(["pull", IMAGE]) == 0  # the foreign clones cached it: nothing to pull
    assert sorted(a[2] for a in argvs if a[0] == "clone") == names  # each once, never over an existing VM
    assert sorted(a for a in argvs if a[0] == "run") == [["run", n, "--no-graphics"] for n in names]
    assert sorted(a for a in argvs if a[0] == "set" and a[1] == "platform-worker1") == [
        ["set", "platform-worker1", "--cpu", "3", "--memory", "12288"]]
    assert sum(n.endswith("starting") for n in notes) == 10
    # Each VM's work (first call to its address) overlapped the others': they were built side by side.
    spans: dict[str, tuple[float, float]] = {}
    for c in calls:
        vm = vm_of(c["argv"])
        if vm in names and c["argv"][0] != "run":
            start, end = spans.get(vm, (c["start"], c["end"]))
            spans[vm] = (min(start, c["start"]), max(end, c["end"]))
    assert max_overlap(spans.values()) >= 5, spans

    # Foreign VMs: never named in a call, still there, untouched.
    assert {"my-own-vm", "dev-master-copy"} <= set(fake_tart.vms())
    assert not {"my-own-vm", "dev-master-copy"} & {vm_of(a) for a in argvs}
    assert fake_tart.config("my-own-vm")["cpuCount"] == 4 and not fake_tart.running_pid("my-own-vm")

    mark = fake_tart.mark()
    results, summary, notes = run(lab, tmp_path)
    assert summary.ok and {r.status for r in results.values()} == {"unchanged"}
    argvs = fake_tart.argvs(mark)
    assert argvs and not MUTATING & {a[0] for a in argvs}, argvs  # only get and ip: it looked, changed nothing
    assert notes == []


def test_day_two_changes_touch_only_their_vms(installed, fake_tart, tmp_path):
    lab, _, _, _ = installed
    pids = {n.name: fake_tart.running_pid(n.name) for _, n in lab.nodes}
    fake_tart.tart("set", "prod-worker2", "--disk-size", "40")  # grown outside clusters.json, which still says 20
    fake_tart.tart("stop", "staging-worker1")  # the fake keeps its lease, as bootpd does: a stale address
    assert fake_tart.tart("ip", "staging-worker1").returncode == 0
    mark = fake_tart.mark()

    results, summary, notes = run(lab_with(**{"dev-worker1": {"memory": 6144}}), tmp_path)

    changed = sorted(n for n, r in results.items() if r.status == "changed")
    assert changed == ["dev-worker1", "staging-worker1"]
    assert [n for n, r in results.items() if r.status == "failed"] == ["prod-worker2"]
    assert summary.count("unchanged") == 7
    mutations = [a for a in fake_tart.argvs(mark) if a[0] in MUTATING]
    assert sorted(mutations) == [["run", "dev-worker1", "--no-graphics"], ["run", "staging-worker1", "--no-graphics"],
                                 ["set", "dev-worker1", "--memory", "6144"]]

    # The memory change: announced, a graceful stop (SIGUSR2, not the plug), resized, started again.
    assert "stopped (sigusr2), memory 8192 → 6144 MiB, started" in results["dev-worker1"].detail
    assert "dev-worker1: stopping to apply memory 8192 → 6144 MiB; it starts again right after" in notes
    assert fake_tart.endings("dev-worker1") == ["sigusr2"]
    assert fake_tart.config("dev-worker1")["memorySize"] == 6144 * 2**20
    assert fake_tart.running_pid("dev-worker1") not in (None, pids["dev-worker1"])

    # The stopped VM: its stale lease did not count as "done"; it was started and has its address again.
    assert results["staging-worker1"].detail.startswith("started, running at 127.64.0.")
    assert fake_tart.running_pid("staging-worker1")

    # The disk shrink: refused with both sizes, before anything was stopped.
    detail = results["prod-worker2"].detail
    assert "prod-worker2" in detail and "20 GB" in detail and "40 GB" in detail and "only grow" in detail
    assert fake_tart.running_pid("prod-worker2") == pids["prod-worker2"] and fake_tart.disk_gb("prod-worker2") == 40
    assert not any("prod-worker2" in n for n in notes)

    # Nobody else was restarted.
    others = [n for n in pids if n not in ("dev-worker1", "staging-worker1")]
    assert {n: fake_tart.running_pid(n) for n in others} == {n: pids[n] for n in others}
    assert all(fake_tart.boots(n) == 1 for n in others)
