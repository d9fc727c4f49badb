"""The Tart provider: labctl's VMs through the `tart` CLI, as documented in reference/tart-cli.md.

Argv lists only (never a shell), JSON output only (never the text tables), and only the VMs named in clusters.json
are ever changed. `tart run` blocks while the VM runs, so `start` detaches it (own session, output to
.labctl/logs/<vm>.tart.log) and records its PID, which lets `stop` ask the guest to shut down (SIGUSR2, the ACPI
power button) before `tart stop` pulls the plug.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import platform
import shlex
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from ..errors import ProviderError
from ..state import private_opener, write_atomic
from .base import VM, LabVMs, shrink_error

# A Tart VM has its own address on the host's network, and the guest's sshd listens on the standard port there. A
# module constant, not an option: tests/integration/test_hung_node_cli.py points it at a throwaway sshd.
SSH_PORT = 22
NOT_FOUND = "tart not found: install it with `brew install cirruslabs/cli/tart`; validate/plan/schema work without it"


def not_found_hint() -> str:
    """What to do about a missing tart on this host: Tart runs only on macOS on Apple silicon (reference/tart-cli.md),
    so anywhere else the way on is the QEMU provider, which `labctl init --provider qemu` writes a starter lab for."""
    if platform.system() == "Darwin":
        return "`labctl doctor` checks everything the VM commands need on this Mac"
    return (f"Tart runs only on macOS on Apple silicon; on {platform.system() or 'this system'} use the QEMU provider: "
            "`labctl init --provider qemu` writes a starter lab for it (or set provider.type to qemu in clusters.json)"
            ", and `labctl doctor` checks what this host has")

# What tart's exit codes mean (reference/tart-cli.md, "Exit codes and errors").
MEANING = {
    1: "tart failed",
    2: "the VM does not exist, is not running, or is already running",
    64: "tart rejected the command line (usage error)",
}
HINTS = {
    2: "compare `tart list` with clusters.json; `labctl plan` shows what labctl would change",
    64: "labctl built a command this tart does not accept: check `tart --version` (labctl follows tart 2.32+)",
}


class TartError(ProviderError):
    """A tart command exited non-zero: carries the VM, the argv, the exit code and the tail of its stderr."""

    TAIL_LINES = 10

    def __init__(self, vm: str | None, argv: list[str], returncode: int, output: str, hint: str | None = None):
        self.vm, self.argv, self.returncode = vm, argv, returncode
        self.tail = "\n".join(output.strip().splitlines()[-self.TAIL_LINES :])
        message = f"{vm or 'tart'}: `{shlex.join(argv)}` exited {returncode} ({MEANING.get(returncode, 'tart failed')})"
        if self.tail:
            message += "\n" + "\n".join("    " + line for line in self.tail.splitlines())
        super().__init__(message, hint or HINTS.get(returncode))


def _state(entry: dict) -> str:
    state = str(entry.get("State", "")).lower()
    if state in ("running", "stopped", "suspended"):
        return state
    return "running" if entry.get("Running") else "stopped"  # tart before `State` existed


class TartProvider(LabVMs):
    name = "tart"
    hard_stops = frozenset({"tart stop"})
    POLL = 0.1  # seconds between `tart get` polls while waiting for a state change
    START_TIMEOUT = 60.0  # from `tart run` to Running (the address comes later: see ip())
    TIMEOUT = 120.0  # for commands that only read or change metadata

    def __init__(self, lab, state=None, tart: str = "tart"):
        super().__init__(lab)
        self.state = state
        self.tart = tart
        self.settings = lab.provider.tart
        self._scratch: Path | None = None

    # -- running tart --------------------------------------------------------------------------------------
    def _tart(self, args: list[str], vm: str | None = None, *, check: bool = True,
              timeout: float | None = TIMEOUT) -> subprocess.CompletedProcess:
        argv = [self.tart, *args]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                  env=self._env(), timeout=timeout)
        except FileNotFoundError:
            raise ProviderError(NOT_FOUND, hint=not_found_hint()) from None
        except OSError as exc:  # e.g. not executable
            raise ProviderError(f"cannot run `{self.tart}`: {exc}", hint="check the tart installation") from None
        except subprocess.TimeoutExpired:
            raise ProviderError(f"{vm or 'tart'}: `{shlex.join(argv)}` did not finish within {timeout:.0f} s",
                                hint="is another tart command holding its lock? see `ps ax | grep tart`") from None
        if check and done.returncode != 0:
            raise TartError(vm, argv, done.returncode, done.stderr or done.stdout)
        return done

    @staticmethod
    def _env() -> dict[str, str]:
        return {**os.environ, "CI": "1"}  # CI=1: plain progress lines instead of ANSI escapes

    def _json(self, done: subprocess.CompletedProcess, vm: str | None):
        try:
            return json.loads(done.stdout)
        except ValueError:
            raise ProviderError(f"{vm or 'tart'}: `{shlex.join(done.args)}` printed something that is not JSON: "
                                f"{done.stdout[:200]!r}") from None

    # -- reading -------------------------------------------------------------------------------------------
    def available(self) -> str:
        try:
            return self._tart(["--version"], timeout=30).stdout.strip()
        except TartError as exc:
            raise ProviderError(f"tart is installed but `tart --version` failed:\n    {exc.tail}") from None

    def list(self) -> dict[str, VM]:
        done = self._tart(["list", "--source", "local", "--format", "json"])
        return {e["Name"]: VM(e["Name"], _state(e), disk=e.get("Disk"))
                for e in self._json(done, None) if str(e.get("Source", "")).lower() == "local"}

    def get(self, name: str) -> VM | None:
        done = self._tart(["get", name, "--format", "json"], name, check=False)
        if done.returncode == 2:
            return None  # the only exit 2 of `tart get`: no such VM
        if done.returncode != 0:
            raise TartError(name, done.args, done.returncode, done.stderr)
        data = self._json(done, name)
        return VM(name, _state(data), cpu=int(data["CPU"]), memory=int(data["Memory"]), disk=int(data["Disk"]))

    def ip(self, node, wait: int = 0, *, running: bool = False) -> str | None:
        name = node if isinstance(node, str) else node.name
        if not running:  # the dhcp resolver hands out a stopped VM's old lease: never trust it
            vm = self.get(name)
            if vm is None or not vm.running:
                return None
        argv = ["ip", name, "--wait", str(int(wait))]
        resolver = self._resolver()
        if resolver != "dhcp":  # tart's default; older tarts have no --resolver at all
            argv += ["--resolver", resolver]
        done = self._tart(argv, name, check=False, timeout=wait + 30)
        if done.returncode == 1 and "no IP address found" in done.stderr:
            return None
        if done.returncode != 0:
            raise TartError(name, done.args, done.returncode, done.stderr)
        address = done.stdout.strip()
        try:
            ipaddress.IPv4Address(address)
        except ValueError:
            raise ProviderError(f"{name}: `{shlex.join(done.args)}` printed {address!r}, not an IPv4 address") from None
        return address

    def _resolver(self) -> str:
        # Bridged VMs get their lease from the LAN's DHCP server, not bootpd: only ARP finds them. Honour an
        # explicit choice, but pick arp when the user left the default on a bridged network.
        if self.settings.network == "bridged" and "ip_resolver" not in self.settings.model_fields_set:
            return "arp"
        return self.settings.ip_resolver

    @property
    def ip_wait_seconds(self) -> int:
        return self.settings.ip_wait_seconds

    def log_path(self, node) -> Path:
        return self._dir("logs") / f"{node if isinstance(node, str) else node.name}.tart.log"

    def ssh_address(self, node, address: str | None = None) -> tuple[str, int]:
        # each ip() is two tart processes (get, ip): a caller that knows the address this run passes it
        address = address or self.ip(node, wait=self.settings.ip_wait_seconds)
        if address is None:
            raise ProviderError(f"{node.name}: no IP address (is the VM running?)", hint="`labctl boot` starts it")
        return address, SSH_PORT

    def image_cached(self, image: str) -> bool:
        done = self._tart(["list", "--source", "oci", "--format", "json"])
        return any(str(e.get("Source", "")).lower() == "oci" and e.get("Name") == image for e in self._json(done, None))

    def pull(self, image: str) -> None:
        self._tart(["pull", image], timeout=None)  # tart retries network errors itself; an image can take minutes

    # -- changing ------------------------------------------------------------------------------------------
    def create(self, node, image: str | None = None) -> bool:
        name = self._owned(node)
        if self.get(name) is not None:
            return False  # `tart clone` would silently replace it
        # pulls an OCI image that is not cached; `image`: a golden image (a local VM, labctl/golden.py)
        self._tart(["clone", image or self.lab.base_image, name], name, timeout=None)
        return True

    def configure(self, node) -> list[str]:
        name = self._owned(node)
        vm = self._require(name, "configure")
        if node.disk < vm.disk:
            raise shrink_error(name, node.disk, vm.disk)
        flags: list[str] = []
        changes: list[str] = []
        for flag, label, have, want, unit in (("--cpu", "cpu", vm.cpu, node.cpu, ""),
                                              ("--memory", "memory", vm.memory, node.memory, " MiB"),
                                              ("--disk-size", "disk", vm.disk, node.disk, " GB")):
            if have != want:
                flags += [flag, str(want)]
                changes.append(f"{label} {have} → {want}{unit}")
        if not flags:
            return []
        if vm.running:  # tart has no guard: a new size only applies at the next start, and a live disk must not grow
            raise ProviderError(f"{name}: is running; stop it before changing {', '.join(changes)}")
        self._tart(["set", name, *flags], name)
        return changes

    def start(self, node) -> bool:
        name = self._owned(node)
        if self._require(name, "start").running:
            return False
        argv = [self.tart, "run", name, "--no-graphics", *self._network_flags()]
        log_path = self._dir("logs") / f"{name}.tart.log"
        with open(log_path, "ab", opener=private_opener) as log:  # 0600, like every log: it may echo secrets
            log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} labctl: {shlex.join(argv)}\n".encode())
            log.flush()
            offset = log.tell()
            try:
                # tart run blocks until the VM stops: detach it the way Cirrus's executors do. A new session keeps
                # Ctrl-C in labctl's terminal away from it (SIGINT would pull the plug).
                proc = subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT, env=self._env())
            except FileNotFoundError:
                raise ProviderError(NOT_FOUND, hint=not_found_hint()) from None
        write_atomic(self._pid_file(name), f"{proc.pid}\n")
        deadline = time.monotonic() + self.START_TIMEOUT
        while True:
            time.sleep(self.POLL)  # first: a process started a moment ago has not taken tart's lock yet
            vm = self.get(name)
            if vm is not None and vm.running:
                # Reap it whenever it ends (no zombie in a long-lived labctl); the VM outlives labctl itself.
                threading.Thread(target=proc.wait, name=f"tart-run-{name}", daemon=True).start()
                return True
            if proc.poll() is not None:
                self._forget(name)
                with open(log_path, "rb") as log:
                    log.seek(offset)
                    tail = log.read().decode(errors="replace")
                raise TartError(name, argv, proc.returncode, tail or "(it printed nothing)",
                                hint=f"it stopped before the VM was running; full log: {log_path}")
            if time.monotonic() > deadline:
                threading.Thread(target=proc.wait, name=f"tart-run-{name}", daemon=True).start()
                raise ProviderError(f"{name}: not running {self.START_TIMEOUT:.0f} s after `{shlex.join(argv)}`",
                                    hint=f"see {log_path}; `tart list` shows its state")

    def _network_flags(self) -> list[str]:
        s = self.settings
        if s.network == "softnet":
            return ["--net-softnet", *(["--net-softnet-allow", ",".join(s.softnet_allow)] if s.softnet_allow else [])]
        if s.network == "bridged":  # the model guarantees bridge_interface is set
            return ["--net-bridged", s.bridge_interface]
        return []  # shared NAT is tart's default

    def stop(self, node, timeout: float = 60, *, guest_poweroff: bool = False) -> str:
        """Stop the VM; returns how: "guest", "sigusr2", "tart stop" (or "already stopped").

        guest_poweroff=True: the caller already asked the guest to power off (e.g. `systemctl poweroff` over SSH),
        so wait for that first. Then SIGUSR2 to the recorded `tart run` (a clean ACPI shutdown), and only then
        `tart stop`, which is a hard power-off.
        """
        name = self._owned(node)
        how = self._stop(name, timeout, guest_poweroff)
        self._forget(name)
        return how

    def _stop(self, name: str, timeout: float, guest_poweroff: bool) -> str:
        if not self._require(name, "stop").running:
            return "guest" if guest_poweroff else "already stopped"
        if guest_poweroff and self._wait_stopped(name, timeout):
            return "guest"
        pid = self._recorded_pid(name)
        if pid is not None and self._is_tart_run(pid, name):
            with contextlib.suppress(ProcessLookupError):  # it ended just now: the wait below sees that
                os.kill(pid, signal.SIGUSR2)
            if self._wait_stopped(name, timeout):
                return "sigusr2"
        done = self._tart(["stop", name, "--timeout", "30"], name, check=False, timeout=90)
        if done.returncode not in (0, 2):  # 2: it stopped by itself meanwhile
            raise TartError(name, done.args, done.returncode, done.stderr)
        if not self._wait_stopped(name, 30):
            raise ProviderError(f"{name}: still running after `tart stop`", hint="see `tart list`")
        return "tart stop"

    def delete(self, node) -> bool:
        name = self._owned(node)
        vm = self.get(name)
        if vm is None:
            self._forget(name)
            return False
        if vm.running:
            self.stop(node)  # tart delete refuses a running VM (exit 1)
        self._tart(["delete", name], name)
        self._forget(name)
        return True

    # -- VMs labctl keeps beside the lab (snapshots, golden images) ---------------------------------------
    def clone_vm(self, source: str, target: str) -> None:
        self._copy_check(source, target)
        # a stopped local source: APFS copy-on-write, near instant (reference/tart-cli.md, clone)
        self._tart(["clone", source, target], target, timeout=None)

    def delete_vm(self, name: str) -> bool:
        name = self._own_vm(name)
        vm = self.get(name)
        if vm is None:
            return False
        if vm.running:  # `tart delete` refuses it (exit 1); these VMs never run, so someone else started it
            raise ProviderError(f"{name}: is running; stop it first (`tart stop {name}`)")
        self._tart(["delete", name], name)
        return True

    def vm_disk_bytes(self, name: str) -> int:
        done = self._tart(["get", name, "--format", "json"], name)
        size = self._json(done, name).get("Size")  # a string of decimal GB, e.g. "12.345" (reference/tart-cli.md)
        try:
            return int(float(size) * 1000**3)
        except (TypeError, ValueError):
            raise ProviderError(f"{name}: `tart get` gave no size on disk (Size {size!r})") from None

    # -- golden images (labctl/golden.py): local VMs named labctl-k8s-<hash> -----------------------------------
    def golden_source(self, name: str) -> str | None:
        """What `create` clones for the golden image `name`: that local VM's name, or None when there is none."""
        return name if self.get(name) is not None else None

    def keep_golden(self, build_vm: str, name: str) -> None:
        """Keep the stopped `build_vm` as the golden image `name`: a clone (APFS copy-on-write, reference/tart-cli.md)."""
        self.clone_vm(build_vm, name)

    def golden_disk_bytes(self, name: str) -> int:
        return self.vm_disk_bytes(name)

    def push_golden(self, name: str, reference: str) -> None:
        """`tart push NAME REF`: uploads the local VM to an OCI registry (may take minutes; credentials as for pull,
        reference/tart-cli.md). Not in reference/: Tart's Sources/tart/Commands/Push.swift, `push <local-name>
        <remote-names>...`, unconfirmed here."""
        self._tart(["push", name, reference], name, timeout=None)

    def delete_golden(self, name: str) -> bool:
        return self.delete_vm(name)

    # -- the detached `tart run` processes -----------------------------------------------------------------
    def _dir(self, sub: str) -> Path:
        if self.state is not None:
            self.state.ensure()  # creates .labctl/ private (0700)
            path = self.state.root / sub
        else:  # a provider without a lab directory (tests, doctor) still needs somewhere for logs and PIDs
            self._scratch = self._scratch or Path(tempfile.mkdtemp(prefix="labctl-tart-"))
            path = self._scratch / sub
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _pid_file(self, name: str) -> Path:
        return self._dir("run") / f"{name}.pid"

    def _recorded_pid(self, name: str) -> int | None:
        try:
            return int(self._pid_file(name).read_text().strip())
        except (OSError, ValueError):
            return None

    def _is_tart_run(self, pid: int, name: str) -> bool:
        """Is `pid` still a `tart run <name>`? PIDs are reused: never signal a stranger."""
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:  # gone, or macOS (no /proc): ask ps
            try:
                done = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True)
            except OSError:
                return False
            args = done.stdout.split() if done.returncode == 0 else []
        exe = os.path.basename(self.tart)
        return any(os.path.basename(a) == exe and args[i + 1 : i + 3] == ["run", name] for i, a in enumerate(args))

    def _is_running(self, name: str) -> bool:
        vm = self.get(name)
        return vm is not None and vm.running

    def _wait_stopped(self, name: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._is_running(name):
            if time.monotonic() > deadline:
                return False
            time.sleep(self.POLL)
        return True

    def _forget(self, name: str) -> None:
        self._pid_file(name).unlink(missing_ok=True)
