"""Swap on a simulated node: what turns it on at boot, and what prepare's swap sections do to that.

A node's swap lives in its facts (`swap`: devices, units, unit_files, services, zram_generator, zram_config).
At boot, as on a real node:
- systemd-fstab-generator makes a .swap unit of every swap line of /etc/fstab, swap.target starts it;
- an enabled .swap unit file starts;
- a swap service (zram-tools' zramswap.service runs `zramswap start`, i.e. swapon /dev/zram0; dphys-swapfile
  swapons /var/swap) turns its device on by itself: masking the device's .swap unit does not stop it;
- zram-generator makes dev-zramN.swap for every [zramN] section of its config, unless the generator is masked.
A masked .swap unit (or service) does not start. The source of each: the Debian packages' unit files and scripts,
systemd.swap(5), systemd.generator(7), zram-generator's README.
"""

from __future__ import annotations

import re
from typing import Any

# the device each swap service turns on (its package's default configuration)
SERVICE_DEVICES = {"zramswap.service": "/dev/zram0", "zram-config.service": "/dev/zram0",
                   "dphys-swapfile.service": "/var/swap", "swapspace.service": "/var/lib/swapspace/1"}
MASKED = ("masked", "masked-runtime")


def unit_of(device: str) -> str:
    """/dev/zram0 → dev-zram0.swap (systemd's path escaping, enough for the paths simulated here)."""
    return device.strip("/").replace("/", "-") + ".swap"


def zramswap_image(base: dict[str, Any]) -> dict[str, Any]:
    """`base` (facts of a fresh clone) with zram-tools installed: zramswap.service enabled, swap on /dev/zram0 (which
    systemd shows as the loaded, active dev-zram0.swap without a unit file)."""
    image = {**base, "swap": {
        "devices": ["/dev/zram0"], "units": [{"unit": "dev-zram0.swap", "load": "loaded", "active": "active"}],
        "unit_files": {}, "zram_generator": "", "zram_config": {},
        "services": {"zramswap.service": {"active": "active", "enabled": "enabled", "started_at": None}}}}
    return image


def at_boot(facts: dict[str, Any]) -> list[str]:
    """The swap devices that are on after a boot."""
    swap = facts["swap"]
    masked = {unit for unit, state in swap["unit_files"].items() if state in MASKED}
    devices = []
    for line in (facts["texts"].get("/etc/fstab") or "").splitlines():
        fields = line.split()
        if len(fields) >= 3 and not fields[0].startswith("#") and fields[2] == "swap":
            devices.append(fields[0])
    devices = [d for d in devices if unit_of(d) not in masked]
    devices += ["/" + unit.removesuffix(".swap").replace("-", "/") for unit, state in swap["unit_files"].items()
                if state in ("enabled", "enabled-runtime")]
    devices += [SERVICE_DEVICES[unit] for unit, state in swap.get("services", {}).items()
                if state["enabled"] == "enabled" and unit in SERVICE_DEVICES]
    if swap.get("zram_generator") == "installed":
        config = "\n".join(swap.get("zram_config", {}).values())
        devices += [f"/dev/{name}" for name in re.findall(r"^\s*\[(zram\d+)\]", config, re.M)
                    if f"dev-{name}.swap" not in masked]
    return list(dict.fromkeys(devices))


def boot(facts: dict[str, Any], tick) -> None:
    """What a boot leaves on: the devices, their (loaded) units, the swap services that ran."""
    swap = facts["swap"]
    swap["devices"] = at_boot(facts)
    swap["units"] = [{"unit": unit_of(d), "load": "loaded", "active": "active"} for d in swap["devices"]]
    for unit, state in swap.get("services", {}).items():
        running = state["enabled"] == "enabled"
        swap["services"][unit] = {**state, "active": "active" if running else "inactive",
                                  "started_at": tick() if running else None}


def prepare(facts: dict[str, Any], actions: list[str], p: dict[str, Any]) -> None:
    """prepare.apply's swap sections beyond swapoff/fstab/units: swap services stopped and masked, zram-generator
    masked (its devices stopped)."""
    swap = facts["swap"]
    if "swap-services" in actions:
        for unit in p["swap_services"]:
            swap["services"][unit] = {**swap["services"][unit], "active": "inactive", "enabled": "masked",
                                      "started_at": None}
            device = SERVICE_DEVICES.get(unit)
            swap["devices"] = [d for d in swap["devices"] if d != device]  # its stop turns its swap off
    if "zram-generator" in actions:
        swap["zram_generator"] = "masked"
        stopped = {f"/dev/{d}" for d in p["zram_devices"]}
        swap["devices"] = [d for d in swap["devices"] if d not in stopped]
