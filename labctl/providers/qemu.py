"""The QEMU provider: labctl's VMs on Linux hosts, with `qemu-system-*` and `qemu-img` driven by argv only.

One VM is one directory, `.labctl/qemu/<vm>/`:

    vm.json      what the VM is: base image and its format, cpu/memory for the next start, its SSH port, and the
                 NoCloud instance-id. Written last by `create`: a directory without it is an unfinished create.
    disk.qcow2   a copy-on-write overlay of the base image (`qemu-img create -f qcow2 -b BASE -F FMT`), grown to
                 the node's disk size (`qemu-img resize`; never shrunk). The base is only ever read.
    seed.img     a NoCloud seed (cloud-init: user, password, SSH keys, hostname), label CIDATA. Images without
                 cloud-init never read it.
    qemu.pid     written by QEMU itself (-pidfile) and removed by it when it exits.
    run.json     how the running QEMU was started (cpu, memory, port, accelerator): what `get` reports while it runs.
    qmp.sock     the QMP socket: `system_powerdown` (the ACPI power button) for a graceful stop, `quit` as the hard one.

The console (serial) goes to `.labctl/logs/<vm>.console.log`, appended across boots; when a guest's sshd does not
answer in time (`ssh_wait_seconds`: by accelerator, provider.qemu.ssh_wait_seconds), the error points there.

Base image: a local qcow2/raw file, or an http(s):// URL downloaded once into the user's cache and verified against
the publisher's SHA256SUMS (labctl/images.py); `pull` downloads it, `image_path` is the file either way.

Addresses. Networking is QEMU's user mode (slirp): no root, no bridge, and the guest can reach nothing on the host
but what slirp forwards. Every VM gets its own forwarded SSH port on 127.0.0.1, allocated once at create (the first
free one from `ssh_port_base` that no other VM of the lab holds) and recorded in vm.json, so it is the same at every
boot; only if another program took it meanwhile does `start` move it (and record the new one). So:
  - `ssh_address(node)` is ("127.0.0.1", <its port>): what the SSH transport connects to;
  - `ip(node)` is "127.0.0.1" while QEMU runs and None otherwise: the host-side end of the forward exists as soon
    as QEMU does, like a DHCP lease before sshd is up, and waiting for SSH is the next phase's business (the
    transport retries while the guest boots). It is NOT the guest's own address: under user-mode networking that
    is 10.0.2.15 in every VM, and the node phases read it from the node's facts.
Under user-mode networking alone VMs cannot reach each other, so such a lab runs the node phases (prepare, runtime,
kubepkgs) but forms no cluster (doctor and plan say so); network lab (a rootless segment, qemu_net.py) or bridge
gives the VMs a network they share.

Accelerator. KVM only when /dev/kvm opens and answers KVM_GET_API_VERSION AND a short probe boot of the lab's own
kernel (or disk) under KVM prints "Linux version" on the serial console: on hosts whose nested virtualization is
broken, /dev/kvm opens fine but the guest hangs with no output (or QEMU aborts on an MSR). Then TCG, with a warning
(it is several times slower). The verdict is cached in `.labctl/qemu/accel.json` per QEMU binary, kernel and host
boot. `LABCTL_QEMU_ACCEL=tcg|kvm` (or provider.qemu.accel) overrides it without probing.

The module's parts: qemu_accel.py (KVM or TCG), qemu_seed.py (the NoCloud seed), qemu_net.py (the lab segment, the
bridge's leases, and the provider's addresses, SSH endpoint and forwarded ports: its `Networking` mixin).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .. import images
from ..errors import ProviderError
from ..state import private_opener, write_atomic
from .base import VM, LabVMs, shrink_error
from .qemu_accel import ENV_ACCEL, PROBE_MARK, PROBE_SECONDS, Accel, Accelerator, _opt, kvm_problem, probe_kvm  # noqa: F401 (re-exported)
from .qemu_seed import fat_image, seed_files, write_seed  # noqa: F401 (re-exported)
from . import qemu_net
from .qemu_copies import Copies
from .qemu_net import LOOPBACK, Networking, lease_address, new_mac  # noqa: F401 (re-exported)

log = logging.getLogger("labctl")

GIB = 1024**3
INSTALL_HINT = ("install QEMU: `sudo apt-get install qemu-system-x86 qemu-utils` (Debian/Ubuntu; qemu-system-arm on "
                "arm64); validate/plan/schema work without it")
DEFAULT_APPEND = "root=/dev/vda rw console=ttyS0 net.ifnames=0"
# The wait for a booting guest's sshd, in seconds, by accelerator: an Ubuntu cloud image's first boot (cloud-init
# included) takes well under a minute under KVM; under TCG a first boot on a busy host took 3.5 minutes (see
# remote/sshwait.py), so TCG gets several times KVM's wait.
SSH_WAIT = {"kvm": 300.0, "tcg": 1200.0}


from ..model import QemuSettings  # noqa: F401  (re-exported: provider.qemu's model)


# ---- errors and running commands --------------------------------------------------------------------------------

class QemuError(ProviderError):
    """A qemu/qemu-img command failed: carries the VM, the argv, the exit code and the tail of its output."""

    TAIL_LINES = 10

    def __init__(self, vm: str | None, argv: list[str], returncode: int, output: str, hint: str | None = None):
        self.vm, self.argv, self.returncode = vm, argv, returncode
        self.tail = "\n".join(output.strip().splitlines()[-self.TAIL_LINES:])
        message = f"{vm or 'qemu'}: `{shlex.join(argv)}` exited {returncode}"
        if self.tail:
            message += "\n" + "\n".join("    " + line for line in self.tail.splitlines())
        super().__init__(message, hint)


def default_binary() -> str:
    machine = platform.machine().lower()
    return f"qemu-system-{ {'amd64': 'x86_64', 'arm64': 'aarch64'}.get(machine, machine) }"


# ---- QMP ------------------------------------------------------------------------------------------------------

def qmp(path: str, command: str, timeout: float = 5.0) -> dict:
    """Run one QMP command (after the capabilities handshake QMP requires) and return its "return" value."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        stream = sock.makefile("rwb")

        def reply() -> dict:
            while True:
                line = stream.readline()
                if not line:
                    raise ConnectionError("QMP closed the connection")
                message = json.loads(line)
                if "event" in message:
                    continue  # asynchronous events (e.g. POWERDOWN) arrive between the replies
                if "error" in message:
                    raise ProviderError(f"QMP {command}: {message['error'].get('desc', message['error'])}")
                return message

        greeting = reply()
        if "QMP" not in greeting:
            raise ConnectionError(f"not a QMP greeting: {greeting}")
        for execute in ("qmp_capabilities", command):
            stream.write(json.dumps({"execute": execute}).encode() + b"\n")
            stream.flush()
            answer = reply()
        return answer.get("return", {})


# ---- the provider -----------------------------------------------------------------------------------------------

class QemuProvider(Accelerator, Copies, Networking, LabVMs):
    name = "qemu"
    hard_stops = frozenset({"quit", "kill"})  # how `stop` says it had to pull the plug
    POLL = 0.2
    START_TIMEOUT = 120.0  # `-daemonize` returns once QEMU is set up (not the guest: that boots on its own)
    TIMEOUT = 120.0  # qemu-img and --version
    QUIT_WAIT = 15.0

    def __init__(self, lab, state=None, qemu: str | None = None, qemu_img: str = "qemu-img",
                 notify: Callable[[str], None] | None = None):
        super().__init__(lab)
        self.state = state
        self.qemu = qemu or default_binary()
        self.qemu_img = qemu_img
        self.settings: QemuSettings = lab.provider.qemu
        self._notify = notify or log.warning
        self._lock = threading.Lock()  # port allocation and the accelerator probe: nodes start in parallel threads
        self._accel: Accel | None = None
        self._scratch: Path | None = None

    # -- paths -------------------------------------------------------------------------------------------------
    def _root(self) -> Path:
        if self.state is not None:
            self.state.ensure()  # .labctl/ private (0700)
            return self.state.root
        self._scratch = self._scratch or Path(tempfile.mkdtemp(prefix="labctl-qemu-"))
        return self._scratch

    def _lab_dir(self) -> Path:
        return self.state.root.parent if self.state is not None else Path.cwd()

    def local_path(self, value: str) -> Path:
        """A path from clusters.json: relative ones are beside clusters.json."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self._lab_dir() / path)

    def vm_home(self) -> Path:
        return self._root() / "qemu"

    def _dir(self, name: str) -> Path:
        return self.vm_home() / name

    def log_path(self, node) -> Path:
        name = node if isinstance(node, str) else node.name
        logs = self._root() / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        return logs / f"{name}.console.log"

    def _pidfile(self, name: str) -> Path:
        return self._dir(name) / "qemu.pid"

    def _qmp_path(self, name: str) -> str:
        """The QMP socket: in the VM's directory unless that path is too long for a unix socket (108 bytes), then
        in a private directory under the temp dir named by a hash of it."""
        path = self._dir(name) / "qmp.sock"
        if len(os.fsencode(path)) < 100:
            return str(path)
        private = Path(tempfile.gettempdir()) / f"labctl-{os.getuid()}"
        private.mkdir(mode=0o700, exist_ok=True)
        if private.stat().st_uid != os.getuid() or private.stat().st_mode & 0o077:
            raise ProviderError(f"{private} is not private to this user; refusing to put a QMP socket there")
        return str(private / f"{hashlib.sha256(os.fsencode(path)).hexdigest()[:16]}.qmp")

    # -- running tools -----------------------------------------------------------------------------------------
    def _run(self, argv: list[str], vm: str | None = None, *, check: bool = True,
             timeout: float | None = TIMEOUT) -> subprocess.CompletedProcess:
        try:
            done = subprocess.run(argv, check=False, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                  timeout=timeout)
        except FileNotFoundError:
            raise ProviderError(f"{argv[0]} not found", hint=INSTALL_HINT) from None
        except OSError as exc:
            raise ProviderError(f"cannot run `{argv[0]}`: {exc}", hint="check the QEMU installation") from None
        except subprocess.TimeoutExpired:
            raise ProviderError(f"{vm or 'qemu'}: `{shlex.join(argv)}` did not finish within {timeout:.0f} s") from None
        if check and done.returncode != 0:
            raise QemuError(vm, argv, done.returncode, done.stderr or done.stdout)
        return done

    def image_info(self, path: Path, vm: str | None) -> dict:
        # -U (--force-share): a running QEMU holds a write lock on its disk; reading the header is still safe.
        done = self._run([self.qemu_img, "info", "--output=json", "-U", str(path)], vm)
        try:
            return json.loads(done.stdout)
        except ValueError:
            raise ProviderError(f"{vm or 'qemu-img'}: `qemu-img info {path}` printed no JSON: {done.stdout[:200]!r}") \
                from None

    # -- reading -------------------------------------------------------------------------------------------------
    def available(self) -> str:
        if shutil.which(self.qemu_img) is None:
            raise ProviderError(f"{self.qemu_img} not found", hint=INSTALL_HINT)
        done = self._run([self.qemu, "--version"], timeout=30)
        return done.stdout.strip().splitlines()[0] if done.stdout.strip() else self.qemu

    def _meta(self, name: str) -> dict | None:
        try:
            return json.loads((self._dir(name) / "vm.json").read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ProviderError(f"{name}: {self._dir(name) / 'vm.json'} is unreadable ({exc})",
                                hint="`labctl destroy` and install again recreates the VM") from None

    def _write_meta(self, name: str, meta: dict) -> None:
        write_atomic(self._dir(name) / "vm.json", json.dumps(meta, indent=2, sort_keys=True) + "\n", 0o600)

    def _run_record(self, name: str) -> dict:
        try:
            return json.loads((self._dir(name) / "run.json").read_text())
        except (OSError, ValueError):
            return {}

    def _vm_dirs(self) -> list[Path]:
        vms = self.vm_home()
        return sorted(p for p in vms.iterdir() if p.is_dir()) if vms.is_dir() else []  # accel.json lives there too

    def list(self) -> dict[str, VM]:
        out = {}
        for entry in self._vm_dirs():
            vm = self.get(entry.name)
            if vm is not None:
                out[entry.name] = vm
        return out

    def get(self, name: str) -> VM | None:
        meta = self._meta(name)
        if meta is None:
            return None
        disk = int(self.image_info(self._dir(name) / "disk.qcow2", name)["virtual-size"]) // GIB
        pid = self._pid(name)
        if pid is not None:
            running = {**meta, **self._run_record(name)}  # what it runs with, not what the next start will use
            return VM(name, "running", cpu=running["cpu"], memory=running["memory"], disk=disk)
        return VM(name, "stopped", cpu=meta["cpu"], memory=meta["memory"], disk=disk)


    def image_path(self, image: str) -> Path:
        """The local file of base_image `image`: the file itself, or a URL's verified download in the cache (which
        may not be there yet: see pull)."""
        return images.cached_path(image) if images.is_url(image) else self.local_path(image)

    def image_cached(self, image: str) -> bool:
        return self.image_path(image).is_file()

    def pull(self, image: str) -> None:
        """A URL: download it into the cache, verified (labctl/images.py), with progress notes. A file: it must
        exist already. Raises ProviderError (ImageError) saying what to do."""
        if images.is_url(image):
            images.fetch(image, checksums=self.settings.image_checksums, notify=self._notify)
            return
        raise ProviderError(
            f"base image {self.local_path(image)} does not exist; the qemu provider boots local files, or downloads "
            "a base_image given as an https:// URL",
            hint="set base_image to a qcow2 cloud image file or an https:// URL of one (e.g. "
            f"{images.ubuntu_cloud_image_or_example()}), or a raw root filesystem with provider.qemu.kernel/initrd "
            "(tests/realvm/build_image.py builds a Debian one)",
        )

    def ssh_wait_seconds(self, node) -> float | None:
        """How long to wait for this VM's sshd while it boots, in seconds: provider.qemu.ssh_wait_seconds, else by
        the accelerator it runs under (run.json; else the one configured, without a probe): SSH_WAIT["kvm"] or
        SSH_WAIT["tcg"] (a TCG boot is several times slower). LABCTL_SSH_WAIT overrides both (remote/sshwait.py)."""
        if self.settings.ssh_wait_seconds is not None:
            return float(self.settings.ssh_wait_seconds)
        name = node if isinstance(node, str) else node.name
        accel = self._run_record(name).get("accel") or os.environ.get(ENV_ACCEL, "").strip().lower() \
            or self.settings.accel
        if accel not in SSH_WAIT:  # auto, not started by labctl yet: the probe's verdict if there is one
            accel = self._accel.name if self._accel is not None else "tcg"
        return SSH_WAIT[accel]

    # -- changing ------------------------------------------------------------------------------------------------
    def create(self, node, image: str | None = None) -> bool:
        """`image`: a golden image file (golden_source) to use as the backing file instead of the base image."""
        name = self._owned(node)
        if self._meta(name) is not None:
            return False
        base = Path(image) if image else self.image_path(self.lab.base_image)
        if not base.is_file():
            if image:
                raise ProviderError(f"{name}: the golden image {image} is gone",
                                    hint="run the command again: it clones the base image then")
            self.pull(self.lab.base_image)  # a URL: downloads it; a file: raises, saying what a base image must be
        directory = self._dir(name)
        if directory.exists():
            shutil.rmtree(directory)  # an earlier create that did not finish (vm.json is written last)
        directory.mkdir(parents=True, mode=0o700)
        try:
            fmt = self.image_info(base, name).get("format", "raw")
            self._run([self.qemu_img, "create", "-f", "qcow2", "-b", str(base.resolve()), "-F", fmt,
                       str(directory / "disk.qcow2")], name)
            instance_id = f"labctl-{name}-{secrets.token_hex(4)}"
            # The NICs' MACs are fixed for the VM's life: the guest's network config and DHCP leases follow them.
            macs = {"mgmt": new_mac(), "lab": new_mac()} if self.settings.network in ("bridge", "lab") else {}
            with self._lock:  # nodes are created in parallel: an address and a port are given once, with vm.json
                lab = {"network": "lab", "lab_address": qemu_net.allocate_address(
                    self.settings.lab_subnet, self._lab_addresses(), name)} if self.settings.network == "lab" else {}
                if self.settings.cloud_init:
                    self._write_seed(node, instance_id, macs, lab.get("lab_address"))
                port = self._allocate_port(name)
                self._write_meta(name, {"base": str(base.resolve()), "base_format": fmt, "cpu": node.cpu,
                                        "memory": node.memory, "ssh_port": port, "instance_id": instance_id,
                                        **{f"{nic}_mac": mac for nic, mac in macs.items()}, **lab})
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        return True


    def _write_seed(self, node, instance_id: str, macs: dict[str, str], lab_address: str | None = None) -> None:
        keys = []
        if self.state is not None:
            from ..remote.credentials import lab_key

            key = lab_key(self.state)
            keys.append(f"{key.get_name()} {key.get_base64()} labctl")
        if self.lab.ssh_key:
            public = Path(self.lab.ssh_key).expanduser().with_suffix(".pub")
            if public.is_file():
                keys.append(public.read_text().strip())
        password = self.lab.ssh_password.get_secret_value() if self.lab.ssh_password is not None else None
        files = seed_files(node.name, self.lab.ssh_user, password, keys, instance_id, macs, lab_address)
        write_seed(self._dir(node.name) / "seed.img", files)

    def configure(self, node) -> list[str]:
        name = self._owned(node)
        vm = self._require(name, "configure")
        if node.disk < vm.disk:
            raise shrink_error(name, node.disk, vm.disk)
        meta = self._meta(name)
        self._require_network(name, meta)
        changes = []
        for label, have, want, unit in (("cpu", vm.cpu, node.cpu, ""), ("memory", vm.memory, node.memory, " MiB"),
                                        ("disk", vm.disk, node.disk, " GB")):
            if have != want:
                changes.append(f"{label} {have} → {want}{unit}")
        if not changes:
            return []
        if vm.running:  # cpu and memory are QEMU arguments, and a disk in use must not grow underneath the guest
            raise ProviderError(f"{name}: is running; stop it before changing {', '.join(changes)}")
        if node.disk != vm.disk:
            # G = GiB, as `qemu-img info` reports it back; without --shrink qemu-img refuses to shrink as well
            self._run([self.qemu_img, "resize", "-f", "qcow2", str(self._dir(name) / "disk.qcow2"), f"{node.disk}G"],
                      name)
        self._write_meta(name, {**meta, "cpu": node.cpu, "memory": node.memory})
        return changes


    def command(self, name: str, meta: dict, accel: Accel, port: int) -> list[str]:
        """The full argv of one VM's QEMU (detached: -daemonize, with -pidfile)."""
        directory = self._dir(name)
        argv = [self.qemu, "-name", f"guest={_opt(name)}", "-machine", "q35", *accel.flags(),
                "-smp", str(meta["cpu"]), "-m", str(meta["memory"]),
                "-nodefaults", "-display", "none", "-daemonize", "-pidfile", str(self._pidfile(name)),
                "-chardev", f"socket,id=qmp,path={_opt(self._qmp_path(name))},server=on,wait=off",
                "-mon", "chardev=qmp,mode=control",
                "-chardev", f"file,id=console,path={_opt(self.log_path(name))},append=on",
                "-serial", "chardev:console",
                # the root disk first: it is /dev/vda, which the kernel command line and fstab name
                "-drive", f"if=virtio,file={_opt(directory / 'disk.qcow2')},format=qcow2,discard=unmap"]
        seed = directory / "seed.img"
        if self.settings.cloud_init and seed.is_file():
            argv += ["-drive", f"if=virtio,file={_opt(seed)},format=raw,readonly=on"]
        # user-mode networking: SSH forwarded from the host's loopback only, nothing else reaches the guest
        mgmt_mac = f",mac={meta['mgmt_mac']}" if "mgmt_mac" in meta else ""
        # (network lab: also the cluster's API and NodePorts on its first control plane, see qemu_net)
        forwards = "".join(f",hostfwd=tcp:{LOOPBACK}:{host}-:{guest}"
                           for guest, host in meta.get("forwards", {}).items())
        argv += ["-netdev", f"user,id=net0,hostfwd=tcp:{LOOPBACK}:{port}-:22{forwards}",
                 "-device", f"virtio-net-pci,netdev=net0{mgmt_mac}"]
        if meta.get("network") == "lab":  # network lab: the lab's segment, multicast on the loopback (qemu_net)
            argv += ["-netdev", qemu_net.netdev(self._root()),
                     "-device", f"virtio-net-pci,netdev=lab,mac={meta['lab_mac']}"]
        elif "lab_mac" in meta:  # network bridge: the lab network, through qemu-bridge-helper (a tap on the bridge)
            argv += ["-netdev", f"bridge,id=lab,br={self.settings.bridge}",
                     "-device", f"virtio-net-pci,netdev=lab,mac={meta['lab_mac']}"]
        argv += ["-device", "virtio-rng-pci"]  # entropy for sshd's first boot: no stall waiting for the CRNG
        s = self.settings
        if s.kernel:
            argv += ["-kernel", str(self.local_path(s.kernel))]
            if s.initrd:
                argv += ["-initrd", str(self.local_path(s.initrd))]
            argv += ["-append", s.append or DEFAULT_APPEND]
        return argv

    def start(self, node) -> bool:
        name = self._owned(node)
        if self._require(name, "start").running:
            return False
        meta = self._meta(name)
        self._require_network(name, meta)
        for what in (self.settings.kernel, self.settings.initrd):
            if what and not self.local_path(what).is_file():
                raise ProviderError(f"{name}: {self.local_path(what)} does not exist (provider.qemu)",
                                    hint="fix provider.qemu.kernel/initrd in clusters.json")
        accel = self.accelerator()
        with self._lock:
            port = meta["ssh_port"]
            if not self._port_free(port):  # another program took it since: move this VM (the key is pinned by name)
                port = self._allocate_port(name)
                self._notify(f"{name}: port {meta['ssh_port']} is taken by another program; SSH moves to {port}")
                meta = {**meta, "ssh_port": port}
                self._write_meta(name, meta)
            if meta.get("network") == "lab":
                forwards = self._forwards(name, meta, port)
                if forwards != meta.get("forwards", {}):
                    meta = {**meta, "forwards": forwards}
                    self._write_meta(name, meta)
        argv = self.command(name, meta, accel, port)
        console = self.log_path(name)
        with open(console, "ab", opener=private_opener) as f:  # 0600 before QEMU appends the guest's console
            f.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S')} labctl: {accel.name} ({accel.reason})\n"
                    f"--- {shlex.join(argv)}\n".encode())
        if accel.warning:
            self._notify(f"{name}: {accel.warning}")
        self._pidfile(name).unlink(missing_ok=True)
        # -daemonize: the first process exits once QEMU is set up (ports bound, files open), which is when the
        # VM runs; its errors (a taken port, a bad image) arrive on stderr before that.
        done = self._run(argv, name, check=False, timeout=self.START_TIMEOUT)
        if done.returncode != 0:
            raise QemuError(name, argv, done.returncode, done.stderr or done.stdout,
                            hint=f"QEMU did not start; the console log is {console}")
        pid = self._pid(name)
        if pid is None:
            raise ProviderError(f"{name}: QEMU reported success but {self._pidfile(name)} names no running QEMU",
                                hint=f"see {console}")
        if done.stderr.strip():
            with open(console, "ab") as f:
                f.write(b"".join(f"--- qemu: {line}\n".encode() for line in done.stderr.strip().splitlines()))
        write_atomic(self._dir(name) / "run.json", json.dumps(
            {"pid": pid, "cpu": meta["cpu"], "memory": meta["memory"], "ssh_port": port, "accel": accel.name,
             "forwards": meta.get("forwards", {}),
             "qmp": self._qmp_path(name), "started": time.time()}, indent=2) + "\n", 0o600)
        return True

    def stop(self, node, timeout: float = 60, *, guest_poweroff: bool = False) -> str:
        """Stop the VM; returns how: "guest", "powerdown" (ACPI via QMP), "quit" (QMP), "kill" (or "already stopped").

        guest_poweroff=True: the caller already asked the guest to power off, so wait for that first. Then QMP
        `system_powerdown` (the ACPI power button: a clean shutdown), then QMP `quit` (the plug), then SIGKILL.
        """
        name = self._owned(node)
        self._require(name, "stop")
        how = self._stop(name, timeout, guest_poweroff)
        self._forget(name)
        return how

    def _stop(self, name: str, timeout: float, guest_poweroff: bool) -> str:
        if self._pid(name) is None:
            return "guest" if guest_poweroff else "already stopped"
        if guest_poweroff and self._wait_stopped(name, timeout):
            return "guest"
        qmp_path = self._run_record(name).get("qmp") or self._qmp_path(name)
        for command, how, wait in (("system_powerdown", "powerdown", timeout), ("quit", "quit", self.QUIT_WAIT)):
            try:
                qmp(qmp_path, command)
            except (OSError, ValueError, ProviderError) as exc:
                log.debug("%s: QMP %s failed: %s", name, command, exc)
                if self._pid(name) is None:
                    return how  # it went away while we asked
                continue
            if self._wait_stopped(name, wait):
                return how
        pid = self._pid(name)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if not self._wait_stopped(name, 10):
                raise ProviderError(f"{name}: QEMU (pid {pid}) is still running after SIGKILL")
        return "kill"

    def delete(self, node) -> bool:
        name = self._owned(node)
        if self._meta(name) is None:
            directory = self._dir(name)
            if directory.exists():
                shutil.rmtree(directory)  # the remains of an unfinished create
            return False
        if self._pid(name) is not None:
            self.stop(node)
        qmp_path = self._qmp_path(name)
        shutil.rmtree(self._dir(name))
        Path(qmp_path).unlink(missing_ok=True)
        return True

    # -- the QEMU processes ----------------------------------------------------------------------------------
    def _pid(self, name: str) -> int | None:
        """The PID of this VM's running QEMU, or None. A pidfile left by a QEMU that died (or by a host reboot) is
        removed; a PID that now belongs to another program is never trusted (PIDs are reused)."""
        pidfile = self._pidfile(name)
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        if self._is_our_qemu(pid, pidfile):
            return pid
        pidfile.unlink(missing_ok=True)
        return None

    @staticmethod
    def _is_our_qemu(pid: int, pidfile: Path) -> bool:
        """Is `pid` a QEMU started with this very pidfile? That path is unique to one VM of one lab."""
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            if not Path("/proc/self").exists():  # macOS: ask ps
                done = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], check=False, capture_output=True,
                                      text=True)
                return done.returncode == 0 and f"-pidfile {pidfile}" in done.stdout
            return False
        return any(a == "-pidfile" and args[i + 1:i + 2] == [str(pidfile)] for i, a in enumerate(args))

    def _wait_stopped(self, name: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._pid(name) is not None:
            if time.monotonic() > deadline:
                return False
            time.sleep(self.POLL)
        return True

    def _forget(self, name: str) -> None:
        if self._pid(name) is not None:
            return
        # QEMU removes both itself when it exits cleanly; after a SIGKILL they are left behind
        qmp_path = self._run_record(name).get("qmp")
        if qmp_path:
            Path(qmp_path).unlink(missing_ok=True)
        (self._dir(name) / "run.json").unlink(missing_ok=True)
        self._pidfile(name).unlink(missing_ok=True)
