"""The measured side of benchmarks/commands.py: `labctl` in a fresh process, its SSH reaching the simulated nodes
that the benchmark process serves over a Unix socket (LABCTL_BENCH_SIM, LABCTL_BENCH_KEY).

Everything else is labctl's own: the real TartProvider on the fake tart, the real Kube facade on the simulated API
servers. Two additions to the provider: the modelled latency of each tart command (LABCTL_BENCH_TART_LATENCY, JSON
"tart:<command>" → seconds) and the port of the node's simulated sshd (the real one is 22, which only root could
bind here). Kept small: its import is part of what is measured.
"""

from __future__ import annotations

import json
import os
import sys
import time
from multiprocessing.connection import Client


def _connect():
    return Client(os.environ["LABCTL_BENCH_SIM"], family="AF_UNIX", authkey=bytes.fromhex(os.environ["LABCTL_BENCH_KEY"]))


def _ask(conn, op: str, *args, **kwargs):
    conn.send((op, args, kwargs))
    status, value = conn.recv()
    if status == "err":
        raise value
    return value


class RemoteTransport:
    """The Transport protocol (labctl.remote.base) over one simulated node, like one SSH connection."""

    def __init__(self, node: str, state):
        self.node, self._state = node, state
        self._conn = _connect()
        _ask(self._conn, "open", node)

    def run(self, script, *, sudo: bool = False, timeout: float | None = None, check: bool = True):
        # logged here, like the SSH transport does: this process registered the secrets the log must not show
        from labctl.errors import CommandError

        self._state.log(self.node, f"$ {script.id}{' (sudo)' if sudo else ''}")
        result = _ask(self._conn, "run", script, sudo=sudo, timeout=timeout, check=False)
        if script.id != "facts":
            self._state.log(self.node, result.stdout)
        self._state.log(self.node, f"= {script.id}: exit {result.rc}")
        if check and result.rc != 0:
            raise CommandError(self.node, script.id, result.rc, result.stdout)
        return result

    def put(self, path: str, data: bytes, mode: int = 0o644, *, sudo: bool = False) -> None:
        self._state.log(self.node, f"$ put {path} ({len(data)} bytes, mode {mode:o})")
        _ask(self._conn, "put", path, data, mode, sudo=sudo)

    def get(self, path: str, *, sudo: bool = False) -> bytes:
        return _ask(self._conn, "get", path, sudo=sudo)

    def close(self) -> None:
        self._conn.close()


def _provider(lab, **kwargs):
    from labctl.providers.tart import TartProvider

    latency = json.loads(os.environ.get("LABCTL_BENCH_TART_LATENCY") or "{}")

    class BenchTart(TartProvider):
        def _tart(self, args, vm=None, **kw):
            time.sleep(latency.get(f"tart:{args[0]}", 0.0))
            return super()._tart(args, vm, **kw)

        def ssh_address(self, node, address=None):
            host, _ = super().ssh_address(node, address)
            conn = _connect()
            try:
                return host, _ask(conn, "ssh_port", node.name, host)
            finally:
                conn.close()

    kwargs.pop("notify", None)
    return BenchTart(lab, **kwargs)


def _transport(ctx, node):
    ctx.provider.ssh_address(node, ctx.address(node))  # what labctl.remote.ssh.transport_for asks the provider
    return RemoteTransport(node.name, ctx.state)


def main() -> None:
    from labctl import lab, providers
    from labctl.cli import main as labctl

    providers.get = _provider
    lab.CONTEXT_OVERRIDES["transport_factory"] = _transport
    sys.argv = ["labctl", *sys.argv[1:]]
    labctl()
