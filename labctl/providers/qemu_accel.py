"""The QEMU provider's accelerator: KVM when it truly works on this host, else TCG (see labctl/providers/qemu.py,
"Accelerator")."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import ProviderError
from ..state import write_atomic

ENV_ACCEL = "LABCTL_QEMU_ACCEL"

KVM_GET_API_VERSION = 0xAE00  # _IO(KVMIO, 0x00); the stable KVM API has answered 12 since Linux 2.6.22
KVM_API_VERSION = 12


def _opt(value) -> str:
    """A value inside a QEMU -drive/-chardev option string: commas are doubled, or they would split the option."""
    return str(value).replace(",", ",,")


@dataclass(frozen=True)
class Accel:
    name: Literal["kvm", "tcg"]
    reason: str  # why this one, in words (doctor shows it; the console log records it)
    warning: str | None = None  # said to the user when labctl had to fall back to TCG
    probed: bool = True  # False: KVM opens, but there was no image yet to try a boot with (doctor says so)

    def flags(self) -> list[str]:
        # `-cpu host` is what KVM guests want; TCG emulates, and `max` is the richest CPU it can emulate.
        return ["-accel", "kvm", "-cpu", "host"] if self.name == "kvm" else ["-accel", "tcg", "-cpu", "max"]


def kvm_problem(device: str = "/dev/kvm") -> str | None:
    """Why KVM cannot be used at all (None: the device opens and speaks the KVM API)."""
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return f"no {device} (this host offers no hardware virtualization)"
    except OSError as exc:
        return f"{device}: {exc.strerror} (add the user to the `kvm` group?)"
    try:
        version = fcntl.ioctl(fd, KVM_GET_API_VERSION)
    except OSError as exc:
        return f"{device} does not answer KVM_GET_API_VERSION ({exc.strerror})"
    finally:
        os.close(fd)
    return None if version == KVM_API_VERSION else f"{device} speaks KVM API {version}, not {KVM_API_VERSION}"


PROBE_SECONDS = {"kernel": 15.0, "disk": 40.0}  # KVM prints "Linux version" within a second or two when it works
PROBE_MARK = b"Linux version"


def probe_kvm(qemu: str, boot: list[str], mode: Literal["kernel", "disk"],
              timeout: float | None = None) -> str | None:
    """Boot `boot` (kernel or disk arguments) under KVM for a moment. None when the kernel printed on the console;
    otherwise why not. The probe never writes to any disk (snapshot=on) and is killed as soon as it has answered."""
    timeout = PROBE_SECONDS[mode] if timeout is None else timeout
    with tempfile.TemporaryDirectory(prefix="labctl-kvm-probe-") as tmp:
        console = Path(tmp) / "console.log"
        argv = [qemu, *Accel("kvm", "").flags(), "-machine", "q35", "-m", "512", "-smp", "1", "-nodefaults",
                "-display", "none", "-no-reboot", "-chardev", f"file,id=console,path={_opt(console)}",
                "-serial", "chardev:console", *boot]
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            return f"cannot run {qemu}: {exc}"
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if console.exists() and PROBE_MARK in console.read_bytes():
                    return None
                if proc.poll() is not None:
                    err = proc.stderr.read().decode(errors="replace").strip().splitlines() if proc.stderr else []
                    last = next((line for line in reversed(err) if "error" in line.lower()), err[-1] if err else "")
                    rc = proc.returncode
                    how = f"was killed by {signal.Signals(-rc).name}" if rc < 0 else f"exited {rc}"
                    return f"QEMU {how} under KVM before the guest printed anything" + (
                        f" ({last.strip()})" if last else "")
                time.sleep(0.1)
            return (f"a probe boot under KVM printed nothing on the console within {timeout:g} s "
                    "(KVM is there but guests hang: typically nested virtualization that does not work)")
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            if proc.stderr:
                proc.stderr.close()


class Accelerator:
    """The QemuProvider's choice of accelerator, once per provider (a mixin: uses its `settings`, `_lock`, `_accel`,
    `qemu`, `lab`, `local_path`, `image_path`, `image_info` and `vm_home`)."""

    # -- the accelerator ---------------------------------------------------------------------------------------------
    def accelerator(self) -> Accel:
        """KVM or TCG, decided once per provider (and cached per host boot): see the module docstring."""
        with self._lock:
            if self._accel is None:
                self._accel = self._choose_accel()
            return self._accel

    def _choose_accel(self) -> Accel:
        forced = os.environ.get(ENV_ACCEL, "").strip().lower()
        if forced:
            if forced not in ("kvm", "tcg"):
                raise ProviderError(f"{ENV_ACCEL}={forced!r}: use kvm or tcg (or unset it to let labctl probe)")
            return Accel(forced, f"{ENV_ACCEL}={forced}")  # type: ignore[arg-type]
        if self.settings.accel != "auto":
            return Accel(self.settings.accel, f"provider.qemu.accel is {self.settings.accel}")
        problem = kvm_problem()
        if problem is None:
            boot, mode = self._probe_boot()
            if boot is None:  # only doctor gets here: create and start need the image
                return Accel("kvm", "/dev/kvm opens, but there is no image yet to probe a guest boot with",
                             probed=False)
            problem = self._cached_probe(boot, mode)
            if problem is None:
                return Accel("kvm", "/dev/kvm works and a probe boot under KVM printed on the console")
        return Accel("tcg", problem, f"using TCG (software emulation, several times slower than KVM): {problem}; "
                                     f"set {ENV_ACCEL}=kvm to force KVM")

    def _probe_boot(self) -> tuple[list[str] | None, Literal["kernel", "disk"]]:
        s = self.settings
        if s.kernel:
            kernel = self.local_path(s.kernel)
            if not kernel.is_file():
                return None, "kernel"
            initrd = ["-initrd", str(self.local_path(s.initrd))] if s.initrd else []
            return ["-kernel", str(kernel), *initrd, "-append", "console=ttyS0 panic=-1"], "kernel"
        base = self.image_path(self.lab.base_image)
        if not base.is_file():
            return None, "disk"
        fmt = self.image_info(base, None).get("format", "raw")
        return ["-drive", f"if=virtio,file={_opt(base)},format={fmt},snapshot=on"], "disk"

    def _cached_probe(self, boot: list[str], mode: Literal["kernel", "disk"]) -> str | None:
        """The probe's verdict, remembered per QEMU binary, boot arguments and host boot (a fixed host reboots)."""
        binary = shutil.which(self.qemu) or self.qemu
        try:
            boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        except OSError:
            boot_id = ""
        with contextlib.suppress(OSError):
            binary += f"@{os.stat(binary).st_mtime_ns}"
        key = hashlib.sha256(json.dumps([binary, boot, platform.release(), boot_id]).encode()).hexdigest()[:16]
        cache = self.vm_home() / "accel.json"
        try:
            known = json.loads(cache.read_text())
            if known.get("key") == key:
                return known.get("problem")
        except (OSError, ValueError):
            pass
        problem = probe_kvm(self.qemu, boot, mode)
        write_atomic(cache, json.dumps({"key": key, "problem": problem}) + "\n", 0o600)
        return problem
