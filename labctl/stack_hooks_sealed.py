"""The `sealed-credentials` hook: a stack's `sealed: true` credentials reach the cluster only as SealedSecrets.

problems(): for each sealed credential, the Secret the controller unsealed is there, is the controller's (owned by
            its SealedSecret) and holds the lab's stored values. Sealing is randomized, so this is the only way to
            tell whether the SealedSecret is right; a lab that holds changes nothing on a second run.
apply():    once the controller is deployed: fetch its certificate (labctl/sealing.py: /v1/cert.pem through the
            service proxy, the certificate it seals with, and no private key ever leaves the cluster), seal each
            credential that is wrong, server-side apply the SealedSecret, and wait until the controller unsealed it.
            Before the release exists (the stacks phase runs hooks first) it does nothing: the phase runs hooks
            again while it waits for the stack to be ready.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import credentials, sealing
from .errors import StepError
from .stack_hooks import Hook
from .stacks import STACK_LABEL

if TYPE_CHECKING:
    from .context import Context
    from .kube.client import Kube
    from .model import Cluster
    from .stacks import Credential, StackDef

UNSEAL_WAIT = 120  # seconds: the controller unseals within a second of seeing a SealedSecret
CERT_WAIT = 300  # seconds: a controller that was just installed generates its first key (4096-bit RSA) at start


def controller(stack: StackDef) -> tuple[str, str]:
    """(namespace, name) of the stack's sealed-secrets controller: its release (the chart names the Deployment and
    the Service after it, reference/charts/sealed-secrets/workloads.txt)."""
    release = next(r for r in stack.releases if r.chart == "sealed-secrets")
    return release.namespace, release.release


def _owned_by_sealed_secret(live: dict) -> bool:
    name = live["metadata"]["name"]
    return any(o.get("kind") == sealing.KIND and o.get("name") == name and o.get("controller")
               for o in live["metadata"].get("ownerReferences") or [])


def _synced_false(kube: Kube, cred: Credential) -> str | None:
    """The controller's message when it could not unseal this SealedSecret (status condition Synced=False)."""
    obj = kube.get(sealing.API_VERSION, sealing.KIND, cred.namespace, cred.secret)
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == "Synced" and c.get("status") == "False":
            return c.get("message") or "no message"
    return None


class SealedCredentials(Hook):
    name = "sealed-credentials"

    def _problem(self, kube: Kube, cred: Credential, entry: dict | None) -> str | None:
        where = f"{cred.namespace}/{cred.secret}"
        live = kube.get("v1", "Secret", cred.namespace, cred.secret)
        if live is None:
            return f"{cred.name} credentials: SealedSecret {where} not unsealed (missing)"
        if not _owned_by_sealed_secret(live):
            return f"{cred.name} credentials: Secret {where} is a plain Secret, not unsealed from a SealedSecret"
        if entry is None or not credentials.secret_matches(cred, entry, live):
            return f"{cred.name} credentials: the Secret unsealed from SealedSecret {where} does not hold them"
        return None

    def _stale(self, ctx: Context, cluster: Cluster, stack: StackDef) -> list[tuple[Credential, str]]:
        kube = ctx.kube(cluster)
        stored = credentials.read_all(ctx.state).get(cluster.name, {})  # read only: a check generates nothing
        return [(c, p) for c in stack.credentials if c.sealed
                if (p := self._problem(kube, c, stored.get(c.name)))]

    def problems(self, ctx: Context, cluster: Cluster, stack: StackDef) -> list[str]:
        return [p for _, p in self._stale(ctx, cluster, stack)]

    def apply(self, ctx: Context, cluster: Cluster, stack: StackDef) -> None:
        kube = ctx.kube(cluster)
        namespace, name = controller(stack)
        if kube.get("apps/v1", "Deployment", namespace, name) is None:
            return  # not installed yet: the stacks phase calls again once the release is there
        holder: dict[str, bytes] = {}

        def served() -> tuple[bool, str]:
            holder["cert"] = sealing.fetch_certificate(kube, namespace, name)  # a KubeError means "not yet"
            return True, "serving"

        kube.wait_for(f"the sealed-secrets controller {namespace}/{name} to serve its certificate", served,
                      timeout=CERT_WAIT)
        stale = self._stale(ctx, cluster, stack)
        for cred, _ in stale:
            live = kube.get("v1", "Secret", cred.namespace, cred.secret)
            if live is not None and not _owned_by_sealed_secret(live):
                if (live["metadata"].get("labels") or {}).get(STACK_LABEL) != stack.name:
                    raise StepError(
                        f"{cluster.name}: Secret {cred.namespace}/{cred.secret} exists and is not the sealed-secrets "
                        "controller's, so it would refuse to unseal the demo credentials into it",
                        hint=f"delete it (`kubectl -n {cred.namespace} delete secret {cred.secret}`) and run "
                        "`labctl install` again")
                kube.delete("v1", "Secret", cred.namespace, cred.secret)  # a plain copy labctl itself once wrote
            entry = credentials.ensure(ctx.state, cluster.name, cred)
            secret = credentials.secret_object(cred, entry, stack.name)
            ctx.note(f"{cluster.name}: {stack.name}: sealing {cred.name} credentials into SealedSecret "
                     f"{cred.namespace}/{cred.secret}")
            kube.apply(sealing.seal(secret, holder["cert"]))

        def unsealed() -> tuple[bool, str]:
            waiting = []
            for cred, _ in stale:
                message = _synced_false(kube, cred)
                if message:
                    raise StepError(f"{cluster.name}: the sealed-secrets controller cannot unseal "
                                    f"{cred.namespace}/{cred.secret}: {message}",
                                    hint=f"`kubectl -n {namespace} logs deploy/{name}` tells more")
                entry = credentials.read_all(ctx.state)[cluster.name][cred.name]
                if self._problem(kube, cred, entry):
                    waiting.append(f"{cred.namespace}/{cred.secret}")
            return not waiting, "not unsealed yet: " + ", ".join(waiting)

        if stale:
            kube.wait_for("the sealed-secrets controller to unseal the demo credentials", unsealed,
                          timeout=UNSEAL_WAIT, interval=1)

