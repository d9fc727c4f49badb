"""The QEMU provider's accelerator: KVM when it truly works on this host, else TCG (see labctl/providers/qemu.py,
"Accelerator")."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

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
