"""The one redaction point: every secret a run handles is registered here and masked in everything labctl writes.

Fed with the bootstrap tokens and certificate keys of joins (phases/join.py), the stacks' admin passwords
(labctl/credentials.py) and the SSH/sudo password of clusters.json (labctl/lab.py). Applied where text leaves
labctl: the node logs (`LabState.log`, which every transport's output goes through), the step record in
state.json, the terminal and NDJSON output (ui.Reporter, the CLI's error edge) and the debug log (`Formatter`).
Registering a secret *before* the command that prints it runs is what keeps it out of the logs; commands that only
have to succeed (not print the secret back) send their output elsewhere as well.

The registry is per process: one labctl command is one process. It only grows, which is harmless: masking a
string that is no longer secret costs nothing.
"""

from __future__ import annotations

import logging
import re
import threading

MASK = "<redacted>"
MIN_LENGTH = 6  # shorter values (a test's "pw") would mask ordinary words; real secrets here are 16+ characters

_lock = threading.Lock()
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None


def register(*values: str | None) -> None:
    """Mask these values from now on (None, empty and very short values are ignored)."""
    global _pattern
    fresh = {v for v in values if v and len(v) >= MIN_LENGTH and v not in _secrets}
    if not fresh:
        return
    with _lock:
        _secrets.update(fresh)
        # longest first: a token's secret half is also registered on its own, the whole token must win
        _pattern = re.compile("|".join(re.escape(s) for s in sorted(_secrets, key=len, reverse=True)))


def redact(text: str) -> str:
    """`text` with every registered secret replaced by MASK."""
    pattern = _pattern
    return pattern.sub(MASK, text) if pattern is not None and text else text


class Formatter(logging.Formatter):
    """A logging formatter whose output (message, arguments and traceback) is redacted."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))
