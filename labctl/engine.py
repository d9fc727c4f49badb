"""Phases, steps, dependency order, parallel execution, events.

A Phase (one file in phases/) knows how to look at the world (`check`, read-only) and how to change it
(`apply`, safe to repeat). A Step is one phase on one target (a node, a cluster or the whole lab). The engine
builds the step graph from the ordered phase list, plans (checks only) or runs the unsatisfied steps on a bounded
thread pool, and reports everything as events.

Dependencies: a step waits for the steps of the phases named in `after` that it touches:
- node phase after node phase: the same node only, so every node moves through the pipeline at its own pace;
- a cluster phase after a node phase: the nodes it names in `needs_nodes` (init: the first control plane), else
  the whole cluster;
- anything after a cluster phase: the whole cluster;
- a lab phase, or anything after one: everything.
Inside one phase a cluster's nodes run in waves (`Phase.waves`): e.g. control planes one at a time, then workers
together. A failed step blocks only the steps that depend on it, so one cluster's failure leaves the others going.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING

from .errors import LabctlError, UsageError
# the data and the Phase contract live in steps.py; phases and callers import them from here too
from .steps import (  # noqa: F401
    CannotCheck,
    Check,
    Event,
    Phase,
    Scope,
    Selection,
    Status,
    Step,
    StepResult,
    Summary,
    Target,
)

if TYPE_CHECKING:
    from .model import Lab

# After Ctrl-C, running steps get this long (seconds) to finish the command they are in before their connections
# are closed under them; a second Ctrl-C skips the rest of it.
GRACE_SECONDS = 5.0


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
                wanted = step.phase.needs_nodes(lab, lab.cluster(step.target.cluster))
                if dep_phase.scope == "node" and wanted is not None:  # a cluster step after a node phase
                    found = [s for s in found if s.target.node in wanted]
            if found:
                return found
            # what stands in: without the ones already before another (cni on a one-node cluster waits on init,
            # which comes after that node's kubepkgs), so `plan` names the real wait
            stand_in = {s for d in dep_phase.after for s in needs(step, d)}
            before = {a for s in stand_in for a in _ancestors(s)}
            return [s for s in stand_in if s not in before]

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
    return _narrow(lab, ordered, sel, [c.name for c in clusters])


def _narrow(lab: Lab, steps: list[Step], sel: Selection, clusters: list[str]) -> list[Step]:
    """Only the steps of --node and --stack (each an unknown name is a UsageError); their dependencies outside the
    selection are dropped like a phase --only leaves out: the caller vouches for them."""
    nodes = {n.name for c, n in lab.nodes if c.name in clusters}
    for name in sel.nodes:
        if name not in nodes:
            raise UsageError(f"unknown node {name!r}", hint=f"nodes of the chosen clusters: {', '.join(sorted(nodes))}")
    if sel.items:
        items = {s.target.item for s in steps if s.target.item}
        for name in sel.items:
            if name not in items:
                raise UsageError(f"no step for stack {name!r} in the chosen clusters and phases",
                                 hint=f"stacks there: {', '.join(sorted(items)) or 'none'}")
    kept = [s for s in steps if (not sel.nodes or s.target.node is None or s.target.node in sel.nodes)
            and (not sel.items or s.target.item is None or s.target.item in sel.items)]
    if len(kept) < len(steps):
        chosen = set(kept)
        for step in kept:
            step.deps &= chosen
            step.soft &= chosen
    return kept


def _ancestors(step: Step) -> set[Step]:
    """Every step `step` waits for, directly or through others."""
    seen: set[Step] = set()
    todo = list(step.deps)
    while todo:
        s = todo.pop()
        if s not in seen:
            seen.add(s)
            todo.extend(s.deps)
    return seen


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


def _by_sigint(exc: BaseException) -> bool:
    """Did a local child process (tart, qemu-img) die of SIGINT? A Ctrl-C in the terminal reaches the whole process
    group, and the child may die before labctl's main thread has handled the same Ctrl-C."""
    from .errors import CommandError

    if isinstance(exc, CommandError) and getattr(exc, "node", None):
        return False  # a node's command: the terminal's SIGINT never reaches it
    return getattr(exc, "returncode", None) in (-2, 130)  # killed by SIGINT, or exited 128+SIGINT


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
        # the context's event when it has one: its transports then start nothing new once it is set
        self.cancel: threading.Event = getattr(ctx, "cancelled", None) or threading.Event()
        self._recorded: set[Step] = set()
        self._record_lock = threading.Lock()

    # plan: checks only, dependencies first; a step whose dependencies are not done is `pending`
    def plan(self, steps: list[Step]) -> Summary:
        start = time.monotonic()
        results: dict[Step, StepResult] = {}

        def look(step: Step) -> StepResult:
            try:
                reason = step.phase.blocked(self.ctx, step.target)
            except Exception as exc:  # noqa: BLE001 - a plan never fails; the check below reports what it sees
                self.ctx.debug(f"blocked {step.id} failed", exc)
                reason = None
            if reason:
                return StepResult(step, "blocked", reason)
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
        if self._schedule(steps, look, results, planning=True):
            raise KeyboardInterrupt  # a plan cut short has nothing to show; the CLI says "interrupted"
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
            # After Ctrl-C a step fails because it was stopped (its connection closed, its tart child got the
            # terminal's SIGINT too): that is a cancellation, and the next run resumes it.
            status: Status = "cancelled" if self.cancel.is_set() or _by_sigint(exc) else "failed"
            result = StepResult(step, status, ("interrupted: " if status == "cancelled" else "") + _describe(exc), exc)
        result.elapsed = time.monotonic() - t0
        self._record(result)
        return result

    def _record(self, result: StepResult) -> None:
        """Record a step's result once: a step still running when the run was interrupted is recorded as
        cancelled by the scheduler, and whatever it reports later is not recorded over that."""
        with self._record_lock:
            if result.step in self._recorded:
                return
            self._recorded.add(result.step)
        self.record(result)

    def _schedule(self, steps: list[Step], work, results: dict[Step, StepResult], planning: bool) -> bool:
        """Run `work(step)` for every step once its dependencies are finished. Returns True if interrupted."""
        dependents = _dependents(steps)
        waiting = {s: {d for d in s.deps if d in dependents} for s in steps}
        ready = [s for s in steps if not waiting[s]]
        running: dict[Future, Step] = {}
        stop = False

        def go(fut: Future, step: Step) -> None:
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(work(step))
                except BaseException as exc:  # noqa: BLE001 - handed to the scheduler like Executor.submit does
                    fut.set_exception(exc)

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
                    # The future is known before the step can start: a Ctrl-C between the two never loses a step.
                    fut: Future = Future()
                    running[fut] = step
                    pool.submit(go, fut, step)
                if not running:
                    break
                done, _ = wait(running, timeout=0.5, return_when=FIRST_COMPLETED)
                for fut in done:
                    step = running.pop(fut)
                    finish(step, fut.result())
        except KeyboardInterrupt:
            # Ctrl-C: start nothing new (no step, no connection, no command); running steps get GRACE_SECONDS to
            # finish the command they are in, then their connections are closed under them. A second Ctrl-C skips
            # the wait. Every step is idempotent and checked first, so the next run resumes from the live world.
            interrupted = True
            self.cancel.set()
            abort = getattr(self.ctx, "abort", None) or (lambda: None)
            try:
                if running:
                    self.emit(Event("note", detail=f"interrupted: stopping {len(running)} running step(s) "
                                                   "(Ctrl-C again to stop at once)"))
                    self._drain(running, finish, GRACE_SECONDS)
                if running:
                    abort()  # closes their connections: whatever they were waiting on ends now
                    self._drain(running, finish, 1.0)
            except KeyboardInterrupt:  # a second Ctrl-C: stop waiting
                abort()
            for step in list(running.values()):  # still going (a local process, a kube request)
                result = StepResult(step, "cancelled" if not planning else "unknown", "interrupted while running")
                if not planning:
                    self._record(result)
                finish(step, result)
            running.clear()
        finally:
            pool.shutdown(wait=not interrupted, cancel_futures=True)
        return interrupted

    @staticmethod
    def _drain(running: dict[Future, Step], finish, seconds: float) -> None:
        """Collect the results of running steps for up to `seconds`."""
        deadline = time.monotonic() + seconds
        while running and (left := deadline - time.monotonic()) > 0:
            done, _ = wait(running, timeout=left, return_when=FIRST_COMPLETED)
            for fut in done:
                finish(running.pop(fut), fut.result())

