"""etcd snapshots on demand: backup and restore (labctl/backup.py; the daily ones come with the backup stack)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from . import G, app, emit_json, open_lab
from .commands import names


def _notify(text: str) -> None:
    if not G.json and not G.quiet:
        typer.echo(text, err=True)


@app.command("backup")
def backup_cmd(
    cluster: list[str] = typer.Option(None, "--cluster", metavar="CLUSTER",
                                      help="Only these clusters (repeatable or comma-separated); default: every "
                                      "installed one."),
) -> None:
    """Take an etcd snapshot of each cluster now (on its first control plane, checked there) and copy it to
    .labctl/backups/<cluster>/ (0600: it holds every Secret of the cluster)."""
    from ..backup import backup

    taken = backup(open_lab(), names(cluster), notify=_notify)
    if G.json:
        emit_json({"snapshots": [s.as_dict() for s in taken]})
        return
    for s in taken:
        typer.echo(f"{s.cluster}: {s.local} ({s.size} bytes; also on {s.node} at {s.remote})")


@app.command("restore")
def restore_cmd(
    snapshot: Path = typer.Argument(..., metavar="SNAPSHOT", help="A snapshot file `labctl backup` wrote."),
    cluster: str = typer.Option(..., "--cluster", metavar="CLUSTER", help="The cluster to restore."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask; required when not on a terminal."),
) -> None:
    """Put a cluster's control plane back to an etcd snapshot: every object created since is gone, every object
    deleted since is back. The API server is down meanwhile; the old etcd data is kept until it answers again."""
    from ..backup import check_restorable, restore
    from ..errors import UsageError

    lab = open_lab()
    check_restorable(lab, cluster, snapshot)
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError("restore replaces the cluster's state and needs confirmation",
                             hint="pass --yes to run it unattended")
        typer.echo(f"This puts {cluster} back to {snapshot}: objects created since are lost.")
        if not typer.confirm("Restore?", default=False):
            raise typer.Exit(1)
    done = restore(lab, cluster, snapshot, notify=_notify)
    if G.json:
        emit_json({"restored": done.as_dict()})
        return
    typer.echo(f"{done.cluster}: {done.node} restored from {done.snapshot}; the API server answers on the restored "
               f"data and the previous data directory ({done.previous_removed}) was removed")
