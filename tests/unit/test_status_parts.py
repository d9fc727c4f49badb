"""The parts of status/smoke that need no lab: the SSH probe, the smoke verdict, the JUnit document."""

from __future__ import annotations

import socket
import threading
import xml.etree.ElementTree as ET

from labctl.status import ClusterStatus, NodeStatus, Probe, junit_xml, smoke_checks, ssh_banner


def _listener(reply: bytes):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def serve():
        conn, _ = server.accept()
        conn.sendall(reply)
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return server


def test_ssh_banner_probe():
    server = _listener(b"SSH-2.0-OpenSSH_9.6p1 Ubuntu\r\n")
    assert ssh_banner("127.0.0.1", server.getsockname()[1], 2) == Probe(True, "SSH-2.0-OpenSSH_9.6p1 Ubuntu")
    server.close()
    server = _listener(b"HTTP/1.1 400 Bad Request\r\n")
    assert not ssh_banner("127.0.0.1", server.getsockname()[1], 2).ok
    port = server.getsockname()[1]
    server.close()
    refused = ssh_banner("127.0.0.1", port, 2)
    assert not refused.ok and "no SSH at 127.0.0.1" in refused.detail


def _cluster(name, ready=True, dns=True, stack_skipped=True):
    node = NodeStatus("n1", "master", "running", "127.0.0.5", Probe(True, "SSH-2.0"),
                      Probe(ready, "Ready" if ready else "NotReady KubeletNotReady"))
    return ClusterStatus(name, [node], Probe(True, "1 nodes registered"), Probe(True, "cilium ok"),
                         Probe(dns, "coredns 2/2" if dns else "Deployment kube-system/coredns: 0/2 ready"),
                         {"istio": Probe(False, "cannot install it yet", skipped=stack_skipped)})


def test_health_and_smoke_verdict():
    good, bad = _cluster("dev"), _cluster("prod", ready=False, dns=False)
    assert good.healthy and not bad.healthy
    assert not _cluster("qa", stack_skipped=False).healthy  # a declared stack that is not ready counts
    checks = smoke_checks([good, bad])
    failed = {(c.cluster, c.name) for c in checks if not c.ok and not c.skipped}
    assert failed == {("prod", "nodes-ready"), ("prod", "coredns-available")}
    nodes = next(c for c in checks if c.cluster == "prod" and c.name == "nodes-ready")
    assert nodes.detail == "0/1 Ready; n1: NotReady KubeletNotReady"


def test_junit_names_the_failing_check():
    xml = junit_xml(smoke_checks([_cluster("dev"), _cluster("prod", dns=False)]), 1.5)
    root = ET.fromstring(xml)
    assert root.tag == "testsuites" and root.get("failures") == "1" and root.get("tests") == "10"
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert set(suites) == {"dev", "prod"}
    failing = [c for c in suites["prod"].findall("testcase") if c.find("failure") is not None]
    assert [c.get("name") for c in failing] == ["coredns-available"]
    assert "0/2 ready" in failing[0].find("failure").get("message")
    assert suites["dev"].find("testcase[@name='stack-istio']/skipped") is not None


def test_pods_not_ready_and_recent_warnings_read_as_kubectl_shows_them():
    from labctl.status import pods_not_ready, recent_warnings

    def pod(name, phase, ready, waiting=None):
        status = {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
        if waiting:
            status["containerStatuses"] = [{"name": "c", "state": {"waiting": {"reason": waiting}}}]
        return {"metadata": {"namespace": "demo", "name": name}, "status": status}

    pods = [pod("ok", "Running", True), pod("done", "Succeeded", False), pod("crash", "Running", False, "CrashLoopBackOff"),
            pod("new", "Pending", False)]
    assert pods_not_ready(pods) == ["demo/crash: Running (CrashLoopBackOff)", "demo/new: Pending"]
    events = [{"type": "Normal", "reason": "Pulled", "lastTimestamp": "2026-01-01T00:00:03Z"},
              *({"type": "Warning", "reason": f"R{i}", "message": "m", "metadata": {"namespace": "demo"},
                 "involvedObject": {"kind": "Pod", "name": "p"}, "lastTimestamp": f"2026-01-01T00:00:{i:02d}Z"}
                for i in (5, 1, 9))]
    assert recent_warnings(events, limit=2) == ["2026-01-01T00:00:05Z demo/Pod/p: R5: m",
                                                "2026-01-01T00:00:09Z demo/Pod/p: R9: m"]
