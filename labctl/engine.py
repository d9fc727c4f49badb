"""Phases, steps, dependency order, parallel execution, events.

A Phase (one file in phases/) knows how to look at the world (`check`, read-only) and how to change it
(`apply`, safe to repeat). A Step is one phase on one target (a node, a cluster or the whole lab). The engine
builds the step graph from the ordered phase list, plans (checks only) or runs the unsatisfied steps on a bounded
thread pool, and reports everything as events.

Dependencies: a step waits for the steps of the phases named in `after` that it touches:
- node phase after node phase: the same node only, so every node moves through the pipeline at its own pace;
- anything after a cluster phase, or a cluster phase after a node phase: the whole cluster;
- a lab phase, or anything after one: everything.
Inside one phase a cluster's nodes run in waves (`Phase.waves`): e.g. control planes one at a time, then workers
together. A failed step blocks only the steps that depend on it, so one cluster's failure leaves the others going.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from .errors import LabctlError, UsageError

if TYPE_CHECKING:
    from .model import Cluster, Lab, Node

Scope = Literal["node", "cluster", "lab"]
Status = Literal["unchanged", "changed", "failed", "blocked", "cancelled", "would-change", "unknown", "pending"]


@dataclass(frozen=True)
class Target:
    cluster: str | None = None
    node: str | None = None
    item: str | None = None  # one of a cluster phase's items (`Phase.items`), e.g. a stack

    def __str__(self) -> str:
        if self.item:
            return f"{self.cluster}/{self.item}"
        return self.node or self.cluster or "lab"


@dataclass(frozen=True)
class Check:
    done: bool
    detail: str = ""


class CannotCheck(LabctlError):
    """A check could not look at the world (the provider is missing, the node is not up yet...).

    In a plan the step is shown as `unknown` with this reason; during a run it is a failure.
    """


class Phase:
    """The contract every phase file implements. Subclass, set the attributes, implement check and apply."""

    name: str = ""
    scope: Scope = "node"
    after: tuple[str, ...] = ()
    description: str = ""

    def applies(self, lab: Lab, cluster: Cluster) -> bool:
        """Does this phase run on this cluster at all? (e.g. istio only where the cluster declares it)"""
        return True

    def items(self, lab: Lab, cluster: Cluster) -> list[str] | None:
        """Cluster phases: None for one step per cluster, or the names of one step each (e.g. its stacks)."""
        return None

    def item_requires(self, lab: Lab, cluster: Cluster, item: str) -> list[str]:
        """The items of the same phase and cluster that `item` waits for (e.g. the stacks it requires)."""
        return []

    def cross_cluster(self, lab: Lab, cluster: Cluster, item: str | None) -> list[tuple[str, str]]:
        """(phase, cluster) pairs in OTHER clusters this step waits for when they are selected (e.g. Argo CD on one
        cluster registering the others needs their API servers)."""
        return []

    def waves(self, cluster: Cluster) -> list[list[Node]]:
        """Node phases: groups of nodes run one group after another; nodes inside a group run in parallel."""
        return [list(cluster.nodes)]

    def check(self, ctx, target: Target) -> Check:  # pragma: no cover - interface
        raise NotImplementedError

    def apply(self, ctx, target: Target) -> str | None:  # pragma: no cover - interface
        """Make check() true. Returns a short note of what changed (shown in the summary)."""
        raise NotImplementedError


@dataclass(eq=False)
class Step:
    phase: Phase
    target: Target
    deps: set[Step] = field(default_factory=set)
    # the deps this step waits for but does not need to succeed (another cluster's steps: Argo CD registers the
    # clusters that made it; one that failed must not block a stack on a healthy cluster)
    soft: set[Step] = field(default_factory=set)

    @property
    def id(self) -> str:
        where = "/".join(p for p in (self.target.cluster, self.target.node, self.target.item) if p) or "lab"
        return f"{self.phase.name}:{where}"

    def __repr__(self) -> str:
        return f"Step({self.id})"


@dataclass
class StepResult:
    step: Step
    status: Status
    detail: str = ""
    error: BaseException | None = None
    elapsed: float = 0.0

    def as_dict(self) -> dict:
        t = self.step.target
        return {
            "step": self.step.id,
            "phase": self.step.phase.name,
            "cluster": t.cluster,
            "node": t.node,
            "status": self.status,
            "detail": self.detail,
            "elapsed": round(self.elapsed, 3),
        }


@dataclass
class Event:
    """What the UI, the NDJSON output and the logs are fed with."""

    kind: Literal["plan", "start", "note", "result", "finish"]
    step: Step | None = None
    status: Status | None = None
    detail: str = ""
    elapsed: float = 0.0

    def as_dict(self) -> dict:
        out: dict = {"event": self.kind, "time": round(time.time(), 3)}
        if self.step is not None:
            t = self.step.target
            out.update(step=self.step.id, phase=self.step.phase.name, cluster=t.cluster, node=t.node)
        if self.status:
            out["status"] = self.status
        if self.detail:
            out["detail"] = self.detail
        if self.kind == "result":
            out["elapsed"] = round(self.elapsed, 3)
        return out


@dataclass
class Summary:
    results: list[StepResult]
    elapsed: float = 0.0
    interrupted: bool = False

    def count(self, status: Status) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(r.status in ("unchanged", "changed") for r in self.results)

    @property
    def failed(self) -> list[StepResult]:
        return [r for r in self.results if r.status == "failed"]


@dataclass
class Selection:
    only: list[str] = field(default_factory=list)
    start: str | None = None  # --from
    skip: list[str] = field(default_factory=list)
    clusters: list[str] = field(default_factory=list)


# ---- building the step graph -------------------------------------------------------------------------------

def select_phases(phases: list[Phase], sel: Selection) -> list[Phase]:
    names = [p.name for p in phases]
    for name in [*sel.only, *sel.skip, *([sel.start] if sel.start else [])]:
        if name not in names:
            raise UsageError(f"unknown phase {name!r}", hint=f"phases are: {', '.join(names)}")
    chosen = phases
    if sel.start:
        chosen = chosen[names.index(sel.start) :]
    if sel.only:
        chosen = [p for p in chosen if p.name in sel.only]
    return [p for p in chosen if p.name not in sel.skip]


def build_steps(lab: Lab, phases: list[Phase], sel: Selection | None = None) -> list[Step]:
    """Steps for the selected phases and clusters, each with its dependencies (within the selection)."""
    sel = sel or Selection()
    known = [c.name for c in lab.clusters]
    for name in sel.clusters:
        if name not in known:
            raise UsageError(f"unknown cluster {name!r}", hint=f"clusters in this lab: {', '.join(known)}")
    clusters = [c for c in lab.clusters if not sel.clusters or c.name in sel.clusters]
    chosen = select_phases(phases, sel)
    by_name: dict[str, Phase] = {p.name: p for p in chosen}

    # steps[phase][cluster] = list of steps (node phases: in wave order); lab phases live under cluster None
    steps: dict[str, dict[str | None, list[Step]]] = {}
    ordered: list[Step] = []
    for phase in chosen:
        per_cluster: dict[str | None, list[Step]] = {}
        if phase.scope == "lab":
            per_cluster[None] = [Step(phase, Target())]
        for cluster in clusters if phase.scope != "lab" else []:
            if not phase.applies(lab, cluster):
                continue
            if phase.scope == "cluster":
                items = phase.items(lab, cluster)
                if items is None:
                    per_cluster[cluster.name] = [Step(phase, Target(cluster.name))]
                    continue
                by_item = {item: Step(phase, Target(cluster.name, item=item)) for item in items}
                for item, step in by_item.items():
                    step.deps.update(by_item[r] for r in phase.item_requires(lab, cluster, item) if r in by_item)
                per_cluster[cluster.name] = list(by_item.values())
                continue
            previous_wave: list[Step] = []
            group: list[Step] = []
            for wave in phase.waves(cluster):
                current = [Step(phase, Target(cluster.name, n.name)) for n in wave]
                for s in current:
                    s.deps.update(previous_wave)
                group += current
                previous_wave = current
            per_cluster[cluster.name] = group
        steps[phase.name] = per_cluster

        def needs(step: Step, dep_name: str) -> list[Step]:
            """The steps of phase `dep_name` that `step` waits for. Where that phase has no step for this target
            (join on a one-node cluster, a phase that does not apply), its own dependencies stand in for it, so an
            order never vanishes through a phase that is not there (cni after join still comes after init)."""
            if dep_name not in by_name:
                return []  # not selected: the user vouches for it (e.g. --only), the check will tell
            dep_phase, dep_steps = by_name[dep_name], steps[dep_name]
            if dep_phase.scope == "lab" or step.phase.scope == "lab":
                found = [s for g in dep_steps.values() for s in g]
            elif dep_phase.scope == "node" and step.phase.scope == "node":
                found = [s for s in dep_steps.get(step.target.cluster, []) if s.target.node == step.target.node]
            else:
                found = list(dep_steps.get(step.target.cluster, []))
            return found or [s for d in dep_phase.after for s in needs(step, d)]

        for cname, group in per_cluster.items():
            for step in group:
                for dep_name in phase.after:
                    step.deps.update(needs(step, dep_name))
                if phase.scope == "cluster":
                    for dep_name, other in phase.cross_cluster(lab, lab.cluster(cname), step.target.item):
                        if other != cname and dep_name in steps:
                            step.deps.update(steps[dep_name].get(other, []))
                            step.soft.update(steps[dep_name].get(other, []))
                ordered.append(step)
    return ordered


# ---- running ---------------------------------------------------------------------------------------------------

Emit = Callable[[Event], None]


def _dependents(steps: list[Step]) -> dict[Step, list[Step]]:
    out: dict[Step, list[Step]] = {s: [] for s in steps}
    for s in steps:
        for d in s.deps:
            if d in out:
                out[d].append(s)
    return out


def _blocked_by(failed: Step, dependents: dict[Step, list[Step]]) -> list[Step]:
    """Every step that needs `failed` to succeed, directly or through others (soft dependencies do not)."""
    seen: list[Step] = []
    todo = [d for d in dependents.get(failed, []) if failed not in d.soft]
    while todo:
        s = todo.pop()
        if s not in seen:
            seen.append(s)
            todo.extend(d for d in dependents.get(s, []) if s not in d.soft)
    return seen


def _describe(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, LabctlError) else f"{type(exc).__name__}: {exc}"
    hint = getattr(exc, "hint", None)
    return f"{text}\n  hint: {hint}" if hint else text


class Engine:
    def __init__(
        self,
        ctx,
        *,
        parallel: int = 8,
        fail_fast: bool = False,
        emit: Emit | None = None,
        record: Callable[[StepResult], None] | None = None,
    ):
        self.ctx = ctx
        self.parallel = max(1, parallel)
        self.fail_fast = fail_fast
        self.emit = emit or (lambda e: None)
        self.record = record or (lambda r: None)
        self.cancel = threading.Event()

    # plan: checks only, dependencies first; a step whose dependencies are not done is `pending`
    def plan(self, steps: list[Step]) -> Summary:
        start = time.monotonic()
        results: dict[Step, StepResult] = {}

        def look(step: Step) -> StepResult:
            if any(results[d].status != "unchanged" for d in step.deps):
                waiting = sorted({d.target.item or d.phase.name for d in step.deps if results[d].status != "unchanged"})
                return StepResult(step, "pending", f"after {', '.join(waiting)}")
            t0 = time.monotonic()
            try:
                check = step.phase.check(self.ctx, step.target)
            except Exception as exc:  # a plan never fails: it reports what it could not see
                self.ctx.debug(f"check {step.id} failed", exc)
                return StepResult(step, "unknown", _describe(exc), exc, time.monotonic() - t0)
            status: Status = "unchanged" if check.done else "would-change"
            return StepResult(step, status, check.detail, None, time.monotonic() - t0)

        # Checks of independent steps run in parallel; a step is looked at once all its deps have been.
        self._schedule(steps, look, results, planning=True)
        return Summary([results[s] for s in steps], time.monotonic() - start)

    def run(self, steps: list[Step]) -> Summary:
        start = time.monotonic()
        results: dict[Step, StepResult] = {}
        interrupted = self._schedule(steps, self._run_step, results, planning=False)
        for s in steps:  # anything never reached (fail-fast or Ctrl-C)
            if s not in results:
                results[s] = StepResult(s, "cancelled", "not started")
                self.emit(Event("result", s, "cancelled", "not started"))
        summary = Summary([results[s] for s in steps], time.monotonic() - start, interrupted)
        self.emit(Event("finish", detail=f"{summary.count('changed')} changed", elapsed=summary.elapsed))
        return summary

    def _run_step(self, step: Step) -> StepResult:
        t0 = time.monotonic()
        self.emit(Event("start", step))
        try:
            check = step.phase.check(self.ctx, step.target)
            if check.done:
                result = StepResult(step, "unchanged", check.detail)
            else:
                self.emit(Event("note", step, detail=check.detail))
                note = step.phase.apply(self.ctx, step.target)
                after = step.phase.check(self.ctx, step.target)
                if not after.done:
                    raise LabctlError(
                        f"{step.id}: applied, but the check still fails: {after.detail}",
                        hint=f"see the node log under .labctl/logs/ and run `labctl install --from {step.phase.name}`",
                    )
                result = StepResult(step, "changed", note or check.detail)
        except BaseException as exc:  # noqa: BLE001 - every failure becomes a result; KeyboardInterrupt too
            self.ctx.debug(f"step {step.id} failed", exc)
            result = StepResult(step, "failed", _describe(exc), exc)
        result.elapsed = time.monotonic() - t0
        self.record(result)
        return result

    def _schedule(self, steps: list[Step], work, results: dict[Step, StepResult], planning: bool) -> bool:
        """Run `work(step)` for every step once its dependencies are finished. Returns True if interrupted."""
        dependents = _dependents(steps)
        waiting = {s: {d for d in s.deps if d in dependents} for s in steps}
        ready = [s for s in steps if not waiting[s]]
        running: dict[Future, Step] = {}
        stop = False

        def finish(step: Step, result: StepResult) -> None:
            nonlocal stop
            results[step] = result
            self.emit(Event("plan" if planning else "result", step, result.status, result.detail, result.elapsed))
            failed = result.status == "failed"
            if failed and self.fail_fast:
                stop = True
            release(step, failed)
            if failed and not planning:
                for blocked in _blocked_by(step, dependents):
                    if blocked not in results:
                        results[blocked] = StepResult(blocked, "blocked", f"after failed {step.id}")
                        self.emit(Event("result", blocked, "blocked", f"after failed {step.id}"))
                        release(blocked, True)

        def release(step: Step, failed: bool) -> None:
            """`step` is over: its dependents stop waiting for it, unless they needed it to succeed."""
            for dep in dependents[step]:
                if failed and not planning and step not in dep.soft:
                    continue
                waiting[dep].discard(step)
                if not waiting[dep] and dep not in results:
                    ready.append(dep)

        interrupted = False
        pool = ThreadPoolExecutor(max_workers=self.parallel, thread_name_prefix="labctl")
        try:
            while ready or running:
                while ready and not stop and not self.cancel.is_set() and len(running) < self.parallel:
                    step = ready.pop(0)
                    if step in results:
                        continue
                    running[pool.submit(work, step)] = step
                if not running:
                    break
                done, _ = wait(running, timeout=0.5, return_when=FIRST_COMPLETED)
                for fut in done:
                    step = running.pop(fut)
                    finish(step, fut.result())
        except KeyboardInterrupt:
            # Ctrl-C: start nothing new, let running steps finish their current command (consistent state);
            # the next run resumes from the live checks.
            interrupted = True
            self.cancel.set()
            self.emit(Event("note", detail=f"interrupted: waiting for {len(running)} running step(s) to finish"))
            for fut, step in list(running.items()):
                try:
                    finish(step, fut.result())
                except KeyboardInterrupt:
                    break
        finally:
            pool.shutdown(wait=not interrupted, cancel_futures=True)
        return interrupted

