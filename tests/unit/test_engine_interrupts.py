"""Ctrl-C in the engine: a plan or a run cut short ends as an interrupt, running steps end as cancelled (not
failed) within the grace period, a second Ctrl-C ends the wait at once, and each step is recorded once."""

from __future__ import annotations

import signal
import threading

import pytest

from labctl import engine as engine_module
from labctl import model
from labctl.context import Context
from labctl.engine import Check, Engine, Phase, Selection, Target, build_steps
from labctl.providers.tart import TartError
from labctl.state import LabState
from tests.conftest import SHIPPED

BLOCK_LIMIT = 30.0  # a blocked step gives up after this (only the old engine ever waits that long)


@pytest.fixture(autouse=True)
def ctrl_c_raises():
    """SIGINT raises KeyboardInterrupt in the main thread, as in a terminal."""
    assert threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def ctrl_c() -> None:
    """The terminal's Ctrl-C, delivered to labctl's main thread from wherever the test is."""
    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)


class Scripted(Phase):
    """A node phase whose apply (or check, with `in_check`) runs `behaviour[node](ctx)` for the named nodes."""

    __test__ = False

    def __init__(self, name: str, behaviour: dict, in_check: bool = False):
        self.name, self.scope, self.after = name, "node", ()
        self.behaviour, self.in_check = behaviour, in_check
        self.done: set[str] = set()

    def check(self, ctx, target: Target) -> Check:
        if self.in_check and target.node in self.behaviour:
            self.behaviour[target.node](ctx)
        return Check(target.node in self.done, "not yet")

    def apply(self, ctx, target: Target):
        if target.node in self.behaviour:
            self.behaviour[target.node](ctx)
        self.done.add(target.node)
        return "done"


class Connection:
    """Stands for a node's SSH connection: a command on it blocks until the connection is aborted."""

    def __init__(self):
        self.aborted = threading.Event()

    def abort(self) -> None:
        self.aborted.set()

    def close(self) -> None:
        self.aborted.set()


@pytest.fixture
def lab():
    return model.load(SHIPPED)


def make(lab, tmp_path, phase: Phase, clusters=("platform",), **kw):
    ctx = Context(lab, LabState(tmp_path / ".labctl"))
    steps = build_steps(lab, [phase], Selection(clusters=list(clusters)))
    return ctx, steps, Engine(ctx, parallel=kw.pop("parallel", 1), **kw)


def test_ctrl_c_during_plan_ends_as_an_interrupt_not_an_internal_error(lab, tmp_path):
    """It ended in `internal error: KeyError: Step(...)`: the plan looked up results of steps it never reached."""
    def interrupt(ctx):
        ctrl_c()
        ctx.cancelled.wait(BLOCK_LIMIT)

    phase = Scripted("look", {"platform-master": interrupt}, in_check=True)
    _, steps, engine = make(lab, tmp_path, phase)
    with pytest.raises(KeyboardInterrupt):
        engine.plan(steps)


def test_ctrl_c_gives_running_steps_a_grace_then_aborts_their_connections_and_calls_them_cancelled(
        lab, tmp_path, monkeypatch):
    monkeypatch.setattr(engine_module, "GRACE_SECONDS", 0.5)
    connection = Connection()
    finishing, waiting = threading.Event(), threading.Event()

    def quick(ctx):  # its current command ends soon after Ctrl-C: it completes
        assert waiting.wait(BLOCK_LIMIT)
        ctrl_c()
        assert ctx.cancelled.wait(BLOCK_LIMIT)
        finishing.set()

    def blocked(ctx):  # waits on its node until the connection is closed under it
        ctx._transports["platform-worker1"] = connection
        waiting.set()
        finishing.wait(BLOCK_LIMIT)
        if not connection.aborted.wait(BLOCK_LIMIT):
            raise RuntimeError("never aborted")
        raise OSError("Socket is closed")

    phase = Scripted("work", {"platform-master": quick, "platform-worker1": blocked})
    recorded = []
    _, steps, engine = make(lab, tmp_path, phase, parallel=2, record=recorded.append)
    summary = engine.run(steps)

    by_id = {r.step.id: r for r in summary.results}
    assert summary.interrupted
    assert by_id["work:platform/platform-master"].status == "changed"
    worker = by_id["work:platform/platform-worker1"]
    assert worker.status == "cancelled" and worker.detail.startswith("interrupted"), worker
    assert by_id["work:platform/platform-worker2"].status == "cancelled"  # never started
    assert not summary.failed
    assert sorted(r.step.id for r in recorded) == sorted({r.step.id for r in recorded})  # each recorded once


def test_a_second_ctrl_c_ends_the_wait_at_once_and_the_straggler_is_recorded_cancelled_once(
        lab, tmp_path, monkeypatch):
    monkeypatch.setattr(engine_module, "GRACE_SECONDS", 3600.0)  # only the second Ctrl-C can end this wait
    release = threading.Event()

    def stuck(ctx):  # a local process that ignores everything (the abort does not reach it)
        ctrl_c()
        release.wait(BLOCK_LIMIT)

    def on_event(event):
        if event.kind == "note" and "interrupted" in event.detail:
            ctrl_c()  # the user presses Ctrl-C again while labctl waits

    phase = Scripted("work", {"platform-master": stuck})
    recorded = []
    _, steps, engine = make(lab, tmp_path, phase, emit=on_event, record=recorded.append)
    try:
        summary = engine.run(steps)
        assert not release.is_set()
    finally:
        release.set()
    master = next(r for r in summary.results if r.step.id == "work:platform/platform-master")
    assert summary.interrupted and master.status == "cancelled" and master.detail == "interrupted while running"
    for thread in threading.enumerate():
        if thread.name.startswith("labctl"):
            thread.join(BLOCK_LIMIT)  # the straggler finishes now; what it reports is not recorded over
    assert [(r.step.id, r.status) for r in recorded if r.step.id == master.step.id] == [
        (master.step.id, "cancelled")]


def test_a_step_whose_tool_died_of_the_terminals_sigint_is_cancelled_not_failed(lab, tmp_path):
    """Ctrl-C in a terminal reaches the whole process group: tart may die of it before labctl's main thread has
    handled its own KeyboardInterrupt."""
    def tart_killed(ctx):
        raise TartError("platform-master", ["tart", "run", "platform-master"], -2, "")

    phase = Scripted("vms", {"platform-master": tart_killed})
    _, steps, engine = make(lab, tmp_path, phase)
    result = engine._run_step(steps[0])
    assert result.status == "cancelled", result


def test_a_nodes_command_exiting_130_is_still_a_failure(lab, tmp_path):
    from labctl.errors import CommandError

    def failed(ctx):
        raise CommandError("platform-master", "prepare.apply", 130, "boom")

    phase = Scripted("prepare", {"platform-master": failed})
    _, steps, engine = make(lab, tmp_path, phase)
    assert engine._run_step(steps[0]).status == "failed"
