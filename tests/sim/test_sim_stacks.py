"""Stacks in the simulated lab, through the real CLI: the shipped lab with its part-1 stacks installs and a second
install changes nothing; a changed value re-runs one stack; a failing stack stops only what needs it; user chart and
manifests stacks install; `install --prune` removes a dropped stack; no generated password reaches a log, the state,
or any output. The simulated Helm creates each release's record and the chart's ready-objects (tests/sim/sim_helm.py)
and the simulated kubelets ask for serving certificates that only labctl's approval issues (sim_certificates.py)."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from labctl import stacks
from tests.conftest import SHIPPED
from tests.sim.sim_lab import SimLab
from tests.sim.test_sim_e2e import events, labctl, summary_of

pytestmark = pytest.mark.sim

SHIPPED_LAB = json.loads(SHIPPED.read_text())
NODE_STEPS = 58  # the shipped lab's steps without stacks (see test_sim_e2e.STEPS)


def stack_steps(raw: dict) -> set[str]:
    """The `stacks:<cluster>/<stack>` steps the lab asks for: every installable stack."""
    out = set()
    for cluster in raw["clusters"]:
        for entry in cluster.get("stacks", []):
            name = entry if isinstance(entry, str) else entry["name"]
            if name in stacks.catalogue() or (isinstance(entry, dict) and ("chart" in entry or "manifests" in entry)):
                out.add(f"stacks:{cluster['name']}/{name}")
    return out


def results(out: str) -> dict[str, str]:
    return {e["step"]: e["status"] for e in events(out) if e.get("event") == "result"}


def helm_installs(sim: SimLab, mark: int) -> list[tuple[str, str]]:
    return [(c.node, c.params["release"]) for c in sim.calls[mark:] if c.script == "stacks.helm-install"]


def applies(sim: SimLab) -> int:
    """Server-side applies the API servers have seen (PATCH with fieldManager), all clusters."""
    return sum(1 for c in sim.clusters.values() for method, path in c.store.requests if method == "PATCH"
               and "/nodes/" not in path)


def open_sim(lab_dir: Path, fake_tart, raw: dict) -> SimLab:
    config = lab_dir / "clusters.json"
    config.write_text(json.dumps(raw, indent=2))
    return SimLab(config, fake_tart)


@pytest.mark.slow
def test_the_shipped_lab_installs_with_its_stacks_and_a_second_install_changes_nothing(lab_dir, fake_tart):
    wanted = stack_steps(SHIPPED_LAB)
    assert {"stacks:platform/monitoring", "stacks:platform/alerting", "stacks:platform/argocd",
            "stacks:platform/jenkins", "stacks:platform/storage", "stacks:dev/hpa-demo"} <= wanted
    with open_sim(lab_dir, fake_tart, SHIPPED_LAB) as sim:
        result = labctl("--json", "-v", "install")
        summary = summary_of(result.out)
        assert result.code == 0, summary["failed"]
        assert summary["counts"]["changed"] == NODE_STEPS + len(wanted)
        assert {s for s, status in results(result.out).items() if s.startswith("stacks:")} == wanted
        releases = sim.releases("platform")
        for name in ("storage", "metrics-server", "monitoring", "alerting", "argocd", "jenkins"):
            for r in stacks.catalogue()[name].releases:
                key = f"{r.namespace or stacks.catalogue()[name].namespace}/{r.release}"
                assert releases[key]["version"] == r.version and releases[key]["status"] == "deployed", key
        # storage before anything with a PVC; monitoring before alerting; both before the PrometheusRule applies
        order = [s for s in (e.get("step") for e in events(result.out) if e.get("event") == "start") if s]
        assert order.index("stacks:platform/storage") < order.index("stacks:platform/monitoring")
        assert order.index("stacks:platform/monitoring") < order.index("stacks:platform/alerting")
        # metrics-server is ready only once every kubelet has a serving certificate labctl approved
        for cluster in ("platform", "dev", "staging", "prod"):
            assert all(sim.serving_certificates(cluster).values()), cluster

        # -- no password anywhere but credentials.json (0600) and `labctl credentials`
        state = lab_dir / ".labctl"
        creds = json.loads((state / "credentials.json").read_text())
        assert oct((state / "credentials.json").stat().st_mode & 0o777) == "0o600"
        passwords = [e["password"] for c in creds.values() for e in c.values()]
        assert {"grafana", "argocd", "jenkins"} <= set(creds["platform"]) and len(passwords) >= 5
        texts = [result.out, result.err]
        texts += [p.read_text(errors="replace") for p in state.rglob("*") if p.is_file()
                  and p.name != "credentials.json"]
        debug_log = Path(os.environ.get("LABCTL_DEBUG_LOG", Path.home() / ".local/state/labctl/debug.log"))
        if debug_log.exists():
            texts.append(debug_log.read_text(errors="replace"))
        for node in sim.nodes.values():  # values files on the control planes hold no password either
            texts += [v.decode(errors="replace") for k, v in node.files.items() if k.startswith("/etc/labctl/")]
        for password in passwords:
            assert not any(password in text for text in texts)
        shown = labctl("credentials", "--cluster", "platform", "monitoring")
        assert shown.code == 0 and creds["platform"]["grafana"]["password"] in shown.out
        assert creds["platform"]["argocd"]["password"] not in shown.out

        # -- status: each stack healthy, with its URL on a worker; smoke: one testcase per stack
        report = json.loads(labctl("--json", "status", "--timeout", "3").out)
        platform = next(c for c in report["clusters"] if c["name"] == "platform")
        assert report["healthy"], [(c["name"], c["stacks"]) for c in report["clusters"]]
        assert platform["stacks"]["monitoring"]["ok"] and "kube-prometheus-stack 88.5.3" in \
            platform["stacks"]["monitoring"]["detail"]
        assert platform["stacks"]["registry"]["ok"]  # the multi-arch registry instead of Harbor (amd64-only)
        worker = sim.address("platform-worker1")
        assert platform["urls"]["grafana"] == f"http://{worker}:30300/"
        assert platform["urls"]["argocd"] == f"http://{worker}:30800/"
        junit = lab_dir / "smoke.xml"
        assert labctl("smoke", "--junit", str(junit)).code == 0
        cases = {(s.get("name"), c.get("name")): c for s in ET.parse(junit).getroot() for c in s}
        for step in wanted:
            cluster, name = step.removeprefix("stacks:").split("/")
            case = cases[(cluster, f"stack-{name}")]
            assert case.find("failure") is None and case.find("skipped") is None, step

        # -- a second install: nothing changes, no helm upgrade, no apply
        mark, patches = len(sim.calls), applies(sim)
        result = labctl("--json", "install")
        assert result.code == 0 and summary_of(result.out)["counts"]["changed"] == 0
        assert helm_installs(sim, mark) == [] and applies(sim) == patches


def test_a_changed_value_reruns_exactly_that_stack_and_a_failing_stack_stops_only_what_needs_it(lab_dir, fake_tart):
    raw = {"clusters": [
        {"name": "alpha", "pod_cidr": "10.10.0.0/16", "service_cidr": "10.96.0.0/16",
         "stacks": ["metrics-server", "hpa-demo"],
         "nodes": [{"name": "alpha-master", "role": "master", "cpu": 2, "memory": 4096},
                   {"name": "alpha-worker1", "role": "worker", "cpu": 4, "memory": 8192}]},
        {"name": "beta", "pod_cidr": "10.20.0.0/16", "service_cidr": "10.97.0.0/16", "stacks": ["metrics-server"],
         "nodes": [{"name": "beta-master", "role": "master", "cpu": 2, "memory": 4096},
                   {"name": "beta-worker1", "role": "worker", "cpu": 2, "memory": 4096}]}]}
    with open_sim(lab_dir, fake_tart, raw) as sim:
        sim.fail("stacks.helm-install", node="alpha-master", rc=1, output="Error: context deadline exceeded")
        result = labctl("--json", "install")
        status = results(result.out)
        assert result.code == 1
        assert status["stacks:alpha/metrics-server"] == "failed" and status["stacks:alpha/hpa-demo"] == "blocked"
        assert status["stacks:beta/metrics-server"] == "changed"
        assert all(s in ("changed",) for step, s in status.items() if not step.startswith("stacks:alpha"))
        failed = summary_of(result.out)["failed"]
        assert any("context deadline exceeded" in json.dumps(f) for f in failed)

        sim.clear_failures()
        result = labctl("--json", "install")
        assert result.code == 0
        assert {s for s, v in results(result.out).items() if v == "changed"} == {"stacks:alpha/metrics-server",
                                                                               "stacks:alpha/hpa-demo"}

        # one value changed in clusters.json: that stack's release is upgraded, nothing else runs
        raw["clusters"][1]["stacks"] = [{"name": "metrics-server", "values": {"resources": {"requests":
                                                                                            {"cpu": "150m"}}}}]
        (lab_dir / "clusters.json").write_text(json.dumps(raw))
        mark = len(sim.calls)
        plan = labctl("--json", "plan")
        assert "stacks:beta/metrics-server" in plan.out
        result = labctl("--json", "install")
        assert result.code == 0
        assert {s for s, v in results(result.out).items() if v == "changed"} == {"stacks:beta/metrics-server"}
        assert helm_installs(sim, mark) == [("beta-master", "metrics-server")]
        assert sim.releases("beta")["kube-system/metrics-server"]["revision"] == 2


def test_user_chart_and_manifests_stacks_install_and_prune_removes_a_dropped_stack(lab_dir, fake_tart):
    demo = lab_dir / "manifests" / "demo"
    demo.mkdir(parents=True)
    (demo / "app.yaml").write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: hello}\nspec:\n  selector: {matchLabels: {app: hello}}\n"
        "  template:\n    metadata: {labels: {app: hello}}\n    spec:\n      containers:\n"
        "        - {name: hello, image: 'nginx:1.30.4-alpine'}\n"
        "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: hello-config}\ndata: {greeting: hi}\n")
    # the usual layout: a Deployment in its own namespace, whose Namespace object sorts after it
    site = lab_dir / "manifests" / "site"
    site.mkdir()
    (site / "deployment.yaml").write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: web}\nspec:\n"
        "  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n"
        "      containers:\n        - {name: web, image: 'nginx:1.30.4-alpine'}\n"
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: web}\nspec:\n  type: NodePort\n"
        "  selector: {app: web}\n  ports: [{port: 80, nodePort: 30100}]\n")
    (site / "namespace.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: web}\n")
    raw = {"clusters": [
        {"name": "solo", "pod_cidr": "10.10.0.0/16", "service_cidr": "10.96.0.0/16",
         "stacks": [{"name": "cache", "chart": "redis", "repo": "oci://registry-1.docker.io/bitnamicharts",
                     "version": "21.2.5", "values": {"architecture": "standalone"}},
                    {"name": "demo", "manifests": "manifests/demo", "requires": ["cache"]},
                    {"name": "site", "manifests": "manifests/site"}],
         "nodes": [{"name": "solo-master", "role": "master", "cpu": 2, "memory": 4096},
                   {"name": "solo-worker1", "role": "worker", "cpu": 2, "memory": 4096}]}]}
    with open_sim(lab_dir, fake_tart, raw) as sim:
        result = labctl("--json", "install")
        assert result.code == 0, summary_of(result.out)["failed"]
        assert results(result.out)["stacks:solo/cache"] == "changed"
        assert sim.releases("solo")["cache/cache"]["version"] == "21.2.5"
        store = sim.clusters["solo"].store
        hello = store.get("apis/apps/v1", "deployments", "hello", "demo")
        assert hello is not None and hello["metadata"]["managedFields"][0]["manager"] == "labctl"
        assert store.get("api/v1", "configmaps", "hello-config", "demo")["data"] == {"greeting": "hi"}
        assert store.get("apis/apps/v1", "deployments", "web", "web") is not None  # Namespace applied first
        assert labctl("--json", "install").code == 0
        report = json.loads(labctl("--json", "status", "--timeout", "3").out)["clusters"][0]
        assert report["stacks"]["site"]["ok"] and report["urls"]["web"].endswith(":30100/")

        # status looks at every object of a manifests stack, not only its workloads
        store.delete("api/v1", "configmaps", "hello-config", "demo")
        report = json.loads(labctl("--json", "status", "--timeout", "3").out)["clusters"][0]
        assert not report["stacks"]["demo"]["ok"] and "ConfigMap demo/hello-config missing" in \
            report["stacks"]["demo"]["detail"]
        assert labctl("install").code == 0 and store.get("api/v1", "configmaps", "hello-config", "demo")

        # an object dropped from the folder is deleted by the next install (kubectl apply --prune's job)
        app = (demo / "app.yaml").read_text()
        (demo / "app.yaml").write_text(app.split("---")[0])
        result = labctl("--json", "install")
        assert results(result.out)["stacks:solo/demo"] == "changed"
        assert store.get("api/v1", "configmaps", "hello-config", "demo") is None
        assert store.get("apis/apps/v1", "deployments", "hello", "demo") is not None
        assert summary_of(labctl("--json", "install").out)["counts"]["changed"] == 0
        (demo / "app.yaml").write_text(app)
        assert labctl("install").code == 0

        # the manifests stack leaves clusters.json: plan lists it, install alone keeps it, --prune removes it
        raw["clusters"][0]["stacks"] = [raw["clusters"][0]["stacks"][0], raw["clusters"][0]["stacks"][2]]
        (lab_dir / "clusters.json").write_text(json.dumps(raw))
        plan = labctl("plan")
        assert "stack demo on solo is no longer in clusters.json" in plan.out + plan.err
        assert labctl("install").code == 0 and store.get("apis/apps/v1", "deployments", "hello", "demo")
        result = labctl("install", "--prune")
        assert result.code == 0, result.out
        assert store.get("apis/apps/v1", "deployments", "hello", "demo") is None
        assert store.get("api/v1", "namespaces", "demo") is None
        assert sim.releases("solo")["cache/cache"]["status"] == "deployed"  # the kept stack is untouched
        plan = labctl("plan")
        assert "no longer in clusters.json" not in plan.out + plan.err
