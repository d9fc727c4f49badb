"""The fake API server answers the real kubernetes client the way labctl uses it (HTTP and TLS)."""

from __future__ import annotations

import pytest
import yaml

from tests.sim.fake_kube import FakeKube


def client_for(kube: FakeKube, tmp_path):
    from kubernetes import client, config

    path = tmp_path / "kubeconfig.yaml"
    path.write_text(yaml.safe_dump(kube.kubeconfig()))
    return client.CoreV1Api(config.new_client_from_config(str(path)))


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_real_client_reads_and_patches_nodes(tmp_path, tls):
    kube = FakeKube(tls_sans=["127.0.0.1"] if tls else None, workdir=tmp_path / "pki").start()
    try:
        kube.store.put("api/v1", "nodes", {"metadata": {"name": "dev-master", "labels": {"a": "1"}},
                                           "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
        core = client_for(kube, tmp_path)
        nodes = core.list_node().items
        assert [n.metadata.name for n in nodes] == ["dev-master"]
        assert nodes[0].status.conditions[0].status == "True"
        core.patch_node("dev-master", {"metadata": {"labels": {"b": "2"}}, "spec": {"unschedulable": True}})
        stored = kube.store.get("api/v1", "nodes", "dev-master")
        assert stored["metadata"]["labels"] == {"a": "1", "b": "2"} and stored["spec"]["unschedulable"] is True
        from kubernetes.client.exceptions import ApiException

        with pytest.raises(ApiException) as info:
            core.read_namespaced_secret("nope", "kube-system")
        assert info.value.status == 404
    finally:
        kube.stop()


def test_tls_refuses_a_certificate_without_the_address(tmp_path):
    """What the simulated lab relies on to test IP drift: the cert does not name 127.0.0.1, so TLS must fail."""
    from urllib3.exceptions import MaxRetryError

    kube = FakeKube(tls_sans=["192.0.2.10"], workdir=tmp_path / "pki").start()
    try:
        core = client_for(kube, tmp_path)
        core.api_client.configuration.retries = 0
        with pytest.raises(MaxRetryError):
            core.list_node(_request_timeout=5)
    finally:
        kube.stop()
