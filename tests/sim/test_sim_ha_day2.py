"""An HA cluster (3 masters) day to day, from the host: the kubeconfig reaches the API through labctl's forwarder and
keeps working with the first master off; `status` shows the endpoint and etcd's members; `shutdown` stops workers
first and the masters one at a time, the first last, and the forwarder with the lab; `boot` waits for etcd quorum
before it starts the workers; `destroy` takes the forwarder away."""

from __future__ import annotations

import json

import pytest
import yaml

from labctl import apiproxy
from labctl.kube import endpoint_host
from labctl.kube.client import Kube, KubeError
from labctl.state import LabState
from tests.sim.fake_tart import wait_for
from tests.conftest import ha_cluster
from tests.sim.sim_lab import SimLab
from tests.sim.test_sim_e2e import events, labctl, summary_of

pytestmark = pytest.mark.sim


MASTERS = ["prod-m1", "prod-m2", "prod-m3"]
LAB = ha_cluster("prod", MASTERS, ["prod-w1"])


@pytest.fixture
def ha_lab(lab_dir, fake_tart):
    config = lab_dir / "clusters.json"
    config.write_text(json.dumps(LAB))
    with SimLab(config, fake_tart) as sim:
        result = labctl("--json", "install")
        assert result.code == 0, summary_of(result.out)["failed"]
        yield sim, LabState(lab_dir / ".labctl"), fake_tart  # the forwarder: stopped by conftest


def _status() -> dict:
    return next(c for c in json.loads(labctl("--json", "status").out)["clusters"] if c["name"] == "prod")


def test_host_kubeconfig_goes_through_the_forwarder_and_survives_the_first_master(ha_lab):
    sim, state, fake_tart = ha_lab
    path = state.root / "kubeconfig" / "prod.yaml"
    entry = yaml.safe_load(path.read_text())["clusters"][0]["cluster"]
    port = apiproxy.endpoint(state, "prod")[1]
    assert entry["server"] == f"https://127.0.0.1:{port}"
    assert entry["tls-server-name"] == endpoint_host("prod")
    assert apiproxy.pid(state.root) is not None
    assert sorted(b["node"] for b in apiproxy.read_routes(state.root)["prod"]["backends"]) == MASTERS

    # a second install changes nothing (the forwarder runs, its backends and the kubeconfig are current)
    again = summary_of(labctl("--json", "install").out)
    assert again["ok"] and again["counts"]["changed"] == 0, again

    status = _status()
    assert status["endpoint"]["address"] == f"127.0.0.1:{port}" and status["endpoint"]["running"]
    assert all(b["answering"] for b in status["endpoint"]["backends"])
    assert status["urls"]["api"] == f"https://127.0.0.1:{port}"
    etcd = status["etcd"]
    assert etcd["ok"] and etcd["quorum"] and etcd["leader"] in MASTERS
    assert sorted(m["name"] for m in etcd["members"]) == MASTERS and all(m["healthy"] for m in etcd["members"])

    fake_tart.poweroff("prod-m1")
    wait_for(lambda: fake_tart.running_pid("prod-m1") is None, 30, "prod-m1 to power off")
    # the user's kubectl (labctl's client here, through the same file) keeps working: once the forwarder's health
    # check saw prod-m1 go, every request is answered behind 127.0.0.1 by another master
    kube = Kube("prod", path, retries=0)

    def answers() -> bool:
        try:
            return bool(kube.nodes())
        except KubeError:
            return False

    wait_for(answers, 30, "the API through the forwarder with prod-m1 off")
    for _ in range(5):
        assert {n.name for n in kube.nodes()} == {*MASTERS, "prod-w1"}

    status = _status()
    etcd = status["etcd"]
    assert etcd["quorum"] and not etcd["ok"] and etcd["asked"] != "prod-m1"
    health = {m["name"]: m["healthy"] for m in etcd["members"]}
    assert health == {"prod-m1": False, "prod-m2": True, "prod-m3": True}
    assert etcd["leader"] in ("prod-m2", "prod-m3")
    answering = {b["node"]: b["answering"] for b in status["endpoint"]["backends"]}
    assert answering == {"prod-m1": False, "prod-m2": True, "prod-m3": True}
    assert not status["healthy"]


def test_shutdown_order_forwarder_stopped_and_boot_waits_for_quorum(ha_lab):
    sim, state, fake_tart = ha_lab
    mark = sim.mark()
    result = labctl("--json", "shutdown")
    assert result.code == 0, summary_of(result.out)["failed"]
    order = [c.node for c in sim.calls[mark:] if c.script == "shutdown.poweroff"]
    assert order == ["prod-w1", "prod-m3", "prod-m2", "prod-m1"]  # workers first; masters one by one, first last
    finished = {e["node"]: e["time"] for e in events(result.out) if e["event"] == "result"}
    started = {e["node"]: e["time"] for e in events(result.out) if e["event"] == "start"}
    assert started["prod-m2"] >= finished["prod-m3"] and started["prod-m1"] >= finished["prod-m2"]
    assert apiproxy.pid(state.root) is None  # the whole lab is off: its host endpoint too

    result = labctl("--json", "boot")
    assert result.code == 0, summary_of(result.out)["failed"]
    results = {e["node"]: e for e in events(result.out) if e["event"] == "result" and e["phase"] == "boot"}
    worker = results["prod-w1"]["detail"]
    assert worker.startswith("etcd: 3/3 members healthy"), worker  # asked before the worker was started
    assert worker.index("etcd:") < worker.index("running at")
    assert apiproxy.pid(state.root) is not None
    assert _status()["healthy"]

    pid = apiproxy.pid(state.root)
    assert labctl("--json", "destroy", "--yes").code == 0
    assert apiproxy.pid(state.root) is None and not state.root.exists()  # the forwarder went with the lab
    wait_for(lambda: not _alive(pid), 30, "the forwarder process to exit")


def _alive(pid: int) -> bool:
    import os

    try:
        if os.waitpid(pid, os.WNOHANG)[0]:  # started from this test process: reap it once it exited
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
