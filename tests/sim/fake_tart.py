#!/usr/bin/env python3
"""A fake `tart` for the simulated lab: follows /work/shared/reference/tart-cli.md (stdlib only, Linux and macOS).

Run as a program it behaves like tart (argv, JSON, exit codes, messages, a blocking `run` that holds an fcntl lock on
config.json). Imported, it offers `FakeTart`, the test-side handle on one fake home.

State lives in $TART_HOME, which must be set (the fake never falls back to ~/.tart):
  vms/<name>/config.json    cpuCount, memorySize (bytes), macAddress, ...; written in place, like tart, so the
                            lock of a running VM survives `tart set`
  vms/<name>/disk.img       a sparse file: its length is the disk size (decimal GB)
  cache/OCIs/<host>/<repo>/<tag>  a symlink to the pulled digest directory beside it
  calls.jsonl               every invocation: {"argv", "pid", "start", "env"} and, when it exits, {"pid", "end", "rc"}

Test controls (NOT part of real tart):
  fake/<name>/poweroff      create it: the guest powers itself off (as after `systemctl poweroff`)
  fake/<name>/ignore-acpi   create it: the guest ignores SIGUSR2, so only SIGINT (`tart stop`) ends it
  fake/<name>/new-ip        create it: the next boot gets a new address (expired lease)
  fake/<name>/run.json      written by `run`: pid, argv, boot time, boot count
  fake/<name>/endings.jsonl `run` appends how each boot ended: {"how": "sigint"|"sigusr2"|"poweroff", "time"}
  fake/leases.json          bootpd's leases by MAC; they survive a stop, so `tart ip` of a stopped VM prints a stale
                            address, as the real dhcp resolver does
  env FAKE_TART_IP_DELAY        seconds from boot until the guest has a lease (default 0)
  env FAKE_TART_IP_POLL         seconds between the looks of `ip --wait` (default 1, real tart's)
  env FAKE_TART_SHUTDOWN_DELAY  seconds a graceful shutdown takes (default 0)
  env FAKE_TART_FAIL            JSON {"<command>" or "<command>:<vm>": [exit code, "stderr"]}: that call fails
  env FAKE_TART_RUN_MAX         a `run` powers off by itself after this many seconds (safety net against orphans)
  env FAKE_TART_LEASE_PREFIX   the first three octets of the addresses handed out (default 127.64.0: loopback)
  env FAKE_TART_VERSION         what `tart --version` prints (default 2.32.1)
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import struct
import sys
import time
from collections.abc import Iterable
from pathlib import Path

# hashlib, random, shutil and subprocess are imported where they are used: every tart call starts a new
# interpreter, and the simulated lab makes hundreds of them.

GB = 1000**3  # tart's disk sizes are decimal GB
MIB = 1024**2
IMAGE_DEFAULTS = {"cpu": 4, "memory_mib": 4096, "disk_gb": 20}
POLL = 0.02  # the fake's short waits: a file being rewritten, `tart stop` waiting for the run to end
# `tart ip --wait` looks once a second, as real tart does (Sources/tart/Commands/IP.swift, resolveIP: "wait a second",
# Task.sleep(nanoseconds: 1_000_000_000); cirruslabs/tart@994d3a5). FAKE_TART_IP_POLL overrides it for a lab whose
# clock runs scaled down (benchmarks/install_sim.py): a faster look there would cost more than the real tool does.
IP_POLL = 1.0
# A running VM waits for signals, not a timer (the fake's wait ends at once on one); it looks at its control files
# this often when nothing nudged it (FakeTart.poweroff does, with SIGWINCH).
RUN_IDLE_LOOK = 1.0


class Exit(Exception):
    def __init__(self, code: int, message: str = ""):
        self.code, self.message = code, message


def missing(name: str) -> Exit:
    return Exit(2, f'the specified VM "{name}" does not exist')


# ---- storage -------------------------------------------------------------------------------------------------

def home() -> Path:
    value = os.environ.get("TART_HOME")
    if not value:
        raise Exit(1, "Error: fake tart: TART_HOME is not set (the fake never touches ~/.tart)")
    path = Path(value)
    (path / "vms").mkdir(parents=True, exist_ok=True)
    return path


def vm_dir(name: str) -> Path:
    return home() / "vms" / name


def control(name: str) -> Path:
    path = home() / "fake" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def read_json(path: Path, default=None):
    for _ in range(50):  # a writer truncates in place for a moment: retry instead of failing
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return default
        except ValueError:
            time.sleep(POLL)
    raise Exit(1, f"Error: cannot parse {path}")


# read_json_settled's parses: path → ((mtime_ns, size, inode), value), for files unchanged since well before the parse
_SETTLED: dict[Path, tuple[tuple[int, int, int], object]] = {}
SETTLED_SECONDS = 0.05  # far above the filesystem's timestamp granularity (the kernel's coarse clock, a few ms)


def read_json_settled(path: Path, default=None):
    """read_json for the simulated lab's hot read-only paths (a VM's state, asked on every simulated API request):
    a file whose modification time is SETTLED_SECONDS in the past when it is parsed is not parsed again while its
    (mtime, size, inode) stay the same — any later write gets a later timestamp. The value is shared: callers
    must not change it."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return default
    key = (st.st_mtime_ns, st.st_size, st.st_ino)
    hit = _SETTLED.get(path)
    if hit is not None and hit[0] == key:
        return hit[1]
    value = read_json(path, default)
    if time.time_ns() - st.st_mtime_ns > SETTLED_SECONDS * 1e9:
        _SETTLED[path] = (key, value)
    return value


def write_in_place(path: Path, data: dict) -> None:
    # In place (same inode), like tart: replacing the file would drop the lock a running VM holds on it.
    with open(path, "r+" if path.exists() else "w") as f:
        f.write(json.dumps(data, indent=2))
        f.truncate()


class flocked:
    """A global flock (tart takes one on its home for clone and the start of run)."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc):
        os.close(self.fd)


def lock_holder(config: Path) -> int | None:
    """The PID holding a write lock on config.json (F_GETLK, the way tart reads it), or None."""
    try:
        fd = os.open(config, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        if sys.platform == "darwin":
            fmt = "qqihh"  # l_start, l_len, l_pid, l_type, l_whence
            raw = fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack(fmt, 0, 0, 0, fcntl.F_WRLCK, 0))
            _, _, pid, ltype, _ = struct.unpack(fmt, raw)
        else:
            fmt = "hhqqi4x"  # l_type, l_whence, l_start, l_len, l_pid
            raw = fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack(fmt, fcntl.F_WRLCK, 0, 0, 0, 0))
            ltype, _, _, _, pid = struct.unpack(fmt, raw)
    finally:
        os.close(fd)
    return None if ltype == fcntl.F_UNLCK else pid


def running_pid(name: str) -> int | None:
    return lock_holder(vm_dir(name) / "config.json")


def local_vms() -> list[str]:
    return sorted(p.name for p in (home() / "vms").iterdir() if (p / "config.json").exists())


def disk_bytes(path: Path) -> int:
    return (path / "disk.img").stat().st_size


def size_on_disk(path: Path) -> float:
    return sum(f.stat().st_blocks * 512 for f in path.iterdir() if f.is_file()) / GB


def random_mac() -> str:
    import random

    octets = [random.randrange(256) for _ in range(6)]
    octets[0] = (octets[0] & 0xFC) | 0x02  # locally administered, unicast
    return ":".join(f"{o:02x}" for o in octets)


# ---- images --------------------------------------------------------------------------------------------------

def parse_remote(name: str) -> tuple[str, str]:
    """`host/repo:tag` or `host/repo@sha256:...` -> (repo path, tag or digest)."""
    if "@" in name:
        repo, digest = name.split("@", 1)
        return repo, digest
    repo, _, tag = name.rpartition(":") if ":" in name.rsplit("/", 1)[-1] else (name, "", "latest")
    return repo, tag


def cached_image(name: str) -> Path | None:
    repo, ref = parse_remote(name)
    path = home() / "cache" / "OCIs" / repo / ref
    return path if (path / "config.json").exists() else None


def pull(name: str) -> Path:
    import hashlib

    repo, ref = parse_remote(name)
    print(f"pulling {name}...", flush=True)  # CI=1: plain lines; real tart draws a progress bar otherwise
    base = home() / "cache" / "OCIs" / repo
    digest = ref if ref.startswith("sha256:") else "sha256:" + hashlib.sha256(name.encode()).hexdigest()
    target = base / digest
    target.mkdir(parents=True, exist_ok=True)
    mac = "6e:" + ":".join(hashlib.sha256(repo.encode()).hexdigest()[i : i + 2] for i in range(0, 10, 2))
    config = {"version": 1, "os": "linux", "arch": "arm64", "cpuCountMin": 1, "cpuCount": IMAGE_DEFAULTS["cpu"],
              "memorySizeMin": 512 * MIB, "memorySize": IMAGE_DEFAULTS["memory_mib"] * MIB, "macAddress": mac,
              "display": {"width": 1024, "height": 768}, "diskFormat": "raw"}
    write_in_place(target / "config.json", config)
    with open(target / "disk.img", "wb") as f:
        f.truncate(IMAGE_DEFAULTS["disk_gb"] * GB)  # sparse: costs nothing
    (target / "nvram.bin").write_bytes(b"")
    if ref != digest:
        link = base / ref
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(digest)
    print(f"pulled {name}", flush=True)
    return target


def copy_vm(source: Path, target: Path) -> None:
    import shutil

    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in source.iterdir():
        if f.name == "disk.img":
            with open(tmp / f.name, "wb") as out:
                out.truncate(f.stat().st_size)  # copy-on-write clone: the content does not matter here
        elif f.is_file():
            shutil.copyfile(f, tmp / f.name)
    shutil.rmtree(target, ignore_errors=True)  # tart clone silently replaces an existing VM
    tmp.rename(target)


# ---- argument parsing (strict: anything unknown is a usage error, exit 64) ------------------------------------

def parse(args: list[str], options: dict[str, type | None], positionals: int, variadic: bool = False):
    opts: dict[str, object] = {}
    pos: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("-") and arg != "-":
            key, eq, value = arg.partition("=")
            if key not in options:
                raise Exit(64, f"Error: Unknown option '{key}'")
            kind = options[key]
            if kind is None:
                opts[key] = True
            else:
                if not eq:
                    i += 1
                    if i >= len(args):
                        raise Exit(64, f"Error: Missing value for '{key}'")
                    value = args[i]
                try:
                    opts[key] = kind(value)
                except ValueError:
                    raise Exit(64, f"Error: The value '{value}' is invalid for '{key}'") from None
        else:
            pos.append(arg)
        i += 1
    if len(pos) < positionals:
        raise Exit(64, "Error: Missing expected argument")
    if len(pos) > positionals and not variadic:
        raise Exit(64, f"Error: Unexpected argument '{pos[positionals]}'")
    return opts, pos


def injected_failure(command: str, args: list[str]) -> None:
    table = json.loads(os.environ.get("FAKE_TART_FAIL") or "{}")
    first = next((a for a in args if not a.startswith("-")), "")
    spec = table.get(f"{command}:{first}") or table.get(command)
    if spec:
        raise Exit(int(spec[0]), str(spec[1]))


# ---- commands ------------------------------------------------------------------------------------------------

def cmd_list(args):
    opts, _ = parse(args, {"--source": str, "--format": str, "-q": None, "--quiet": None}, 0)
    source = opts.get("--source")
    if source not in (None, "local", "oci") or opts.get("--format", "text") not in ("text", "json"):
        raise Exit(64, "Error: The value is invalid for '--source' or '--format'")
    rows = []
    if source in (None, "local"):
        for name in local_vms():
            path, running = vm_dir(name), running_pid(name) is not None
            rows.append({"Source": "local", "Name": name, "Disk": disk_bytes(path) // GB,
                         "Size": int(size_on_disk(path)), "Running": running,
                         "State": "running" if running else "stopped", "Accessed": _accessed(path)})
    if source in (None, "oci"):
        root = home() / "cache" / "OCIs"
        for config in sorted(root.rglob("config.json")) if root.exists() else []:
            path = config.parent
            if path.is_symlink():
                continue  # a tag: listed below, beside its digest
            repo = path.parent.relative_to(root).as_posix()
            for entry in sorted(path.parent.iterdir()):  # each image twice: tag (symlink) and digest
                if entry.resolve() == path.resolve():
                    sep = "@" if entry.name.startswith("sha256:") else ":"
                    rows.append({"Source": "OCI", "Name": f"{repo}{sep}{entry.name}", "Disk": disk_bytes(path) // GB,
                                 "Size": int(size_on_disk(path)), "Running": False, "State": "stopped",
                                 "Accessed": _accessed(path)})
    if opts.get("-q") or opts.get("--quiet"):
        print("\n".join(r["Name"] for r in rows))
    elif opts.get("--format") == "json":
        print(json.dumps(rows, indent=2))
    else:
        print("Source Name Disk Size Accessed State")
        for r in rows:
            print(f"{r['Source']} {r['Name']} {r['Disk']} {r['Size']} {r['Accessed']} {r['State']}")


def _accessed(path: Path) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(path.stat().st_atime))


def cmd_get(args):
    opts, (name,) = parse(args, {"--format": str}, 1)
    path = vm_dir(name)
    config = read_json(path / "config.json")
    if config is None:
        raise missing(name)
    running = running_pid(name) is not None
    data = {"OS": config["os"], "CPU": config["cpuCount"], "Memory": config["memorySize"] // MIB,
            "Disk": disk_bytes(path) // GB, "DiskFormat": config.get("diskFormat", "raw"),
            "Size": f"{size_on_disk(path):.3f}", "Display": "1024x768", "Running": running,
            "State": "running" if running else "stopped"}
    if opts.get("--format") == "json":
        keys = sorted(data, key=lambda k: os.urandom(2))  # tart's key order is not stable: nobody may depend on it
        print(json.dumps({k: data[k] for k in keys}, indent=2))
    else:
        for key, value in data.items():
            print(f"{key} {value}")


def cmd_clone(args):
    _, (source, new) = parse(args, {"--insecure": None, "--concurrency": int}, 2)
    if "/" in new:
        raise Exit(64, f"Error: <new-name> should be a local name, got {new!r}")
    with flocked(home() / ".lock"):
        if "/" in source:
            src = cached_image(source) or pull(source)  # clone pulls what is not cached (never refreshes a tag)
        else:
            src = vm_dir(source)
            if not (src / "config.json").exists():
                raise missing(source)
        copy_vm(src, vm_dir(new))
        config = read_json(vm_dir(new) / "config.json")
        others = [read_json(vm_dir(n) / "config.json", {}).get("macAddress") for n in local_vms() if n != new]
        if config["macAddress"] in others:  # a new MAC only when another local VM already has it
            config["macAddress"] = random_mac()
            write_in_place(vm_dir(new) / "config.json", config)


def cmd_pull(args):
    _, (name,) = parse(args, {"--insecure": None, "--concurrency": int}, 1)
    if "/" not in name:
        print(f"{name} is a local image, nothing to pull")
        return
    pull(name)


def cmd_set(args):
    opts, (name,) = parse(args, {"--cpu": int, "--memory": int, "--disk-size": int, "--random-mac": None}, 1)
    path = vm_dir(name)
    config = read_json(path / "config.json")
    if config is None:
        raise missing(name)
    if "--cpu" in opts:
        if opts["--cpu"] < config.get("cpuCountMin", 1):
            raise Exit(1, f"Error: LessThanMinimalResourcesError(\"VM should have {config.get('cpuCountMin', 1)} "
                          f"CPU cores at minimum (requested: {opts['--cpu']})\")")
        config["cpuCount"] = opts["--cpu"]
    if "--memory" in opts:
        if opts["--memory"] * MIB < config.get("memorySizeMin", 0):
            raise Exit(1, "Error: LessThanMinimalResourcesError(\"VM should have at least "
                          f"{config['memorySizeMin'] // MIB} MB of memory (requested: {opts['--memory']})\")")
        config["memorySize"] = opts["--memory"] * MIB
    if opts.get("--random-mac"):
        config["macAddress"] = random_mac()
    if "--disk-size" in opts:
        want, have = opts["--disk-size"] * GB, disk_bytes(path)
        if want < have:
            raise Exit(1, f"new disk size of {want // GB} GB should be larger than the current disk size of "
                          f"{have // GB} GB")
        os.truncate(path / "disk.img", want)  # same size: a no-op
    write_in_place(path / "config.json", config)


def cmd_delete(args):
    import shutil

    _, names = parse(args, {}, 1, variadic=True)
    for name in names:  # stops at the first error, like tart
        if not (vm_dir(name) / "config.json").exists():
            raise missing(name)
        if running_pid(name) is not None:
            raise Exit(1, f'VM "{name}" is running')
        shutil.rmtree(vm_dir(name))
        shutil.rmtree(home() / "fake" / name, ignore_errors=True)


def cmd_rename(args):
    _, (name, new) = parse(args, {}, 2)
    if not (vm_dir(name) / "config.json").exists():
        raise Exit(64, f'Error: failed to rename VM "{name}": it does not exist')
    if vm_dir(new).exists():
        raise Exit(64, f'Error: failed to rename VM "{name}", target VM "{new}" already exists')
    vm_dir(name).rename(vm_dir(new))


def cmd_stop(args):
    opts, (name,) = parse(args, {"--timeout": int}, 1)
    if not (vm_dir(name) / "config.json").exists():
        raise missing(name)
    pid = running_pid(name)
    if pid is None:
        raise Exit(2, f'VM "{name}" is not running')
    os.kill(pid, signal.SIGINT)  # tart stop pulls the plug: SIGINT is a hard power-off
    deadline = time.monotonic() + opts.get("--timeout", 30)
    while running_pid(name) is not None:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            deadline = float("inf")
        time.sleep(POLL)


# Real tart hands out 192.168.64.x; the fake hands out loopback addresses instead, because on the test machines
# anything that tries to reach a VM (SSH, the API server) must only ever knock on this machine's own loopback.
LEASE_PREFIX = os.environ.get("FAKE_TART_LEASE_PREFIX", "127.64.0")


def cmd_ip(args):
    opts, (name,) = parse(args, {"--wait": int, "--resolver": str}, 1)
    if opts.get("--resolver", "dhcp") not in ("dhcp", "arp", "agent"):
        raise Exit(64, f"Error: The value '{opts['--resolver']}' is invalid for '--resolver'")
    config = read_json(vm_dir(name) / "config.json")
    if config is None:
        raise missing(name)
    delay = float(os.environ.get("FAKE_TART_IP_DELAY", "0"))
    deadline = time.monotonic() + opts.get("--wait", 0)
    while True:
        running = running_pid(name) is not None
        booted = read_json(control(name) / "run.json", {}).get("boot_time", 0)
        with flocked(home() / "fake" / ".leases.lock"):
            leases = read_json(home() / "fake" / "leases.json", {"next": 2, "leases": {}})
            address = leases["leases"].get(config["macAddress"])  # bootpd's lease, stale or not
            if address is None and running and time.time() >= booted + delay:
                address = leases["leases"][config["macAddress"]] = f"{LEASE_PREFIX}.{leases['next']}"
                leases["next"] += 1
                write_in_place(home() / "fake" / "leases.json", leases)
        if address:
            print(address)
            return
        if time.monotonic() >= deadline:
            raise Exit(1, "no IP address found, is your VM running?")
        time.sleep(float(os.environ.get("FAKE_TART_IP_POLL", IP_POLL)))


def cmd_run(args):
    opts, (name,) = parse(args, {"--no-graphics": None, "--net-softnet": None, "--net-bridged": str,
                                 "--net-host": None, "--net-softnet-allow": str, "--dir": str, "--nested": None}, 1)
    if sum(1 for k in ("--net-softnet", "--net-bridged", "--net-host") if k in opts) > 1:
        raise Exit(64, "Error: --net-softnet, --net-bridged and --net-host are mutually exclusive")
    ctl = control(name)
    ended: list[str] = []
    graceful: list[float] = []

    def on_sigint(signum, frame):
        ended.append("sigint")  # hard power-off, at once

    def on_sigusr2(signum, frame):
        if not (ctl / "ignore-acpi").exists():
            graceful.append(time.monotonic())  # the guest's ACPI shutdown takes FAKE_TART_SHUTDOWN_DELAY

    # Installed first: SIGUSR2's default action would kill the process outright.
    signal.signal(signal.SIGINT, on_sigint)
    signal.signal(signal.SIGUSR2, on_sigusr2)
    signal.signal(signal.SIGWINCH, lambda signum, frame: None)  # the test's nudge: look at the control files now
    wake, woken = os.pipe()
    os.set_blocking(wake, False)
    os.set_blocking(woken, False)
    # every signal above ends the wait below at once, even one that lands between the loop's look and the wait
    signal.set_wakeup_fd(woken)
    config_path = vm_dir(name) / "config.json"
    if not config_path.exists():
        # The one command that exits 1 (and says "Error:") for a missing VM.
        raise Exit(1, f'Error: the specified VM "{name}" does not exist')
    with flocked(home() / ".lock"):
        fd = os.open(config_path, os.O_RDWR)  # never closed: closing any fd of the file would drop the lock
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise Exit(2, f'VM "{name}" is already running!') from None
        config = json.loads(os.pread(fd, 1 << 20, 0))
        twins = [n for n in local_vms() if n != name and running_pid(n) is not None
                 and read_json(vm_dir(n) / "config.json", {}).get("macAddress") == config["macAddress"]]
        if twins:  # another running VM has this MAC: tart resets it, so the address changes
            config["macAddress"] = random_mac()
            data = json.dumps(config, indent=2).encode()
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
    with flocked(home() / "fake" / ".leases.lock"):
        if (ctl / "new-ip").exists():  # the lease expired while it was off: the next DHCP gives a new address
            (ctl / "new-ip").unlink()
            leases = read_json(home() / "fake" / "leases.json", {"next": 2, "leases": {}})
            leases["leases"].pop(config["macAddress"], None)
            write_in_place(home() / "fake" / "leases.json", leases)
    boots = read_json(ctl / "run.json", {}).get("boots", 0) + 1
    write_in_place(ctl / "run.json", {"pid": os.getpid(), "argv": ["run", *args], "boot_time": time.time(),
                                      "boots": boots})
    shutdown = float(os.environ.get("FAKE_TART_SHUTDOWN_DELAY", "0"))
    give_up = time.monotonic() + float(os.environ.get("FAKE_TART_RUN_MAX", "3600"))
    while not ended:
        now = time.monotonic()
        if graceful and now >= graceful[0] + shutdown:
            ended.append("sigusr2")
        elif (ctl / "poweroff").exists():
            (ctl / "poweroff").unlink()
            ended.append("poweroff")
        elif now > give_up:
            ended.append("poweroff")
        else:
            until = min(give_up, graceful[0] + shutdown) if graceful else give_up
            select.select([wake], [], [], min(max(until - now, 0.0), RUN_IDLE_LOOK))
            try:
                os.read(wake, 4096)
            except BlockingIOError:
                pass
    with open(ctl / "endings.jsonl", "a") as f:
        f.write(json.dumps({"how": ended[0], "time": time.time()}) + "\n")
    # Every ending exits 0 (even the hard stop): only the record above tells them apart.


def cmd_push(args):
    """`tart push <local-name> <remote-names>...` (Tart's Sources/tart/Commands/Push.swift; not in reference/): the
    fake's registry is fake/pushed.jsonl, one line per pushed reference."""
    _, (name, *remotes) = parse(args, {"--insecure": None, "--concurrency": int, "--populate-cache": None}, 2,
                                variadic=True)
    if not (vm_dir(name) / "config.json").exists():
        raise missing(name)
    for remote in remotes:
        if "/" not in remote:
            raise Exit(64, f"Error: <remote-names> should be remote names, got {remote!r}")
    (home() / "fake").mkdir(exist_ok=True)
    with open(home() / "fake" / "pushed.jsonl", "a") as f:
        for remote in remotes:
            print(f"pushing {name} to {remote}...", flush=True)
            f.write(json.dumps({"vm": name, "remote": remote}) + "\n")


COMMANDS = {"list": cmd_list, "get": cmd_get, "clone": cmd_clone, "pull": cmd_pull, "set": cmd_set,
            "delete": cmd_delete, "rename": cmd_rename, "stop": cmd_stop, "ip": cmd_ip, "run": cmd_run,
            "push": cmd_push}


def record(entry: dict) -> None:
    fd = os.open(home() / "calls.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(entry) + "\n").encode())  # one write per line: lines from parallel calls never mix
    finally:
        os.close(fd)


def main(argv: list[str]) -> int:
    rc = 0
    try:
        record({"argv": argv, "pid": os.getpid(), "start": time.time(), "env": {"CI": os.environ.get("CI")}})
        if argv in (["--version"], ["-v"]):
            print(os.environ.get("FAKE_TART_VERSION", "2.32.1"))
            return 0
        if not argv or argv[0] not in COMMANDS:
            raise Exit(64, f"Error: Unexpected argument '{argv[0] if argv else ''}'")
        injected_failure(argv[0], argv[1:])
        COMMANDS[argv[0]](argv[1:])
    except Exit as exc:
        if exc.message:
            print(exc.message, file=sys.stderr)
        rc = exc.code
    finally:
        if os.environ.get("TART_HOME"):
            record({"pid": os.getpid(), "end": time.time(), "rc": rc})
    return rc


# ---- the test-side handle ------------------------------------------------------------------------------------

class FakeTart:
    """One fake tart home: installs the `tart` command, reads calls.jsonl, drives the test controls."""

    def __init__(self, root: Path):
        self.home = root / "tart-home"
        self.bin = root / "bin"
        self.home.mkdir(parents=True, exist_ok=True)
        self.bin.mkdir(parents=True, exist_ok=True)
        self.exe = self.bin / "tart"
        # A Python wrapper instead of a symlink: the same interpreter as the tests, no exec bit needed on this file;
        # -S skips site-packages and exec() skips runpy (faster start-up: the fake is stdlib only).
        source = str(Path(__file__).resolve())
        self.exe.write_text(f"#!{sys.executable} -S\n__file__ = {source!r}\n"
                            "exec(compile(open(__file__).read(), __file__, 'exec'))\n")
        self.exe.chmod(0o755)

    def env(self) -> dict[str, str]:
        return {"TART_HOME": str(self.home), "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
                "FAKE_TART_RUN_MAX": "300"}

    def tart(self, *args: str):
        """Call the fake directly (set-up and assertions); recorded in calls.jsonl like any other call."""
        import subprocess

        return subprocess.run([str(self.exe), *args], capture_output=True, text=True,
                              env={**os.environ, **self.env()}, timeout=60)

    # -- calls.jsonl
    def calls(self) -> list[dict]:
        """Every invocation in order of start: {"argv", "pid", "start", "end" (None while running), "rc", "env"}."""
        path = self.home / "calls.jsonl"
        out: list[dict] = []
        open_by_pid: dict[int, dict] = {}
        for line in path.read_text().splitlines() if path.exists() else []:
            entry = json.loads(line)
            if "argv" in entry:
                call = {**entry, "end": None, "rc": None}
                out.append(call)
                open_by_pid[entry["pid"]] = call
            elif entry["pid"] in open_by_pid:
                open_by_pid.pop(entry["pid"]).update(end=entry["end"], rc=entry["rc"])
        return out

    def argvs(self, since: int = 0) -> list[list[str]]:
        return [c["argv"] for c in self.calls()[since:]]

    def mark(self) -> int:
        """An index into calls(): `argvs(since=mark)` is what happened after this point."""
        return len(self.calls())

    # -- VMs
    def vm_dir(self, name: str) -> Path:
        return self.home / "vms" / name

    def exists(self, name: str) -> bool:
        return (self.vm_dir(name) / "config.json").exists()

    def config(self, name: str) -> dict:
        return read_json(self.vm_dir(name) / "config.json")  # written in place by `set`: a reader may catch it empty

    def disk_gb(self, name: str) -> int:
        return (self.vm_dir(name) / "disk.img").stat().st_size // GB

    def running_pid(self, name: str) -> int | None:
        return lock_holder(self.vm_dir(name) / "config.json")

    def vms(self) -> list[str]:
        path = self.home / "vms"
        return sorted(p.name for p in path.iterdir() if (p / "config.json").exists()) if path.exists() else []

    # -- test controls
    def _control(self, name: str) -> Path:
        path = self.home / "fake" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def poweroff(self, name: str) -> None:
        (self._control(name) / "poweroff").touch()
        pid = self.running_pid(name)
        if pid:
            try:
                os.kill(pid, signal.SIGWINCH)  # the run waits on signals: this makes it look at once
            except ProcessLookupError:
                pass

    def ignore_acpi(self, name: str) -> None:
        (self._control(name) / "ignore-acpi").touch()

    def new_ip_on_next_boot(self, name: str) -> None:
        (self._control(name) / "new-ip").touch()

    def swap_leases(self, a: str, b: str) -> None:
        """bootpd hands VM `a` the address `b` had and the other way round at their next boots (both stopped:
        leases are by MAC, and each lease was free while its VM was off)."""
        macs = [read_json(self.vm_dir(name) / "config.json")["macAddress"] for name in (a, b)]
        with flocked(self.home / "fake" / ".leases.lock"):
            path = self.home / "fake" / "leases.json"
            leases = read_json(path, {"next": 2, "leases": {}})
            held = leases["leases"]
            held[macs[0]], held[macs[1]] = held[macs[1]], held[macs[0]]
            write_in_place(path, leases)

    def endings(self, name: str) -> list[str]:
        """How each boot of the VM ended, oldest first."""
        path = self._control(name) / "endings.jsonl"
        return [json.loads(line)["how"] for line in path.read_text().splitlines()] if path.exists() else []

    def ended(self, name: str) -> str | None:
        """How the last boot ended (None: never ended)."""
        return (self.endings(name) or [None])[-1]

    def boots(self, name: str) -> int:
        path = self._control(name) / "run.json"
        return read_json_settled(path, {}).get("boots", 0)  # a `run` starting now rewrites it in place

    def kill_all(self) -> None:
        """Kill every `run` of this home (by the lock it holds, so nothing outside the test is touched)."""
        for name in self.vms():
            pid = self.running_pid(name)
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def wait_for(condition, timeout: float = 10.0, what: str = "condition"):
    """Poll `condition` until it is truthy (tests use this instead of sleeping)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(POLL)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


def vm_of(argv: list[str]) -> str | None:
    """The VM a tart call is about (None for list/pull/--version)."""
    if argv[0] == "clone":
        return argv[2]
    return argv[1] if argv[0] in ("get", "set", "run", "stop", "delete", "ip") else None


def max_overlap(intervals: Iterable[tuple[float, float]]) -> int:
    """The most intervals (start, end) open at one moment: how many calls really ran at once."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    best = now = 0
    for _, step in edges:
        now += step
        best = max(best, now)
    return best
