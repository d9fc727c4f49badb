"""`labctl doctor`: is this machine ready for the lab? Exit 1 when something blocks the VM commands."""

from __future__ import annotations

import typer

from . import G, app, emit_json

MARK = {"ok": "✓", "warn": "!", "fail": "✗"}


@app.command()
def doctor() -> None:
    """Check this machine for the lab's provider (Tart on macOS; QEMU, images and KVM on Linux), memory, CPU, disk."""
    from ..doctor import diagnose

    report = diagnose(G.config)
    if G.json:
        emit_json(report.as_dict())
    else:
        for f in report.findings:
            typer.echo(f"{MARK[f.status]} {f.name:<14} {f.detail}")
            if f.status != "ok" and f.fix:
                typer.echo(f"  {'':<14} fix: {f.fix}")
        fails = sum(f.status == "fail" for f in report.findings)
        warns = sum(f.status == "warn" for f in report.findings)
        if fails:
            verdict = f"{fails} blocker{'s' if fails != 1 else ''}: the VM commands (install, boot, shutdown, destroy) " \
                      "cannot run until they are fixed"
        else:
            verdict = "ready" + (f", with {warns} warning{'s' if warns != 1 else ''}" if warns else "")
        typer.echo(f"doctor: {verdict}")
    if not report.ok:
        raise typer.Exit(1)
