"""Ctrl-C at the CLI edge, in a real `labctl` process: "interrupted", exit 130, no traceback, and a worker thread
left blocked (a tart call, a request) does not hold the exit."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import ROOT, SHIPPED

NEVER = 120.0  # only a process that waits for its blocked thread gets near this


def run_child(body: str, tmp_path) -> subprocess.CompletedProcess:
    child = textwrap.dedent(f"""
        import sys, threading
        sys.argv = ["labctl", "-c", {str(SHIPPED)!r}, "plan"]
        {textwrap.indent(textwrap.dedent(body), "        ").strip()}
        from labctl.cli import main
        main()
    """)
    return subprocess.run([sys.executable, "-c", child], cwd=tmp_path, capture_output=True, text=True,
                          timeout=NEVER, env={"PYTHONPATH": str(ROOT), "LABCTL_DEBUG_LOG": str(tmp_path / "d.log"),
                                              "PATH": "/usr/bin:/bin"})


def test_an_interrupted_command_exits_130_at_once_even_with_a_worker_still_blocked(tmp_path):
    result = run_child("""
        from labctl import lab
        def plan(*args, **kwargs):
            # a step's thread still blocked on something the abort cannot reach, then the Ctrl-C
            threading.Thread(target=threading.Event().wait, name="labctl_0").start()
            raise KeyboardInterrupt
        lab.plan = plan
    """, tmp_path)
    assert result.returncode == 130, result
    assert "interrupted" in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_ctrl_c_during_plan_is_interrupted_not_an_internal_error(tmp_path):
    """The plan's checks are cut short by Ctrl-C; it used to end in `internal error: KeyError: Step(...)`."""
    result = run_child("""
        import signal, _thread
        from labctl import lab, engine
        def plan(session, opts, emit=None):
            steps = engine.build_steps(session.model, lab.phases_for("install"), opts.selection)
            ctx = session.context()
            class Interrupting:
                def __getattr__(self, name):
                    _thread.interrupt_main()
                    threading.Event().wait(30)
                    raise RuntimeError("cannot look")
            ctx._provider = Interrupting()
            return engine.Engine(ctx, parallel=2).plan(steps)
        lab.plan = plan
    """, tmp_path)
    assert result.returncode == 130, result
    assert "interrupted" in result.stderr and "internal error" not in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
