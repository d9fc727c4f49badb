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
from typing import Callable

CONTROLLERS: list[Callable] = []
ADMISSION: list[Callable] = []


def pod_rejection(cluster, namespace: str, template: dict) -> str | None:
    """The first admission refusal for a pod made from `template` in `namespace`, or None when it would be created."""
    pod = copy.deepcopy(template)
    ordered = sorted(ADMISSION, key=lambda fn: not getattr(fn, "MUTATING", False))
    for fn in ordered:
        message = fn(cluster, namespace, pod)
        if message:
            return message
    return None


def run_controllers(cluster) -> None:
    for fn in CONTROLLERS:
        fn(cluster)
