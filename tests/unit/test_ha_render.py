"""The rendered artefacts of an HA cluster (examples/ha-lab.json, docs/ha.md): the 2nd/3rd master's kubeadm join
configs and a worker's haproxy.cfg as golden files, their fields against reference/k8s-bootstrap.md §3, the node
script that installs the balancer through shellcheck, and the example lab itself through `labctl validate`.
Regenerate the goldens after an intended change with `UPDATE_GOLDEN=1 python -m pytest tests/unit/test_ha_render.py`.
"""

from __future__ import annotations

import ipaddress

import pytest
import yaml

from labctl import model
from labctl.kube import balancer, highly_available
from labctl.render import script
from phases import join
from tests.conftest import ROOT, assert_golden, check_bash_scripts, run_cli
from tests.unit.test_kubeadm_render import CA_HASH, CERT_KEY, TOKEN

EXAMPLE = ROOT / "examples" / "ha-lab.json"
GOLDEN = ROOT / "tests" / "golden" / "ha"

LAB = model.load(EXAMPLE)
CLUSTER = LAB.clusters[0]
ADDRESSES = {n.name: str(ipaddress.IPv4Address("192.168.64.20") + i) for i, n in enumerate(CLUSTER.nodes)}
MASTERS = [(m.name, ADDRESSES[m.name]) for m in CLUSTER.masters]


def renders() -> dict[str, str]:
    out = {}
    for master in CLUSTER.masters[1:]:
        out[f"{master.name}-join.yaml"] = join.join_config(CLUSTER, master, ADDRESSES[master.name], TOKEN, CA_HASH,
                                                           CERT_KEY)
    worker = CLUSTER.workers[0]
    out[f"{worker.name}-haproxy.cfg"] = balancer.haproxy_config(CLUSTER, worker, MASTERS)
    return out


RENDERS = renders()


def test_the_example_lab_validates_and_is_highly_available():
    assert highly_available(CLUSTER) and len(CLUSTER.masters) == 3 and len(CLUSTER.workers) == 2
    result = run_cli("-c", str(EXAMPLE), "validate")
    assert result.code == 0, result.err


@pytest.mark.parametrize("name", sorted(RENDERS))
def test_golden(name):
    assert_golden(GOLDEN, name, RENDERS[name])


def test_no_stale_golden_files():
    assert {p.name for p in GOLDEN.iterdir()} == set(RENDERS)


@pytest.mark.parametrize("master", CLUSTER.masters[1:], ids=lambda m: m.name)
def test_control_plane_join_fields(master):
    docs = list(yaml.safe_load_all(RENDERS[f"{master.name}-join.yaml"]))
    (j,) = [d for d in docs if d]
    address = ADDRESSES[master.name]
    assert j["discovery"]["bootstrapToken"]["apiServerEndpoint"] == "prod-api.labctl.internal:6443"
    # the joining master's own API server and etcd member are at its own address (reference §3 JoinConfiguration)
    assert j["controlPlane"] == {"localAPIEndpoint": {"advertiseAddress": address, "bindPort": 6443},
                                 "certificateKey": CERT_KEY}
    assert {"name": "node-ip", "value": address} in j["nodeRegistration"]["kubeletExtraArgs"]


def test_haproxy_config_forwards_127_0_0_1_to_every_master_with_health_checks():
    lines = [line.split() for line in RENDERS["prod-worker1-haproxy.cfg"].splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert ["bind", "127.0.0.1:6443"] in lines
    assert ["mode", "tcp"] in lines
    assert ["option", "httpchk", "GET", "/readyz"] in lines
    servers = [words[1:3] for words in lines if words[0] == "server"]
    assert servers == [[name, f"{address}:6443"] for name, address in MASTERS]
    default = next(words for words in lines if words[0] == "default-server")
    assert {"check", "check-ssl", "verify", "none"} <= set(default)


def test_balancer_scripts_pass_shellcheck(tmp_path):
    config = RENDERS["prod-worker1-haproxy.cfg"]
    scripts = {sid: script(sid, "node/haproxy.sh.j2", cluster="prod", node="prod-worker1", config=config,
                           config_path=balancer.HAPROXY_CFG, probe=probe).text
               for sid, probe in (("endpoint.haproxy", False), ("endpoint.haproxy-probe", True))}
    check_bash_scripts(scripts, tmp_path)
