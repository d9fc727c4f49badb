"""A fake `qemu-system-x86_64` and `qemu-img` for tests: stdlib Python behind two launchers on PATH, recording every
call as JSON lines.

They follow the real tools where labctl relies on them: `qemu-img info --output=json`, `create -b -F`, `convert -O qcow2` (flattening), `resize`
refusing to shrink; `qemu-system-* -daemonize` returning once the VM runs, writing -pidfile, binding the forwarded
ports like slirp (every hostfwd, failing on a taken one), answering QMP on the socket and removing its pidfile when it
exits; without -daemonize (the KVM probe) printing "Linux version" on the console, unless FAKE_QEMU_KVM=hang
(nothing) or abort (exit 134 on an MSR); with a NIC on a bridge, a DHCP lease for its MAC appended to FAKE_QEMU_LEASES (dnsmasq's format) 0.3 s after start.
Images are small JSON files ({"format", "virtual-size"}), not disk images.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

SCRIPT = r'''
import json, os, signal, socket, sys, time

LOG = os.environ["FAKE_QEMU_LOG"]
tool = sys.argv[1]  # the launcher names the tool it stands for
args = sys.argv[2:]

def record(**entry):
    with open(LOG, "a") as f:
        f.write(json.dumps(entry) + "\n")

record(tool=tool, argv=args)

def fail(message, rc=1):
    sys.stderr.write(message + "\n")
    sys.exit(rc)

def read_image(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        fail(f"qemu-img: Could not open '{path}': Could not open '{path}': No such file or directory")

if tool == "qemu-img":
    command, rest = args[0], args[1:]
    if command == "info":
        assert rest[:2] == ["--output=json", "-U"], rest
        image = read_image(rest[2])
        out = {"filename": rest[2], "format": image["format"], "virtual-size": image["virtual-size"]}
        if image.get("backing"):
            out.update({"backing-filename": image["backing"], "backing-filename-format": image["backing-format"]})
        print(json.dumps(out))
    elif command == "create":
        opts = dict(zip(rest[0:-1:2], rest[1:-1:2]))
        assert opts["-f"] == "qcow2" and "-F" in opts, rest
        base = read_image(opts["-b"])
        assert base["format"] == opts["-F"], "backing format mismatch"
        with open(rest[-1], "w") as f:
            json.dump({"format": "qcow2", "virtual-size": base["virtual-size"], "backing": opts["-b"],
                       "backing-format": opts["-F"]}, f)
    elif command == "convert":  # `convert -O qcow2 SRC DST`: one standalone image, the backing chain flattened
        assert rest[:2] == ["-O", "qcow2"], rest
        image = read_image(rest[2])
        with open(rest[3], "w") as f:
            json.dump({"format": "qcow2", "virtual-size": image["virtual-size"]}, f)
    elif command == "resize":
        path, size = rest[-2], rest[-1]
        image = read_image(path)
        want = int(size[:-1]) * 1024**3
        if want < image["virtual-size"] and "--shrink" not in rest:
            fail("qemu-img: Use the --shrink option to perform a shrink operation.")
        image["virtual-size"] = want
        with open(path, "w") as f:
            json.dump(image, f)
        print("Image resized.")
    sys.exit(0)

# ---- qemu-system-x86_64 ------------------------------------------------------------------------------------------
if args == ["--version"]:
    print("QEMU emulator version 7.2.22 (fake)\nCopyright (c) 2003-2022 Fabrice Bellard and the QEMU Project")
    sys.exit(0)

def value(flag):
    return args[args.index(flag) + 1] if flag in args else None

def chardev(kind):
    for i, a in enumerate(args):
        if a == "-chardev" and args[i + 1].startswith(kind + ","):
            opts = {}
            for part in args[i + 1].replace(",,", "\0").split(",")[1:]:
                key, _, val = part.partition("=")
                opts[key] = val.replace("\0", ",")
            return opts
    return {}

accel = value("-accel")
console = chardev("file").get("path")
if os.environ.get("FAKE_QEMU_FAIL"):
    fail(os.environ["FAKE_QEMU_FAIL"])

if "-daemonize" not in args:  # the accelerator probe
    kvm = os.environ.get("FAKE_QEMU_KVM", "ok")
    if accel == "kvm" and kvm == "abort":
        fail("qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69", 134)
    if not (accel == "kvm" and kvm == "hang"):
        with open(console, "ab") as f:
            f.write(b"[    0.000000] Linux version 6.1.0-fake\n")
    while True:  # a guest that does not stop by itself; the probe kills it
        time.sleep(1)

# -daemonize: set up, then tell the waiting parent, then serve QMP until powered down.
pidfile = value("-pidfile")
qmp_path = chardev("socket")["path"]
netdev = value("-netdev")
# every hostfwd=tcp:127.0.0.1:HOST-:GUEST of the user NIC (SSH first; network lab adds the API and NodePorts)
forwards = [(int(f.split(":")[2].split("-")[0]), f.rsplit(":", 1)[1])
            for f in netdev.split(",") if f.startswith("hostfwd=tcp:127.0.0.1:")]
read_end, write_end = os.pipe()
if os.fork():
    os.close(write_end)
    status = os.read(read_end, 4096).decode()
    if status != "ok":
        fail(status)
    sys.exit(0)
os.close(read_end)
os.setsid()
listeners = []
for port, guest in forwards:  # like slirp: every forward is bound at start, and one taken port fails the start
    try:
        fwd = socket.socket()
        fwd.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        fwd.bind(("127.0.0.1", port))
        fwd.listen()
        listeners.append(fwd)
    except OSError:
        os.write(write_end, f"qemu-system-x86_64: -netdev {netdev}: Could not set up host forwarding rule "
                            f"'tcp:127.0.0.1:{port}-:{guest}'".encode())
        sys.exit(1)
server = socket.socket(socket.AF_UNIX)
server.bind(qmp_path)
server.listen()
server.settimeout(0.05)
with open(pidfile, "w") as f:
    f.write(f"{os.getpid()}\n")
with open(console, "ab") as f:
    f.write(b"[    0.000000] Linux version 6.1.0-fake\nDebian GNU/Linux 12 labctl-base ttyS0\n")
vmdir = os.path.dirname(pidfile)
os.write(write_end, b"ok")
os.close(write_end)
devnull = os.open(os.devnull, os.O_RDWR)
for fd in (0, 1, 2):
    os.dup2(devnull, fd)

def shutdown(how):
    record(tool="fake", event="exit", how=how, vm=os.path.basename(vmdir))
    os.unlink(pidfile)  # QEMU removes its pidfile when it exits
    os.unlink(qmp_path)
    os._exit(0)

# network bridge: the DHCP server leases the lab NIC an address a moment after boot (FAKE_QEMU_LEASES: its file)
lab_mac = next((a.rsplit("mac=", 1)[1] for a in args if a.startswith("virtio-net-pci,netdev=lab,")), None)
lease_at = time.monotonic() + 0.3 if lab_mac and os.environ.get("FAKE_QEMU_LEASES") else None

powering_down = None
while True:
    if lease_at and time.monotonic() > lease_at:
        with open(os.environ["FAKE_QEMU_LEASES"], "a") as f:
            address = f"10.213.0.{int(lab_mac[-2:], 16)}"
            f.write(f"{int(time.time()) + 3600} {lab_mac} {address} {os.path.basename(vmdir)} *\n")
        lease_at = None
    if os.path.exists(os.path.join(vmdir, "fake-guest-poweroff")):
        shutdown("guest")
    if powering_down and time.monotonic() > powering_down:
        shutdown("powerdown")
    try:
        conn, _ = server.accept()
    except socket.timeout:
        continue
    conn.settimeout(5)
    stream = conn.makefile("rwb")
    stream.write(b'{"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 22}}, "capabilities": []}}\r\n')
    stream.flush()
    quit_now = False
    for line in stream:
        execute = json.loads(line)["execute"]
        record(tool="qmp", vm=os.path.basename(vmdir), execute=execute)
        if execute == "system_powerdown":
            if not os.path.exists(os.path.join(vmdir, "fake-ignore-acpi")):
                powering_down = time.monotonic() + 0.2
            stream.write(b'{"return": {}}\r\n{"event": "POWERDOWN", "timestamp": {"seconds": 1}}\r\n')
        elif execute == "quit":
            stream.write(b'{"return": {}}\r\n')
            quit_now = True
        elif execute == "qmp_capabilities":
            stream.write(b'{"return": {}}\r\n')
        else:
            stream.write(b'{"error": {"class": "CommandNotFound", "desc": "The command %s has not been found"}}\r\n'
                         % execute.encode())
        stream.flush()
    conn.close()
    if quit_now:
        shutdown("quit")
'''


class FakeQemu:
    """The fake tools on PATH and what they were asked."""

    def __init__(self, tmp_path: Path):
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        self.log = tmp_path / "qemu-calls.jsonl"
        self.log.touch()
        script = self.bin / "fake_qemu.py"
        script.write_text(SCRIPT)
        for tool in ("qemu-system-x86_64", "qemu-img"):
            launcher = self.bin / tool
            # -S -E: stdlib only, no site or environment start-up work (the provider calls qemu-img a lot)
            launcher.write_text(f"#!/bin/sh\nexec {sys.executable} -S -E {script} {tool} \"$@\"\n")
            launcher.chmod(0o755)

    def env(self) -> dict[str, str]:
        return {"PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}", "FAKE_QEMU_LOG": str(self.log)}

    def entries(self, mark: int = 0) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines()[mark:]]

    def mark(self) -> int:
        return len(self.log.read_text().splitlines())

    def argvs(self, mark: int = 0, tool: str | None = None) -> list[list[str]]:
        return [[e["tool"], *e["argv"]] for e in self.entries(mark)
                if "argv" in e and (tool is None or e["tool"] == tool)]

    def qmp(self, mark: int = 0) -> list[str]:
        return [e["execute"] for e in self.entries(mark) if e["tool"] == "qmp"]

    def exits(self) -> list[tuple[str, str]]:
        return [(e["vm"], e["how"]) for e in self.entries() if e.get("event") == "exit"]

    @staticmethod
    def kill_all(under: Path) -> None:
        """No fake VM outlives its test, nor its QMP socket (which may live outside `under`: long paths)."""
        for pidfile in under.glob("**/qemu.pid"):
            try:
                os.kill(int(pidfile.read_text()), 9)
            except (OSError, ValueError):
                pass
        for run in under.glob("**/run.json"):
            Path(json.loads(run.read_text())["qmp"]).unlink(missing_ok=True)
