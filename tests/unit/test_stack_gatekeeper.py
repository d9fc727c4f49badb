"""The gatekeeper stack's policies (templates/stacks/gatekeeper/manifests/policies.yaml.j2), with their real Rego run
by a real interpreter (regopy: Microsoft's rego-cpp, Rego v1) in Gatekeeper's input shape (`input.review.object`,
`input.parameters`: Gatekeeper docs, "Constraint Templates"), and the constraints' `match` judged by the simulated
Gatekeeper's matcher (tests/sim/sim_stack_gatekeeper.py, Gatekeeper's match.go rules), which also holds the Python
checks the simulated webhook runs: the two must agree on every workload of the catalogue.

Defects of the predecessor (reference/stacks.md phase 14) these tests pin: the privileged-container constraint
denied cluster-wide "except system namespaces", without looking at which of the lab's own pods run privileged."""

from __future__ import annotations

import json

import pytest

from labctl import stacks
from tests.sim import sim_stack_gatekeeper as gk
from tests.unit import test_stack_catalogue as cat

regopy = pytest.importorskip("regopy")

# Pods the catalogue's stacks create at run time, outside their manifests and charts' workloads, that run
# privileged: stack → (what, source). Their namespace must be exempt from the privileged-container constraint.
PRIVILEGED_AT_RUN_TIME = {
    "storage": ("local-path-provisioner's helper pods (create and delete volume directories on the node)",
                "rancher/local-path-provisioner provisioner.go createHelperPod: SecurityContext Privileged true"),
}
# Exempt from every constraint: the namespaces kubeadm makes (Cilium's agents run privileged in kube-system) and
# Gatekeeper's own (its webhook skips it anyway: charts/gatekeeper/templates/_helpers.tpl).
ALWAYS_EXEMPT = {*stacks.SYSTEM_NAMESPACES} - {"default"} | {"gatekeeper-system"}


def objects() -> list[dict]:
    return cat.rendered("gatekeeper").objects


def templates() -> dict[str, dict]:
    """ConstraintTemplates by the constraint kind they define."""
    return {o["spec"]["crd"]["spec"]["names"]["kind"]: o for o in objects() if o["kind"] == "ConstraintTemplate"}


def constraints() -> list[dict]:
    return [o for o in objects() if o["apiVersion"].startswith(f"{gk.GROUP}/")]


def rego_of(template: dict) -> str:
    (target,) = template["spec"]["targets"]
    (code,) = target["code"]
    assert code["engine"] == "Rego" and code["source"]["version"] == "v1"
    return code["source"]["rego"]


def rego_messages(template: dict, obj: dict, parameters: dict) -> list[str]:
    """The template's `violation` messages for `obj`, evaluated by rego-cpp as Gatekeeper would (its input shape)."""
    interpreter = regopy.Interpreter()
    interpreter.add_module(f"{template['metadata']['name']}.rego", rego_of(template))
    interpreter.set_input_term(json.dumps({"review": {"object": obj, "kind": {"kind": obj["kind"]}},
                                           "parameters": parameters}))
    out = interpreter.query(f"data.{template['metadata']['name']}.violation")
    assert out.ok(), str(out)
    (expressions,) = json.loads(str(out))["expressions"]
    return sorted(v["msg"] for v in expressions)


def denials(obj: dict, group: str, namespace: str) -> list[str]:
    """What the stack's `deny` constraints say about `obj` in `namespace`: Gatekeeper's match, then the real Rego."""
    out = []
    for c in constraints():
        spec = c["spec"]
        if spec.get("enforcementAction", "deny") != "deny" or \
                not gk.matches(spec.get("match") or {}, group, obj["kind"], namespace):
            continue
        out += [f"[{c['metadata']['name']}] {m}" for m in rego_messages(templates()[c["kind"]], obj,
                                                                        spec.get("parameters") or {})]
    return out


def pod(name: str, containers: list[dict], labels: dict | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {}},
            "spec": {"containers": containers}}


PRIVILEGED = {"name": "shell", "image": "busybox:1.37", "securityContext": {"privileged": True}}


def pods_of(obj: dict) -> list[dict]:
    """The pods a manifest object makes (its pod templates), as the API server sees each at admission."""
    meta = obj.get("metadata") or {}
    if obj.get("kind") == "Pod":
        return [obj]
    template = (obj.get("spec") or {}).get("template") or {}
    if obj.get("kind") == "CronJob":
        template = ((obj["spec"].get("jobTemplate") or {}).get("spec") or {}).get("template") or {}
    if not template:
        return []
    return [{"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": meta.get("name", ""), **(template.get("metadata") or {})},
             "spec": template.get("spec") or {}}]


def lab_workloads() -> list[tuple[str, str, dict]]:
    """(stack, namespace, object) for every manifest object of every catalogue stack (rendered for a lab declaring
    them all) and every pod those objects make."""
    out = []
    for name in cat.STACK_NAMES:
        stack = cat.rendered(name)
        for obj in stack.objects:
            namespace = (obj.get("metadata") or {}).get("namespace") or stack.namespace
            out += [(name, namespace, obj), *((name, namespace, p) for p in pods_of(obj) if p is not obj)]
    return out


# ---- the templates -----------------------------------------------------------------------------------------------

def test_every_template_is_valid_rego_v1_named_as_gatekeeper_requires():
    """Gatekeeper refuses a template whose name is not its kind in lower case, and compiles only Rego with a
    `violation` rule; rego-cpp parses the code as Rego v1 (a syntax error raises)."""
    assert set(templates()) == set(gk.CHECKS)
    for kind, template in templates().items():
        assert template["metadata"]["name"] == kind.lower()
        assert rego_of(template).startswith(f"package {kind.lower()}\n")
        assert rego_messages(template, pod("quiet", [{"name": "a", "image": "x:1", "resources": {
            "limits": {"cpu": "1", "memory": "1Gi"}}}], {"app": "quiet"}), {"labels": ["app"],
                                                                           "limits": ["cpu"]}) == []


@pytest.mark.parametrize(("kind", "obj", "parameters", "expected"), [
    ("K8sBlockNodePort", {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                          "spec": {"type": "NodePort"}}, {}, ["Service web is of type NodePort"]),
    ("K8sBlockNodePort", {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                          "spec": {"type": "ClusterIP"}}, {}, []),
    ("K8sContainerLimits", pod("p", [{"name": "a", "resources": {"limits": {"memory": "1Gi"}}},
                                     {"name": "b"}]), {"limits": ["cpu", "memory"]},
     ["container a has no cpu limit", "container b has no cpu limit", "container b has no memory limit"]),
    ("K8sContainerLimits", {**pod("p", []), "spec": {"initContainers": [{"name": "init"}], "containers": []}},
     {"limits": ["memory"]}, ["container init has no memory limit"]),
    ("K8sPSPPrivilegedContainer", pod("p", [PRIVILEGED, {"name": "ok", "securityContext": {"privileged": False}}]),
     {}, ["Privileged container is not allowed: shell"]),
    ("K8sPSPPrivilegedContainer", {**pod("p", []), "spec": {"ephemeralContainers": [PRIVILEGED]}}, {},
     ["Privileged container is not allowed: shell"]),
    ("K8sRequiredLabels", {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}},
     {"labels": ["app", "team"]}, ["Deployment web is missing the labels: app, team"]),
    ("K8sRequiredLabels", {"apiVersion": "apps/v1", "kind": "Deployment",
                           "metadata": {"name": "web", "labels": {"app": ""}}}, {"labels": ["app"]}, []),
])
def test_the_rego_and_the_simulated_webhooks_checks_say_the_same(kind, obj, parameters, expected):
    assert rego_messages(templates()[kind], obj, parameters) == expected
    assert sorted(gk.CHECKS[kind](obj, parameters)) == expected


def test_the_rego_and_the_sim_agree_on_every_workload_of_the_catalogue():
    """The sim's Python checks are faithful to the Rego on the lab's real objects, for every constraint's
    parameters (in scope or not: the rule, not the match, is compared)."""
    for _, _, obj in lab_workloads():
        for c in constraints():
            parameters = c["spec"].get("parameters") or {}
            assert rego_messages(templates()[c["kind"]], obj, parameters) == \
                sorted(gk.CHECKS[c["kind"]](obj, parameters)), (c["kind"], cat.obj_id(obj))


# ---- the constraints ---------------------------------------------------------------------------------------------

def test_only_the_privileged_container_constraint_denies():
    actions = {c["metadata"]["name"]: c["spec"]["enforcementAction"] for c in constraints()}
    assert actions == {"block-nodeport": "warn", "require-container-limits": "warn", "disallow-privileged": "deny",
                       "require-app-label": "warn"}


def test_a_privileged_user_pod_in_a_user_namespace_is_denied():
    shell = pod("shell", [PRIVILEGED])
    assert denials(shell, "", "tools") == ["[disallow-privileged] Privileged container is not allowed: shell"]
    assert denials(shell, "", "demo") != []
    assert denials(shell, "", "kube-system") == []  # Cilium's agents live there
    assert denials(pod("plain", [{"name": "a", "image": "x:1"}]), "", "tools") == []  # the warn ones do not deny


def test_the_labs_own_stacks_are_not_denied_by_the_constraints():
    """Every pod of every catalogue stack's manifests passes every deny constraint where its stack puts it."""
    denied = [(stack, namespace, cat.obj_id(obj), found) for stack, namespace, obj in lab_workloads()
              if (found := denials(obj, obj["apiVersion"].rpartition("/")[0], namespace))]
    assert denied == []


def test_the_privileged_exemptions_are_exactly_the_namespaces_that_need_them():
    """kube-system & co., Gatekeeper's own namespace, and the namespaces of stacks whose pods run privileged at run
    time or by their chart values; no other namespace (each exemption is a hole in the policy)."""
    (privileged,) = [c for c in constraints() if c["kind"] == "K8sPSPPrivilegedContainer"]
    need = set(ALWAYS_EXEMPT)
    need |= {cat.rendered(name).namespace for name in PRIVILEGED_AT_RUN_TIME}
    for name in cat.STACK_NAMES:  # a chart told to run something privileged
        for release in cat.rendered(name).releases:
            if any(path and path[-1] == "privileged" and value is True for path, value in cat.walk(release.values)):
                need.add(release.namespace)
    assert set(privileged["spec"]["match"]["excludedNamespaces"]) == need
    # and the run-time privileged pods really are refused anywhere else (the exemption is needed)
    helper = pod("helper-pod-create-pvc-1", [{"name": "helper-pod", "image": "busybox:1.37.0",
                                              "securityContext": {"privileged": True}}])
    assert denials(helper, "", "local-path-storage") == [] and denials(helper, "", "tools") != []


def test_every_constraint_leaves_the_system_namespaces_alone():
    for c in constraints():
        assert ALWAYS_EXEMPT <= set(c["spec"]["match"]["excludedNamespaces"]), c["metadata"]["name"]


def test_the_constraints_follow_their_templates_in_apply_order():
    """Each constraint is applied right after its own template: the stacks phase waits for the constraint's kind
    to be served, and that wait is for its own template's compile (phases/stacks.py keeps file order)."""
    order = [(o["kind"], o["spec"]["crd"]["spec"]["names"]["kind"] if o["kind"] == "ConstraintTemplate" else None)
             for o in objects()]
    for i, (kind, defines) in enumerate(order):
        if kind != "ConstraintTemplate":
            assert order[i - 1][1] == kind


def test_the_sim_refuses_a_match_it_cannot_judge():
    with pytest.raises(NotImplementedError):
        gk.matches({"labelSelector": {"matchLabels": {"a": "b"}}}, "", "Pod", "tools")
    assert gk.matches({"excludedNamespaces": ["kube-*"]}, "", "Pod", "kube-system") is False
    assert gk.matches({"namespaces": ["*-dev"], "kinds": [{"apiGroups": [""], "kinds": ["Pod"]}]}, "", "Pod",
                      "team-dev") is True
    assert gk.matches({"kinds": [{"apiGroups": ["apps"], "kinds": ["Deployment"]}]}, "", "Pod", "x") is False
