"""Looking at the lab: status (people and dashboards) and smoke (CI)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from . import G, app, emit_json, open_lab, output_option
from .commands import names

CLUSTER_HELP = "Only these clusters (repeatable or comma-separated)."


def _mark(probe) -> str:
    return "–" if probe.skipped else ("✓" if probe.ok else "✗")


def _tables(statuses, specs: dict | None = None):
    """The status tables; `specs` (node name → its clusters.json Node), for -o wide: what each VM was given and
    the SSH probe's detail as more columns."""
    from rich.console import Group
    from rich.table import Table

    out = []
    for c in statuses:
        verdict = "[green]healthy[/]" if c.healthy else "[red]not healthy[/]"
        table = Table(title=f"{c.name}: {verdict}", title_justify="left", expand=False)
        wide = ("CPU", "memory MiB", "disk GB", "SSH detail") if specs is not None else ()
        for col in ("node", "role", "VM", "address", "SSH", "Kubernetes", "version", *wide):
            table.add_column(col)
        for n in c.nodes:
            more = []
            if specs is not None:
                spec = specs.get(n.name)
                # a static machine's size is its own: no cpu/memory in clusters.json
                more = [str(v) if v is not None else "-" for v in (spec.cpu, spec.memory, spec.disk)] if spec \
                    else ["-", "-", "-"]
                more.append(n.ssh.detail or "-")
            table.add_row(n.name, n.role, n.vm, n.address or "-", _mark(n.ssh),
                          f"{_mark(n.ready)} {n.ready.detail}", n.version or "-", *more)
        out.append(table)
        lines = [f"  API {_mark(c.api)} {c.api.detail}", f"  Cilium {_mark(c.cilium)} {c.cilium.detail}",
                 f"  CoreDNS {_mark(c.dns)} {c.dns.detail}"]
        lines += _ha_lines(c)
        lines += [f"  stack {name} {_mark(p)} {p.detail}" for name, p in c.stacks.items()]
        lines += [f"  {name}: {url}" for name, url in c.urls.items()]
        if c.kubeconfig:
            lines.append(f"  kubeconfig: {c.kubeconfig} (context labctl-{c.name} in the merged file)")
        from rich.text import Text

        out.append(Text("\n".join(lines) + "\n"))
    return Group(*out)


def _ha_lines(c) -> list[str]:
    """An HA cluster's host endpoint and etcd members (nothing for a single master)."""
    from types import SimpleNamespace

    out = []
    if c.endpoint is not None:
        ep = c.endpoint
        how = f"forwarder pid {ep['pid']}" if ep["running"] else "forwarder not running: `labctl boot` starts it"
        backends = ", ".join(f"{b['node']} {'✓' if b['answering'] else '✗'}" for b in ep["backends"]) or "none known"
        out.append(f"  endpoint {ep['address'] or '(none yet)'} ({how}) → {backends}")
    if c.etcd is not None:
        out.append(f"  etcd {_mark(SimpleNamespace(**c.etcd))} {c.etcd['detail']}")
        for m in c.etcd["members"]:
            state = "✓" if m["healthy"] else f"✗ {m['error']}".rstrip()
            out.append(f"    {m['name']} {m['peer_url']} {state}{' leader' if m['leader'] else ''}")
    return out


@app.command()
def status(
    cluster: list[str] = typer.Option(None, "--cluster", metavar="CLUSTER", help=CLUSTER_HELP),
    watch: float = typer.Option(0, "--watch", "-w", help="Refresh every N seconds until Ctrl-C."),
    timeout: float = typer.Option(5.0, "--timeout", help="Seconds for each probe."),
    output: str = output_option(),
) -> None:
    """VMs, SSH, nodes, Cilium, DNS and stacks per cluster. Exit 0 only when everything declared is healthy."""
    from ..status import collect, snapshot

    lab = open_lab()
    if G.json:
        report = snapshot(lab, names(cluster), timeout)
        emit_json(report)
        if not report["healthy"]:
            raise typer.Exit(1)
        return
    if watch:
        from rich.console import Group
        from rich.live import Live

        from ..ui import make_console
        from rich.text import Text

        from ..dashboard.collector import Collector

        # the probes run in the collector's thread and the main thread only waits for them: Ctrl-C (exit 130, as for
        # any command) then never lands inside a probe's thread pools
        chosen = names(cluster)
        collector = Collector(lambda: collect(lab, chosen, timeout), watch).start()
        with Live(console=make_console(), auto_refresh=False) as live:
            probes = 0
            while True:
                probes = collector.wait_probe(probes)
                now = collector.latest()
                # when it was taken, so a frozen screen is told from a steady lab; a failed probe keeps the last view
                taken = time.strftime("%H:%M:%S", time.localtime(now["taken"])) if now["taken"] else "never"
                failed = f"\nthe last probe failed: {now['error']}" if now["error"] else ""
                header = Text(f"every {watch:g} s, last at {taken} (Ctrl-C stops){failed}\n", style="dim")
                live.update(Group(header, _tables(now["snapshot"] or [])), refresh=True)
    elif G.quiet:  # only the result: a line per cluster
        statuses = collect(lab, names(cluster), timeout)
        for c in statuses:
            typer.echo(f"{c.name}: {'healthy' if c.healthy else 'not healthy'}")
    else:
        from ..ui import make_console

        statuses = collect(lab, names(cluster), timeout)
        specs = {n.name: n for _, n in lab.model.nodes} if G.output == "wide" else None
        make_console().print(_tables(statuses, specs))
    if not all(c.healthy for c in statuses):
        raise typer.Exit(1)


@app.command()
def smoke(
    cluster: list[str] = typer.Option(None, "--cluster", metavar="CLUSTER", help=CLUSTER_HELP),
    junit: Path = typer.Option(None, "--junit", help="Write JUnit XML here (one testcase per check)."),
    timeout: float = typer.Option(10.0, "--timeout", help="Seconds for each probe."),
) -> None:
    """CI checks per cluster: API reachable, nodes Ready, Cilium ready, CoreDNS available, stacks ready."""
    from ..state import write_atomic
    from ..status import collect, junit_xml, smoke_checks

    start = time.monotonic()
    checks = smoke_checks(collect(open_lab(), names(cluster), timeout))
    if junit:
        write_atomic(junit, junit_xml(checks, time.monotonic() - start))
    failed = [c for c in checks if not c.ok and not c.skipped]
    if G.json:
        emit_json({"ok": not failed, "checks": [c.__dict__ for c in checks]})
    else:
        for c in checks:
            mark = "SKIP" if c.skipped else ("PASS" if c.ok else "FAIL")
            typer.echo(f"{mark} {c.cluster}/{c.name}: {c.detail}")
        passed = sum(1 for c in checks if c.ok)
        skipped = sum(1 for c in checks if c.skipped)
        typer.echo(f"smoke: {passed} passed, {len(failed)} failed" + (f", {skipped} skipped" if skipped else ""))
    if failed:
        raise typer.Exit(1)


@app.command("kubeconfig")
def kubeconfig_cmd(
    cluster: list[str] = typer.Option(None, "--cluster", metavar="CLUSTER", help=CLUSTER_HELP),
    merge: bool = typer.Option(False, "--merge", help="Merge the labctl-<cluster> contexts into your kubeconfig."),
    path: bool = typer.Option(False, "--path", help="Print the file path(s) instead of the contents."),
) -> None:
    """Print the lab's kubeconfig (all clusters, or --cluster), or --merge it into ~/.kube/config ($KUBECONFIG)."""
    import os

    from ..errors import LabctlError
    from ..kube import kubeconfig

    from ..lab import chosen_clusters

    lab = open_lab()
    chosen = chosen_clusters(lab, names(cluster))
    installed = [c for c in chosen if kubeconfig.read(lab.state, c) is not None]
    if not installed:
        raise LabctlError("no kubeconfig yet for " + ", ".join(chosen),
                          hint="`labctl install` writes one per cluster once its control plane is up")
    if merge:
        # kubectl's own choice of file, so `kubectl --context labctl-<cluster>` finds what was written
        written = kubeconfig.export(lab.state, installed, os.environ.get("KUBECONFIG"), Path.home())
        targets = sorted({str(path) for _, path in written})
        if G.json:
            emit_json({"kubeconfig": targets[0] if len(targets) == 1 else targets,
                       "contexts": [name for name, _ in written]})
        else:
            for target in targets:
                names_there = ", ".join(name for name, path in written if str(path) == target)
                typer.echo(f"merged {names_there} into {target} (your other contexts are untouched; labctl keeps "
                           "them current after address changes)")
        return
    files = [kubeconfig.cluster_path(lab.state, c) for c in installed] if cluster else [kubeconfig.merged_path(lab.state)]
    if not cluster and (problem := kubeconfig.merged_problem(lab.state)):
        raise LabctlError(problem, hint="`labctl install --from init` rebuilds it from the clusters' own kubeconfigs; "
                          "meanwhile `labctl kubeconfig --cluster NAME` prints one cluster's")
    if path:
        typer.echo(os.pathsep.join(str(f) for f in files))
    else:
        for f in files:
            typer.echo(f.read_text(), nl=False)


@app.command()
def credentials(
    stack: str = typer.Argument(None, metavar="[STACK]", help="Only this stack's logins (e.g. monitoring)."),
    cluster: list[str] = typer.Option(None, "--cluster", metavar="CLUSTER", help=CLUSTER_HELP),
) -> None:
    """The admin logins labctl generated for the stacks (Grafana, Argo CD, Jenkins, ...); `status` shows the URLs.

    They are kept 0600 in .labctl/credentials.json and shown only here, on request."""
    from .. import credentials as C
    from .. import stacks as S
    from ..errors import UsageError
    from ..lab import chosen_clusters

    lab = open_lab()
    chosen = [lab.model.cluster(n) for n in chosen_clusters(lab, names(cluster))]
    stored = C.read_all(lab.state)
    rows = []
    for c in chosen:
        for name in S.installable(c):
            if stack and name != stack:
                continue
            descriptor = S.catalogue().get(name)
            for cred in descriptor.credentials if descriptor else []:
                entry = stored.get(c.name, {}).get(cred.name)
                rows.append({"cluster": c.name, "stack": name, "name": cred.name, "user": cred.user,
                             "password": entry["password"] if entry else None,
                             "secret": f"{cred.namespace}/{cred.secret}"})
    if stack and not any(stack in c.stack_names for c in chosen):
        import difflib

        elsewhere = [c.name for c in lab.model.clusters if stack in c.stack_names]
        declared = sorted({n for c in chosen for n in c.stack_names})
        near = difflib.get_close_matches(stack, declared, n=1)
        where = f"; {', '.join(elsewhere)} does" if elsewhere else (f"; did you mean {near[0]!r}?" if near else "")
        who = f"cluster {', '.join(c.name for c in chosen)} declares no" if cluster else "no cluster declares"
        raise UsageError(f"{who} stack {stack!r}{where}",
                         hint=f"the stacks declared here: {', '.join(declared) or 'none'}")
    if G.json:
        emit_json({"credentials": rows})
        return
    if not rows:
        typer.echo("no stack here has a generated login")
    for row in rows:
        password = row["password"] or "(not generated yet: `labctl install` creates it)"
        typer.echo(f"{row['cluster']}/{row['stack']} {row['name']}: user {row['user']}  password {password}"
                   f"  (Secret {row['secret']})")

