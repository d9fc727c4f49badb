"""The network-policies stack, judged by a small evaluator of its rendered CiliumNetworkPolicies with Cilium's
semantics (docs.cilium.io "Policy Enforcement Modes", "Layer 3 Examples", "Layer 7 Examples", the CRD's own field
docs in reference/crd-schemas/cilium.io): an endpoint is in default deny for a direction once a policy selecting it
has rules for that direction (or enableDefaultDeny says so); then only what some rule of a policy selecting it
allows passes, rules of all policies taken together (union); a flow needs its source's egress and its destination's
ingress. A selector without a namespace label selects in the policy's own namespace. Entities: a pod is in
`cluster`, the node's own address is `host`, other nodes are `remote-node` (both in `cluster`), outside is `world`.
An L7 HTTP rule limits the methods on its port. Istio's AuthorizationPolicy (ALLOW) is evaluated the same way for
the istio variant: with any ALLOW policy selecting a workload, a request must match one of its rules.

The demo pods, their labels and ports come from the rendered hpa-demo stack, so a changed port or label there
breaks these tests rather than the lab."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from labctl import model, stacks
from phases.stacks import _requires
from tests.unit.test_stack_catalogue import cr_problems, need_reference

DEMO = "demo"
NS_KEY = "io.kubernetes.pod.namespace"
ENTITIES = {"world": {"world", "all"}, "host": {"host", "cluster", "all"},
            "remote-node": {"remote-node", "cluster", "all"}}


@dataclass(frozen=True)
class Peer:
    name: str
    namespace: str = ""  # "" for an entity
    labels: dict = field(default_factory=dict, hash=False)
    ports: dict = field(default_factory=dict, hash=False)  # port name → container port
    service_account: str = "default"

    @property
    def entities(self) -> set[str]:
        return ENTITIES[self.name] if not self.namespace else {"cluster", "all"}

    @property
    def principal(self) -> str:
        return f"cluster.local/ns/{self.namespace}/sa/{self.service_account}"


def lab_with(istio: bool) -> tuple[model.Lab, model.Cluster]:
    wanted = ["metrics-server", "hpa-demo", "network-policies", *(["istio"] if istio else [])]
    raw = {"clusters": [{"name": "dev", "pod_cidr": "10.20.0.0/16", "service_cidr": "10.97.0.0/16",
                         "stacks": [s for s in wanted if s in stacks.catalogue()],
                         "nodes": [{"name": "dev-master", "role": "master", "cpu": 2, "memory": 4096},
                                   {"name": "dev-worker1", "role": "worker", "cpu": 4, "memory": 8192}]}]}
    lab = model.parse(json.dumps(raw), source="test lab")
    return lab, lab.cluster("dev")


def rendered(istio: bool, name: str) -> stacks.StackDef:
    lab, cluster = lab_with(istio)
    return stacks.resolve(lab, cluster, name, Path("."))


def demo_pods(istio: bool) -> dict[str, Peer]:
    """hpa-demo's Deployments as peers (httpbin-v2 too where istio brings it), plus the pods they talk to."""
    pods = {}
    for obj in rendered(istio, "hpa-demo").objects:
        if obj["kind"] != "Deployment":
            continue
        template = obj["spec"]["template"]
        ports = {p.get("name", str(p["containerPort"])): p["containerPort"]
                 for c in template["spec"]["containers"] for p in c.get("ports") or []}
        pods[obj["metadata"]["name"]] = Peer(obj["metadata"]["name"], DEMO, dict(template["metadata"]["labels"]),
                                             ports, template["spec"].get("serviceAccountName", "default"))
    pods["kube-dns"] = Peer("kube-dns", "kube-system", {"k8s-app": "kube-dns"})
    # istiod's pod labels and the gateway's (chart.txt: labels derive from the release name istio-ingressgateway)
    pods["istiod"] = Peer("istiod", "istio-system", {"app": "istiod", "istio": "pilot"}, {"grpc-xds": 15012})
    pods["gateway"] = Peer("gateway", "istio-ingress", {"app": "istio-ingressgateway", "istio": "ingressgateway"},
                           service_account="istio-ingressgateway")
    for entity in ENTITIES:
        pods[entity] = Peer(entity)
    return pods


def port_of(pods: dict[str, Peer], app: str, name: str = "http") -> int:
    return pods[app].ports[name]


# ---- the evaluator --------------------------------------------------------------------------------------------------

def _key(label: str) -> str:
    return label.split(":", 1)[1] if label.startswith(("k8s:", "any:")) else label


def _selects(selector: dict, peer: Peer, policy_namespace: str) -> bool:
    if not peer.namespace:
        return False
    assert not selector.get("matchExpressions"), "the evaluator knows matchLabels only"
    want = {_key(k): v for k, v in (selector.get("matchLabels") or {}).items()}
    namespace = want.pop(NS_KEY, policy_namespace)
    return namespace == peer.namespace and all(peer.labels.get(k) == v for k, v in want.items())


def _port_ok(rule: dict, port: int, protocol: str, method: str) -> bool:
    entries = rule.get("toPorts")
    if not entries:
        return True
    for entry in entries:
        if not any(str(p["port"]) == str(port) and p.get("protocol", "ANY") in (protocol, "ANY")
                   for p in entry.get("ports") or []):
            continue
        http = (entry.get("rules") or {}).get("http")
        if not http or any(re.fullmatch(h.get("method", ".*"), method) for h in http):
            return True
    return False


class Cilium:
    def __init__(self, objects: list[dict]):
        self.cnps = [o for o in objects if o["kind"] == "CiliumNetworkPolicy"]

    def _policies(self, pod: Peer) -> list[dict]:
        return [p for p in self.cnps if pod.namespace
                and _selects(p["spec"]["endpointSelector"], pod, p["metadata"].get("namespace", DEMO))]

    def enforced(self, pod: Peer, direction: str) -> bool:
        for policy in self._policies(pod):
            spec = policy["spec"]
            default = bool(spec.get(direction) or spec.get(f"{direction}Deny"))
            if (spec.get("enableDefaultDeny") or {}).get(direction, default):
                return True
        return False

    def _allows(self, subject: Peer, direction: str, peer: Peer, port: int, protocol: str, method: str) -> bool:
        side = "from" if direction == "ingress" else "to"
        for policy in self._policies(subject):
            namespace = policy["metadata"].get("namespace", DEMO)
            for rule in policy["spec"].get(direction) or []:
                selectors, entities = rule.get(f"{side}Endpoints"), rule.get(f"{side}Entities")
                if selectors is None and entities is None:
                    peer_ok = bool(rule.get("toPorts"))  # an L4-only rule: any peer; `{}` allows nothing
                else:
                    peer_ok = any(_selects(s, peer, namespace) for s in selectors or []) or \
                        bool(set(entities or []) & peer.entities)
                if peer_ok and _port_ok(rule, port, protocol, method):
                    return True
        return False

    def allowed(self, src: Peer, dst: Peer, port: int, protocol: str = "TCP", method: str = "GET") -> bool:
        out = not self.enforced(src, "egress") or self._allows(src, "egress", dst, port, protocol, method)
        into = not self.enforced(dst, "ingress") or self._allows(dst, "ingress", src, port, protocol, method)
        return out and into


def authz_allowed(objects: list[dict], src: Peer, dst: Peer, method: str) -> bool:
    """Istio ALLOW AuthorizationPolicies on `dst`: none → allowed; else one rule must match the mTLS principal and
    the method (an absent `from`/`to` matches anything)."""
    policies = [o for o in objects if o["kind"] == "AuthorizationPolicy" and o["metadata"]["namespace"] == dst.namespace
                and all(dst.labels.get(k) == v for k, v in o["spec"]["selector"]["matchLabels"].items())]
    if not policies:
        return True
    for policy in policies:
        assert policy["spec"].get("action", "ALLOW") == "ALLOW"
        for rule in policy["spec"].get("rules") or []:
            sources = [f["source"] for f in rule.get("from") or []]
            ops = [t["operation"] for t in rule.get("to") or []]
            if (not sources or any(src.principal in s.get("principals", []) for s in sources)) and \
                    (not ops or any(method in o.get("methods", [method]) for o in ops)):
                return True
    return False


# ---- the flows ------------------------------------------------------------------------------------------------------

def required(pods: dict[str, Peer], istio: bool) -> list[tuple[str, str, int, str, str]]:
    """(from, to, port, protocol, method) the demo needs."""
    flows = [(client, "nginx", 80, "TCP", "GET") for client in ("world", "remote-node", "host")]
    flows += [(client, "keycloak", port_of(pods, "keycloak"), "TCP", "GET") for client in ("world", "remote-node", "host")]
    flows += [("nginx", "httpbin", port_of(pods, "httpbin"), "TCP", "GET"),
              ("nginx", "redis", port_of(pods, "redis", "redis"), "TCP", "GET"),
              ("httpbin", "postgres", port_of(pods, "postgres", "postgres"), "TCP", "GET"),
              ("httpbin", "rabbitmq", port_of(pods, "rabbitmq", "amqp"), "TCP", "GET"),
              ("httpbin", "keycloak", port_of(pods, "keycloak"), "TCP", "GET"),
              ("keycloak", "postgres", port_of(pods, "postgres", "postgres"), "TCP", "GET")]
    apps = [p for p in pods.values() if p.namespace == DEMO]
    flows += [(app.name, "kube-dns", 53, proto, "GET") for app in apps for proto in ("UDP", "TCP")]
    # the kubelet's probes, on whatever port each container is probed
    flows += [("host", app.name, port, "TCP", "GET") for app in apps for port in app.ports.values()]
    if istio:
        flows += [(app.name, "istiod", 15012, "TCP", "GET") for app in apps]
        flows += [("gateway", "nginx", 80, "TCP", "GET"),
                  ("gateway", "httpbin", port_of(pods, "httpbin"), "TCP", "GET"),
                  ("gateway", "httpbin", port_of(pods, "httpbin"), "TCP", "POST"),
                  ("nginx", "httpbin-v2", port_of(pods, "httpbin-v2"), "TCP", "GET")]
    return flows


def forbidden(pods: dict[str, Peer]) -> list[tuple[str, str, int, str, str]]:
    return [("redis", "postgres", port_of(pods, "postgres", "postgres"), "TCP", "GET"),
            ("world", "httpbin", port_of(pods, "httpbin"), "TCP", "GET"),
            ("world", "postgres", port_of(pods, "postgres", "postgres"), "TCP", "GET"),
            ("remote-node", "redis", port_of(pods, "redis", "redis"), "TCP", "GET"),
            ("nginx", "postgres", port_of(pods, "postgres", "postgres"), "TCP", "GET"),
            ("keycloak", "httpbin", port_of(pods, "httpbin"), "TCP", "GET"),
            ("postgres", "world", 443, "TCP", "GET"),
            ("nginx", "world", 443, "TCP", "GET"),
            ("nginx", "httpbin", port_of(pods, "httpbin"), "TCP", "POST"),
            ("world", "keycloak", port_of(pods, "keycloak", "management"), "TCP", "GET")]


def verdict(objects: list[dict], pods: dict[str, Peer], flow, istio: bool) -> bool:
    src, dst, port, protocol, method = flow
    ok = Cilium(objects).allowed(pods[src], pods[dst], port, protocol, method)
    if istio and pods[src].namespace and pods[dst].namespace == DEMO:  # mTLS inside the mesh: Istio's say too
        ok = ok and authz_allowed(objects, pods[src], pods[dst], method)
    return ok


VARIANTS = [pytest.param(False, id="plain"), pytest.param(True, id="istio")]


def _skip_without_istio(istio: bool) -> None:
    if istio and "istio" not in stacks.catalogue():
        pytest.skip("no istio stack in the catalogue yet")


@pytest.mark.parametrize("istio", VARIANTS)
def test_the_demo_flows_are_allowed_and_the_rest_is_denied(istio):
    _skip_without_istio(istio)
    objects, pods = rendered(istio, "network-policies").objects, demo_pods(istio)
    blocked = [f for f in required(pods, istio) if not verdict(objects, pods, f, istio)]
    assert not blocked, f"required flows denied: {blocked}"
    open_ = [f for f in forbidden(pods) if verdict(objects, pods, f, istio)]
    assert not open_, f"flows that must be denied are allowed: {open_}"


@pytest.mark.parametrize("istio", VARIANTS)
def test_every_policy_validates_against_its_crd_schema(istio):
    """The generic catalogue test sees one variant (its lab declares every stack); this checks both."""
    _skip_without_istio(istio)
    need_reference()
    problems = [p for o in rendered(istio, "network-policies").objects for p in cr_problems(o)]
    assert not problems


def test_an_l7_policy_under_strict_mtls_is_not_shipped():
    """Predecessor, phase 10: an HTTP rule (nginx → httpbin GET only) on a namespace Istio's STRICT mTLS encrypts,
    which Cilium cannot read. With istio no CNP has an HTTP rule and an AuthorizationPolicy carries GET-only;
    without istio the CNP carries it."""
    _skip_without_istio(True)

    def http_rules(objects):
        return [o["metadata"]["name"] for o in objects if o["kind"] == "CiliumNetworkPolicy"
                for direction in ("ingress", "egress") for rule in o["spec"].get(direction) or []
                for entry in rule.get("toPorts") or [] if (entry.get("rules") or {}).get("http")]

    with_istio, plain = rendered(True, "network-policies").objects, rendered(False, "network-policies").objects
    assert http_rules(with_istio) == []
    assert [o["kind"] for o in plain if o["kind"] == "AuthorizationPolicy"] == []
    assert http_rules(plain) == ["httpbin"]
    for istio, objects in ((True, with_istio), (False, plain)):
        pods = demo_pods(istio)
        httpbin = port_of(pods, "httpbin")
        assert verdict(objects, pods, ("nginx", "httpbin", httpbin, "TCP", "GET"), istio)
        assert not verdict(objects, pods, ("nginx", "httpbin", httpbin, "TCP", "DELETE"), istio)


def test_the_istiod_policy_is_in_place_before_sidecars_start():
    """Predecessor, phase 12 (c): its istiod allow landed after the pods had restarted with sidecars under default
    deny. Here, at every point of the stack's apply order, a demo pod that any applied policy puts in egress default
    deny already may reach istiod and DNS; and the stack installs after istio (whose CRD the AuthorizationPolicy
    needs)."""
    _skip_without_istio(True)
    lab, cluster = lab_with(True)
    assert "istio" in _requires(cluster, "network-policies")
    objects, pods = rendered(True, "network-policies").objects, demo_pods(True)
    apps = [p for p in pods.values() if p.namespace == DEMO]
    for n in range(1, len(objects) + 1):
        cilium = Cilium(objects[:n])
        for app in apps:
            if cilium.enforced(app, "egress"):
                assert cilium.allowed(app, pods["istiod"], 15012), (objects[n - 1]["metadata"]["name"], app.name)
                assert cilium.allowed(app, pods["kube-dns"], 53, "UDP"), (objects[n - 1]["metadata"]["name"], app.name)


def test_the_api_route_through_the_gateway_is_allowed():
    """Predecessor, phase 12 (d): its httpbin policy admitted nginx only, so the gateway's /api route was dropped.
    Every destination of hpa-demo's gateway VirtualService is reachable from the gateway's pods, through the
    Service's targetPort to the pod's port, by Cilium and by Istio's AuthorizationPolicy."""
    _skip_without_istio(True)
    demo = rendered(True, "hpa-demo").objects
    objects, pods = rendered(True, "network-policies").objects, demo_pods(True)
    gateways = [o for o in demo if o["kind"] == "VirtualService" and o["spec"].get("gateways")]
    assert gateways, "hpa-demo routes nothing through the ingress gateway"
    services = {o["metadata"]["name"]: o for o in demo if o["kind"] == "Service"}
    routes = [(d["destination"]["host"].split(".")[0], d["destination"].get("port", {}).get("number"))
              for vs in gateways for http in vs["spec"]["http"] for d in http["route"]]
    assert ("httpbin", 80) in routes
    for service, port in set(routes):
        target = next(p["targetPort"] for p in services[service]["spec"]["ports"] if p["port"] == port)
        for app in [p for p in pods.values() if p.namespace == DEMO and
                    all(p.labels.get(k) == v for k, v in services[service]["spec"]["selector"].items())]:
            pod_port = app.ports[target] if isinstance(target, str) else target
            for method in ("GET", "POST"):
                assert verdict(objects, pods, ("gateway", app.name, pod_port, "TCP", method), True), \
                    (service, app.name, method)
