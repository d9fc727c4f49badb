"""The VM lifecycle through the real CLI entry point against the fake tart: install, shutdown, boot, destroy.

Everything is asserted from what the fake saw (calls.jsonl, how each boot ended) and from labctl's own output.
The SSH side is replaced through lab.CONTEXT_OVERRIDES["transport_factory"]: a node SSH cannot reach, or a guest
that powers itself off when asked. Each test drives one installed lab through a whole scenario instead of
installing it again per assertion (an install is ~140 tart calls, each a new interpreter).
"""

from __future__ import annotations

import io
import json
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from labctl import lab as lab_module
from labctl.errors import TransportError
from labctl.remote.base import Result
from tests.conftest import SHIPPED, run_cli
from tests.sim.fake_tart import max_overlap, vm_of, wait_for

IMAGE = "ghcr.io/cirruslabs/ubuntu:latest"
MUTATING = {"clone", "set", "run", "stop", "delete", "pull", "rename", "prune"}
ENV = {"LABCTL_HOST_MEMORY_MIB": str(256 * 1024)}  # the shipped lab needs 68 GiB; this is not about the budget
FOREIGN = ("my-own-vm", "dev-master-copy")  # in the fake's store, not in clusters.json ("dev-" on purpose)
ADDRESS = re.compile(r"running at (127\.64\.0\.\d+)$")  # the fake's leases are loopback addresses


def _clusters() -> dict[str, dict[str, list[str]]]:
    raw = json.loads(SHIPPED.read_text())
    return {c["name"]: {role: [n["name"] for n in c["nodes"] if n["role"] == role] for role in ("master", "worker")}
            for c in raw["clusters"]}


CLUSTERS = _clusters()
NAMES = sorted(n for roles in CLUSTERS.values() for names in roles.values() for n in names)


def ending_times(fake, name: str) -> list[float]:
    path = fake.home / "fake" / name / "endings.jsonl"
    return [json.loads(line)["time"] for line in path.read_text().splitlines()] if path.exists() else []


# ---- the SSH side ------------------------------------------------------------------------------------------------

@dataclass
class Guests:
    """Transports for the lab's nodes: `cooperative` nodes power off when asked; the others have no SSH."""

    fake: object
    cooperative: set[str] = field(default_factory=set)
    asked: list[tuple[str, str, bool, float]] = field(default_factory=list)  # (node, script id, sudo, time)

    def factory(self, ctx, node):
        return _Transport(self, node.name)


class _Transport:
    def __init__(self, guests: Guests, node: str):
        self.guests, self.node = guests, node

    def run(self, script, *, sudo=False, timeout=None, check=True):
        self.guests.asked.append((self.node, script.id, sudo, time.time()))
        if self.node not in self.guests.cooperative:
            raise TransportError(self.node, "connect: Connection refused")  # at once, as a dead sshd
        assert script.id == "shutdown.poweroff", f"{self.node}: unexpected script {script.id}"
        self.guests.fake.poweroff(self.node)  # the guest runs `systemctl poweroff` a moment later
        return Result(0, "")

    def put(self, path, data, mode=0o644, *, sudo=False):
        raise AssertionError(f"{self.node}: no file transfer expected at the VM layer")

    def get(self, path, *, sudo=False):
        raise AssertionError(f"{self.node}: no file transfer expected at the VM layer")

    def close(self):
        pass


# ---- the lab -----------------------------------------------------------------------------------------------------

@dataclass
class Lab:
    config: Path
    fake: object

    @property
    def state_dir(self) -> Path:
        return self.config.parent / ".labctl"

    def cli(self, *args: str):
        """`labctl --json ARGS`: (result, NDJSON events, the summary event or None)."""
        result = run_cli("--json", "-c", str(self.config), *args, env=ENV)
        events = [json.loads(line) for line in result.out.splitlines() if line.strip()]
        summary = next((e for e in events if e.get("event") == "summary"), None)
        return result, events, summary

    def text(self, *args: str):
        """`labctl ARGS` with the plain (not a terminal) output a user would read."""
        return run_cli("-c", str(self.config), *args, env=ENV)

    def edit(self, node: str, **values) -> None:
        raw = json.loads(self.config.read_text())
        for cluster in raw["clusters"]:
            for n in cluster["nodes"]:
                if n["name"] == node:
                    n.update(values)
        self.config.write_text(json.dumps(raw, indent=2))


def results(events: list[dict], phase: str) -> dict[str, dict]:
    """The node results of one phase (boot also runs cluster-level phases, which have no node)."""
    return {e["node"]: e for e in events if e.get("event") == "result" and e["phase"] == phase}


@pytest.fixture
def lab(fake_tart, tmp_path, monkeypatch):
    """The shipped clusters.json in its own directory, the fake tart on PATH, two foreign VMs (one running)."""
    config = tmp_path / "lab" / "clusters.json"
    config.parent.mkdir()
    shutil.copyfile(SHIPPED, config)
    for name in FOREIGN:
        assert fake_tart.tart("clone", IMAGE, name).returncode == 0
    foreign_run = subprocess.Popen([str(fake_tart.exe), "run", FOREIGN[0], "--no-graphics"], start_new_session=True,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: fake_tart.running_pid(FOREIGN[0]), what="the foreign VM to run")
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))  # not a terminal; a wrongly asked question gets "yes"
    monkeypatch.delitem(lab_module.CONTEXT_OVERRIDES, "transport_factory", raising=False)
    yield Lab(config, fake_tart)
    foreign_run.send_signal(signal.SIGINT)
    foreign_run.wait(timeout=10)


def assert_foreign_untouched(fake, since: int, pid: int) -> None:
    assert all(fake.exists(name) for name in FOREIGN)
    assert fake.running_pid(FOREIGN[0]) == pid and fake.endings(FOREIGN[0]) == []  # never stopped
    named = [a for a in fake.argvs(since) if set(a) & set(FOREIGN)]
    assert named == [], named


def assert_installed(fake) -> None:
    assert all(fake.exists(n) and fake.running_pid(n) for n in NAMES)


# ---- the scenarios -----------------------------------------------------------------------------------------------

def test_install_shutdown_boot_destroy(lab, fake_tart, monkeypatch):
    monkeypatch.setenv("FAKE_TART_IP_DELAY", "0.3")  # boot to DHCP lease: the VMs' waits overlap visibly
    start = fake_tart.mark()
    foreign_pid = fake_tart.running_pid(FOREIGN[0])

    # -- install --only vms: all 10 created and started, side by side -----------------------------------------------
    result, events, summary = lab.cli("install", "--only", "vms")
    assert result.code == 0, result.out + result.err
    assert summary["ok"] and summary["counts"]["changed"] == 10 and summary["counts"]["unchanged"] == 0
    assert_installed(fake_tart)
    addresses = {n: ADDRESS.search(r["detail"]).group(1) for n, r in results(events, "vms").items()}
    assert sorted(addresses) == NAMES and len(set(addresses.values())) == 10
    calls = fake_tart.calls()[start:]
    argvs = [c["argv"] for c in calls]
    assert sorted(a[2] for a in argvs if a[0] == "clone") == NAMES  # each once, never over an existing VM
    assert sorted(a for a in argvs if a[0] == "run") == [["run", n, "--no-graphics"] for n in NAMES]
    spans: dict[str, tuple[float, float]] = {}
    for c in calls:  # each VM's work, from its first to its last tart call (`run` never ends: left out)
        if (vm := vm_of(c["argv"])) in NAMES and c["argv"][0] != "run":
            first, last = spans.get(vm, (c["start"], c["end"]))
            spans[vm] = (min(first, c["start"]), max(last, c["end"]))
    assert max_overlap(spans.values()) >= 5, spans  # built in parallel, not one after another

    mark = fake_tart.mark()
    result, events, summary = lab.cli("install", "--only", "vms")
    assert result.code == 0 and summary["counts"] == {"changed": 0, "unchanged": 10, "failed": 0, "blocked": 0,
                                                      "cancelled": 0}
    argvs = fake_tart.argvs(mark)
    assert argvs and not MUTATING & {a[0] for a in argvs}, argvs  # it looked (get, ip) and changed nothing

    # -- shutdown, no SSH: SIGUSR2 (the ACPI power button), never the plug; workers before control planes ---------
    guests = Guests(fake_tart)
    monkeypatch.setitem(lab_module.CONTEXT_OVERRIDES, "transport_factory", guests.factory)
    mark = fake_tart.mark()
    result, events, summary = lab.cli("shutdown")
    assert result.code == 0 and summary["counts"]["changed"] == 10, result.out
    assert {n: r["detail"] for n, r in results(events, "shutdown").items()} == {n: "stopped (sigusr2)" for n in NAMES}
    assert {n: fake_tart.endings(n) for n in NAMES} == {n: ["sigusr2"] for n in NAMES}
    assert sorted(g[0] for g in guests.asked) == NAMES  # the guest was asked first; it could not be reached
    assert not [a for a in fake_tart.argvs(mark) if a[0] in MUTATING], "no tart stop, nothing else changed"
    assert not any(fake_tart.running_pid(n) for n in NAMES)
    for cluster, roles in CLUSTERS.items():
        last_worker = max(ending_times(fake_tart, w)[-1] for w in roles["worker"])
        assert last_worker < min(ending_times(fake_tart, m)[-1] for m in roles["master"]), cluster

    # -- boot: control planes first, each with its address back (the lease follows the MAC) -------------------------
    monkeypatch.delitem(lab_module.CONTEXT_OVERRIDES, "transport_factory")  # boot never talks to guests
    mark = fake_tart.mark()
    result, events, summary = lab.cli("boot")
    assert result.code == 0 and summary["ok"] and summary["counts"]["changed"] == 10, result.out
    assert {n: r["detail"] for n, r in results(events, "boot").items()} == {
        n: f"started, running at {addresses[n]}" for n in NAMES}
    assert_installed(fake_tart)
    calls = fake_tart.calls()[mark:]
    for cluster, roles in CLUSTERS.items():
        # A worker's first call (its check) comes after its control plane's last one (its address).
        master_done = max(c["end"] for c in calls if vm_of(c["argv"]) in roles["master"] and c["argv"][0] != "run")
        worker_first = min(c["start"] for c in calls if vm_of(c["argv"]) in roles["worker"])
        assert master_done <= worker_first, cluster
    assert sorted(c["argv"] for c in calls if c["argv"][0] in MUTATING) == [
        ["run", n, "--no-graphics"] for n in NAMES]

    mark = fake_tart.mark()
    result, events, summary = lab.cli("boot")
    assert result.code == 0 and summary["ok"] and summary["counts"]["changed"] == 0
    assert {r["status"] for r in results(events, "boot").values()} == {"unchanged"} and len(results(events, "boot")) == 10
    assert not MUTATING & {a[0] for a in fake_tart.argvs(mark)}

    # -- shutdown, a cooperating guest: it powers itself off, no signal at all ----------------------------------------
    guests = Guests(fake_tart, cooperative=set(NAMES))
    monkeypatch.setitem(lab_module.CONTEXT_OVERRIDES, "transport_factory", guests.factory)
    mark = fake_tart.mark()
    result, events, summary = lab.cli("shutdown")
    assert result.code == 0 and summary["counts"]["changed"] == 10, result.out
    assert {n: r["detail"] for n, r in results(events, "shutdown").items()} == {n: "stopped (guest)" for n in NAMES}
    assert {n: fake_tart.endings(n) for n in NAMES} == {n: ["sigusr2", "poweroff"] for n in NAMES}
    assert sorted((node, script, sudo) for node, script, sudo, _ in guests.asked) == [
        (n, "shutdown.poweroff", True) for n in NAMES]
    assert not [a for a in fake_tart.argvs(mark) if a[0] in MUTATING]
    asked_at = {node: at for node, _, _, at in guests.asked}
    for cluster, roles in CLUSTERS.items():  # a control plane is asked only once its workers are off
        last_worker_off = max(ending_times(fake_tart, w)[-1] for w in roles["worker"])
        assert all(last_worker_off < asked_at[m] for m in roles["master"]), cluster
    monkeypatch.delitem(lab_module.CONTEXT_OVERRIDES, "transport_factory")

    # -- boot one cluster only ------------------------------------------------------------------------------------
    result, events, summary = lab.cli("boot", "--cluster", "dev")
    assert result.code == 0 and sorted(results(events, "boot")) == ["dev-master", "dev-worker1"]
    assert [n for n in NAMES if fake_tart.running_pid(n)] == ["dev-master", "dev-worker1"]

    # -- destroy: refused without --yes off a terminal, then one cluster, then everything, then again -------------
    mark = fake_tart.mark()
    result = lab.text("destroy")
    assert result.code == 2 and "needs confirmation" in result.err and "--yes" in result.err
    assert "Delete them?" not in result.out
    assert fake_tart.argvs(mark) == [] and all(fake_tart.exists(n) for n in NAMES)

    tart_logs = lab.state_dir / "logs"
    assert (tart_logs / "dev-master.tart.log").exists() and (tart_logs / "prod-master.tart.log").exists()
    result, events, summary = lab.cli("destroy", "--yes", "--cluster", "dev")
    assert result.code == 0 and summary["counts"]["changed"] == 2, result.out
    assert [n for n in NAMES if not fake_tart.exists(n)] == ["dev-master", "dev-worker1"]
    assert sorted(a for a in fake_tart.argvs(mark) if a[0] == "delete") == [["delete", "dev-master"],
                                                                            ["delete", "dev-worker1"]]
    assert not [a for a in fake_tart.argvs(mark) if a[0] == "stop"]  # the running dev VMs went down gracefully
    state = json.loads((lab.state_dir / "state.json").read_text())
    assert not [k for k in state["steps"] if ":dev/" in k] and [k for k in state["steps"] if ":prod/" in k]
    assert not (tart_logs / "dev-master.tart.log").exists() and (tart_logs / "prod-master.tart.log").exists()

    mark = fake_tart.mark()
    result, events, summary = lab.cli("destroy", "--yes")
    assert result.code == 0 and summary["counts"] == {"changed": 8, "unchanged": 2, "failed": 0, "blocked": 0,
                                                      "cancelled": 0}, result.out
    assert not any(fake_tart.exists(n) for n in NAMES)
    assert sorted(a[1] for a in fake_tart.argvs(mark) if a[0] == "delete") == [
        n for n in NAMES if not n.startswith("dev-")]
    assert not lab.state_dir.exists()  # the whole lab is gone: so is what labctl kept about it

    mark = fake_tart.mark()
    result, events, summary = lab.cli("destroy", "--yes")
    assert result.code == 0 and summary["ok"] and summary["counts"]["unchanged"] == 10
    assert not MUTATING & {a[0] for a in fake_tart.argvs(mark)}
    assert not lab.state_dir.exists()

    # -- and through all of it, the VMs that are not the lab's were never named -----------------------------------
    assert_foreign_untouched(fake_tart, start, foreign_pid)


def test_day_two_changes_and_a_guest_that_ignores_acpi(lab, fake_tart, monkeypatch):
    start = fake_tart.mark()
    foreign_pid = fake_tart.running_pid(FOREIGN[0])
    result, _, summary = lab.cli("install", "--only", "vms")
    assert result.code == 0 and summary["counts"]["changed"] == 10, result.out
    pids = {n: fake_tart.running_pid(n) for n in NAMES}

    # -- one node's memory: only that VM is stopped (gracefully), resized and started -----------------------------
    lab.edit("dev-worker1", memory=6144)
    mark = fake_tart.mark()
    result, events, summary = lab.cli("install", "--only", "vms")
    assert result.code == 0 and (summary["counts"]["changed"], summary["counts"]["unchanged"]) == (1, 9)
    mutations = sorted(a for a in fake_tart.argvs(mark) if a[0] in MUTATING)
    assert mutations == [["run", "dev-worker1", "--no-graphics"], ["set", "dev-worker1", "--memory", "6144"]]
    assert fake_tart.endings("dev-worker1") == ["sigusr2"]
    assert fake_tart.config("dev-worker1")["memorySize"] == 6144 * 2**20
    notes = [e["detail"] for e in events if e.get("event") == "note" and "detail" in e]
    assert "dev-worker1: stopping to apply memory 8192 → 6144 MiB; it starts again right after" in notes
    others = [n for n in NAMES if n != "dev-worker1"]
    assert {n: fake_tart.running_pid(n) for n in others} == {n: pids[n] for n in others}

    # -- a disk that grew through clusters.json cannot shrink back: refused, nothing stopped ------------------------
    lab.edit("prod-worker2", disk=30)
    result, _, summary = lab.cli("install", "--only", "vms")
    assert result.code == 0 and summary["counts"]["changed"] == 1 and fake_tart.disk_gb("prod-worker2") == 30
    pid = fake_tart.running_pid("prod-worker2")
    lab.edit("prod-worker2", disk=20)
    mark = fake_tart.mark()
    result = lab.text("install", "--only", "vms")
    assert result.code == 1
    message = "prod-worker2: clusters.json asks for a 20 GB disk, but the VM already has 30 GB; disks only grow"
    assert message in result.out and "Traceback" not in result.out + result.err
    assert not [a for a in fake_tart.argvs(mark) if a[0] in MUTATING]
    assert fake_tart.running_pid("prod-worker2") == pid and fake_tart.disk_gb("prod-worker2") == 30
    lab.edit("prod-worker2", disk=30)  # back in line, so the shutdown below is about shutdown only

    # -- shutdown: every guest cooperates but one, which has no SSH and ignores ACPI: only it gets `tart stop` ------
    stubborn = "staging-worker1"
    fake_tart.ignore_acpi(stubborn)
    guests = Guests(fake_tart, cooperative=set(NAMES) - {stubborn})
    monkeypatch.setitem(lab_module.CONTEXT_OVERRIDES, "transport_factory", guests.factory)
    endings_before = {n: fake_tart.endings(n) for n in NAMES}
    mark = fake_tart.mark()
    result = lab.text("shutdown", "--timeout", "3")  # seconds each graceful way gets before the next, harder one
    assert result.code == 0, result.out + result.err
    hard = [line.strip() for line in result.out.splitlines() if "hard stop" in line]
    assert hard == [f"{stubborn}: did not shut down by itself; it needed a hard stop (`tart stop`)"]
    assert f"shutdown:staging/{stubborn}" in result.out and "stopped (tart stop)" in result.out
    assert [a for a in fake_tart.argvs(mark) if a[0] in MUTATING] == [["stop", stubborn, "--timeout", "30"]]
    assert {n: fake_tart.endings(n)[len(endings_before[n]):] for n in NAMES} == {
        n: ["sigint" if n == stubborn else "poweroff"] for n in NAMES}
    assert ending_times(fake_tart, stubborn)[-1] < ending_times(fake_tart, "staging-master")[-1]
    assert not any(fake_tart.running_pid(n) for n in NAMES)

    assert_foreign_untouched(fake_tart, start, foreign_pid)


def test_missing_tart_is_one_clear_message_and_plan_still_works(tmp_path):
    config = tmp_path / "clusters.json"
    shutil.copyfile(SHIPPED, config)
    env = {**ENV, "PATH": "/usr/bin:/bin"}  # no tart anywhere
    for command in (["boot"], ["shutdown"], ["destroy", "--yes"], ["boot", "--cluster", "dev"]):
        result = run_cli("-c", str(config), *command, env=env)
        said = result.out + result.err
        assert result.code == 1, (command, said)
        assert said.count("tart not found") == 1 and "brew install cirruslabs/cli/tart" in said, (command, said)
        assert "Traceback" not in said and "failed" not in result.out, (command, said)
    assert not (tmp_path / ".labctl").exists()  # refused before anything was written

    plan = run_cli("-c", str(config), "plan", env=env)
    assert plan.code == 0 and plan.out.count("? vms") == 10 and plan.out.splitlines()[-1].startswith("plan: ")
