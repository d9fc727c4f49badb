"""The engine with test phases over an in-memory world: order, overlap, isolation of failures, resume, lock."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import threading
import time

import pytest

from labctl import model
from labctl.context import Context
from labctl.engine import Check, Engine, Phase, Selection, Target, _ancestors, build_steps
from labctl.errors import LockedError, UsageError
from labctl.state import LabState
from tests.conftest import SHIPPED


class World:
    """What the test phases 'change': a set of done (phase, target) pairs, and a log of what ran when."""

    def __init__(self, fail: set[tuple[str, str]] | None = None, delay: float = 0.0):
        self.done: set[tuple[str, str]] = set()
        self.fail = fail or set()
        self.delay = delay
        self.applied: list[tuple[str, str, float, float]] = []
        self.checked: list[tuple[str, str]] = []
        self.lock = threading.Lock()


class TestPhase(Phase):
    __test__ = False

    def __init__(self, world: World, name: str, scope="node", after=(), waves=None):
        self.world, self.name, self.scope, self.after, self._waves = world, name, scope, tuple(after), waves

    def waves(self, cluster):
        return self._waves(cluster) if self._waves else super().waves(cluster)

    def check(self, ctx, target: Target) -> Check:
        with self.world.lock:
            self.world.checked.append((self.name, str(target)))
            return Check((self.name, str(target)) in self.world.done, "not yet")

    def apply(self, ctx, target: Target):
        start = time.monotonic()
        if self.world.delay:
            time.sleep(self.world.delay)  # stands for work on a VM; overlap is what is measured
        if (self.name, str(target)) in self.world.fail:
            raise RuntimeError(f"{self.name} broke on {target}")
        with self.world.lock:
            self.world.done.add((self.name, str(target)))
            self.world.applied.append((self.name, str(target), start, time.monotonic()))
        return f"{self.name} done"


def pipeline(world: World) -> list[Phase]:
    masters_then_workers = lambda c: [c.masters, c.workers]  # noqa: E731
    return [
        TestPhase(world, "vms"),
        TestPhase(world, "prepare", after=["vms"]),
        TestPhase(world, "init", scope="cluster", after=["prepare"]),
        TestPhase(world, "join", after=["init"], waves=masters_then_workers),
        TestPhase(world, "cni", scope="cluster", after=["join"]),
    ]


@pytest.fixture
def lab():
    return model.load(SHIPPED)


def run(lab, world, tmp_path, **kw):
    ctx = Context(lab, LabState(tmp_path / ".labctl"))
    steps = build_steps(lab, pipeline(world), kw.pop("selection", None))
    return Engine(ctx, parallel=kw.pop("parallel", 16), **kw).run(steps)


def test_steps_cover_every_target_in_order(lab):
    steps = build_steps(lab, pipeline(World()))
    assert len(steps) == 10 + 10 + 4 + 10 + 4
    ids = [s.id for s in steps]
    assert ids[0] == "vms:platform/platform-master" and ids[-1] == "cni:prod"
    join_worker = next(s for s in steps if s.id == "join:dev/dev-worker1")
    assert {d.id for d in join_worker.deps} == {"init:dev", "join:dev/dev-master"}  # after init, after the master's wave
    prepare = next(s for s in steps if s.id == "prepare:dev/dev-worker1")
    assert {d.id for d in prepare.deps} == {"vms:dev/dev-worker1"}  # node after node: the same node only


def test_dependency_order_is_respected(lab, tmp_path):
    world = World()
    summary = run(lab, world, tmp_path)
    assert summary.ok and summary.count("changed") == 38
    finished = {(p, t): end for p, t, _, end in world.applied}
    started = {(p, t): start for p, t, start, _ in world.applied}
    for cluster in lab.clusters:
        init_start = started[("init", cluster.name)]
        assert all(finished[("prepare", n.name)] <= init_start for n in cluster.nodes)
        for w in cluster.workers:
            assert started[("join", w.name)] >= finished[("join", cluster.masters[0].name)]
        assert started[("cni", cluster.name)] >= max(finished[("join", n.name)] for n in cluster.nodes)


def test_node_steps_of_one_cluster_overlap_in_time(lab, tmp_path):
    world = World(delay=0.2)
    run(lab, world, tmp_path, selection=Selection(only=["vms"], clusters=["platform"]))
    spans = sorted((s, e) for p, t, s, e in world.applied if p == "vms")
    assert len(spans) == 3
    # all three VMs ran at once: each started before any of them ended
    assert max(s for s, _ in spans) < min(e for _, e in spans)


def test_a_failing_cluster_leaves_the_others_complete(lab, tmp_path):
    world = World(fail={("init", "dev")})
    summary = run(lab, world, tmp_path)
    assert not summary.ok
    by_id = {r.step.id: r for r in summary.results}
    assert by_id["init:dev"].status == "failed" and "init broke on dev" in by_id["init:dev"].detail
    assert by_id["join:dev/dev-worker1"].status == "blocked" and by_id["cni:dev"].status == "blocked"
    for other in ("platform", "staging", "prod"):
        assert by_id[f"cni:{other}"].status == "changed"
    assert [r.step.id for r in summary.failed] == ["init:dev"]


def test_fail_fast_stops_everything_after_the_first_failure(lab, tmp_path):
    world = World(fail={("vms", "platform-master")})
    summary = run(lab, world, tmp_path, parallel=1, fail_fast=True)
    statuses = {r.status for r in summary.results}
    assert summary.count("failed") == 1
    assert "cancelled" in statuses
    assert ("cni", "prod") not in world.done


def test_second_run_executes_only_unsatisfied_steps(lab, tmp_path):
    world = World(fail={("join", "prod-worker2")})
    first = run(lab, world, tmp_path)
    assert first.count("failed") == 1
    world.fail.clear()
    world.applied.clear()
    second = run(lab, world, tmp_path)
    assert second.ok
    assert sorted((p, t) for p, t, _, _ in world.applied) == [("cni", "prod"), ("join", "prod-worker2")]
    world.applied.clear()
    third = run(lab, world, tmp_path)
    assert third.count("changed") == 0 and third.count("unchanged") == 38 and world.applied == []


def test_apply_that_does_not_converge_is_a_failure(lab, tmp_path):
    class Liar(TestPhase):
        def apply(self, ctx, target):
            return "pretended"

    world = World()
    ctx = Context(lab, LabState(tmp_path / ".labctl"))
    steps = build_steps(lab, [Liar(world, "vms")], Selection(clusters=["dev"]))
    summary = Engine(ctx).run(steps)
    assert summary.count("failed") == 2
    assert "applied, but the check still fails: not yet" in summary.failed[0].detail


def test_plan_checks_without_applying_and_marks_dependents_pending(lab, tmp_path):
    world = World()
    world.done |= {("vms", n.name) for _, n in lab.nodes}
    ctx = Context(lab, LabState(tmp_path / ".labctl"))
    summary = Engine(ctx).plan(build_steps(lab, pipeline(world)))
    counts = {s: summary.count(s) for s in ("unchanged", "would-change", "pending")}
    assert counts == {"unchanged": 10, "would-change": 10, "pending": 18}
    assert world.applied == []
    assert not (tmp_path / ".labctl").exists()  # a plan writes nothing


def test_selection_only_from_skip_and_unknown_names(lab):
    world = World()
    phases = pipeline(world)
    ids = lambda sel: {s.phase.name for s in build_steps(lab, phases, sel)}  # noqa: E731
    assert ids(Selection(only=["vms", "cni"])) == {"vms", "cni"}
    assert ids(Selection(start="join")) == {"join", "cni"}
    assert ids(Selection(skip=["prepare"])) == {"vms", "init", "join", "cni"}
    assert {s.target.cluster for s in build_steps(lab, phases, Selection(clusters=["dev"]))} == {"dev"}
    with pytest.raises(UsageError, match="unknown phase 'bogus'"):
        build_steps(lab, phases, Selection(only=["bogus"]))
    with pytest.raises(UsageError, match="unknown cluster 'qa'"):
        build_steps(lab, phases, Selection(clusters=["qa"]))


def test_a_concurrent_second_run_is_refused_by_the_lock(tmp_path):
    state = LabState(tmp_path / ".labctl")
    ready = tmp_path / "ready"
    holder = subprocess.Popen([
        sys.executable, "-c",
        "import sys, time, pathlib\n"
        "from labctl.state import LabState\n"
        f"s = LabState(pathlib.Path({str(tmp_path / '.labctl')!r}))\n"
        "with s.locked('install'):\n"
        f"    pathlib.Path({str(ready)!r}).touch()\n"
        "    sys.stdin.read()\n",
    ], stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not ready.exists():
            assert holder.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        with pytest.raises(LockedError, match=rf"busy: pid {holder.pid} running `labctl install`"):
            with state.locked("install"):
                pass
    finally:
        holder.stdin.close()
        holder.wait(10)
    with state.locked("install"):  # released when the holder exited
        pass


SHAPES = {  # name: (masters, workers) per cluster
    "one single-node cluster": [(1, 0)],
    "several single-node clusters": [(1, 0), (1, 0), (1, 0)],
    "one beside multi-node clusters": [(1, 2), (1, 0), (1, 1)],
    "a master with many workers": [(1, 8)],
    "six clusters": [(1, 1), (1, 0), (1, 2), (1, 0), (1, 1), (1, 3)],
}


def shaped_raw(clusters: list[tuple[int, int]]) -> dict:
    """A clusters.json document with one cluster per (masters, workers) pair: c0, c1, ... with unique CIDRs."""
    raw = {"clusters": []}
    for i, (masters, workers) in enumerate(clusters):
        name = f"c{i}"
        nodes = [{"name": f"{name}-m{j}", "role": "master", "cpu": 2, "memory": 2048} for j in range(masters)]
        nodes += [{"name": f"{name}-w{j}", "role": "worker", "cpu": 1, "memory": 1024} for j in range(workers)]
        raw["clusters"].append({"name": name, "pod_cidr": f"10.{10 + i}.0.0/16", "service_cidr": f"10.{100 + i}.0.0/16",
                                "nodes": nodes})
    return raw


def shaped(clusters: list[tuple[int, int]]):
    return model.parse(json.dumps(shaped_raw(clusters)))


@pytest.mark.parametrize("shape", SHAPES)
def test_an_order_passes_through_a_phase_with_no_step_for_the_target(shape, tmp_path):
    """join has no step on a one-node cluster; cni must still come after init there (it ran first and failed with
    "no kubeconfig" when the dependency vanished with join)."""
    lab = shaped(SHAPES[shape])
    world = World()
    join = importlib.import_module("phases.join").phase  # the real waves: no step for the first control plane
    phases = pipeline(world)
    phases[3] = TestPhase(world, "join", after=["init"], waves=join.waves)
    steps = build_steps(lab, phases)
    by_id = {s.id: s for s in steps}
    for cluster in lab.clusters:
        cni = by_id[f"cni:{cluster.name}"]
        assert f"init:{cluster.name}" in {d.id for d in _ancestors(cni)}, shape
        if len(cluster.nodes) == 1:
            assert {d.id for d in cni.deps} == {f"init:{cluster.name}"}
    summary = Engine(Context(lab, LabState(tmp_path / ".labctl")), parallel=16).run(steps)
    assert summary.ok
    done = [(p, t) for p, t, *_ in sorted(world.applied, key=lambda a: a[2])]
    for cluster in lab.clusters:
        assert done.index(("init", cluster.name)) < done.index(("cni", cluster.name))


GRAPH_SHAPES = {**SHAPES, "three control planes": [(3, 2), (1, 1)]}  # the graph only: no sim run needed


@pytest.mark.parametrize("shape", GRAPH_SHAPES)
def test_init_waits_for_its_first_control_plane_only_and_join_for_its_own_node(shape):
    """The real install phases: a worker's (or another control plane's) package install is no ancestor of init, so
    it goes on beside init; it is one of its own join's, and cni still comes after every node's."""
    from phases import install_phases

    lab = shaped(GRAPH_SHAPES[shape])
    by_id = {s.id: s for s in build_steps(lab, install_phases())}
    for cluster in lab.clusters:
        c, first = cluster.name, cluster.masters[0].name
        before_init = {d.id for d in _ancestors(by_id[f"init:{c}"])}
        assert {f"vms:{c}/{first}", f"kubepkgs:{c}/{first}"} <= before_init, shape
        assert {d.id for d in by_id[f"init:{c}"].deps} == {f"kubepkgs:{c}/{first}"}, shape
        before_cni = {d.id for d in _ancestors(by_id[f"cni:{c}"])}
        for node in cluster.nodes[1:]:
            assert not any(d.endswith(f"/{node.name}") for d in before_init), (shape, node.name)
            before_join = {d.id for d in _ancestors(by_id[f"join:{c}/{node.name}"])}
            assert {f"kubepkgs:{c}/{node.name}", f"init:{c}"} <= before_join, (shape, node.name)
        assert {f"kubepkgs:{c}/{n.name}" for n in cluster.nodes} <= before_cni, shape


class FirstMasterInit(TestPhase):
    __test__ = False

    def needs_nodes(self, lab, cluster):
        return [cluster.masters[0].name]


def first_master_pipeline(world: World) -> list[Phase]:
    phases = pipeline(world)
    phases[2] = FirstMasterInit(world, "init", scope="cluster", after=["prepare"])
    join = importlib.import_module("phases.join").phase  # the real waves: no step for the first control plane
    phases[3] = TestPhase(world, "join", after=["prepare", "init"], waves=join.waves)
    return phases


def test_a_workers_failure_before_init_blocks_its_join_not_init(lab, tmp_path):
    world = World(fail={("prepare", "dev-worker1")})
    ctx = Context(lab, LabState(tmp_path / ".labctl"))
    summary = Engine(ctx, parallel=16).run(build_steps(lab, first_master_pipeline(world)))
    by_id = {r.step.id: r.status for r in summary.results}
    assert by_id["init:dev"] == "changed"  # the first control plane was ready: init did not wait for the worker
    assert by_id["join:dev/dev-worker1"] == "blocked" and by_id["cni:dev"] == "blocked"
    assert by_id["cni:prod"] == "changed"


def test_plan_shows_init_waiting_only_for_its_first_control_plane(lab, tmp_path):
    world = World()
    world.done |= {("vms", n.name) for _, n in lab.nodes}
    world.done |= {("prepare", c.masters[0].name) for c in lab.clusters}  # the workers' prepare is still to do
    summary = Engine(Context(lab, LabState(tmp_path / ".labctl"))).plan(build_steps(lab, first_master_pipeline(world)))
    by_id = {r.step.id: r for r in summary.results}
    assert by_id["init:dev"].status == "would-change"  # not pending: nothing it needs is left
    assert by_id["join:dev/dev-worker1"].status == "pending"
    assert by_id["join:dev/dev-worker1"].detail == "after init, prepare"
