"""The host's endpoint of an HA cluster's API: a small TCP forwarder labctl runs on this machine.

Why (docs/ha.md "From the host"): a cluster with several masters has no virtual IP (Tart's shared NAT reportedly
drops traffic for addresses its DHCP never leased, reference/k8s-bootstrap.md §3, and the QEMU lab network reaches
the host only through port forwards), and the host does not read the nodes' /etc/hosts. So the host's kubeconfig of
an HA cluster names `https://127.0.0.1:<port>` with `tls-server-name: <cluster>-api.labctl.internal` (a SAN of every
master's API certificate: it is the controlPlaneEndpoint), and the forwarder (the process: labctl/apiforwarder.py)
passes each TCP connection on to the first master that accepts one, its API server ready first. This module is what
install, boot, status and destroy call: the routes file, the process's start and stop, the read-only checks.

Files in .labctl/ (all 0600):
- `apiproxy.json`: {"clusters": {name: {"port": int, "backends": [{"node", "host", "port"}, ...]}}}. labctl rewrites
  the backends whenever it learns the masters' addresses (`set_backends`); a cluster's port is chosen once from a
  free port and kept, so the kubeconfigs stay valid. The running forwarder reads it again when its mtime changes.
- `apiproxy.pid`: the forwarder's pid; `apiproxy.lock`: held (flock) by the forwarder while it runs, which is what
  tells a live forwarder from a stale pidfile (a reused pid cannot hold the lock); `apiproxy.log`: its log.

One forwarder process serves every HA cluster of the lab (one listener each). It is started detached
(`python -m labctl.apiforwarder <lab dir>`) by install and boot when a cluster has several masters, and stopped by a
whole-lab `shutdown` and by `destroy`. Starting it while it runs changes nothing.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import LabctlError
from .state import private_opener, write_atomic

if TYPE_CHECKING:
    from .model import Cluster
    from .state import LabState

ROUTES = "apiproxy.json"
PIDFILE = "apiproxy.pid"
LOCKFILE = "apiproxy.lock"
LOG = "apiproxy.log"
HOST = "127.0.0.1"  # never another interface: the API's client certificates are not for the network to use
START_TIMEOUT = 15.0  # seconds `start` waits for the forwarder to listen
STOP_TIMEOUT = 10.0  # seconds `stop` waits after SIGTERM before SIGKILL

_routes_lock = threading.Lock()  # install's clusters run in parallel threads and share apiproxy.json
_start_lock = threading.Lock()
# the .labctl dirs this process started a forwarder for (the test suite stops them after each test)
STARTED: set[Path] = set()


# ---- the routes file ------------------------------------------------------------------------------------------

def routes_path(root: Path) -> Path:
    return root / ROUTES


def read_routes(root: Path) -> dict[str, dict[str, Any]]:
    """cluster → {"port": int, "backends": [{"node", "host", "port"}]} from `root`/apiproxy.json; {} when there is none
    or it is unreadable (the next `set_backends` writes it anew)."""
    try:
        data = json.loads(routes_path(root).read_text())
    except (OSError, ValueError):
        return {}
    clusters = data.get("clusters") if isinstance(data, dict) else None
    return {k: v for k, v in clusters.items() if isinstance(v, dict) and isinstance(v.get("port"), int)} \
        if isinstance(clusters, dict) else {}


def _write_routes(root: Path, clusters: dict[str, dict[str, Any]]) -> None:
    if clusters:
        write_atomic(routes_path(root), json.dumps({"clusters": clusters}, indent=2, sort_keys=True) + "\n", 0o600)
    else:
        routes_path(root).unlink(missing_ok=True)


def free_port(taken: set[int] = frozenset()) -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the kernel's pick), not in `taken`."""
    while True:
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            port = sock.getsockname()[1]
        if port not in taken:
            return port


def endpoint(state: LabState, cluster: str) -> tuple[str, int] | None:
    """(127.0.0.1, port) where the host reaches `cluster`'s API through the forwarder; None before it was chosen."""
    entry = read_routes(state.root).get(cluster)
    return (HOST, entry["port"]) if entry else None


def set_backends(state: LabState, cluster: str, backends: list[dict[str, Any]],
                 masters: set[str] | None = None) -> int:
    """Record where `cluster`'s masters answer: `backends` = [{"node", "host", "port"}] in clusters.json order. A
    master missing from the list (no address now: stopped) keeps its last known entry, so a master that comes back
    at its old address is tried again; `masters` (the names clusters.json has now, when given): entries of any other
    node are dropped (a master being removed). Chooses the cluster's port the first time and keeps it. Writes only
    on a change (the forwarder reloads on mtime). Returns the port. Raises FileError when .labctl cannot be written."""
    with _routes_lock:
        state.ensure()
        routes = read_routes(state.root)
        entry = routes.get(cluster)
        port = entry["port"] if entry else free_port({e["port"] for e in routes.values()})
        known = {b.get("node"): b for b in (entry or {}).get("backends", [])
                 if masters is None or b.get("node") in masters}
        known.update({b["node"]: dict(b) for b in backends})
        order = [b["node"] for b in backends] + [n for n in known if n not in {b["node"] for b in backends}]
        new = {"port": port, "backends": [known[n] for n in order]}
        if entry != new:
            routes[cluster] = new
            _write_routes(state.root, routes)
        return port


def forget(state: LabState, cluster: str) -> None:
    """Drop a destroyed cluster's route; the forwarder closes its listener at its next reload."""
    with _routes_lock:
        routes = read_routes(state.root)
        if routes.pop(cluster, None) is not None:
            _write_routes(state.root, routes)


# ---- the process: running? start, stop ------------------------------------------------------------------------

def pid(root: Path) -> int | None:
    """The running forwarder's pid, or None when none runs (no pidfile, or a stale one: nobody holds the lock)."""
    try:
        fd = os.open(root / LOCKFILE, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            held = True
        else:
            held = False  # nobody holds it: the pidfile, if any, is stale (we release at once in finally)
    finally:
        os.close(fd)
    if not held:
        return None
    try:
        return int((root / PIDFILE).read_text().strip())
    except (OSError, ValueError):
        return -1  # it holds the lock but has not written its pid yet (starting)


def _log_tail(root: Path, lines: int = 5) -> str:
    try:
        return "\n".join((root / LOG).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _listening(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False


def start(state: LabState) -> str:
    """Start the forwarder detached unless it runs; wait until it listens on every recorded port. Returns what it did
    ("running (pid N)" / "started (pid N)"). Raises LabctlError with the log's tail when it does not come up."""
    with _start_lock:  # install's clusters sync in parallel threads: one of them starts it
        return _start(state)


def _start(state: LabState) -> str:
    root = state.root
    running = pid(root)
    if running is not None:
        return f"running (pid {running})"
    state.ensure()
    (root / PIDFILE).unlink(missing_ok=True)  # stale (nobody holds the lock): never read as the new one's pid
    with open(root / LOG, "a", opener=private_opener) as out:
        # its own session: the forwarder outlives this labctl and a Ctrl-C in the user's terminal
        # the very labctl running now, installed or not (its package's parent first on the path)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parents[1]), *filter(None, [os.environ.get("PYTHONPATH")])])}
        proc = subprocess.Popen([sys.executable, "-m", "labctl.apiforwarder", str(root.parent)], cwd=str(root), env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
                                close_fds=True)
    ports = [e["port"] for e in read_routes(root).values()]
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None and pid(root) is None:
            break
        now = pid(root)
        if now is not None and now > 0 and all(_listening(p) for p in ports):
            # ours, or one another labctl started at the same moment (ours then exited: the lock was taken)
            STARTED.add(root)
            return f"started (pid {now})" if now == proc.pid else f"running (pid {now})"
        time.sleep(0.05)
    raise LabctlError(f"the API forwarder (pid {proc.pid}) did not come up on 127.0.0.1 port(s) "
                      f"{', '.join(map(str, ports))}: {_log_tail(root) or 'no log'}",
                      hint=f"its log is {root / LOG}; `labctl boot` tries again")


def stop(state: LabState) -> str | None:
    """Stop the forwarder (SIGTERM; SIGKILL after STOP_TIMEOUT seconds). Returns "stopped (pid N)", or None when none
    ran. The pidfile goes either way."""
    root = state.root
    running = pid(root)
    deadline = time.monotonic() + START_TIMEOUT
    while running == -1 and time.monotonic() < deadline:  # starting: it writes its pid once it listens
        time.sleep(0.05)
        running = pid(root)
    if running is None:
        (root / PIDFILE).unlink(missing_ok=True)
        return None
    if running > 0:
        for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, STOP_TIMEOUT)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(running, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and pid(root) is not None:
                time.sleep(0.05)
            if pid(root) is None:
                break
    (root / PIDFILE).unlink(missing_ok=True)
    return f"stopped (pid {running})"


def readyz(host: str, port: int, timeout: float) -> bool:
    """Does the API server at host:port answer `GET /readyz` with 200 within `timeout` seconds (connect, handshake,
    answer)? Over TLS without verification, as haproxy's `check-ssl verify none` on the workers: nothing secret is
    sent, only the status line is read; /readyz is open to anonymous clients (the system:public-info-viewer
    ClusterRole). A TCP-only look would miss a frozen guest whose kernel still accepts, and an API server that lost
    etcd."""
    import ssl

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, \
                context.wrap_socket(raw, server_hostname=None) as tls:
            tls.sendall(f"GET /readyz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            line = tls.makefile("rb").readline(256)
    except (OSError, ValueError):  # ssl.SSLError is an OSError
        return False
    return line.split(b" ")[1:2] == [b"200"]


def backends_answering(state: LabState, cluster: str, timeout: float = 1.0) -> list[dict[str, Any]]:
    """Read-only, for `status`: each recorded backend of `cluster` with "answering" (its API server answered
    GET /readyz with 200 within `timeout` seconds: `readyz`), asked in parallel."""
    from concurrent.futures import ThreadPoolExecutor

    backends = (read_routes(state.root).get(cluster) or {}).get("backends", [])

    def probe(b: dict) -> dict:
        return {**b, "answering": readyz(b["host"], b["port"], timeout)}

    if not backends:
        return []
    with ThreadPoolExecutor(max_workers=len(backends), thread_name_prefix="status-proxy") as pool:
        return list(pool.map(probe, backends))


# ---- what install and boot call -------------------------------------------------------------------------------

def masters_backends(ctx, cluster: Cluster) -> list[dict[str, Any]]:
    """Where this machine reaches each master's API server now (Provider.host_endpoint of 6443), for masters with an
    address in this run; the others are left out (set_backends keeps their last entry)."""
    from .kube import API_PORT

    out = []
    for master in cluster.masters:
        try:
            address = ctx.address(master)
            if address:
                host, port = ctx.provider.host_endpoint(master, API_PORT, address)
                out.append({"node": master.name, "host": host, "port": port})
        except LabctlError:
            continue  # not reachable now: its last known entry stays
    return out


def problem(ctx, cluster: Cluster) -> str | None:
    """Read-only: why the host cannot reach `cluster`'s API through the forwarder as recorded, or None (also for a
    single-master cluster, which does not use it)."""
    from .kube import highly_available

    if not highly_available(cluster):
        if endpoint(ctx.state, cluster.name) is not None:  # shrunk to one master: the route is left over
            return "the API forwarder still serves this cluster, which has one master now"
        return None
    entry = read_routes(ctx.state.root).get(cluster.name)
    if entry is None:
        return "no API endpoint on this machine yet (labctl's forwarder)"
    recorded = {b["node"]: (b["host"], b["port"]) for b in entry["backends"]}
    if extra := sorted(set(recorded) - {m.name for m in cluster.masters}):
        # a master removed from clusters.json: `install --prune` removes its member next, and its API server stops
        return f"the API forwarder still forwards to {', '.join(extra)}, no longer a master in clusters.json"
    for b in masters_backends(ctx, cluster):
        if b["node"] not in recorded and ctx.kube(cluster).node(b["node"]) is None:
            continue  # not a member yet: its `join` adds it
        if recorded.get(b["node"]) != (b["host"], b["port"]):
            return f"the API forwarder does not know {b['node']} at {b['host']}:{b['port']}"
    if pid(ctx.state.root) is None:
        return f"the API forwarder for 127.0.0.1:{entry['port']} is not running"
    return None


def host_server(ctx, cluster: Cluster, address: str) -> tuple[str | None, str | None]:
    """Read-only: (server URL, tls-server-name) of the host's kubeconfig for `cluster`, given its first master's
    `address`. A single master: its own host end (kube.host_api), no name. Several: the forwarder's
    `https://127.0.0.1:<port>` (None before a port was chosen) and the stable API name, a SAN of every master's
    certificate."""
    from .kube import api_url, endpoint_host, highly_available, host_api

    if not highly_available(cluster):
        return api_url(*host_api(ctx, cluster, address)), None
    where = endpoint(ctx.state, cluster.name)
    return (api_url(*where) if where else None), endpoint_host(cluster.name)


def sync(ctx, cluster: Cluster) -> tuple[int, list[str]]:
    """Record the masters' current endpoints and make sure the forwarder runs. Returns (port, what changed)."""
    before = read_routes(ctx.state.root).get(cluster.name)
    port = set_backends(ctx.state, cluster.name, masters_backends(ctx, cluster), {m.name for m in cluster.masters})
    done = []
    if read_routes(ctx.state.root).get(cluster.name) != before:
        done.append(f"API endpoint 127.0.0.1:{port} forwards to "
                    + ", ".join(f"{b['node']} ({b['host']}:{b['port']})"
                                for b in read_routes(ctx.state.root)[cluster.name]["backends"]))
    started = start(ctx.state)
    if started.startswith("started"):
        done.append(f"API forwarder {started}")
    return port, done
