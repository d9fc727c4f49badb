"""What the catalogue stacks' own controllers and admission webhooks do in a simulated cluster, registered here so
that each stack's behaviour lives in its own module (tests/sim/sim_stack_<name>.py) and SimCluster only runs them.

- CONTROLLERS: `fn(cluster)`, run at every refresh under the store's lock, after the generic controllers: e.g.
  Gatekeeper compiling a ConstraintTemplate into its constraint CRD, the sealed-secrets controller unsealing.
- ADMISSION: `fn(cluster, namespace, pod_template) -> str | None`, what the API server's admission (LimitRange,
  ResourceQuota, a validating webhook) or a mutating webhook (Istio's sidecar injector) says about the pods a workload
  would create: a message means the workload's controller cannot create its pods (the ReplicaSet records
  `FailedCreate` with the API server's "forbidden: ..." message) and the workload never gets ready, as for real.
  A mutating entry returns None and changes `pod_template` (a deep copy of the workload's) in place; mutating entries
  run first (MUTATING = True on the function), as the API server runs mutating admission before validating.
"""

from __future__ import annotations

import copy
import json
from typing import Callable

CONTROLLERS: list[Callable] = []
ADMISSION: list[Callable] = []


def admission_chain() -> list[Callable]:
    """ADMISSION in the API server's order: mutating entries first, then validating ones; within each, by ORDER
    (default 0) then registration. Built-in plugins run at their place in the API server's plugin order
    (kube-apiserver --enable-admission-plugins docs: LimitRanger's defaulting before MutatingAdmissionWebhook,
    ResourceQuota last): ORDER -1 for what runs before the webhooks, 1 for what runs after them."""
    return sorted(ADMISSION, key=lambda fn: (not getattr(fn, "MUTATING", False), getattr(fn, "ORDER", 0)))


def pod_rejection(cluster, namespace: str, template: dict) -> str | None:
    """The first admission refusal for a pod made from `template` in `namespace`, or None when it would be created.

    Everything admission reads (LimitRanges, quotas and the workloads they count, constraints, istiod's release) is
    in the cluster's store, so a verdict holds until the store changes (its version): refresh() asks for every
    workload at every API request, and without this a read-only `status` re-judged the same pods hundreds of times."""
    key = (namespace, json.dumps(template, sort_keys=True))
    cache = getattr(cluster, "_admission_verdicts", None)
    if cache is None or cache[0] != cluster.store.version:
        cache = cluster._admission_verdicts = (cluster.store.version, {})
    if key not in cache[1]:
        pod = copy.deepcopy(template)
        cache[1][key] = next((m for fn in admission_chain() if (m := fn(cluster, namespace, pod))), None)
    return cache[1][key]


def run_controllers(cluster) -> None:
    for fn in CONTROLLERS:
        fn(cluster)


# The stacks' simulated controllers and admission register themselves on import (one line per module).
import tests.sim.sim_stack_istio  # noqa: E402,F401
import tests.sim.sim_stack_quotas  # noqa: E402,F401
import tests.sim.sim_stack_sealed_secrets  # noqa: E402,F401
import tests.sim.sim_stack_gatekeeper  # noqa: E402,F401
import tests.sim.sim_stack_backup  # noqa: E402,F401
