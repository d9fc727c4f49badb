"""Build the real-VM tier's Debian image: kernel + initrd + a raw ext4 root filesystem (what the qemu provider boots
with provider.qemu.kernel/initrd and base_image = the root filesystem).

    python tests/realvm/build_image.py [CACHE_DIR]      # as root; prints the image directory

Recipe (reference/real-vm-in-ci.md): debootstrap bookworm minbase from the Debian mirror this machine's apt already
uses, `mkfs.ext4 -d` (no loop mount, no partition table, no bootloader: QEMU boots the kernel directly). The result
is cached in CACHE_DIR/<recipe hash>/ — the hash covers this file, so changing the recipe builds a new image and an
unchanged recipe is reused as is. Building takes ~3 minutes and needs root (debootstrap, chroot).

What the image holds, and why:
  - user `admin`, password `admin`, in group sudo (sudo asks for the password): labctl's defaults, so the first
    contact goes through the real password → key bootstrap and sudo through the real `sudo -S` path;
  - hostname `labctl-base` and a 64 MiB swap file in /etc/fstab: the prepare phase has real work to do;
  - DHCP on eth0 (user-mode networking) and on eth1 when present (the lab NIC of network bridge), as hotplug
    interfaces, so that they are simply absent when cloud-init renamed them;
  - cloud-init (Debian's), off unless the kernel command line says `cloud-init=enabled` (its generator reads the
    command line before /etc/cloud/cloud-init.disabled): the lab tests that need the NoCloud seed (network lab's
    static addresses from network-config) turn it on with provider.qemu.append; the others keep the password →
    key bootstrap and the base hostname. NoCloud only, and it keeps the image's SSH host key (no RSA key under TCG);
  - no SSH host keys and an empty machine-id: every VM made from the image generates its own at first boot;
  - a boot unit that generates the SSH host key (ed25519 only: RSA takes ~10 s under TCG) and grows the root
    filesystem to the disk (the provider grows the disk to the node's size; with no partition table
    `resize2fs /dev/vda` is all it takes);
  - apt's package lists from debootstrap (the first `apt-get update` in the VM then only revalidates them) and
    apt's daily timers masked (they would hold the dpkg lock in the middle of a test).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SUITE = "bookworm"
DEFAULT_CACHE = Path(os.environ.get("LABCTL_REALVM_CACHE", "/var/cache/labctl-realvm"))
FALLBACK_MIRROR = "http://deb.debian.org/debian"
PACKAGES = ["systemd-sysv", "udev", "dbus", "openssh-server", "linux-image-amd64", "iproute2", "ifupdown",
            "isc-dhcp-client", "sudo", "ca-certificates", "e2fsprogs", "cloud-init",
            "python3-cffi-backend"]  # cloud-init's python3-cryptography needs it through a virtual package, which
# debootstrap's resolver does not follow
USER, PASSWORD = "admin", "admin"
BASE_HOSTNAME = "labctl-base"
DISK_SIZE = "3G"
SWAP_MIB = 64

FIRSTBOOT_UNIT = """\
[Unit]
Description=labctl test image: SSH host keys, and a root filesystem as large as its disk
Before=ssh.service
After=systemd-remount-fs.service

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'k=/etc/ssh/ssh_host_ed25519_key; test -s $k || ssh-keygen -q -t ed25519 -N "" -f $k'
ExecStart=/sbin/resize2fs /dev/vda

[Install]
WantedBy=multi-user.target
"""


@dataclass(frozen=True)
class Image:
    directory: Path
    kernel: Path
    initrd: Path
    rootfs: Path
    built: bool  # False: reused from the cache
    seconds: float


def recipe_hash() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def debian_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian archive this machine's apt uses for SUITE (deb822 .sources or one-line lists)."""
    candidates: list[tuple[str, list[str]]] = []  # (uri, suites)
    for path in sorted(apt_dir.glob("sources.list.d/*.sources")):
        for stanza in path.read_text(errors="replace").split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.strip().startswith("#") or ":" not in line:
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes").lower() != "no":
                for uri in fields.get("uris", "").split():
                    candidates.append((uri, fields.get("suites", "").split()))
    for path in [apt_dir / "sources.list", *sorted(apt_dir.glob("sources.list.d/*.list"))]:
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            words = line.split("#", 1)[0].split()
            if len(words) >= 3 and words[0] == "deb":
                rest = [w for w in words[1:] if not w.startswith("[")]  # drop [signed-by=...] options
                if len(rest) >= 2:
                    candidates.append((rest[0], [rest[1]]))
    for uri, suites in candidates:
        if SUITE in suites:
            return uri.rstrip("/")
    return FALLBACK_MIRROR


def _run(argv: list[str], **kwargs) -> None:
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, **kwargs)


def _configure(root: Path) -> None:
    (root / "etc/hostname").write_text(BASE_HOSTNAME + "\n")
    (root / "etc/hosts").write_text("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
    (root / "etc/fstab").write_text("/dev/vda\t/\text4\tdefaults\t0 1\n/swapfile\tnone\tswap\tsw\t0 0\n")
    # eth0: user-mode networking (net.ifnames=0); eth1: the lab NIC of provider.qemu.network bridge, when there is one
    # cloud-init writes its own (interfaces.d/50-cloud-init) when it runs
    (root / "etc/network/interfaces").write_text(
        "auto lo\niface lo inet loopback\n\nallow-hotplug eth0\niface eth0 inet dhcp\n\nallow-hotplug eth1\n"
        "iface eth1 inet dhcp\n\nsource /etc/network/interfaces.d/*\n")
    (root / "etc/cloud/cloud-init.disabled").write_text("")
    (root / "etc/cloud/cloud.cfg.d/90-labctl-realvm.cfg").write_text(
        "datasource_list: [NoCloud, None]\nssh_deletekeys: false\nssh_genkeytypes: []\n")
    swap = root / "swapfile"
    with open(swap, "wb") as f:
        # A swap file must have no holes, and `mkfs.ext4 -d` turns blocks of zeros into holes: not zeros, then.
        f.write(b"labctl-swap\n" * (SWAP_MIB * 1024 * 1024 // 12 + 1))
    swap.chmod(0o600)
    _run(["mkswap", "-q", str(swap)])
    _run(["chroot", str(root), "useradd", "--create-home", "--shell", "/bin/bash", "--groups", "sudo", USER])
    subprocess.run(["chroot", str(root), "chpasswd"], input=f"{USER}:{PASSWORD}\n".encode(), check=True)
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/ssh/sshd_config.d/labctl.conf").write_text("HostKey /etc/ssh/ssh_host_ed25519_key\n")
    (root / "etc/machine-id").write_text("")
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    units = root / "etc/systemd/system"
    (units / "labctl-firstboot.service").write_text(FIRSTBOOT_UNIT)
    wants = units / "multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "labctl-firstboot.service").symlink_to("/etc/systemd/system/labctl-firstboot.service")
    for timer in ("apt-daily.timer", "apt-daily-upgrade.timer"):
        (units / timer).unlink(missing_ok=True)
        (units / timer).symlink_to("/dev/null")
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()


def build(cache: Path = DEFAULT_CACHE, log=print) -> Image:
    """The cached image for this recipe; built first when absent. Safe to call from two processes at once."""
    started = time.monotonic()
    key = recipe_hash()
    out = cache / key
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second builder waits and then finds the image
        if not (out / "image.json").is_file():
            _build(cache, out, log)
            built = True
        else:
            built = False
    return Image(out, out / "vmlinuz", out / "initrd.img", out / "rootfs.img", built, time.monotonic() - started)


def _build(cache: Path, out: Path, log) -> None:
    mirror = debian_mirror()
    for old in cache.iterdir():  # other recipes' images and unfinished builds: only the current one is kept
        if old.is_dir() and old != out:
            shutil.rmtree(old, ignore_errors=True)
    work = cache / f"{out.name}.building"
    shutil.rmtree(work, ignore_errors=True)
    root = work / "root"
    root.mkdir(parents=True)
    t0 = time.monotonic()
    log(f"debootstrap {SUITE} from {mirror} into {root} (~3 minutes)")
    _run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(root), mirror],
         stdout=subprocess.DEVNULL)
    t1 = time.monotonic()
    _configure(root)
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    initrds = sorted((root / "boot").glob("initrd.img-*"))
    if not kernels or not initrds:
        raise RuntimeError(f"debootstrap left no kernel/initrd in {root / 'boot'}")
    shutil.copy2(kernels[-1], work / "vmlinuz")
    shutil.copy2(initrds[-1], work / "initrd.img")
    rootfs = work / "rootfs.img"
    _run(["truncate", "-s", DISK_SIZE, str(rootfs)])
    _run(["mkfs.ext4", "-q", "-F", "-L", "labctl-root", "-d", str(root), str(rootfs)])
    t2 = time.monotonic()
    shutil.rmtree(root)
    for path in (work / "vmlinuz", work / "initrd.img", rootfs):
        path.chmod(0o444)  # overlays point at these: they must never change under them
    (work / "image.json").write_text(json.dumps({
        "recipe": out.name, "suite": SUITE, "mirror": mirror, "kernel": kernels[-1].name,
        "debootstrap_seconds": round(t1 - t0, 1), "filesystem_seconds": round(t2 - t1, 1),
        "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }, indent=2) + "\n")
    work.rename(out)


if __name__ == "__main__":
    image = build(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_CACHE, log=lambda m: print(m, file=sys.stderr))
    print(image.directory)
