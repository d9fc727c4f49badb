"""A cluster's stacked etcd as its control planes see it: members, leader, health per member, quorum.

Asked over SSH on a control plane (templates/cluster/etcd-status.sh.j2: `etcdctl` inside the node's own etcd
container), read-only. Used by `status` (the etcd panel of an HA cluster) and by `boot` (workers start once etcd
has quorum again). Quorum: etcd commits, and so the API servers answer, only while a majority of its members,
floor(n/2)+1, is healthy (etcd docs, FAQ "What is failure tolerance?").
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import LabctlError, StepError
from .render import script

if TYPE_CHECKING:
    from .model import Cluster

ETCD_MANIFEST = "/etc/kubernetes/manifests/etcd.yaml"
ETCD_PKI = "/etc/kubernetes/pki/etcd"
COMMAND_TIMEOUT = "2s"  # etcdctl's own bound per request: a member that does not answer costs this, once
QUORUM_TIMEOUT = 300.0  # seconds boot waits for quorum (the control planes' static pods start after the VMs boot)
EXIT_NO_ETCD = 3  # the script: no running etcd container on this node


@dataclass
class Member:
    name: str
    peer_url: str
    client_url: str
    healthy: bool = False
    leader: bool = False
    error: str = ""

    @property
    def address(self) -> str:
        """The host part of the peer URL (https://<address>:2380): where the other members reach this one."""
        return self.peer_url.split("//", 1)[-1].rsplit(":", 1)[0]


@dataclass
class EtcdView:
    """What one control plane's etcdctl said. `members` is empty when the member list could not be read (no
    quorum: `error` says why); `asked` is the control plane that answered."""

    asked: str
    advertised: str | None = None
    members: list[Member] = field(default_factory=list)
    error: str = ""
    local_healthy: bool = False

    @property
    def leader(self) -> str | None:
        return next((m.name for m in self.members if m.leader), None)

    @property
    def quorum(self) -> bool:
        return bool(self.members) and sum(m.healthy for m in self.members) >= len(self.members) // 2 + 1

    def describe(self) -> str:
        if not self.members:
            return f"no quorum ({self.error or 'the member list is not readable'}), asked on {self.asked}"
        healthy = sum(m.healthy for m in self.members)
        return (f"{healthy}/{len(self.members)} members healthy, leader {self.leader or 'none'}"
                + ("" if self.quorum else ", no quorum"))

    def as_dict(self) -> dict[str, Any]:
        return {"asked": self.asked, "quorum": self.quorum, "leader": self.leader, "error": self.error,
                "members": [asdict(m) for m in self.members]}


def status_script():
    return script("etcd.status", "cluster/etcd-status.sh.j2", etcd_manifest=ETCD_MANIFEST, etcd_pki=ETCD_PKI,
                  command_timeout=COMMAND_TIMEOUT)


def _json(text: str) -> Any:
    try:
        return json.loads(text) if text.strip() else None
    except ValueError:
        return None


def parse(asked: str, text: str) -> EtcdView:
    """The script's `key=value` lines → EtcdView. etcdctl's JSON (`-w json`): member list {"members": [{"ID",
    "name", "peerURLs", "clientURLs"}]}; endpoint status [{"Endpoint", "Status": {"header": {"member_id"},
    "leader"}}]; endpoint health [{"endpoint", "health", "error"}] (etcd-io/etcd etcdctl/ctlv3/command/printer_json.go)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key in ("advertised", "members", "status", "health", "members_error"):
            values.setdefault(key, value)
    view = EtcdView(asked, advertised=values.get("advertised") or None, error=values.get("members_error", ""))
    health = {h.get("endpoint"): h for h in _json(values.get("health", "")) or [] if isinstance(h, dict)}
    view.local_healthy = any(h.get("health") is True for h in health.values())
    listed = (_json(values.get("members", "")) or {}).get("members") or []
    statuses = [s for s in _json(values.get("status", "")) or [] if isinstance(s, dict)]
    leader_ids = {(s.get("Status") or {}).get("leader") for s in statuses} - {None, 0}
    for m in listed:
        client = (m.get("clientURLs") or [""])[0]
        h = health.get(client) or {}
        view.members.append(Member(
            name=m.get("name") or f"(unstarted {m.get('ID')})", peer_url=(m.get("peerURLs") or [""])[0],
            client_url=client, healthy=h.get("health") is True,
            leader=m.get("ID") in leader_ids, error=str(h.get("error") or ("" if h else "no answer"))))
    return view


def _run(ctx, master, timeout: float):
    return ctx.transport(master.name).run(status_script(), sudo=True, timeout=timeout, check=False)


def ask(ctx, cluster: Cluster, timeout: float = 30, masters: list | None = None) -> EtcdView:
    """The etcd view of the first control plane whose etcd runs and answers (in clusters.json order; `masters`: only
    these, e.g. those whose VM runs). `timeout`: seconds per SSH command. Raises LabctlError naming each control
    plane's reason when none does."""
    reasons = []
    for master in cluster.masters if masters is None else masters:
        try:
            result = _run(ctx, master, timeout)
        except LabctlError as exc:
            reasons.append(f"{master.name}: {exc.message.splitlines()[0]}")
            continue
        if result.ok:
            return parse(master.name, result.stdout)
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or [f"exit {result.rc}"]
        reasons.append(f"{master.name}: {tail[0]}")
    raise LabctlError(f"{cluster.name}: no control plane's etcd answered ({'; '.join(reasons) or 'none runs'})")


def moved(ctx, cluster: Cluster, timeout: float = 30) -> list[str]:
    """Control planes whose etcd advertises another address than the node has now (DHCP after a reboot): the other
    members cannot reach them at their peer URL until the addresses step updates the member (reference/
    k8s-bootstrap.md §4). Each one's own manifest is read, so this works without quorum."""
    out = []
    for master in cluster.masters:
        try:
            now = ctx.address(master)
            advertised = parse(master.name, _run(ctx, master, timeout).stdout).advertised if now else None
        except LabctlError:
            continue  # not reachable now: nothing to tell
        if advertised and now and advertised != now:
            out.append(f"{master.name} ({advertised} → {now})")
    return out


def wait_for_quorum(ctx, cluster: Cluster, timeout: float = QUORUM_TIMEOUT, interval: float = 3.0) -> str:
    """Wait until etcd has quorum (boot: before the workers start). Returns what it saw. Returns at once, saying
    so, when a master came back at another address (its member cannot rejoin until the `addresses` step updates
    it; `ready` waits for the cluster after that). Raises StepError after `timeout` seconds with the last view."""
    deadline = time.monotonic() + timeout
    checked_moves = False
    while True:
        try:
            view = ask(ctx, cluster)
            detail = view.describe()
            if view.quorum:
                return f"etcd: {detail}"
        except LabctlError as exc:
            detail = exc.message.splitlines()[0]
        if not checked_moves:  # once: addresses do not change while the VMs run
            checked_moves = True
            if gone := moved(ctx, cluster):
                return f"etcd: {detail}; {', '.join(gone)} moved: the addresses step updates them"
        if time.monotonic() >= deadline:
            raise StepError(f"{cluster.name}: etcd has no quorum after {timeout:.0f} s: {detail}",
                            hint="`labctl status` shows each member; a majority of the control planes must run")
        time.sleep(interval)
