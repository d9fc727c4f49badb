"""etcd as a master's etcdctl reports it (labctl/etcd.py), and the order HA day-to-day commands take the nodes in."""

from __future__ import annotations

import json

from labctl import etcd
from tests.unit.test_cluster_phases import ha_lab

IDS = {"m1": 10276657743932975437, "m2": 2436502932432937364, "m3": 14535195937546201042}
URL = {"m1": "192.168.64.11", "m2": "192.168.64.12", "m3": "192.168.64.13"}


def _member_list() -> str:
    # etcdctl -w json prints the clientv3 response as Go's encoding/json does: IDs as numbers, `name`, `peerURLs`,
    # `clientURLs` (etcd-io/etcd etcdserverpb.Member json tags)
    return json.dumps({"header": {"cluster_id": 1, "member_id": IDS["m1"], "raft_term": 3}, "members": [
        {"ID": IDS[n], "name": n, "peerURLs": [f"https://{URL[n]}:2380"], "clientURLs": [f"https://{URL[n]}:2379"]}
        for n in ("m1", "m2", "m3")]})


def _output(healthy: set[str], leader: str) -> str:
    status = [{"Endpoint": f"https://{URL[n]}:2379", "Status": {"header": {"member_id": IDS[n]}, "version": "3.6.5",
                                                               "leader": IDS[leader], "raftTerm": 3}}
              for n in sorted(healthy)]
    health = [{"endpoint": f"https://{URL[n]}:2379", "health": True, "took": "2.1ms"} if n in healthy else
              {"endpoint": f"https://{URL[n]}:2379", "health": False, "took": "2s",
               "error": "health check failed: context deadline exceeded"} for n in ("m1", "m2", "m3")]
    return "\n".join([f"advertised={URL['m1']}", f"members={_member_list()}", f"status={json.dumps(status)}",
                      f"health={json.dumps(health)}"])


def test_all_members_healthy_with_their_leader():
    view = etcd.parse("m1", _output({"m1", "m2", "m3"}, "m2"))
    assert [(m.name, m.address, m.healthy, m.leader) for m in view.members] == [
        ("m1", URL["m1"], True, False), ("m2", URL["m2"], True, True), ("m3", URL["m3"], True, False)]
    assert view.quorum and view.leader == "m2" and view.advertised == URL["m1"]
    assert view.describe() == "3/3 members healthy, leader m2"


def test_one_member_down_keeps_quorum_and_says_which():
    view = etcd.parse("m2", _output({"m2", "m3"}, "m3"))
    assert view.quorum and view.leader == "m3"
    [down] = [m for m in view.members if not m.healthy]
    assert down.name == "m1" and "context deadline exceeded" in down.error
    assert view.as_dict()["members"][0]["healthy"] is False


def test_two_members_down_is_no_quorum():
    assert not etcd.parse("m3", _output({"m3"}, "m3")).quorum


def test_member_list_refused_without_quorum():
    text = "\n".join(["advertised=192.168.64.13", "members_error=Error: context deadline exceeded",
                      'health=[{"endpoint":"https://127.0.0.1:2379","health":false,"error":"deadline"}]'])
    view = etcd.parse("m3", text)
    assert not view.quorum and view.members == [] and view.leader is None
    assert "no quorum" in view.describe() and "context deadline exceeded" in view.describe()


def test_shutdown_stops_workers_then_masters_one_at_a_time_first_last():
    from phases.shutdown import phase

    lab = ha_lab()
    waves = [[n.name for n in wave] for wave in phase.waves(lab.cluster("ha"))]
    assert waves == [["ha-w1", "ha-w2"], ["ha-m3"], ["ha-m2"], ["ha-m1"]]
    assert [[n.name for n in wave] for wave in phase.waves(lab.cluster("solo"))] == [[], ["solo-m"]]


def test_removal_problem_refuses_a_removal_that_would_lose_quorum():
    from labctl.etcd import EtcdView, Member, removal_problem

    def view(*health: bool) -> EtcdView:
        return EtcdView("m1", members=[Member(f"m{i + 1}", f"https://10.0.0.{i + 1}:2380", "", healthy=h)
                                       for i, h in enumerate(health)])

    assert removal_problem(view(True, True, True), "m3") is None  # 3 → 2, both left healthy
    assert removal_problem(view(True, True, True, True, True), "m1") is None
    # 5 members, two down: removing a healthy one leaves 2 healthy of 4, etcd needs 3
    problem = removal_problem(view(True, True, True, False, False), "m3")
    assert problem and "2 of the 4 members left would be healthy" in problem and "etcd needs 3" in problem
    # removing one of the down members keeps quorum: 3 healthy of 4
    assert removal_problem(view(True, True, True, False, False), "m5") is None
    assert "only etcd member" in removal_problem(view(True), "m1")


def test_a_client_url_that_answers_as_another_member_is_not_that_members_health():
    # m3's record still names the address m2 has now (they swapped addresses; m3 not repaired yet): etcdctl asks
    # that URL and m2 answers there, healthy, with m2's member id
    text = _output({"m1", "m2", "m3"}, "m1").replace(URL["m3"], URL["m2"])
    status = json.loads(text.split("status=", 1)[1].split("\n", 1)[0])
    for entry in status:  # whoever serves the URL answers: m2 for both
        if entry["Endpoint"] == f"https://{URL['m2']}:2379":
            entry["Status"]["header"]["member_id"] = IDS["m2"]
    text = "\n".join(f"status={json.dumps(status)}" if line.startswith("status=") else line
                     for line in text.splitlines())
    view = etcd.parse("m1", text)
    health = {m.name: (m.healthy, m.error) for m in view.members}
    assert health["m2"] == (True, "") and health["m1"] == (True, "")
    assert health["m3"] == (False, f"https://{URL['m2']}:2379 answers as another member")
