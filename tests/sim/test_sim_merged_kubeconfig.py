"""The user's kubeconfig after an address change: `kubeconfig --merge` wrote labctl-<cluster> entries into the user's
file; after a shutdown the DHCP leases of two control planes are swapped, and `boot` must leave the user's labctl-dev
context pointing at dev's API server (not at prod's, which now has dev's old address), and `destroy` takes the
entries out again, leaving the user's own context alone."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from labctl.kube.client import Kube
from tests.conftest import run_cli
from tests.sim.sim_lab import SimLab, lease_prefix
from tests.sim.test_sim_e2e import ENV, labctl, summary_of, tls_verifies

pytestmark = pytest.mark.sim

LAB = {"clusters": [
    {"name": "dev", "pod_cidr": "10.20.0.0/16", "service_cidr": "10.97.0.0/16",
     "nodes": [{"name": "dev-master", "role": "master", "cpu": 2, "memory": 4096}]},
    {"name": "prod", "pod_cidr": "10.30.0.0/16", "service_cidr": "10.98.0.0/16",
     "nodes": [{"name": "prod-master", "role": "master", "cpu": 2, "memory": 4096}]}]}
WORK = {"apiVersion": "v1", "kind": "Config", "current-context": "work", "preferences": {},
        "clusters": [{"name": "work", "cluster": {"server": "https://work.example:6443"}}],
        "users": [{"name": "work", "user": {"token": "abc"}}],
        "contexts": [{"name": "work", "context": {"cluster": "work", "user": "work"}}]}


def entry(config: dict, section: str, name: str) -> dict:
    return next(item for item in config[section] if item["name"] == name)


def test_boot_after_two_masters_swapped_addresses_refreshes_the_merged_user_kubeconfig(tmp_path, monkeypatch,
                                                                                         fake_tart):
    monkeypatch.setenv("FAKE_TART_LEASE_PREFIX", lease_prefix())
    monkeypatch.setenv("FAKE_TART_IP_DELAY", "0")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # never the real ~/.kube/config
    config = tmp_path / "clusters.json"
    config.write_text(json.dumps(LAB))
    # $KUBECONFIG is a list; kubectl writes a new context to the first file that exists: the user's work file
    first, user = tmp_path / "missing-first", tmp_path / "home" / "work-kubeconfig"
    user.parent.mkdir()
    user.write_text(yaml.safe_dump(WORK))
    env = {"KUBECONFIG": os.pathsep.join([str(first), str(user)])}
    with SimLab(config, fake_tart) as sim:
        result = labctl("--json", "install")
        assert result.code == 0, summary_of(result.out)["failed"]
        result = run_cli("--json", "kubeconfig", "--merge", env={**ENV, **env})
        assert result.code == 0, result.err
        assert json.loads(result.out) == {"kubeconfig": str(user), "contexts": ["labctl-dev", "labctl-prod"]}
        assert not first.exists()
        before = {name: sim.address(f"{name}-master") for name in ("dev", "prod")}

        assert labctl("--json", "shutdown").code == 0
        fake_tart.swap_leases("dev-master", "prod-master")  # bootpd hands each MAC the other's old address

        result = labctl("--json", "boot")
        assert result.code == 0, summary_of(result.out)["failed"]
        after = {name: sim.address(f"{name}-master") for name in ("dev", "prod")}
        assert after == {"dev": before["prod"], "prod": before["dev"]}

        merged = yaml.safe_load(user.read_text())
        assert merged["current-context"] == "work" and entry(merged, "contexts", "work") == WORK["contexts"][0]
        for name in ("dev", "prod"):
            cluster = entry(merged, "clusters", f"labctl-{name}")["cluster"]
            assert cluster["server"] == f"https://{after[name]}:6443", name
            own = {"clusters": [{"cluster": cluster}]}
            assert tls_verifies(after[name], own, after[name])  # dev's CA verifies the server it now names
        single = tmp_path / "dev-only.yaml"  # the real client through the user's labctl-dev entries
        single.write_text(yaml.safe_dump({**merged, "current-context": "labctl-dev"}))
        assert [n.name for n in Kube("dev", single).nodes()] == ["dev-master"]

        mark = sim.mark()
        result = labctl("--json", "boot")  # nothing moved: nothing to rewrite
        assert result.code == 0 and summary_of(result.out)["counts"]["changed"] == 0
        assert sim.script_ids(mark).count("repair.control-plane") == 0

        result = labctl("destroy", "--yes", "--cluster", "dev")
        assert result.code == 0, result.out + result.err
        merged = yaml.safe_load(user.read_text())
        assert [c["name"] for c in merged["contexts"]] == ["work", "labctl-prod"]
        assert [c["name"] for c in merged["users"]] == ["work", "labctl-prod"]
