"""Certificates in a simulated cluster, and what depends on them.

- `cluster_ca`: the CA `kubeadm init` makes, one per cluster, kept across API server restarts (kubeadm keeps it).
- `KubeletCertificates`, part of SimCluster: a joining kubelet's client CSR is approved and issued at once. With
  `serverTLSBootstrap: true` in the KubeletConfiguration of the init config labctl put, each kubelet files a
  kubelet-serving CSR (a real PEM request for its name and InternalIP) once it posts status, and a new one when its
  address changed; the signer issues what was approved (the `approval` subresource), and the kubelet serves only its
  current CSR's certificate.
- metrics-server scrapes only the kubelets that serve a certificate naming their current address (`scrapable`);
  `metrics_api` is metrics.k8s.io/v1beta1 as it serves it, behind its APIService.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import random
import uuid
from typing import TYPE_CHECKING

from tests.sim.kube_certs import CertificateAuthority
from tests.sim.kube_requests import GENERATE_ALPHABET
from tests.sim.kube_resources import CSR_PREFIX, CSRS, NOT_FOUND, ApiError
from tests.sim.kube_store import timestamp

if TYPE_CHECKING:
    from tests.sim.sim_node import SimNode

KUBELET_SERVING = "kubernetes.io/kubelet-serving"
KUBELET_CLIENT = "kubernetes.io/kube-apiserver-client-kubelet"


def cluster_ca(cluster: str) -> CertificateAuthority:
    """The cluster CA of `kubeadm init`."""
    return CertificateAuthority.create(f"kubernetes ({cluster}, sim)", days=2)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class KubeletCertificates:
    """The kubelets' certificates of a SimCluster (mixed into it: uses its `store`, `ca`, `nodes`, `lab`, `kubelets`
    and `csr_records`)."""

    def bootstrap_client_csr(self, node: SimNode, token: str) -> None:
        """`kubeadm join`: the kubelet asks for its client certificate with the bootstrap token; kube-controller-
        manager approves and signs it at once (kubeadm's RBAC lets it). Not a serving certificate: labctl must
        leave these alone."""
        with self.store.lock:
            self._new_csr(node, KUBELET_CLIENT, ["digital signature", "client auth"], None,
                          f"system:bootstrap:{token.split('.')[0]}",
                          ["system:bootstrappers", "system:bootstrappers:kubeadm:default-node-token",
                           "system:authenticated"],
                          approved="Auto approving kubelet client certificate after SubjectAccessReview.")

    def _new_csr(self, node: SimNode, signer: str, usages: list[str], ip: str | None, user: str, groups: list[str],
                 approved: str = "") -> dict:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        # the kubelet's template: pkix.Name{CommonName, Organization}, which Go encodes O first
        builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{node.name}")]))
        if ip is not None:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName(node.name), x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
        request = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
        while True:
            name = "csr-" + "".join(random.choice(GENERATE_ALPHABET) for _ in range(5))
            if self.store.get(CSR_PREFIX, CSRS, name) is None:
                break
        obj = {"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
               "metadata": {"name": name, "generateName": "csr-"},
               "spec": {"request": b64(request), "signerName": signer, "usages": usages, "username": user,
                        "groups": groups, "uid": str(uuid.uuid4())},
               "status": {}}
        if approved:
            obj["status"]["conditions"] = [{"type": "Approved", "status": "True", "reason": "AutoApproved",
                                            "message": approved, "lastUpdateTime": timestamp(),
                                            "lastTransitionTime": timestamp()}]
            obj["status"]["certificate"] = b64(self._sign(obj))
        self.csr_records[name] = (node.name, ip)
        return self.store.put(CSR_PREFIX, CSRS, obj)

    def _sign(self, csr: dict) -> bytes:
        """kube-controller-manager's signer: a certificate from the cluster CA for the request's key and names."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.x509.oid import ExtendedKeyUsageOID

        request = x509.load_pem_x509_csr(base64.b64decode(csr["spec"]["request"]))
        ca = x509.load_pem_x509_certificate(self.ca.cert_pem)
        now = datetime.datetime.now(datetime.UTC)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if "server auth" in csr["spec"].get("usages", []) \
            else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (x509.CertificateBuilder().subject_name(request.subject).issuer_name(ca.subject)
                   .public_key(request.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=365))
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        try:
            sans = request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            builder = builder.add_extension(sans, critical=False)
        except x509.ExtensionNotFound:
            pass
        return builder.sign(self.ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    def _kubelet_certificates(self, up: dict[str, bool]) -> None:
        """Kubelets with serverTLSBootstrap ask for a serving certificate once they post status, and again when
        their address changed (the certificate names it); the signer signs what an admin approved. A kubelet takes
        the certificate of its current CSR only."""
        for node in self.nodes:
            if up.get(node.name) and node.serving_bootstrap and node.csr_ip != node.node_ip:
                csr = self._new_csr(node, KUBELET_SERVING, ["digital signature", "server auth"], node.node_ip,
                                    f"system:node:{node.name}", ["system:nodes", "system:authenticated"])
                node.csr_name, node.csr_ip = csr["metadata"]["name"], node.node_ip
        for csr in self.store.list(CSR_PREFIX, CSRS):
            status = csr.get("status") or {}
            verdicts = {c.get("type") for c in status.get("conditions") or [] if c.get("status") == "True"}
            if "Approved" not in verdicts or verdicts & {"Denied", "Failed"} or status.get("certificate"):
                continue
            if csr["spec"].get("signerName") not in (KUBELET_SERVING, KUBELET_CLIENT):
                continue  # no signer for it in this cluster: it stays approved, never issued
            csr["status"] = {**status, "certificate": b64(self._sign(csr))}
            self.store.put(CSR_PREFIX, CSRS, csr)
            node_name, ip = self.csr_records.get(csr["metadata"]["name"], (None, None))
            node = self.lab.nodes.get(node_name)
            if node is not None and node.csr_name == csr["metadata"]["name"]:
                node.serving_cert_ip = ip

    def scrapable(self) -> list[str]:
        """Nodes whose kubelet metrics-server can scrape: it posts status and serves a certificate (from the cluster
        CA) naming its current address (metrics-server runs with --kubelet-preferred-address-types=InternalIP and
        verifies it). Without one the kubelet has no serving certificate at all: the TLS handshake fails."""
        return [n.name for n in self.nodes
                if self.kubelets.get(n.name) and n.serving_cert_ip is not None and n.serving_cert_ip == n.node_ip]

    def metrics_api(self, method: str, rest: list[str], query: dict) -> tuple[int, dict]:
        """metrics.k8s.io/v1beta1 as metrics-server serves it (behind the APIService): NodeMetrics of the nodes it
        scraped; no pods are simulated."""
        if method != "GET":
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        if not rest:
            return 200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "metrics.k8s.io/v1beta1",
                         "resources": [{"name": "nodes", "singularName": "", "namespaced": False, "kind": "NodeMetrics",
                                        "verbs": ["get", "list"]},
                                       {"name": "pods", "singularName": "", "namespaced": True, "kind": "PodMetrics",
                                        "verbs": ["get", "list"]}]}

        def item(name: str) -> dict:
            return {"metadata": {"name": name, "creationTimestamp": timestamp()}, "timestamp": timestamp(),
                    "window": "20.05s", "usage": {"cpu": "123456789n", "memory": "1048576Ki"}}

        nodes = self.scrapable()
        if rest == ["nodes"]:
            return 200, {"kind": "NodeMetricsList", "apiVersion": "metrics.k8s.io/v1beta1", "metadata": {},
                         "items": [item(n) for n in nodes]}
        if len(rest) == 2 and rest[0] == "nodes":
            if rest[1] not in nodes:
                raise ApiError(404, "NotFound", f'nodemetrics.metrics.k8s.io "{rest[1]}" not found')
            return 200, {"kind": "NodeMetrics", "apiVersion": "metrics.k8s.io/v1beta1", **item(rest[1])}
        if rest == ["pods"] or (len(rest) == 3 and rest[0] == "namespaces" and rest[2] == "pods"):
            return 200, {"kind": "PodMetricsList", "apiVersion": "metrics.k8s.io/v1beta1", "metadata": {}, "items": []}
        raise ApiError(404, "NotFound", NOT_FOUND, {})
