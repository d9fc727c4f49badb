"""`labctl terraform render|check`: the lab's Terraform root (labctl/terraform.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from . import G, app, emit_json

tf = typer.Typer(help="Terraform over labctl's steps: render the root from clusters.json, or check it is current.",
                 no_args_is_help=True)
app.add_typer(tf, name="terraform")

OUT_HELP = "The Terraform root folder (default: terraform/ beside clusters.json)."


def _rendered(out: Path | None):
    from .. import model, terraform

    lab = model.load(G.config)
    out_dir = out or terraform.default_dir(G.config)
    return terraform, out_dir, terraform.render(lab, G.config, out_dir)


@tf.command()
def render(out: Path = typer.Option(None, "--out", metavar="DIR", help=OUT_HELP)) -> None:
    """Write versions.tf, variables.tf, main.tf and outputs.tf from the validated clusters.json."""
    from ..errors import FileError

    terraform, out_dir, files = _rendered(out)
    try:
        changed = terraform.write(files, out_dir)
    except OSError as exc:
        raise FileError(exc.filename or out_dir, exc, "write") from None
    if G.json:
        emit_json({"dir": str(out_dir), "changed": [str(p) for p in changed]})
    elif not G.quiet:
        typer.echo(f"{out_dir}: " + (f"wrote {', '.join(p.name for p in changed)}" if changed else "up to date"))


@tf.command()
def check(out: Path = typer.Option(None, "--out", metavar="DIR", help=OUT_HELP)) -> None:
    """Exit 1, showing the diff, when the Terraform root differs from what clusters.json renders now (a CI gate)."""
    terraform, out_dir, files = _rendered(out)
    diff = terraform.diff(files, out_dir)
    if G.json:
        emit_json({"dir": str(out_dir), "current": not diff, "diff": diff})
    elif diff:
        typer.echo(diff, nl=False)
        typer.echo(f"{out_dir} is stale: run `labctl terraform render`", err=True)
    elif not G.quiet:
        typer.echo(f"{out_dir}: current")
    if diff:
        raise typer.Exit(1)
