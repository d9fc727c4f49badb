"""What `etcdctl` answers on a simulated control plane: the node side of labctl's `etcd.status` script
(templates/cluster/etcd-status.sh.j2), from the cluster's SimEtcd (tests/sim/sim_etcd.py, its members and quorum).

Modelled on etcd's behaviour: `member list` is a linearizable request and fails without quorum ("context deadline
exceeded"); `endpoint health --cluster` dials every member at its recorded client URL, so a member whose node moved
(or is off) is unhealthy; `endpoint status` answers for each member reached, carrying the leader's id. The leader is
the first healthy member in join order (a real election may pick another; labctl only reads which one it is).
Member ids are SimEtcd's (a new one at every `member add`); a member added but not started yet is listed without a
name. The disaster recovery (`etcd.force-new-cluster`, `member add`) is modelled in tests/sim/sim_etcd.py.
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
            return cluster.etcd.alive(m.name, running)

        # `endpoint status/health --cluster` ask every member's client URL; whoever serves that address answers
        # (a member record whose URL another member publishes now is answered by that one)
        serving = {running[m.name]: m for m in members if healthy(m)}

        def at(url: str):
            return serving.get(url.split("//", 1)[1].rsplit(":", 1)[0])

        leader = next((m for m in members if healthy(m)), None)
        listed = {"header": {"member_id": self.etcd_data or 0},
                  "members": [{"ID": m.id, "name": m.name if m.started else "", "peerURLs": [m.peer_url],
                               "clientURLs": [m.client_url] if m.started else []} for m in members]}
        endpoints = list(dict.fromkeys(m.client_url for m in members if m.started))
        status = [{"Endpoint": url, "Status": {"header": {"member_id": at(url).id},
                                               "leader": leader.id if leader else 0}}
                  for url in endpoints if at(url)]
        health = [{"endpoint": url, "health": True, "took": "1.1ms"} if at(url) else
                  {"endpoint": url, "health": False, "error": f"health check failed: {DEADLINE}"}
                  for url in endpoints]
        lines += [f"members={json.dumps(listed)}", f"status={json.dumps(status)}", f"health={json.dumps(health)}"]
        return 0, "\n".join(lines)

    def _etcd_member_change(self: SimNode, p) -> tuple[int, str, object] | tuple[int, str, None]:
        """What `etcdctl member update|remove` checks before it changes anything: this node's etcd runs, the member
        id is known, and the cluster has quorum (a membership change is a raft proposal)."""
        cluster = self.lab.clusters[self.cluster]
        running = cluster._etcd_running()
        if self.name not in running:
            return 3, "no running etcd container on this node", None
        member = next((m for m in cluster.etcd.members if format(m.id, "x") == p.get("member_id")), None)
        if not cluster.etcd.quorum(running):
            return 1, f"Error: {DEADLINE}", None
        if member is None and p["action"] != "add":
            return 1, f"Error: etcdserver: member not found (id {p['member_id']})", None
        return 0, "", member

    def _etcd_member_update(self: SimNode, p, address):
        rc, out, member = self._etcd_member_change(p)
        if member is None:
            return rc, out
        cluster = self.lab.clusters[self.cluster]
        if any(m.peer_url == p["peer_url"] for m in cluster.etcd.members if m is not member):
            return 1, "Error: etcdserver: Peer URLs already exists"
        cluster.etcd.update(member.name, p["peer_url"])
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

    def _etcd_member_add(self: SimNode, p, address):
        """`etcdctl member add <name> --peer-urls=<url>`: a raft proposal (quorum), refused for a peer URL in use;
        the new member counts for quorum at once and is listed unstarted until its etcd starts (sim_cluster.py)."""
        rc, out, _ = self._etcd_member_change(p)
        if rc:
            return rc, out
        cluster = self.lab.clusters[self.cluster]
        if any(m.peer_url == p["peer_url"] for m in cluster.etcd.members):
            return 1, "Error: etcdserver: Peer URLs already exists"
        member = cluster.etcd.add(p["member"], p["peer_url"].split("//", 1)[1].rsplit(":", 1)[0], started=False)
        cluster.etcd_event(f"member add {p['member']}")
        return 0, f"Member {member.id:x} added to cluster {member_id(cluster.name):x}"

    def _etcd_force_new_cluster(self: SimNode, p, address):
        """templates/cluster/etcd-force-new-cluster.sh.j2: nothing when this member has quorum; otherwise its etcd
        restarts with --force-new-cluster (it must start: files at its address, data of a member) and the cluster
        is this member alone, its peer URL as its data has it (SimEtcd.force_new_cluster)."""
        cluster = self.lab.clusters[self.cluster]
        if self.advertised is None:
            return 3, f"{p['etcd_manifest']} is missing: no etcd static pod on this node"
        running = cluster._etcd_running()
        if self.name in running and cluster.etcd.quorum(running):
            return 0, "etcd on this node has quorum: nothing forced"
        alone = cluster._etcd_running_alone(self)
        if not alone:
            return 1, (f"etcd did not come up as a one-member cluster within {p['wait_seconds']} s; look at "
                       "`crictl ps -a --name etcd`")
        cluster.etcd.force_new_cluster(self.etcd_data)
        cluster.etcd_event(f"force-new-cluster {self.name}")
        cluster.sync()
        return 0, "etcd runs as a one-member cluster from its own data; restarting it without --force-new-cluster"
