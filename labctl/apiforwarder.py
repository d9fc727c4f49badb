"""The host's API forwarder process itself (`python -m labctl.apiforwarder <lab dir>`); labctl/apiproxy.py is what
install, boot, status and destroy call: the routes file, starting and stopping this process.

One process serves every HA cluster of the lab (one listener on 127.0.0.1 each, from .labctl/apiproxy.json, read
again when its mtime changes). Each TCP connection goes to the first master that accepts one, preferring those
whose API server answered its last `GET /readyz` (apiproxy.readyz, asked every CHECK_SECONDS, like the workers'
HAProxy). TLS goes end to end, untouched: the forwarder sees bytes only. It holds .labctl/apiproxy.lock while it
runs and writes its pid to .labctl/apiproxy.pid once it listens (docs/ha.md "From the host").
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from labctl.apiproxy import HOST, LOCKFILE, PIDFILE, read_routes, readyz, routes_path
from labctl.state import write_atomic

CONNECT_TIMEOUT = 2.0  # seconds per backend: a master on the host's own VM network accepts in milliseconds
RELOAD_SECONDS = 0.5  # how often the forwarder looks at apiproxy.json's mtime
CHECK_SECONDS = 2.0  # how often each backend's /readyz is asked (haproxy's `inter` on the workers is of this order)
BUFFER = 64 * 1024

log = logging.getLogger("labctl.apiforwarder")


class Forwarder:
    """The asyncio server: one listener per cluster of apiproxy.json, reloaded when the file changes."""

    def __init__(self, root: Path):
        self.root = root
        self.servers: dict[str, tuple[int, asyncio.AbstractServer]] = {}
        self.last_good: dict[str, tuple[str, int]] = {}
        self.routes: dict[str, dict[str, Any]] = {}
        self._stamp: tuple[int, int] | None = None
        self.stopping = asyncio.Event()
        # (host, port) → did its API server answer GET /readyz with 200 at the last check (absent: not asked yet)
        self.ready: dict[tuple[str, int], bool] = {}

    def _changed(self) -> bool:
        try:
            st = routes_path(self.root).stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        return True

    async def reload(self) -> None:
        if not self._changed():
            return
        self.routes = read_routes(self.root)
        for name, (port, server) in list(self.servers.items()):
            if self.routes.get(name, {}).get("port") != port:
                server.close()
                del self.servers[name]
                log.info("%s: listener on %s:%d closed", name, HOST, port)
        for name, entry in self.routes.items():
            if name in self.servers:
                continue
            try:
                server = await asyncio.start_server(lambda r, w, n=name: self.handle(n, r, w), HOST, entry["port"])
            except OSError as exc:
                log.error("%s: cannot listen on %s:%d (%s)", name, HOST, entry["port"], exc.strerror or exc)
                continue
            self.servers[name] = (entry["port"], server)
            log.info("%s: listening on %s:%d", name, HOST, entry["port"])

    def candidates(self, cluster: str) -> list[tuple[str, int]]:
        """The cluster's backends to try in order: those whose last health check passed (or that were not checked
        yet) before those whose check failed, and within each the last one that accepted first. A failed check
        only demotes: when every check fails the backends are still tried (the checks may be what is wrong)."""
        backends = [(b["host"], b["port"]) for b in self.routes.get(cluster, {}).get("backends", [])]
        good = self.last_good.get(cluster)
        ordered = ([good] if good in backends else []) + [b for b in backends if b != good]
        return [b for b in ordered if self.ready.get(b, True)] + [b for b in ordered if not self.ready.get(b, True)]

    async def check_all(self) -> None:
        targets = sorted({(b["host"], b["port"]) for e in self.routes.values() for b in e.get("backends", [])})
        results = await asyncio.gather(*(asyncio.to_thread(readyz, *t, CONNECT_TIMEOUT) for t in targets))
        for target, ok in zip(targets, results, strict=True):
            if self.ready.get(target) != ok:
                log.info("%s:%d %s", *target, "ready" if ok else "not ready (GET /readyz)")
            self.ready[target] = ok

    async def checking(self) -> None:
        while not self.stopping.is_set():
            await self.check_all()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), CHECK_SECONDS)

    async def handle(self, cluster: str, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            for host, port in self.candidates(cluster):
                try:
                    up_r, up_w = await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT)
                except (OSError, asyncio.TimeoutError) as exc:
                    log.warning("%s: %s:%d does not accept (%s)", cluster, host, port,
                                getattr(exc, "strerror", None) or type(exc).__name__)
                    continue
                if self.last_good.get(cluster) != (host, port):
                    log.info("%s: forwarding to %s:%d", cluster, host, port)
                self.last_good[cluster] = (host, port)
                await self._pipe(client_r, client_w, up_r, up_w)
                return
            log.error("%s: no master accepts a connection", cluster)
        finally:
            await _close(client_w)

    @staticmethod
    async def _pipe(client_r, client_w, up_r, up_w) -> None:
        """Copy both ways until one side closes or fails; then close both (a master that went away mid-connection
        costs that connection only: the client reconnects and gets the next master)."""
        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await src.read(BUFFER):
                    dst.write(data)
                    await dst.drain()

        tasks = [asyncio.ensure_future(copy(client_r, up_w)), asyncio.ensure_future(copy(up_r, client_w))]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await _close(up_w)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, self.stopping.set)
        await self.reload()
        checker = asyncio.ensure_future(self.checking())
        write_atomic(self.root / PIDFILE, f"{os.getpid()}\n", 0o600)
        log.info("forwarder running (pid %d)", os.getpid())
        while not self.stopping.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), RELOAD_SECONDS)
            if not self.root.is_dir():
                break  # the lab was destroyed under it
            await self.reload()
        checker.cancel()
        for _, server in self.servers.values():
            server.close()
        with contextlib.suppress(OSError):
            if (self.root / PIDFILE).read_text().strip() == str(os.getpid()):
                (self.root / PIDFILE).unlink()
        log.info("forwarder stopped")


async def _close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, RuntimeError):
        writer.close()
        await writer.wait_closed()


def serve(lab_dir: Path) -> int:
    """Run the forwarder in this process until SIGTERM/SIGINT (`python -m labctl.apiforwarder <lab dir>`). Exits 0 at
    once when another forwarder already runs for this lab (it holds .labctl/apiproxy.lock)."""
    root = Path(lab_dir).resolve() / ".labctl"
    if not root.is_dir():
        print(f"{root} does not exist: nothing to serve", file=sys.stderr)
        return 2
    fd = os.open(root / LOCKFILE, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + 2.0  # `pid()` probes the lock for an instant: retry past such a probe
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError:
            if time.monotonic() > deadline:
                print("another API forwarder runs for this lab", file=sys.stderr)
                return 0
            time.sleep(0.02)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(Forwarder(root).run())
    return 0  # the lock goes with the process


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m labctl.apiforwarder <lab dir>", file=sys.stderr)
        sys.exit(2)
    sys.exit(serve(Path(sys.argv[1])))
