"""How labctl reaches a simulated node.

- `SimTransport`: the Transport protocol over one SimNode, like one SSH connection. It answers each script by its
  id through `SimNode.execute` (the shell text is never parsed) and dies with the boot it was opened in: a node
  whose VM is not running, or that rebooted or hung under an open connection, is an unreachable host
  (TransportError). Files labctl `put`s are kept on the node and read back by the simulated kubeadm and Helm.
- `BannerServer`: the node's SSH server as `labctl status` knocks on it: the banner, while the VM runs at that
  address and is not hung.
- `SimKilled`: labctl "died" at this point (crash injection, SimLab.crash_at).
"""

from __future__ import annotations

import socketserver
import threading
from typing import TYPE_CHECKING

from labctl.errors import CommandError, TransportError
from labctl.remote.base import Result, Script
from labctl.state import LabState

if TYPE_CHECKING:
    from tests.sim.sim_lab import SimLab
    from tests.sim.sim_node import SimNode

SSH_BANNER = b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13.5 (labctl sim)\r\n"


class SimKilled(BaseException):  # not an Exception: no phase may catch it, labctl "died" there
    """labctl was killed at this point (crash injection). A BaseException, so no phase can swallow it."""


class BannerServer(socketserver.ThreadingTCPServer):
    """A node's SSH port at one address, as `status` knocks on it (SimLab.ssh_port)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, node: SimNode, address: str):
        self.node = node
        self.address = address
        super().__init__((address, 0), _BannerHandler)
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
                                       name=f"sim-sshd-{node.name}")
        self.thread.start()


class _BannerHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        node: SimNode = self.server.node
        if node.hung.is_set():
            node.swallow(self.request)  # the banner never comes
            return
        running, address, _ = node.vm_state()
        if running and address == self.server.address:
            self.request.sendall(SSH_BANNER)


class SimTransport:
    """The Transport protocol over one SimNode, like one SSH connection: it dies with the boot it was opened in."""

    def __init__(self, lab: SimLab, node: SimNode, state: LabState, address: str, boot: int):
        self.lab, self.sim, self.state = lab, node, state
        self.node = node.name
        self.address, self.boot = address, boot
        self.closed = False

    def _alive(self) -> str:
        if self.lab.killed:
            raise SimKilled(self.node)
        running, address, boot = self.sim.observe()
        if self.closed:
            raise TransportError(self.node, "the connection was closed")
        if not running or address != self.address or boot != self.boot:
            raise TransportError(self.node, f"lost the connection to {self.address}:22 (the VM stopped or restarted)",
                                 hint="`labctl status` shows the VM")
        if self.sim.hung.is_set():
            raise TransportError(self.node, f"connection to {self.address}:22 timed out")
        return address

    def run(self, script: Script, *, sudo: bool = False, timeout: float | None = None, check: bool = True) -> Result:
        address = self._alive()
        applied = self.lab.before_script(self.sim, script)
        self.state.log(self.node, f"$ {script.id}{' (sudo)' if sudo else ''}")
        rule = self.lab.injected(self.node, script.id)
        if rule is not None:
            rc, out = rule.rc, rule.output
        elif applied is False:  # killed before the node ran it
            raise SimKilled(self.node)
        else:
            rc, out = self.sim.execute(script, address)
        if script.id != "facts":  # like the SSH transport's log: the facts JSON is not worth a node log
            for line in out.splitlines():
                self.state.log(self.node, line)
        self.state.log(self.node, f"= {script.id}: exit {rc}")
        if applied is not None:  # the crash point: the node ran the command, labctl never heard back
            raise SimKilled(self.node)
        if check and rc != 0:
            raise CommandError(self.node, script.id, rc, out)
        return Result(rc, out)  # one stream: the simulated commands do not tell stdout from stderr

    def put(self, path: str, data: bytes, mode: int = 0o644, *, sudo: bool = False) -> None:
        self._alive()
        self.lab.before_io(self.sim, f"put {path}")
        with self.sim.lock:
            self.sim.files[path] = bytes(data)
        self.state.log(self.node, f"$ put {path} ({len(data)} bytes, mode {mode:o})")

    def get(self, path: str, *, sudo: bool = False) -> bytes:
        self._alive()
        self.lab.before_io(self.sim, f"get {path}")
        with self.sim.lock:
            data = self.sim.read(path)
        if data is None:
            raise CommandError(self.node, f"get {path}", 1, f"cat: {path}: No such file or directory")
        return data

    def close(self) -> None:
        self.closed = True
