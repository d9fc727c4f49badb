"""Showing progress and results: a live line per cluster on a terminal, plain lines otherwise, NDJSON with --json.

The engine emits Events from worker threads; the Reporter is the only thing that writes to the terminal while a
run is going, so every method takes the lock. Rich honours NO_COLOR by itself.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import defaultdict
from typing import IO, Literal

from .engine import Event, Summary
from .images import Progress
from .redact import redact

Mode = Literal["rich", "plain", "json", "quiet"]

SYMBOL = {
    "unchanged": "=",
    "changed": "✓",
    "failed": "✗",
    "blocked": "-",
    "cancelled": "-",
    "would-change": "+",
    "unknown": "?",
    "pending": "…",
}
STYLE = {
    "unchanged": "dim",
    "changed": "green",
    "failed": "bold red",
    "blocked": "yellow",
    "cancelled": "yellow",
    "would-change": "cyan",
    "unknown": "magenta",
    "pending": "dim",
}


def pick_mode(json_output: bool, quiet: bool, stream: IO = sys.stdout) -> Mode:
    if json_output:
        return "json"
    if quiet:
        return "quiet"
    return "rich" if stream.isatty() else "plain"


class Reporter:
    def __init__(self, mode: Mode, stream: IO | None = None, verbose: int = 0):
        self.mode = mode
        self.stream = stream or sys.stdout
        self.verbose = verbose
        self._lock = threading.Lock()
        self._live = None
        self._console = None
        self._running: dict[str, dict[str, str]] = defaultdict(dict)  # cluster -> step id -> "phase node"
        self._done: dict[str, int] = defaultdict(int)
        self._total: dict[str, int] = defaultdict(int)
        self._last_note = ""
        self._bars: dict[str, Progress] = {}  # downloads in progress, drawn in the live view

    # -- life cycle ---------------------------------------------------------------------------------------------
    @property
    def console(self):
        if self._console is None:
            from rich.console import Console

            self._console = Console(file=self.stream, highlight=False, soft_wrap=True)
        return self._console

    def start(self, steps) -> None:
        for s in steps:
            self._total[s.target.cluster or "lab"] += 1
        if self.mode == "rich":
            from rich.live import Live

            self._live = Live(get_renderable=self._render_live, console=self.console, refresh_per_second=8,
                              transient=True)
            self._live.start()

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    # -- events -------------------------------------------------------------------------------------------------
    def __call__(self, event: Event) -> None:
        with self._lock:
            if self.mode == "json":
                self._write_json(event.as_dict())
                return
            step = event.step
            cluster = (step.target.cluster or "lab") if step else "lab"
            if event.kind == "start" and step:
                self._running[cluster][step.id] = f"{step.phase.name} {step.target}"
            elif event.kind == "result" and step:
                self._running[cluster].pop(step.id, None)
                self._done[cluster] += 1
                self._print_result(event)
            elif event.kind == "note" and event.detail and (self.verbose or not step):
                self._print(f"  {event.detail}", "dim")

    def note(self, text: str) -> None:
        """A progress message from inside a phase (e.g. 'pulling the base image'). A Progress note (a download) is
        a bar in the live view on a terminal; elsewhere only its milestones (every 10 %, and the end) are lines."""
        with self._lock:
            if isinstance(text, Progress):
                if self._live is not None and self.mode == "rich":
                    if text.final:
                        self._bars.pop(text.key, None)
                    else:
                        self._bars[text.key] = text
                        return
                elif not text.milestone:
                    return
            if self.mode == "json":
                self._write_json({"event": "note", "time": round(time.time(), 3), "detail": text})
            elif self.mode != "quiet":
                self._print(f"  {text}", "dim")

    def _print_result(self, event: Event) -> None:
        status = event.status or ""
        if self.mode == "quiet" and status != "failed":
            return
        if status == "unchanged" and not self.verbose and self.mode == "rich":
            return  # the live view counts them; the final table lists them
        took = f" ({event.elapsed:.1f}s)" if event.elapsed >= 0.05 else ""
        first = event.detail.splitlines()[0] if event.detail else ""
        line = f"{SYMBOL.get(status, '?')} {event.step.id:<34} {status:<9}{took} {first}".rstrip()
        self._print(line, STYLE.get(status, ""))
        if status == "failed":
            for extra in event.detail.splitlines()[1:]:
                self._print(f"    {extra}", "red")

    def _print(self, text: str, style: str = "") -> None:
        text = redact(text)  # the one way to the terminal: no secret a step echoed gets through
        if self.mode == "plain" or self.mode == "quiet":
            print(text, file=self.stream, flush=True)
        else:
            self.console.print(text, style=style or None, markup=False)

    def _write_json(self, data: dict) -> None:
        self.stream.write(redact(json.dumps(data)) + "\n")
        self.stream.flush()

    def _render_live(self):
        from rich.spinner import Spinner
        from rich.table import Table

        table = Table.grid(padding=(0, 2))
        with self._lock:
            for cluster in self._total:
                running = list(self._running[cluster].values())
                what = ", ".join(running[:3]) + (f" +{len(running) - 3}" if len(running) > 3 else "")
                table.add_row(
                    Spinner("dots") if running else " ",
                    cluster,
                    f"{self._done[cluster]}/{self._total[cluster]}",
                    what or ("done" if self._done[cluster] == self._total[cluster] else "waiting"),
                )
            bars = list(self._bars.values())
        if not bars:
            return table
        from rich.console import Group
        from rich.progress_bar import ProgressBar

        rows = Table.grid(padding=(0, 2))
        for bar in bars:
            rows.add_row(ProgressBar(total=bar.total, completed=bar.done, width=30), bar)
        return Group(table, rows)

    # -- final output -------------------------------------------------------------------------------------------
    def summary(self, summary: Summary, verb: str, logs_hint: str = "") -> None:
        counts = {s: summary.count(s) for s in ("changed", "unchanged", "failed", "blocked", "cancelled")}
        if self.mode == "json":
            self._write_json({
                "event": "summary",
                "command": verb,
                "ok": summary.ok,
                "interrupted": summary.interrupted,
                "elapsed": round(summary.elapsed, 3),
                "counts": counts,
                "failed": [r.as_dict() for r in summary.failed],
            })
            return
        per_cluster: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for r in summary.results:
            per_cluster[r.step.target.cluster or "lab"][r.status] += 1
        if self.mode == "rich":
            from rich.table import Table

            table = Table(title=f"labctl {verb}: {summary.elapsed:.1f}s", title_justify="left")
            table.add_column("cluster")
            for name in counts:
                table.add_column(name, justify="right", style=STYLE[name])
            for cluster, c in per_cluster.items():
                table.add_row(cluster, *[str(c.get(name, 0) or "") for name in counts])
            self.console.print(table)
        else:
            total = ", ".join(f"{n} {name}" for name, n in counts.items() if n)
            self._print(f"labctl {verb}: {total or 'nothing to do'} in {summary.elapsed:.1f}s")
        for r in summary.failed:
            self._print(f"✗ {r.step.id} failed:", "bold red")
            for line in r.detail.splitlines():
                self._print(f"    {line}", "red")
        if summary.failed and logs_hint:
            self._print(f"  logs: {logs_hint}", "dim")
        if summary.interrupted:
            self._print("interrupted: run the same command again to resume from where it stopped", "yellow")

    def plan(self, summary: Summary, changes: list[str]) -> None:
        for line in changes:
            self._print(line, "cyan")
        by_cluster: dict[str, list] = {}  # first-seen order: lab steps, then clusters as in clusters.json
        for r in summary.results:
            by_cluster.setdefault(r.step.target.cluster or "lab", []).append(r)
        for cluster, rows in by_cluster.items():
            self._print(f"{cluster}:", "bold")
            for r in rows:
                detail = r.detail.splitlines()[0] if r.detail else ""
                target = r.step.target.node or r.step.target.item or "(cluster)"
                self._print(f"  {SYMBOL[r.status]} {r.step.phase.name:<10} {target:<18} {detail}", STYLE[r.status])
        legend = ", ".join(f"{SYMBOL[s]} {n} {s}" for s in SYMBOL if (n := summary.count(s)))
        self._print(f"plan: {len(summary.results)} steps: {legend or 'nothing'}")
