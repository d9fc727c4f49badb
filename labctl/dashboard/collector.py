"""One shared collector for every dashboard client: a background thread takes the lab's snapshot (the one
`labctl status --json` prints) every few seconds, and requests only read the newest one.

So ten open tabs cost one probe per interval, and a slow or hung node costs the collector one probe timeout
(labctl/status.py asks everything concurrently with short timeouts) while the pages keep showing the last snapshot
with its age.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ..errors import LabctlError

log = logging.getLogger("labctl.dashboard")


class Collector:
    """Runs `probe()` (returns a JSON-able dict) in a daemon thread, waiting `interval` seconds between the end of
    one probe and the start of the next; `latest()` never waits for a probe."""

    def __init__(self, probe: Callable[[], dict], interval: float = 5.0, clock: Callable[[], float] = time.time):
        self.probe, self.interval, self.clock = probe, interval, clock
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # notified after every probe (a snapshot or an error)
        self._probes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dashboard-collector", daemon=True)
        self._data: dict | None = None
        self._taken: float | None = None  # when the newest snapshot's probe started (epoch seconds)
        self._seq = 0  # how many snapshots were taken
        self._probing_since: float | None = None
        self._error: str | None = None  # the newest probe's failure (the snapshot before it is still shown)

    def start(self) -> Collector:
        self._thread.start()
        return self

    def stop(self, timeout: float = 0) -> None:
        """Ask the thread to end after its current probe; wait up to `timeout` seconds for that."""
        self._stop.set()
        if timeout and self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = self.clock()
            with self._lock:
                self._probing_since = started
            try:
                data, error = self.probe(), None
            except LabctlError as exc:
                data, error = None, exc.message.splitlines()[0]
            except Exception as exc:  # noqa: BLE001 - the thread must outlive one bad probe; the page says what
                log.error("dashboard probe failed", exc_info=exc)
                data, error = None, f"internal error: {type(exc).__name__}: {exc}"
            with self._lock:
                self._probing_since, self._error = None, error
                if data is not None:
                    self._data, self._taken, self._seq = data, started, self._seq + 1
                self._probes += 1
                self._changed.notify_all()
            self._stop.wait(self.interval)

    def wait_probe(self, done: int, timeout: float | None = None) -> int:
        """Wait until more than `done` probes have ended (a snapshot or an error); returns how many have. A
        terminal view (`status --watch`) waits here, so its main thread only ever waits on a condition: Ctrl-C
        lands there, never inside a probe's thread pools."""
        with self._changed:
            self._changed.wait_for(lambda: self._probes > done, timeout)
            return self._probes

    def latest(self) -> dict:
        """{"seq": snapshots taken so far, "taken": epoch s or None, "age": s since that probe started or None,
        "probing": s the running probe has taken or None, "interval": s, "error": the newest probe's failure or
        None, "snapshot": the newest snapshot or None before the first one}."""
        now = self.clock()
        with self._lock:
            return {"seq": self._seq, "taken": self._taken,
                    "age": None if self._taken is None else max(0.0, now - self._taken),
                    "probing": None if self._probing_since is None else max(0.0, now - self._probing_since),
                    "interval": self.interval, "error": self._error, "snapshot": self._data}
