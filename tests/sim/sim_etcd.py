"""A cluster's stacked etcd as the simulated lab models it: its members and whether they have quorum.

kubeadm's default topology ("stacked"): one etcd member per control plane, a static pod beside its API server.
`kubeadm init` makes the first member; `kubeadm join --control-plane` adds one (etcd `member add`, then the new
member starts and syncs; kubeadm does this one node at a time, reference/k8s-bootstrap.md §3). Each member is known
to the others by the peer URL it was added with, https://<advertise address>:2380, and serves clients at :2379.

Quorum (etcd docs, FAQ "What is failure tolerance?"): the cluster commits, and so the API servers on top of it
answer, only while a majority of the members, floor(n/2)+1, runs and reaches the others. A member whose node came
back at another address is not reached at its peer URL by the others (the URL is fixed at `member add`) until its
URL is updated (`etcdctl member update`); alone, a single member needs no peers (a one-member cluster's own
address repair, tests/sim/sim_cluster_scripts.py, keeps working). Membership changes (`member update`, `member
remove`) are raft proposals: they need quorum (etcd docs, "Runtime reconfiguration"); a removed member's etcd
stops, and with it the API server beside it (kube-apiserver talks to its local member only).

Disaster recovery (etcd docs, "Disaster recovery" / "--force-new-cluster"; the v2 admin guide's "Restoring a
cluster"): a member started once with `--force-new-cluster` keeps its data, its member id and the peer URL its data
records, and commits a membership of itself alone: every other member is removed. A node's /var/lib/etcd holds one
member's data (`SimNode.etcd_data`: that member's id, None when empty or moved aside). etcd refuses to start on the
data of a removed member ("the member has been permanently removed from the cluster"); a new member is added
(`member add`: listed unstarted, without a name, and counted for quorum at once) and starts with an empty data dir,
`--initial-cluster` naming every member and `--initial-cluster-state=existing` (etcd docs, "Runtime
reconfiguration", "Add a new member"); with data of its own that flag is ignored.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

PEER_PORT = 2380
CLIENT_PORT = 2379


@dataclass(frozen=True)
class Member:
    name: str
    peer_url: str
    client_url: str
    id: int = 0  # etcd's member id: new at every `member add` (a re-added member is another member)
    started: bool = True  # False between `member add` and the new member's first start (listed without a name)

    @property
    def address(self) -> str:
        return self.peer_url.split("//", 1)[1].rsplit(":", 1)[0]


class SimEtcd:
    """One cluster's etcd membership (survives API server restarts; lost with the cluster, SimCluster.reset)."""

    _ids = itertools.count(0x1000)

    def __init__(self) -> None:
        # replaced whole, never changed in place (so readers need no lock, and a snapshot of the disk can copy it)
        self.members: list[Member] = []
        self.removed: frozenset[int] = frozenset()  # ids of members removed: their data cannot start again

    def add(self, name: str, address: str, started: bool = True) -> Member:
        """`member add` for the control plane `name` at `address` (init's first member, or a control-plane join;
        `started=False`: `etcdctl member add`, the member starts later)."""
        member = Member(name, f"https://{address}:{PEER_PORT}", f"https://{address}:{CLIENT_PORT}",
                        next(self._ids), started)
        self.members = [m for m in self.members if m.name != name] + [member]
        return member

    def start(self, member_id: int) -> None:
        """An added member's first start: it is listed with its name from now on."""
        self.members = [replace(m, started=True) if m.id == member_id else m for m in self.members]

    def force_new_cluster(self, member_id: int) -> None:
        """`--force-new-cluster` on the member `member_id`: itself alone, its peer URL as its data records it."""
        self.removed |= {m.id for m in self.members if m.id != member_id}
        self.members = [m for m in self.members if m.id == member_id]

    def names(self) -> list[str]:
        return [m.name for m in self.members]

    def update(self, name: str, peer_url: str) -> None:
        """`member update <id> --peer-urls=<peer_url>`: the peer URL only (etcd's MemberUpdate changes the member's
        RaftAttributes; its client URLs are what it publishes itself when it starts: `publish`)."""
        self.members = [replace(m, peer_url=peer_url) if m.name == name else m for m in self.members]

    def publish(self, name: str, address: str) -> None:
        """A member that runs on `address` publishes its client URL there (etcd's publish of its attributes at
        start), if its record says otherwise."""
        url = f"https://{address}:{CLIENT_PORT}"
        if any(m.name == name and m.client_url != url for m in self.members):
            self.members = [replace(m, client_url=url) if m.name == name else m for m in self.members]

    def remove(self, name: str) -> None:
        """`member remove <id>`."""
        self.removed |= {m.id for m in self.members if m.name == name}
        self.members = [m for m in self.members if m.name != name]

    def alive(self, name: str, running: dict[str, str]) -> bool:
        """Member `name` runs and reaches the others (see `quorum`)."""
        member = next((m for m in self.members if m.name == name), None)
        return (member is not None and member.started and name in running
                and (len(self.members) == 1 or running[name] == member.address))

    def quorum(self, running: dict[str, str]) -> bool:
        """Whether a majority of members runs: `running` is member name → the address its node is at now (only the
        members whose etcd static pod runs). With several members, one whose address is not its peer URL's is cut
        off from the others and does not count."""
        members = self.members
        if not members:
            return False
        return sum(self.alive(m.name, running) for m in members) >= len(members) // 2 + 1
