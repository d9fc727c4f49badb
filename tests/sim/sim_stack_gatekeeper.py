"""OPA Gatekeeper in a simulated cluster (the `gatekeeper` stack), registered in CONTROLLERS and ADMISSION
(tests/sim/sim_stack_controllers.py); its checks are also used by tests/unit/test_stack_gatekeeper.py, which holds
them against the templates' real Rego.

- `compile_templates` (controller): once Gatekeeper's controller-manager is ready, each ConstraintTemplate becomes
  the CRD of its constraint kind, `<lowercase kind>.constraints.gatekeeper.sh` (Cluster scope, served at v1beta1
  (storage) and v1alpha1, categories constraint/constraints, label gatekeeper.sh/constraint=yes: open-policy-agent/
  frameworks constraint/pkg/client/crds.go createCRD), and the template's status says `created: true` ("Constraint
  kinds ... are not shipped as static CRDs. Gatekeeper creates those CRDs at runtime when you apply a
  ConstraintTemplate": Gatekeeper docs, API Reference, v3.23.x). The compile happens on the reconcile after the one
  that first sees the template: a client's very next request does not find the kind served yet, as for real (watch
  event, compile, CRD creation and the CRD's establishment all follow the template's write asynchronously). A
  template deleted takes its CRD, and so its constraints, with it.
- `gatekeeper_admission` (validating webhook validation.gatekeeper.sh): a pod violating a constraint whose
  enforcementAction is `deny` (the default) is refused with Gatekeeper's message, `admission webhook
  "validation.gatekeeper.sh" denied the request: [<constraint>] <violation message>` (Gatekeeper docs, "Constraint
  Templates", the kubectl example), one line per violation. `warn` and `dryrun` never refuse. The webhook skips the
  release namespace and namespaces labelled admission.gatekeeper.sh/ignore (the chart's namespaceSelector:
  charts/gatekeeper/templates/_helpers.tpl gatekeeper.mandatoryNamespaceExemption), and answers nothing while its
  controller-manager is not ready (the chart's failurePolicy Ignore: the pod is admitted).

The sim cannot run Rego: `CHECKS` are the four catalogue templates' rules in Python, by constraint kind, written
from the Rego in templates/stacks/gatekeeper/manifests/policies.yaml.j2 (the unit test compares the two on the lab's
every workload). A template of another kind is compiled but not evaluated. `match` is Gatekeeper's own logic
(gatekeeper pkg/mutation/match/match.go): kinds, scope, namespaces and excludedNamespaces with their `*` prefix/suffix
globs; a constraint using labelSelector, namespaceSelector, name or source is refused by the sim rather than judged
wrongly.
"""

from __future__ import annotations

from tests.sim.kube_resources import APPS, CRD_PREFIX, CRDS, crd_object
from tests.sim.sim_stack_controllers import ADMISSION, CONTROLLERS

NAMESPACE = "gatekeeper-system"  # the catalogue stack's namespace (templates/stacks/gatekeeper/stack.yaml)
CONTROLLER = "gatekeeper-controller-manager"
TEMPLATES = ("apis/templates.gatekeeper.sh/v1", "constrainttemplates")
GROUP = "constraints.gatekeeper.sh"
VERSION = "v1beta1"  # the constraint CRD's storage version
IGNORE_LABEL = "admission.gatekeeper.sh/ignore"
WEBHOOK = "validation.gatekeeper.sh"


# ---- the rules of the catalogue's templates, by constraint kind: (object, parameters) → violation messages -------

def _containers(spec: dict, fields: tuple[str, ...]) -> list[dict]:
    return [c for f in fields for c in spec.get(f) or [] if isinstance(c, dict)]


def _block_nodeport(obj: dict, parameters: dict) -> list[str]:
    spec = obj.get("spec") or {}
    if obj.get("kind") == "Service" and spec.get("type") == "NodePort":
        return [f"Service {obj['metadata']['name']} is of type NodePort"]
    return []


def _container_limits(obj: dict, parameters: dict) -> list[str]:
    return [f"container {c.get('name')} has no {resource} limit"
            for c in _containers(obj.get("spec") or {}, ("containers", "initContainers"))
            for resource in parameters.get("limits") or []
            if resource not in ((c.get("resources") or {}).get("limits") or {})]


def _privileged(obj: dict, parameters: dict) -> list[str]:
    return [f"Privileged container is not allowed: {c.get('name')}"
            for c in _containers(obj.get("spec") or {}, ("containers", "initContainers", "ephemeralContainers"))
            if (c.get("securityContext") or {}).get("privileged") is True]


def _required_labels(obj: dict, parameters: dict) -> list[str]:
    missing = sorted(set(parameters.get("labels") or []) - set((obj.get("metadata") or {}).get("labels") or {}))
    if not missing:
        return []
    return [f"{obj.get('kind')} {obj['metadata'].get('name')} is missing the labels: {', '.join(missing)}"]


CHECKS = {"K8sBlockNodePort": _block_nodeport, "K8sContainerLimits": _container_limits,
          "K8sPSPPrivilegedContainer": _privileged, "K8sRequiredLabels": _required_labels}


def _glob(pattern: str, name: str) -> bool:
    """Gatekeeper's namespace globs: a `*` at the front and/or end (match_types.go Wildcard.Matches)."""
    if pattern.startswith("*") and pattern.endswith("*") and len(pattern) > 1:
        return pattern[1:-1] in name
    if pattern.startswith("*"):
        return name.endswith(pattern[1:])
    if pattern.endswith("*"):
        return name.startswith(pattern[:-1])
    return pattern == name


def matches(match: dict, group: str, kind: str, namespace: str) -> bool:
    """Is an object of `group`/`kind` in `namespace` ('' for a cluster-scoped one) in scope of a constraint's match?"""
    unsupported = sorted(set(match) - {"kinds", "scope", "namespaces", "excludedNamespaces"})
    if unsupported:
        raise NotImplementedError(f"the simulated Gatekeeper does not evaluate match.{unsupported}")
    kinds = match.get("kinds") or [{"apiGroups": ["*"], "kinds": ["*"]}]
    if not any(({"*", group} & set(k.get("apiGroups") or [])) and ({"*", kind} & set(k.get("kinds") or []))
               for k in kinds):
        return False
    scope = match.get("scope", "*")
    if (scope == "Cluster" and namespace) or (scope == "Namespaced" and not namespace):
        return False
    if namespace and "namespaces" in match and not any(_glob(p, namespace) for p in match["namespaces"]):
        return False
    return not (namespace and any(_glob(p, namespace) for p in match.get("excludedNamespaces") or []))


def violations(constraint: dict, obj: dict, group: str, namespace: str) -> list[str]:
    """What `constraint` says about `obj` (its checks by the constraint's kind): [] when out of scope or fine."""
    check = CHECKS.get(constraint["kind"])
    spec = constraint.get("spec") or {}
    if check is None or not matches(spec.get("match") or {}, group, obj.get("kind", ""), namespace):
        return []
    return check(obj, spec.get("parameters") or {})


# ---- the controller and the webhook ------------------------------------------------------------------------------

def _serving(cluster) -> bool:
    deployment = cluster.store.get(APPS, "deployments", CONTROLLER, NAMESPACE)
    return bool(((deployment or {}).get("status") or {}).get("readyReplicas"))


def _constraint_kind(template: dict) -> str:
    return ((((template.get("spec") or {}).get("crd") or {}).get("spec") or {}).get("names") or {}).get("kind", "")


def compile_templates(cluster) -> None:
    store = cluster.store
    if store.resource(*TEMPLATES) is None:
        return
    seen: set[str] = cluster.__dict__.setdefault("gatekeeper_seen", set())  # uid of templates a reconcile saw
    templates = store.list(*TEMPLATES)
    kinds = {_constraint_kind(t) for t in templates}
    for crd in store.list(CRD_PREFIX, CRDS):  # a deleted template's CRD goes (and its constraints with it)
        if crd["spec"].get("group") == GROUP and crd["spec"]["names"]["kind"] not in kinds:
            store.delete(CRD_PREFIX, CRDS, crd["metadata"]["name"])
    if not _serving(cluster):
        return
    for template in templates:
        kind, uid = _constraint_kind(template), template["metadata"]["uid"]
        if not kind:
            continue
        if uid not in seen:
            seen.add(uid)  # compiled on the next reconcile: the write's own watch event comes after it
            continue
        name = f"{kind.lower()}.{GROUP}"
        if store.get(CRD_PREFIX, CRDS, name) is None:
            crd = crd_object(GROUP, VERSION, kind.lower(), kind, "Cluster", versions=[VERSION, "v1alpha1"],
                             categories=("constraint", "constraints"))
            crd["metadata"]["labels"] = {"gatekeeper.sh/constraint": "yes"}
            store.put(CRD_PREFIX, CRDS, crd)
        status = template.get("status") or {}
        if status.get("created") is not True:
            template["status"] = {**status, "created": True}
            store.put(*TEMPLATES, template)


def constraints(cluster) -> list[dict]:
    """Every constraint object in the cluster, of every compiled kind."""
    store, out = cluster.store, []
    for crd in store.list(CRD_PREFIX, CRDS):
        if crd["spec"].get("group") == GROUP:
            out += store.list(f"apis/{GROUP}/{VERSION}", crd["spec"]["names"]["plural"])
    return out


def gatekeeper_admission(cluster, namespace: str, pod_template: dict) -> str | None:
    if not _serving(cluster) or namespace == NAMESPACE:
        return None
    ns = cluster.store.get("api/v1", "namespaces", namespace) or {}
    if IGNORE_LABEL in ((ns.get("metadata") or {}).get("labels") or {}):
        return None
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": pod_template.get("metadata") or {"name": ""},
           "spec": pod_template.get("spec") or {}}
    pod["metadata"].setdefault("name", "")
    denied = [f"[{c['metadata']['name']}] {message}" for c in constraints(cluster)
              if (c.get("spec") or {}).get("enforcementAction", "deny") == "deny"
              for message in violations(c, pod, "", namespace)]
    if denied:
        return f'admission webhook "{WEBHOOK}" denied the request: ' + "\n".join(denied)
    return None


CONTROLLERS.append(compile_templates)
ADMISSION.append(gatekeeper_admission)
