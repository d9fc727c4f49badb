"""`labctl doctor`: can this machine run the lab? Each check says ok / warn / fail and, when not ok, what to do.

A `fail` is a blocker for the VM commands (install, boot, shutdown, destroy); a `warn` is worth knowing but does not
stop anything. The checks follow the lab's provider:
  tart: macOS on Apple silicon, tart and its version, softnet when asked for;
  qemu: Linux, qemu-system-* and qemu-img, the base image (and kernel/initrd; a base image URL not downloaded yet:
        downloadable, asked with one short HEAD request), and the accelerator: KVM only if a
        short probe boot of the lab's own kernel prints on the console (a KVM that hangs is reported, with the TCG
        fallback), otherwise TCG;
  orchard: the controller answers and accepts the service account, its workers have room for the lab's VMs (no
        host checks: the VMs run on the workers);
and for tart and qemu: memory, CPU overcommit, free disk where the VMs' disks live, clusters.json.

Doctor reads the host (platform, memory, CPUs, free disk, files on PATH); its one network question is that HEAD
request (offline: a warning). Its only subprocesses are the providers' own tools (`tart --version`; `qemu-system-* --version`, `qemu-img info`, and the KVM probe, at most
15 s for a kernel or 40 s for a disk image, whose verdict `install` reuses) and `sysctl` on macOS. It never
crashes on a surprising host: a check that cannot look says so.
"""

from __future__ import annotations

import math
import os
import platform
import re
import shutil
import stat
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from . import host
from .errors import ConfigError, LabctlError

if TYPE_CHECKING:
    from .model import Lab
    from .providers.qemu import QemuProvider

Status = Literal["ok", "warn", "fail"]

CPU_OVERCOMMIT_WARN = 2.0  # vCPUs per host CPU above which the control planes start to stutter under load
GRACEFUL_STOP_VERSION = (2, 12)  # first tart that turns SIGUSR2 into an ACPI shutdown request
ANYWHERE = "validate, plan and schema work on any machine"


@dataclass(frozen=True)
class Finding:
    name: str
    status: Status
    detail: str
    fix: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Report:
    findings: list[Finding]

    @property
    def ok(self) -> bool:
        """No blockers (warnings allowed)."""
        return all(f.status != "fail" for f in self.findings)

    def as_dict(self) -> dict:
        return {"checks": [f.as_dict() for f in self.findings], "ok": self.ok}


# ---- the checks ------------------------------------------------------------------------------------------------

def check_platform(h: host.Host, provider: str = "tart") -> Finding:
    if provider == "qemu":
        return check_platform_qemu(h)
    if h.is_apple_silicon:
        version = platform.mac_ver()[0] or "version unknown"
        return Finding("platform", "ok", f"macOS {version} on arm64 (Apple silicon)")
    if h.system == "Darwin" and _hardware_is_arm64():
        # An x86_64 Python under Rosetta on an Apple-silicon Mac: tart is its own native binary and works.
        return Finding("platform", "warn", f"Apple silicon, but this Python runs as {h.machine} under Rosetta",
                       "use a native arm64 Python (e.g. Homebrew's in /opt/homebrew) for a faster labctl")
    if h.system == "Darwin":
        return Finding("platform", "fail", f"macOS on {h.machine}: Tart runs only on Apple silicon (arm64)",
                       f"run the VM commands on an Apple-silicon Mac; {ANYWHERE}")
    return Finding(
        "platform", "fail",
        f"this is {h.system or 'an unknown system'} on {h.machine or 'an unknown CPU'}: the lab's VMs need macOS on "
        f"Apple silicon with Tart, so install, boot, shutdown and destroy cannot run here; {ANYWHERE}",
        "run the VM commands on an Apple-silicon Mac, or set provider.type to qemu to run the lab here under QEMU "
        "(Linux)",
    )


def check_platform_qemu(h: host.Host) -> Finding:
    where = f"{h.system or 'an unknown system'} on {h.machine or 'an unknown CPU'}"
    if h.system == "Linux":
        return Finding("platform", "ok", f"{where}: the qemu provider runs here")
    if h.system == "Darwin":
        # QEMU runs on macOS too, but labctl drives it with KVM or TCG only: no Hypervisor.framework (hvf).
        return Finding("platform", "warn", f"{where}: the qemu provider would run its VMs under TCG only (slow)",
                       "on Apple silicon use provider.type tart")
    return Finding("platform", "fail", f"{where}: the qemu provider needs Linux",
                   f"run the VM commands on Linux; {ANYWHERE}")


def _hardware_is_arm64() -> bool:
    """Is the Mac itself Apple silicon, whatever architecture this process runs as? (macOS only: sysctl)"""
    import subprocess

    try:
        done = subprocess.run(["sysctl", "-n", "hw.optional.arm64"], capture_output=True, text=True, timeout=10,
                              check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.stdout.strip() == "1"


def _version_tuple(text: str) -> tuple[int, ...] | None:
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(g) for g in match.groups() if g is not None) if match else None


def check_tart(lab: Lab | None) -> Finding:
    from .providers.tart import NOT_FOUND, TartProvider

    if lab is None:  # clusters.json is broken; `tart --version` does not depend on it
        from . import model
        from .resources import DEFAULT_CLUSTERS_JSON

        lab = model.load(DEFAULT_CLUSTERS_JSON)
    provider = TartProvider(lab)
    try:
        version = provider.available()
    except LabctlError as exc:
        # a missing tart's own hint points at doctor (and at QEMU, which the platform check already says)
        own = exc.hint if exc.message != NOT_FOUND else None
        return Finding("tart", "fail", exc.message.splitlines()[0],
                       own or "install it with `brew install cirruslabs/cli/tart` (macOS on Apple silicon)")
    where = shutil.which(provider.tart) or provider.tart
    parsed = _version_tuple(version)
    if parsed is not None and parsed[:2] < GRACEFUL_STOP_VERSION:
        return Finding("tart", "warn",
                       f"tart {version} ({where}) predates 2.12: no graceful ACPI shutdown, `labctl shutdown` can "
                       "only power off from inside the guest or pull the plug",
                       "upgrade: `brew upgrade cirruslabs/cli/tart`")
    return Finding("tart", "ok", f"tart {version} ({where})")


def gib(mib: int) -> str:
    return f"{mib / 1024:.1f} GiB"


def check_memory(b: host.Budget) -> Finding:
    if b.host.memory_mib <= 0:
        return Finding("memory", "warn", f"the lab needs {gib(b.memory_mib)} but this host's memory could not be read",
                       "set LABCTL_HOST_MEMORY_MIB to the memory labctl may plan with")
    usable = (f"{gib(b.memory_available_mib)} usable ({gib(b.host.memory_mib)} minus "
              f"{gib(host.HOST_RESERVE_MIB)} for the host)")
    if b.memory_fits:
        return Finding("memory", "ok", f"the lab needs {gib(b.memory_mib)} of {usable}")
    return Finding(
        "memory", "fail",
        f"the lab needs {gib(b.memory_mib)} but only {usable}: memory is never overcommitted",
        "lower `memory` of some nodes, drop a cluster, or install one cluster at a time with --cluster",
    )


def check_cpu(b: host.Budget) -> Finding:
    detail = f"{b.vcpus} vCPUs on {b.host.cpus} host CPUs: overcommit {b.cpu_ratio:.2f}x"
    if b.cpu_ratio > CPU_OVERCOMMIT_WARN:
        return Finding("cpu", "warn", f"{detail} (above {CPU_OVERCOMMIT_WARN:.1f}x the nodes will be slow under load)",
                       "lower `cpu` of some workers, or run fewer clusters at once")
    return Finding("cpu", "ok", detail)


def tart_home() -> Path:
    return Path(os.environ.get("TART_HOME") or Path.home() / ".tart")


def _existing(path: Path) -> Path:
    """The path itself or its nearest existing parent: ~/.tart does not exist before the first pull."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(lab: Lab, where: Path, elsewhere: str) -> Finding:
    """Free space where the VMs' disks live (`elsewhere`: how to move them to another volume)."""
    free = host.free_disk_gb(_existing(where))
    disks = [n.disk for _, n in lab.nodes if not n.static] or [0]  # a static machine's disk is its own
    total, largest = sum(disks), max(disks)
    # APFS clones and qcow2 overlays are copy-on-write: a fresh VM costs almost nothing and grows towards its disk
    # size as it is used.
    detail = f"{free:.0f} GB free where the VMs' disks live ({where}); the lab's disks can grow to up to {total} GB"
    if free < largest:
        return Finding("disk", "fail", f"{detail}: not even one {largest} GB disk fits",
                       f"free space on that volume, or {elsewhere}")
    if free < total:
        return Finding("disk", "warn", f"{detail} (the disks are copy-on-write, so this only bites as the VMs fill up)",
                       f"free space on that volume, lower some nodes' `disk`, or {elsewhere}")
    return Finding("disk", "ok", detail)


def _setuid_root(path: Path) -> bool:
    st = path.stat()
    return bool(st.st_mode & stat.S_ISUID) and st.st_uid == 0


def check_softnet(which: Callable[[str], str | None] = shutil.which) -> Finding:
    """network: softnet needs tart's `softnet` helper, setuid root, or passwordless sudo (labctl has no TTY)."""
    candidates = [p for p in (which("softnet"),) if p]
    if tart := which("tart"):
        beside = Path(tart).resolve().parent / "softnet"
        if beside.exists():
            candidates.append(str(beside))
    if not candidates:
        return Finding("softnet", "fail", "provider.tart.network is softnet, but there is no `softnet` binary on PATH "
                       "or next to tart", "`brew install cirruslabs/cli/softnet`, or use network: shared")
    path = Path(candidates[0])
    if _setuid_root(path):
        return Finding("softnet", "ok", f"{path} is setuid root")
    # Passwordless sudo would also do, but checking it needs `sudo -n`: doctor runs no such subprocess.
    return Finding("softnet", "warn",
                   f"{path} is not setuid root: tart then needs passwordless sudo for it (there is no TTY to ask)",
                   f"`sudo chown root {path} && sudo chmod u+s {path}`, or allow it in sudoers with NOPASSWD")


# ---- qemu ------------------------------------------------------------------------------------------------------

def check_qemu(provider: QemuProvider) -> Finding:
    from .providers.qemu import INSTALL_HINT

    try:
        version = provider.available()
    except LabctlError as exc:
        return Finding("qemu", "fail", exc.message.splitlines()[0], exc.hint or INSTALL_HINT)
    where = shutil.which(provider.qemu) or provider.qemu
    return Finding("qemu", "ok", f"{version} ({where}; {shutil.which(provider.qemu_img) or provider.qemu_img})")


def check_images(provider: QemuProvider) -> Finding:
    """The base image (and kernel/initrd) exist, or a base image URL not downloaded yet is downloadable; no node's
    disk is smaller than the base image."""
    from . import images

    settings, lab = provider.settings, provider.lab
    url = images.is_url(lab.base_image)
    missing = [f"{what} {path}" for what, value in (("base_image", None if url else lab.base_image),
               ("provider.qemu.kernel", settings.kernel), ("provider.qemu.initrd", settings.initrd))
               if value and not (path := provider.local_path(value)).is_file()]
    if missing:
        return Finding("images", "fail", f"not found: {', '.join(missing)}",
                       "the qemu provider boots a qcow2 cloud image (a file, or an https:// URL of one, e.g. "
                       f"{images.ubuntu_cloud_image_or_example()}), or a raw root filesystem with kernel and initrd "
                       "(tests/realvm/build_image.py builds one)")
    if url and not provider.image_cached(lab.base_image):
        return check_download(lab.base_image)
    base = provider.image_path(lab.base_image)
    info = provider.image_info(base, None)
    size = int(info.get("virtual-size", 0)) / 1024**3
    where = f"{lab.base_image} (downloaded: {base})" if url else str(base)
    detail = f"{where}: {info.get('format', '?')}, {size:.1f} GiB" + (", direct kernel boot" if settings.kernel else "")
    small = [f"{n.name} ({n.disk} GB)" for _, n in lab.nodes if n.disk < size and not n.static]
    if small:
        return Finding("images", "fail", f"{detail}; smaller disks than the image: {', '.join(small)}",
                       f"raise those nodes' `disk` to {math.ceil(size)} or more (disks only grow)")
    return Finding("images", "ok", detail)


def check_download(url: str) -> Finding:
    """A base image URL not downloaded yet: one HEAD request (images.HEAD_TIMEOUT) says whether install can download
    it. Unreachable (offline, a proxy) is a warning: install may run where the network is."""
    from . import images

    later = f"install downloads it once into {images.cache_dir()} and verifies it against the publisher's SHA256SUMS"
    try:
        status, length = images.head(url)
    except images.ImageError as exc:
        return Finding("images", "warn", f"base_image {url} is not downloaded yet, and cannot be reached from here: "
                       f"{exc.message.removeprefix(f'cannot download {url}: ')}",
                       f"{later}, so it needs the network then (check it, or https_proxy); or download it and set "
                       "base_image to the file")
    size = f" ({length / 1e6:.0f} MB)" if length else ""
    if 200 <= status < 300:
        return Finding("images", "ok", f"base_image {url}: not downloaded yet, downloadable{size}; {later}")
    if status in (404, 410):
        return Finding("images", "fail", f"base_image {url}: the server answers HTTP {status} (no such file)",
                       f"fix base_image: e.g. {images.ubuntu_cloud_image_or_example()}")
    return Finding("images", "warn", f"base_image {url}: the server answers HTTP {status} to a HEAD request",
                   f"{later}; if that fails too, check the URL")


def check_accelerator(provider: QemuProvider) -> Finding:
    from .providers.qemu import ENV_ACCEL

    accel = provider.accelerator()
    if accel.name == "kvm" and accel.probed:
        return Finding("accelerator", "ok", f"KVM ({accel.reason})")
    if accel.name == "kvm":
        return Finding("accelerator", "warn", f"KVM, untested: {accel.reason}; a KVM that hangs guests is only "
                       "caught by a probe boot", "once the base image is here (`labctl install` downloads an image "
                       "URL; a file path must exist), run doctor again: it probes a boot then")
    if accel.warning is None:  # asked for by the user
        return Finding("accelerator", "ok", f"TCG, software emulation ({accel.reason})")
    return Finding("accelerator", "warn",
                   f"KVM does not work here: {accel.reason}. The VMs run under TCG instead (software emulation, "
                   "several times slower: a node's first boot takes about a minute)",
                   "nothing blocks the lab; for speed run it on a host whose (nested) virtualization works. "
                   f"{ENV_ACCEL}=kvm forces KVM")


SYS_NET = Path("/sys/class/net")
BRIDGE_CONF = Path("/etc/qemu/bridge.conf")
BRIDGE_HELPER = Path("/usr/lib/qemu/qemu-bridge-helper")


def bridge_allowed(bridge: str, conf: Path | None = None, depth: int = 0) -> bool:
    """Would qemu-bridge-helper attach a tap to `bridge`? Its ACL: `allow NAME|all`, `deny NAME|all` (deny wins),
    `include FILE`."""
    import glob

    try:
        lines = (conf or BRIDGE_CONF).read_text().splitlines()
    except OSError:
        return False
    allowed = False
    for line in lines:
        words = line.split("#", 1)[0].split()
        if len(words) != 2:
            continue
        verb, arg = words
        if verb == "deny" and arg in (bridge, "all"):
            return False
        if verb == "allow" and arg in (bridge, "all"):
            allowed = True
        elif verb == "include" and depth < 4:
            allowed = any(bridge_allowed(bridge, Path(f), depth + 1) for f in sorted(glob.glob(arg))) or allowed
    return allowed


def check_bridge(provider: QemuProvider) -> Finding:
    """network bridge: the bridge exists, QEMU may attach to it, and its DHCP leases are where labctl reads them."""
    bridge = provider.settings.bridge
    if not (SYS_NET / bridge / "bridge").is_dir():
        return Finding("bridge", "fail", f"provider.qemu.network is bridge, but this host has no bridge {bridge}",
                       "libvirt's default network (virbr0, with DHCP): `sudo virsh net-start default && sudo virsh "
                       "net-autostart default`; or name your own bridge, with a DHCP server, in provider.qemu.bridge")
    if not bridge_allowed(bridge):  # the helper checks its ACL for root too
        return Finding("bridge", "fail", f"qemu-bridge-helper will refuse {bridge}: {BRIDGE_CONF} does not allow it",
                       f"`echo 'allow {bridge}' | sudo tee -a {BRIDGE_CONF}`")
    if os.geteuid() != 0 and BRIDGE_HELPER.exists() and not _setuid_root(BRIDGE_HELPER):
        return Finding("bridge", "warn", f"{BRIDGE_HELPER} is not setuid root: as a user, QEMU cannot attach to "
                       f"{bridge} unless it has cap_net_admin", f"`sudo chmod u+s {BRIDGE_HELPER}`")
    leases = provider.leases_path()
    if not leases.is_file():
        return Finding("bridge", "warn", f"{bridge} is a bridge, but there is no DHCP leases file {leases} (yet)",
                       "set provider.qemu.leases to the file its DHCP server writes (dnsmasq: --dhcp-leasefile)")
    return Finding("bridge", "ok", f"{bridge} is a bridge; addresses from {leases}")


def check_network(provider: QemuProvider) -> Finding:
    """Can the VMs form a cluster on provider.qemu.network? user: no (Provider.network_problem, what `init` would
    fail with after the node phases); lab: this host delivers multicast on its loopback to this user (what the
    segment is made of, qemu_net); bridge: see check_bridge."""
    from .providers import qemu_net

    settings = provider.settings
    problem = provider.network_problem()
    if problem:
        return Finding("network", "fail", problem,
                       'set provider.qemu.network to "lab" (a segment the VMs share, no root needed); existing VMs '
                       "keep the network they were created with: `labctl destroy` first")
    if settings.network == "lab":
        group, port = qemu_net.segment(provider.vm_home().parent)
        problem = qemu_net.multicast_problem(group)
        if problem:
            return Finding("network", "fail", f"the lab segment (multicast {group}:{port} on 127.0.0.1) cannot work "
                           f"here: {problem}", "allow multicast on the loopback interface (a firewall rule on lo?), "
                           'or use provider.qemu.network "bridge"')
        return Finding("network", "ok", f"lab segment: multicast {group}:{port} on 127.0.0.1; addresses from "
                       f"{settings.lab_subnet}; API and NodePorts forwarded to 127.0.0.1")
    return Finding("network", "ok", f"bridge {settings.bridge}")


def qemu_findings(lab: Lab, config: Path) -> list[Finding]:
    from .context import lab_dir
    from .providers.qemu import QemuProvider
    from .state import LabState

    provider = QemuProvider(lab, state=LabState(lab_dir(config) / ".labctl"))
    found = _guarded("qemu", lambda: check_qemu(provider))
    findings = [found, _guarded("images", lambda: check_images(provider))]
    if found.status != "fail":  # the probe needs qemu-system-*
        findings.append(_guarded("accelerator", lambda: check_accelerator(provider)))
    findings.append(_guarded("network", lambda: check_network(provider)))
    if provider.settings.network == "bridge":
        findings.append(_guarded("bridge", lambda: check_bridge(provider)))
    move = "move the lab (the directory of clusters.json, where .labctl/ lives) to a bigger volume"
    findings.append(_guarded("disk", lambda: check_disk(lab, provider.vm_home(), move)))
    return findings


# ---- all of them -----------------------------------------------------------------------------------------------

def _guarded(name: str, fn: Callable[[], Finding]) -> Finding:
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - doctor explains, it never crashes on an odd host
        return Finding(name, "warn", f"could not check: {type(exc).__name__}: {exc}", "see `labctl -vv doctor`")


def _detect(detect: Callable[[], host.Host]) -> host.Host:
    try:
        return detect()
    except Exception:  # noqa: BLE001 - e.g. no sysctl: memory unknown (0) is reported as a warning, not a crash
        return host.Host(platform.system(), platform.machine(), os.cpu_count() or 1, 0)


def load_config(config: Path) -> tuple[Lab | None, Finding]:
    """The lab doctor judges: clusters.json if there is one, else the shipped default (what `labctl init` writes)."""
    from . import model
    from .resources import DEFAULT_CLUSTERS_JSON

    source = config
    if not config.exists() and config == Path("clusters.json"):
        source = DEFAULT_CLUSTERS_JSON
    try:
        lab = model.load(source)
    except ConfigError as exc:
        count = len(exc.problems)
        return None, Finding("clusters.json", "fail",
                             f"{exc.source}: {count} problem{'s' if count != 1 else ''} (first: {exc.problems[0]}); "
                             "the resource checks need a valid lab",
                             "`labctl validate` lists every problem with its JSON path")
    summary = f"{len(lab.clusters)} clusters, {len(lab.nodes)} nodes"
    if source != config:
        return lab, Finding("clusters.json", "warn",
                            f"no {config} here: judged the shipped default lab ({summary})",
                            "`labctl init` writes it, or pass --config PATH")
    return lab, Finding("clusters.json", "ok", f"{config}: valid, {summary}")


def diagnose(config: Path, detect: Callable[[], host.Host] | None = None) -> Report:
    lab, config_finding = load_config(config)
    h = _detect(detect or host.detect)
    kind = lab.provider.type if lab is not None else "tart"
    if kind == "orchard":  # the VMs run on the controller's workers: this machine's platform, memory, disk are moot
        from .providers.orchard import doctor_findings as orchard_findings

        findings = orchard_findings(lab, config)
    else:
        findings = [_guarded("platform", lambda: check_platform(h, kind))]
    if kind == "tart":
        findings.append(_guarded("tart", lambda: check_tart(lab)))
    if lab is not None:
        b = host.budget(lab, h)
        if kind != "orchard":
            findings += [_guarded("memory", lambda: check_memory(b)), _guarded("cpu", lambda: check_cpu(b))]
        if kind == "qemu":
            findings += qemu_findings(lab, config)
        elif kind == "tart":
            findings.append(_guarded("disk", lambda: check_disk(lab, tart_home(), "set TART_HOME to a bigger volume")))
            if lab.provider.tart.network == "softnet":
                findings.append(_guarded("softnet", check_softnet))
        from .static_nodes import doctor_findings  # static machines: SSH, sudo, OS (one facts probe each)

        findings += doctor_findings(lab, config)
    findings.append(config_finding)
    return Report(findings)
