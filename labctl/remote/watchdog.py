"""The answer timer of the SSH transport: once connected, every exchange with a node must be answered in time."""

from __future__ import annotations

import threading


class Watchdog:
    """Closes a connection that does not answer in time: closing is the one thing that wakes every paramiko wait
    (channel open, exec request, send window, SFTP reply, global request) at once.

    `transport` is anything with close() (a paramiko.Transport); arm(seconds) starts the timer (seconds as a
    float), disarm() stops it, and `fired` tells afterwards whether it closed the connection."""

    def __init__(self, transport):
        self._transport = transport
        self._timer: threading.Timer | None = None
        self.fired = False

    def arm(self, seconds: float) -> None:
        self.disarm()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self.fired = True
        self._transport.close()
