"""`labctl logs`: a node's journal, and (`--collect`) everything worth attaching to a bug report from every node.

Both run one node script (templates/node/logs.sh.j2, with sudo) over labctl's SSH transport: it gathers the logs
into a private tarball under /tmp and prints its path; labctl reads the tarball back (quietly: journals do not
belong in labctl's own node log) and removes it. What `--collect` writes, like kind's `export logs`:

    DIR/<cluster>/<node>/journal-kubelet.log, journal-containerd.log   journalctl -u <unit>
                         crictl-ps.txt                                  crictl ps -a
                         dmesg.txt                                      the kernel ring buffer's tail
                         pods/kube-system_<pod>_<uid>/<container>/N.log the kubelet's container logs (/var/log/pods)
                         labctl.log, console.log                        labctl's node log, the VM's console/run log
                         unreachable.txt                                why the node's own logs are missing

A node that is stopped or does not answer gets unreachable.txt (the local logs are still copied) and the others are
collected all the same. Every file is 0600 and redacted like labctl's own logs (labctl/redact.py).
"""

from __future__ import annotations

import contextlib
import io
import posixpath
import re
import shlex
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import CommandError, LabctlError, UsageError
from .redact import redact
from .remote.base import Script
from .state import private_opener, write_atomic

if TYPE_CHECKING:
    from .lab import LabSession
    from .remote.base import Transport

UNITS = ("kubelet", "containerd")
NAMESPACE = "kube-system"  # the static pods (kubeadm's control plane) and the CNI's
DMESG_LINES = 200
SCRIPT_TIMEOUT = 300.0  # seconds for the node to gather and pack; a journal since boot is seconds on a healthy node
UNREACHABLE = "unreachable.txt"
# systemd time spans (systemd.time(7) "PARSING TIME SPANS"): journalctl --since takes "-<span>" as "that long ago"
_SPAN = re.compile(r"(\d+(us|ms|s|sec|m|min|h|hr|d|w))+")
_TARBALL = re.compile(r"/tmp/labctl-logs\.[A-Za-z0-9]+\.tgz")  # what logs.sh.j2's mktemp makes


def since_argument(duration: str | None) -> str | None:
    """journalctl's --since value for a DURATION such as 30m, 2h or 1d12h (None: the whole journal). Raises
    UsageError naming the accepted units for anything else."""
    if duration is None:
        return None
    if not _SPAN.fullmatch(duration):
        raise UsageError(f"--since {duration!r}: not a duration",
                         hint="a number and a unit, e.g. 30s, 10m, 2h, 1d or 1h30m (units: s, m, h, d, w)")
    return f"-{duration}"


def logs_script(units: list[str], since: str | None, extras: bool) -> Script:
    """The node script: journals of `units` (since `since`, a journalctl --since value), and with `extras` the
    crictl listing, the dmesg tail and the kube-system pod logs."""
    from .render import script

    return script("logs.collect", "node/logs.sh.j2", units=list(units), since=since, extras=extras,
                  dmesg_lines=DMESG_LINES, namespace=NAMESPACE)


def gather(transport: Transport, units: list[str], since: str | None, extras: bool) -> dict[str, bytes]:
    """Run the logs script on the transport's node; returns {relative path: content} of what it gathered. Raises
    CommandError/TransportError when the node cannot run it or the connection fails."""
    result = transport.run(logs_script(units, since, extras), sudo=True, timeout=SCRIPT_TIMEOUT)
    lines = result.stdout.strip().splitlines()
    path = lines[-1].strip() if lines else ""
    if not _TARBALL.fullmatch(path):
        raise CommandError(transport.node, "logs.collect", result.rc, result.stdout + result.stderr,
                           reason="printed no tarball path")
    try:
        data = transport.get(path, sudo=True)
    finally:
        with contextlib.suppress(LabctlError):  # a connection lost meanwhile is already the error being raised
            transport.run(Script("logs.cleanup", f"rm -f -- {shlex.quote(path)}\n", {"path": path}), sudo=True,
                          check=False)
    return _members(transport.node, data)


def _members(node: str, data: bytes) -> dict[str, bytes]:
    """The regular files of a gzipped tarball, by relative path; a member outside the tarball's root is refused."""
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name = posixpath.normpath(member.name)
                if name.startswith(("/", "../")) or name == "..":
                    raise LabctlError(f"{node}: the logs tarball holds {member.name!r}, outside its root")
                reader = tar.extractfile(member)
                out[name] = reader.read() if reader is not None else b""
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise LabctlError(f"{node}: the logs tarball is damaged ({exc})", hint="run the command again") from None
    return out


def _text(data: bytes) -> bytes:
    return redact(data.decode(errors="replace")).encode()


def journal(lab: LabSession, name: str, unit: str, since: str | None) -> str:
    """The node's journal of `unit`, redacted. Raises UsageError (unknown node or unit), ProviderError (its VM is
    missing or stopped), TransportError/CommandError (it does not answer, the script failed)."""
    from .remote.login import running_node

    if unit not in UNITS:
        raise UsageError(f"--unit {unit!r}: use one of {', '.join(UNITS)}")
    ctx = lab.context(**_bounds())
    try:
        running_node(ctx, name)
        files = gather(ctx.transport(name), [unit], since, extras=False)
    finally:
        ctx.close()
    return redact(files.get(f"journal-{unit}.log", b"").decode(errors="replace"))


def _bounds() -> dict[str, float]:
    """Short SSH bounds, like status: a node that is down is reported in seconds, not after install's boot wait."""
    from .remote.ssh import PROBE_TIMEOUT

    return {"connect_timeout": PROBE_TIMEOUT, "answer_timeout": PROBE_TIMEOUT}


@dataclass
class Collected:
    cluster: str
    node: str
    files: list[str] = field(default_factory=list)  # relative to DIR/<cluster>/<node>
    error: str | None = None  # why the node's own logs are missing

    def as_dict(self) -> dict:
        return {"cluster": self.cluster, "node": self.node, "files": self.files, "error": self.error}


def collect(lab: LabSession, dest: Path, clusters: list[str] = (), nodes: list[str] = (),
            since: str | None = None, archive: bool = False) -> tuple[list[Collected], Path | None]:
    """Collect every chosen node's logs into `dest`/<cluster>/<node>/ (see the module docstring), nodes in
    parallel; returns one Collected per node (in clusters.json order) and the .tar.gz written beside `dest` when
    `archive`. Raises UsageError for an unknown cluster or node and for a `dest` that holds anything already (a
    stale file from an earlier collection must not pass for a new one)."""
    from .lab import chosen_clusters

    chosen = chosen_clusters(lab, list(clusters))
    known = {n.name for _, n in lab.model.nodes}
    unknown = [n for n in nodes if n not in known]
    if unknown:
        raise UsageError(f"--node {unknown[0]!r}: no such node in clusters.json", hint=f"the nodes are: "
                         f"{', '.join(sorted(known))}")
    targets = [(c.name, n.name) for c, n in lab.model.nodes if c.name in chosen and (not nodes or n.name in nodes)]
    if not targets:
        raise UsageError("--cluster and --node together choose no node")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UsageError(f"{dest} already exists and is not an empty directory",
                         hint="name a new directory: each collection goes into one of its own")
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    ctx = lab.context(**_bounds())
    try:
        with ThreadPoolExecutor(max_workers=min(8, len(targets)), thread_name_prefix="logs") as pool:
            results = list(pool.map(lambda t: _collect_node(ctx, dest, t[0], t[1], since), targets))
    finally:
        ctx.close()
    return results, (_archive(dest) if archive else None)


def _collect_node(ctx, dest: Path, cluster: str, name: str, since: str | None) -> Collected:
    from .remote.login import running_node

    done = Collected(cluster, name)
    folder = dest / cluster / name
    try:
        running_node(ctx, name)
        gathered = gather(ctx.transport(name), list(UNITS), since, extras=True)
    except LabctlError as exc:  # down, hung, refused: recorded, and the other nodes go on
        done.error = exc.message
        why = f"{name}: its logs could not be collected: {exc.message}\n" + (f"hint: {exc.hint}\n" if exc.hint else "")
        gathered = {UNREACHABLE: why.encode()}
    # labctl's own log of the node last: it then includes this collection's commands
    node = ctx.node(name)[1]
    own, console = ctx.state.node_log(name), ctx.provider.log_path(node)
    for local, as_name in ((own, "labctl.log"), *(() if console == own else ((console, "console.log"),))):
        with contextlib.suppress(FileNotFoundError):
            gathered[as_name] = local.read_bytes()
    for relative, data in sorted(gathered.items()):
        write_atomic(folder / relative, _text(data), 0o600)
        done.files.append(relative)
    return done


def _archive(dest: Path) -> Path:
    """`dest` packed as <dest>.tar.gz beside it (0600), its members under <dest's name>/."""
    target = dest.with_name(dest.name + ".tar.gz")
    with open(target, "wb", opener=private_opener) as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
        tar.add(dest, arcname=dest.name)
    return target
