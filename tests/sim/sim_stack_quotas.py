"""The API server's LimitRanger and ResourceQuota admission for the pods a simulated workload creates, registered in
ADMISSION (tests/sim/sim_stack_controllers.py); also used by tests/unit/test_stack_quotas.py, so the catalogue's
fit check and the simulated lab judge a pod by the same model.

Sources: Kubernetes docs "Limit Ranges" (https://kubernetes.io/docs/concepts/policy/limit-range/) and "Resource
Quotas" (https://kubernetes.io/docs/concepts/policy/resource-quotas/); the messages and rules as
kubernetes/kubernetes writes them: plugin/pkg/admission/limitranger/admission.go (defaulting: mergeContainerResources;
validation: minConstraint, maxConstraint, limitRequestRatioConstraint), pkg/apis/core/v1/defaults.go
(SetDefaults_LimitRangeItem; a container's request defaults to its limit), pkg/quota/v1/evaluator/core/pods.go
(Constraints: "must specify ..."; usage from requests and limits), plugin/pkg/admission/resourcequota/controller.go
("failed quota: <name>: ...", "exceeded quota: <name>, requested: ..., used: ..., limited: ...") and
component-helpers/resource (a pod's requests: the sum of its containers and restartable init containers, or the
largest init container if that is more).

The order is the API server's: LimitRanger's defaulting is a built-in mutating plugin that runs before the mutating
webhooks (so a sidecar Istio injects gets no LimitRange defaults: it must bring its own resources); LimitRanger's
validation sees every container, injected ones too; ResourceQuota is the last validating plugin.

A pod made from a workload's template is named as its controller names it (generateName `<replicaset>-` for a
Deployment, `<name>-` for a DaemonSet, `<name>-0` for a StatefulSet), which is what the "forbidden" message shows.
ResourceQuota counts the pods of the namespace's workloads in creation order (the order their controllers ask for
pods): a workload's replicas are spec.replicas (1 when unset), raised to an HPA's minReplicas when one targets it (the
HPA controller scales a workload up to its minimum within seconds); a workload refused by admission has no pods. In
the sim a workload is refused whole (its controller's status says 0 ready), where a real ReplicaSet creates the pods
that still fit: either way it is not ready.
"""

from __future__ import annotations

import copy
import hashlib
import json
from decimal import Decimal

from labctl.stacks import quantity
from tests.sim.kube_normalise import canonical_quantity
from tests.sim.kube_resources import APPS
from tests.sim.sim_stack_controllers import ADMISSION, admission_chain

COMPUTE = ("cpu", "memory")
# pkg/quota/v1/evaluator/core/pods.go validationSet: quota on any of these makes every container name them
QUOTA_NEEDS_SPEC = {"cpu", "memory", "requests.cpu", "requests.memory", "limits.cpu", "limits.memory"}
OWNER = "labctl.sim/owner"  # annotation on the simulated pod: "<kind>/<name>" of the workload it comes from
WORKLOADS = (("deployments", "Deployment"), ("statefulsets", "StatefulSet"), ("daemonsets", "DaemonSet"))


def _q(value) -> Decimal:
    return quantity(value) or Decimal(0)


def _all_containers(spec: dict) -> list[dict]:
    return [c for f in ("initContainers", "containers") for c in spec.get(f) or [] if isinstance(c, dict)]


# ---- LimitRange ---------------------------------------------------------------------------------------------------

def limit_items(limit_ranges: list[dict], kind: str = "Container") -> list[dict]:
    """The LimitRange items of `kind` as the API server stores them, with SetDefaults_LimitRangeItem applied: a
    Container item's default limit is its max when unset, its default request its default limit, else its min."""
    out = []
    for lr in limit_ranges:
        for item in (lr.get("spec") or {}).get("limits") or []:
            if item.get("type") != kind:
                continue
            item = copy.deepcopy(item)
            if kind == "Container":
                default = item.setdefault("default", {})
                request = item.setdefault("defaultRequest", {})
                for key, value in (item.get("max") or {}).items():
                    default.setdefault(key, value)
                for key, value in default.items():
                    request.setdefault(key, value)
                for key, value in (item.get("min") or {}).items():
                    request.setdefault(key, value)
            out.append(item)
    return out


def apply_limit_range_defaults(limit_ranges: list[dict], spec: dict) -> None:
    """The pod defaulting before admission (a request the container leaves out, for a resource it limits, is the
    limit: pkg/apis/core/v1/defaults.go), then LimitRanger's: each missing limit from `default`, each missing
    request from `defaultRequest`, on every container and init container. In place."""
    items = limit_items(limit_ranges)
    for container in _all_containers(spec):
        resources = container.setdefault("resources", {})
        limits, requests = resources.setdefault("limits", {}), resources.setdefault("requests", {})
        for key, value in limits.items():
            requests.setdefault(key, value)
        for item in items:
            for key, value in item["default"].items():
                limits.setdefault(key, value)
            for key, value in item["defaultRequest"].items():
                requests.setdefault(key, value)
        for part in ("limits", "requests"):
            if not resources[part]:
                del resources[part]


def _min_max_ratio(item: dict, what: str, requests: dict, limits: dict) -> list[str]:
    """limitranger's minConstraint, maxConstraint and limitRequestRatioConstraint for one item and one container
    (what = "Container") or pod ("Pod"), in its order and words."""
    errors = []
    for key, enforced in (item.get("min") or {}).items():
        if key not in requests:
            errors.append(f"minimum {key} usage per {what} is {enforced}.  No request is specified")
        elif _q(requests[key]) < _q(enforced):
            errors.append(f"minimum {key} usage per {what} is {enforced}, but request is {requests[key]}")
        elif key in limits and _q(limits[key]) < _q(enforced):
            errors.append(f"minimum {key} usage per {what} is {enforced}, but limit is {limits[key]}")
    for key, enforced in (item.get("max") or {}).items():
        if key not in limits:
            errors.append(f"maximum {key} usage per {what} is {enforced}.  No limit is specified")
        elif _q(limits[key]) > _q(enforced):
            errors.append(f"maximum {key} usage per {what} is {enforced}, but limit is {limits[key]}")
        elif key in requests and _q(requests[key]) > _q(enforced):
            errors.append(f"maximum {key} usage per {what} is {enforced}, but request is {requests[key]}")
    for key, enforced in (item.get("maxLimitRequestRatio") or {}).items():
        request, limit = _q(requests.get(key, 0)), _q(limits.get(key, 0))
        if request == 0:
            errors.append(f"{key} max limit to request ratio per {what} is {enforced}, but no request is specified "
                          "or request is 0")
        elif limit == 0:
            errors.append(f"{key} max limit to request ratio per {what} is {enforced}, but no limit is specified or "
                          "limit is 0")
        elif limit / request > _q(enforced):
            errors.append(f"{key} max limit to request ratio per {what} is {enforced}, but provided ratio is "
                          f"{float(limit / request):f}")
    return errors


def limit_range_problems(limit_ranges: list[dict], spec: dict) -> list[str]:
    """What LimitRanger's validation says about a (defaulted) pod spec: per Container item every container and init
    container, per Pod item the sums over the pod's containers. [] when it is admitted."""
    errors = []
    for item in limit_items(limit_ranges, "Container"):
        for container in _all_containers(spec):
            resources = container.get("resources") or {}
            errors += _min_max_ratio(item, "Container", resources.get("requests") or {}, resources.get("limits") or {})
    for item in limit_items(limit_ranges, "Pod"):
        usage = pod_usage(spec)
        requests = {k: canonical_quantity(usage[f"requests.{k}"]) for k in COMPUTE if f"requests.{k}" in usage}
        limits = {k: canonical_quantity(usage[f"limits.{k}"]) for k in COMPUTE if f"limits.{k}" in usage}
        errors += _min_max_ratio(item, "Pod", requests, limits)
    return errors


def request_over_limit(spec: dict) -> str | None:
    """Pod validation after admission: a request above its limit (a default limit below an explicit request)."""
    for field in ("initContainers", "containers"):
        for i, container in enumerate(spec.get(field) or []):
            resources = container.get("resources") or {}
            for key, request in (resources.get("requests") or {}).items():
                limit = (resources.get("limits") or {}).get(key)
                if limit is not None and _q(request) > _q(limit):
                    return (f"spec.{field}[{i}].resources.requests: Invalid value: \"{request}\": must be less than or "
                            f"equal to {key} limit of {limit}")
    return None


# ---- ResourceQuota ------------------------------------------------------------------------------------------------

def pod_usage(spec: dict) -> dict[str, Decimal]:
    """What one pod counts against a quota: `pods` 1, and requests.cpu/memory (also as cpu/memory) and
    limits.cpu/memory when any container names them. A pod's figure is the sum of its containers and restartable
    (sidecar) init containers, or its largest init container (plus the sidecars started before it) if that is more."""
    usage: dict[str, Decimal] = {"pods": Decimal(1)}
    for part in ("requests", "limits"):
        for key in COMPUTE:
            def of(c: dict) -> Decimal | None:
                value = ((c.get("resources") or {}).get(part) or {}).get(key)
                return None if value is None else _q(value)

            named = [v for c in _all_containers(spec) if (v := of(c)) is not None]
            if not named:
                continue
            total = sum((of(c) or Decimal(0) for c in spec.get("containers") or []), Decimal(0))
            sidecars, largest_init = Decimal(0), Decimal(0)
            for c in spec.get("initContainers") or []:
                if c.get("restartPolicy") == "Always":
                    sidecars += of(c) or Decimal(0)
                else:
                    largest_init = max(largest_init, sidecars + (of(c) or Decimal(0)))
            usage[f"{part}.{key}"] = max(total + sidecars, largest_init)
            if part == "requests":
                usage[key] = usage[f"{part}.{key}"]
    return usage


def quota_constraints(quota: dict, spec: dict) -> str | None:
    """pods.go Constraints: with a quota on CPU or memory, every container must name that request or limit."""
    hard = (quota.get("spec") or {}).get("hard") or {}
    required = sorted(QUOTA_NEEDS_SPEC & set(hard))
    missing: dict[str, list[str]] = {}
    for container in _all_containers(spec):
        resources = container.get("resources") or {}
        have = {f"requests.{k}" for k in resources.get("requests") or {}} | \
            {k for k in resources.get("requests") or {}} | {f"limits.{k}" for k in resources.get("limits") or {}}
        for key in required:
            if key not in have:
                missing.setdefault(key, []).append(container.get("name", ""))
    if not missing:
        return None
    parts = [f"{key} for: {','.join(sorted(names))}" for key, names in sorted(missing.items())]
    return f"failed quota: {quota['metadata']['name']}: must specify {'; '.join(parts)}"


def _pretty(values: dict[str, Decimal]) -> str:
    return ",".join(f"{k}={canonical_quantity(v)}" for k, v in sorted(values.items()))


def quota_excess(quota: dict, used: dict[str, Decimal], requested: dict[str, Decimal]) -> str | None:
    """The quota controller's check: used + requested must stay within every hard limit the quota tracks."""
    hard = {k: _q(v) for k, v in ((quota.get("spec") or {}).get("hard") or {}).items()}
    over = sorted(k for k, limit in hard.items() if k in requested and used.get(k, 0) + requested[k] > limit)
    if not over:
        return None
    return (f"exceeded quota: {quota['metadata']['name']}, requested: {_pretty({k: requested[k] for k in over})}, "
            f"used: {_pretty({k: used.get(k, Decimal(0)) for k in over})}, "
            f"limited: {_pretty({k: hard[k] for k in over})}")


def replicas_pods(usage: dict[str, Decimal], replicas: int) -> dict[str, Decimal]:
    return {k: v * replicas for k, v in usage.items()}


def add(a: dict[str, Decimal], b: dict[str, Decimal]) -> dict[str, Decimal]:
    return {k: a.get(k, Decimal(0)) + b.get(k, Decimal(0)) for k in {*a, *b}}


# ---- the simulated cluster's side ---------------------------------------------------------------------------------

def _workloads(cluster, namespace: str) -> list[tuple[str, dict]]:
    """(kind, object) of the namespace's workloads in creation order."""
    found = [(kind, obj) for plural, kind in WORKLOADS for obj in cluster.store.list(APPS, plural, namespace)]
    return sorted(found, key=lambda ko: (ko[1]["metadata"].get("creationTimestamp", ""), ko[0],
                                         ko[1]["metadata"]["name"]))


def _replicas(cluster, namespace: str, kind: str, obj: dict) -> int:
    if kind == "DaemonSet":
        return len(cluster.store.list("api/v1", "nodes"))
    want = (obj.get("spec") or {}).get("replicas", 1)
    for hpa in cluster.store.list("apis/autoscaling/v2", "horizontalpodautoscalers", namespace):
        target = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
        if (target.get("kind"), target.get("name")) == (kind, obj["metadata"]["name"]):
            want = max(want, (hpa.get("spec") or {}).get("minReplicas", 1))
    return want


def _pod_name(kind: str, obj: dict) -> str:
    name = obj["metadata"]["name"]
    if kind == "Deployment":  # the ReplicaSet's name carries the pod-template-hash
        digest = hashlib.sha256(json.dumps(obj["spec"].get("template"), sort_keys=True).encode()).hexdigest()[:10]
        return f"{name}-{digest}-"
    return f"{name}-0" if kind == "StatefulSet" else f"{name}-"


def _owner(cluster, namespace: str, pod: dict) -> tuple[str, dict] | None:
    for kind, obj in _workloads(cluster, namespace):
        if (obj.get("spec") or {}).get("template") == pod:
            return kind, obj
    return None


def _forbidden(pod: dict, message: str) -> str:
    name = (pod.get("metadata") or {}).get("generateName") or (pod.get("metadata") or {}).get("name") or ""
    return f'pods "{name}" is forbidden: {message}'


def limit_ranger_defaults(cluster, namespace: str, pod: dict) -> None:
    """Mutating, before the webhooks: name the pod as its controller does and apply the LimitRange defaults."""
    owner = _owner(cluster, namespace, pod)
    meta = pod.setdefault("metadata", {})
    if owner is not None:
        kind, obj = owner
        meta["generateName" if not kind == "StatefulSet" else "name"] = _pod_name(kind, obj)
        meta.setdefault("annotations", {})[OWNER] = f"{kind}/{obj['metadata']['name']}"
    apply_limit_range_defaults(cluster.store.list("api/v1", "limitranges", namespace), pod.setdefault("spec", {}))
    return None


limit_ranger_defaults.MUTATING = True
limit_ranger_defaults.ORDER = -1


def limit_ranger(cluster, namespace: str, pod: dict) -> str | None:
    """Validating: every container (injected ones too) within each LimitRange; then the pod's own validation."""
    errors = limit_range_problems(cluster.store.list("api/v1", "limitranges", namespace), pod.get("spec") or {})
    if errors:
        return _forbidden(pod, errors[0] if len(errors) == 1 else f"[{', '.join(errors)}]")
    invalid = request_over_limit(pod.get("spec") or {})
    if invalid:
        name = (pod.get("metadata") or {}).get("generateName") or (pod.get("metadata") or {}).get("name") or ""
        return f'Pod "{name}" is invalid: {invalid}'
    return None


def resource_quota(cluster, namespace: str, pod: dict) -> str | None:
    """Validating, last: each quota of the namespace must see the requests and limits it tracks, and have room for
    the workload's pods beside those of the workloads created before it."""
    quotas = cluster.store.list("api/v1", "resourcequotas", namespace)
    if not quotas:
        return None
    spec = pod.get("spec") or {}
    for quota in quotas:
        if message := quota_constraints(quota, spec):
            return _forbidden(pod, message)
    me = ((pod.get("metadata") or {}).get("annotations") or {}).get(OWNER)
    used: dict[str, Decimal] = {}
    mine = pod_usage(spec)
    replicas = 1
    for kind, obj in _workloads(cluster, namespace):
        if f"{kind}/{obj['metadata']['name']}" == me:
            replicas = _replicas(cluster, namespace, kind, obj)
            break
        other, refused = _admitted(cluster, namespace, obj)
        if refused:
            continue
        usage = replicas_pods(pod_usage(other.get("spec") or {}), _replicas(cluster, namespace, kind, obj))
        if not any(quota_excess(q, used, usage) for q in quotas):
            used = add(used, usage)
    for quota in quotas:
        if message := quota_excess(quota, used, replicas_pods(mine, replicas)):
            return _forbidden(pod, message)
    return None


resource_quota.ORDER = 1


def _admitted(cluster, namespace: str, workload: dict) -> tuple[dict, bool]:
    """A workload's pod through every admission step but the quota (the quota counts only admitted pods).

    Admission runs for every workload at every refresh, and the quota asks this of every workload before it: the
    answers are kept while the store is unchanged (Store.version counts every write), or the simulated API server
    slows down under it."""
    cache = getattr(cluster, "_quota_admitted", None)
    if cache is None or cache[0] != cluster.store.version:
        cache = cluster._quota_admitted = (cluster.store.version, {})
    key = (namespace, workload["metadata"].get("uid"), workload["metadata"].get("resourceVersion"))
    if key in cache[1]:
        return cache[1][key]
    pod, refused = copy.deepcopy((workload.get("spec") or {}).get("template") or {}), False
    for fn in admission_chain():
        if fn is not resource_quota and fn(cluster, namespace, pod):
            refused = True
            break
    cache[1][key] = (pod, refused)
    return pod, refused


ADMISSION.extend([limit_ranger_defaults, limit_ranger, resource_quota])
