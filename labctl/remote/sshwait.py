"""Waiting for a booting VM's sshd: retry the handshake with backoff until it succeeds, the wait runs out, the
provider says the VM is not running, or Ctrl-C. The SSH transport (ssh.py) uses it for every (re)connection."""

from __future__ import annotations

import contextlib
import math
import os
import random
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from ..errors import TransportError

# How long `install` waits for a booting VM's sshd. A first boot under QEMU TCG on a busy host took 3.5 minutes; the
# wait gives up early when the provider says the VM is not running. Override: LABCTL_SSH_WAIT (seconds).
CONNECT_TIMEOUT = 600.0
ENV_CONNECT_TIMEOUT = "LABCTL_SSH_WAIT"
ALIVE_EVERY = 20.0  # seconds between "is the VM still running?" questions while its sshd does not answer

T = TypeVar("T")


def connect_timeout_default(provider_default: float | None = None) -> float:
    """The install's wait for a booting VM's sshd, in seconds: LABCTL_SSH_WAIT if set (a positive number), else
    `provider_default` (the provider's, e.g. QEMU's by accelerator and provider.qemu.ssh_wait_seconds), else
    CONNECT_TIMEOUT. Raises UsageError for a value that is not a positive number."""
    raw = os.environ.get(ENV_CONNECT_TIMEOUT, "").strip()
    if not raw:
        return provider_default or CONNECT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not (value > 0 and math.isfinite(value)):
        from ..errors import UsageError

        raise UsageError(f"{ENV_CONNECT_TIMEOUT}={raw!r} is not a number of seconds", hint="e.g. LABCTL_SSH_WAIT=900")
    return value


def wait_for_sshd(
    handshake: Callable[[float], T],
    *,
    node: str,
    address: str,
    timeout: float,
    vm_running: Callable[[], bool] | None,
    cancelled: threading.Event,
    log_path,
    console_log=None,
    longer: str = f"{ENV_CONNECT_TIMEOUT}=<seconds>",
) -> T:
    """handshake(deadline) until it returns; deadline is a time.monotonic() value `timeout` seconds from now.

    Refused connections, timeouts and banner errors (OSError, EOFError, paramiko.SSHException) are retried with
    jittered backoff; a TransportError from the handshake (host key changed, authentication refused) is raised at
    once, since retrying cannot fix it. Raises TransportError when the wait runs out, when `vm_running()` (asked every
    ALIVE_EVERY seconds) says False, or when `cancelled` is set (Ctrl-C). When the wait runs out, the error says
    whether the VM is running (asked once more) and points at `console_log` (the VM's own console: how far its boot
    got) and at `longer` (how to wait longer), besides labctl's node log `log_path`."""
    import paramiko

    started = time.monotonic()
    deadline = started + timeout
    delay, attempts, asked = 0.25, 0, started
    while True:
        if cancelled.is_set():
            raise TransportError(node, "not connecting: interrupted")
        attempts += 1
        try:
            return handshake(deadline)
        except TransportError:
            raise
        except (OSError, EOFError, paramiko.SSHException) as exc:
            # Refused, no route, timeouts, banner errors: a booting VM looks like this for a while.
            last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        now = time.monotonic()
        left = deadline - now
        # A booting VM deserves the whole wait; one that is not running (crashed, stopped) does not.
        stopped = False
        if vm_running is not None and now - asked >= ALIVE_EVERY and left > 0:
            asked = now
            with contextlib.suppress(Exception):  # the provider failing to answer is no verdict on the VM
                stopped = not vm_running()
        if left <= 0 or stopped:
            raise _gave_up(node, address, attempts, last, now - started if stopped else timeout,
                           False if stopped else _ask(vm_running), log_path, console_log, longer)
        # Jitter: nodes booted together should not knock in lockstep. Ctrl-C ends the wait at once.
        cancelled.wait(min(left, delay * random.uniform(0.5, 1.0)))
        delay = min(delay * 2, 3.0)


def _ask(vm_running: Callable[[], bool] | None) -> bool | None:
    """Is the VM running? None when there is no one to ask, or the provider cannot say."""
    if vm_running is None:
        return None
    try:
        return vm_running()
    except Exception:  # noqa: BLE001 - the provider failing to answer is no verdict on the VM
        return None


def _gave_up(node: str, address: str, attempts: int, last: str, waited: float, running: bool | None, log_path,
             console_log, longer: str) -> TransportError:
    """The error for a wait that ran out: what is known about the VM, and where to look next."""
    console = f"its console log {console_log}" if console_log else "the VM's console"
    if running is False:
        why, hint = "its VM is not running", f"`labctl boot` starts it; {console} shows how its last boot ended"
    elif running:
        why = "its VM is running, but sshd does not answer"
        hint = (f"{console} shows how far the boot got (a guest still booting, or stuck); a slow boot (e.g. QEMU "
                f"under TCG) needs a longer wait: {longer}")
    else:
        why = "booting or not reachable yet"
        hint = (f"is the VM running and its address current? `labctl status` shows both; {console} shows how far "
                f"the boot got; a slow first boot may need a longer wait: {longer}")
    return TransportError(
        node, f"cannot connect to {address} within {round(waited, 1):g}s: {why} ({attempts} attempts; last: {last})",
        hint=f"{hint} (labctl's log: {log_path})")
