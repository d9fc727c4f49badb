"""The command line: Typer commands only. Each command is options, a docstring, one call into the library, rendering.

Errors are printed once, here at the edge: a LabctlError as its message and hint (exit 2 for bad input, 1 for
failures), anything else as a one-line internal error pointing at the debug log, which always has the traceback.
Only typer and the standard library are imported at start-up (`labctl --help` stays fast); each command imports
what it needs.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

try:
    import typer  # the slow part of starting up: a Ctrl-C lands here more often than anywhere else before main()
except KeyboardInterrupt:
    sys.stderr.write("interrupted\n")
    raise SystemExit(130) from None

app = typer.Typer(
    name="labctl",
    help="One clusters.json to a running multi-cluster Kubernetes lab on Tart VMs (kubeadm, Cilium, stacks).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # plain help: rich-formatted help imports rich.markdown and friends (~70 ms), a third of the start-up budget
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@dataclass
class Globals:
    config: Path = Path("clusters.json")
    json: bool = False
    verbose: int = 0
    quiet: bool = False
    output: str = ""  # -o: "json", "yaml" (both set json too: the command's one document) or "wide" (more columns)


G = Globals()

OUTPUTS = ("json", "yaml", "wide")


def _set_output(value: str | None) -> str | None:
    if value is None:
        return value
    if value not in OUTPUTS:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(OUTPUTS)}")
    G.output = value
    G.json = G.json or value in ("json", "yaml")
    return value


def output_option():
    """`-o json|yaml|wide` (kubectl's): for the commands that print one document and a table to widen."""
    return typer.Option(None, "--output", "-o", metavar="json|yaml|wide", callback=_set_output,
                        help="json: the same as --json; yaml: that document as YAML; wide: more columns.")


def debug_log_path() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(os.environ.get("LABCTL_DEBUG_LOG") or Path(base) / "labctl" / "debug.log")


def _setup_logging(verbose: int) -> None:
    logger = logging.getLogger("labctl")
    logger.setLevel(logging.DEBUG)
    for handler in list(logger.handlers):  # one command per process normally; tests run many in one
        logger.removeHandler(handler)
        handler.close()
    from ..redact import Formatter

    try:
        path = debug_log_path()
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        file_handler = _private_log(path)
        file_handler.setFormatter(Formatter("%(asctime)s %(threadName)s %(levelname)s %(message)s"))
        logger.addHandler(file_handler)
    except OSError:
        pass  # a read-only home must not stop labctl
    if verbose >= 2:
        stderr = logging.StreamHandler(sys.stderr)
        stderr.setLevel(logging.DEBUG)
        stderr.setFormatter(Formatter())
        logger.addHandler(stderr)


def _private_log(path: Path) -> logging.Handler:
    """The debug log at `path`, rotated at 5 MB (two old files kept), 0600 across rotations too: it may hold the
    output of node commands."""
    from logging.handlers import RotatingFileHandler  # here, not at start-up: `labctl --help` logs nothing

    from ..state import private_opener

    class PrivateLog(RotatingFileHandler):
        def _open(self):
            return open(self.baseFilename, self.mode, encoding=self.encoding, errors=self.errors, opener=private_opener)

    return PrivateLog(path, maxBytes=5_000_000, backupCount=2)


@app.callback()
def _global(
    config: Path = typer.Option(
        Path("clusters.json"), "--config", "-c", envvar="LABCTL_CONFIG", help="The lab file.", show_default=True
    ),
    json_output: bool = typer.Option(False, "--json", help="Machine-readable output (NDJSON events or one document)."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More output; -vv adds debug logs."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors and the final result."),
    version: bool = typer.Option(False, "--version", is_eager=True, help="Print labctl's version and exit.",
                                 callback=lambda value: _print_version(value)),
) -> None:
    G.config, G.json, G.verbose, G.quiet = config, json_output, verbose, quiet
    _setup_logging(verbose)


def _command():
    """`app` as a click command, the global options (--config, --json, -v, -q) added to every command too: kubectl
    users write them after the command (`labctl status --json`), and each command's help lists them."""
    from typer.main import get_command

    command = get_command(app)
    _add_global_options(command)
    return command


def _add_global_options(group, options=None) -> None:
    """Copies of the group's own options (the `_global` callback's), on every command below `group`: not passed to
    the command function, they set G when given, after the same option before the command (the last word wins)."""
    import copy

    def given(apply):
        def callback(ctx, param, value):
            if value:  # not given: what was said before the command (or its default) stands
                apply(value)
        return callback

    def more_verbose(count: int) -> None:
        G.verbose += count
        _setup_logging(G.verbose)

    apply = {"config": lambda v: setattr(G, "config", Path(v)), "json_output": lambda v: setattr(G, "json", True),
             "verbose": more_verbose, "quiet": lambda v: setattr(G, "quiet", True), "version": _print_version}
    if options is None:
        options = []
        for param in group.params:
            option = copy.copy(param)
            option.expose_value, option.envvar, option.default, option.show_default = False, None, None, False
            option.callback = given(apply[param.name])
            options.append(option)
    for sub in group.commands.values():
        if hasattr(sub, "commands"):
            _add_global_options(sub, options)
        else:
            sub.params += options
            sub.callback = _pipe_safe(sub.callback)


class _PipeClosed(Exception):
    """stdout's reader went away during a command: carried past typer (which exits 1 on a BrokenPipeError) to
    _run, which ends quietly with 0."""


def _pipe_safe(callback):
    import functools

    @functools.wraps(callback)
    def run(*args, **kwargs):
        try:
            return callback(*args, **kwargs)
        except BrokenPipeError as exc:
            raise _PipeClosed() from exc

    return run


def _print_version(value: bool) -> None:
    from .shell import print_version

    print_version(value)


def reporter():
    from ..ui import Reporter, pick_mode

    return Reporter(pick_mode(G.json, G.quiet), verbose=G.verbose)


def run_flow(flow, lab, opts, verb: str, warnings: list[str] = ()) -> None:
    """Run one command's flow with live progress, print the summary, exit non-zero unless all went well.

    warnings: validation.warnings() of the lab, printed once before the flow (a note event each in --json)."""
    ui = reporter()
    for warning in warnings:
        ui.note(f"warning: {warning}")
    try:
        summary = flow(lab, opts, emit=ui, notify=ui.note, on_start=ui.start)
    finally:
        ui.stop()
    after = None
    if summary.ok and verb in ("install", "boot") and ui.mode != "quiet":  # what to do now, as kind tells
        from ..status import next_steps

        after = next_steps(lab, opts.selection.clusters, urls=ui.mode != "json")  # --json: no probe, data only
    ui.summary(summary, verb, logs_hint=str(lab.state.logs), next_steps=after)
    if lab.state.write_failures:  # the steps ran and are shown above; what labctl could not keep comes last
        raise next(iter(lab.state.write_failures.values()))
    if not summary.ok:
        raise typer.Exit(130 if summary.interrupted else 1)


def emit_json(data) -> None:
    """A command's one document on stdout: JSON, or YAML with `-o yaml` (the same document)."""
    if G.output == "yaml":
        import yaml

        sys.stdout.write(yaml.safe_dump(json.loads(json.dumps(data)), sort_keys=False, allow_unicode=True))
        return
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def open_lab():
    from ..lab import LabSession

    return LabSession.open(G.config)


def _print_error(exc: BaseException) -> None:
    from ..errors import LabctlError
    from ..redact import redact

    if isinstance(exc, LabctlError):
        text, hint, code = exc.message, exc.hint, exc.exit_code
    else:
        text = f"internal error: {type(exc).__name__}: {exc}"
        hint, code = f"the traceback is in {debug_log_path()} (or run with -v)", 1
    text, hint = redact(text), hint and redact(hint)
    if G.json:
        doc = {"event": "error", "error": text, "hint": hint, "exit_code": code}
        problems = getattr(exc, "problems", None)  # a ConfigError: each problem on its own, for editors and scripts
        if problems is not None:
            doc["problems"] = [{"path": p.path, "message": redact(p.message)} for p in problems]
        sys.stdout.write(json.dumps(doc) + "\n")
    sys.stderr.write(f"error: {text}\n")
    if hint:
        sys.stderr.write(f"  hint: {hint}\n")
    if G.verbose and not isinstance(exc, LabctlError):
        import traceback

        traceback.print_exception(exc, file=sys.stderr)


def main(hard_exit: bool = True) -> None:
    """The `labctl` entry point. Exit codes: 0 ok, 1 failed, 2 bad input, 130 interrupted (Ctrl-C).

    After Ctrl-C the engine gives running steps a few seconds, then leaves any that are still blocked (a local
    process, a request) behind; with `hard_exit` the process then ends at once instead of waiting for those threads
    at interpreter exit (in-process test runners pass False). State stays consistent either way: every state file
    is replaced atomically and the lock is released by the kernel when the process ends."""
    try:
        code = _run()
    except KeyboardInterrupt:  # a Ctrl-C while an error or the summary was being printed
        code = 130
    try:
        sys.stdout.flush()  # the last buffered output, here where a closed pipe is understood
    except BrokenPipeError:
        _closed_pipe()
    if code == 130:
        try:
            sys.stderr.write("interrupted\n")
        except KeyboardInterrupt:
            pass
        if hard_exit:
            _exit_now(130)
    sys.exit(code or 0)


def _exit_now(code: int) -> None:
    """End the process now: flush what was printed and logged, skip the join of left-behind worker threads."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # nothing left to interrupt
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed pipe must not turn the exit into a traceback
            pass
    logging.shutdown()
    os._exit(code)


def _closed_pipe() -> int:
    """stdout's reader is gone (`labctl plan | head -1`): it wanted no more, which is not an error, so exit 0 with
    no message, as cat and kubectl do. stdout is pointed at /dev/null first, so the interpreter's own flush at exit
    does not fail on the same pipe again (https://docs.python.org/3/library/signal.html#note-on-sigpipe)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is no file (an in-process test's buffer): nothing to flush at exit
        pass
    return 0


def _run() -> int:
    try:  # Typer ≥ 0.25 vendors click; older releases depend on it
        from typer._click.exceptions import ClickException, UsageError
    except ImportError:  # pragma: no cover
        from click import ClickException, UsageError

    from ..errors import LabctlError

    if os.environ.get("_LABCTL_COMPLETE"):  # a completion script asking: Typer's completers answer it
        from typer.completion import completion_init

        completion_init()
    try:
        code = _command()(standalone_mode=False)
    except ClickException as exc:
        exc.show()
        code = 2 if isinstance(exc, UsageError) else exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        code = 130
    except typer.Exit as exc:
        code = exc.exit_code
    except LabctlError as exc:
        logging.getLogger("labctl").debug("command failed", exc_info=exc)
        _print_error(exc)
        code = exc.exit_code
    except (BrokenPipeError, _PipeClosed):
        code = _closed_pipe()
    except OSError as exc:  # a file labctl could not read or write that no layer below named: still a plain error
        logging.getLogger("labctl").debug("command failed", exc_info=exc)
        if exc.filename is None:
            logging.getLogger("labctl").error("internal error", exc_info=exc)
            _print_error(exc)
            code = 1
        else:
            from ..errors import FileError

            error = FileError(exc.filename, exc, "use")
            _print_error(error)
            code = error.exit_code
    except Exception as exc:  # noqa: BLE001 - the one place that turns surprises into a clean message
        logging.getLogger("labctl").error("internal error", exc_info=exc)
        _print_error(exc)
        code = 1
    return code or 0


from . import snapshot_cli  # noqa: E402,F401  (labctl snapshot …)
from . import images_cli  # noqa: E402,F401  (labctl image build)
from . import backup, commands, dashboard, doctor, lifecycle, nodes, seal, shell, status, terraform  # noqa: E402,F401  (registers the commands on `app`)
