"""Commands that reach into one node or all of them: ssh, logs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from . import G, app, emit_json, open_lab
from .commands import names


@app.command(context_settings={"allow_interspersed_args": False})
def ssh(
    node: str = typer.Argument(..., help="The node to log in to."),
    command: list[str] = typer.Argument(None, metavar="CMD", help="Run this instead of a login shell; "
                                        "labctl then exits with its exit code."),
) -> None:
    """Log in to a node with the system ssh, the lab's key and the node's pinned host key."""
    from ..remote.login import ssh_argv

    command = list(command or [])
    if command[:1] == ["--"]:  # after NODE every word is CMD's (interspersed options off), `--` included
        command = command[1:]
    argv = ssh_argv(open_lab(), node, command)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    # exec: ssh takes over the terminal, signals and the exit code (the remote command's, or 255 for ssh's errors)
    os.execvp(argv[0], argv)


@app.command()
def logs(
    node: str = typer.Argument(None, help="The node whose journal to print (not with --collect)."),
    unit: str = typer.Option("kubelet", "--unit", metavar="kubelet|containerd", help="The systemd unit's journal."),
    since: str = typer.Option(None, "--since", metavar="DURATION", help="Only this recent, e.g. 30m, 2h, 1d."),
    collect: Path = typer.Option(None, "--collect", metavar="DIR", help="Collect every node's logs (journals, "
                                 "crictl ps -a, kube-system pod logs, dmesg, labctl's and the console logs) into "
                                 "DIR/<cluster>/<node>/, a new or empty directory."),
    archive: bool = typer.Option(False, "--archive", help="With --collect: also pack DIR as DIR.tar.gz."),
    cluster: list[str] = typer.Option(None, "--cluster", metavar="CLUSTER", help="With --collect: only these "
                                      "clusters (repeatable or comma-separated)."),
    only: list[str] = typer.Option(None, "--node", metavar="NODE", help="With --collect: only these nodes "
                                   "(repeatable or comma-separated)."),
) -> None:
    """Print a node's kubelet or containerd journal, or collect every node's logs for a bug report."""
    from .. import nodelogs
    from ..errors import UsageError

    when = nodelogs.since_argument(since)
    if collect is None:
        if node is None:
            raise UsageError("name a node, or pass --collect DIR", hint="e.g. `labctl logs dev-master --since 1h`")
        if archive or cluster or only:
            raise UsageError("--archive, --cluster and --node go with --collect")
        text = nodelogs.journal(open_lab(), node, unit, when)
        if G.json:
            emit_json({"node": node, "unit": unit, "journal": text})
        else:
            sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
        return
    if node is not None:
        raise UsageError(f"--collect takes nodes with --node, not as an argument ({node!r})",
                         hint=f"`labctl logs --collect {collect} --node {node}`")
    results, packed = nodelogs.collect(open_lab(), collect, names(cluster), names(only), when, archive)
    if G.json:
        emit_json({"dir": str(collect), "archive": str(packed) if packed else None,
                   "nodes": [r.as_dict() for r in results]})
        return
    for r in results:
        typer.echo(f"{r.node}: " + (f"not reachable, recorded in {collect / r.cluster / r.node / nodelogs.UNREACHABLE}"
                                    f": {r.error.splitlines()[0]}" if r.error else f"{len(r.files)} files"))
    typer.echo(f"logs of {len(results)} nodes in {collect}" + (f", packed as {packed}" if packed else ""))
