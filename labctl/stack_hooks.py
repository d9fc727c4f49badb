"""The few things a stack needs that are not a chart or a manifest: named hooks a descriptor lists under `hooks`.

A hook is looked at like everything else: `problems()` reads the live world (read-only, [] when all is well) and
`apply()` fixes it, safe to repeat. The stacks phase runs hooks after the stack's releases and manifests, before it
waits for the ready objects (metrics-server becomes ready only once the kubelets' serving certificates exist).
"""

from __future__ import annotations

import base64
import ipaddress
import json
from typing import TYPE_CHECKING

from .stacks import STACK_LABEL

if TYPE_CHECKING:
    from .context import Context
    from .model import Cluster
    from .stacks import StackDef

KUBELET_SERVING = "kubernetes.io/kubelet-serving"
CSR_API = "certificates.k8s.io/v1"
ARGOCD_CLUSTER_LABEL = "argocd.argoproj.io/secret-type"


class Hook:
    name = ""
    cross_cluster = False  # waits for the other clusters' API servers (engine: Phase.cross_cluster)

    def problems(self, ctx: Context, cluster: Cluster, stack: StackDef) -> list[str]:  # pragma: no cover
        raise NotImplementedError

    def apply(self, ctx: Context, cluster: Cluster, stack: StackDef) -> None:  # pragma: no cover
        raise NotImplementedError


# ---- kubelet serving certificates ---------------------------------------------------------------------------------

def _pending(csr: dict) -> bool:
    conditions = (csr.get("status") or {}).get("conditions") or []
    return not any(c.get("type") in ("Approved", "Denied", "Failed") for c in conditions)


def csr_verdict(csr: dict, addresses: dict[str, set[str]]) -> tuple[bool, str]:
    """May labctl approve this kubelet-serving CSR? (approve, why).

    `addresses`: node name → the addresses that node really has (provider and Node status). Approved only when the
    requester is `system:node:<n>` for a node of this cluster, the subject names that node in group system:nodes,
    and every SAN is the node's name or one of its addresses: exactly what kube-controller-manager's own signer
    would issue, but never for a name or address that belongs to someone else (Kubernetes' docs say not to
    auto-approve kubelet-serving CSRs without these checks)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    spec = csr.get("spec") or {}
    name = csr.get("metadata", {}).get("name", "?")
    user = spec.get("username", "")
    node = user.removeprefix("system:node:")
    if not user.startswith("system:node:") or node not in addresses:
        return False, f"CSR {name}: requested by {user!r}, not by a node of this cluster"
    try:
        req = x509.load_pem_x509_csr(base64.b64decode(spec.get("request", "")))
    except ValueError as exc:
        return False, f"CSR {name}: the request does not parse ({exc})"
    cn = [a.value for a in req.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    org = [a.value for a in req.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    if cn != [user] or org != ["system:nodes"]:
        return False, f"CSR {name}: subject CN={cn} O={org} is not {user} in system:nodes"
    try:
        sans = req.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False, f"CSR {name}: no subject alternative names"
    dns = set(sans.get_values_for_type(x509.DNSName))
    ips = {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    if not dns <= {node} or not ips <= addresses[node] or not (dns or ips):
        return False, f"CSR {name}: asks for {sorted(dns | ips)}, but {node} is {sorted({node} | addresses[node])}"
    return True, f"CSR {name}: {node} {sorted(dns | ips)}"


class KubeletServingCsrs(Hook):
    """Approve the kubelet-serving CSRs of this cluster's own nodes (kubelet `serverTLSBootstrap: true`)."""

    name = "kubelet-serving-csrs"

    def _csrs(self, ctx: Context, cluster: Cluster) -> list[dict]:
        items = ctx.kube(cluster).list(CSR_API, "CertificateSigningRequest")
        return [c for c in items if (c.get("spec") or {}).get("signerName") == KUBELET_SERVING and _pending(c)]

    def _addresses(self, ctx: Context, cluster: Cluster) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {n.name: set() for n in cluster.nodes}
        for info in ctx.kube(cluster).nodes():
            if info.name in out and info.internal_ip:
                out[info.name].add(info.internal_ip)
        for node in cluster.nodes:
            address = ctx.address(node)
            if address:
                out[node.name].add(address)
        return {k: {str(ipaddress.ip_address(a)) for a in v} for k, v in out.items()}

    def problems(self, ctx: Context, cluster: Cluster, stack: StackDef) -> list[str]:
        pending = self._csrs(ctx, cluster)
        return [f"{len(pending)} kubelet-serving CSR(s) waiting for approval"] if pending else []

    def apply(self, ctx: Context, cluster: Cluster, stack: StackDef) -> None:
        kube = ctx.kube(cluster)
        addresses = self._addresses(ctx, cluster)
        for csr in self._csrs(ctx, cluster):
            approve, why = csr_verdict(csr, addresses)
            if not approve:
                ctx.note(f"{cluster.name}: not approving {why}")
                continue
            status = dict(csr.get("status") or {})
            status["conditions"] = [*(status.get("conditions") or []), {
                "type": "Approved", "status": "True", "reason": "LabctlApprove",
                "message": "labctl: the node's own name and addresses"}]
            name = csr["metadata"]["name"]
            kube._call(f"approve CSR {name}", "PUT",
                       f"/apis/certificates.k8s.io/v1/certificatesigningrequests/{name}/approval",
                       body={**csr, "status": status}, content_type="application/json")
            ctx.note(f"{cluster.name}: approved {why}")


# ---- Argo CD destinations ------------------------------------------------------------------------------------------

class ArgocdDestinations(Hook):
    """Register the lab's other clusters in Argo CD (cluster Secrets), reached at their API addresses."""

    name = "argocd-destinations"
    cross_cluster = True

    def wanted(self, ctx: Context, cluster: Cluster, stack: StackDef) -> list[dict]:
        """One cluster Secret per other lab cluster that has a kubeconfig (i.e. is installed)."""
        from .kube import kubeconfig

        out = []
        for other in ctx.lab.clusters:
            if other.name == cluster.name:
                continue
            config = kubeconfig.read(ctx.state, other.name)
            if config is None:
                continue
            entry = config["clusters"][0]["cluster"]
            user = config["users"][0]["user"]
            tls = {"caData": entry.get("certificate-authority-data", ""),
                   "certData": user.get("client-certificate-data", ""), "keyData": user.get("client-key-data", "")}
            data = {"name": other.name, "server": entry["server"],
                    "config": json.dumps({"tlsClientConfig": tls}, sort_keys=True)}
            out.append({
                "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": f"cluster-{other.name}", "namespace": stack.namespace,
                             "labels": {ARGOCD_CLUSTER_LABEL: "cluster", STACK_LABEL: stack.name}},
                "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
            })
        return out

    def stale(self, ctx: Context, cluster: Cluster, stack: StackDef, wanted: list[dict]) -> list[str]:
        """The cluster Secrets labctl made for clusters that are gone (destroyed, or no longer in clusters.json):
        they still hold that cluster's admin client key."""
        names = {o["metadata"]["name"] for o in wanted}
        mine = ctx.kube(cluster).list("v1", "Secret", stack.namespace,
                                      f"{ARGOCD_CLUSTER_LABEL}=cluster,{STACK_LABEL}={stack.name}")
        return sorted(s["metadata"]["name"] for s in mine if s["metadata"]["name"] not in names)

    def problems(self, ctx: Context, cluster: Cluster, stack: StackDef) -> list[str]:
        kube = ctx.kube(cluster)
        wanted = self.wanted(ctx, cluster, stack)
        out = [f"Argo CD destination {name.removeprefix('cluster-')} is gone from the lab but still registered"
               for name in self.stale(ctx, cluster, stack, wanted)]
        for obj in wanted:
            live = kube.get("v1", "Secret", stack.namespace, obj["metadata"]["name"])
            if live is None or (live.get("data") or {}) != obj["data"]:
                out.append(f"Argo CD destination {obj['metadata']['name'].removeprefix('cluster-')} not registered "
                           "(or out of date)")
        return out

    def apply(self, ctx: Context, cluster: Cluster, stack: StackDef) -> None:
        kube = ctx.kube(cluster)
        wanted = self.wanted(ctx, cluster, stack)
        for obj in wanted:
            kube.apply(obj)
        for name in self.stale(ctx, cluster, stack, wanted):
            kube.delete("v1", "Secret", stack.namespace, name)


from .stack_hooks_sealed import SealedCredentials  # noqa: E402  (its module imports Hook from here)
from .stack_hooks_registry import RegistryHosts  # noqa: E402  (its module imports Hook from here)
from .stack_hooks_backup import HOOKS as BACKUP_HOOKS  # noqa: E402  (its module imports Hook from here)

HOOKS: dict[str, Hook] = {h.name: h for h in (KubeletServingCsrs(), ArgocdDestinations(), SealedCredentials(),
                                               RegistryHosts(), *BACKUP_HOOKS)}
