"""The host's API forwarder (labctl/apiproxy.py) with real sockets: two fake masters, one goes away."""

from __future__ import annotations

import json
import os
import socket
import socketserver
import stat
import threading
import time

import pytest

from labctl import apiforwarder, apiproxy
from labctl.state import LabState


class Backend:
    """A fake master: greets each connection with its name, then echoes. `stop()` closes the listener and every
    open connection (the VM went away)."""

    def __init__(self, name: str):
        self.name = name
        self.conns: list[socket.socket] = []
        self.stopped = False
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                outer.conns.append(self.request)
                try:
                    self.request.sendall(f"{outer.name}\n".encode())
                    while data := self.request.recv(4096):
                        self.request.sendall(data)
                except OSError:
                    pass

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.server.shutdown()
        self.server.server_close()
        for conn in self.conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def entry(self) -> dict:
        return {"node": self.name, "host": "127.0.0.1", "port": self.port}


def wait_until(condition, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def greet(port: int) -> tuple[socket.socket, str]:
    """Connect through the forwarder; the backend's name it reached, and the open connection."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(64)
        if not chunk:
            break
        data += chunk
    return sock, data.decode().strip()


@pytest.fixture
def state(tmp_path):
    st = LabState(tmp_path / ".labctl")
    st.ensure()
    yield st
    apiproxy.stop(st)


def test_port_chosen_once_backends_kept_and_file_private(state):
    a, b = {"node": "m1", "host": "10.0.0.1", "port": 6443}, {"node": "m2", "host": "10.0.0.2", "port": 6443}
    port = apiproxy.set_backends(state, "prod", [a, b])
    assert apiproxy.endpoint(state, "prod") == ("127.0.0.1", port)
    assert stat.S_IMODE(apiproxy.routes_path(state.root).stat().st_mode) == 0o600
    mtime = apiproxy.routes_path(state.root).stat().st_mtime_ns
    assert apiproxy.set_backends(state, "prod", [a, b]) == port  # a second run changes nothing, not even the file
    assert apiproxy.routes_path(state.root).stat().st_mtime_ns == mtime
    # m1 has no address now (stopped): its last known entry stays; m2 moved
    moved = {**b, "host": "10.0.0.9"}
    assert apiproxy.set_backends(state, "prod", [moved]) == port
    assert apiproxy.read_routes(state.root)["prod"]["backends"] == [moved, a]
    other = apiproxy.set_backends(state, "dev", [a])
    assert other != port
    apiproxy.forget(state, "prod")
    assert list(apiproxy.read_routes(state.root)) == ["dev"]


def test_forwards_to_the_first_that_accepts_and_survives_one_going_away(state):
    one, two = Backend("m1"), Backend("m2")
    try:
        port = apiproxy.set_backends(state, "prod", [one.entry(), two.entry()])
        assert apiproxy.start(state).startswith("started")
        held, name = greet(port)
        assert name == "m1"
        held.sendall(b"ping")
        assert held.recv(64) == b"ping"  # bytes go both ways untouched
        one.stop()
        # the connection through the master that went away is closed, not left hanging
        held.settimeout(10)
        assert wait_until(lambda: held.recv(64) == b"", "the dead backend's connection to close")
        held.close()
        # new connections reach the other master, and keep working
        for _ in range(3):
            sock, name = greet(port)
            assert name == "m2"
            sock.sendall(b"x")
            assert sock.recv(8) == b"x"
            sock.close()
        assert apiproxy.pid(state.root) is not None
    finally:
        one.stop()
        two.stop()


def test_last_good_backend_first_and_routes_reloaded(state):
    one, two = Backend("m1"), Backend("m2")
    try:
        port = apiproxy.set_backends(state, "prod", [one.entry()])
        apiproxy.start(state)
        assert greet(port)[1] == "m1"
        # labctl learned new addresses: the running forwarder picks up the file without a restart
        apiproxy.set_backends(state, "prod", [{**two.entry(), "node": "m1"}])
        assert wait_until(lambda: greet(port)[1] == "m2", "the forwarder to reload its backends")
    finally:
        one.stop()
        two.stop()


def test_start_is_idempotent_stop_twice_and_log_private(state):
    backend = Backend("m1")
    try:
        apiproxy.set_backends(state, "prod", [backend.entry()])
        first = apiproxy.start(state)
        pid = apiproxy.pid(state.root)
        assert first == f"started (pid {pid})"
        assert apiproxy.start(state) == f"running (pid {pid})"  # nothing changes
        assert apiproxy.pid(state.root) == pid
        for name in (apiproxy.LOG, apiproxy.PIDFILE, apiproxy.ROUTES):
            assert stat.S_IMODE((state.root / name).stat().st_mode) == 0o600, name
        assert apiproxy.stop(state) == f"stopped (pid {pid})"
        assert apiproxy.pid(state.root) is None
        assert not (state.root / apiproxy.PIDFILE).exists()
        assert apiproxy.stop(state) is None
    finally:
        backend.stop()


def test_a_stale_pidfile_is_not_a_running_forwarder(state):
    backend = Backend("m1")
    try:
        port = apiproxy.set_backends(state, "prod", [backend.entry()])
        # a pidfile left by a forwarder that was killed (the lock died with it); the pid may even be alive (reused)
        (state.root / apiproxy.PIDFILE).write_text(f"{os.getpid()}\n")
        (state.root / apiproxy.LOCKFILE).touch()
        assert apiproxy.pid(state.root) is None
        started = apiproxy.start(state)
        assert started.startswith("started") and str(os.getpid()) not in started
        assert greet(port)[1] == "m1"
    finally:
        backend.stop()


def test_a_second_forwarder_exits_and_leaves_the_first(state, tmp_path):
    backend = Backend("m1")
    try:
        apiproxy.set_backends(state, "prod", [backend.entry()])
        apiproxy.start(state)
        pid = apiproxy.pid(state.root)
        assert apiforwarder.serve(tmp_path) == 0  # returns at once: the lock is held
        assert apiproxy.pid(state.root) == pid
        assert json.loads((state.root / apiproxy.ROUTES).read_text())["clusters"]["prod"]
    finally:
        backend.stop()


def test_ha_kubeconfig_reaches_the_api_through_the_forwarder_by_its_stable_name(state, tmp_path):
    """The host kubeconfig of an HA cluster: server 127.0.0.1:<forwarder>, certificate verified as the stable API
    name (the only SAN the fake master's certificate has here). labctl's REST client and the real kubectl both
    honour tls-server-name; without it the same file fails verification."""
    import subprocess

    import yaml

    from labctl.kube import endpoint_host, kubeconfig
    from labctl.kube.rest import RestClient
    from tests.realclients import real_clients
    from tests.sim.fake_kube import FakeKube

    name = endpoint_host("prod")
    api = FakeKube(tls_sans=[name], workdir=tmp_path / "pki").start()
    try:
        port = apiproxy.set_backends(state, "prod", [{"node": "m1", "host": "127.0.0.1", "port": api.port}])
        apiproxy.start(state)
        admin_conf = yaml.safe_dump(api.kubeconfig("kubernetes"))
        config = kubeconfig.from_admin_conf(admin_conf, "prod", f"https://127.0.0.1:{port}", name)
        assert config["clusters"][0]["cluster"]["tls-server-name"] == name
        path = kubeconfig.write(state, "prod", config)
        assert RestClient(config, path, retries=0).request("GET", "/api/v1/namespaces").status == 200

        plain = kubeconfig.from_admin_conf(admin_conf, "prod", f"https://127.0.0.1:{port}")
        assert "tls-server-name" not in plain["clusters"][0]["cluster"]
        import urllib3

        with pytest.raises(urllib3.exceptions.HTTPError):  # 127.0.0.1 is not a SAN: verification fails
            RestClient(plain, path, retries=0).request("GET", "/api/v1/namespaces", timeout=10)

        kubectl = real_clients().kubectl
        run = subprocess.run([str(kubectl), "--kubeconfig", str(path), "get", "namespaces", "-o", "name"],
                             capture_output=True, text=True, timeout=60, check=False)
        assert run.returncode == 0, run.stderr
        assert "namespace/kube-system" in run.stdout
    finally:
        api.stop()
