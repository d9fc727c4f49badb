"""The sealed-secrets controller in a simulated cluster (a CONTROLLERS entry, tests/sim/sim_stack_controllers.py).

What the real controller does (bitnami-labs/sealed-secrets at 86671a8851be1e6c2dfef4e12e2d7c19ed24ac94), once its
Deployment (the chart's, made by the simulated Helm) is ready:

- Key: with no Secret labelled `sealedsecrets.bitnami.com/sealed-secrets-key=active` in its namespace it generates
  one (pkg/controller/keys.go writeKey: type kubernetes.io/tls, generateName `sealed-secrets-key`, tls.crt = the
  self-signed certificate, tls.key = PKCS#1 private key; CN "sealed-secret"). The real key is 4096-bit RSA
  (crypto.go GeneratePrivateKeyAndCert with the --key-size default); here 2048 bits, for the tests' speed: the
  format does not depend on the size (the RSA ciphertext's length is in the first 2 bytes).
- /v1/cert.pem (pkg/controller/server.go) through the API server's service proxy, on the Service of the chart's
  name: the newest key's certificate; 503 "no endpoints available" while the Deployment has no ready replica, 404
  when there is no such Service (the release is not installed).
- Unsealing (pkg/controller/controller.go unseal, sealedsecret_expansion.go Unseal): for each SealedSecret whose
  generation it has not seen yet, or whose Secret is gone (the lab's values set watchForSecrets), decrypt every
  encryptedData value with the RSA-OAEP label of the SealedSecret's own scope annotations and create or update the
  Secret: the template's metadata and type, owner reference to the SealedSecret (controller: true). A value that
  does not decrypt (another key, another name/namespace) gives status condition Synced=False with the error and no
  Secret; a Secret of that name that the controller does not own is refused ("Resource %q already exists and is not
  managed by SealedSecret"). Success: Synced=True, observedGeneration = generation.

The decryption is written here from the Go source (crypto.go singleDecrypt), independently of labctl/sealing.py,
so a sealing mistake in labctl fails here as it would on the real controller.
"""

from __future__ import annotations

import base64
import datetime
import functools
import secrets as _random

from tests.sim.kube_resources import APPS
from tests.sim.kube_store import timestamp
from tests.sim.sim_stack_controllers import CONTROLLERS

KEY_LABEL = "sealedsecrets.bitnami.com/sealed-secrets-key"
SS_PREFIX, SS_PLURAL = "apis/bitnami.com/v1alpha1", "sealedsecrets"
CHART = "sealed-secrets"
KEY_BITS = 2048  # the real controller: 4096 (see the module docstring)


def _controllers(store) -> list[dict]:
    """The sealed-secrets controller Deployments (by the chart label the simulated Helm sets)."""
    return [d for d in store.list(APPS, "deployments")
            if (d["metadata"].get("labels") or {}).get("helm.sh/chart", "").startswith(f"{CHART}-")]


def _ready(deployment: dict) -> bool:
    return bool((deployment.get("status") or {}).get("readyReplicas"))


def _generate_key(store, namespace: str) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sealed-secret")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=3650)).sign(key, hashes.SHA256()))
    pem_key = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    pem_cert = cert.public_bytes(serialization.Encoding.PEM)
    store.put("api/v1", "secrets", {
        "metadata": {"name": f"sealed-secrets-key{_random.token_hex(3)[:5]}", "labels": {KEY_LABEL: "active"}},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": base64.b64encode(pem_cert).decode(), "tls.key": base64.b64encode(pem_key).decode()},
    }, namespace)


@functools.lru_cache(maxsize=32)
def _private_key(pem_b64: str):
    """Parsed once: loading an RSA key checks it (tens of ms), and the controllers run at every API request."""
    from cryptography.hazmat.primitives import serialization

    return serialization.load_pem_private_key(base64.b64decode(pem_b64), password=None)


def _key_secrets(store, namespace: str) -> list[dict]:
    return [s for s in store.list("api/v1", "secrets", namespace)
            if (s["metadata"].get("labels") or {}).get(KEY_LABEL) == "active"]


def _keys(store, namespace: str) -> list[tuple[str, object, bytes]]:
    """(creationTimestamp, private key, certificate PEM) of the active keys, oldest first."""
    out = [(s["metadata"]["creationTimestamp"], _private_key(s["data"]["tls.key"]),
            base64.b64decode(s["data"]["tls.crt"])) for s in _key_secrets(store, namespace)]
    return sorted(out, key=lambda k: k[0])


def decrypt(private_key, ciphertext: bytes, label: bytes) -> bytes:
    """crypto.go singleDecrypt: 2-byte big-endian RSA length, RSA-OAEP(SHA-256, label) session key, AES-256-GCM
    with a zero nonce. Raises ValueError (any failure: too short, wrong key or label, tampered)."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if len(ciphertext) < 2:
        raise ValueError("SealedSecret data is too short")
    rsa_len = int.from_bytes(ciphertext[:2], "big")
    if len(ciphertext) < rsa_len + 2:
        raise ValueError("SealedSecret data is too short")
    session = private_key.decrypt(ciphertext[2:rsa_len + 2], padding.OAEP(
        mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=label))
    try:
        return AESGCM(session).decrypt(b"\0" * 12, ciphertext[rsa_len + 2:], None)
    except InvalidTag:
        raise ValueError("cipher: message authentication failed") from None


def _label(sealed: dict) -> bytes:
    """labelFor(SealedSecret metadata): the scope annotations on the SealedSecret itself."""
    meta = sealed["metadata"]
    annotations = meta.get("annotations") or {}
    if annotations.get("sealedsecrets.bitnami.com/cluster-wide") == "true":
        return b""
    if annotations.get("sealedsecrets.bitnami.com/namespace-wide") == "true":
        return meta["namespace"].encode()
    return f"{meta['namespace']}/{meta['name']}".encode()


def unseal(sealed: dict, keys: list) -> dict[str, bytes]:
    """The decrypted values (HybridDecrypt tries every key). Raises ValueError with the controller's wording."""
    label, out, errors = _label(sealed), {}, []
    for name, value in sorted(((sealed.get("spec") or {}).get("encryptedData") or {}).items()):
        for _, key, _ in keys:
            try:
                out[name] = decrypt(key, base64.b64decode(value), label)
                break
            except ValueError:
                continue
        else:
            errors.append(f"{name}: no key could decrypt secret")
    if errors:
        raise ValueError(", ".join(errors))
    return out


def _status(store, sealed: dict, error: str | None) -> None:
    meta = sealed["metadata"]
    sealed["status"] = {"observedGeneration": meta.get("generation", 1), "conditions": [{
        "type": "Synced", "status": "False" if error else "True", "message": error or "",
        "lastUpdateTime": timestamp(), "lastTransitionTime": timestamp()}]}
    store.put(SS_PREFIX, SS_PLURAL, sealed, meta["namespace"])


def _owned(secret: dict, sealed: dict) -> bool:
    return any(o.get("kind") == "SealedSecret" and o.get("uid") == sealed["metadata"]["uid"] and o.get("controller")
               for o in secret["metadata"].get("ownerReferences") or [])


def _reconcile(store, sealed: dict, keys) -> None:
    meta = sealed["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    live = store.get("api/v1", "secrets", name, namespace)
    seen = (sealed.get("status") or {}).get("observedGeneration") == meta.get("generation", 1)
    if seen and (live is not None or any(c.get("status") == "False"
                                          for c in sealed["status"].get("conditions") or [])):
        return
    try:
        values = unseal(sealed, keys())
    except ValueError as exc:
        return _status(store, sealed, str(exc))
    managed = (live or {}).get("metadata", {}).get("annotations", {}) or {}
    if live is not None and not _owned(live, sealed) and managed.get("sealedsecrets.bitnami.com/managed") != "true":
        return _status(store, sealed, f'failed update: Resource "{name}" already exists and is not managed by '
                                      "SealedSecret")
    template = (sealed.get("spec") or {}).get("template") or {}
    tmeta = template.get("metadata") or {}
    secret = dict(live or {"metadata": {"name": name}})
    secret["metadata"] = {**secret["metadata"], "labels": dict(tmeta.get("labels") or {}),
                          "annotations": dict(tmeta.get("annotations") or {}),
                          "ownerReferences": [{"apiVersion": "bitnami.com/v1alpha1", "kind": "SealedSecret",
                                               "name": name, "uid": meta["uid"], "controller": True}]}
    secret["type"] = template.get("type") or "Opaque"
    secret["data"] = {k: base64.b64encode(v).decode() for k, v in values.items()}
    store.put("api/v1", "secrets", secret, namespace)
    _status(store, sealed, None)


def _proxy(store, namespace: str, name: str):
    def handler(method: str, path: str) -> tuple[int, object]:
        deployment = store.get(APPS, "deployments", name, namespace)
        if deployment is None:
            return 404, f'services "{name}" not found'
        keys = _keys(store, namespace) if _ready(deployment) else []
        if not keys:
            return 503, f'no endpoints available for service "{name}"'
        if method != "GET" or path != "/v1/cert.pem":
            return 404, "404 page not found"
        return 200, keys[-1][2].decode()  # the newest key's certificate (keyregistry.go getCert)

    return handler


def sealed_secrets(cluster) -> None:
    store = cluster.store
    deployments = _controllers(store)
    server = getattr(cluster, "server", None)
    for d in deployments:
        namespace, name = d["metadata"]["namespace"], d["metadata"]["name"]
        if server is not None:
            server.proxied[(namespace, name)] = _proxy(store, namespace, name)
    running = [d for d in deployments if _ready(d)]
    if not running or store.resource(SS_PREFIX, SS_PLURAL) is None:
        return
    namespace = running[0]["metadata"]["namespace"]
    if not _key_secrets(store, namespace):
        _generate_key(store, namespace)
    for sealed in store.list(SS_PREFIX, SS_PLURAL):
        _reconcile(store, sealed, lambda: _keys(store, namespace))


CONTROLLERS.append(sealed_secrets)
