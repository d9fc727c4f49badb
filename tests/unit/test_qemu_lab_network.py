"""provider.qemu.network lab: the rootless segment the lab's VMs share (labctl/providers/qemu_net.py).

What the guest is told (cloud-init network-config), what QEMU is started with (the multicast segment, the forwards),
the addresses and host ports labctl gives and keeps, where the host reaches a cluster (host_endpoint, certSANs,
kubeconfig server, status URLs), and that doctor and plan say up front when the network cannot form a cluster.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from labctl import status
from labctl.errors import ConfigError, ProviderError
from labctl.kube import kubeconfig
from labctl.model import QemuSettings, parse
from labctl.providers import qemu as qemu_mod
from labctl.providers import qemu_net
from labctl.providers.base import LabVMs
from labctl.state import LabState
from tests.unit.test_qemu_provider import _free_port_range, make_lab, make_provider, node, read_fat, vm_dir

HUBBLE = 31235  # CiliumSettings' default Hubble UI NodePort


@pytest.fixture
def fake(fake_qemu):
    return fake_qemu


@pytest.fixture
def lab_net(tmp_path, fake, monkeypatch):
    """A provider on network lab: cluster `lab` with m1 (control plane) and w1."""
    monkeypatch.setenv(qemu_mod.ENV_ACCEL, "tcg")
    spec, settings = make_lab(tmp_path, qemu={"network": "lab", "ssh_port_base": _free_port_range(16)})
    return make_provider(tmp_path, settings, spec), spec


def meta(tmp_path, name="m1") -> dict:
    return json.loads((vm_dir(tmp_path, name) / "vm.json").read_text())


def daemon_argv(fake, name):
    return [a for a in fake.argvs(tool="qemu-system-x86_64") if "-daemonize" in a and f"guest={name}" in a][-1]


def netdevs(argv) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == "-netdev"]


# ---- what the guest is told ----------------------------------------------------------------------------------------

def test_the_seed_gives_the_lab_nic_a_static_address_by_mac_and_leaves_the_default_route_on_the_user_nic(
        lab_net, tmp_path):
    provider, spec = lab_net
    provider.create(node(spec, "m1"))
    m = meta(tmp_path)
    assert m["network"] == "lab" and m["lab_address"] == "10.213.0.1/24"
    _, files = read_fat((vm_dir(tmp_path) / "seed.img").read_bytes())
    assert yaml.safe_load(files["network-config"]) == {"version": 2, "ethernets": {
        # DHCP from slirp on the user NIC: its default route and DNS are the guest's only ones
        "mgmt": {"match": {"macaddress": m["mgmt_mac"]}, "dhcp4": True},
        # the lab NIC: the address only, no gateway, no routes, no DHCP (there is no server on the segment)
        "lab": {"match": {"macaddress": m["lab_mac"]}, "dhcp4": False, "addresses": ["10.213.0.1/24"]}}}


def test_addresses_are_given_once_per_vm_in_the_subnet_and_never_twice(tmp_path, fake, monkeypatch):
    monkeypatch.setenv(qemu_mod.ENV_ACCEL, "tcg")
    spec, settings = make_lab(tmp_path, qemu={"network": "lab", "lab_subnet": "10.50.7.0/28",
                                              "ssh_port_base": _free_port_range(16)})
    provider = make_provider(tmp_path, settings, spec)
    threads = [threading.Thread(target=provider.create, args=(node(spec, n),)) for n in ("m1", "w1")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    addresses = {meta(tmp_path, n)["lab_address"] for n in ("m1", "w1")}
    assert addresses == {"10.50.7.1/28", "10.50.7.2/28"}  # created in parallel: still one each
    assert provider.create(node(spec, "m1")) is False and meta(tmp_path)["lab_address"] in addresses  # kept


def test_a_full_subnet_is_a_clear_error():
    with pytest.raises(ProviderError, match=r"w9: provider.qemu.lab_subnet 10.1.0.0/30 has no free address"):
        qemu_net.allocate_address("10.1.0.0/30", {"10.1.0.1/30", "10.1.0.2/30"}, "w9")
    assert qemu_net.allocate_address("10.1.0.0/29", {"10.1.0.1/29", "10.1.0.3/29"}, "w9") == "10.1.0.2/29"


# ---- what QEMU is started with -------------------------------------------------------------------------------------

def test_every_vm_gets_a_second_nic_on_the_labs_multicast_segment(lab_net, fake, tmp_path):
    provider, spec = lab_net
    for name in ("m1", "w1"):
        provider.create(node(spec, name))
        provider.start(node(spec, name))
    group, port = qemu_net.segment(tmp_path / ".labctl")
    for name in ("m1", "w1"):
        argv = daemon_argv(fake, name)
        assert netdevs(argv)[1] == f"socket,id=lab,mcast={group}:{port},localaddr=127.0.0.1"
        assert f"virtio-net-pci,netdev=lab,mac={meta(tmp_path, name)['lab_mac']}" in argv
        assert f"virtio-net-pci,netdev=net0,mac={meta(tmp_path, name)['mgmt_mac']}" in argv
    assert provider.network_problem() is None and provider.ip_wait_seconds == 0
    assert provider.ip(node(spec, "m1")) == "10.213.0.1" and provider.ip(node(spec, "w1")) == "10.213.0.2"
    assert provider.ssh_address(node(spec, "w1")) == ("127.0.0.1", meta(tmp_path, "w1")["ssh_port"])
    provider.stop(node(spec, "w1"), timeout=10)
    assert provider.ip(node(spec, "w1")) is None  # never the address of a stopped VM


def test_the_segment_is_one_per_lab_directory_and_local_scope():
    first, again, other = (qemu_net.segment(Path(p)) for p in ("/labs/a/.labctl", "/labs/a/.labctl",
                                                                   "/labs/b/.labctl"))
    assert first == again and first != other
    for group, port in (first, other):
        assert ipaddress.ip_address(group) in ipaddress.ip_network("239.255.0.0/16")  # RFC 2365 local scope
        assert 20000 <= port < 30000  # below Linux's ephemeral ports


def test_multicast_on_the_loopback_works_here_for_doctor():
    group, _ = qemu_net.segment(Path("/labs/doctor/.labctl"))
    assert qemu_net.multicast_problem(group) is None


# ---- forwarded ports -----------------------------------------------------------------------------------------------

def test_the_first_control_plane_forwards_the_api_and_the_clusters_nodeports(lab_net, fake, tmp_path):
    provider, spec = lab_net
    for name in ("m1", "w1"):
        provider.create(node(spec, name))
        provider.start(node(spec, name))
    forwards = meta(tmp_path)["forwards"]
    assert set(forwards) == {"6443", str(HUBBLE)}
    base = provider.settings.ssh_port_base
    held = [meta(tmp_path)["ssh_port"], meta(tmp_path, "w1")["ssh_port"], *forwards.values()]
    assert len(set(held)) == 4 and all(base <= p < base + 16 for p in held)
    ssh = meta(tmp_path)["ssh_port"]
    assert netdevs(daemon_argv(fake, "m1"))[0] == (
        f"user,id=net0,hostfwd=tcp:127.0.0.1:{ssh}-:22,hostfwd=tcp:127.0.0.1:{forwards['6443']}-:6443,"
        f"hostfwd=tcp:127.0.0.1:{forwards[str(HUBBLE)]}-:{HUBBLE}")
    assert "forwards" not in meta(tmp_path, "w1")  # a worker: SSH only
    w1_ssh = meta(tmp_path, "w1")["ssh_port"]
    assert netdevs(daemon_argv(fake, "w1"))[0] == f"user,id=net0,hostfwd=tcp:127.0.0.1:{w1_ssh}-:22"
    # where the host reaches them: the API on m1's forward; a NodePort of either node on m1's (it answers on all)
    assert provider.host_endpoint(node(spec, "m1"), 6443) == ("127.0.0.1", forwards["6443"])
    assert provider.host_endpoint("w1", HUBBLE, "10.213.0.2") == ("127.0.0.1", forwards[str(HUBBLE)])
    with pytest.raises(ProviderError, match="w1: TCP port 30800 is not forwarded to this host") as err:
        provider.host_endpoint("w1", 30800)
    assert "labctl boot" in err.value.hint


def test_catalogue_stacks_nodeports_are_forwarded_too():
    spec = parse(json.dumps({"base_image": "x.img", "provider": {"type": "qemu", "qemu": {"network": "lab"}},
                             "clusters": [{"name": "ops", "pod_cidr": "10.10.0.0/16", "service_cidr": "10.96.0.0/16",
                                           "stacks": ["argocd"], "cilium": {"hubble": False}, "nodes": [
                                               {"name": "o1", "role": "master", "cpu": 2, "memory": 2048},
                                               {"name": "o2", "role": "worker", "cpu": 2, "memory": 2048},
                                               {"name": "o3", "role": "master", "cpu": 2, "memory": 2048},
                                               {"name": "o4", "role": "master", "cpu": 2, "memory": 2048}]}]}))
    from labctl.stacks import catalogue

    assert qemu_net.forwarded_guest_ports(spec, "o1") == sorted({6443, *catalogue()["argocd"].node_ports.values()})
    assert 30800 in qemu_net.forwarded_guest_ports(spec, "o1")  # argocd's URL port (templates/stacks/argocd)
    assert qemu_net.forwarded_guest_ports(spec, "o2") == []
    # every other control plane forwards its API: the host's forwarder reaches the cluster while o1 is off
    assert qemu_net.forwarded_guest_ports(spec, "o3") == qemu_net.forwarded_guest_ports(spec, "o4") == [6443]


def test_forwarded_ports_are_the_same_after_a_restart_and_move_only_when_taken(lab_net, fake, tmp_path):
    provider, spec = lab_net
    notes: list[str] = []
    provider._notify = notes.append
    m1 = node(spec, "m1")
    provider.create(m1)
    provider.start(m1)
    first = meta(tmp_path)["forwards"]
    provider.stop(m1, timeout=10)
    provider.start(m1)
    assert meta(tmp_path)["forwards"] == first and notes == []
    assert json.loads((vm_dir(tmp_path) / "run.json").read_text())["forwards"] == first
    provider.stop(m1, timeout=10)
    with socket.socket() as squatter:  # another program takes the API's host port while the VM is stopped
        squatter.bind(("127.0.0.1", first["6443"]))
        squatter.listen()
        provider.start(m1)
    moved = meta(tmp_path)["forwards"]
    assert moved[str(HUBBLE)] == first[str(HUBBLE)] and moved["6443"] != first["6443"]
    assert moved["6443"] not in (meta(tmp_path)["ssh_port"], moved[str(HUBBLE)])
    assert notes == [f"m1: port {first['6443']} is taken by another program; its forward to guest port 6443 moves "
                     f"to {moved['6443']}"]
    assert provider.host_endpoint(m1, 6443) == ("127.0.0.1", moved["6443"])


def test_a_new_vm_never_gets_a_port_another_vm_forwards(lab_net, fake, tmp_path):
    provider, spec = lab_net
    provider.create(node(spec, "m1"))
    provider.start(node(spec, "m1"))
    provider.create(node(spec, "w1"))  # created after m1's forwards were given: skips them
    held = {meta(tmp_path)["ssh_port"], *meta(tmp_path)["forwards"].values()}
    assert meta(tmp_path, "w1")["ssh_port"] not in held


def test_the_lab_address_and_the_network_are_fixed_at_create(lab_net, fake, tmp_path):
    provider, spec = lab_net
    m1 = node(spec, "m1")
    provider.create(m1)
    provider.settings = provider.settings.model_copy(update={"lab_subnet": "10.99.0.0/24"})
    with pytest.raises(ProviderError, match=r"m1: was created with the lab address 10.213.0.1/24, outside "
                                            r"provider.qemu.lab_subnet 10.99.0.0/24"):
        provider.start(m1)
    provider.settings = provider.settings.model_copy(update={"lab_subnet": "10.213.0.0/24", "network": "bridge"})
    with pytest.raises(ProviderError, match="m1: was created with provider.qemu.network lab, clusters.json now says "
                                            "bridge"):
        provider.start(m1)
    assert [a for a in fake.argvs(tool="qemu-system-x86_64") if "-daemonize" in a] == []


def test_providers_on_the_vms_network_reach_a_port_at_the_nodes_address():
    class OnTheNetwork(LabVMs):
        def ip(self, node, wait=0, *, running=False):
            return {"m1": "192.168.64.5"}.get(node)

    provider = OnTheNetwork(SimpleNamespace(nodes=[]))
    assert provider.host_endpoint("m1", 6443) == ("192.168.64.5", 6443)
    assert provider.host_endpoint("m1", 30800, "192.168.64.9") == ("192.168.64.9", 30800)
    with pytest.raises(ProviderError, match="w1: the VM has no address"):
        provider.host_endpoint("w1", 6443)


# ---- validation ----------------------------------------------------------------------------------------------------

def lab_json(qemu: dict, pod="10.10.0.0/16", service="10.96.0.0/16") -> str:
    return json.dumps({"base_image": "x.img", "provider": {"type": "qemu", "qemu": qemu}, "clusters": [
        {"name": "dev", "pod_cidr": pod, "service_cidr": service,
         "nodes": [{"name": "d1", "role": "master", "cpu": 2, "memory": 2048}]}]})


def test_the_lab_subnet_must_not_overlap_pods_services_or_the_user_nic():
    assert parse(lab_json({"network": "lab"})).provider.qemu.lab_subnet == "10.213.0.0/24"
    with pytest.raises(ConfigError) as err:
        parse(lab_json({"network": "lab"}, pod="10.213.0.0/16"))
    assert [(p.path, p.message) for p in err.value.problems] == [
        ("clusters[0].pod_cidr", "10.213.0.0/16 overlaps the qemu lab network 10.213.0.0/24 the VMs live on")]
    with pytest.raises(ConfigError) as err:
        parse(lab_json({"network": "lab", "lab_subnet": "10.0.0.0/16"}))
    assert [p.path for p in err.value.problems] == ["provider.qemu.lab_subnet"]
    assert "QEMU's user-mode network 10.0.2.0/24" in err.value.problems[0].message
    parse(lab_json({"network": "user", "lab_subnet": "10.213.0.0/24"}, pod="10.213.0.0/16"))  # not on it: fine
    with pytest.raises(ValueError, match="too small"):
        QemuSettings(lab_subnet="10.213.0.0/29")


# ---- where the host reaches the API: certSANs, kubeconfig server, status URLs -------------------------------------

def test_the_api_certificate_names_the_host_end_of_the_api():
    from phases import init

    spec = parse(lab_json({"network": "lab"}))
    cluster = spec.clusters[0]

    def sans(text):
        return next(d for d in yaml.safe_load_all(text) if d["kind"] == "ClusterConfiguration")["apiServer"]["certSANs"]

    assert sans(init.init_config(spec, cluster, "10.213.0.1", ("127.0.0.1",))) == [
        "dev-api.labctl.internal", "10.213.0.1", "127.0.0.1"]
    # where the host is on the VMs' network (Tart), the address is the host end too: no second entry
    assert sans(init.init_config(spec, cluster, "192.168.64.5", ("192.168.64.5",))) == [
        "dev-api.labctl.internal", "192.168.64.5"]
    assert sans(init.init_config(spec, cluster, "192.168.64.5")) == ["dev-api.labctl.internal", "192.168.64.5"]


ADMIN_CONF = yaml.safe_dump({
    "apiVersion": "v1", "kind": "Config", "current-context": "kubernetes-admin@dev",
    "clusters": [{"name": "dev", "cluster": {"server": "https://dev-api.labctl.internal:6443",
                                             "certificate-authority-data": "Q0E="}}],
    "users": [{"name": "kubernetes-admin", "user": {"client-certificate-data": "Qw==", "client-key-data": "Sw=="}}],
    "contexts": [{"name": "kubernetes-admin@dev", "context": {"cluster": "dev", "user": "kubernetes-admin"}}]})


class Forwarding:
    """A provider whose host end of port P of the first control plane is 127.0.0.1:P+10000 (QEMU network lab)."""

    def host_endpoint(self, node, guest_port, address=None):
        assert (node if isinstance(node, str) else node.name) in ("d1", "w1")
        if guest_port == 30900:
            raise ProviderError(f"{node}: TCP port 30900 is not forwarded to this host (network lab)")
        return "127.0.0.1", guest_port + 10000


def test_the_kubeconfig_on_this_machine_points_at_the_host_end_of_the_api(tmp_path):
    from phases import init

    spec = parse(lab_json({"network": "lab"}))
    ctx = SimpleNamespace(lab=spec, provider=Forwarding(), state=LabState(tmp_path / ".labctl"),
                          transport=lambda name: SimpleNamespace(get=lambda path, sudo=False: ADMIN_CONF.encode()))
    cluster = spec.clusters[0]
    assert init.host_sans(ctx, cluster, "10.213.0.1") == ("127.0.0.1",)
    init.fetch_kubeconfig(ctx, cluster, "10.213.0.1")
    assert kubeconfig.server(kubeconfig.read(ctx.state, "dev")) == "https://127.0.0.1:16443"


def test_status_urls_are_where_this_machine_reaches_the_ports():
    provider = Forwarding()
    assert status.host_url(provider, "w1", "10.213.0.2", "http://{address}:30800/") == "http://127.0.0.1:40800/"
    assert status.host_url(provider, "d1", "10.213.0.1", "https://{address}:6443") == "https://127.0.0.1:16443"
    assert status.host_url(provider, "w1", "10.213.0.2", "http://{address}:30900/") is None  # not reachable
    assert status.host_url(provider, "w1", "10.213.0.2", "http://{address}/x") == "http://10.213.0.2/x"
    assert status.host_url(provider, "w1", "10.213.0.2", "https://docs.example/") == "https://docs.example/"


# ---- doctor and plan say it up front -------------------------------------------------------------------------------

def test_doctor_fails_the_network_check_of_a_lab_on_user_networking(tmp_path, fake, monkeypatch):
    from labctl import doctor

    spec, settings = make_lab(tmp_path, qemu={"network": "user"})
    finding = doctor.check_network(make_provider(tmp_path, settings, spec))
    assert finding.status == "fail" and "no address a Kubernetes control plane could advertise" in finding.detail
    assert 'network to "lab"' in finding.fix
    spec, settings = make_lab(tmp_path, qemu={"network": "lab"})
    lab_provider = make_provider(tmp_path, settings, spec)
    group, port = qemu_net.segment(tmp_path / ".labctl")
    finding = doctor.check_network(lab_provider)
    assert finding.status == "ok" and f"multicast {group}:{port} on 127.0.0.1" in finding.detail
    monkeypatch.setattr(qemu_net, "multicast_problem", lambda group: "a datagram did not arrive within 1 s")
    finding = doctor.check_network(lab_provider)
    assert finding.status == "fail"
    assert finding.detail.endswith("cannot work here: a datagram did not arrive within 1 s")


def test_plan_marks_init_blocked_with_the_reason_before_any_vm_exists(tmp_path):
    from labctl.engine import Engine, build_steps
    from phases import init, join

    spec = parse(lab_json({"network": "user"}))
    spec = spec.model_copy(update={"clusters": [spec.clusters[0].model_copy(update={"nodes": [
        *spec.clusters[0].nodes, spec.clusters[0].nodes[0].model_copy(update={"name": "w1", "role": "worker"})]})]})
    reason = "provider.qemu.network is user: each VM is alone"
    provider = SimpleNamespace(network_problem=lambda: reason)
    ctx = SimpleNamespace(lab=spec, provider=provider, debug=lambda *a: None)
    summary = Engine(ctx).plan(build_steps(spec, [init.phase, join.phase]))
    by_phase = {r.step.phase.name: r for r in summary.results}
    assert (by_phase["init"].status, by_phase["init"].detail) == ("blocked", reason)
    assert by_phase["join"].status == "pending" and by_phase["join"].detail == "after init"
