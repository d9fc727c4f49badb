"""SealedSecrets made on the host: Bitnami sealed-secrets' encryption format, with the `cryptography` library.

No Python package implements this format well enough to depend on (PyPI has kubesealpy 1.0.1, an alpha with two
releases that pulls in the `kubernetes` client and httpx), and kubeseal is a Go binary. The format is small and
fixed, so it is implemented here following the controller's own source (bitnami-labs/sealed-secrets, commit
86671a8851be1e6c2dfef4e12e2d7c19ed24ac94, chart 2.18.5 / app 0.36.6):

- pkg/crypto/crypto.go HybridEncrypt: a random 32-byte session key; the session key encrypted with RSA-OAEP
  (SHA-256, label = the scope label); the value encrypted with AES-256-GCM under the session key with an all-zero
  12-byte nonce ("SessionKey is only used once, so zero nonce is ok"); output = 2-byte big-endian length of the RSA
  ciphertext || RSA ciphertext || AES-GCM ciphertext (with its tag).
- pkg/apis/sealedsecrets/v1alpha1/sealedsecret_expansion.go: EncryptionLabel is "namespace/name" for the strict
  scope, "namespace" for namespace-wide, "" for cluster-wide; the scope is told by the annotations
  sealedsecrets.bitnami.com/namespace-wide or /cluster-wide = "true" (UpdateScopeAnnotations), which the controller
  reads from the SealedSecret's own metadata to pick the label when it decrypts; NewSealedSecret encrypts each value
  of the Secret separately into spec.encryptedData (base64, standard encoding) and copies the Secret's metadata and
  type into spec.template.
- pkg/kubeseal/kubeseal.go openCertCluster: the certificate comes from the controller's /v1/cert.pem through the
  API server's service proxy (`ProxyGet("http", name, portName, "/v1/cert.pem")`); pkg/controller/server.go serves
  there the certificate of the key the controller seals with (its newest key, keyregistry.go getCert).

Sealing is randomized (a new session key per value): two sealings of one value never compare equal, so whether a
SealedSecret holds the right value can only be told from the Secret the controller unsealed.
"""

from __future__ import annotations

import base64
import os
import re
from typing import TYPE_CHECKING, Literal

from .errors import LabctlError

if TYPE_CHECKING:
    from .kube.client import Kube

API_VERSION = "bitnami.com/v1alpha1"
KIND = "SealedSecret"
Scope = Literal["strict", "namespace-wide", "cluster-wide"]
SCOPES: tuple[Scope, ...] = ("strict", "namespace-wide", "cluster-wide")
SCOPE_ANNOTATIONS = {"namespace-wide": "sealedsecrets.bitnami.com/namespace-wide",
                     "cluster-wide": "sealedsecrets.bitnami.com/cluster-wide"}
SESSION_KEY_BYTES = 32  # crypto.go sessionKeyBytes: AES-256
SERVICE_PORT = "http"  # the chart's Service port name (helm/sealed-secrets/templates/service.yaml)
SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+\Z")  # a Secret's data keys (k8s validation IsConfigMapKey)


def encryption_label(namespace: str, name: str, scope: Scope = "strict") -> bytes:
    """The RSA-OAEP label that binds a sealed value to where it may be unsealed (EncryptionLabel)."""
    if scope == "cluster-wide":
        return b""
    if scope == "namespace-wide":
        return namespace.encode()
    return f"{namespace}/{name}".encode()


def hybrid_encrypt(public_key, plaintext: bytes, label: bytes) -> bytes:
    """crypto.go HybridEncrypt: len(RSA ciphertext) as 2 bytes big-endian || RSA-OAEP(SHA-256, label) of a fresh
    32-byte session key || AES-256-GCM(session key, zero nonce) of `plaintext`. `public_key`: an RSA public key."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    session_key = os.urandom(SESSION_KEY_BYTES)
    wrapped = public_key.encrypt(session_key, padding.OAEP(mgf=padding.MGF1(hashes.SHA256()),
                                                           algorithm=hashes.SHA256(), label=label))
    sealed = AESGCM(session_key).encrypt(b"\0" * 12, plaintext, None)  # GCM's standard nonce size is 12 bytes
    return len(wrapped).to_bytes(2, "big") + wrapped + sealed


def public_key(cert_pem: bytes):
    """The RSA public key of the controller's certificate (PEM; the first certificate when several are sent).
    Raises LabctlError when it is not a PEM certificate with an RSA key."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        key = x509.load_pem_x509_certificate(cert_pem).public_key()
    except ValueError as exc:
        raise LabctlError(f"the sealed-secrets controller's certificate does not parse ({exc})") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise LabctlError("the sealed-secrets controller's certificate has no RSA key")
    return key


def seal(secret: dict, cert_pem: bytes, scope: Scope = "strict") -> dict:
    """A SealedSecret (bitnami.com/v1alpha1) for `secret` (a v1 Secret dict with `data` in base64 and/or
    `stringData`), every value encrypted to the certificate's key (NewSealedSecret). The template keeps the
    Secret's name, namespace, labels, annotations and type; scope annotations go on the SealedSecret itself, where
    the controller reads them. Returns the object; its values are unreadable without the controller's private key."""
    key = public_key(cert_pem)
    meta = secret["metadata"]
    namespace, name = meta.get("namespace", ""), meta["name"]
    label = encryption_label(namespace, name, scope)
    values = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
    values.update({k: str(v).encode() for k, v in (secret.get("stringData") or {}).items()})
    template_meta = {k: v for k, v in meta.items() if k in ("name", "namespace", "labels", "annotations") and v}
    annotations = {SCOPE_ANNOTATIONS[scope]: "true"} if scope in SCOPE_ANNOTATIONS else {}
    return {
        "apiVersion": API_VERSION, "kind": KIND,
        "metadata": {"name": name, "namespace": namespace, **({"annotations": annotations} if annotations else {})},
        "spec": {
            "template": {"metadata": template_meta, "type": secret.get("type", "Opaque")},
            "encryptedData": {k: base64.b64encode(hybrid_encrypt(key, v, label)).decode()
                              for k, v in sorted(values.items())},
        },
    }


def fetch_certificate(kube: Kube, namespace: str, name: str) -> bytes:
    """The certificate the controller `namespace/name` seals with: GET its /v1/cert.pem through the API server's
    service proxy, as `kubeseal --fetch-cert` does. Returns PEM bytes.

    Raises KubeError (status set) when the API cannot be asked, the Service is missing (404) or the controller is
    not serving (503: no ready endpoint), with what to do."""
    from .kube.client import KubeError

    rest = kube._client()
    path = f"/api/v1/namespaces/{namespace}/services/http:{name}:{SERVICE_PORT}/proxy/v1/cert.pem"
    what = f"fetch the sealed-secrets certificate from {namespace}/{name}"
    try:
        response = rest.request("GET", path, None, None, None, timeout=kube.request_timeout)
    except Exception as exc:  # noqa: BLE001 - urllib3 connection, TLS and timeout errors have no common base
        raise KubeError(f"{kube.cluster}: {what}: the API server at {rest.server} did not answer ({exc})",
                        hint="is the control plane VM running and at that address? `labctl status` shows both") \
            from None
    if response.status != 200 or b"BEGIN CERTIFICATE" not in (response.data or b""):
        detail = response.message()[:300] if response.status != 200 else "the answer is not a PEM certificate"
        raise KubeError(f"{kube.cluster}: {what}: the controller is not ready ({response.status} {detail})",
                        hint=f"`labctl install --cluster {kube.cluster}` installs it; `labctl status` shows whether "
                        "the sealed-secrets stack is ready", status=response.status)
    return response.data
