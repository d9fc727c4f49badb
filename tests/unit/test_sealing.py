"""labctl/sealing.py: SealedSecrets in the sealed-secrets format (the round trip through an independent decryption
is in tests/sim/test_sim_stack_sealed_secrets.py, where the simulated controller unseals them)."""

from __future__ import annotations

import base64
import datetime

import jsonschema
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID

from labctl import sealing
from labctl.errors import LabctlError
from tests.unit import reference as ref


@pytest.fixture(scope="module")
def keypair():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sealed-secret")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return key, cert.public_bytes(serialization.Encoding.PEM)


def _open(key, blob: bytes, label: bytes) -> bytes:
    n = int.from_bytes(blob[:2], "big")
    session = key.decrypt(blob[2:2 + n], padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(),
                                                       label=label))
    assert len(session) == 32  # AES-256
    return AESGCM(session).decrypt(b"\0" * 12, blob[2 + n:], None)


SECRET = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
          "metadata": {"name": "db", "namespace": "apps", "labels": {"app": "db"}},
          "data": {"password": base64.b64encode(b"hunter2-long").decode()}, "stringData": {"user": "demo"}}


@pytest.mark.parametrize(("scope", "label", "annotation"), [
    ("strict", b"apps/db", None),
    ("namespace-wide", b"apps", "sealedsecrets.bitnami.com/namespace-wide"),
    ("cluster-wide", b"", "sealedsecrets.bitnami.com/cluster-wide")])
def test_sealed_values_open_only_with_the_scope_label_and_the_object_is_valid(keypair, scope, label, annotation):
    key, cert = keypair
    sealed = sealing.seal(SECRET, cert, scope)
    blobs = {k: base64.b64decode(v) for k, v in sealed["spec"]["encryptedData"].items()}
    assert {k: _open(key, b, label) for k, b in blobs.items()} == {"password": b"hunter2-long", "user": b"demo"}
    with pytest.raises(ValueError):
        _open(key, blobs["password"], b"apps/other")
    assert (sealed["metadata"].get("annotations") or {}) == ({annotation: "true"} if annotation else {})
    assert sealed["spec"]["template"] == {"metadata": {"name": "db", "namespace": "apps", "labels": {"app": "db"}},
                                          "type": "Opaque"}
    assert "hunter2-long" not in str(sealed) and base64.b64encode(b"hunter2-long").decode() not in str(sealed)
    schema = ref.crd_schema(sealing.API_VERSION, sealing.KIND)
    if schema is None:
        pytest.skip("reference/crd-schemas/bitnami.com not beside the checkout")
    assert list(jsonschema.Draft7Validator(schema).iter_errors(sealed)) == []


def test_sealing_is_randomized(keypair):
    _, cert = keypair
    a, b = (sealing.seal(SECRET, cert)["spec"]["encryptedData"]["password"] for _ in range(2))
    assert a != b


def test_a_certificate_that_does_not_parse_is_a_clear_error():
    with pytest.raises(LabctlError, match="certificate does not parse"):
        sealing.seal(SECRET, b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
