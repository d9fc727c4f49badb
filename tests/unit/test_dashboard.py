"""`labctl dashboard`'s pieces without a lab: the shared collector (one probe for every reader, readers never wait
for a probe) and the server (127.0.0.1 only, the token in every URL, 403 without it). The page in a real browser
against the simulated lab: tests/sim/test_sim_dashboard.py."""

from __future__ import annotations

import json
import socket
import threading
import urllib.error
import urllib.request

import pytest

from labctl.dashboard.collector import Collector
from labctl.dashboard.server import DashboardServer
from labctl.errors import LabctlError
from tests.conftest import SHIPPED, run_cli
from tests.sim.fake_tart import wait_for


class Probe:
    """A probe that counts its calls: the first answers, the second waits for `release` and then fails (a hung node
    whose probe then times out), later ones wait for `done` (the test's end)."""

    def __init__(self):
        self.calls = 0
        self.release, self.done = threading.Event(), threading.Event()
        self.second = threading.Event()

    def __call__(self) -> dict:
        self.calls += 1
        if self.calls == 2:
            self.second.set()
            self.release.wait(30)
            raise LabctlError("tart: not found\nmore")
        if self.calls > 2:
            self.done.wait(30)
        return {"healthy": True, "clusters": [], "n": self.calls}


def test_many_readers_cost_one_probe():
    probe = Probe()
    collector = Collector(probe, interval=3600).start()  # one probe, then a long wait
    try:
        wait_for(lambda: collector.latest()["seq"] == 1, 30, "the first snapshot")
        answers = [collector.latest() for _ in range(10)]  # ten tabs
        assert probe.calls == 1
        assert all(a["snapshot"] == {"healthy": True, "clusters": [], "n": 1} and a["error"] is None for a in answers)
    finally:
        collector.stop()


def test_a_hung_probe_does_not_stall_readers_and_a_failed_one_keeps_the_last_snapshot():
    probe = Probe()
    collector = Collector(probe, interval=0).start()
    try:
        assert probe.second.wait(30)  # the second probe is running and will not return by itself
        answer = collector.latest()  # answered at once, from the last snapshot
        assert answer["seq"] == 1 and answer["snapshot"]["n"] == 1 and answer["probing"] is not None
        assert answer["age"] is not None and answer["error"] is None
        probe.release.set()
        wait_for(lambda: collector.latest()["error"] == "tart: not found", 30, "the failed second probe")
        answer = collector.latest()
        assert answer["seq"] == 1 and answer["snapshot"]["n"] == 1  # the page keeps what it had, with the error
    finally:
        collector.stop()
        probe.release.set()
        probe.done.set()


def get(url: str) -> tuple[int, str, dict]:
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:
            return answer.status, answer.read().decode(), dict(answer.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


@pytest.fixture
def served():
    collector = Collector(lambda: {"healthy": True, "clusters": [{"name": "dev"}]}, interval=3600).start()
    server = DashboardServer(collector)
    server.start()
    wait_for(lambda: collector.latest()["seq"] == 1, 30, "the first snapshot")
    yield server
    server.stop()
    collector.stop()


def test_the_server_answers_only_on_loopback_and_only_with_the_token(served):
    base = served.url
    assert base.startswith(f"http://127.0.0.1:{served.port}/{served.token}/") and len(served.token) >= 32
    status, page, headers = get(base)
    assert status == 200 and f'<base href="/{served.token}/">' in page and "static/app.js" in page
    assert "default-src 'self'" in headers["Content-Security-Policy"] and headers["Referrer-Policy"] == "no-referrer"
    status, body, _ = get(base + "api/snapshot")
    assert status == 200 and json.loads(body)["snapshot"]["clusters"] == [{"name": "dev"}]
    assert get(base + "cluster/dev")[0] == 200 and get(base + "static/app.js")[0] == 200
    root = f"http://127.0.0.1:{served.port}"
    for path in ("/", "/api/snapshot", "/static/app.js", "/favicon.ico", f"/{served.token[:-1]}/api/snapshot",
                 f"/x{served.token}/"):
        status, body, _ = get(root + path)
        assert status == 403 and "labctl dashboard" in body, path
    # bound to loopback only: another address of this machine does not answer
    with socket.socket() as sock:
        sock.connect(("127.0.0.1", served.port))
        assert sock.getsockname()[0] == "127.0.0.1"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.2", served.port), timeout=5).close()


def test_a_busy_port_is_a_plain_error(served):
    other = DashboardServer(served.collector, served.port)
    with pytest.raises(LabctlError, match=rf"cannot listen on 127.0.0.1:{served.port}") as err:
        other.start()
    assert "--port 0" in err.value.hint


def test_dashboard_cli_names_an_unknown_cluster_before_serving(tmp_path):
    config = tmp_path / "clusters.json"
    config.write_text(SHIPPED.read_text())
    result = run_cli("-c", str(config), "dashboard", "--cluster", "nope")
    assert result.code == 2 and "nope" in result.err and "Traceback" not in result.err
