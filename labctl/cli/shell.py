"""The commands about labctl itself: version and shell completion."""

from __future__ import annotations

import typer

from . import G, app, emit_json

SHELLS = ("bash", "zsh", "fish")


def package_version() -> str:
    """The installed labctl's version (its package metadata, as pip shows it); labctl.__version__ when running from a
    source tree that was never installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("labctl")
    except PackageNotFoundError:
        from .. import __version__

        return __version__


def print_version(value: bool) -> None:
    """The --version flag (eager, so it works without a command): prints `labctl VERSION` and ends."""
    if value:
        typer.echo(f"labctl {package_version()}")
        raise typer.Exit(0)


@app.command()
def version() -> None:
    """Print labctl's version (`--json`: {"version": ...})."""
    if G.json:
        emit_json({"version": package_version()})
    else:
        typer.echo(f"labctl {package_version()}")


@app.command()
def completion(shell: str = typer.Argument(..., metavar="bash|zsh|fish", help="The shell to complete in.")) -> None:
    """Print the shell completion script: e.g. `labctl completion bash > ~/.local/share/bash-completion/completions/labctl`,
    `labctl completion zsh > "${fpath[1]}/_labctl"`, `labctl completion fish > ~/.config/fish/completions/labctl.fish`;
    or `source <(labctl completion bash)` in ~/.bashrc."""
    from typer.completion import completion_init, get_completion_script

    from ..errors import UsageError

    if shell not in SHELLS:
        raise UsageError(f"no completion for shell {shell!r}", hint=f"use one of {', '.join(SHELLS)}")
    completion_init()  # Typer's scripts and their matching completers (labctl turns Typer's own install options off)
    typer.echo(get_completion_script(prog_name="labctl", complete_var=COMPLETE_VAR, shell=shell))


# The variable the scripts set when they ask labctl for completions (click's convention: _<PROG>_COMPLETE).
COMPLETE_VAR = "_LABCTL_COMPLETE"
