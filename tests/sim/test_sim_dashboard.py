"""The live views of the lab against the simulated lab (the shipped clusters.json, its dev cluster installed):
`labctl dashboard`'s page in a real headless browser (Debian's chromium driven by Playwright), and `labctl status
--watch` in a real terminal (tmux), each seeing a node go down while it runs.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from labctl.dashboard.collector import Collector
from labctl.dashboard.server import DashboardServer
from labctl.lab import LabSession
from labctl.status import snapshot
from tests.sim.fake_tart import wait_for
from tests.sim.sim_server import SimServer
from tests.sim.test_sim_e2e import CLUSTERS, labctl, sim  # noqa: F401  (`sim` is the fixture)

pytestmark = pytest.mark.sim

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"  # Debian's package (scripts/test.sh installs it)
STOPPED = "dev-worker1"
# screenshots outlive pytest's rotation of its temporary folders (the closing note of a change shows them)
ARTIFACTS = Path(os.environ.get("LABCTL_ARTIFACTS") or Path(tempfile.gettempdir()) / "labctl-artifacts")


def required(what: str, present: bool) -> None:
    """Skip without the tool, except under CI, where scripts/test.sh installs it: there its absence is a failure."""
    if not present:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{what} is missing: scripts/test.sh installs it (as root, with apt-get)")
        pytest.skip(f"{what} is missing: scripts/test.sh installs it")


def test_dashboard_in_a_browser_shows_the_lab_and_a_node_going_down(sim, tmp_path):
    required("chromium", Path(CHROMIUM).exists())
    playwright = pytest.importorskip("playwright.sync_api")
    assert labctl("--json", "install", "--cluster", "dev").code == 0
    # what a user's broken workload leaves: a crash-looping pod and its Warning event (the sim runs no pods itself)
    store = sim.clusters["dev"].store
    store.put("api/v1", "pods", {"metadata": {"name": "web-7f9c"}, "status": {
        "phase": "Running", "conditions": [{"type": "Ready", "status": "False"}],
        "containerStatuses": [{"name": "web", "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}}, "demo")
    store.put("api/v1", "events", {"metadata": {"name": "web-7f9c.1"}, "type": "Warning", "reason": "BackOff",
                                   "message": "Back-off restarting failed container web",
                                   "involvedObject": {"kind": "Pod", "name": "web-7f9c", "namespace": "demo"},
                                   "lastTimestamp": "2026-11-30T12:00:00Z"}, "demo")
    lab = LabSession.open(sim.config)
    collector = Collector(lambda: snapshot(lab, None, 2.0), interval=0.5).start()
    server = DashboardServer(collector)
    url = server.start()
    requests, problems = [], []
    try:
        with playwright.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("request", lambda r: requests.append(r.url))
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.goto(url)
            # the overview: the four clusters of clusters.json, dev installed and healthy, its worker Ready
            page.wait_for_selector(f'tr[data-node="{STOPPED}"][data-ready="true"]', timeout=60_000)
            shown = page.eval_on_selector_all("section.cluster", "cards => cards.map(c => c.dataset.cluster)")
            assert shown == list(CLUSTERS)
            assert page.get_attribute('section[data-cluster="dev"]', "data-healthy") == "true"
            row = page.inner_text(f'tr[data-node="{STOPPED}"]')
            assert "running" in row and "Ready" in row and "GiB" in row  # VM state, Kubernetes, declared memory

            # the worker's VM stops: the first snapshot taken after that shows it NotReady (one refresh)
            assert sim.fake.tart("stop", STOPPED).returncode == 0
            stopped_at = time.time()  # after `tart stop` returned: a probe started from now on sees it stopped
            # (polled from here: the page's Content-Security-Policy refuses the string eval of wait_for_function)
            wait_for(lambda: float(page.get_attribute("main", "data-taken") or 0) > stopped_at, 60,
                     "a snapshot taken after the stop on the page")
            assert page.get_attribute(f'tr[data-node="{STOPPED}"]', "data-ready") == "false"
            row = page.inner_text(f'tr[data-node="{STOPPED}"]')
            assert "stopped" in row and "NotReady" in row, row
            assert page.get_attribute('section[data-cluster="dev"]', "data-healthy") == "false"
            overview = page.eval_on_selector_all('section[data-cluster="dev"] ul.lines li', "i => i.map(x => x.textContent)")
            assert "demo/web-7f9c: Running (CrashLoopBackOff)" in overview, overview  # pods not ready, on the overview
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "dashboard-overview.png"), full_page=True)
            print(f"dashboard screenshot: {ARTIFACTS / 'dashboard-overview.png'}")

            # the cluster's own page: its stacks and their URLs
            page.click('section[data-cluster="dev"] h2 a')
            page.wait_for_selector('section[data-cluster="dev"] ul.stacks li', timeout=60_000)
            assert page.url == url + "cluster/dev"
            stacks = page.eval_on_selector_all("ul.stacks li", "items => items.map(i => i.dataset.stack)")
            assert stacks == CLUSTERS["dev"]["stacks"]
            assert page.eval_on_selector_all("ul.urls a", "links => links.length") > 0
            shown = page.eval_on_selector_all("ul.lines li", "items => items.map(i => i.textContent)")
            assert "demo/web-7f9c: Running (CrashLoopBackOff)" in shown, shown
            assert "2026-11-30T12:00:00Z demo/Pod/web-7f9c: BackOff: Back-off restarting failed container web" in shown
            page.screenshot(path=str(ARTIFACTS / "dashboard-dev.png"), full_page=True)
            print(f"cluster page screenshot: {ARTIFACTS / 'dashboard-dev.png'}")
            browser.close()
    finally:
        server.stop()
        collector.stop()
    assert not problems, problems
    origin = f"http://127.0.0.1:{server.port}/{server.token}/"
    assert requests and all(r.startswith(origin) for r in requests), sorted(set(requests))


def test_status_watch_in_a_terminal_shows_a_change_and_exits_on_ctrl_c(sim, tmp_path):
    """`labctl status --watch` as its own process on a TTY (tmux), reaching the simulated lab as the command
    benchmark does (benchmarks/_simclient.py: the fake tart, the simulated API servers, SSH banners)."""
    required("tmux", shutil.which("tmux") is not None)
    assert labctl("--json", "install", "--cluster", "dev").code == 0
    authkey = os.urandom(16)
    server = SimServer(sim, str(tmp_path / "sim.sock"), authkey)
    env = {**os.environ, "LABCTL_BENCH_SIM": str(tmp_path / "sim.sock"), "LABCTL_BENCH_KEY": authkey.hex(),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "benchmarks"), str(ROOT)]), "TERM": "xterm-256color"}
    tmux = ["tmux", "-S", str(tmp_path / "tmux.sock"), "-f", "/dev/null"]
    status_file = tmp_path / "watch.status"
    argv = [sys.executable, "-c", "import _simclient; _simclient.main()",
            "status", "--watch", "0.5", "--cluster", "dev", "--timeout", "2"]

    def pane() -> str:
        return subprocess.run([*tmux, "capture-pane", "-p", "-t", "watch"], capture_output=True, text=True,
                              check=True).stdout

    def row(text: str) -> str:
        return next((line for line in text.splitlines() if f" {STOPPED} " in line), "")

    try:
        # bash runs the watch and writes its exit status: tmux itself may never reap it (a server started from a
        # test process can inherit a blocked SIGCHLD, leaving #{pane_dead_status} empty behind a zombie)
        script = f"{shlex.join(argv)}; echo $? > {shlex.quote(str(status_file))}"
        subprocess.run([*tmux, "new-session", "-d", "-s", "watch", "-x", "160", "-y", "50", "-c", str(tmp_path),
                        shlex.join(["bash", "-c", script]), ";", "set-option", "-t", "watch", "remain-on-exit", "on"],
                       env=env, check=True)
        wait_for(lambda: "✓ Ready" in row(pane()) and "running" in row(pane()), 120, f"{STOPPED} Ready on screen")
        assert sim.fake.tart("stop", STOPPED).returncode == 0
        wait_for(lambda: "stopped" in row(pane()) and "NotReady" in row(pane()), 120, f"{STOPPED} stopped on screen")
        subprocess.run([*tmux, "send-keys", "-t", "watch", "C-c"], check=True)
        status = wait_for(lambda: status_file.exists() and status_file.read_text().strip(), 60, "the watch to end")
        assert status == "130", (status, pane())  # ended by SIGINT's conventional status, not a crash
        assert "Traceback" not in pane()
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
        server.close()
