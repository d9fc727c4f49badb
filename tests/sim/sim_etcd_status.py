"""What `etcdctl` answers on a simulated control plane: the node side of labctl's `etcd.status` script
(templates/cluster/etcd-status.sh.j2), from the cluster's SimEtcd (tests/sim/sim_etcd.py, its members and quorum).

Modelled on etcd's behaviour: `member list` is a linearizable request and fails without quorum ("context deadline
exceeded"); `endpoint health --cluster` dials every member at its recorded client URL, so a member whose node moved
(or is off) is unhealthy; `endpoint status` answers for each member reached, carrying the leader's id. The leader is
the first healthy member in join order (a real election may pick another; labctl only reads which one it is).
Member ids are stable per name (etcd derives them from the peer URLs and cluster token: any stable id will do).
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.sim.sim_node import SimNode

DEADLINE = "context deadline exceeded"


def member_id(name: str) -> int:
    return int(hashlib.sha256(name.encode()).hexdigest()[:15], 16)


class EtcdStatusNode:
    """Mixed into SimNode."""

    def _etcd_status(self: SimNode, p, address):
        cluster = self.lab.clusters[self.cluster]
        lines = [f"advertised={self.advertised}"] if self.advertised else []
        running = cluster._etcd_running()
        if self.name not in running:
            return 3, "\n".join([*lines, "no running etcd container on this node"])
        members = list(cluster.etcd.members)
        if not cluster.etcd.quorum(running):
            lines.append(f"members_error=Error: {DEADLINE}")
            local = {"endpoint": "https://127.0.0.1:2379", "health": False,
                     "error": f"health check failed: {DEADLINE}"}
            lines.append("health=" + json.dumps([local]))
            return 0, "\n".join(lines)

        def healthy(m) -> bool:
            return m.name in running and (len(members) == 1 or running[m.name] == m.address)

        leader = next((m for m in members if healthy(m)), None)
        listed = {"header": {"member_id": member_id(self.name)},
                  "members": [{"ID": member_id(m.name), "name": m.name, "peerURLs": [m.peer_url],
                               "clientURLs": [m.client_url]} for m in members]}
        status = [{"Endpoint": m.client_url, "Status": {"header": {"member_id": member_id(m.name)},
                                                       "leader": member_id(leader.name) if leader else 0}}
                  for m in members if healthy(m)]
        health = [{"endpoint": m.client_url, "health": True, "took": "1.1ms"} if healthy(m) else
                  {"endpoint": m.client_url, "health": False, "error": f"health check failed: {DEADLINE}"}
                  for m in members]
        lines += [f"members={json.dumps(listed)}", f"status={json.dumps(status)}", f"health={json.dumps(health)}"]
        return 0, "\n".join(lines)

    def _etcd_member_change(self: SimNode, p) -> tuple[int, str, object] | tuple[int, str, None]:
        """What `etcdctl member update|remove` checks before it changes anything: this node's etcd runs, the member
        id is known, and the cluster has quorum (a membership change is a raft proposal)."""
        cluster = self.lab.clusters[self.cluster]
        running = cluster._etcd_running()
        if self.name not in running:
            return 3, "no running etcd container on this node", None
        member = next((m for m in cluster.etcd.members if format(member_id(m.name), "x") == p["member_id"]), None)
        if not cluster.etcd.quorum(running):
            return 1, f"Error: {DEADLINE}", None
        if member is None:
            return 1, f"Error: etcdserver: member not found (id {p['member_id']})", None
        return 0, "", member

    def _etcd_member_update(self: SimNode, p, address):
        rc, out, member = self._etcd_member_change(p)
        if member is None:
            return rc, out
        cluster = self.lab.clusters[self.cluster]
        if any(m.peer_url == p["peer_url"] for m in cluster.etcd.members if m is not member):
            return 1, "Error: etcdserver: Peer URLs already exists"
        new = p["peer_url"].split("//", 1)[1].rsplit(":", 1)[0]
        cluster.etcd.update(member.name, new)
        cluster.etcd_event(f"member update {member.name}")
        return 0, f"Member {p['member_id']} updated in cluster {member_id(cluster.name):x}"

    def _etcd_member_remove(self: SimNode, p, address):
        rc, out, member = self._etcd_member_change(p)
        if member is None:
            return rc, out
        cluster = self.lab.clusters[self.cluster]
        cluster.etcd.remove(member.name)
        cluster.etcd_event(f"member remove {member.name}")
        return 0, f"Member {p['member_id']} removed from cluster {member_id(cluster.name):x}"
