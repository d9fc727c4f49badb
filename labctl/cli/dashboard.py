"""`labctl dashboard`: the lab's live status in a local web page (labctl/dashboard/)."""

from __future__ import annotations

import sys
import threading

import typer

from . import G, app, emit_json, open_lab
from .commands import names
from .status import CLUSTER_HELP


@app.command()
def dashboard(
    port: int = typer.Option(0, "--port", min=0, max=65535, help="Port on 127.0.0.1 (0: a free one)."),
    cluster: list[str] = typer.Option(None, "--cluster", metavar="CLUSTER", help=CLUSTER_HELP),
    interval: float = typer.Option(5.0, "--interval", min=0.5, help="Seconds between two snapshots of the lab."),
    timeout: float = typer.Option(5.0, "--timeout", help="Seconds for each probe."),
    open_browser: bool = typer.Option(False, "--open", help="Open the page in your web browser."),
) -> None:
    """A live web page of the lab (clusters, VMs, nodes, stacks and their URLs) on 127.0.0.1, until Ctrl-C.

    One background probe (what `status --json` shows) feeds every open tab. The URL carries a random token: only
    who has it can read the page."""
    from ..dashboard.collector import Collector
    from ..dashboard.server import DashboardServer
    from ..lab import chosen_clusters
    from ..status import snapshot

    lab = open_lab()
    chosen = chosen_clusters(lab, names(cluster))  # an unknown --cluster is a usage error now, not on the page
    collector = Collector(lambda: snapshot(lab, chosen, timeout), interval).start()
    server = DashboardServer(collector, port, title=f"labctl · {lab.config.parent.name or 'lab'}")
    try:
        url = server.start()
        # the URL is the key to the page: shown to whoever started it, never logged
        if G.json:
            emit_json({"url": url})
            sys.stdout.flush()  # a reader of the pipe needs the URL now, not when the dashboard stops
        else:
            typer.echo(f"dashboard: {url}\n  (127.0.0.1 only; the token in the URL is the key; Ctrl-C stops it)")
        if open_browser:
            import webbrowser

            webbrowser.open(url)
        threading.Event().wait()  # until Ctrl-C
    except KeyboardInterrupt:
        typer.echo("dashboard stopped", err=True)
    finally:
        server.stop()
        collector.stop()
