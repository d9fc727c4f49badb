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
"""

from __future__ import annotations

from dataclasses import dataclass

PEER_PORT = 2380
CLIENT_PORT = 2379


@dataclass(frozen=True)
class Member:
    name: str
    peer_url: str
    client_url: str

    @property
    def address(self) -> str:
        return self.peer_url.split("//", 1)[1].rsplit(":", 1)[0]


class SimEtcd:
    """One cluster's etcd membership (survives API server restarts; lost with the cluster, SimCluster.reset)."""

    def __init__(self) -> None:
        # replaced whole, never changed in place (so readers need no lock, and a snapshot of the disk can copy it)
        self.members: list[Member] = []

    def add(self, name: str, address: str) -> Member:
        """`member add` for the control plane `name` at `address` (init's first member, or a control-plane join)."""
        member = Member(name, f"https://{address}:{PEER_PORT}", f"https://{address}:{CLIENT_PORT}")
        self.members = [m for m in self.members if m.name != name] + [member]
        return member

    def names(self) -> list[str]:
        return [m.name for m in self.members]

    def update(self, name: str, address: str) -> None:
        """`member update <id> --peer-urls=https://<address>:2380`."""
        self.members = [Member(m.name, f"https://{address}:{PEER_PORT}", f"https://{address}:{CLIENT_PORT}")
                        if m.name == name else m for m in self.members]

    def remove(self, name: str) -> None:
        """`member remove <id>`."""
        self.members = [m for m in self.members if m.name != name]

    def alive(self, name: str, running: dict[str, str]) -> bool:
        """Member `name` runs and reaches the others (see `quorum`)."""
        member = next((m for m in self.members if m.name == name), None)
        return member is not None and name in running and (len(self.members) == 1 or running[name] == member.address)

    def quorum(self, running: dict[str, str]) -> bool:
        """Whether a majority of members runs: `running` is member name → the address its node is at now (only the
        members whose etcd static pod runs). With several members, one whose address is not its peer URL's is cut
        off from the others and does not count."""
        members = self.members
        if not members:
            return False
        return sum(self.alive(m.name, running) for m in members) >= len(members) // 2 + 1
