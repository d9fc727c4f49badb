"""Whole labctl flows in the simulated lab (tests/sim/sim_lab.py), through the real CLI entry point.

The shipped 4-cluster clusters.json is installed from nothing (fake tart VMs, simulated nodes answering each script
by its identity, one TLS API server per cluster reached through the kubeconfigs labctl writes), then lived with:
a second install changes nothing, status/smoke see a hung node within one timeout, shutdown + boot with new DHCP
addresses are repaired, destroy leaves nothing but a foreign VM it never touched. Other tests: one failing cluster
does not stop the other three; an install killed (or Ctrl-C'd) at a random script call resumes to the same end
state; boot waits for an API server that is still starting and uncordons what `shutdown --drain` cordoned; a hung
control plane costs status one timeout. Each test installs once and runs its whole scenario on that install (an
install is a few hundred tart calls).
"""

from __future__ import annotations

import base64
import json
import random
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from labctl.context import Context
from labctl.errors import TransportError
from labctl.kube import endpoint_host, hosts_address
from labctl.kube.client import Kube
from labctl.remote.facts import HOSTS, gather, probe_params
from labctl.render import script
from labctl.state import LabState
from tests.conftest import SHIPPED, run_cli
from tests.sim.fake_tart import wait_for
from tests.sim.sim_lab import SimLab, lease_prefix

pytestmark = pytest.mark.sim

ENV = {"LABCTL_HOST_MEMORY_MIB": str(256 * 1024)}  # the shipped lab needs 68 GiB; the budget is not the point here
IMAGE = "ghcr.io/cirruslabs/ubuntu:latest"
FOREIGN = "my-own-vm"
MUTATING = {"clone", "set", "run", "stop", "delete", "pull", "rename"}
APPLY_SCRIPTS = {"prepare.apply", "runtime.apply", "kubepkgs.apply", "endpoint.hosts", "init.kubeadm", "join.token",
                 "join.upload-certs", "join.kubeadm", "cni.helm-binary", "cni.helm-install", "repair.node-ip",
                 "repair.control-plane"}
SHIPPED_LAB = json.loads(SHIPPED.read_text())
CLUSTERS = {c["name"]: c for c in SHIPPED_LAB["clusters"]}
NODES = {n["name"]: (c["name"], n) for c in SHIPPED_LAB["clusters"] for n in c["nodes"]}
MASTERS = {c: next(n["name"] for n in spec["nodes"] if n["role"] == "master") for c, spec in CLUSTERS.items()}
# vms/prepare/runtime/kubepkgs for 10 nodes, init/cni/nodeconfig for 4 clusters, join for 6 workers, and the 23
# declared stacks (platform 10, dev 7, staging 3, prod 3)
STEPS = 81


@pytest.fixture
def sim(fake_tart, tmp_path, monkeypatch):
    """The shipped lab in a directory of its own, its own loopback /24 for the VMs, no simulated latency."""
    config = tmp_path / "clusters.json"
    config.write_text(SHIPPED.read_text())
    monkeypatch.setenv("FAKE_TART_LEASE_PREFIX", lease_prefix())
    monkeypatch.setenv("FAKE_TART_IP_DELAY", "0")
    monkeypatch.chdir(tmp_path)
    with SimLab(config, fake_tart) as lab:
        yield lab


def labctl(*args: str):
    return run_cli(*args, env=ENV)


def events(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def summary_of(out: str) -> dict:
    return next(e for e in reversed(events(out)) if e.get("event") == "summary")


# ---- what a converged lab looks like ---------------------------------------------------------------------------

def converged_world() -> dict:
    """SimLab.world() of the shipped lab when everything is installed, derived from clusters.json alone."""
    sysctls = {"net.ipv4.ip_forward": "1", "net.bridge.bridge-nf-call-iptables": "1",
               "net.bridge.bridge-nf-call-ip6tables": "1"}
    nodes, clusters = {}, {}
    for name, (cluster, spec) in NODES.items():
        master = spec["role"] == "master"
        nodes[name] = {
            "hostname": name,
            "machine_id_unique": True,
            "swap": [],
            "modules": ["br_netfilter", "overlay"],
            "modules_persisted": ["overlay", "br_netfilter"],
            "sysctl": sysctls,
            "sysctl_persisted": sysctls,
            "containerd": {"version": "2.2.0", "running": True, "systemd_cgroup": True,
                           "sandbox": "registry.k8s.io/pause:3.10.1"},
            "crictl": "runtime-endpoint: unix:///run/containerd/containerd.sock\n"
                      "image-endpoint: unix:///run/containerd/containerd.sock\ntimeout: 10",
            "packages": {p: ("1.35.6-1.1", "hi ") for p in ("kubeadm", "kubelet", "kubectl")},
            "kubelet": ("active", "enabled"),
            "joined": True,
            "control_plane": master,
            "node_ip_current": True,
            "endpoint_is_master": True,
            "helm": "v3.20.2" if master else None,
        }
    for name, spec in CLUSTERS.items():
        members = {}
        for node in spec["nodes"]:
            if node["role"] == "master":
                labels = {"node-role.kubernetes.io/control-plane": "",
                          "node.kubernetes.io/exclude-from-external-load-balancers": ""}
                taints = ["node-role.kubernetes.io/control-plane:NoSchedule"]
            else:
                labels, taints = {"node-role.kubernetes.io/worker": ""}, []
            members[node["name"]] = {"ready": "True", "internal_ip_current": True, "labels": labels,
                                     "taints": taints, "unschedulable": False}
        clusters[name] = {
            "api": "up",
            "nodes": members,
            "workloads": {w: True for w in ("cilium", "cilium-envoy", "cilium-operator", "coredns", "hubble-relay",
                                            "hubble-ui")},
            "ciliumnodes": sorted(members),
            "helm_revisions": 1,
            "cilium_service_host": endpoint_host(name),
        }
    return {"vms": {name: "running" for name in NODES}, "nodes": nodes, "clusters": clusters}


def assert_converged(sim: SimLab) -> None:
    world, want = sim.world(), converged_world()
    for section in ("vms", "nodes", "clusters"):
        for key in want[section]:
            assert world[section].get(key) == want[section][key], (section, key)
    assert not sim.unknown, f"scripts the simulated nodes have no model for: {sim.unknown}"
    for name, cluster in sim.clusters.items():
        assert cluster.inits == 1, f"{name}: kubeadm init ran {cluster.inits} times"


def assert_kubeconfigs(sim: SimLab, tmp: Path) -> None:
    """Each cluster's kubeconfig: 0600, server = the control plane's current address, and TLS verifies there."""
    for cluster, master in MASTERS.items():
        path = tmp / ".labctl" / "kubeconfig" / f"{cluster}.yaml"
        assert path.stat().st_mode & 0o777 == 0o600
        config = yaml.safe_load(path.read_text())
        address = sim.address(master)
        assert config["clusters"][0]["cluster"]["server"] == f"https://{address}:6443"
        assert tls_verifies(address, config, address)
        names = [n.name for n in Kube(cluster, path).nodes()]  # the real client, through this file
        assert sorted(names) == sorted(n["name"] for n in CLUSTERS[cluster]["nodes"])
    merged = yaml.safe_load((tmp / ".labctl" / "kubeconfig" / "merged.yaml").read_text())
    assert sorted(c["name"] for c in merged["contexts"]) == sorted(f"labctl-{c}" for c in CLUSTERS)


def tls_verifies(address: str, kubeconfig: dict, name: str) -> bool:
    """Does the API server at `address` present a certificate for `name`, from the kubeconfig's CA?"""
    ca = base64.b64decode(kubeconfig["clusters"][0]["cluster"]["certificate-authority-data"]).decode()
    context = ssl.create_default_context(cadata=ca)
    try:
        with socket.create_connection((address, 6443), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname=name):
            return True  # the handshake verified the chain and that the certificate names `name`
    except ssl.SSLCertVerificationError:
        return False


def start_foreign_vm(fake) -> subprocess.Popen:
    """A VM of the user's that is not in clusters.json, cloned and running (labctl must never touch it)."""
    assert fake.tart("clone", IMAGE, FOREIGN).returncode == 0
    proc = subprocess.Popen([str(fake.exe), "run", FOREIGN, "--no-graphics"], start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: fake.running_pid(FOREIGN), 10, "the foreign VM to run")
    return proc


def names_in(argv: list[str]) -> set[str]:
    return set(argv[1:])


# ---- the simulated world itself ------------------------------------------------------------------------------------

def test_a_node_whose_vm_is_off_is_an_unreachable_host(sim, fake_tart):
    """The contract the flows rely on: no VM or a stopped VM → TransportError; an open connection dies with the
    boot it was opened in; facts are valid NodeFacts of a fresh clone."""
    ctx = Context(sim.model, LabState(sim.config.parent / ".labctl"), **sim.overrides())
    _, node = ctx.node("dev-worker1")
    with pytest.raises(TransportError, match="not running"):
        ctx.transport(node.name)
    assert sim.provider.create(node) and sim.provider.start(node)
    transport = ctx.transport(node.name)
    facts = gather(transport)
    assert facts.hostname == "ubuntu" and not facts.containerd.installed and not facts.kubeadm_ran
    assert facts.ipv4 == {"enp0s1": [sim.address(node.name)]}
    fake_tart.poweroff(node.name)
    wait_for(lambda: not fake_tart.running_pid(node.name), 10, "the guest to power off")
    with pytest.raises(TransportError, match="lost the connection"):
        transport.run(facts_script())
    ctx.close()


def facts_script():
    return script("facts", "node/facts.sh.j2", **probe_params())


# ---- the day-to-day scenario -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_install_then_status_shutdown_boot_with_new_addresses_and_destroy(sim, fake_tart, tmp_path):
    foreign = start_foreign_vm(fake_tart)
    foreign_pid, foreign_config = fake_tart.running_pid(FOREIGN), fake_tart.config(FOREIGN)

    # -- install from nothing: every step changes something, all four clusters converge
    result = labctl("--json", "install")
    summary = summary_of(result.out)
    assert result.code == 0, summary["failed"]
    assert summary["counts"]["changed"] == STEPS and summary["counts"]["unchanged"] == 0
    assert_converged(sim)
    assert_kubeconfigs(sim, tmp_path)
    for name, cluster in sim.clusters.items():  # what labctl rendered is what the simulated Helm deployed
        values = cluster.cilium
        assert values["k8sServiceHost"] == endpoint_host(name) and values["cluster"]["name"] == name
        assert values["ipam"]["operator"]["clusterPoolIPv4PodCIDRList"] == [CLUSTERS[name]["pod_cidr"]]

    # -- a second install: zero changes, no apply script, no kubeadm init, no helm upgrade, no VM touched
    mark, tart_mark = sim.mark(), fake_tart.mark()
    result = labctl("--json", "install")
    summary = summary_of(result.out)
    assert result.code == 0 and summary["counts"] == {"changed": 0, "unchanged": STEPS, "failed": 0, "blocked": 0,
                                                      "cancelled": 0}
    sent = set(sim.script_ids(mark))
    assert sent and not sent & APPLY_SCRIPTS, sent
    # each node probed once, though every prepare check also reads its peers' machine-ids while they are probed
    assert sim.script_ids(mark).count("facts") == len(NODES)
    assert not MUTATING & {argv[0] for argv in fake_tart.argvs(tart_mark)}
    # each running VM's address asked once (`tart ip`), before the first connection and not again for it
    assert [argv[0] for argv in fake_tart.argvs(tart_mark)].count("ip") == len(NODES)
    assert all(c.helm_revisions == 1 and c.inits == 1 for c in sim.clusters.values())

    # -- status and smoke on the healthy lab
    tart_mark = fake_tart.mark()
    result = labctl("--json", "status", "--timeout", "5")
    report = json.loads(result.out)
    assert result.code == 0 and report["healthy"], result.out
    # one VM list, and each node's address asked once (not again for its SSH probe; each tart call is a process)
    asked = [argv[0] for argv in fake_tart.argvs(tart_mark)]
    assert sorted(asked) == ["ip"] * len(NODES) + ["list"], asked
    assert {c["name"] for c in report["clusters"]} == set(CLUSTERS)
    for c in report["clusters"]:
        assert c["api"]["ok"] and c["cilium"]["ok"] and c["dns"]["ok"]
        assert all(n["vm"] == "running" and n["ssh"]["ok"] and n["ready"]["ok"] and n["version"] == "v1.35.6"
                   for n in c["nodes"])
    junit = tmp_path / "smoke.xml"
    result = labctl("smoke", "--junit", str(junit))
    assert result.code == 0, result.out
    root = ET.parse(junit).getroot()
    assert root.get("failures") == "0" and int(root.get("tests")) >= 4 * len(CLUSTERS)

    # -- a worker that hangs (SSH connects, never answers; its kubelet stops posting): status says so within one
    # timeout, and only its cluster is unhealthy
    sim.hang("staging-worker1")
    hung = sim.nodes["staging-worker1"]
    timeout = 5.0
    started = time.monotonic()
    result = labctl("--json", "status", "--timeout", str(timeout))
    elapsed = time.monotonic() - started
    report = json.loads(result.out)
    assert result.code == 1 and not report["healthy"]
    by_name = {c["name"]: c for c in report["clusters"]}
    dead = next(n for n in by_name["staging"]["nodes"] if n["name"] == "staging-worker1")
    assert dead["vm"] == "running" and not dead["ssh"]["ok"] and not dead["ready"]["ok"] and not dead["healthy"]
    assert all(by_name[c]["healthy"] for c in CLUSTERS if c != "staging")
    # one timeout (the SSH banner that never comes), not one per question: counted, not timed (a busy machine)
    assert hung.unanswered == 1 and hung.late == 0 and elapsed >= timeout
    result = labctl("smoke", "--timeout", str(timeout), "--junit", str(junit))
    assert result.code == 1
    suites = {s.get("name"): s for s in ET.parse(junit).getroot()}
    failures = {case.get("name"): case.find("failure") for case in suites["staging"]}
    assert failures["nodes-ready"] is not None and "staging-worker1" in failures["nodes-ready"].get("message")
    assert failures["cilium-ready"] is not None and failures["api-reachable"] is None  # its agent is down with it
    assert all(case.find("failure") is None for name, s in suites.items() if name != "staging" for case in s)
    assert "FAIL staging/nodes-ready" in result.out
    sim.unhang("staging-worker1")
    assert labctl("--json", "status", "--timeout", "5").code == 0

    # -- shutdown, then boot where DHCP hands two control planes and a worker new addresses
    moved = ["platform-master", "dev-master", "prod-worker1"]
    before = {name: sim.address(name) for name in NODES}
    for name in moved:
        fake_tart.new_ip_on_next_boot(name)
    result = labctl("--json", "shutdown")
    assert result.code == 0, summary_of(result.out)["failed"]
    assert all(not fake_tart.running_pid(name) and fake_tart.ended(name) == "poweroff" for name in NODES)
    assert sim.world()["clusters"]["dev"]["api"] == "down"

    # The VMs alone (no repair yet): the moved control plane serves its old certificate at its new address.
    assert labctl("--json", "install", "--only", "vms").code == 0
    admin = yaml.safe_load(sim.nodes["platform-master"].read("/etc/kubernetes/admin.conf"))
    new_platform = sim.address("platform-master")
    assert new_platform != before["platform-master"]
    assert not tls_verifies(new_platform, admin, new_platform)
    assert tls_verifies(new_platform, admin, endpoint_host("platform"))  # the stable name is still in it

    result = labctl("--json", "boot")
    assert result.code == 0, summary_of(result.out)["failed"]
    after = {name: sim.address(name) for name in NODES}
    assert sorted(n for n in NODES if after[n] != before[n]) == sorted(moved)
    assert_converged(sim)  # incl. Ready nodes at their new InternalIPs and no second helm release
    assert_kubeconfigs(sim, tmp_path)
    for name, node in sim.nodes.items():  # Cilium reaches the API through the hosts line: it follows the master
        cluster = NODES[name][0]
        assert hosts_address(node.text(HOSTS), endpoint_host(cluster)) == after[MASTERS[cluster]]
    assert labctl("--json", "status", "--timeout", "5").code == 0
    result = labctl("--json", "install")  # the repair left nothing behind for install to do
    assert result.code == 0 and summary_of(result.out)["counts"]["changed"] == 0

    # -- destroy: nothing of the lab is left; the foreign VM is as it was
    tart_mark = fake_tart.mark()
    result = labctl("destroy", "--yes")
    assert result.code == 0, result.out + result.err
    assert fake_tart.vms() == [FOREIGN]
    assert fake_tart.running_pid(FOREIGN) == foreign_pid and fake_tart.config(FOREIGN) == foreign_config
    assert not any(FOREIGN in names_in(argv) for argv in fake_tart.argvs(tart_mark))
    assert not (tmp_path / ".labctl").exists()
    for cluster, master in MASTERS.items():
        assert sim.clusters[cluster].server is None
        with pytest.raises(OSError):
            socket.create_connection((after[master], 6443), timeout=2).close()
    foreign.terminate()
    foreign.wait(10)


# ---- one cluster failing ---------------------------------------------------------------------------------------

def test_one_failing_cluster_leaves_the_others_complete_and_says_where(sim, tmp_path):
    sim.fail("init.kubeadm", node="dev-master", rc=1,
             output="[wait-control-plane] Waiting for the kubelet to boot up the control plane\n"
                    "error execution phase wait-control-plane: timed out waiting for the condition")
    result = labctl("install")  # the human summary
    assert result.code == 1
    assert "✗ init:dev failed:" in result.out
    assert "dev-master: `init.kubeadm` exited 1" in result.out
    assert "timed out waiting for the condition" in result.out
    logs = tmp_path / ".labctl" / "logs"
    assert f"logs: {logs}" in result.out
    assert "error execution phase wait-control-plane" in (logs / "dev-master.log").read_text()

    world, want = sim.world(), converged_world()
    for cluster in ("platform", "staging", "prod"):
        assert world["clusters"][cluster] == want["clusters"][cluster]
        for node in CLUSTERS[cluster]["nodes"]:
            assert world["nodes"][node["name"]] == want["nodes"][node["name"]]
    assert world["clusters"]["dev"]["api"] == "down" and not world["nodes"]["dev-worker1"]["joined"]
    lines = dict(re.findall(r"^[✓✗=-] (\S+) +(changed|unchanged|failed|blocked|cancelled)\b", result.out, re.MULTILINE))
    assert lines["init:dev"] == "failed"
    assert {lines[s] for s in ("join:dev/dev-worker1", "cni:dev", "nodeconfig:dev")} == {"blocked"}
    assert sum(status == "failed" for status in lines.values()) == 1

    # fixed: the next install finishes dev and leaves the three others alone
    sim.clear_failures()
    result = labctl("--json", "install")
    changed = {e["step"] for e in events(result.out) if e.get("event") == "result" and e["status"] == "changed"}
    # dev's own steps and stacks, and Argo CD on platform, which now registers dev as a destination. (Platform's
    # registry configured dev's nodes in the first run already: they were up; their /etc/hosts line stays in
    # place when dev's init adds the API endpoint's line after it.)
    dev_stacks = {f"stacks:dev/{name}" for name in CLUSTERS["dev"]["stacks"]}
    assert result.code == 0 and changed == {"init:dev", "join:dev/dev-worker1", "cni:dev", "nodeconfig:dev",
                                            *dev_stacks, "stacks:platform/argocd"}
    assert_converged(sim)


# ---- killed at a random point, then resumed ------------------------------------------------------------------------

# (case, seed, mode, script, how many of them a clean install sends): "kill" cases die right after the node ran the
# command (labctl never heard back: the hardest resume); the "anywhere" cases pick any of the ~145 script calls of a
# clean install, and a "kill" there decides at random whether the node still ran it.
CRASHES = [
    ("kill-after-kubeadm-init", 1, "kill", "init.kubeadm", 4),
    ("kill-after-helm-install", 2, "kill", "cni.helm-install", 4),
    ("ctrl-c-anywhere", 3, "sigint", None, 140),
    ("kill-anywhere", 4, "kill", None, 140),
    # Ctrl-C at several points of its own (issue 12.7): node prep, kubeadm init and join, the CNI's Helm release
    ("ctrl-c-in-runtime-apply", 5, "sigint", "runtime.apply", 10),
    ("ctrl-c-in-kubeadm-init", 6, "sigint", "init.kubeadm", 4),
    ("ctrl-c-in-kubeadm-join", 7, "sigint", "join.kubeadm", 6),
    ("ctrl-c-in-helm-install", 8, "sigint", "cni.helm-install", 4),
]


@pytest.mark.parametrize("seed, mode, script, count", [c[1:] for c in CRASHES], ids=[c[0] for c in CRASHES])
def test_an_install_killed_at_a_random_step_resumes_to_the_same_end_state(sim, seed, mode, script, count):
    rng = random.Random(seed)
    sim.crash_at(rng.randint(1, count), mode, ran=script is not None or rng.random() < 0.5, script=script)
    with ctrl_c_raises():
        result = labctl("--json", "install")
    assert sim.crashed_at is not None, "the crash point was never reached"
    where = f"{mode} at {sim.crashed_at.script} on {sim.crashed_at.node} (ran: {sim.crash.ran})"
    assert result.code == (130 if mode == "sigint" else 1), where
    if mode == "sigint":
        assert summary_of(result.out)["interrupted"] and "interrupted" in result.err, where
        statuses = {e["step"]: e["status"] for e in events(result.out) if e.get("event") == "result"}
        # the steps running at the Ctrl-C end cancelled, none failed (an interrupt is not a failure of the lab)
        assert "cancelled" in statuses.values() and "failed" not in statuses.values(), (where, statuses)
    assert summary_of(result.out)["counts"]["changed"] < STEPS, where

    sim.revive()
    result = labctl("--json", "install")
    assert result.code == 0, (where, summary_of(result.out)["failed"])
    assert_converged(sim)  # incl. kubeadm init once per cluster, one Helm release revision


class ctrl_c_raises:
    """SIGINT raises KeyboardInterrupt in this (the main) thread while the install runs, as in a terminal."""

    def __enter__(self):
        assert threading.current_thread() is threading.main_thread()
        self.previous = signal.signal(signal.SIGINT, signal.default_int_handler)

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self.previous)


def test_shutdown_drain_then_boot_waits_for_the_api_server_and_uncordons(sim):
    """After a boot the kube-apiserver needs a while (its static pod starts after the VM); `boot` must wait for it
    rather than fail on the first refused request (it did: ready's check asked the API without a wait). What
    `shutdown --drain` cordoned, `boot` uncordons."""
    assert labctl("--json", "install", "--cluster", "dev").code == 0
    result = labctl("--json", "shutdown", "--cluster", "dev", "--drain")
    assert result.code == 0, summary_of(result.out)["failed"]
    worker = sim.clusters["dev"].store.get("api/v1", "nodes", "dev-worker1")
    assert worker["spec"]["unschedulable"] and "labctl.internal/drained" in worker["metadata"]["annotations"]
    sim.api_start_seconds = 2.0
    result = labctl("--json", "boot", "--cluster", "dev")
    assert result.code == 0, summary_of(result.out)["failed"]
    ready = next(e for e in events(result.out) if e.get("event") == "result" and e["step"] == "ready:dev")
    assert ready["status"] == "changed" and ready["detail"] == "uncordoned dev-worker1; all Ready"
    world = sim.world()["clusters"]["dev"]["nodes"]
    assert world["dev-worker1"] == converged_world()["clusters"]["dev"]["nodes"]["dev-worker1"]  # schedulable
    assert "labctl.internal/drained" not in sim.clusters["dev"].store.get("api/v1", "nodes", "dev-worker1")[
        "metadata"].get("annotations", {})

def test_status_with_a_hung_control_plane_costs_one_timeout(sim):
    """Every API question of `status` is one attempt: urllib3 by default retries a read timeout 3 times, which made a
    hung API server cost four timeouts (found here; status now asks with kube_retries=0)."""
    assert labctl("--json", "install", "--cluster", "dev").code == 0
    store = sim.clusters["dev"].store
    mark = len(store.requests)
    assert labctl("--json", "status", "--cluster", "dev", "--timeout", "5").code == 0
    asked_when_healthy = len(store.requests) - mark  # + one SSH banner below
    sim.hang("dev-master")  # the VM runs; SSH and the API server accept connections and never answer
    master = sim.nodes["dev-master"]
    timeout = 2.0
    started = time.monotonic()
    result = labctl("--json", "status", "--cluster", "dev", "--timeout", str(timeout))
    elapsed = time.monotonic() - started
    cluster = json.loads(result.out)["clusters"][0]
    assert result.code == 1 and not cluster["api"]["ok"] and not cluster["nodes"][0]["ssh"]["ok"]
    # counted, not timed: every question went out at once (none after another had timed out), none twice
    assert master.late == 0 and master.unanswered <= asked_when_healthy + 1 and elapsed >= timeout
