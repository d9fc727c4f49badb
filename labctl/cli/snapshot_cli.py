"""`labctl snapshot save/list/restore/delete`: whole-lab snapshots (labctl/snapshots.py)."""

from __future__ import annotations

import json
import sys

import typer

from . import G, app, emit_json, open_lab, output_option, reporter
from .commands import names

snapshot_app = typer.Typer(help="Whole-lab snapshots: save the lab's stopped VMs and records, restore them later.",
                           no_args_is_help=True)
app.add_typer(snapshot_app, name="snapshot")

NAME_HELP = "The snapshot's name: a DNS label (lowercase letters, digits, '-')."


def _confirm(yes: bool, what: str) -> None:
    from ..errors import UsageError

    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"{what}, and needs confirmation", hint="pass --yes to run it unattended")
    if not typer.confirm(f"{what}. Go on?", default=False):
        raise typer.Exit(1)


def _run(flow, *args):
    """Run a save/restore with live progress; its StepError is printed as any command's error."""
    ui = reporter()
    try:
        return flow(*args, notify=ui.note, emit=ui)
    finally:
        ui.stop()


def _event(data: dict) -> None:
    """Save/restore under --json: one more NDJSON line after the progress events (not a multi-line document)."""
    sys.stdout.write(json.dumps(data) + "\n")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


@snapshot_app.command("save")
def save_cmd(
    name: str = typer.Argument(..., help=NAME_HELP),
    cluster: list[str] = typer.Option(None, "--cluster", metavar="CLUSTER",
                                      help="Only these clusters (repeatable or comma-separated); default: all."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask; required when not on a terminal."),
    output: str = output_option(),
) -> None:
    """Stop the lab's VMs cleanly (control planes last), copy each one, record the lab beside the copies, and start
    the lab again."""
    from ..snapshots import check_name, save

    check_name(name)
    lab = open_lab()
    _confirm(yes, "saving a snapshot stops the lab's VMs for a while (they are started again)")
    outcome = _run(save, lab, name, names(cluster))
    m = outcome.manifest
    if G.json:
        _event({"event": "snapshot", "action": "saved", "snapshot": m})
    else:
        typer.echo(f"snapshot {m['name']}: saved {len(m['nodes'])} VMs of {', '.join(m['clusters'])}; "
                   f"`labctl snapshot restore {m['name']}` brings this lab back")


@snapshot_app.command("list")
def list_cmd(output: str = output_option()) -> None:
    """The snapshots: name, time, clusters, size on disk."""
    from ..snapshots import listing

    rows = listing(open_lab())
    if G.json:
        emit_json({"snapshots": rows})
        return
    if not rows:
        typer.echo("no snapshots (`labctl snapshot save NAME` takes one)")
        return
    typer.echo(f"{'NAME':<24} {'CREATED':<25} {'SIZE':>9}  CLUSTERS")
    for r in rows:
        flag = "" if r["complete"] else "  (unfinished)"
        typer.echo(f"{r['name']:<24} {r['created']:<25} {_size(r['size_bytes']):>9}  {','.join(r['clusters'])}{flag}")


@snapshot_app.command("restore")
def restore_cmd(
    name: str = typer.Argument(..., help=NAME_HELP),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask; required when not on a terminal."),
    output: str = output_option(),
) -> None:
    """Replace the snapshot's clusters' VMs by copies of the snapshot's (it stays reusable), restore labctl's
    records, boot (address repair included) and wait until every node is Ready."""
    from ..snapshots import check_name, read, restore

    check_name(name)
    lab = open_lab()
    saved = read(lab.state, name)
    _confirm(yes, f"restoring {name} replaces the VMs of {', '.join(saved['clusters'])}: what changed in them since "
             "is lost")
    outcome = _run(restore, lab, name)
    if G.json:
        _event({"event": "snapshot", "action": "restored", "snapshot": outcome.manifest, "notes": outcome.notes})
        return
    for note in outcome.notes:
        typer.echo(f"note: {note}", err=True)
    typer.echo(f"snapshot {name}: restored {', '.join(outcome.manifest['clusters'])}; every node is Ready")


@snapshot_app.command("delete")
def delete_cmd(name: str = typer.Argument(..., help=NAME_HELP), output: str = output_option()) -> None:
    """Delete a snapshot: its VMs and its records."""
    from ..snapshots import check_name, delete

    check_name(name)
    deleted = delete(open_lab(), name)
    if G.json:
        emit_json({"deleted": name, "vms": deleted})
    else:
        typer.echo(f"snapshot {name}: deleted ({len(deleted)} VMs)")


def delete_all(lab) -> list[str]:
    """`destroy --snapshots`: delete every snapshot first. Returns their names."""
    from ..snapshots import delete, manifests

    gone = [m["name"] for m in manifests(lab.state)]
    for name in gone:
        delete(lab, name)
    return gone
