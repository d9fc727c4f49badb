"""The sealed-secrets stack in the simulated lab, through the real CLI (reference/stacks.md phase 13's defect: the
predecessor applied its demo credentials as plain Secrets, on another cluster than the controller's).

The simulated controller (tests/sim/sim_stack_sealed_secrets.py) generates its own key pair and unseals with its
own decryption written from the Go source, so a SealedSecret labctl seals wrongly is never unsealed here either."""

from __future__ import annotations

import base64
import json

import pytest
import yaml

from tests.sim.fake_kube import FakeKube
from tests.sim.test_sim_e2e import labctl, summary_of
from tests.sim.test_sim_stacks import open_sim

pytestmark = pytest.mark.sim

DEMO_NS = "sealed-secrets-demo"
SS = ("apis/bitnami.com/v1alpha1", "sealedsecrets")
LAB = {"clusters": [
    {"name": "solo", "pod_cidr": "10.10.0.0/16", "service_cidr": "10.96.0.0/16", "stacks": ["sealed-secrets"],
     "nodes": [{"name": "solo-master", "role": "master", "cpu": 2, "memory": 4096},
               {"name": "solo-worker1", "role": "worker", "cpu": 2, "memory": 4096}]},
    {"name": "bare", "pod_cidr": "10.20.0.0/16", "service_cidr": "10.97.0.0/16",
     "nodes": [{"name": "bare-master", "role": "master", "cpu": 2, "memory": 4096}]}]}


@pytest.fixture
def bodies(monkeypatch):
    """Every request any simulated API server gets: (method, path, raw body)."""
    seen: list[tuple[str, str, bytes]] = []
    serve = FakeKube.serve

    def recording(self, method, path, query, headers, raw, *args, **kwargs):
        seen.append((method, path, raw))
        return serve(self, method, path, query, headers, raw, *args, **kwargs)

    monkeypatch.setattr(FakeKube, "serve", recording)
    return seen


def _decoded(secret: dict) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


def _secret_writes(bodies, namespace: str) -> list[tuple[str, str]]:
    return [(m, p) for m, p, _ in bodies if m in ("POST", "PUT", "PATCH")
            and p.startswith(f"/api/v1/namespaces/{namespace}/secrets")]


def test_demo_credentials_are_sealed_secrets_not_plain_secrets(lab_dir, fake_tart, bodies, tmp_path,
                                                               monkeypatch):
    debug_log = tmp_path / "state" / "debug.log"
    monkeypatch.setenv("LABCTL_DEBUG_LOG", str(debug_log))
    with open_sim(lab_dir, fake_tart, LAB) as sim:
        result = labctl("--json", "-vv", "install")
        assert result.code == 0, summary_of(result.out)["failed"]
        store = sim.clusters["solo"].store
        creds = json.loads((lab_dir / ".labctl" / "credentials.json").read_text())["solo"]
        db, api = creds["demo-db"], creds["demo-api"]

        # the controller made the Secrets, from SealedSecrets labctl applied; they hold the lab's values
        for name, want in (("demo-db-credentials", {"username": "demo", "password": db["password"]}),
                           ("demo-api-credentials", {"api-key": api["password"]})):
            sealed = store.get(*SS, name, DEMO_NS)
            assert sealed is not None and set(sealed["spec"]["encryptedData"]) == set(want)
            assert sealed["status"]["conditions"][0]["status"] == "True"
            secret = store.get("api/v1", "secrets", name, DEMO_NS)
            assert _decoded(secret) == want
            assert secret["metadata"]["ownerReferences"][0]["kind"] == "SealedSecret"
        # labctl never wrote a Secret there, and no request carried a demo value in any form
        assert _secret_writes(bodies, DEMO_NS) == []
        plain = [v for e in (db, api) for v in (e["password"], base64.b64encode(e["password"].encode()).decode())]
        assert not [p for _, p, raw in bodies for v in plain if v.encode() in raw]
        assert any(p.endswith("/sealedsecrets/demo-db-credentials") for m, p, _ in bodies if m == "PATCH")

        # `labctl credentials` shows them; no log, state file or output does
        shown = labctl("credentials", "--cluster", "solo", "sealed-secrets")
        assert shown.code == 0 and db["password"] in shown.out and api["password"] in shown.out
        texts = [result.out, result.err, debug_log.read_text(errors="replace")]
        texts += [p.read_text(errors="replace") for p in (lab_dir / ".labctl").rglob("*")
                  if p.is_file() and p.name != "credentials.json"]
        assert not [v for v in (db["password"], api["password"]) for t in texts if v in t]

        # a second install seals nothing again (sealing is randomized: it would change the SealedSecrets)
        before = {n: store.get(*SS, n, DEMO_NS)["metadata"]["resourceVersion"]
                  for n in ("demo-db-credentials", "demo-api-credentials")}
        mark = len(bodies)
        result = labctl("--json", "install")
        assert result.code == 0 and summary_of(result.out)["counts"]["changed"] == 0
        assert [p for m, p, _ in bodies[mark:] if m in ("POST", "PUT", "PATCH")] == []
        assert before == {n: store.get(*SS, n, DEMO_NS)["metadata"]["resourceVersion"] for n in before}

        # an unsealed Secret changed by hand is noticed and fixed by sealing again, never by writing the Secret
        secret = store.get("api/v1", "secrets", "demo-db-credentials", DEMO_NS)
        secret["data"]["password"] = base64.b64encode(b"tampered").decode()
        plan = labctl("plan")
        assert "does not hold them" in plan.out + plan.err
        mark = len(bodies)
        assert labctl("install").code == 0
        assert _decoded(store.get("api/v1", "secrets", "demo-db-credentials", DEMO_NS))["password"] == db["password"]
        assert _secret_writes(bodies[mark:], DEMO_NS) == []


def test_labctl_seal_output_is_unsealed_by_the_controller_and_only_where_it_was_sealed_for(
        lab_dir, fake_tart, tmp_path):
    with open_sim(lab_dir, fake_tart, LAB) as sim:
        cert = tmp_path / "tls.crt"
        cert.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot really\n")
        before = labctl("seal", "--cluster", "solo", "--namespace", "apps", "--name", "mine", "token=Tok3n-value")
        assert before.code == 1 and "no kubeconfig" in before.err  # not installed yet

        assert labctl("install").code == 0
        cluster = sim.clusters["solo"]
        store = cluster.store
        result = labctl("seal", "--cluster", "solo", "--namespace", "apps", "--name", "mine", "token=Tok3n-value",
                        "--from-file", f"tls.crt={cert}")
        assert result.code == 0, result.err
        assert "Tok3n-value" not in result.out + result.err and "not really" not in result.out
        sealed = yaml.safe_load(result.out)
        assert sealed["kind"] == "SealedSecret" and set(sealed["spec"]["encryptedData"]) == {"token", "tls.crt"}

        store.put("api/v1", "namespaces", {"metadata": {"name": "apps"}})
        store.put(*SS, json.loads(json.dumps(sealed)), "apps")
        moved = json.loads(json.dumps(sealed))
        moved["metadata"]["name"] = "elsewhere"  # strict scope: the label binds it to apps/mine
        store.put(*SS, moved, "apps")
        with cluster.lock:
            cluster.refresh()
        assert _decoded(store.get("api/v1", "secrets", "mine", "apps")) == {
            "token": "Tok3n-value", "tls.crt": cert.read_text()}
        assert store.get("api/v1", "secrets", "elsewhere", "apps") is None
        condition = store.get(*SS, "elsewhere", "apps")["status"]["conditions"][0]
        assert condition["status"] == "False" and "no key could decrypt secret" in condition["message"]

        # namespace-wide: any name in that namespace; --json prints JSON
        wide = labctl("--json", "seal", "--cluster", "solo", "--namespace", "apps", "--name", "one",
                      "--scope", "namespace-wide", "k=v4lue-wide")
        assert wide.code == 0, wide.err
        wide_obj = json.loads(wide.out)
        wide_obj["metadata"]["name"] = "two"
        store.put(*SS, wide_obj, "apps")
        with cluster.lock:
            cluster.refresh()
        assert _decoded(store.get("api/v1", "secrets", "two", "apps")) == {"k": "v4lue-wide"}

        # clear errors: a cluster without the stack, a controller that is not there, a bad argument
        bare = labctl("seal", "--cluster", "bare", "--namespace", "apps", "--name", "x", "k=v")
        assert bare.code == 2 and "does not declare the sealed-secrets stack" in bare.err
        bad = labctl("seal", "--cluster", "solo", "--namespace", "apps", "--name", "x", "s3cretNoEquals")
        assert bad.code == 2 and "not KEY=VALUE" in bad.err and "s3cretNoEquals" not in bad.err + bad.out
        store.delete("apis/apps/v1", "deployments", "sealed-secrets", "sealed-secrets")
        gone = labctl("seal", "--cluster", "solo", "--namespace", "apps", "--name", "x", "k=v")
        assert gone.code == 1 and "controller is not ready" in gone.err and "labctl install" in gone.err
