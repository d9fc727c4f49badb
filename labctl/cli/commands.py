"""The commands about the lab file and the install: init, validate, schema, plan, install."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import typer

from . import G, app, emit_json, open_lab, output_option, reporter, run_flow

PHASES_HELP = "Phase name (repeatable or comma-separated)."


def names(values: list[str] | None) -> list[str]:
    return [n.strip() for v in values or [] for n in v.split(",") if n.strip()]


NODE_HELP = "Only these nodes' node steps (repeatable or comma-separated); cluster steps still run unless --only " \
    "leaves them out."
WAIT_HELP = "Wait for another labctl working on this lab instead of exiting (Terraform runs several at once)."


def _selection(only, start, skip, cluster, node=None, stack=None):
    from ..engine import Selection

    return Selection(only=names(only), start=start, skip=names(skip), clusters=names(cluster), nodes=names(node),
                     items=names(stack))


@app.command()
def init(
    force: bool = typer.Option(False, "--force", help="Overwrite an existing clusters.json."),
    provider: str = typer.Option("tart", "--provider", metavar="tart|qemu",
                                 help="tart: the predecessor's four clusters (macOS on Apple silicon). qemu: one small "
                                 "cluster sized for this Linux host, on the Ubuntu 24.04 cloud image and the "
                                 "rootless lab network."),
) -> None:
    """Write a starter clusters.json into the current directory (or where --config points)."""
    from ..errors import UsageError
    from ..resources import DEFAULT_CLUSTERS_JSON

    if provider not in ("tart", "qemu"):
        raise UsageError(f"--provider {provider!r}: use tart or qemu")
    target = G.config.absolute()  # --config / LABCTL_CONFIG, so `labctl -c lab.json init` writes what it reads
    if target.is_dir():  # --force replaces a file; a folder is never deleted to make room
        raise UsageError(f"{target} is a folder, not a file: init writes the lab file there and will not replace a "
                         "folder, even with --force", hint=f"remove or rename it, or pass --config with a file path, "
                         f"e.g. `labctl --config {shlex.quote(str(target / 'clusters.json'))} init`")
    if target.exists() and not force:
        raise UsageError(f"{target} already exists", hint="edit it, or pass --force to replace it")
    if not target.parent.is_dir():
        raise UsageError(f"{target.parent} does not exist: init writes {target.name} into an existing folder",
                         hint=f"create it first (`mkdir -p {shlex.quote(str(target.parent))}`), or pass another --config")
    if provider == "qemu":
        from ..starter import qemu_text
        from ..state import write_atomic

        write_atomic(target, qemu_text(), 0o600)  # 0600 like every file labctl writes: it holds a password
    else:
        shutil.copyfile(DEFAULT_CLUSTERS_JSON, target)
    if G.json:
        emit_json({"written": str(target), "provider": provider})
    else:
        # the next commands must find the file too: with a --config of its own, they carry it
        cmd = "labctl" if target == Path.cwd() / "clusters.json" else f"labctl -c {shlex.quote(str(target))}"
        then = f"`{cmd} validate`, `{cmd} doctor`, then `{cmd} install`" if provider == "qemu" else \
            f"`{cmd} validate`, then `{cmd} plan`"
        typer.echo(f"wrote {target}; next: {then}")


@app.command()
def validate(output: str = output_option()) -> None:
    """Check clusters.json: every problem at once, each with its JSON path; show the resource budget."""
    from .. import host, validation

    lab = open_lab().model
    validation.check_supported(lab, str(G.config))
    budget = host.budget(lab)
    warnings = validation.warnings(lab)
    if not budget.memory_fits and lab.provider.type != "orchard":  # Orchard's VMs run on its workers
        warnings.append(f"this host cannot run the whole lab at once: {budget.describe()}")
    if (G.config.resolve().parent / "terraform" / "main.tf").exists():
        from .. import terraform

        if terraform.stale(lab, G.config):
            warnings.append(f"{terraform.default_dir(G.config)} is stale: it differs from what clusters.json renders "
                            "now; run `labctl terraform render` (`labctl terraform check` shows the diff)")
    if G.json:
        emit_json({
            "valid": True,
            "clusters": len(lab.clusters),
            "nodes": len(lab.nodes),
            "budget": {"vcpus": budget.vcpus, "memory_mib": budget.memory_mib, "disk_gb": budget.disk_gb,
                       "cpu_overcommit": round(budget.cpu_ratio, 2), "memory_fits_this_host": budget.memory_fits},
            "warnings": warnings,
        })
        return
    typer.echo(f"{G.config}: valid — {len(lab.clusters)} clusters, {len(lab.nodes)} nodes")
    if G.quiet:  # the result only
        return
    typer.echo(f"  budget: {budget.describe()}")
    for w in warnings:
        typer.echo(f"  warning: {w}")


@app.command()
def schema() -> None:
    """Print the JSON schema of clusters.json (`labctl schema > clusters.schema.json`, then `"$schema":
    "./clusters.schema.json"` in clusters.json lets an editor complete and check it)."""
    from ..model import Lab

    emit_json(schema_document(Lab.model_json_schema()))


SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"  # the dialect pydantic 2 generates
SCHEMA_ID = "urn:labctl:clusters.json"  # a name, not a download: labctl has no published schema URL


def schema_document(generated: dict) -> dict:
    """pydantic's schema of Lab → the published document: `$schema` (the dialect) and `$id` first, and a `$schema`
    property so a clusters.json that points at its schema is still valid against it (model.parse ignores it)."""
    properties = {"$schema": {"type": "string", "description": "the JSON schema this file follows (for editors); "
                              "labctl ignores it"}, **generated.get("properties", {})}
    return {"$schema": SCHEMA_DIALECT, "$id": SCHEMA_ID, **generated, "properties": properties}


@app.command()
def plan(
    only: list[str] = typer.Option(None, "--only", metavar="PHASE", help=PHASES_HELP),
    start: str = typer.Option(None, "--from", metavar="PHASE", help="Start at this phase."),
    skip: list[str] = typer.Option(None, "--skip", metavar="PHASE", help=PHASES_HELP),
    cluster: list[str] = typer.Option(None, "--cluster", metavar="CLUSTER", help="Only these clusters (repeatable)."),
    output: str = output_option(),
) -> None:
    """Show what `install` would change: every step's check against the live lab. Changes nothing."""
    from ..lab import RunOptions, plan as make_plan, spec_changes

    from ..validation import check_supported, warnings

    lab = open_lab()
    check_supported(lab.model, str(G.config))
    summary = make_plan(lab, RunOptions(_selection(only, start, skip, cluster)))
    changes = spec_changes(lab) + [f"note: {w}" for w in warnings(lab.model)]
    if G.json:
        emit_json({
            "config": str(G.config),
            "changes": changes,
            "counts": {s: summary.count(s) for s in ("unchanged", "would-change", "unknown", "pending", "blocked")},
            "steps": [r.as_dict() for r in summary.results],
        })
    else:
        reporter().plan(summary, changes, wide=G.output == "wide")


@app.command()
def install(
    only: list[str] = typer.Option(None, "--only", metavar="PHASE", help=PHASES_HELP),
    start: str = typer.Option(None, "--from", metavar="PHASE", help="Start at this phase."),
    skip: list[str] = typer.Option(None, "--skip", metavar="PHASE", help=PHASES_HELP),
    cluster: list[str] = typer.Option(None, "--cluster", metavar="CLUSTER", help="Only these clusters (repeatable)."),
    parallel: int = typer.Option(0, "--parallel", "-p", min=0, metavar="N", help="Steps at once (0 = one per node)."),
    fail_fast: bool = typer.Option(False, "--fail-fast", help="Stop every cluster at the first failure."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only plan (same as `labctl plan`)."),
    prune: bool = typer.Option(False, "--prune", help="Drain and delete workers, and uninstall stacks, that clusters.json no longer declares."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask (install never asks today; for scripts)."),
    adopt: bool = typer.Option(False, "--adopt", help="Manage (resize, start, later delete) existing VMs that carry "
                               "a node's name but were not created by labctl; without it they are refused."),
    node: list[str] = typer.Option(None, "--node", metavar="NODE", help=NODE_HELP),
    stack: list[str] = typer.Option(None, "--stack", metavar="STACK", help="Only these stacks' steps (repeatable "
                                    "or comma-separated)."),
    wait: bool = typer.Option(False, "--wait", help=WAIT_HELP),
) -> None:
    """Create or converge the lab: run every phase whose check is not satisfied, clusters in parallel."""
    from ..lab import RunOptions, install as run_install
    from ..validation import check_supported, warnings

    if dry_run:
        return plan(only, start, skip, cluster, None)
    from functools import partial

    opts = RunOptions(_selection(only, start, skip, cluster, node, stack), parallel, fail_fast)
    lab = open_lab()
    lab.state.wait_for_lock = wait
    check_supported(lab.model, str(G.config))
    run_flow(partial(run_install, prune=prune, adopt=adopt), lab, opts, "install", warnings=warnings(lab.model))
