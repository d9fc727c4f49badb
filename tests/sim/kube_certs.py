"""Throwaway PKI for the fake API servers: a `CertificateAuthority` that issues server certificates for given IP or
DNS names and client certificates for a user and its groups (`admin_client_certificate`: admin.conf's), and
`make_certificates`, a CA with one server certificate.

The simulated lab's clusters use the same CA class (tests/sim/sim_certificates.py: the CA `kubeadm init` makes);
a node's address change is then a certificate that no longer names it.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
from dataclasses import dataclass
from typing import Any


def subject_alt_names(sans: list[str]) -> list:
    """x509 SAN entries: an IPAddress for what parses as an IP, a DNSName for the rest."""
    from cryptography import x509

    alt = []
    for san in sans:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(san)))
        except ValueError:
            alt.append(x509.DNSName(san))
    return alt


@dataclass
class CertificateAuthority:
    """A self-signed EC P-256 CA: its certificate (PEM) and private key."""

    cert_pem: bytes
    key: Any

    @classmethod
    def create(cls, common_name: str, days: int = 1) -> CertificateAuthority:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=days))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(key, hashes.SHA256()))
        return cls(cert.public_bytes(serialization.Encoding.PEM), key)

    def issue(self, common_name: str, sans: list[str] = (), organizations: list[str] = ()) -> tuple[bytes, bytes]:
        """(cert PEM, key PEM) signed by this CA, valid for a day; `sans` are IPs or DNS names (none: a client
        certificate); `organizations` are the subject's O entries, which the API server takes as the user's groups."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        ca = x509.load_pem_x509_certificate(self.cert_pem)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([*(x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations),
                                            x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
                   .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1)))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(subject_alt_names(sans)), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        pem = serialization.Encoding.PEM
        return cert.public_bytes(pem), key.private_bytes(pem, serialization.PrivateFormat.TraditionalOpenSSL,
                                                         serialization.NoEncryption())

    def spki_hash(self) -> str:
        """kubeadm's discovery-token-ca-cert-hash of this CA."""
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        key = x509.load_pem_x509_certificate(self.cert_pem).public_key()
        return "sha256:" + hashlib.sha256(key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).hexdigest()


# The user kubeadm's admin.conf authenticates as: CN kubernetes-admin in the group kubeadm:cluster-admins, bound to
# cluster-admin (kubeadm >= 1.29; system:masters is left to super-admin.conf — kubeadm CHANGELOG-1.29, "admin.conf
# and super-admin.conf").
ADMIN_USER, ADMIN_GROUP = "kubernetes-admin", "kubeadm:cluster-admins"
User = tuple[str, tuple[str, ...]]  # (name, groups) of whoever sent a request, as the API server authenticated it
ADMIN: User = (ADMIN_USER, (ADMIN_GROUP, "system:authenticated"))


def admin_client_certificate(ca: CertificateAuthority) -> tuple[bytes, bytes]:
    """(cert PEM, key PEM) of admin.conf's user, from this CA."""
    return ca.issue(ADMIN_USER, organizations=[ADMIN_GROUP])


def make_certificates(sans: list[str]) -> tuple[bytes, bytes, bytes]:
    """A throwaway CA and a server certificate for `sans` (IPs or DNS names), PEM encoded: (CA, cert, key)."""
    ca = CertificateAuthority.create("sim-kubernetes-ca")
    cert_pem, key_pem = ca.issue("kube-apiserver", sans)
    return ca.cert_pem, cert_pem, key_pem
