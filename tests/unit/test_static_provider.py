"""The static provider and the router in front of the lab's VM provider (labctl/providers/static.py)."""

from __future__ import annotations

import json
import socket

import pytest

from labctl import model
from labctl.errors import ProviderError
from labctl.providers.static import NodeRouter, StaticProvider, route


def lab(port: int) -> model.Lab:
    return model.parse(json.dumps({
        "provider": {"type": "tart", "tart": {"network": "bridged", "bridge_interface": "en0"}},
        "clusters": [{"name": "ml", "pod_cidr": "10.10.0.0/16", "service_cidr": "10.96.0.0/16", "nodes": [
            {"name": "ml-master", "role": "master", "cpu": 2, "memory": 4096},
            {"name": "gpu-box1", "role": "worker", "provider": "static", "address": "127.0.0.1", "ssh_port": port}]}]}))


class VMs:
    """A stand-in VM provider that records what it was asked."""

    def __init__(self):
        self.asked: list[tuple[str, str]] = []

    def __getattr__(self, name):
        def call(node, *args, **kwargs):
            self.asked.append((name, node if isinstance(node, str) else node.name))
            return f"vm-{name}"
        return call


@pytest.fixture
def listening():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens once it is closed


def test_a_machine_whose_ssh_port_answers_is_running_else_unknown(listening):
    provider = StaticProvider(lab(listening))
    assert provider.get("gpu-box1").state == "running"
    assert provider.ip("gpu-box1") == "127.0.0.1" and provider.ssh_address("gpu-box1") == ("127.0.0.1", listening)
    silent = StaticProvider(lab(closed_port()))
    vm = silent.get("gpu-box1")
    assert vm.state == "unknown" and not vm.running


def test_it_never_creates_starts_stops_or_deletes_a_machine(listening):
    node = lab(closed_port()).cluster("ml").nodes[1]
    provider = StaticProvider(lab(closed_port()))
    for action, call in (("create", provider.create), ("power on", provider.start), ("power off", provider.stop),
                         ("delete", provider.delete)):
        with pytest.raises(ProviderError, match=f"labctl does not {action} a static machine"):
            call(node)
    assert provider.configure(node) == []
    assert StaticProvider(lab(listening)).start(node) is False  # it answers already: nothing to do


def test_the_router_sends_each_node_to_its_own_provider(listening):
    spec, vms = lab(listening), VMs()
    router = route(spec, vms)
    assert isinstance(router, NodeRouter) and route(spec, router) is router
    assert router.ip("gpu-box1") == "127.0.0.1" and router.get("gpu-box1").running
    assert router.ip("ml-master") == "vm-ip" and router.stop(spec.cluster("ml").nodes[0]) == "vm-stop"
    assert vms.asked == [("ip", "ml-master"), ("stop", "ml-master")]
    assert router.image_cached("x") == "vm-image_cached"  # not about a node: the VM provider's


def test_a_lab_without_static_nodes_keeps_its_provider():
    spec = model.parse('{"clusters": [{"name": "a", "pod_cidr": "10.10.0.0/16", "service_cidr": "10.96.0.0/16", '
                       '"nodes": [{"name": "a-m", "role": "master", "cpu": 2, "memory": 4096}]}]}')
    vms = VMs()
    assert route(spec, vms) is vms


def test_a_static_machines_log_is_its_node_log_in_the_lab(tmp_path):
    from labctl.state import LabState

    state = LabState(tmp_path / ".labctl")
    vms = VMs()
    vms.state = state  # what the VM providers carry, and the router hands on to the static provider
    router = route(lab(closed_port()), vms)
    assert router.log_path("gpu-box1") == state.node_log("gpu-box1") == tmp_path / ".labctl/logs/gpu-box1.log"
    assert StaticProvider(lab(closed_port())).log_path("gpu-box1").parts[-3:] == (".labctl", "logs", "gpu-box1.log")
