"""The QEMU provider against fakes of `qemu-system-x86_64` and `qemu-img` on PATH: the exact argv of every call, port
allocation, disk growth and shrink refusal, the accelerator choice (a KVM that hangs, one that aborts, overrides),
the QMP conversation of a graceful stop, pidfile handling, and the NoCloud seed.

The fakes (tests/sim/fake_qemu.py) follow the real tools where labctl relies on them.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from labctl.errors import ProviderError, StepError
from labctl.model import parse
from labctl.providers import qemu as qemu_mod
from labctl.providers import qemu_accel
from labctl.providers.qemu import (
    DEFAULT_APPEND,
    QemuError,
    QemuProvider,
    QemuSettings,
    fat_image,
    qmp,
    seed_files,
)
from labctl.state import LabState
from tests.sim.fake_qemu import FakeQemu

GIB = 1024**3

@pytest.fixture
def fake(fake_qemu) -> FakeQemu:
    return fake_qemu


def make_lab(tmp_path: Path, qemu: dict | None = None, base_size: int = 3 * GIB, **top):
    base = tmp_path / "images" / "rootfs.img"
    base.parent.mkdir(exist_ok=True)
    base.write_text(json.dumps({"format": "raw", "virtual-size": base_size}))
    (tmp_path / "images" / "vmlinuz").write_text("kernel")
    (tmp_path / "images" / "initrd.img").write_text("initrd")
    lab = parse(json.dumps({
        "base_image": "images/rootfs.img",
        "provider": {"type": "qemu"},  # a disk image file is refused under tart (labctl/images.py)
        **top,
        "clusters": [{"name": "lab", "pod_cidr": "10.10.0.0/16", "service_cidr": "10.96.0.0/16", "nodes": [
            {"name": "m1", "role": "master", "cpu": 2, "memory": 2048, "disk": 30},
            {"name": "w1", "role": "worker", "cpu": 4, "memory": 4096, "disk": 20},
        ]}],
    }))
    settings = QemuSettings(**({"kernel": "images/vmlinuz", "initrd": "images/initrd.img"} if qemu is None else qemu))
    return lab, settings


def make_provider(tmp_path, settings, lab, notes=None) -> QemuProvider:
    p = QemuProvider(lab, state=LabState(tmp_path / ".labctl"), notify=(notes.append if notes is not None else None))
    p.settings = settings  # each test varies provider.qemu without rebuilding the lab
    p.POLL = 0.02
    return p


@pytest.fixture
def lab(tmp_path):
    return make_lab(tmp_path)


@pytest.fixture
def provider(tmp_path, lab, fake, monkeypatch) -> QemuProvider:
    monkeypatch.setenv(qemu_mod.ENV_ACCEL, "tcg")
    spec, settings = lab
    return make_provider(tmp_path, settings.model_copy(update={"ssh_port_base": _free_port_range()}), spec)


def _free_port_range(span: int = 8) -> int:
    """A base port with `span` free ports after it (tests run in parallel: never assume 10022 is free)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + span < 65000 and all(QemuProvider._port_free(p) for p in range(base, base + span)):
            return base
    raise RuntimeError("no free port range")


def node(lab, name):
    spec = lab[0] if isinstance(lab, tuple) else lab
    return next(n for _, n in spec.nodes if n.name == name)


def vm_dir(tmp_path, name="m1") -> Path:
    return tmp_path / ".labctl" / "qemu" / name


# ---- the settings ----------------------------------------------------------------------------------------------

def test_settings_defaults_and_kernel_options():
    s = QemuSettings()
    assert (s.accel, s.kernel, s.cloud_init, s.ssh_port_base) == ("auto", None, True, 10022)
    with pytest.raises(ValueError, match="initrd only applies with kernel"):
        QemuSettings(initrd="initrd.img")
    with pytest.raises(ValueError, match="append only applies with kernel"):
        QemuSettings(append="quiet")
    with pytest.raises(ValueError):
        QemuSettings(ssh_port_base=80)
    with pytest.raises(ValueError):
        QemuSettings(acel="kvm")  # a typo is an error, never ignored


# ---- reading ---------------------------------------------------------------------------------------------------

def test_available_reports_the_version_line(provider, fake):
    assert provider.available() == "QEMU emulator version 7.2.22 (fake)"
    assert fake.argvs() == [["qemu-system-x86_64", "--version"]]


def test_missing_qemu_is_one_clear_error_with_the_packages(lab, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ProviderError) as err:
        QemuProvider(lab[0], qemu="qemu-system-x86_64").available()
    assert str(err.value) == "qemu-img not found"
    assert "apt-get install qemu-system-x86 qemu-utils" in err.value.hint


def test_nothing_exists_before_create(provider, lab, fake):
    assert provider.get("m1") is None
    assert provider.list() == {}
    assert provider.ip(node(lab, "m1")) is None
    assert fake.argvs() == []  # no VM directory: nothing to ask qemu-img


def test_image_cached_is_the_base_file_and_pull_explains(provider, tmp_path):
    assert provider.image_cached("images/rootfs.img")  # relative to clusters.json's directory
    assert not provider.image_cached("images/other.qcow2")
    with pytest.raises(ProviderError, match=r"images/other.qcow2 does not exist; the qemu provider boots local") as e:
        provider.pull("images/other.qcow2")
    assert "base_image" in e.value.hint


# ---- create / configure ----------------------------------------------------------------------------------------

def test_create_makes_an_overlay_of_the_base_once(provider, lab, fake, tmp_path):
    assert provider.create(node(lab, "m1")) is True
    base = str(tmp_path / "images" / "rootfs.img")
    overlay = str(vm_dir(tmp_path) / "disk.qcow2")
    assert fake.argvs() == [
        ["qemu-img", "info", "--output=json", "-U", base],
        ["qemu-img", "create", "-f", "qcow2", "-b", base, "-F", "raw", overlay],
    ]
    meta = json.loads((vm_dir(tmp_path) / "vm.json").read_text())
    assert meta["base"] == base and meta["base_format"] == "raw"
    assert (meta["cpu"], meta["memory"], meta["ssh_port"]) == (2, 2048, provider.settings.ssh_port_base)
    assert meta["instance_id"].startswith("labctl-m1-")
    vm = provider.get("m1")
    assert (vm.name, vm.state, vm.cpu, vm.memory, vm.disk) == ("m1", "stopped", 2, 2048, 3)
    mark = fake.mark()
    assert provider.create(node(lab, "m1")) is False  # never replaces a VM
    assert fake.argvs(mark) == []
    assert oct(vm_dir(tmp_path).stat().st_mode & 0o777) == "0o700"


def test_create_without_the_base_image_says_what_is_missing(tmp_path, fake, monkeypatch):
    spec, settings = make_lab(tmp_path)
    (tmp_path / "images" / "rootfs.img").unlink()
    p = make_provider(tmp_path, settings, spec)
    with pytest.raises(ProviderError, match="rootfs.img does not exist"):
        p.create(node(spec, "m1"))
    assert fake.argvs() == [] and not vm_dir(tmp_path).exists()


def test_a_failed_create_leaves_nothing_behind(provider, lab, fake, tmp_path):
    (tmp_path / "images" / "rootfs.img").write_text(json.dumps({"format": "qcow2", "virtual-size": GIB}))
    real_info = provider.image_info
    # lie about the format: the fake refuses the mismatch
    provider.image_info = lambda path, vm: {**real_info(path, vm), "format": "raw"}
    with pytest.raises(QemuError) as err:
        provider.create(node(lab, "m1"))
    assert err.value.argv[:2] == ["qemu-img", "create"] and "backing format mismatch" in err.value.tail
    assert not vm_dir(tmp_path).exists()
    assert provider.get("m1") is None


def test_ports_are_allocated_once_per_vm_and_skip_busy_ones(provider, lab, fake, tmp_path):
    base = provider.settings.ssh_port_base
    with socket.socket() as busy:  # another program listens on the first port
        busy.bind(("127.0.0.1", base))
        busy.listen()
        provider.create(node(lab, "m1"))
        provider.create(node(lab, "w1"))
    ports = {name: json.loads((vm_dir(tmp_path, name) / "vm.json").read_text())["ssh_port"] for name in ("m1", "w1")}
    assert ports == {"m1": base + 1, "w1": base + 2}
    provider.delete(node(lab, "m1"))
    provider.create(node(lab, "m1"))  # the lowest free port again: nothing listens on `base` any more
    assert json.loads((vm_dir(tmp_path) / "vm.json").read_text())["ssh_port"] == base


def test_configure_grows_the_disk_and_records_cpu_memory(provider, lab, fake, tmp_path):
    provider.create(node(lab, "m1"))
    mark = fake.mark()
    assert provider.configure(node(lab, "m1")) == ["disk 3 → 30 GB"]
    overlay = str(vm_dir(tmp_path) / "disk.qcow2")
    assert [a for a in fake.argvs(mark) if a[1] != "info"] == [["qemu-img", "resize", "-f", "qcow2", overlay, "30G"]]
    assert provider.get("m1").disk == 30
    bigger = node(lab, "m1").model_copy(update={"cpu": 3, "memory": 3072})
    mark = fake.mark()
    assert provider.configure(bigger) == ["cpu 2 → 3", "memory 2048 → 3072 MiB"]
    assert all(a[1] == "info" for a in fake.argvs(mark))  # cpu and memory are arguments of the next start
    meta = json.loads((vm_dir(tmp_path) / "vm.json").read_text())
    assert (meta["cpu"], meta["memory"]) == (3, 3072)
    assert provider.configure(bigger) == []


def test_a_disk_is_never_shrunk(provider, lab, fake, tmp_path):
    provider.create(node(lab, "m1"))
    provider.configure(node(lab, "m1"))
    smaller = node(lab, "m1").model_copy(update={"disk": 25})
    mark = fake.mark()
    with pytest.raises(StepError) as err:
        provider.configure(smaller)
    assert "m1" in str(err.value) and "25 GB" in str(err.value) and "30 GB" in str(err.value)
    assert "disks only grow" in str(err.value)
    assert not any(a[1] == "resize" for a in fake.argvs(mark))
    assert provider.get("m1").disk == 30


# ---- start ---------------------------------------------------------------------------------------------------

def test_start_runs_qemu_detached_with_exactly_these_arguments(provider, lab, fake, tmp_path):
    provider.create(node(lab, "m1"))
    provider.configure(node(lab, "m1"))
    mark = fake.mark()
    assert provider.start(node(lab, "m1")) is True
    d = vm_dir(tmp_path)
    port = provider.settings.ssh_port_base
    console = tmp_path / ".labctl" / "logs" / "m1.console.log"
    [argv] = fake.argvs(mark, tool="qemu-system-x86_64")
    assert argv == [
        "qemu-system-x86_64", "-name", "guest=m1", "-machine", "q35", "-accel", "tcg", "-cpu", "max",
        "-smp", "2", "-m", "2048", "-nodefaults", "-display", "none", "-daemonize", "-pidfile", f"{d}/qemu.pid",
        "-chardev", f"socket,id=qmp,path={d}/qmp.sock,server=on,wait=off", "-mon", "chardev=qmp,mode=control",
        "-chardev", f"file,id=console,path={console},append=on", "-serial", "chardev:console",
        "-drive", f"if=virtio,file={d}/disk.qcow2,format=qcow2,discard=unmap",
        "-drive", f"if=virtio,file={d}/seed.img,format=raw,readonly=on",
        "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:22", "-device", "virtio-net-pci,netdev=net0",
        "-device", "virtio-rng-pci",
        "-kernel", str(tmp_path / "images" / "vmlinuz"), "-initrd", str(tmp_path / "images" / "initrd.img"),
        "-append", DEFAULT_APPEND,
    ]
    pid = int((d / "qemu.pid").read_text())
    run = json.loads((d / "run.json").read_text())
    assert (run["pid"], run["cpu"], run["memory"], run["ssh_port"], run["accel"]) == (pid, 2, 2048, port, "tcg")
    log = console.read_text()
    assert f"labctl: tcg ({qemu_mod.ENV_ACCEL}=tcg)" in log and "Linux version 6.1.0-fake" in log
    vm = provider.get("m1")
    assert vm.running and (vm.cpu, vm.memory, vm.disk) == (2, 2048, 30)
    assert provider.ip(node(lab, "m1")) == "127.0.0.1"
    assert provider.ssh_address(node(lab, "m1")) == ("127.0.0.1", port)
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        pass  # the forward is up as soon as start returns
    mark = fake.mark()
    assert provider.start(node(lab, "m1")) is False  # already running: no second QEMU
    assert fake.argvs(mark, tool="qemu-system-x86_64") == []


def test_a_disk_image_boots_without_kernel_arguments_and_the_seed_can_be_left_out(tmp_path, fake, monkeypatch):
    monkeypatch.setenv(qemu_mod.ENV_ACCEL, "tcg")
    spec, settings = make_lab(tmp_path, qemu={"cloud_init": False, "ssh_port_base": _free_port_range()})
    p = make_provider(tmp_path, settings, spec)
    p.create(node(spec, "m1"))
    mark = fake.mark()
    p.start(node(spec, "m1"))
    [argv] = fake.argvs(mark, tool="qemu-system-x86_64")
    assert "-kernel" not in argv and "-append" not in argv and "-initrd" not in argv
    assert sum(a == "-drive" for a in argv) == 1 and not (vm_dir(tmp_path) / "seed.img").exists()


def test_commas_in_paths_are_escaped_for_qemu_options(tmp_path, fake, monkeypatch):
    monkeypatch.setenv(qemu_mod.ENV_ACCEL, "tcg")
    odd = tmp_path / "a,b"
    odd.mkdir()
    spec, settings = make_lab(odd, qemu={"ssh_port_base": _free_port_range()})
    p = make_provider(odd, settings, spec)
    p.create(node(spec, "m1"))
    argv = p.command("m1", p._meta("m1"), qemu_mod.Accel("tcg", ""), 10022)
    assert f"if=virtio,file={tmp_path}/a,,b/.labctl/qemu/m1/disk.qcow2,format=qcow2,discard=unmap" in argv
    assert f"{tmp_path}/a,b/.labctl/qemu/m1/qemu.pid" in argv  # a plain argument: no escaping
    assert p.start(node(spec, "m1")) is True  # and QEMU (the fake parses options like QEMU) gets the right paths
    assert p.get("m1").running


def test_a_port_taken_since_create_moves_the_vm_and_says_so(provider, lab, fake, tmp_path):
    notes = []
    provider._notify = notes.append
    provider.create(node(lab, "m1"))
    port = provider.settings.ssh_port_base
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        provider.start(node(lab, "m1"))
    assert provider.ssh_address(node(lab, "m1")) == ("127.0.0.1", port + 1)
    assert json.loads((vm_dir(tmp_path) / "vm.json").read_text())["ssh_port"] == port + 1  # stable from now on
    assert notes == [f"m1: port {port} is taken by another program; SSH moves to {port + 1}"]


def test_qemu_failing_to_start_reports_its_message(provider, lab, fake, tmp_path, monkeypatch):
    provider.create(node(lab, "m1"))
    monkeypatch.setenv("FAKE_QEMU_FAIL", "qemu-system-x86_64: -drive if=virtio: Could not open backing file")
    with pytest.raises(QemuError) as err:
        provider.start(node(lab, "m1"))
    assert err.value.returncode == 1 and "Could not open backing file" in str(err.value)
    assert "m1.console.log" in err.value.hint
    assert not provider.get("m1").running and not (vm_dir(tmp_path) / "run.json").exists()


def test_configure_refuses_a_running_vm(provider, lab, fake):
    provider.create(node(lab, "m1"))
    provider.start(node(lab, "m1"))
    bigger = node(lab, "m1").model_copy(update={"memory": 3072})
    mark = fake.mark()
    with pytest.raises(ProviderError, match=r"m1: is running; stop it before changing memory 2048 → 3072 MiB"):
        provider.configure(bigger)
    assert not any(a[1] == "resize" for a in fake.argvs(mark))


# ---- stop / delete ---------------------------------------------------------------------------------------------

def started(provider, lab, name="m1"):
    provider.create(node(lab, name))
    provider.start(node(lab, name))
    return node(lab, name)


def test_stop_presses_the_acpi_power_button_over_qmp(provider, lab, fake, tmp_path):
    n = started(provider, lab)
    mark = fake.mark()
    assert provider.stop(n, timeout=10) == "powerdown"
    assert fake.qmp(mark) == ["qmp_capabilities", "system_powerdown"]
    assert fake.exits() == [("m1", "powerdown")]
    assert not (vm_dir(tmp_path) / "qemu.pid").exists() and not (vm_dir(tmp_path) / "run.json").exists()
    assert provider.get("m1").state == "stopped" and provider.ip(n) is None
    with pytest.raises(ProviderError, match="m1: not running"):
        provider.ssh_address(n)
    assert provider.stop(n) == "already stopped"


def test_stop_after_guest_poweroff_only_waits(provider, lab, fake, tmp_path):
    n = started(provider, lab)
    (vm_dir(tmp_path) / "fake-guest-poweroff").touch()  # what `systemctl poweroff` over SSH does
    mark = fake.mark()
    assert provider.stop(n, timeout=10, guest_poweroff=True) == "guest"
    assert fake.qmp(mark) == [] and fake.exits() == [("m1", "guest")]


def test_a_guest_that_ignores_acpi_is_quit_over_qmp(provider, lab, fake, tmp_path):
    n = started(provider, lab)
    (vm_dir(tmp_path) / "fake-ignore-acpi").touch()
    mark = fake.mark()
    assert provider.stop(n, timeout=0.5) == "quit"
    assert fake.qmp(mark) == ["qmp_capabilities", "system_powerdown", "qmp_capabilities", "quit"]
    assert fake.exits() == [("m1", "quit")]


def gone(pid: int, within: float = 5.0) -> bool:
    """The process ended (a daemonized QEMU is nobody's child here: it may linger as a zombie until init reaps it,
    and a killed process is briefly neither running nor a zombie while the kernel tears it down)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] in ("Z", "X"):
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.02)
    return False


def test_without_qmp_the_recorded_qemu_is_killed(provider, lab, fake, tmp_path):
    n = started(provider, lab)
    os.unlink(vm_dir(tmp_path) / "qmp.sock")  # QMP unreachable: the last resort is SIGKILL
    pid = int((vm_dir(tmp_path) / "qemu.pid").read_text())
    assert provider.stop(n, timeout=0.5) == "kill"
    assert gone(pid)
    assert not (vm_dir(tmp_path) / "run.json").exists() and not (vm_dir(tmp_path) / "qemu.pid").exists()
    assert provider.get("m1").state == "stopped"


def test_a_stale_pidfile_is_not_a_running_vm_and_its_pid_is_never_signalled(provider, lab, fake, tmp_path):
    provider.create(node(lab, "m1"))
    stranger = subprocess.Popen(["sleep", "60"])  # the PID of a QEMU that died, reused by another program
    try:
        (vm_dir(tmp_path) / "qemu.pid").write_text(f"{stranger.pid}\n")
        assert provider.get("m1").state == "stopped"
        assert not (vm_dir(tmp_path) / "qemu.pid").exists()  # forgotten
        (vm_dir(tmp_path) / "qemu.pid").write_text(f"{stranger.pid}\n")
        assert provider.stop(node(lab, "m1")) == "already stopped"
        assert provider.delete(node(lab, "m1")) is True
        assert stranger.poll() is None  # untouched
    finally:
        stranger.kill()
        stranger.wait()
    (vm_dir(tmp_path)).mkdir(parents=True)
    (vm_dir(tmp_path) / "qemu.pid").write_text("not a pid\n")
    assert provider.ip(node(lab, "m1")) is None


def test_delete_stops_first_removes_everything_and_ignores_absent(provider, lab, fake, tmp_path):
    n = started(provider, lab)
    assert provider.delete(n) is True
    assert fake.exits() == [("m1", "powerdown")] and not vm_dir(tmp_path).exists()
    assert provider.delete(n) is False


def test_only_lab_vms_are_ever_changed(provider, lab, fake, tmp_path):
    for action in (provider.create, provider.configure, provider.start, provider.stop, provider.delete):
        with pytest.raises(ProviderError, match="foreign: not a VM of this lab"):
            action("foreign")
    assert fake.argvs() == []


def test_a_vm_removed_from_clusters_json_is_changed_only_once_owned(provider, lab, fake, tmp_path):
    provider.create(node(lab, "w1"))
    remaining = lab[0].model_copy(update={"clusters": [lab[0].clusters[0].model_copy(
        update={"nodes": [node(lab, "m1")]})]})
    pruning = make_provider(tmp_path, provider.settings, remaining)
    with pytest.raises(ProviderError, match="w1: not a VM of this lab"):
        pruning.delete("w1")
    pruning.own("w1")  # what `install --prune` does for a worker it removes
    assert pruning.delete("w1") is True and not vm_dir(tmp_path, "w1").exists()


def test_list_and_hard_stops(provider, lab, fake):
    started(provider, lab, "m1")
    provider.create(node(lab, "w1"))
    assert {name: vm.state for name, vm in provider.list().items()} == {"m1": "running", "w1": "stopped"}
    assert provider.hard_stops == {"quit", "kill"} and provider.ip_wait_seconds == 0


def test_a_long_lab_path_puts_qmp_in_a_private_short_directory(tmp_path, fake, monkeypatch):
    monkeypatch.setenv(qemu_mod.ENV_ACCEL, "tcg")
    deep = tmp_path / ("x" * 60) / ("y" * 40)
    deep.mkdir(parents=True)
    spec, settings = make_lab(deep, qemu={"ssh_port_base": _free_port_range()})
    p = make_provider(deep, settings, spec)
    n = started(p, spec)
    path = Path(json.loads((vm_dir(deep) / "run.json").read_text())["qmp"])
    assert len(os.fsencode(path)) < 100 and path.parent.stat().st_mode & 0o077 == 0
    assert p.stop(n, timeout=10) == "powerdown"
    p.delete(n)
    assert not path.exists()


# ---- the accelerator ---------------------------------------------------------------------------------------------

@pytest.fixture
def auto(tmp_path, fake, monkeypatch):
    """A provider left to choose its accelerator, on a host whose /dev/kvm opens fine."""
    monkeypatch.setattr(qemu_accel, "kvm_problem", lambda: None)
    monkeypatch.setitem(qemu_mod.PROBE_SECONDS, "kernel", 1.5)
    spec, settings = make_lab(tmp_path)
    notes: list[str] = []
    p = make_provider(tmp_path, settings, spec, notes=notes)
    p.notes = notes
    return p


def probes(fake, mark=0):
    return [a for a in fake.argvs(mark, tool="qemu-system-x86_64") if "-daemonize" not in a and a[1:] != ["--version"]]


def test_a_working_kvm_is_used(auto, fake, tmp_path):
    accel = auto.accelerator()
    assert (accel.name, accel.warning) == ("kvm", None)
    assert accel.flags() == ["-accel", "kvm", "-cpu", "host"]
    [probe] = probes(fake)
    assert probe[:17] == ["qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-machine", "q35", "-m", "512",
                          "-smp", "1", "-nodefaults", "-display", "none", "-no-reboot", "-chardev", probe[16]]
    assert probe[17:] == ["-serial", "chardev:console", "-kernel", str(tmp_path / "images" / "vmlinuz"),
                          "-initrd", str(tmp_path / "images" / "initrd.img"), "-append", "console=ttyS0 panic=-1"]


def test_a_kvm_that_hangs_falls_back_to_tcg_with_a_warning(auto, fake, lab, monkeypatch, tmp_path):
    monkeypatch.setenv("FAKE_QEMU_KVM", "hang")
    auto.settings = auto.settings.model_copy(update={"ssh_port_base": _free_port_range()})
    started_at = time.monotonic()
    accel = auto.accelerator()
    assert time.monotonic() - started_at < 5  # the probe gives up after its timeout: it never hangs labctl
    assert accel.name == "tcg"
    assert "printed nothing on the console within 1.5 s" in accel.reason
    auto.create(node(lab, "m1"))
    auto.start(node(lab, "m1"))
    [warning] = auto.notes
    assert warning.startswith("m1: using TCG (software emulation, several times slower than KVM): a probe boot")
    assert f"{qemu_mod.ENV_ACCEL}=kvm" in warning
    [argv] = [a for a in fake.argvs(tool="qemu-system-x86_64") if "-daemonize" in a]
    assert argv[5:9] == ["-accel", "tcg", "-cpu", "max"]
    console = (tmp_path / ".labctl/logs/m1.console.log").read_text()
    assert "labctl: tcg (a probe boot under KVM printed nothing" in console
    # no probe process is left behind
    out = subprocess.run(["pgrep", "-f", f"{fake.bin / 'fake_qemu.py'}.*-no-reboot"], check=False, capture_output=True)
    assert out.stdout == b""


def test_a_kvm_that_aborts_falls_back_to_tcg_naming_the_error(auto, fake, monkeypatch):
    monkeypatch.setenv("FAKE_QEMU_KVM", "abort")
    accel = auto.accelerator()
    assert accel.name == "tcg"
    assert accel.reason == ("QEMU exited 134 under KVM before the guest printed anything "
                            "(qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69)")


def test_the_probe_verdict_is_cached_per_host_boot(auto, fake, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_QEMU_KVM", "hang")
    assert auto.accelerator().name == "tcg"
    again = make_provider(tmp_path, auto.settings, auto.lab)
    mark = fake.mark()
    assert again.accelerator().name == "tcg"
    assert probes(fake, mark) == []  # remembered in .labctl/qemu/accel.json
    assert json.loads((tmp_path / ".labctl/qemu/accel.json").read_text())["problem"].startswith("a probe boot")


def test_without_an_image_kvm_is_not_vouched_for(tmp_path, fake, monkeypatch):
    monkeypatch.setattr(qemu_accel, "kvm_problem", lambda: None)
    spec, settings = make_lab(tmp_path, qemu={})
    (tmp_path / "images" / "rootfs.img").unlink()
    accel = make_provider(tmp_path, settings, spec).accelerator()
    assert (accel.name, accel.probed) == ("kvm", False) and "no image yet" in accel.reason
    assert fake.argvs() == [] and not (tmp_path / ".labctl/qemu/accel.json").exists()


def test_a_disk_image_is_probed_read_only(tmp_path, fake, monkeypatch):
    monkeypatch.setattr(qemu_accel, "kvm_problem", lambda: None)
    spec, settings = make_lab(tmp_path, qemu={})
    p = make_provider(tmp_path, settings, spec)
    assert p.accelerator().name == "kvm"
    [probe] = probes(fake)
    assert probe[-2:] == ["-drive", f"if=virtio,file={tmp_path}/images/rootfs.img,format=raw,snapshot=on"]


@pytest.mark.parametrize("env, settings, want", [
    ("tcg", {}, ("tcg", f"{qemu_mod.ENV_ACCEL}=tcg")),
    ("KVM", {}, ("kvm", f"{qemu_mod.ENV_ACCEL}=kvm")),
    ("kvm", {"accel": "tcg"}, ("kvm", f"{qemu_mod.ENV_ACCEL}=kvm")),  # the environment wins
    (None, {"accel": "tcg"}, ("tcg", "provider.qemu.accel is tcg")),
])
def test_overrides_skip_the_probe(env, settings, want, tmp_path, fake, monkeypatch):
    if env:
        monkeypatch.setenv(qemu_mod.ENV_ACCEL, env)
    monkeypatch.setattr(qemu_accel, "kvm_problem", lambda: pytest.fail("probed despite an override"))
    spec, s = make_lab(tmp_path, qemu=settings)
    accel = make_provider(tmp_path, s, spec).accelerator()
    assert (accel.name, accel.reason, accel.warning) == (*want, None)
    assert fake.argvs() == []


def test_a_bad_override_is_refused(tmp_path, fake, monkeypatch):
    monkeypatch.setenv(qemu_mod.ENV_ACCEL, "hvf")
    spec, s = make_lab(tmp_path)
    with pytest.raises(ProviderError, match="LABCTL_QEMU_ACCEL='hvf': use kvm or tcg"):
        make_provider(tmp_path, s, spec).accelerator()


def test_no_usable_dev_kvm_means_tcg_without_a_probe(tmp_path, fake, monkeypatch):
    monkeypatch.setattr(qemu_accel, "kvm_problem", lambda: "no /dev/kvm (this host offers no hardware virtualization)")
    spec, s = make_lab(tmp_path)
    accel = make_provider(tmp_path, s, spec).accelerator()
    assert accel.name == "tcg" and accel.reason.startswith("no /dev/kvm") and "TCG" in accel.warning
    assert fake.argvs() == []


def test_kvm_problem_reads_the_device(tmp_path):
    assert qemu_mod.kvm_problem(str(tmp_path / "kvm")) == \
        f"no {tmp_path / 'kvm'} (this host offers no hardware virtualization)"
    (tmp_path / "notkvm").write_text("")
    assert "does not answer KVM_GET_API_VERSION" in qemu_mod.kvm_problem(str(tmp_path / "notkvm"))


# ---- QMP -------------------------------------------------------------------------------------------------------

def qmp_server(path: Path, replies: list[bytes]) -> list[str]:
    """A one-connection QMP server answering with `replies` (after its greeting); returns what it was sent."""
    received: list[str] = []
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen()

    def serve():
        conn, _ = server.accept()
        stream = conn.makefile("rwb")
        stream.write(b'{"QMP": {"version": {}, "capabilities": []}}\r\n')
        stream.flush()
        for reply in replies:
            received.append(stream.readline().decode().strip())
            stream.write(reply)
            stream.flush()
        conn.close()
        server.close()

    threading.Thread(target=serve, daemon=True).start()
    return received


def test_qmp_negotiates_then_runs_the_command_skipping_events(tmp_path):
    sent = qmp_server(tmp_path / "q.sock", [b'{"return": {}}\n',
                                            b'{"event": "POWERDOWN", "timestamp": {}}\n{"return": {}}\n'])
    assert qmp(str(tmp_path / "q.sock"), "system_powerdown") == {}
    assert [json.loads(m) for m in sent] == [{"execute": "qmp_capabilities"}, {"execute": "system_powerdown"}]


def test_qmp_errors_are_provider_errors(tmp_path):
    qmp_server(tmp_path / "q.sock", [b'{"return": {}}\n',
                                     b'{"error": {"class": "GenericError", "desc": "not now"}}\n'])
    with pytest.raises(ProviderError, match="QMP quit: not now"):
        qmp(str(tmp_path / "q.sock"), "quit")


# ---- the NoCloud seed ----------------------------------------------------------------------------------------------

def read_fat(image: bytes) -> tuple[str, dict[str, bytes]]:
    """Read back the root directory of a FAT12 image (long names) — enough to check what fat_image wrote."""
    sector, per_cluster, reserved, fats, entries = struct.unpack_from("<HBHBH", image, 11)
    fat_sectors = struct.unpack_from("<H", image, 22)[0]
    root = (reserved + fats * fat_sectors) * sector
    data = root + entries * 32
    fat = image[reserved * sector:(reserved + fat_sectors) * sector]

    def next_cluster(n):
        v = struct.unpack_from("<H", fat, n * 3 // 2)[0]
        return v >> 4 if n % 2 else v & 0xFFF

    label, files, long_name = "", {}, []
    for i in range(entries):
        e = image[root + i * 32:root + (i + 1) * 32]
        if e[0] == 0:
            break
        if e[11] == 0x0F:
            chars = struct.unpack("<5H", e[1:11]) + struct.unpack("<6H", e[14:26]) + struct.unpack("<2H", e[28:32])
            long_name.insert(0, "".join(chr(c) for c in chars if c not in (0, 0xFFFF)))
        elif e[11] & 0x08:
            label = e[:11].decode().strip()
        else:
            size, cluster, content = struct.unpack_from("<I", e, 28)[0], struct.unpack_from("<H", e, 26)[0], b""
            while 2 <= cluster < 0xFF8:
                offset = data + (cluster - 2) * sector * per_cluster
                content += image[offset:offset + sector * per_cluster]
                cluster = next_cluster(cluster)
            files["".join(long_name)] = content[:size]
            long_name = []
    return label, files


def test_seed_files_carry_user_keys_and_hostname():
    import yaml

    files = seed_files("m1", "admin", "s3cret", ["ssh-ed25519 AAAA labctl"], "labctl-m1-abcd")
    assert yaml.safe_load(files["meta-data"]) == {"instance-id": "labctl-m1-abcd", "local-hostname": "m1"}
    assert files["user-data"].startswith(b"#cloud-config\n")
    config = yaml.safe_load(files["user-data"])
    assert config["hostname"] == "m1" and config["ssh_pwauth"] is True
    [user] = config["users"]
    assert user == {"name": "admin", "shell": "/bin/bash", "sudo": "ALL=(ALL) NOPASSWD:ALL", "lock_passwd": False,
                    "plain_text_passwd": "s3cret", "ssh_authorized_keys": ["ssh-ed25519 AAAA labctl"]}
    keyonly = yaml.safe_load(seed_files("m1", "admin", None, [], "x")["user-data"])
    assert keyonly["ssh_pwauth"] is False and keyonly["users"][0]["lock_passwd"] is True
    assert "plain_text_passwd" not in keyonly["users"][0]


def test_fat_seed_reads_back_with_long_names_and_the_cidata_label():
    files = {"meta-data": b"instance-id: x\n", "user-data": b"#cloud-config\n" + b"a" * 1500,
             "network-config": b""}
    image = fat_image(files, "CIDATA")
    assert len(image) == 2880 * 512 and image[510:512] == b"\x55\xaa"
    assert image[43:54] == b"CIDATA     " and image[54:62] == b"FAT12   "
    assert read_fat(image) == ("CIDATA", files)
    assert fat_image(files, "CIDATA") == image  # reproducible


@pytest.mark.skipif(shutil.which("blkid") is None, reason="blkid (util-linux) is not installed")
def test_blkid_sees_a_vfat_filesystem_labelled_cidata(tmp_path):
    """What cloud-init itself does to find a NoCloud seed: blkid by label."""
    (tmp_path / "seed.img").write_bytes(fat_image({"meta-data": b"x\n", "user-data": b"#cloud-config\n"}, "CIDATA"))
    out = subprocess.run(["blkid", "-p", "-o", "export", str(tmp_path / "seed.img")], check=False, capture_output=True,
                         text=True)
    found = dict(line.split("=", 1) for line in out.stdout.split())
    assert (found.get("TYPE"), found.get("LABEL")) == ("vfat", "CIDATA"), out


@pytest.mark.skipif(shutil.which("mdir") is None, reason="mtools is not installed")
def test_mtools_lists_the_long_names(tmp_path):
    (tmp_path / "seed.img").write_bytes(fat_image({"meta-data": b"x\n", "user-data": b"#cloud-config\n"}, "CIDATA"))
    out = subprocess.run(["mdir", "-i", str(tmp_path / "seed.img"), "-b", "::"], check=False, capture_output=True,
                         text=True)
    assert sorted(out.stdout.split()) == ["::/meta-data", "::/user-data"], out


def test_create_writes_a_private_seed_with_the_lab_key(provider, lab, tmp_path, fake):
    import yaml

    provider.create(node(lab, "m1"))
    seed = vm_dir(tmp_path) / "seed.img"
    assert oct(seed.stat().st_mode & 0o777) == "0o600"  # it holds the password
    label, files = read_fat(seed.read_bytes())
    assert label == "CIDATA" and sorted(files) == ["meta-data", "user-data"]
    user = yaml.safe_load(files["user-data"])["users"][0]
    public = (tmp_path / ".labctl" / "ssh" / "id_ed25519.pub").read_text().strip()
    assert user["ssh_authorized_keys"] == [public] and user["plain_text_passwd"] == "admin"
    meta = yaml.safe_load(files["meta-data"])
    assert meta["instance-id"] == json.loads((vm_dir(tmp_path) / "vm.json").read_text())["instance_id"]


def test_cloud_localds_is_used_when_installed(tmp_path):
    tool = tmp_path / "cloud-localds"
    tool.write_text("#!/bin/sh\necho \"$@\" > \"$1.args\"\ncat \"$2\" \"$3\" > \"$1\"\n")
    tool.chmod(0o755)
    how = qemu_mod.write_seed(tmp_path / "seed.img", {"user-data": b"U\n", "meta-data": b"M\n"}, str(tool))
    assert how == "cloud-localds" and (tmp_path / "seed.img").read_bytes() == b"U\nM\n"
    args = (tmp_path / "seed.img.args").read_text().split()
    assert args[0] == str(tmp_path / "seed.img") and args[1].endswith("/user-data") and args[2].endswith("/meta-data")


# ---- the model ------------------------------------------------------------------------------------------------

def test_settings_are_strict_like_the_rest_of_clusters_json():
    with pytest.raises(ValueError, match="valid integer"):
        QemuSettings.model_validate({"kernel": "k", "initrd": "i", "ssh_port_base": "10022"})


# ---- network bridge ----------------------------------------------------------------------------------------------

@pytest.fixture
def bridged(tmp_path, fake, monkeypatch):
    """A provider on network bridge (labbr0), whose DHCP server writes dnsmasq leases to tmp_path/leases."""
    monkeypatch.setenv(qemu_mod.ENV_ACCEL, "tcg")
    monkeypatch.setenv("FAKE_QEMU_LEASES", str(tmp_path / "leases"))
    spec, settings = make_lab(tmp_path, qemu={"network": "bridge", "bridge": "labbr0", "leases": "leases",
                                              "ssh_port_base": _free_port_range()})
    return make_provider(tmp_path, settings, spec), spec


def test_on_a_bridge_a_vm_gets_a_lab_nic_its_seed_configures_and_its_address_from_the_leases(bridged, fake, tmp_path):
    import yaml

    provider, spec = bridged
    n = node(spec, "m1")
    provider.create(n)
    meta = json.loads((vm_dir(tmp_path) / "vm.json").read_text())
    macs = {"mgmt": meta["mgmt_mac"], "lab": meta["lab_mac"]}
    assert all(mac.startswith("52:54:00:") and len(mac) == 17 for mac in macs.values()) and len(set(macs.values())) == 2
    # the guest's network config (cloud-init): DHCP on both NICs, by MAC, the lab network's route preferred
    _, files = read_fat((vm_dir(tmp_path) / "seed.img").read_bytes())
    assert yaml.safe_load(files["network-config"]) == {"version": 2, "ethernets": {
        "mgmt": {"match": {"macaddress": macs["mgmt"]}, "dhcp4": True, "dhcp4-overrides": {"route-metric": 500}},
        "lab": {"match": {"macaddress": macs["lab"]}, "dhcp4": True, "dhcp4-overrides": {"route-metric": 100}}}}

    assert provider.network_problem() is None and provider.ip_wait_seconds == 180
    provider.start(n)
    [argv] = [a for a in fake.argvs(tool="qemu-system-x86_64") if "-daemonize" in a]
    port = provider.settings.ssh_port_base
    i = argv.index("-netdev")
    assert argv[i:i + 9] == [
        "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device", f"virtio-net-pci,netdev=net0,mac={macs['mgmt']}",
        "-netdev", "bridge,id=lab,br=labbr0", "-device", f"virtio-net-pci,netdev=lab,mac={macs['lab']}", "-device"]
    assert provider.ip(n, wait=0) is None  # no lease yet: the guest is still booting
    address = provider.ip(n, wait=10)  # waits for the lease
    assert address == f"10.213.0.{int(macs['lab'][-2:], 16)}"
    assert provider.ssh_address(n) == ("127.0.0.1", port)  # SSH stays on the forwarded port
    provider.stop(n, timeout=10)
    assert provider.ip(n, wait=5) is None  # never the lease of a stopped VM


def test_the_network_is_fixed_when_the_vm_is_created(provider, lab, fake, tmp_path):
    n = node(lab, "m1")
    provider.create(n)
    provider.settings = provider.settings.model_copy(update={"network": "bridge"})
    for action in (provider.configure, provider.start):
        with pytest.raises(ProviderError) as err:
            action(n)
        assert err.value.message == ("m1: was created with provider.qemu.network user, clusters.json now says bridge; "
                                     "the network is fixed when a VM is created")
        assert "`labctl destroy`" in err.value.hint
    assert fake.argvs(tool="qemu-system-x86_64") == []


def test_user_mode_networking_says_why_no_cluster_forms(provider):
    assert "no address a Kubernetes control plane could advertise" in provider.network_problem()
    assert "a cluster needs network lab (rootless, shared by the lab's VMs) or bridge" in provider.network_problem()


def test_an_unreadable_leases_file_is_a_clear_error(bridged, fake, tmp_path):
    provider, spec = bridged
    (tmp_path / "leases").mkdir()  # a directory: reading it fails
    started(provider, spec)
    with pytest.raises(ProviderError, match=f"m1: cannot read the DHCP leases {tmp_path}/leases"):
        provider.ip(node(spec, "m1"))


def test_default_leases_are_libvirts_for_the_bridge(tmp_path):
    spec, settings = make_lab(tmp_path, qemu={"network": "bridge"})
    assert make_provider(tmp_path, settings, spec).leases_path() == Path("/var/lib/libvirt/dnsmasq/virbr0.status")


MAC = "52:54:00:ab:cd:ef"


@pytest.mark.parametrize(("text", "want"), [
    # libvirt's <bridge>.status: a JSON list
    (json.dumps([{"ip-address": "192.168.122.7", "mac-address": "52:54:00:AB:CD:EF", "expiry-time": 2000},
                 {"ip-address": "192.168.122.9", "mac-address": "52:54:00:00:00:01", "expiry-time": 2000}]),
     "192.168.122.7"),
    ("[]", None),
    # dnsmasq: "expiry mac ip hostname client-id"; the longest-lived lease wins, expired ones do not count
    (f"1500 {MAC} 10.0.0.5 m1 *\n2500 {MAC} 10.0.0.6 m1 *\n900 {MAC} 10.0.0.4 m1 *\n", "10.0.0.6"),
    (f"900 {MAC} 10.0.0.4 m1 *\n", None),
    (f"0 {MAC} 10.0.0.8 m1 *\n2500 {MAC} 10.0.0.6 m1 *\n", "10.0.0.8"),  # 0: an infinite lease
    (f"2500 {MAC} fd00::5 m1 *\nduid 00:01\n", None),  # IPv6 leases and the duid line are not ours
    ("", None),
])
def test_lease_address(text, want):
    assert qemu_mod.lease_address(text, MAC, now=1000) == want
