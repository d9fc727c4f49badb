"""The Tart provider against the contract (reference/tart-cli.md): the exact argv of every call, the JSON it reads,
and how tart's exit codes become errors. Driven through the fake tart (tests/sim/fake_tart.py), which records every
invocation; a few parsing cases use a stub in place of the subprocess call.
"""

from __future__ import annotations

import json
import subprocess

import pytest


from tests.sim.fake_tart import FakeTart, wait_for

from labctl.errors import ConfigError, ProviderError, StepError  # noqa: E402
from labctl.model import parse  # noqa: E402
from labctl.providers.tart import NOT_FOUND, TartError, TartProvider  # noqa: E402
from labctl.state import LabState  # noqa: E402

IMAGE = "ghcr.io/cirruslabs/ubuntu:latest"
MUTATING = {"clone", "set", "run", "stop", "delete", "pull", "rename", "prune"}


def make_lab(**tart):
    return parse(json.dumps({
        "provider": {"tart": tart},
        "clusters": [{"name": "lab", "pod_cidr": "10.10.0.0/16", "service_cidr": "10.96.0.0/16", "nodes": [
            {"name": "m1", "role": "master", "cpu": 2, "memory": 2048, "disk": 30},
            {"name": "w1", "role": "worker", "cpu": 4, "memory": 4096, "disk": 20},
        ]}],
    }))


@pytest.fixture
def fake(fake_tart) -> FakeTart:
    return fake_tart


@pytest.fixture
def lab():
    return make_lab()


@pytest.fixture
def provider(lab, tmp_path, fake) -> TartProvider:
    p = TartProvider(lab, state=LabState(tmp_path / ".labctl"))
    p.POLL = 0.02
    return p


def node(lab, name):
    return next(n for _, n in lab.nodes if n.name == name)


def created(provider, lab, name="m1"):
    provider.create(node(lab, name))
    provider.configure(node(lab, name))
    return node(lab, name)


# ---- reading ---------------------------------------------------------------------------------------------------

def test_available_runs_version_with_ci_set(provider, fake):
    assert provider.available() == "2.32.1"
    [call] = fake.calls()
    assert call["argv"] == ["--version"]
    assert call["env"]["CI"] == "1"  # plain progress lines, never ANSI escapes


def test_missing_tart_is_one_clear_error(lab, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ProviderError) as err:
        TartProvider(lab).available()
    assert str(err.value) == NOT_FOUND
    assert "brew install cirruslabs/cli/tart" in str(err.value)


def test_get_parses_json_and_missing_is_none(provider, lab, fake):
    assert provider.get("m1") is None
    created(provider, lab)
    mark = fake.mark()
    vm = provider.get("m1")
    assert (vm.name, vm.state, vm.cpu, vm.memory, vm.disk) == ("m1", "stopped", 2, 2048, 30)
    assert fake.argvs(mark) == [["get", "m1", "--format", "json"]]


def test_list_returns_local_vms_only(provider, lab, fake):
    created(provider, lab)
    fake.tart("clone", IMAGE, "someone-elses")
    mark = fake.mark()
    vms = provider.list()
    assert sorted(vms) == ["m1", "someone-elses"]  # the OCI cache entries are not VMs
    assert vms["m1"].state == "stopped" and vms["m1"].disk == 30
    assert fake.argvs(mark) == [["list", "--source", "local", "--format", "json"]]


def stub(provider, stdout, rc=0, stderr=""):
    provider._tart = lambda args, vm=None, **kw: subprocess.CompletedProcess(["tart", *args], rc, stdout, stderr)


def test_list_and_cache_compare_source_case_insensitively(lab):
    p = TartProvider(lab)
    # tart before 2.11 said "oci"; later "OCI"; a future "Local" must not hide a VM either
    stub(p, json.dumps([{"Source": "Local", "Name": "m1", "Disk": 20, "Size": 1, "Running": True, "State": "running"},
                        {"Source": "oci", "Name": IMAGE, "Disk": 20, "Size": 1, "Running": False}]))
    assert list(p.list()) == ["m1"] and p.list()["m1"].running
    assert p.image_cached(IMAGE) and not p.image_cached("ghcr.io/cirruslabs/debian:latest")


def test_non_json_output_is_an_error(lab):
    p = TartProvider(lab)
    stub(p, "Source Name Disk Size State\nlocal m1 20 1 running\n")
    with pytest.raises(ProviderError, match="not JSON"):
        p.list()


def test_image_cached_and_pull_argv(provider, fake):
    assert provider.image_cached(IMAGE) is False
    provider.pull(IMAGE)
    assert provider.image_cached(IMAGE) is True
    assert fake.argvs() == [["list", "--source", "oci", "--format", "json"], ["pull", IMAGE],
                            ["list", "--source", "oci", "--format", "json"]]


# ---- create / configure ------------------------------------------------------------------------------------------

def test_create_clones_only_when_absent(provider, lab, fake):
    assert provider.create(node(lab, "m1")) is True
    assert provider.create(node(lab, "m1")) is False  # tart clone would silently replace it
    assert fake.argvs() == [["get", "m1", "--format", "json"], ["clone", IMAGE, "m1"],
                            ["get", "m1", "--format", "json"]]


def test_configure_sets_what_differs_once(provider, lab, fake):
    provider.create(node(lab, "m1"))
    mark = fake.mark()
    changes = provider.configure(node(lab, "m1"))
    assert changes == ["cpu 4 → 2", "memory 4096 → 2048 MiB", "disk 20 → 30 GB"]
    assert fake.argvs(mark) == [["get", "m1", "--format", "json"],
                                ["set", "m1", "--cpu", "2", "--memory", "2048", "--disk-size", "30"]]
    mark = fake.mark()
    assert provider.configure(node(lab, "m1")) == []
    assert fake.argvs(mark) == [["get", "m1", "--format", "json"]]
    assert fake.disk_gb("m1") == 30


def test_configure_only_the_changed_field(provider, lab, fake):
    provider.create(node(lab, "w1"))  # the image has 4 CPUs, 4096 MiB and 20 GB: exactly w1
    assert provider.configure(node(lab, "w1")) == []
    assert not any(a[0] == "set" for a in fake.argvs())


def test_disk_shrink_is_a_step_error_naming_node_and_sizes(provider, lab, fake):
    created(provider, lab)
    fake.tart("set", "m1", "--disk-size", "40")
    mark = fake.mark()
    with pytest.raises(StepError) as err:
        provider.configure(node(lab, "m1"))
    assert "m1" in str(err.value) and "30 GB" in str(err.value) and "40 GB" in str(err.value)
    assert not any(a[0] == "set" for a in fake.argvs(mark))


def test_configure_refuses_a_running_vm(provider, lab, fake):
    provider.create(node(lab, "m1"))
    fake.tart("set", "m1", "--cpu", "2", "--memory", "2048", "--disk-size", "30")
    provider.start(node(lab, "m1"))
    bigger = node(lab, "m1").model_copy(update={"memory": 3072})
    mark = fake.mark()
    with pytest.raises(ProviderError, match="m1: is running; stop it before changing memory 2048 → 3072 MiB"):
        provider.configure(bigger)
    assert not any(a[0] == "set" for a in fake.argvs(mark))


# ---- start -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("tart, flags", [
    ({}, []),
    ({"network": "softnet"}, ["--net-softnet"]),
    ({"network": "softnet", "softnet_allow": ["10.0.0.0/8", "192.168.1.0/24"]},
     ["--net-softnet", "--net-softnet-allow", "10.0.0.0/8,192.168.1.0/24"]),
    ({"network": "bridged", "bridge_interface": "en0"}, ["--net-bridged", "en0"]),
])
def test_start_runs_detached_with_network_flags(tart, flags, tmp_path, fake):
    lab = make_lab(**tart)
    state = LabState(tmp_path / ".labctl")
    p = TartProvider(lab, state=state)
    p.create(node(lab, "m1"))
    mark = fake.mark()
    assert p.start(node(lab, "m1")) is True
    runs = [a for a in fake.argvs(mark) if a[0] == "run"]
    assert runs == [["run", "m1", "--no-graphics", *flags]]
    pid = int((state.root / "run" / "m1.pid").read_text())
    assert fake.running_pid("m1") == pid  # the recorded PID is the process holding tart's lock
    assert "labctl: tart run m1 --no-graphics" in (state.root / "logs" / "m1.tart.log").read_text()
    mark = fake.mark()
    assert p.start(node(lab, "m1")) is False  # already running: no second `tart run`
    assert fake.argvs(mark) == [["get", "m1", "--format", "json"]]


def test_bridged_without_interface_is_refused_by_the_model(fake):
    with pytest.raises(ConfigError, match=r"provider.tart: network 'bridged' needs bridge_interface"):
        make_lab(network="bridged")
    assert fake.calls() == []  # refused before tart was ever asked anything


def test_start_that_dies_early_reports_the_log_tail(provider, lab, fake, monkeypatch, tmp_path):
    provider.create(node(lab, "m1"))
    monkeypatch.setenv("FAKE_TART_FAIL", json.dumps({"run": [1, "Error: The number of VMs exceeds the system limit"]}))
    with pytest.raises(TartError) as err:
        provider.start(node(lab, "m1"))
    message = str(err.value)
    assert message.startswith("m1: `tart run m1 --no-graphics` exited 1")
    assert "The number of VMs exceeds the system limit" in message
    assert "m1.tart.log" in err.value.hint
    assert not (tmp_path / ".labctl" / "run" / "m1.pid").exists()


# ---- ip ------------------------------------------------------------------------------------------------------------

def test_ip_waits_with_the_configured_resolver(provider, lab, fake, monkeypatch):
    monkeypatch.setenv("FAKE_TART_IP_DELAY", "0.3")
    created(provider, lab)
    assert provider.ip(node(lab, "m1")) is None  # booting: no lease yet, --wait 0 is one try
    provider.start(node(lab, "m1"))
    mark = fake.mark()
    assert provider.ip(node(lab, "m1"), wait=5) == "127.64.0.2"
    assert fake.argvs(mark) == [["get", "m1", "--format", "json"], ["ip", "m1", "--wait", "5"]]
    assert provider.ssh_address(node(lab, "m1")) == ("127.64.0.2", 22)


@pytest.mark.parametrize("tart, extra", [
    ({"ip_resolver": "arp"}, ["--resolver", "arp"]),
    ({"ip_resolver": "agent"}, ["--resolver", "agent"]),
    ({"network": "bridged", "bridge_interface": "en0"}, ["--resolver", "arp"]),  # bootpd knows no bridged VM
    ({"network": "bridged", "bridge_interface": "en0", "ip_resolver": "dhcp"}, []),  # an explicit choice wins
])
def test_ip_resolver_flag(tart, extra, tmp_path, fake):
    lab = make_lab(**tart)
    p = TartProvider(lab, state=LabState(tmp_path / ".labctl"))
    p.create(node(lab, "m1"))
    p.start(node(lab, "m1"))
    mark = fake.mark()
    assert p.ip(node(lab, "m1"), wait=3)
    assert fake.argvs(mark)[-1] == ["ip", "m1", "--wait", "3", *extra]


def test_ip_of_a_stopped_vm_is_none_despite_a_stale_lease(provider, lab, fake):
    created(provider, lab)
    provider.start(node(lab, "m1"))
    address = provider.ip(node(lab, "m1"), wait=5)
    fake.tart("stop", "m1")
    assert fake.tart("ip", "m1").stdout.strip() == address  # the fake, like bootpd, still has the lease
    mark = fake.mark()
    assert provider.ip(node(lab, "m1"), wait=5) is None
    assert fake.argvs(mark) == [["get", "m1", "--format", "json"]]  # it never asked `tart ip`


def test_ip_of_a_vm_the_caller_saw_running_asks_only_tart_ip(provider, lab, fake):
    """Each tart call is a process (a fresh node's `vms` step made ~13 of them): a caller that has just seen the VM
    running (its own `get`, or `start` returned) saves the stale-lease guard's `tart get`."""
    created(provider, lab)
    provider.start(node(lab, "m1"))
    mark = fake.mark()
    assert provider.ip(node(lab, "m1"), wait=5, running=True) == "127.64.0.2"
    assert fake.argvs(mark) == [["ip", "m1", "--wait", "5"]]


# ---- stop / delete -------------------------------------------------------------------------------------------------

def test_stop_sends_sigusr2_to_the_recorded_run(provider, lab, fake, tmp_path):
    created(provider, lab)
    provider.start(node(lab, "m1"))
    mark = fake.mark()
    assert provider.stop(node(lab, "m1"), timeout=10) == "sigusr2"
    assert fake.ended("m1") == "sigusr2"  # a graceful ACPI shutdown, not the plug
    assert not any(a[0] == "stop" for a in fake.argvs(mark))
    assert not (tmp_path / ".labctl" / "run" / "m1.pid").exists()


def test_stop_falls_back_to_tart_stop(provider, lab, fake):
    created(provider, lab)
    provider.start(node(lab, "m1"))
    fake.ignore_acpi("m1")
    mark = fake.mark()
    assert provider.stop(node(lab, "m1"), timeout=0.3) == "tart stop"
    assert ["stop", "m1", "--timeout", "30"] in fake.argvs(mark)
    assert fake.ended("m1") == "sigint"


def test_stop_after_guest_poweroff(provider, lab, fake):
    created(provider, lab)
    provider.start(node(lab, "m1"))
    fake.poweroff("m1")  # what `systemctl poweroff` over SSH does
    mark = fake.mark()
    assert provider.stop(node(lab, "m1"), timeout=10, guest_poweroff=True) == "guest"
    assert fake.ended("m1") == "poweroff"
    assert {a[0] for a in fake.argvs(mark)} == {"get"}
    assert provider.stop(node(lab, "m1")) == "already stopped"


def test_stop_never_signals_a_pid_that_is_not_tart_run(provider, lab, fake, tmp_path):
    created(provider, lab)
    provider.start(node(lab, "m1"))
    stranger = subprocess.Popen(["sleep", "60"])  # the recorded PID was reused by another program
    try:
        (tmp_path / ".labctl" / "run" / "m1.pid").write_text(f"{stranger.pid}\n")
        assert provider.stop(node(lab, "m1"), timeout=5) == "tart stop"
        assert stranger.poll() is None  # untouched
    finally:
        stranger.kill()
        stranger.wait()


def test_delete_stops_first_and_ignores_absent(provider, lab, fake):
    created(provider, lab)
    provider.start(node(lab, "m1"))
    mark = fake.mark()
    assert provider.delete(node(lab, "m1")) is True
    assert fake.argvs(mark)[-1] == ["delete", "m1"]
    assert fake.ended("m1") is None and not fake.exists("m1")  # stopped (sigusr2), then deleted
    mark = fake.mark()
    assert provider.delete(node(lab, "m1")) is False
    assert fake.argvs(mark) == [["get", "m1", "--format", "json"]]


def test_only_lab_vms_are_ever_changed(provider, lab, fake):
    fake.tart("clone", IMAGE, "foreign")
    mark = fake.mark()
    for action in (provider.create, provider.configure, provider.start, provider.stop, provider.delete):
        with pytest.raises(ProviderError, match="foreign: not a VM of this lab"):
            action("foreign")
    assert fake.argvs(mark) == [] and fake.exists("foreign")
    assert all(a[0] != "prune" for a in fake.argvs())


# ---- exit codes -> errors --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rc, stderr, meaning, hint", [
    (1, "Error: LessThanMinimalResourcesError", "tart failed", None),
    (2, 'the specified VM "m1" does not exist', "the VM does not exist, is not running, or is already running",
     "tart list"),
    (64, "Error: Unknown option '--cpu'", "tart rejected the command line (usage error)", "tart --version"),
])
def test_exit_codes_become_clear_errors(rc, stderr, meaning, hint, provider, lab, fake, monkeypatch):
    provider.create(node(lab, "m1"))
    monkeypatch.setenv("FAKE_TART_FAIL", json.dumps({"set": [rc, stderr]}))
    with pytest.raises(TartError) as err:
        provider.configure(node(lab, "m1"))
    e = err.value
    assert (e.vm, e.returncode, e.tail) == ("m1", rc, stderr)
    assert e.argv == ["tart", "set", "m1", "--cpu", "2", "--memory", "2048", "--disk-size", "30"]
    assert str(e) == f"m1: `tart set m1 --cpu 2 --memory 2048 --disk-size 30` exited {rc} ({meaning})\n    {stderr}"
    assert (hint is None and e.hint is None) or hint in e.hint


def test_real_fake_failures_map_to_the_same_codes(provider, lab, fake):
    """Not injected: the fake's own behaviour per the contract, through the provider's runner."""
    provider.create(node(lab, "m1"))
    cases = [(["set", "m1", "--disk-size", "10"], 1, "should be larger than the current disk size"),
             (["set", "nope", "--cpu", "2"], 2, 'the specified VM "nope" does not exist'),
             (["stop", "m1"], 2, 'VM "m1" is not running'),
             (["rename", "m1", "m1"], 64, "already exists"),
             (["clone", IMAGE, "a/b"], 64, "local name"),
             (["ip", "m1", "--frobnicate"], 64, "Unknown option")]
    for args, rc, text in cases:
        with pytest.raises(TartError) as err:
            provider._tart(args, "m1")
        assert err.value.returncode == rc and text in str(err.value), args


def test_run_of_a_missing_vm_exits_1_in_the_fake(fake):
    done = fake.tart("run", "nope", "--no-graphics")
    assert done.returncode == 1 and done.stderr.strip() == 'Error: the specified VM "nope" does not exist'


def test_every_call_carries_ci(provider, lab, fake):
    created(provider, lab)
    provider.start(node(lab, "m1"))
    provider.stop(node(lab, "m1"))
    wait_for(lambda: all(c["end"] for c in fake.calls()), what="all calls finished")
    assert {c["env"]["CI"] for c in fake.calls()} == {"1"}
    assert MUTATING & {a[0] for a in fake.argvs()} == {"clone", "set", "run"}


def test_fake_gives_a_new_address_after_an_expired_lease(provider, lab, fake):
    """The fake's control for later boot/repair tests: same lease across reboots unless it expired."""
    created(provider, lab)
    provider.start(node(lab, "m1"))
    first = provider.ip(node(lab, "m1"), wait=5)
    provider.stop(node(lab, "m1"))
    provider.start(node(lab, "m1"))
    assert provider.ip(node(lab, "m1"), wait=5) == first  # bootpd re-issues the lease by MAC
    provider.stop(node(lab, "m1"))
    fake.new_ip_on_next_boot("m1")
    provider.start(node(lab, "m1"))
    assert provider.ip(node(lab, "m1"), wait=5) not in (None, first)
    assert fake.boots("m1") == 3 and fake.endings("m1") == ["sigusr2", "sigusr2"]
