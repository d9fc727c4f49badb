"""shutdown --drain / boot through the real kubernetes client against the fake API server; kubeconfig export."""

from __future__ import annotations

import yaml

from labctl.kube import kubeconfig
from labctl.kube.client import DRAINED, Kube
from labctl.state import LabState
from tests.sim.fake_kube import FakeKube


def _pod(name, node, owner=None, mirror=False, phase="Running"):
    meta = {"name": name, "namespace": "default"}
    if owner:
        meta["ownerReferences"] = [{"kind": owner, "name": "x", "apiVersion": "apps/v1", "uid": "1"}]
    if mirror:
        meta["annotations"] = {"kubernetes.io/config.mirror": "abc"}
    return {"metadata": meta, "spec": {"nodeName": node}, "status": {"phase": phase}}


def test_drain_evicts_what_kubectl_drain_would_and_undrain_undoes_only_that(tmp_path):
    kube_server = FakeKube().start()
    try:
        store = kube_server.store
        for node in ("w1", "w2"):
            store.put("api/v1", "nodes", {"metadata": {"name": node}, "spec": {}})
        for pod in (_pod("web-1", "w1", "ReplicaSet"), _pod("web-2", "w1"), _pod("cilium-x", "w1", "DaemonSet"),
                    _pod("static", "w1", mirror=True), _pod("done", "w1", phase="Succeeded"),
                    _pod("other", "w2", "ReplicaSet")):
            store.put("api/v1", "pods", pod, "default")
        path = tmp_path / "kc.yaml"
        path.write_text(yaml.safe_dump(kube_server.kubeconfig("dev")))
        kube = Kube("dev", path, request_timeout=5)

        assert kube.drain("w1", timeout=10) == 2
        left = sorted(p["metadata"]["name"] for p in store.list("api/v1", "pods"))
        assert left == ["cilium-x", "done", "other", "static"]
        w1 = kube.node("w1")
        assert w1.unschedulable and w1.annotations[DRAINED] == "true"

        kube.cordon("w2")  # cordoned by hand: boot must leave it alone
        assert kube.undrain("w1") is True and kube.undrain("w2") is False
        assert not kube.node("w1").unschedulable and DRAINED not in kube.node("w1").annotations
        assert kube.node("w2").unschedulable
    finally:
        kube_server.stop()


def _config(cluster, server):
    name = kubeconfig.context_name(cluster)
    return {"apiVersion": "v1", "kind": "Config", "current-context": name,
            "clusters": [{"name": name, "cluster": {"server": server}}],
            "users": [{"name": name, "user": {"token": "t"}}],
            "contexts": [{"name": name, "context": {"cluster": name, "user": name}}]}


def test_export_merges_only_labctl_contexts_into_the_users_kubeconfig(tmp_path):
    state = LabState(tmp_path / ".labctl")
    kubeconfig.write(state, "dev", _config("dev", "https://127.0.0.2:6443"))
    kubeconfig.write(state, "prod", _config("prod", "https://127.0.0.3:6443"))
    user = tmp_path / "home" / "config"
    user.parent.mkdir()
    user.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Config", "current-context": "work",
                                    "clusters": [{"name": "work", "cluster": {"server": "https://work"}}],
                                    "users": [{"name": "work", "user": {}}],
                                    "contexts": [{"name": "work", "context": {"cluster": "work", "user": "work"}}]}))
    assert kubeconfig.export(state, ["dev", "prod"], str(user), tmp_path) == [("labctl-dev", user),
                                                                               ("labctl-prod", user)]
    merged = yaml.safe_load(user.read_text())
    assert [c["name"] for c in merged["contexts"]] == ["work", "labctl-dev", "labctl-prod"]
    assert merged["current-context"] == "work"
    assert user.stat().st_mode & 0o777 == 0o600
    # a recreated dev (new address) replaces only its own entries
    kubeconfig.write(state, "dev", _config("dev", "https://127.0.0.9:6443"))
    kubeconfig.export(state, ["dev"], str(user), tmp_path)
    merged = yaml.safe_load(user.read_text())
    servers = {c["name"]: c["cluster"]["server"] for c in merged["clusters"]}
    assert servers == {"work": "https://work", "labctl-dev": "https://127.0.0.9:6443",
                       "labctl-prod": "https://127.0.0.3:6443"}
