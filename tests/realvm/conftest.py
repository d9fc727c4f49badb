"""The real-VM tier (`pytest -m realvm`): a real Debian VM under QEMU, driven by labctl's own commands.

Needs root (debootstrap, chroot, a bridge), x86_64, and `qemu-system-x86 qemu-utils debootstrap e2fsprogs
dnsmasq-base` from apt. Missing any of them, the tier is skipped with the reason — except under CI (CI=true), where
it must run: there not being root or a missing tool is a failure that names the packages scripts/test.sh has to
install. (Another CPU is a skip even under CI: nothing to install changes it.)

Timings of every stage are recorded by the `stage` fixture in the test's report (user_properties) and printed at
the end of the run (tests/conftest.py), because the tier has a budget: ~12 minutes on a fresh machine.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import time

import pytest

from . import build_image

APT_PACKAGES = "qemu-system-x86 qemu-utils debootstrap e2fsprogs dnsmasq-base"
TOOLS = {"qemu-system-x86_64": "qemu-system-x86", "qemu-img": "qemu-utils", "debootstrap": "debootstrap",
         "mkfs.ext4": "e2fsprogs", "mkswap": "util-linux", "chroot": "coreutils", "dnsmasq": "dnsmasq-base",
         "ip": "iproute2"}

TIMING = "realvm-timing"  # user_properties key: reports carry them to the controller under pytest-xdist
_PENDING: list[tuple[str, float]] = []  # session-scoped timings, handed to the first test that uses `stage`


def _problems() -> list[str]:
    problems = []
    if os.geteuid() != 0:
        problems.append("not root (debootstrap and chroot need root)")
    missing = sorted({package for tool, package in TOOLS.items() if shutil.which(tool) is None})
    if missing:
        problems.append(f"missing packages: {' '.join(missing)}")
    return problems


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def realvm_image() -> build_image.Image:
    """The cached Debian image (built on first use, ~3 minutes)."""
    if platform.machine() != "x86_64":  # nothing scripts/test.sh could install changes this: skipped even under CI
        pytest.skip(f"realvm tier: the image and its kernel are amd64 and this host is {platform.machine()}")
    problems = _problems()
    if problems:
        reason = "realvm tier: " + "; ".join(problems)
        if _in_ci():
            pytest.fail(f"{reason}. Under CI the tier must run: scripts/test.sh must run as root and "
                        f"`apt-get install -y --no-install-recommends {APT_PACKAGES}`", pytrace=False)
        pytest.skip(reason)
    started = time.monotonic()
    image = build_image.build(log=lambda message: print(f"realvm: {message}"))
    _PENDING.append(("image: " + ("debootstrap + mkfs.ext4" if image.built else "reused from the cache"),
                     time.monotonic() - started))
    return image


@pytest.fixture
def stage(request):
    """`with stage("name"):` times one stage of a test; the timings go into the test's report."""

    def record(name: str, seconds: float) -> None:
        request.node.user_properties.append((TIMING, (name, round(seconds, 1))))
        print(f"realvm: {name}: {seconds:.1f} s")

    while _PENDING:
        record(*_PENDING.pop(0))

    @contextlib.contextmanager
    def timed(name: str):
        started = time.monotonic()
        try:
            yield
        finally:
            record(name, time.monotonic() - started)

    return timed
