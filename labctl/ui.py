"""Showing progress and results: a live line per cluster on a terminal, plain lines otherwise, NDJSON with --json.

The engine emits Events from worker threads; the Reporter is the only thing that writes to the terminal while a
run is going, so every method takes the lock. NO_COLOR (https://no-color.org) makes every console plain:
make_console().
"""

from __future__ import annotations

import json
import os
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


# Without a terminal (CI logs, `| tee`) a step can be silent for minutes (a kubeadm init, a Helm wait): a line at
# least this often, in seconds, says what is still being waited for, so a slow lab is told from a hung one.
HEARTBEAT_SECONDS = 30.0


def make_console(file: IO | None = None, **options):
    """A rich Console on `file` (default: stdout at the time of printing). With NO_COLOR set and not empty
    (no-color.org) it writes no style at all: rich itself only drops colours for NO_COLOR and keeps bold, dim and
    underline, whose escape codes still reach logs and screen readers."""
    from rich.console import Console

    plain = {"color_system": None} if os.environ.get("NO_COLOR") else {}
    return Console(file=file, **options, **plain)


def pick_mode(json_output: bool, quiet: bool, stream: IO = sys.stdout) -> Mode:
    if json_output:
        return "json"
    if quiet:
        return "quiet"
    return "rich" if stream.isatty() else "plain"


class Reporter:
    def __init__(self, mode: Mode, stream: IO | None = None, verbose: int = 0, heartbeat: float | None = None):
        self.mode = mode
        self.stream = stream or sys.stdout
        self.verbose = verbose
        self.heartbeat = HEARTBEAT_SECONDS if heartbeat is None else heartbeat  # seconds; plain mode only
        self._lock = threading.Lock()
        self._started: dict[str, tuple[float, str]] = {}  # step id -> (monotonic start, "phase target")
        self._latest: dict[str, str] = {}  # step id -> the step's last note: what exactly it waits for
        self._last_line = time.monotonic()
        self._beats_stop = threading.Event()
        self._beats: threading.Thread | None = None
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
            self._console = make_console(self.stream, highlight=False, soft_wrap=True)
        return self._console

    def start(self, steps) -> None:
        for s in steps:
            self._total[s.target.cluster or "lab"] += 1
        if self.mode == "rich":
            from rich.live import Live

            self._live = Live(get_renderable=self._render_live, console=self.console, refresh_per_second=8,
                              transient=True)
            self._live.start()
        elif self.mode == "plain" and self.heartbeat > 0 and self._beats is None:
            self._beats = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
            self._beats.start()

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
        if self._beats is not None:
            self._beats_stop.set()
            self._beats.join()
            self._beats = None

    def _beat(self) -> None:
        """The heartbeat thread: whenever `heartbeat` seconds passed without a line, one line per running step
        naming it, how long it has run and its last note (what it waits for)."""
        while True:
            with self._lock:
                due = self._last_line + self.heartbeat
            if self._beats_stop.wait(max(0.0, due - time.monotonic())):
                return
            with self._lock:
                now = time.monotonic()
                if now < self._last_line + self.heartbeat:
                    continue  # something was printed meanwhile
                self._last_line = now  # also when nothing runs: the next look is one period later
                try:
                    for step_id, (began, what) in sorted(self._started.items(), key=lambda item: item[1][0]):
                        note = self._latest.get(step_id) or self._last_note
                        self._print(f"  … still running after {_duration(now - began)}: {what}"
                                    + (f" ({note})" if note else ""))
                except (OSError, ValueError):  # stdout closed (`| head`) or gone: the run goes on, unwatched
                    return

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
                self._started[step.id] = (time.monotonic(), f"{step.phase.name} {step.target}")
            elif event.kind == "result" and step:
                self._running[cluster].pop(step.id, None)
                self._started.pop(step.id, None)
                self._latest.pop(step.id, None)
                self._done[cluster] += 1
                self._print_result(event)
            if event.kind == "note" and step and event.detail:
                self._latest[step.id] = event.detail.splitlines()[0][:200]
            if event.kind == "note" and event.detail and (self.verbose or not step) and self.mode != "quiet":
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
            if not isinstance(text, Progress):
                self._last_note = str(text).splitlines()[0][:200] if str(text) else ""
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
        self._last_line = time.monotonic()
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
    def summary(self, summary: Summary, verb: str, logs_hint: str = "", next_steps: list[dict] | None = None) -> None:
        """next_steps: status.next_steps() after a successful install/boot (the `next` key in --json); told after
        the counts, not in -q mode."""
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
                **({"next": next_steps} if next_steps is not None else {}),
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
        if next_steps and self.mode != "quiet":
            self._next_steps(next_steps)

    def _next_steps(self, clusters: list[dict]) -> None:
        """What to do now, as kind says after `kind create cluster`: the contexts, how to reach them, the URLs."""
        contexts = ", ".join(c["context"] for c in clusters)
        self._print(f"Your lab is ready: kubectl contexts {contexts}.")
        self._print("  `labctl kubeconfig --merge` adds them to your kubeconfig (~/.kube/config or $KUBECONFIG); then:")
        for c in clusters:
            self._print(f"  kubectl --context {c['context']} get nodes")
        self._print(f"  (or without merging: KUBECONFIG={clusters[0]['kubeconfig']} kubectl get nodes)")
        for c in clusters:
            for name, url in c["urls"].items():
                self._print(f"  {c['cluster']} {name}: {url}")
        self._print("  `labctl status` shows the lab's health; `labctl credentials` the stacks' logins.")

    def plan(self, summary: Summary, changes: list[str], wide: bool = False) -> None:
        """The plan as text: spec changes, a line per step by cluster, then the counts (only those with -q).
        `wide` (-o wide): the step id and status columns too, and every line of each step's detail."""
        by_cluster: dict[str, list] = {}  # first-seen order: lab steps, then clusters as in clusters.json
        for r in summary.results:
            by_cluster.setdefault(r.step.target.cluster or "lab", []).append(r)
        for line in changes if self.mode != "quiet" else []:
            self._print(line, "cyan")
        for cluster, rows in by_cluster.items() if self.mode != "quiet" else []:
            self._print(f"{cluster}:", "bold")
            for r in rows:
                lines = r.detail.splitlines() or [""]
                target = r.step.target.node or r.step.target.item or "(cluster)"
                columns = f"{r.step.phase.name:<10} {target:<18}"
                if wide:
                    columns = f"{columns} {r.status:<12} {r.step.id:<40}"
                self._print(f"  {SYMBOL[r.status]} {columns} {lines[0]}".rstrip(), STYLE[r.status])
                for extra in lines[1:] if wide else []:
                    self._print(f"      {extra}", STYLE[r.status])
        legend = ", ".join(f"{SYMBOL[s]} {n} {s}" for s in SYMBOL if (n := summary.count(s)))
        self._print(f"plan: {len(summary.results)} steps: {legend or 'nothing'}")


def _duration(seconds: float) -> str:
    """12s, 3m05s, 1h02m: short enough for a log line."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
