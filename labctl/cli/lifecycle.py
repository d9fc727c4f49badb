"""Day-to-day commands: boot, shutdown, destroy, forget-host."""

from __future__ import annotations

import sys

import typer

from . import G, app, emit_json, open_lab, run_flow
from .commands import WAIT_HELP, names

CLUSTER_HELP = "Only these clusters (repeatable or comma-separated)."


def _opts(cluster, parallel=0, node=None):
    from ..engine import Selection
    from ..lab import RunOptions

    return RunOptions(Selection(clusters=names(cluster), nodes=names(node)), parallel)


@app.command()
def boot(cluster: list[str] = typer.Option(None, "--cluster", metavar="CLUSTER", help=CLUSTER_HELP)) -> None:
    """Start the lab's stopped VMs (control planes first) and wait until they have addresses."""
    from ..lab import boot as flow

    run_flow(flow, open_lab(), _opts(cluster), "boot")


@app.command()
def shutdown(
    cluster: list[str] = typer.Option(None, "--cluster", metavar="CLUSTER", help=CLUSTER_HELP),
    timeout: float | None = typer.Option(None, "--timeout", min=0,
                                  help="Seconds a guest gets to power off by itself (in-guest, then ACPI) before "
                                       "the next, harder way; default 120."),
    drain: bool = typer.Option(False, "--drain", help="Cordon and drain each worker first; `boot` uncordons it."),
    power_off: bool = typer.Option(False, "--power-off", help="Static machines too: power them off from inside "
                                   "(by default they are only cordoned and drained)."),
) -> None:
    """Power the lab's VMs off cleanly: in-guest power-off, workers first; a hard stop only as the last resort."""
    from functools import partial

    from ..lab import shutdown as flow

    run_flow(partial(flow, grace_seconds=timeout, drain=drain, power_off=power_off), open_lab(), _opts(cluster),
             "shutdown")


@app.command()
def destroy(
    cluster: list[str] = typer.Option(None, "--cluster", metavar="CLUSTER", help=CLUSTER_HELP),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask; required when not on a terminal."),
    node: list[str] = typer.Option(None, "--node", metavar="NODE", help="Only these nodes' VMs (repeatable or "
                                   "comma-separated); their clusters' records stay."),
    wait: bool = typer.Option(False, "--wait", help=WAIT_HELP),
    snapshots: bool = typer.Option(False, "--snapshots", help="Also delete every snapshot (`labctl snapshot list`) "
                                   "and its VMs; without it they are kept."),
    reset_static: bool = typer.Option(False, "--reset-static", help="Also `kubeadm reset -f` on static machines "
                                      "(by default they are drained and their Nodes deleted, nothing more)."),
) -> None:
    """Delete the lab's VMs (only those in clusters.json) and what labctl kept about them. Safe to run twice.
    Static machines are never deleted: drained, their Nodes deleted (and `kubeadm reset` with --reset-static)."""
    from ..errors import UsageError
    from functools import partial

    from ..lab import destroy as flow
    from ..lab import destroy_targets, require_provider

    lab = open_lab()
    lab.state.wait_for_lock = wait
    opts = _opts(cluster, node=node)
    targets = destroy_targets(lab, opts.selection.clusters, opts.selection.nodes)
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError("destroy deletes VMs and needs confirmation", hint="pass --yes to run it unattended")
        require_provider(lab)  # a missing tart is said before the question, not after the answer
        static = {n.name for _, n in lab.model.nodes if n.static}
        vms = [t for t in targets if t not in static]
        typer.echo(f"This deletes {len(vms)} VMs and their disks: {', '.join(vms)}")
        if static & set(targets):
            typer.echo(f"and removes these static machines from their clusters (the machines stay): "
                       f"{', '.join(t for t in targets if t in static)}")
        if snapshots:
            from .. import snapshots as snaps

            typer.echo(f"and every snapshot: {', '.join(m['name'] for m in snaps.manifests(lab.state)) or 'none'}")
        if not typer.confirm("Delete them?", default=False):
            raise typer.Exit(1)
    if snapshots:
        from .snapshot_cli import delete_all

        delete_all(lab)
    run_flow(partial(flow, reset_static=reset_static), lab, opts, "destroy")


@app.command("forget-host")
def forget_host(node: str = typer.Argument(..., help="The node whose pinned SSH host key to forget.")) -> None:
    """Forget a node's pinned SSH host key (after you recreated its VM by hand)."""
    from ..errors import UsageError
    from ..remote.credentials import forget_host as forget

    lab = open_lab()
    if node not in {n.name for _, n in lab.model.nodes}:
        raise UsageError(f"no node {node!r} in {G.config}")
    forgotten = forget(lab.state, node)
    if G.json:
        emit_json({"node": node, "forgotten": forgotten})
    else:
        typer.echo(f"{node}: host key {'forgotten' if forgotten else 'was not pinned'}")
