"""`labctl image build`: the golden image of the lab's pinned versions (labctl/golden.py)."""

from __future__ import annotations

import sys

import typer

from . import G, app, emit_json, open_lab, reporter

image_app = typer.Typer(help="Golden images: VM images with the node phases' work done for the pinned versions.",
                        no_args_is_help=True)
app.add_typer(image_app, name="image")


@image_app.command()
def build(
    push: str = typer.Option(None, "--push", metavar="REF", help="Also push the image to this OCI reference "
                             "(tart only), e.g. ghcr.io/me/labctl-k8s:1.35.6."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask; required when not on a terminal."),
) -> None:
    """Build the golden image for clusters.json's versions: one VM from the base image, the node phases (prepare,
    runtime, kubepkgs) and the images those versions need, kept as `labctl-k8s-<hash>`. `install` clones it from
    then on. An existing image for the same versions is left as it is."""
    from .. import golden
    from ..errors import UsageError

    lab = open_lab()
    r = golden.recipe(lab.model)
    ctx = lab.context()
    try:
        have = bool(getattr(ctx.provider, "golden_source", lambda _: None)(r.name))
    finally:
        ctx.close()
    if not have and not yes:
        question = (f"build {r.name} ({r.describe()}): one VM from {lab.model.base_image}, then its disk is kept "
                    "as the image; go on?")
        if not sys.stdin.isatty() or G.json:
            raise UsageError("image build creates a VM and keeps its disk, and needs confirmation",
                             hint="pass --yes to run it unattended")
        if not typer.confirm(question):
            raise typer.Exit(1)
    ui = reporter()
    try:
        result = golden.build(lab, push=push, emit=ui, notify=ui.note, on_start=ui.start)
    finally:
        ui.stop()
    if result.summary is not None:
        ui.summary(result.summary, "image build", logs_hint=str(lab.state.logs))
    if not result.ok:
        raise typer.Exit(130 if result.summary.interrupted else 1)
    doc = {"image": r.name, "source": result.source, "built": result.summary is not None, "versions": r.versions,
           "images": r.images,
           "disk_bytes": result.disk_bytes, "pushed": result.pushed}
    if G.json:
        emit_json(doc)
    elif not G.quiet:
        size = f", {result.disk_bytes / 1e9:.1f} GB on disk" if result.disk_bytes else ""
        state = "built" if result.summary is not None else "already there, unchanged"
        typer.echo(f"{r.name} ({r.describe()}): {state}{size}" + (f"; pushed to {push}" if push else ""))
