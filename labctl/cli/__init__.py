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

import typer

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


G = Globals()


def debug_log_path() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(os.environ.get("LABCTL_DEBUG_LOG") or Path(base) / "labctl" / "debug.log")


def _setup_logging(verbose: int) -> None:
    logger = logging.getLogger("labctl")
    logger.setLevel(logging.DEBUG)
    for handler in list(logger.handlers):  # one command per process normally; tests run many in one
        logger.removeHandler(handler)
        handler.close()
    try:
        from logging.handlers import RotatingFileHandler

        path = debug_log_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        file_handler = RotatingFileHandler(path, maxBytes=5_000_000, backupCount=2)
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(threadName)s %(levelname)s %(message)s"))
        logger.addHandler(file_handler)
    except OSError:
        pass  # a read-only home must not stop labctl
    if verbose >= 2:
        stderr = logging.StreamHandler(sys.stderr)
        stderr.setLevel(logging.DEBUG)
        logger.addHandler(stderr)


@app.callback()
def _global(
    config: Path = typer.Option(
        Path("clusters.json"), "--config", "-c", envvar="LABCTL_CONFIG", help="The lab file.", show_default=True
    ),
    json_output: bool = typer.Option(False, "--json", help="Machine-readable output (NDJSON events or one document)."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More output; -vv adds debug logs."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors and the final result."),
) -> None:
    G.config, G.json, G.verbose, G.quiet = config, json_output, verbose, quiet
    _setup_logging(verbose)


def reporter():
    from ..ui import Reporter, pick_mode

    return Reporter(pick_mode(G.json, G.quiet), verbose=G.verbose)


def run_flow(flow, lab, opts, verb: str) -> None:
    """Run one command's flow with live progress, print the summary, exit non-zero unless all went well."""
    ui = reporter()
    try:
        summary = flow(lab, opts, emit=ui, notify=ui.note, on_start=ui.start)
    finally:
        ui.stop()
    ui.summary(summary, verb, logs_hint=str(lab.state.logs))
    if not summary.ok:
        raise typer.Exit(130 if summary.interrupted else 1)


def emit_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def open_lab():
    from ..lab import LabSession

    return LabSession.open(G.config)


def _print_error(exc: BaseException) -> None:
    from ..errors import LabctlError

    if isinstance(exc, LabctlError):
        text, hint, code = exc.message, exc.hint, exc.exit_code
    else:
        text = f"internal error: {type(exc).__name__}: {exc}"
        hint, code = f"the traceback is in {debug_log_path()} (or run with -v)", 1
    if G.json:
        sys.stdout.write(json.dumps({"event": "error", "error": text, "hint": hint, "exit_code": code}) + "\n")
    sys.stderr.write(f"error: {text}\n")
    if hint:
        sys.stderr.write(f"  hint: {hint}\n")
    if G.verbose and not isinstance(exc, LabctlError):
        import traceback

        traceback.print_exception(exc, file=sys.stderr)


def main() -> None:
    try:  # Typer ≥ 0.25 vendors click; older releases depend on it
        from typer._click.exceptions import ClickException, UsageError
    except ImportError:  # pragma: no cover
        from click import ClickException, UsageError

    from ..errors import LabctlError

    try:
        code = app(standalone_mode=False)
    except ClickException as exc:
        exc.show()
        code = 2 if isinstance(exc, UsageError) else exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        sys.stderr.write("interrupted\n")
        code = 130
    except typer.Exit as exc:
        code = exc.exit_code
    except LabctlError as exc:
        logging.getLogger("labctl").debug("command failed", exc_info=exc)
        _print_error(exc)
        code = exc.exit_code
    except Exception as exc:  # noqa: BLE001 - the one place that turns surprises into a clean message
        logging.getLogger("labctl").error("internal error", exc_info=exc)
        _print_error(exc)
        code = 1
    sys.exit(code or 0)


from . import commands, doctor, lifecycle, status  # noqa: E402,F401  (registers the commands on `app`)
