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
PEER_PORT = 2380  # kubeadm's etcd peer port: peer URLs are https://<advertise address>:2380
MEMBER_TIMEOUT = "5s"  # etcdctl's bound for one membership change (a raft proposal, committed by a majority)
ETCD_DATA = "/var/lib/etcd"  # kubeadm's etcd data dir (ClusterConfiguration etcd.local.dataDir default)
FORCE_WAIT = 240  # seconds the recovery script waits for the kubelet to restart etcd with --force-new-cluster


@dataclass
class Member:
    name: str
    peer_url: str
    client_url: str
    healthy: bool = False
    leader: bool = False
    error: str = ""
    id: int = 0  # etcd's member id (a uint64; etcdctl takes it in hex: `hex_id`)
    started: bool = True  # False between `member add` and the member's first start (etcd lists it without a name)

    @property
    def hex_id(self) -> str:
        return format(self.id, "x")

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
    # which member answered at each client URL: a record whose URL another member publishes now (two masters that
    # swapped addresses, until both are repaired) is answered by that member, and is not this one's health
    answered_as = {s.get("Endpoint"): ((s.get("Status") or {}).get("header") or {}).get("member_id")
                   for s in statuses}
    for m in listed:
        client = (m.get("clientURLs") or [""])[0]
        h = health.get(client) or {}
        other = answered_as.get(client) not in (None, m.get("ID"))
        view.members.append(Member(
            name=m.get("name") or f"(unstarted {m.get('ID')})", peer_url=(m.get("peerURLs") or [""])[0],
            client_url=client, healthy=h.get("health") is True and not other,
            leader=m.get("ID") in leader_ids,
            error=f"{client} answers as another member" if other else str(h.get("error") or ("" if h else "no answer")),
            id=int(m.get("ID") or 0), started=bool(m.get("name"))))
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


# ---- membership changes (address repair, removing a master) ------------------------------------------------------

def peer_url(address: str) -> str:
    """The peer URL kubeadm gives a member: https://<advertise address>:2380."""
    return f"https://{address}:{PEER_PORT}"


def member_script(cluster: Cluster, action: str, member: Member, new_peer_url: str = ""):
    """templates/cluster/etcd-member.sh.j2: `etcdctl member update|remove|add` of `member` (add: its name and
    `new_peer_url`), run on another member."""
    return script(f"etcd.member-{action}", "cluster/etcd-member.sh.j2", cluster=cluster.name, action=action,
                  member_id=member.hex_id, member=member.name, peer_url=new_peer_url, etcd_pki=ETCD_PKI,
                  command_timeout=MEMBER_TIMEOUT)


def with_quorum(ctx, cluster: Cluster, exclude: tuple[str, ...] = (), timeout: float = 30) -> EtcdView:
    """The view of the first control plane (clusters.json order, those in `exclude` left out) whose etcd has quorum:
    where a membership change can be asked. Raises StepError naming each control plane's answer when none has."""
    reasons = []
    for master in cluster.masters:
        if master.name in exclude:
            continue
        try:
            view = ask(ctx, cluster, timeout, masters=[master])
        except LabctlError as exc:
            reasons.append(exc.message.split(": ", 1)[-1])
            continue
        if view.quorum:
            return view
        reasons.append(f"{master.name}: {view.describe()}")
    raise StepError(f"{cluster.name}: no etcd member with quorum to change the membership on "
                    f"({'; '.join(reasons) or 'no other control plane'})",
                    hint="a majority of the control planes must run; `labctl status` shows each member")


def update_peer(ctx, cluster: Cluster, node: str, address: str) -> str | None:
    """Make the other members reach control plane `node` at `address` (etcd docs, "Update advertise peer URLs":
    `member update` first, then the member restarts with the new URL in its own files). Asked on another member with
    quorum. Returns what changed, or None when the member's peer URL is already that one (a second run)."""
    view = with_quorum(ctx, cluster, exclude=(node,))
    member = next((m for m in view.members if m.name == node), None)
    if member is None:
        raise StepError(f"{node}: is not an etcd member of {cluster.name} (members: "
                        f"{', '.join(m.name for m in view.members)})",
                        hint=f"`labctl status` shows the members; a master that lost its member has to be joined "
                        f"again (`kubectl delete node {node}`, then `labctl install`)")
    want = peer_url(address)
    if member.peer_url == want:
        return None
    done = []
    holder = next((m for m in view.members if m.peer_url == want and m.name != node), None)
    if holder is not None:
        # Two masters swapped addresses: `holder` moved too (no two machines have one address now), and etcd refuses
        # a peer URL another member has ("Peer URLs already exists"). Its record goes aside first, to a URL no
        # member has (this address, the next port); its own repair, later in this run, gives it its new address.
        aside = f"https://{address}:{PEER_PORT + 1}"
        ctx.transport(view.asked).run(member_script(cluster, "update", holder, aside), sudo=True, timeout=60)
        done.append(f"{holder.name}: etcd peer URL {want} → {aside} (aside: {node} has that address now)")
    ctx.transport(view.asked).run(member_script(cluster, "update", member, want), sudo=True, timeout=60)
    return "; ".join([*done, f"{node}: etcd peer URL {member.peer_url} → {want} (member update on {view.asked})"])


def wait_healthy(ctx, cluster: Cluster, node: str, timeout: float = QUORUM_TIMEOUT, interval: float = 3.0) -> str:
    """Wait until member `node` is healthy as a member with quorum sees it (after its kubelet restarted etcd with
    new files). Returns the view's summary; raises StepError after `timeout` seconds with the last one."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            view = with_quorum(ctx, cluster)
            detail = view.describe()
            if any(m.name == node and m.healthy for m in view.members):
                return f"etcd: {detail}"
        except StepError as exc:
            detail = exc.message
        if time.monotonic() >= deadline:
            raise StepError(f"{node}: its etcd member is not healthy {timeout:.0f} s after the repair: {detail}",
                            hint=f"look at the etcd container on {node} (`sudo crictl ps -a --name etcd`, "
                            "`sudo crictl logs <id>`) and `journalctl -u kubelet`")
        time.sleep(interval)


def removal_problem(view: EtcdView, node: str) -> str | None:
    """Why removing member `node` now would cost quorum, or None. After the removal the members left must still
    have a majority healthy (etcd docs, "Runtime reconfiguration": changes need a majority; it is unsafe to remove
    from a cluster that cannot spare the member)."""
    rest = [m for m in view.members if m.name != node]
    healthy = sum(m.healthy for m in rest)
    if not rest:
        return f"{node} is the only etcd member"
    if healthy < len(rest) // 2 + 1:
        down = ", ".join(m.name for m in rest if not m.healthy)
        return (f"after removing {node}, {healthy} of the {len(rest)} members left would be healthy (unhealthy: "
                f"{down}); etcd needs {len(rest) // 2 + 1}")
    return None


def remove_member(ctx, cluster: Cluster, node: str) -> str | None:
    """`member remove` of control plane `node`, asked on another member with quorum, only when the members left
    keep quorum (`removal_problem`). Returns what changed, or None when `node` is no member (any more).
    Raises StepError saying why otherwise."""
    view = with_quorum(ctx, cluster, exclude=(node,))
    member = next((m for m in view.members if m.name == node), None)
    if member is None:
        return None
    if problem := removal_problem(view, node):
        raise StepError(f"{cluster.name}: not removing the etcd member of {node}: {problem}",
                        hint="start the stopped control planes (`labctl boot`) and run `labctl install --prune` "
                        "again")
    ctx.transport(view.asked).run(member_script(cluster, "remove", member), sudo=True, timeout=60)
    return f"{node}: etcd member removed (on {view.asked}; {len(view.members) - 1} left)"


# ---- recovery when a majority of the members moved at once (docs/ha.md) ------------------------------------------

def force_script(cluster: Cluster, node: str):
    return script("etcd.force-new-cluster", "cluster/etcd-force-new-cluster.sh.j2", cluster=cluster.name, node=node,
                  etcd_manifest=ETCD_MANIFEST, etcd_pki=ETCD_PKI, command_timeout=COMMAND_TIMEOUT,
                  wait_seconds=FORCE_WAIT)


def force_new_cluster(ctx, cluster: Cluster, node: str, address: str) -> list[str]:
    """Make control plane `node` (the first master, its files already repaired for `address`) a one-member etcd
    cluster from its own data (etcd docs, "Disaster recovery", `--force-new-cluster`: the data and the member stay,
    every other member is dropped), then give its member the peer URL https://<address>:2380 when the forced member
    kept the old one (it keeps what its data records). Asks etcd first: raises StepError, forcing nothing, when any
    member has quorum by now (then the ordinary one-member-at-a-time repair applies: run again). Returns what
    changed, one line per action."""
    try:
        view = with_quorum(ctx, cluster)
    except StepError:
        view = None
    if view is not None:
        raise StepError(f"{cluster.name}: etcd has quorum again ({view.describe()}): not forcing a new cluster",
                        hint="run the same command again: the members are then repaired one at a time")
    master = next(m for m in cluster.masters if m.name == node)
    out = ctx.transport(node).run(force_script(cluster, node), sudo=True, timeout=FORCE_WAIT + 60).stdout.strip()
    done = [f"{node}: {out.splitlines()[-1] if out else 'etcd forced to a one-member cluster'}"]
    view = ask(ctx, cluster, masters=[master])
    member = next((m for m in view.members if m.name == node), None)
    if member is None or not view.quorum:
        raise StepError(f"{node}: etcd after --force-new-cluster: {view.describe()}",
                        hint=f"look at the etcd container on {node} (`sudo crictl ps -a --name etcd`)")
    want = peer_url(address)
    if member.peer_url != want:  # a one-member cluster has quorum on its own: the update is asked on the member
        ctx.transport(node).run(member_script(cluster, "update", member, want), sudo=True, timeout=60)
        done.append(f"{node}: etcd peer URL {member.peer_url} → {want} (member update on {node})")
    return done


def add_member(ctx, cluster: Cluster, node: str, address: str) -> tuple[str | None, str]:
    """`member add <node> --peer-urls=https://<address>:2380` on another member with quorum, unless a member with
    that peer URL is listed already (a run stopped after the add). Returns (what changed or None, the
    --initial-cluster the new member starts with: every member now, itself included; etcd docs, "Runtime
    reconfiguration", "Add a new member"). Raises StepError when no member has quorum."""
    view = with_quorum(ctx, cluster, exclude=(node,))
    want = peer_url(address)
    done = None
    if not any(m.peer_url == want for m in view.members):
        ctx.transport(view.asked).run(member_script(cluster, "add", Member(node, want, ""), want), sudo=True,
                                      timeout=60)
        done = f"{node}: etcd member added at {want} (member add on {view.asked})"
    others = [f"{m.name}={m.peer_url}" for m in view.members if m.peer_url != want and m.started]
    return done, ",".join([*others, f"{node}={want}"])
