"""Tart in the simulated lab: the real TartProvider drives the fake `tart` (tests/sim/fake_tart.py) on PATH.

- `SimTartProvider` only adds observation hooks (after a call that can start, stop, move or delete a VM the
  simulated world catches up, e.g. an API server moves to a VM's new address), the latency model, and the port of
  the node's simulated SSH server for `status`. `WorldSync`: the part of those hooks the Orchard provider's
  (tests/sim/sim_orchard.py) shares.
- `TartForkServer`: an install makes a few hundred tart calls, so the fake tart is served from a preloaded fork
  server (same code, same behaviour).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from labctl.providers.tart import TartProvider
from tests.sim.fake_tart import FakeTart, wait_for

if TYPE_CHECKING:
    from tests.sim.sim_lab import SimLab


class WorldSync:
    """What a simulated VM provider adds to the real one (mixed in before it, e.g. `class P(WorldSync,
    TartProvider)`) to keep the simulated world in step: after a call that can start a VM or learn its address
    the API servers follow, a deleted lab VM leaves the world (`vm_gone`), and `ssh_address` names the port of
    the node's simulated SSH server (the real one says 22, which only root could bind here)."""

    def __init__(self, lab, state, sim: SimLab):
        super().__init__(lab, state=state)
        self.sim = sim

    def ip(self, node, wait: int = 0, *, running: bool = False):
        address = super().ip(node, wait, running=running)
        self.sim.sync()  # the host learns an address only after the simulated world has it
        return address

    def start(self, node) -> bool:
        try:
            return super().start(node)
        finally:
            self.sim.sync()

    def vm_gone(self, name: str) -> None:
        """After a delete (successful or not): a lab node whose VM the fake tart no longer has leaves the world."""
        if name in self.sim.nodes and not self.sim.fake.exists(name):
            self.sim.vm_deleted(name)
        self.sim.sync()

    def ssh_address(self, node, address: str | None = None) -> tuple[str, int]:
        host, _ = super().ssh_address(node, address)
        return host, self.sim.ssh_port(node.name, host)


class SimTartProvider(WorldSync, TartProvider):
    """The real TartProvider (the fake tart on PATH does the work) with the simulated world kept in step
    (WorldSync; also after a stop, a clone or a golden image's VMs) and the latency model (`before_tart`)."""

    POLL = 0.02  # the fake `run` takes tart's lock as soon as it starts; the real default waits 100 ms per look

    def _tart(self, args, vm=None, **kwargs):
        self.sim.before_tart(args)
        return super()._tart(args, vm, **kwargs)

    def stop(self, node, timeout: float = 60, *, guest_poweroff: bool = False) -> str:
        try:
            return super().stop(node, timeout, guest_poweroff=guest_poweroff)
        finally:
            self.sim.sync()

    def delete(self, node) -> bool:
        try:
            return super().delete(node)
        finally:
            self.vm_gone(node if isinstance(node, str) else node.name)

    def clone_vm(self, source: str, target: str) -> None:
        super().clone_vm(source, target)
        self.sim.vm_cloned(source, target)  # the copy carries the guest's disk: what the simulated world holds
        self.sim.sync()

    def delete_vm(self, name: str) -> bool:
        try:
            return super().delete_vm(name)
        finally:
            if not self.sim.fake.exists(name):
                self.sim.disks.pop(name, None)

    def create(self, node, image: str | None = None) -> bool:
        created = super().create(node, image=image)
        if created and image is not None:  # a clone of a golden image: its disk, what the build VM's guest held
            self.sim.vm_cloned(image, node.name)
            self.sim.sync()
        return created

    def keep_golden(self, build_vm: str, name: str) -> None:
        self.sim.disks[build_vm] = self.sim.guest_disk(build_vm)  # the build VM is no lab node: its guest's disk
        try:
            super().keep_golden(build_vm, name)
        finally:
            self.sim.disks.pop(build_vm, None)


class TartForkServer:
    """Serves the fake tart's short calls from one preloaded process.

    Every tart call is a new interpreter that imports the fake (~50 ms of CPU), and an install makes a few
    hundred of them. The `tart` on PATH becomes a minimal client (~15 ms) that hands its argv, environment and
    stdio to a fork server in which the fake is already imported; the forked child runs the very same
    `fake_tart.main`, so behaviour, calls.jsonl and exit codes are unchanged. `tart run` (a long-lived process
    whose PID labctl signals) and any call made while the server is down run the fake directly, as before.
    """

    def __init__(self, fake: FakeTart):
        here = str(Path(__file__).resolve().parent)
        self.dir = Path(tempfile.mkdtemp(prefix="labctl-sim-"))  # short: a socket path has ~100 bytes
        sock = str(self.dir / "tart.sock")
        self.process = subprocess.Popen([sys.executable, "-S", "-c", _TART_SERVER, sock, here],
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        fake.exe.write_text(_TART_CLIENT.format(python=sys.executable, sock=sock, here=here))
        wait_for(lambda: Path(sock).exists() or self.process.poll() is not None, 10, "the tart fork server")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


# The `tart` on PATH: hand the call to the fork server, or run the fake itself (see TartForkServer).
_TART_CLIENT = """#!{python} -S
import _socket, array, marshal, os, sys
argv = sys.argv[1:]
if argv[:1] != ["run"]:
    try:
        s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        s.connect({sock!r})
    except OSError:
        s = None
    if s is not None:
        data = marshal.dumps((argv, dict(os.environ), os.getcwd()))
        s.sendmsg([len(data).to_bytes(4, "big") + data],
                  [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, array.array("i", [0, 1, 2]))])
        rc = b""
        while len(rc) < 4:
            chunk = s.recv(4 - len(rc))
            if not chunk:
                break
            rc += chunk
        sys.exit(int.from_bytes(rc, "big", signed=True) if len(rc) == 4 else 70)
sys.path.insert(0, {here!r})
import fake_tart
sys.exit(fake_tart.main(argv))
"""

_TART_SERVER = """
import marshal, os, signal, socket, sys, traceback
sock_path, here = sys.argv[1], sys.argv[2]
sys.path.insert(0, here)
import fake_tart
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(sock_path)
server.listen(128)
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children reap themselves; each sends its exit code back
while True:
    conn, _ = server.accept()
    if os.fork():
        conn.close()
        continue
    server.close()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    msg, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
    size = int.from_bytes(msg[:4], "big")
    while len(msg) < 4 + size:
        msg += conn.recv(1 << 20)
    argv, env, cwd = marshal.loads(msg[4:4 + size])
    for number, fd in enumerate(fds):
        os.dup2(fd, number)
        os.close(fd)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    fake_tart.LEASE_PREFIX = env.get("FAKE_TART_LEASE_PREFIX", "127.64.0")  # read at import in the fake
    try:
        rc = fake_tart.main(argv)
    except BaseException:
        traceback.print_exc()
        rc = 70
    sys.stdout.flush()
    sys.stderr.flush()
    conn.sendall(int(rc or 0).to_bytes(4, "big", signed=True))
    os._exit(0)
"""
