"""`labctl doctor` through the real entry point: blockers fail with an explanation, warnings do not, JSON parses.

The platform is simulated by patching what labctl.host.detect reads (platform.system/machine), so each test means
the same on Linux and on a Mac; memory and CPUs come from LABCTL_HOST_MEMORY_MIB / LABCTL_HOST_CPUS, free disk
from a patched labctl.host.free_disk_gb. The shipped lab asks for 22 vCPUs, 68 GiB of memory and 200 GB of disk.
"""

from __future__ import annotations

import json
import platform

import pytest

from labctl import host
from tests.conftest import run_cli

NO_TART = "/usr/bin:/bin"  # no tart anywhere, as on any Linux machine
ROOMY = {"LABCTL_HOST_MEMORY_MIB": str(256 * 1024), "LABCTL_HOST_CPUS": "16"}  # 22 vCPU / 16 = 1.38x


@pytest.fixture
def linux(monkeypatch):
    monkeypatch.setattr(platform, "system", lambda: "Linux")
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(host, "free_disk_gb", lambda path: 500.0)  # this machine's own free space must not matter


@pytest.fixture
def mac(monkeypatch):
    """An Apple-silicon Mac with plenty of free disk (memory and CPUs come from the environment)."""
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    monkeypatch.setattr(platform, "machine", lambda: "arm64")
    monkeypatch.setattr(platform, "mac_ver", lambda: ("15.3", ("", "", ""), "arm64"))
    monkeypatch.setattr(host, "free_disk_gb", lambda path: 500.0)


def doctor(lab_file, env, *extra):
    result = run_cli("--json", "-c", str(lab_file), "doctor", *extra, env=env)
    doc = json.loads(result.out)
    assert set(doc) == {"checks", "ok"}
    for check in doc["checks"]:
        assert set(check) == {"name", "status", "detail", "fix"} and check["status"] in ("ok", "warn", "fail")
        assert check["status"] == "ok" or check["fix"], check  # every problem says what to do
    return result, doc, {c["name"]: c for c in doc["checks"]}


def test_linux_without_tart_explains_what_works_here(lab_file, linux):
    result, doc, checks = doctor(lab_file, {"PATH": NO_TART, **ROOMY})
    assert result.code == 1 and doc["ok"] is False
    platform_check = checks["platform"]
    assert platform_check["status"] == "fail"
    assert "Linux" in platform_check["detail"] and "macOS on Apple silicon with Tart" in platform_check["detail"]
    assert "validate, plan and schema work on any machine" in platform_check["detail"]
    assert "set provider.type to qemu" in platform_check["fix"]
    assert checks["tart"]["status"] == "fail" and "tart not found" in checks["tart"]["detail"]
    assert "brew install cirruslabs/cli/tart" in checks["tart"]["fix"]
    assert checks["clusters.json"]["status"] == "ok" and "4 clusters, 10 nodes" in checks["clusters.json"]["detail"]

    text = run_cli("-c", str(lab_file), "doctor", env={"PATH": NO_TART, **ROOMY})
    assert text.code == 1 and "Traceback" not in text.out + text.err and text.err == ""
    assert "✗ platform" in text.out and "✗ tart" in text.out and "fix: " in text.out
    assert text.out.splitlines()[-1].startswith("doctor: 2 blockers")


def test_a_ready_mac_passes_with_the_tart_version(lab_file, mac, fake_tart):
    mark = fake_tart.mark()
    result, doc, checks = doctor(lab_file, ROOMY)
    assert result.code == 0 and doc["ok"] is True, doc
    assert {c["status"] for c in doc["checks"]} == {"ok"}
    assert checks["platform"]["detail"] == "macOS 15.3 on arm64 (Apple silicon)"
    assert checks["tart"]["detail"].startswith("tart 2.32.1 (") and str(fake_tart.exe) in checks["tart"]["detail"]
    assert "22 vCPUs on 16 host CPUs: overcommit 1.38x" in checks["cpu"]["detail"]
    assert "68.0 GiB of 252.0 GiB usable" in checks["memory"]["detail"]
    assert "up to 200 GB" in checks["disk"]["detail"] and str(fake_tart.home) in checks["disk"]["detail"]
    assert "softnet" not in checks  # only checked when clusters.json asks for it
    # Fast and harmless: the only tart call is --version (no list, no VM touched), and nothing is written.
    assert fake_tart.argvs(mark) == [["--version"]]
    assert not (lab_file.parent / ".labctl").exists()

    text = run_cli("-c", str(lab_file), "doctor", env=ROOMY)
    assert text.code == 0 and text.out.splitlines()[-1] == "doctor: ready"


@pytest.mark.parametrize(("apple_silicon", "status"), [(True, "warn"), (False, "fail")])
def test_an_intel_python_on_a_mac(lab_file, mac, fake_tart, monkeypatch, apple_silicon, status):
    from labctl import doctor as doctor_module

    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(doctor_module, "_hardware_is_arm64", lambda: apple_silicon)  # sysctl hw.optional.arm64
    result, _, checks = doctor(lab_file, ROOMY)
    assert checks["platform"]["status"] == status and result.code == (1 if status == "fail" else 0)
    assert ("Rosetta" if apple_silicon else "only on Apple silicon") in checks["platform"]["detail"]


def test_an_old_tart_is_a_warning_not_a_blocker(lab_file, mac, fake_tart):
    result, _, checks = doctor(lab_file, {**ROOMY, "FAKE_TART_VERSION": "2.11.0"})
    assert result.code == 0
    assert checks["tart"]["status"] == "warn" and "predates 2.12" in checks["tart"]["detail"]


def test_memory_that_does_not_fit_is_a_blocker(lab_file, mac, fake_tart):
    result, doc, checks = doctor(lab_file, {**ROOMY, "LABCTL_HOST_MEMORY_MIB": "32768"})
    assert result.code == 1 and doc["ok"] is False
    memory = checks["memory"]
    assert memory["status"] == "fail"
    assert "needs 68.0 GiB but only 28.0 GiB usable (32.0 GiB minus 4.0 GiB for the host)" in memory["detail"]
    assert "--cluster" in memory["fix"]
    assert [c["name"] for c in doc["checks"] if c["status"] == "fail"] == ["memory"]


@pytest.mark.parametrize(("cpus", "status", "ratio"), [("16", "ok", "1.38x"), ("8", "warn", "2.75x")])
def test_cpu_overcommit_is_reported_and_warned_above_two(lab_file, mac, fake_tart, cpus, status, ratio):
    result, _, checks = doctor(lab_file, {**ROOMY, "LABCTL_HOST_CPUS": cpus})
    assert result.code == 0  # CPU may be overcommitted: never a blocker
    assert checks["cpu"]["status"] == status and f"overcommit {ratio}" in checks["cpu"]["detail"]


@pytest.mark.parametrize(("free", "status"), [(500.0, "ok"), (120.0, "warn"), (15.0, "fail")])
def test_free_disk_against_copy_on_write_clones(lab_file, mac, fake_tart, monkeypatch, free, status):
    seen = []
    monkeypatch.setattr(host, "free_disk_gb", lambda path: seen.append(path) or free)
    result, _, checks = doctor(lab_file, ROOMY)
    assert checks["disk"]["status"] == status and f"{free:.0f} GB free" in checks["disk"]["detail"]
    assert result.code == (1 if status == "fail" else 0)
    # TART_HOME (the fake's) is where the VMs live; it may not exist yet, so its nearest existing parent is asked.
    assert seen and (fake_tart.home == seen[0] or fake_tart.home.is_relative_to(seen[0]))


def test_softnet_needs_its_helper(lab_file, mac, fake_tart):
    raw = json.loads(lab_file.read_text())
    raw["provider"]["tart"]["network"] = "softnet"
    lab_file.write_text(json.dumps(raw))
    _, _, checks = doctor(lab_file, ROOMY)
    assert checks["softnet"]["status"] == "fail" and "no `softnet` binary" in checks["softnet"]["detail"]

    helper = fake_tart.bin / "softnet"  # beside tart, as Homebrew installs it, but not setuid root
    helper.write_text("#!/bin/sh\n")
    helper.chmod(0o755)
    result, _, checks = doctor(lab_file, ROOMY)
    assert result.code == 0
    assert checks["softnet"]["status"] == "warn" and "not setuid root" in checks["softnet"]["detail"]
    assert f"chmod u+s {helper}" in checks["softnet"]["fix"]


def test_a_broken_clusters_json_is_reported_not_raised(tmp_path, linux):
    bad = tmp_path / "clusters.json"
    bad.write_text('{"clusters": [}')
    result, _, checks = doctor(bad, {"PATH": NO_TART, **ROOMY})
    assert result.code == 1 and result.err == ""  # explained in the document, not as an error
    assert checks["clusters.json"]["status"] == "fail" and "labctl validate" in checks["clusters.json"]["fix"]
    assert "memory" not in checks  # no lab to measure
    assert checks["platform"]["status"] == "fail" and checks["tart"]["status"] == "fail"


def test_a_host_whose_memory_cannot_be_read_is_a_warning(lab_file, mac, fake_tart, monkeypatch):
    def no_sysctl():
        raise FileNotFoundError("sysctl")

    monkeypatch.delenv("LABCTL_HOST_MEMORY_MIB", raising=False)
    monkeypatch.setattr(host, "_memory_mib", no_sysctl)  # a "Mac" whose sysctl is missing: detection itself fails
    result, _, checks = doctor(lab_file, {"LABCTL_HOST_CPUS": "16"})
    assert result.code == 0 and result.err == ""
    assert checks["memory"]["status"] == "warn" and "LABCTL_HOST_MEMORY_MIB" in checks["memory"]["fix"]


def test_without_a_clusters_json_the_shipped_lab_is_judged(tmp_path, mac, fake_tart, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run_cli("--json", "doctor", env=ROOMY)
    checks = {c["name"]: c for c in json.loads(result.out)["checks"]}
    assert result.code == 0
    assert checks["clusters.json"]["status"] == "warn" and "shipped default lab" in checks["clusters.json"]["detail"]
    assert "labctl init" in checks["clusters.json"]["fix"]
    assert "68.0 GiB" in checks["memory"]["detail"]
    assert not (tmp_path / "clusters.json").exists()  # judged, not written


# ---- the qemu provider (Linux) ----------------------------------------------------------------------------------

@pytest.fixture
def qemu_lab(tmp_path, linux, fake_qemu, monkeypatch):
    """A qemu lab (direct kernel boot of a 3 GiB raw image) on a Linux host whose /dev/kvm opens, with the fake
    QEMU; the KVM probe gives up after 1.5 s instead of 15."""
    from labctl.providers import qemu, qemu_accel

    images = tmp_path / "images"
    images.mkdir()
    (images / "rootfs.img").write_text(json.dumps({"format": "raw", "virtual-size": 3 * 1024**3}))
    for name in ("vmlinuz", "initrd.img"):
        (images / name).write_text(name)
    path = tmp_path / "clusters.json"
    path.write_text(json.dumps({
        "base_image": "images/rootfs.img",
        "provider": {"type": "qemu", "qemu": {"kernel": "images/vmlinuz", "initrd": "images/initrd.img",
                                              "network": "lab"}},
        "clusters": [{"name": "q", "pod_cidr": "10.200.0.0/16", "service_cidr": "10.201.0.0/16", "nodes": [
            {"name": "q-m1", "role": "master", "cpu": 2, "memory": 2048, "disk": 20},
            {"name": "q-w1", "role": "worker", "cpu": 2, "memory": 2048, "disk": 20}]}],
    }))
    monkeypatch.setattr(qemu_accel, "kvm_problem", lambda: None)
    monkeypatch.setitem(qemu.PROBE_SECONDS, "kernel", 1.5)
    return path


def probes(fake_qemu) -> list[list[str]]:
    return [argv for argv in fake_qemu.argvs(tool="qemu-system-x86_64") if "-no-reboot" in argv]


def test_a_kvm_that_hangs_is_reported_with_the_tcg_fallback(qemu_lab, fake_qemu):
    result, doc, checks = doctor(qemu_lab, {**ROOMY, "FAKE_QEMU_KVM": "hang"})
    assert result.code == 0 and doc["ok"] is True  # TCG is slow, not broken: a warning
    assert [c["name"] for c in doc["checks"]] == \
        ["platform", "memory", "cpu", "qemu", "images", "accelerator", "network", "disk", "clusters.json"]  # no tart
    assert checks["platform"] == {"name": "platform", "status": "ok", "fix": "",
                                  "detail": "Linux on x86_64: the qemu provider runs here"}
    assert checks["qemu"]["detail"].startswith(f"QEMU emulator version 7.2.22 (fake) ({fake_qemu.bin}/qemu-system")
    assert checks["images"]["detail"] == f"{qemu_lab.parent}/images/rootfs.img: raw, 3.0 GiB, direct kernel boot"
    accel = checks["accelerator"]
    assert accel["status"] == "warn"
    assert accel["detail"].startswith("KVM does not work here: a probe boot under KVM printed nothing on the console "
                                      "within 1.5 s (KVM is there but guests hang")
    assert "The VMs run under TCG instead" in accel["detail"] and "LABCTL_QEMU_ACCEL=kvm" in accel["fix"]
    [probe] = probes(fake_qemu)  # the lab's own kernel, under KVM
    assert probe[1:5] == ["-accel", "kvm", "-cpu", "host"] and str(qemu_lab.parent / "images/vmlinuz") in probe
    assert f"({qemu_lab.parent / '.labctl' / 'qemu'})" in checks["disk"]["detail"]

    # the verdict is remembered for install (and the next doctor): no second probe
    text = run_cli("-c", str(qemu_lab), "doctor", env={**ROOMY, "FAKE_QEMU_KVM": "hang"})
    assert text.code == 0 and len(probes(fake_qemu)) == 1
    assert "! accelerator    KVM does not work here" in text.out
    assert text.out.splitlines()[-1] == "doctor: ready, with 1 warning"


def test_a_kvm_that_aborts_names_qemus_error(qemu_lab, fake_qemu):
    _, _, checks = doctor(qemu_lab, {**ROOMY, "FAKE_QEMU_KVM": "abort"})
    assert checks["accelerator"]["status"] == "warn"
    assert "QEMU exited 134 under KVM before the guest printed anything (qemu-system-x86_64: error: failed to set " \
           "MSR 0x10a to 0x69)" in checks["accelerator"]["detail"]


def test_a_working_kvm_is_ok(qemu_lab, fake_qemu):
    result, doc, checks = doctor(qemu_lab, ROOMY)
    assert result.code == 0 and {c["status"] for c in doc["checks"]} == {"ok"}
    assert checks["accelerator"]["detail"] == \
        "KVM (/dev/kvm works and a probe boot under KVM printed on the console)"


@pytest.mark.parametrize(("env", "want"), [
    ({"LABCTL_QEMU_ACCEL": "tcg"}, "TCG, software emulation (LABCTL_QEMU_ACCEL=tcg)"),
    ({}, None),
])
def test_without_dev_kvm_tcg_is_a_warning_unless_chosen(qemu_lab, fake_qemu, monkeypatch, env, want):
    from labctl.providers import qemu_accel

    monkeypatch.setattr(qemu_accel, "kvm_problem", lambda: "no /dev/kvm (this host offers no hardware virtualization)")
    _, _, checks = doctor(qemu_lab, {**ROOMY, **env})
    if want:
        assert checks["accelerator"] == {"name": "accelerator", "status": "ok", "detail": want, "fix": ""}
    else:
        assert checks["accelerator"]["status"] == "warn"
        assert checks["accelerator"]["detail"].startswith("KVM does not work here: no /dev/kvm")
    assert probes(fake_qemu) == []


def test_missing_qemu_is_a_blocker_and_nothing_is_probed(qemu_lab, fake_qemu, tmp_path):
    (tmp_path / "empty").mkdir()
    result, doc, checks = doctor(qemu_lab, {**ROOMY, "PATH": str(tmp_path / "empty")})  # this host may have QEMU
    assert result.code == 1 and doc["ok"] is False
    assert checks["qemu"]["status"] == "fail" and checks["qemu"]["detail"] == "qemu-img not found"
    assert "apt-get install qemu-system-x86 qemu-utils" in checks["qemu"]["fix"]
    assert "accelerator" not in checks and fake_qemu.argvs() == []


def test_missing_images_are_named_and_kvm_is_not_vouched_for(qemu_lab, fake_qemu):
    (qemu_lab.parent / "images" / "rootfs.img").unlink()
    (qemu_lab.parent / "images" / "initrd.img").unlink()
    result, _, checks = doctor(qemu_lab, ROOMY)
    assert result.code == 1
    assert checks["images"]["status"] == "fail"
    assert checks["images"]["detail"] == (f"not found: base_image {qemu_lab.parent}/images/rootfs.img, "
                                          f"provider.qemu.initrd {qemu_lab.parent}/images/initrd.img")
    assert "tests/realvm/build_image.py" in checks["images"]["fix"]
    # the kernel is there, so it is probed; without one, KVM is untested, which doctor says
    (qemu_lab.parent / "images" / "vmlinuz").unlink()
    _, _, checks = doctor(qemu_lab, ROOMY)
    assert checks["accelerator"]["status"] == "warn" and checks["accelerator"]["detail"].startswith("KVM, untested")


def test_a_node_disk_smaller_than_the_image_is_a_blocker(qemu_lab, fake_qemu):
    raw = json.loads(qemu_lab.read_text())
    raw["clusters"][0]["nodes"][0]["disk"] = 40
    qemu_lab.write_text(json.dumps(raw))
    image = {"format": "qcow2", "virtual-size": 32 * 1024**3}
    (qemu_lab.parent / "images" / "rootfs.img").write_text(json.dumps(image))
    result, _, checks = doctor(qemu_lab, ROOMY)
    assert result.code == 1 and checks["images"]["status"] == "fail"
    assert checks["images"]["detail"].endswith(": qcow2, 32.0 GiB, direct kernel boot; smaller disks than the image: "
                                               "q-w1 (20 GB)")
    assert checks["images"]["fix"].startswith("raise those nodes' `disk` to 32 or more")


def test_the_qemu_provider_on_a_mac_is_a_warning(qemu_lab, fake_qemu, mac):
    _, _, checks = doctor(qemu_lab, ROOMY)
    assert checks["platform"]["status"] == "warn" and "TCG only" in checks["platform"]["detail"]
    assert "provider.type tart" in checks["platform"]["fix"]


@pytest.fixture
def bridge_lab(qemu_lab, tmp_path, monkeypatch):
    """The qemu lab on network bridge labbr0, with a fake /sys/class/net and /etc/qemu/bridge.conf."""
    from labctl import doctor as doctor_module

    raw = json.loads(qemu_lab.read_text())
    raw["provider"]["qemu"].update({"network": "bridge", "bridge": "labbr0", "leases": "leases"})
    qemu_lab.write_text(json.dumps(raw))
    sys_net, conf = tmp_path / "sys-class-net", tmp_path / "bridge.conf"
    (sys_net / "labbr0" / "bridge").mkdir(parents=True)
    (sys_net / "eth0").mkdir()
    conf.write_text("# qemu-bridge-helper's ACL\nallow labbr0\n")
    (tmp_path / "leases").write_text("")
    monkeypatch.setattr(doctor_module, "SYS_NET", sys_net)
    monkeypatch.setattr(doctor_module, "BRIDGE_CONF", conf)
    monkeypatch.setattr(doctor_module, "BRIDGE_HELPER", tmp_path / "no-helper")
    return qemu_lab


def test_a_bridge_that_is_ready(bridge_lab, fake_qemu, tmp_path):
    result, _, checks = doctor(bridge_lab, ROOMY)
    assert result.code == 0
    assert checks["bridge"] == {"name": "bridge", "status": "ok", "fix": "",
                                "detail": f"labbr0 is a bridge; addresses from {tmp_path}/leases"}


@pytest.mark.parametrize(("breakage", "status", "detail", "fix"), [
    ("no-bridge", "fail", "provider.qemu.network is bridge, but this host has no bridge labbr0", "virsh net-start"),
    ("not-a-bridge", "fail", "provider.qemu.network is bridge, but this host has no bridge labbr0", "virsh net-start"),
    ("acl", "fail", "qemu-bridge-helper will refuse labbr0: ", "echo 'allow labbr0' | sudo tee -a"),
    ("leases", "warn", "labbr0 is a bridge, but there is no DHCP leases file", "provider.qemu.leases"),
])
def test_bridge_problems(bridge_lab, fake_qemu, tmp_path, breakage, status, detail, fix):
    import shutil

    if breakage == "no-bridge":
        shutil.rmtree(tmp_path / "sys-class-net" / "labbr0")
    elif breakage == "not-a-bridge":
        (tmp_path / "sys-class-net" / "labbr0" / "bridge").rmdir()  # an interface, not a bridge
    elif breakage == "acl":
        (tmp_path / "bridge.conf").write_text("allow virbr0\n")
    else:
        (tmp_path / "leases").unlink()
    result, _, checks = doctor(bridge_lab, ROOMY)
    assert result.code == (1 if status == "fail" else 0)
    assert checks["bridge"]["status"] == status and checks["bridge"]["detail"].startswith(detail)
    assert fix in checks["bridge"]["fix"]


@pytest.mark.parametrize(("acl", "allowed"), [
    ("allow labbr0\n", True),
    ("allow all\n", True),
    ("allow virbr0\n# allow labbr0\n", False),
    ("allow all\ndeny labbr0\n", False),  # deny wins
    ("include {extra}\n", True),
    ("", False),
])
def test_bridge_acl(tmp_path, acl, allowed):
    from labctl.doctor import bridge_allowed

    (tmp_path / "extra.conf").write_text("allow labbr0\n")
    conf = tmp_path / "bridge.conf"
    conf.write_text(acl.format(extra=tmp_path / "extra.conf"))
    assert bridge_allowed("labbr0", conf) is allowed
    assert bridge_allowed("labbr0", tmp_path / "missing.conf") is False
