"""Static machines (`"provider": "static"`, bring-your-own nodes) in the simulated lab, through the real CLI.

A cluster of Tart VMs (bridged) plus two existing GPU machines (tests/sim/sim_static.py: no fake tart made them)
installs with their taints and labels, and a second install changes nothing; `shutdown` cordons and drains them
without powering them off, `boot` uncordons them; `destroy` takes them out of the cluster and leaves them running
(`--reset-static` also runs `kubeadm reset`). A machine that fails the readiness check is reported before `join`
with each failed check, and nothing is joined. A worker added to clusters.json long after install, when every
bootstrap token of install time has expired, joins with a fresh one, and only it is touched.
"""

from __future__ import annotations

import contextlib
import json

import pytest

from tests.conftest import run_cli
from tests.sim.sim_lab import SimLab, lease_prefix
from tests.sim.test_sim_e2e import events, summary_of

pytestmark = pytest.mark.sim

ENV = {"LABCTL_HOST_MEMORY_MIB": str(64 * 1024)}
MUTATING = {"clone", "set", "run", "stop", "delete", "pull", "rename"}
APPLY_SCRIPTS = {"prepare.apply", "runtime.apply", "kubepkgs.apply", "endpoint.hosts", "init.kubeadm", "join.token",
                 "join.upload-certs", "join.kubeadm", "cni.helm-binary", "cni.helm-install", "nodeconfig.apply",
                 "destroy.kubeadm-reset", "shutdown.poweroff"}
STATIC = ("gpu-box1", "gpu-box2")
GPU_TAINT = "nvidia.com/gpu:NoSchedule"


def lab_json(prefix: str, static: tuple[str, ...] = STATIC) -> dict:
    """A Tart cluster on a bridged network (static machines must share its LAN) with GPU machines of its own."""
    nodes = [{"name": "gpu-master", "role": "master", "cpu": 2, "memory": 4096},
             {"name": "gpu-worker1", "role": "worker", "cpu": 2, "memory": 4096}]
    for i, name in enumerate(static):
        nodes.append({"name": name, "role": "worker", "provider": "static", "address": f"{prefix}.{201 + i}",
                      "labels": {"nvidia.com/gpu.present": "true"},
                      "taints": [{"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}]})
    return {"provider": {"type": "tart", "tart": {"network": "bridged", "bridge_interface": "en0"}},
            "clusters": [{"name": "gpu", "pod_cidr": "10.10.0.0/16", "service_cidr": "10.96.0.0/16", "nodes": nodes}]}


@pytest.fixture
def prefix(monkeypatch):
    value = lease_prefix()
    monkeypatch.setenv("FAKE_TART_LEASE_PREFIX", value)
    monkeypatch.setenv("FAKE_TART_IP_DELAY", "0")
    return value


@contextlib.contextmanager
def open_static_lab(fake_tart, tmp_path, monkeypatch, prefix: str):
    """This file's lab (lab_json), simulated: its clusters.json in tmp_path, the working directory."""
    config = tmp_path / "clusters.json"
    config.write_text(json.dumps(lab_json(prefix)))
    monkeypatch.chdir(tmp_path)
    with SimLab(config, fake_tart) as lab:
        yield lab


@pytest.fixture
def sim(fake_tart, tmp_path, monkeypatch, prefix):
    with open_static_lab(fake_tart, tmp_path, monkeypatch, prefix) as lab:
        yield lab


def labctl(*args: str):
    return run_cli(*args, env=ENV)


def results(out: str) -> dict[str, dict]:
    return {e["step"]: e for e in events(out) if e.get("event") == "result"}


def tart_names(fake_tart, mark: int = 0) -> set[str]:
    """Every VM name a mutating tart call named."""
    return {arg for argv in fake_tart.argvs(mark) if argv[0] in MUTATING for arg in argv[1:]}


def api_node(sim: SimLab, name: str) -> dict | None:
    return sim.clusters["gpu"].store.get("api/v1", "nodes", name)


def test_tart_vms_and_two_static_gpu_workers_install_live_and_are_left_running(sim, fake_tart):
    # -- install: the machines join with their taints and labels; no tart call ever names them
    result = labctl("--json", "install")
    assert result.code == 0, summary_of(result.out)["failed"]
    world = sim.world()
    for name in STATIC:
        assert world["vms"][name] == "running"
        node = world["nodes"][name]
        assert node["joined"] and node["node_ip_current"] and node["endpoint_is_master"], node
        assert node["hostname"] == name and node["containerd"]["running"]
        member = world["clusters"]["gpu"]["nodes"][name]
        assert member["ready"] == "True" and member["taints"] == [GPU_TAINT], member
        assert member["labels"]["nvidia.com/gpu.present"] == "true"
    assert world["clusters"]["gpu"]["nodes"]["gpu-worker1"]["taints"] == []
    assert not tart_names(fake_tart) & set(STATIC)
    steps = results(result.out)
    assert steps["vms:gpu/gpu-box1"]["detail"].startswith(f"static machine at {sim.address('gpu-box1')}")
    assert steps["preflight:gpu/gpu-box1"]["status"] == "unchanged"  # checked and ready: nothing to do
    assert "CPU load" in steps["preflight:gpu/gpu-box1"]["detail"]
    assert "preflight:gpu/gpu-worker1" not in steps  # labctl's own VMs are not checked
    assert not sim.unknown

    # -- a second install changes nothing
    mark, tart_mark = sim.mark(), fake_tart.mark()
    result = labctl("--json", "install")
    summary = summary_of(result.out)
    assert result.code == 0 and summary["counts"]["changed"] == 0, summary
    assert not set(sim.script_ids(mark)) & APPLY_SCRIPTS
    assert not {argv[0] for argv in fake_tart.argvs(tart_mark)} & MUTATING

    # -- shutdown: the static machines are cordoned and drained, never powered off; the VMs are
    result = labctl("--json", "shutdown")
    assert result.code == 0, summary_of(result.out)["failed"]
    for name in STATIC:
        assert sim.nodes[name].powered
        assert api_node(sim, name)["spec"]["unschedulable"]
    assert not {c.node for c in sim.calls[mark:] if c.script == "shutdown.poweroff"} & set(STATIC)
    assert fake_tart.running_pid("gpu-master") is None and fake_tart.running_pid("gpu-worker1") is None
    assert labctl("--json", "shutdown").code == 0  # twice: nothing more (the cluster's API is down now)
    assert all(sim.nodes[name].powered for name in STATIC)

    # -- boot: the VMs start, the machines labctl drained are uncordoned
    result = labctl("--json", "boot")
    assert result.code == 0, summary_of(result.out)["failed"]
    assert not any(api_node(sim, name)["spec"].get("unschedulable") for name in STATIC)

    # -- destroy one static node: drained, its Node deleted, the machine untouched (still joined: no reset)
    result = labctl("--json", "destroy", "--yes", "--node", "gpu-box2")
    assert result.code == 0, summary_of(result.out)["failed"]
    assert api_node(sim, "gpu-box2") is None and api_node(sim, "gpu-box1") is not None
    assert sim.nodes["gpu-box2"].powered and sim.nodes["gpu-box2"].joined
    assert sim.world()["vms"]["gpu-master"] == "running"

    # -- destroy all with --reset-static: the VMs are gone, the machines run on with kubeadm's state reset
    result = labctl("--json", "destroy", "--yes", "--reset-static")
    assert result.code == 0, summary_of(result.out)["failed"]
    world = sim.world()
    assert world["vms"]["gpu-master"] == world["vms"]["gpu-worker1"] == "absent"
    for name in STATIC:
        assert world["vms"][name] == "running" and not sim.nodes[name].joined
        assert not any(sim.nodes[name].facts["files"].get(p) for p in ("/etc/kubernetes/admin.conf",
                                                                       "/etc/kubernetes/kubelet.conf"))
    assert "kubeadm reset -f" in results(result.out)["destroy:gpu/gpu-box1"]["detail"]
    assert not tart_names(fake_tart) & set(STATIC)

    # -- only `shutdown --power-off` powers a static machine off (from inside); labctl never powers it on
    result = labctl("--json", "shutdown", "--power-off")
    assert result.code == 0, summary_of(result.out)["failed"]
    assert not any(sim.nodes[name].powered for name in STATIC)
    assert results(result.out)["shutdown:gpu/gpu-box1"]["detail"].endswith("powered off from inside")
    result = labctl("--json", "install", "--only", "vms", "--cluster", "gpu")
    failed = {f["node"]: f["detail"] for f in summary_of(result.out)["failed"]}
    assert "labctl does not power on a static machine" in failed["gpu-box1"], failed


def test_a_static_machine_that_is_not_ready_is_reported_before_join_with_each_failed_check(sim):
    sim.nodes["gpu-box1"].busy(load=12.0, available_share=0.05)  # 1.5 per CPU on 8 CPUs, 5% of memory free
    sim.nodes["gpu-box2"].firewalled = True
    mark = sim.mark()
    result = labctl("--json", "install")
    assert result.code != 0
    steps = results(result.out)
    busy = steps["preflight:gpu/gpu-box1"]
    assert busy["status"] == "failed"
    assert "CPU load 12.00 on 8 CPUs (1.50 per CPU, at most 0.8)" in busy["detail"]
    assert "memory 3276 of 65536 MiB available (5%, at least 20%)" in busy["detail"]
    assert "not reachable" not in busy["detail"] and "containerd" not in busy["detail"]  # those passed
    cut_off = steps["preflight:gpu/gpu-box2"]
    assert cut_off["status"] == "failed"
    assert f"the control plane {sim.address('gpu-master')}:6443 is not reachable from gpu-box2" in cut_off["detail"]
    assert "CPU load" not in cut_off["detail"]  # only what failed is named
    for name in STATIC:
        assert steps[f"join:gpu/{name}"]["status"] == "blocked"
        sent = {c.script for c in sim.calls[mark:] if c.node == name}
        assert not sent & {"join.kubeadm", "endpoint.hosts"}, sent  # nothing half-joined
        assert not sim.nodes[name].joined
    assert steps["join:gpu/gpu-worker1"]["status"] == "changed"  # the rest of the cluster goes on

    # -- fixed: the next install joins them
    sim.nodes["gpu-box1"].busy(load=0.4, available_share=0.9)
    sim.nodes["gpu-box2"].firewalled = False
    result = labctl("--json", "install")
    assert result.code == 0, summary_of(result.out)["failed"]
    assert all(sim.nodes[name].joined for name in STATIC)


def test_a_worker_added_long_after_install_joins_with_a_fresh_token_and_only_it_is_touched(sim, fake_tart, prefix):
    full = sim.config.read_text()
    sim.config.write_text(json.dumps(lab_json(prefix, static=("gpu-box1",))))
    assert labctl("--json", "install").code == 0
    # months later: every bootstrap token of install time (kubeadm's 24 h one, labctl's 1 h one) has expired
    # (https://kubernetes.io/docs/reference/access-authn-authz/bootstrap-tokens/: expired tokens are deleted)
    sim.clusters["gpu"].tokens.clear()
    sim.config.write_text(full)

    plan = labctl("--json", "plan")
    assert plan.code == 0
    shown = json.loads(plan.out)
    assert "+ node gpu-box2 is new in clusters.json" in shown["changes"]
    todo = {r["step"]: r["status"] for r in shown["steps"] if r["status"] != "unchanged"}
    assert todo and all("gpu-box2" in step or step in ("nodeconfig:gpu", "cni:gpu") for step in todo), todo

    mark, tart_mark = sim.mark(), fake_tart.mark()
    result = labctl("--json", "install")
    assert result.code == 0, summary_of(result.out)["failed"]
    assert sim.nodes["gpu-box2"].joined
    assert sim.world()["clusters"]["gpu"]["nodes"]["gpu-box2"]["taints"] == [GPU_TAINT]
    changed = {step for step, e in results(result.out).items() if e["status"] == "changed"}
    assert {s for s in changed if "/" in s} <= {f"{p}:gpu/gpu-box2" for p in
                                                 ("prepare", "runtime", "kubepkgs", "join")}, changed
    # the others were only looked at; the first control plane made the fresh token
    touched = {(c.node, c.script) for c in sim.calls[mark:] if c.script in APPLY_SCRIPTS}
    assert {node for node, _ in touched} <= {"gpu-box2", "gpu-master"}, touched
    assert {script for node, script in touched if node == "gpu-master"} <= {"join.token"}, touched
    assert not {argv[0] for argv in fake_tart.argvs(tart_mark)} & MUTATING
