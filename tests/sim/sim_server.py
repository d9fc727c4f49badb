"""The simulated nodes served to `labctl` in another process (benchmarks/_simclient.py is that process's side):
one Unix-socket connection per node "SSH connection", then `run`/`put`/`get` by call. Used by the command
benchmark (benchmarks/commands.py) and by Terraform's local-exec provisioners (tests/sim/test_sim_terraform.py).
"""

from __future__ import annotations

import threading
import time
from multiprocessing.connection import Listener

from tests.sim.sim_lab import SimLab
from tests.sim.sim_transport import SimTransport


class _Unlogged:
    def log(self, node: str, text: str) -> None:
        pass


class SimServer:
    """Serves the simulated nodes' scripts to the measured labctl process (see _simclient.py)."""

    def __init__(self, sim: SimLab, path: str, authkey: bytes):
        self.sim, self.latency = sim, 0.0
        self.listener = Listener(path, family="AF_UNIX", authkey=authkey)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn) -> None:
        transport: SimTransport | None = None
        try:
            while True:
                op, args, kwargs = conn.recv()
                try:
                    if op == "ssh_port":
                        out = self.sim.ssh_port(*args)
                    elif op == "open":
                        node = self.sim.nodes[args[0]]
                        running, address, boot = node.observe()
                        if self.latency:
                            time.sleep(self.latency)  # the modelled SSH handshake
                        # the node log is the client's to write (_simclient.RemoteTransport): only that process
                        # knows the secrets it must mask, as with a real SSH connection
                        transport = SimTransport(self.sim, node, _Unlogged(), address, boot)
                        out = None
                    else:
                        out = getattr(transport, op)(*args, **kwargs)
                    conn.send(("ok", out))
                except Exception as exc:  # noqa: BLE001 - handed to the client, which raises it there
                    conn.send(("err", exc))
        except (EOFError, OSError):
            return

    def close(self) -> None:
        self.listener.close()
