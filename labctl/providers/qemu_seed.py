"""The NoCloud seed of a QEMU VM: cloud-init's meta-data, user-data and network-config on a FAT12 volume labelled
CIDATA (cloud-localds when it is installed, else written here without root or mtools)."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

from ..state import write_atomic

log = logging.getLogger("labctl")


def seed_files(node: str, user: str, password: str | None, keys: list[str], instance_id: str,
               macs: dict[str, str] | None = None, lab_address: str | None = None) -> dict[str, bytes]:
    """meta-data and user-data of a NoCloud seed: the login user labctl expects, its keys, and the hostname. With
    `macs` ({"mgmt": MAC, "lab": MAC}) also a network-config (version 2), each NIC found by its MAC (their names
    differ between images). network bridge: DHCP on both, the lab NIC's default route preferred. network lab
    (`lab_address`, "a.b.c.d/prefix"): DHCP on the user-mode NIC, which keeps the default route and DNS, and only
    the static address on the lab NIC (no gateway: the segment leads nowhere but to the other VMs)."""
    import yaml

    account: dict = {"name": user, "shell": "/bin/bash", "sudo": "ALL=(ALL) NOPASSWD:ALL",
                     "lock_passwd": password is None}
    if password is not None:
        account["plain_text_passwd"] = password
    if keys:
        account["ssh_authorized_keys"] = keys
    config = {"hostname": node, "preserve_hostname": False, "users": [account], "ssh_pwauth": password is not None}
    meta = {"instance-id": instance_id, "local-hostname": node}
    files = {
        "meta-data": yaml.safe_dump(meta, sort_keys=False).encode(),
        "user-data": ("#cloud-config\n" + yaml.safe_dump(config, sort_keys=False)).encode(),
    }
    if macs and lab_address:
        network = {"version": 2, "ethernets": {
            "mgmt": {"match": {"macaddress": macs["mgmt"]}, "dhcp4": True},
            "lab": {"match": {"macaddress": macs["lab"]}, "dhcp4": False, "addresses": [lab_address]},
        }}
        files["network-config"] = yaml.safe_dump(network, sort_keys=False).encode()
    elif macs:
        network = {"version": 2, "ethernets": {
            "mgmt": {"match": {"macaddress": macs["mgmt"]}, "dhcp4": True, "dhcp4-overrides": {"route-metric": 500}},
            "lab": {"match": {"macaddress": macs["lab"]}, "dhcp4": True, "dhcp4-overrides": {"route-metric": 100}},
        }}
        files["network-config"] = yaml.safe_dump(network, sort_keys=False).encode()
    return files


def write_seed(path: Path, files: dict[str, bytes], cloud_localds: str | None = None) -> str:
    """Write a NoCloud seed disk; returns how it was made. cloud-localds when it is installed (the reference tool),
    else a FAT image written here: no root, no mount, no extra package."""
    tool = cloud_localds if cloud_localds is not None else shutil.which("cloud-localds")
    if tool:
        with tempfile.TemporaryDirectory(prefix="labctl-seed-") as tmp:
            for name, data in files.items():
                (Path(tmp) / name).write_bytes(data)
            argv = [tool, *([f"--network-config={Path(tmp) / 'network-config'}"] if "network-config" in files else []),
                    str(path), str(Path(tmp) / "user-data"), str(Path(tmp) / "meta-data")]
            done = subprocess.run(argv, check=False, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                  timeout=60)
            if done.returncode == 0:
                os.chmod(path, 0o600)
                return "cloud-localds"
            log.debug("cloud-localds failed (%s); writing the seed itself", done.stderr.strip())
    write_atomic(path, fat_image(files, "CIDATA"), 0o600)  # the password is in it
    return "fat"


SECTOR = 512
FAT_TOTAL_SECTORS = 2880  # the 1.44 MB floppy geometry: FAT12, understood by every kernel and by blkid
FAT_SECTORS = 9
ROOT_ENTRIES = 224
FAT_DATE = ((2024 - 1980) << 9) | (1 << 5) | 1  # a fixed timestamp keeps the image reproducible


def _short_name(name: str, used: set[bytes]) -> bytes:
    allowed = set("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789$%'-_@~`!(){}^#&")
    base, _, ext = name.upper().rpartition(".") if "." in name else (name.upper(), "", "")
    base = "".join(c if c in allowed else "_" for c in base) or "_"
    ext = "".join(c if c in allowed else "_" for c in ext)[:3]
    for n in range(1, 1000):
        tail = f"~{n}"
        short = (base[: 8 - len(tail)] + tail).ljust(8).encode() + ext.ljust(3).encode()
        if short not in used:
            used.add(short)
            return short
    raise ValueError("too many similar names")


def _lfn_entries(name: str, short: bytes) -> list[bytes]:
    checksum = 0
    for c in short:
        checksum = (((checksum & 1) << 7) + (checksum >> 1) + c) & 0xFF
    chars = [ord(c) for c in name]
    if len(chars) % 13:
        chars.append(0)
    chars += [0xFFFF] * (-len(chars) % 13)
    parts = [chars[i:i + 13] for i in range(0, len(chars), 13)]
    entries = []
    for seq, part in enumerate(parts, 1):
        e = bytearray(32)
        e[0] = seq | (0x40 if seq == len(parts) else 0)
        e[1:11] = struct.pack("<5H", *part[0:5])
        e[11], e[12], e[13] = 0x0F, 0, checksum
        e[14:26] = struct.pack("<6H", *part[5:11])
        e[28:32] = struct.pack("<2H", *part[11:13])
        entries.append(bytes(e))
    return entries[::-1]  # the last part first, right before the short entry


def fat_image(files: dict[str, bytes], label: str) -> bytes:
    """A FAT12 filesystem image holding `files` in its root directory with long (VFAT) names, labelled `label`."""
    reserved, fats = 1, 2
    root_sectors = ROOT_ENTRIES * 32 // SECTOR
    data_start = reserved + fats * FAT_SECTORS + root_sectors
    clusters = FAT_TOTAL_SECTORS - data_start
    image = bytearray(FAT_TOTAL_SECTORS * SECTOR)
    label11 = label.upper().encode()[:11].ljust(11)

    boot = memoryview(image)[:SECTOR]
    boot[0:3] = b"\xeb\x3c\x90"
    boot[3:11] = b"LABCTL  "
    struct.pack_into("<HBHBHHBHHHII", image, 11, SECTOR, 1, reserved, fats, ROOT_ENTRIES, FAT_TOTAL_SECTORS, 0xF8,
                     FAT_SECTORS, 18, 2, 0, 0)
    volume_id = int.from_bytes(hashlib.sha256(b"".join(files.values())).digest()[:4], "little")
    struct.pack_into("<BBBI11s8s", image, 36, 0x80, 0, 0x29, volume_id, label11, b"FAT12   ")
    image[510:512] = b"\x55\xaa"

    fat = [0xFF8, 0xFFF]
    entries = [label11 + bytes([0x08]) + bytes(10) + struct.pack("<HHHI", 0, FAT_DATE, 0, 0)]
    used: set[bytes] = set()
    next_cluster = 2
    for name, data in files.items():
        count = -(-len(data) // SECTOR)
        if next_cluster - 2 + count > clusters:
            raise ValueError("the seed's files do not fit in a FAT12 image")
        first = next_cluster if count else 0
        for i in range(count):
            fat.append(next_cluster + i + 1 if i < count - 1 else 0xFFF)
            offset = (data_start + next_cluster - 2 + i) * SECTOR
            image[offset:offset + SECTOR] = data[i * SECTOR:(i + 1) * SECTOR].ljust(SECTOR, b"\0")
        next_cluster += count
        short = _short_name(name, used)
        entries += _lfn_entries(name, short)
        # name, attr (archive), NT flags, ctime tenths, ctime, cdate, adate, cluster high, mtime, mdate, cluster, size
        entries.append(short + struct.pack("<BBBHHHHHHHI", 0x20, 0, 0, 0, FAT_DATE, FAT_DATE, 0, 0, FAT_DATE,
                                           first, len(data)))
    if len(entries) > ROOT_ENTRIES:
        raise ValueError("too many files for the seed's root directory")
    table = bytearray(FAT_SECTORS * SECTOR)
    for n, value in enumerate(fat):
        offset = n * 3 // 2
        if n % 2 == 0:
            table[offset] = value & 0xFF
            table[offset + 1] = (table[offset + 1] & 0xF0) | (value >> 8)
        else:
            table[offset] = (table[offset] & 0x0F) | ((value & 0x0F) << 4)
            table[offset + 1] = value >> 4
    for i in range(fats):
        start = (reserved + i * FAT_SECTORS) * SECTOR
        image[start:start + len(table)] = table
    root = (reserved + fats * FAT_SECTORS) * SECTOR
    blob = b"".join(entries)
    image[root:root + len(blob)] = blob
    return bytes(image)
