"""The SSH transport: one paramiko connection per node, reused by every step that touches it.

How a script runs: the remote command line is fixed (`bash -s`, optionally under `timeout` and `sudo`); the script
text goes to bash on stdin, so nothing a phase renders is ever parsed by the remote login shell. Output is logged
to the node's log line by line as it arrives and kept whole for the Result.

Secrets: the password is sent only as the first-contact SSH password (once, before the lab key is installed) and
as sudo's password on stdin (`sudo -S`) when the node asks for one. It never appears on a command line, in a log,
in an error or in .labctl/.

Beside it: sshwait.py (the wait for a booting VM's sshd) and watchdog.py (the answer timer on an open connection).
"""

from __future__ import annotations

import contextlib
import logging
import math
import posixpath
import secrets
import select
import shlex
import socket
import threading
import time
from collections import deque
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import CommandError, TransportError
from . import credentials
from .base import Result, Script
from .credentials import authorize_key, forget_host  # noqa: F401  (destroy and `labctl forget-host` use it)
from .sshwait import CONNECT_TIMEOUT, ENV_CONNECT_TIMEOUT, connect_timeout_default, wait_for_sshd  # noqa: F401
from .watchdog import Watchdog

if TYPE_CHECKING:
    import paramiko

    from ..state import LabState

# paramiko's transport thread logs every refused banner and reset as an ERROR with a traceback; while a VM boots
# those are expected, and labctl reports what finally went wrong itself. A CLI that set a level (-vv) keeps it.
if logging.getLogger("paramiko").level == logging.NOTSET:
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)

# Once connected, every protocol exchange (opening a channel, starting a command, an SFTP call, a keepalive asked
# after this long without output) must be answered within this, or the node counts as hung and the step fails.
ANSWER_TIMEOUT = 60.0
PROBE_TIMEOUT = 10.0  # read-only commands (plan): connect and answer bounds; a booting VM is then "unknown"
KEEPALIVE = 15  # seconds; keeps NAT state alive while a long step prints nothing
KILL_AFTER = 5  # `timeout` sends TERM at the limit and KILL this much later

# sudo -S reads the password up to the first newline and leaves the rest of stdin to the command. The command first
# reads one line and expects this marker: if sudo ever did not ask (the rule became NOPASSWD), the password line
# lands here, is compared and dropped, instead of being executed by bash and echoed in "command not found".
SUDO_MARK = "labctl-sudo-ok"
SUDO_GUARD = (
    f'IFS= read -r line && [ "$line" = {SUDO_MARK} ] '
    '|| { echo "labctl: sudo did not read the password (did the sudo rules change?)" >&2; exit 97; }; exec bash -s'
)

PUT_AS_ROOT = """\
set -eu
src={src}
dst={dst}
tmp=
trap 'rm -f "$src" ${{tmp:+"$tmp"}}' EXIT
mkdir -p "$(dirname "$dst")"
tmp=$(mktemp "$(dirname "$dst")/.$(basename "$dst").labctl-XXXXXX")
cat "$src" > "$tmp"
chmod {mode:o} "$tmp"
mv -f "$tmp" "$dst"
"""


def transport_for(ctx, node) -> SSHTransport:
    # the address Context.transport learned for this run (None while the VM is still booting: then ssh_address waits)
    host, port = ctx.provider.ssh_address(node, ctx.address(node))
    lab = ctx.lab

    def vm_running() -> bool:
        vm = ctx.provider.list().get(node.name)
        return vm is not None and vm.running

    return SSHTransport(
        node.name,
        host,
        port,
        # a static node may have its own user and first-contact key (clusters.json); VMs have the lab's
        user=node.ssh_user or lab.ssh_user,
        state=ctx.state,
        password=lab.ssh_password.get_secret_value() if lab.ssh_password is not None else None,
        first_key=Path(node.ssh_key or lab.ssh_key).expanduser() if (node.ssh_key or lab.ssh_key) else None,
        # shutdown only wants to know whether the guest answers now; install waits for VMs that are booting (as
        # long as the provider says such a boot takes: QEMU under TCG is several times slower than under KVM)
        connect_timeout=ctx.options.get("connect_timeout")
        or connect_timeout_default(ctx.provider.ssh_wait_seconds(node)),
        answer_timeout=ctx.options.get("answer_timeout", ANSWER_TIMEOUT),
        vm_running=vm_running,
        cancelled=getattr(ctx, "cancelled", None),
        console_log=ctx.provider.log_path(node),
        longer=f"provider.qemu.ssh_wait_seconds in clusters.json, or {ENV_CONNECT_TIMEOUT}=<seconds>"
        if lab.provider.type == "qemu" else f"{ENV_CONNECT_TIMEOUT}=<seconds>",
    )


class _Stream:
    """One output stream of a running command: kept whole, and logged in complete lines as they arrive."""

    def __init__(self, log, tail: deque):
        self.chunks: list[bytes] = []
        self._partial: list[bytes] = []
        self._log = log
        self._tail = tail

    def feed(self, data: bytes) -> None:
        self.chunks.append(data)
        head, nl, rest = data.rpartition(b"\n")
        if not nl:  # no line finished yet (and no quadratic re-joining of one very long line)
            self._partial.append(data)
            return
        self._emit(b"".join(self._partial) + head)
        self._partial = [rest] if rest else []

    def finish(self) -> bytes:
        if self._partial:
            self._emit(b"".join(self._partial))
            self._partial = []
        return b"".join(self.chunks)

    def _emit(self, block: bytes) -> None:
        text = block.decode(errors="replace")
        if self._tail.maxlen:
            self._tail.extend(text.splitlines()[-self._tail.maxlen :])
        if self._log is not None:
            self._log(text)


class SSHTransport:
    def __init__(
        self,
        node: str,
        host: str,
        port: int = 22,
        *,
        user: str,
        state: LabState,
        password: str | None = None,
        first_key: Path | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        answer_timeout: float = ANSWER_TIMEOUT,
        vm_running: Callable[[], bool] | None = None,
        cancelled: threading.Event | None = None,
        console_log: Path | None = None,
        longer: str = f"{ENV_CONNECT_TIMEOUT}=<seconds>",
    ):
        """connect_timeout: seconds to wait for sshd (a booting VM), cut short when `vm_running()` says False;
        console_log, longer: what the error of a wait that ran out points at (the VM's console; how to wait longer);
        answer_timeout: seconds any exchange on an open connection may go unanswered before the node counts as hung;
        cancelled: once set (Ctrl-C), no new connection or command is started."""
        self.node, self.host, self.port, self.user = node, host, port, user
        self.state = state
        self.first_key = first_key
        self.connect_timeout = connect_timeout
        self.answer_timeout = answer_timeout
        self._vm_running = vm_running
        self._console_log, self._longer = console_log, longer
        self._cancelled = cancelled or threading.Event()
        self._password = password
        self._lock = threading.RLock()  # re-entered when a connection drops during bootstrap
        self._transport: paramiko.Transport | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._sudo_asks: bool | None = None

    def __repr__(self) -> str:  # never the password
        return f"SSHTransport({self.node} {self.user}@{self.host}:{self.port})"

    # -- the Transport contract ----------------------------------------------------------------------------------
    def run(self, script: Script, *, sudo: bool = False, timeout: float | None = None, check: bool = True) -> Result:
        self._not_cancelled(script.id)
        rc, out, err, tail = self._exec(self._connected(), script, sudo=sudo, timeout=timeout)
        result = Result(rc, out.decode(errors="replace"), err.decode(errors="replace"))
        if check and rc != 0:
            error = CommandError(self.node, script.id, rc, "\n".join(tail))
            if sudo and self._sudo_asks and any("incorrect password" in line for line in tail):
                error.hint = f"ssh_password in clusters.json is not {self.user}'s sudo password on {self.node}"
            raise error
        return result

    def put(self, path: str, data: bytes, mode: int = 0o644, *, sudo: bool = False) -> None:
        what = f"put {path}"
        self._not_cancelled(what)
        sftp = self._sftp_client(what)
        token = secrets.token_hex(6)
        if sudo:
            # Stage in the login user's home (private, 0600), then root copies it into place and renames it.
            staged = posixpath.join(self._sftp_op(what, sftp.normalize, "."), f".labctl-put-{token}")
            self._sftp_write(what, sftp, staged, data, 0o600)
            script = PUT_AS_ROOT.format(src=shlex.quote(staged), dst=shlex.quote(path), mode=mode)
            try:
                self.run(Script(what, script), sudo=True)  # the script removes the staged copy itself ...
            except CommandError:
                with contextlib.suppress(Exception):  # ... unless sudo never ran it
                    sftp.remove(staged)
                raise
            return
        parent = posixpath.dirname(path) or "."
        self._sftp_op(what, self._makedirs, sftp, parent)
        tmp = posixpath.join(parent, f".{posixpath.basename(path)}.labctl-{token}")
        try:
            self._sftp_write(what, sftp, tmp, data, mode)
            self._sftp_op(what, sftp.posix_rename, tmp, path)  # rename(2): readers see the old or the new file
        except CommandError:
            with contextlib.suppress(Exception):
                sftp.remove(tmp)
            raise
        self.state.log(self.node, f"$ {what} ({len(data)} bytes, mode {mode:o})")

    def get(self, path: str, *, sudo: bool = False) -> bytes:
        what = f"get {path}"
        self._not_cancelled(what)
        if sudo:
            # quiet: what a root-only file holds (keys, kubeconfigs) does not belong in the node log.
            script = Script(what, f"cat -- {shlex.quote(path)}\n")
            rc, out, _, tail = self._exec(self._connected(), script, sudo=True, quiet=True)
            if rc != 0:
                raise CommandError(self.node, what, rc, "\n".join(tail))
            return out
        sftp = self._sftp_client(what)

        def read() -> bytes:
            with sftp.open(path, "rb") as f:
                f.prefetch()  # pipelined reads: one round trip per chunk is slow for large files
                return f.read()

        return self._sftp_op(what, read)

    def close(self) -> None:
        with self._lock:
            self._drop()

    def abort(self) -> None:
        """Close the connection without waiting for the lock: wakes every thread blocked on this node (Ctrl-C)."""
        t = self._transport
        if t is not None:
            t.close()

    def _not_cancelled(self, what: str) -> None:
        if self._cancelled.is_set():
            raise CommandError(self.node, what, None, "", reason="not started: interrupted")

    def _no_answer(self, what: str, seconds: float) -> TransportError:
        """The connection was closed because the node stopped answering; the next use reconnects."""
        with self._lock:
            self._drop()
        self.state.log(self.node, f"= {what}: no answer within {seconds:g}s")
        return TransportError(
            self.node,
            f"no answer within {seconds:g} s ({what}; the SSH connection is open but the node stopped responding)",
            hint="the VM may be frozen or badly overloaded: `labctl status` shows it; restart it with "
            f"`labctl shutdown` and `labctl boot` (log: {self.state.node_log(self.node)})",
        )

    # -- connecting ----------------------------------------------------------------------------------------------
    def _connected(self) -> paramiko.Transport:
        """The live connection; (re)connects after a first use, a reboot or a dropped connection."""
        with self._lock:
            if self._transport is None or not self._transport.is_active():
                self._drop()
                self._transport = self._connect()
            return self._transport

    def _drop(self) -> None:
        if self._sftp is not None:
            self._sftp.close()
        if self._transport is not None:
            self._transport.close()
        self._sftp = self._transport = None

    def _connect(self) -> paramiko.Transport:
        # Local files first, outside the retry loop: a missing key file is no reason to retry.
        key = credentials.lab_key(self.state)
        first = credentials.load_key(self.node, self.first_key) if self.first_key else None
        return wait_for_sshd(
            lambda deadline: self._handshake(key, first, deadline),
            node=self.node,
            address=f"{self.host}:{self.port}",
            timeout=self.connect_timeout,
            vm_running=self._vm_running,
            cancelled=self._cancelled,
            log_path=self.state.node_log(self.node),
            console_log=self._console_log,
            longer=self._longer,
        )

    def _handshake(self, key: paramiko.PKey, first: paramiko.PKey | None, deadline: float) -> paramiko.Transport:
        import paramiko

        left = max(deadline - time.monotonic(), 0.5)
        sock = socket.create_connection((self.host, self.port), timeout=min(left, 10))
        t = paramiko.Transport(sock)
        t.banner_timeout = min(left, 15)  # a half-started sshd accepts and then says nothing
        try:
            credentials.prefer_pinned(self.state, self.node, t)
            t.start_client(timeout=min(left, 30))
            credentials.check_host_key(self.state, self.node, f"{self.host}:{self.port}", t.get_remote_server_key())
            how = self._authenticate(t, key, first)
            t.set_keepalive(KEEPALIVE)
        except BaseException:
            t.close()
            raise
        self.state.log(self.node, f"connected to {self.user}@{self.host}:{self.port} ({how})")
        return t

    def _authenticate(self, t: paramiko.Transport, key: paramiko.PKey, first: paramiko.PKey | None) -> str:
        import paramiko

        try:
            t.auth_publickey(self.user, key)
            return "labctl key"  # the password is never sent once the key works
        except paramiko.AuthenticationException:
            pass  # first contact, or the VM was recreated: bootstrap below
        what = f"ssh_key {self.first_key}" if self.first_key else "ssh_password"
        try:
            if first is not None:
                t.auth_publickey(self.user, first)
            elif self._password is not None:
                t.auth_password(self.user, self._password)  # falls back to keyboard-interactive by itself
            else:
                raise paramiko.AuthenticationException("no first-contact credential configured")
        except paramiko.AuthenticationException as exc:
            raise TransportError(
                self.node,
                f"{self.user}@{self.host}:{self.port} refused the labctl key and the configured {what} ({exc})",
                hint="check ssh_user and ssh_password (or ssh_key) in clusters.json",
            ) from None
        rc, _, _, tail = self._exec(t, authorize_key(key))
        if rc != 0:
            raise TransportError(self.node, "could not install the labctl key:\n" + "\n".join(tail))
        return f"{what}; installed the labctl key"

    # -- running -------------------------------------------------------------------------------------------------
    def _exec(self, t, script: Script, *, sudo=False, timeout=None, quiet=False):
        """Run one script; returns (rc, stdout, stderr, tail of the interleaved output)."""
        import paramiko

        command, stdin = self._command(t, sudo, timeout)
        stdin += script.text.encode() + (b"" if script.text.endswith("\n") else b"\n")
        self.state.log(self.node, f"$ {script.id}{' (sudo)' if sudo else ''}")
        tail: deque[str] = deque(maxlen=CommandError.TAIL_LINES)
        log = lambda text: self.state.log(self.node, text)  # noqa: E731
        out, err = _Stream(None if quiet else log, deque(maxlen=0) if quiet else tail), _Stream(log, tail)
        started = time.monotonic()
        # The node enforces the limit (`timeout` kills the whole process group); this is the backstop when it can't.
        # It counts from before the channel is opened: a node that never opens one is no faster than a slow command.
        deadline = started + timeout + KILL_AFTER + 5 if timeout else None
        chan = None
        watchdog = Watchdog(t)
        try:
            # Opening the channel, starting the command and handing it the script are answered at once by a live
            # sshd; paramiko would wait an hour (open) or forever (exec) for one that is frozen.
            watchdog.arm(self.answer_timeout)
            chan = t.open_session(timeout=self.answer_timeout)
            chan.exec_command(command)
            try:
                chan.sendall(stdin)
                chan.shutdown_write()
            except OSError:
                pass  # the command ended without reading its script (e.g. sudo refused); its exit status says why
            watchdog.disarm()
            timed_out = not self._collect(t, chan, out, err, deadline, watchdog)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            timed_out, why = False, f"{type(exc).__name__}: {exc}"
        else:
            why = "the connection closed"
        finally:
            watchdog.disarm()
            if chan is not None and not watchdog.fired:
                chan.close()
        stdout, stderr = out.finish(), err.finish()
        if watchdog.fired:
            raise self._no_answer(script.id, self.answer_timeout)
        elapsed = time.monotonic() - started
        rc = chan.exit_status if chan is not None and chan.exit_status_ready() else -1
        if timed_out or (timeout and rc in (124, 137) and elapsed >= timeout):
            self.state.log(self.node, f"= {script.id}: timed out after {timeout:g}s")
            raise CommandError(self.node, script.id, None, "\n".join(tail), reason=f"timed out after {timeout:g}s")
        if rc == -1:  # no exit status: the connection dropped (or the process died by a signal)
            # A dropped connection closes the channel without the EOF that ends every finished command.
            if chan is None or not chan.eof_received or not t.is_active():
                with self._lock:
                    if self._transport is t:
                        self._drop()  # the next use reconnects
                reason = f"lost the connection to {self.host}:{self.port} ({why})"
            else:
                reason = "was killed by a signal"
            self.state.log(self.node, f"= {script.id}: {reason}")
            raise CommandError(self.node, script.id, None, "\n".join(tail), reason=reason)
        self.state.log(self.node, f"= {script.id}: exit {rc} ({elapsed:.1f}s)")
        return rc, stdout, stderr, list(tail)

    def _collect(self, t, chan, out: _Stream, err: _Stream, deadline: float | None, watchdog: Watchdog) -> bool:
        """Read both streams until the channel ends. False when the deadline passed first.

        A command may print nothing for minutes; after answer_timeout of silence the server is asked a keepalive
        (OpenSSH answers even refusing it), and one that does not answer either is hung: the watchdog closes the
        connection, which ends this loop."""
        heard = time.monotonic()
        while True:
            while chan.recv_ready():
                out.feed(chan.recv(65536))
                heard = time.monotonic()
            while chan.recv_stderr_ready():
                err.feed(chan.recv_stderr(65536))
                heard = time.monotonic()
            if chan.eof_received or chan.closed:  # all data arrives before EOF, and was just drained
                break
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return False
            if now - heard >= self.answer_timeout:
                watchdog.arm(self.answer_timeout)
                t.global_request("keepalive@openssh.com", wait=True)  # returns early when the watchdog closes t
                watchdog.disarm()
                heard = time.monotonic()
                continue
            # The channel's fileno wakes on stdout, stderr and EOF; the cap bounds how late a deadline is noticed.
            select.select([chan], [], [], 1.0)
        chan.status_event.wait(5)  # exit-status travels beside EOF
        return True

    def _command(self, t, sudo: bool, timeout: float | None) -> tuple[str, bytes]:
        """The fixed remote command line (no script data in it) and what goes on stdin before the script."""
        inner, prefix = "bash -s", b""
        if sudo and self._sudo_needs_password(t):
            inner = f"bash -c {shlex.quote(SUDO_GUARD)}"
            prefix = f"{self._password}\n{SUDO_MARK}\n".encode()
        if timeout:
            inner = f"timeout -k {KILL_AFTER} {math.ceil(timeout)} {inner}"
        if sudo:
            inner = ("sudo -S -k -p '' -- " if self._sudo_asks else "sudo -n -- ") + inner
        return inner, prefix

    def _sudo_needs_password(self, t) -> bool:
        if self._sudo_asks is None:
            rc, _, _, _ = self._exec(t, Script("sudo.probe", "sudo -n true 2>/dev/null\n"))
            if rc != 0 and self._password is None:
                raise TransportError(
                    self.node,
                    f"sudo needs a password for {self.user} and none is configured",
                    hint=f"set ssh_password in clusters.json, or allow {self.user} passwordless sudo on the node",
                )
            self._sudo_asks = rc != 0
        return self._sudo_asks

    # -- files ---------------------------------------------------------------------------------------------------
    def _sftp_client(self, what: str) -> paramiko.SFTPClient:
        t = self._connected()
        with self._lock:
            if self._sftp is None:
                self._sftp = self._sftp_op(what, t.open_sftp_client)
            return self._sftp

    def _sftp_op(self, what: str, fn, *args, seconds: float | None = None):
        """fn(*args) on the SFTP session, answered within `seconds` (default answer_timeout) or TransportError."""
        import paramiko

        seconds = seconds or self.answer_timeout
        watchdog = Watchdog(self._transport) if self._transport is not None else None
        try:
            if watchdog is not None:
                watchdog.arm(seconds)
            return fn(*args)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            if watchdog is not None and watchdog.fired:
                raise self._no_answer(what, seconds) from None
            t = self._transport
            if t is None or not t.is_active():
                with self._lock:
                    self._drop()
                raise CommandError(self.node, what, None, "", reason=f"lost the connection ({exc})") from None
            detail = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise CommandError(self.node, what, None, "", reason=f"failed: {detail}") from None
        finally:
            if watchdog is not None:
                watchdog.disarm()

    def _sftp_write(self, what: str, sftp, path: str, data: bytes, mode: int) -> None:
        def write() -> None:
            with sftp.open(path, "wx") as f:  # x: never write through something already there
                sftp.chmod(path, mode)  # before the data, so a private file is never readable by others
                f.set_pipelined(True)
                f.write(data)

        # a large file may take a while on a slow link: one more second per MB beyond the answer bound
        self._sftp_op(what, write, seconds=self.answer_timeout + len(data) / 1e6)

    @staticmethod
    def _makedirs(sftp, path: str) -> None:
        missing = []
        while path not in ("", "/", "."):
            try:
                sftp.stat(path)
                break
            except FileNotFoundError:
                missing.append(path)
                path = posixpath.dirname(path)
        for p in reversed(missing):
            sftp.mkdir(p, 0o755)
