"""A small fake Kubernetes API server for the simulated lab: the real kubernetes client talks to it over HTTP(S).

It serves what labctl reads and writes — nodes, pods, deployments, daemonsets, statefulsets, ciliumnodes,
secrets, configmaps, services, evictions — from an in-memory store that the simulated cluster keeps up to date.
It is not a Kubernetes: no controllers, no admission; PATCH is a JSON merge patch (enough for labels, taints,
cordon and server-side apply of the objects labctl sends). Optional TLS with a generated CA and a server
certificate for given IP SANs, so the simulated lab can test what happens when a node's address changes.
"""

from __future__ import annotations

import copy
import datetime
import ipaddress
import json
import re
import ssl
import threading
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

# (api prefix, plural) -> kind; namespaced or not
RESOURCES = {
    ("api/v1", "nodes"): ("Node", False),
    ("api/v1", "namespaces"): ("Namespace", False),
    ("api/v1", "pods"): ("Pod", True),
    ("api/v1", "secrets"): ("Secret", True),
    ("api/v1", "configmaps"): ("ConfigMap", True),
    ("api/v1", "services"): ("Service", True),
    ("apis/apps/v1", "deployments"): ("Deployment", True),
    ("apis/apps/v1", "daemonsets"): ("DaemonSet", True),
    ("apis/apps/v1", "statefulsets"): ("StatefulSet", True),
    ("apis/cilium.io/v2", "ciliumnodes"): ("CiliumNode", False),
    ("apis/apiextensions.k8s.io/v1", "customresourcedefinitions"): ("CustomResourceDefinition", False),
}
PATH = re.compile(
    r"^/(?P<prefix>api/v1|apis/[^/]+/[^/]+)"
    r"(?:/namespaces/(?P<ns>[^/]+)(?=/))?"
    r"/(?P<plural>[a-z]+)(?:/(?P<name>[^/]+))?(?:/(?P<sub>status|eviction))?$"
)


def merge_patch(target, patch):
    """RFC 7386: dicts merge, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


class Store:
    """Objects by (prefix, plural, namespace, name). Thread-safe; counts every request for assertions."""

    def __init__(self):
        self.objects: dict[tuple[str, str, str, str], dict] = {}
        self.lock = threading.RLock()
        self.requests: list[tuple[str, str]] = []
        self.version = 1

    def put(self, prefix: str, plural: str, obj: dict, namespace: str = "") -> dict:
        kind, namespaced = RESOURCES[(prefix, plural)]
        with self.lock:
            meta = obj.setdefault("metadata", {})
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
            if namespaced:
                meta["namespace"] = namespace or meta.get("namespace") or "default"
            self.version += 1
            meta["resourceVersion"] = str(self.version)
            obj.setdefault("apiVersion", prefix.removeprefix("apis/").removeprefix("api/"))
            obj.setdefault("kind", kind)
            self.objects[(prefix, plural, meta.get("namespace", ""), meta["name"])] = obj
            return obj

    def get(self, prefix: str, plural: str, name: str, namespace: str = "") -> dict | None:
        with self.lock:
            return self.objects.get((prefix, plural, namespace, name))

    def list(self, prefix: str, plural: str, namespace: str | None = None) -> list[dict]:
        with self.lock:
            return [o for (p, pl, ns, _), o in sorted(self.objects.items())
                    if p == prefix and pl == plural and (namespace is None or ns == namespace)]

    def delete(self, prefix: str, plural: str, name: str, namespace: str = "") -> dict | None:
        with self.lock:
            return self.objects.pop((prefix, plural, namespace, name), None)


def _selected(obj: dict, query: dict[str, list[str]]) -> bool:
    for sel in query.get("labelSelector", []):
        labels = obj.get("metadata", {}).get("labels", {})
        for term in filter(None, sel.split(",")):
            key, _, value = term.partition("=")
            if (value and labels.get(key) != value) or (not value and key not in labels):
                return False
    for sel in query.get("fieldSelector", []):
        for term in filter(None, sel.split(",")):
            key, _, value = term.partition("=")
            node = obj
            for part in key.split("."):
                node = node.get(part, {}) if isinstance(node, dict) else {}
            if node != value:
                return False
    return True


class FakeKube:
    """One fake API server for one simulated cluster."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, tls_sans: list[str] | None = None,
                 workdir: Path | None = None):
        self.store = Store()
        self.host = host
        self.fail: Callable[[str, str], int | None] | None = None  # (method, path) -> status to fail with
        self.on_evict: Callable[[dict], None] | None = None
        handler = type("Handler", (_Handler,), {"kube": self})
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.ca_pem: bytes | None = None
        if tls_sans is not None:
            assert workdir is not None, "TLS needs a directory for the key and certificates"
            self.ca_pem = self._enable_tls(tls_sans, workdir)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True, name=f"fake-kube-{self.port}")

    @property
    def url(self) -> str:
        scheme = "https" if self.ca_pem else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def start(self) -> FakeKube:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def kubeconfig(self, cluster: str = "sim") -> dict:
        import base64

        entry: dict = {"server": self.url}
        if self.ca_pem:
            entry["certificate-authority-data"] = base64.b64encode(self.ca_pem).decode()
        return {
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": cluster, "cluster": entry}],
            "users": [{"name": f"{cluster}-admin", "user": {"token": "sim"}}],
            "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": f"{cluster}-admin"}}],
            "current-context": cluster,
        }

    def _enable_tls(self, sans: list[str], workdir: Path) -> bytes:
        ca_pem, cert_pem, key_pem = make_certificates(sans)
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "server.crt").write_bytes(cert_pem + ca_pem)
        (workdir / "server.key").write_bytes(key_pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(workdir / "server.crt", workdir / "server.key")
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        return ca_pem


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


def make_certificates(sans: list[str]) -> tuple[bytes, bytes, bytes]:
    """A throwaway CA and a server certificate for `sans` (IPs or DNS names), PEM encoded."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sim-kubernetes-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(subject_alt_names(sans)), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    return ca.public_bytes(pem), cert.public_bytes(pem), key_pem


class _Handler(BaseHTTPRequestHandler):
    kube: FakeKube
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet: tests read the store, not the access log
        pass

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _status(self, code: int, reason: str, message: str) -> None:
        self._send(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
                          "message": message, "code": code})

    def _read_body(self) -> bytes:
        # Read every request's body, used or not: leftover bytes would corrupt the next request on a kept-alive
        # connection.
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _body(self) -> dict:
        raw = self.raw_body or b"{}"
        if "yaml" in (self.headers.get("Content-Type") or ""):
            import yaml

            return yaml.safe_load(raw) or {}
        return json.loads(raw or b"{}")

    def _handle(self, method: str) -> None:
        self.raw_body = self._read_body()
        url = urlparse(self.path)
        store = self.kube.store
        store.requests.append((method, url.path))
        if self.kube.fail and (code := self.kube.fail(method, url.path)):
            return self._status(code, "InternalError", "injected failure")
        if url.path == "/version":
            return self._send(200, {"major": "1", "minor": "35", "gitVersion": "v1.35.6"})
        m = PATH.match(url.path)
        if not m or (m["prefix"], m["plural"]) not in RESOURCES:
            return self._status(404, "NotFound", f"the server could not find the requested resource {url.path}")
        prefix, plural, ns, name, sub = m["prefix"], m["plural"], m["ns"] or "", m["name"], m["sub"]
        kind, namespaced = RESOURCES[(prefix, plural)]
        if method == "GET" and not name:
            items = [o for o in store.list(prefix, plural, ns if m["ns"] else None)
                     if _selected(o, parse_qs(url.query))]
            return self._send(200, {"kind": f"{kind}List", "apiVersion": prefix.split("/", 1)[1],
                                    "metadata": {"resourceVersion": str(store.version)}, "items": items})
        if method == "POST" and sub == "eviction":
            pod = store.get(prefix, plural, name, ns)
            if pod is None:
                return self._status(404, "NotFound", f'pods "{name}" not found')
            if self.kube.on_evict:
                self.kube.on_evict(pod)
            store.delete(prefix, plural, name, ns)
            return self._send(201, {"kind": "Status", "status": "Success"})
        if method == "POST":
            obj = self._body()
            if store.get(prefix, plural, obj["metadata"]["name"], ns):
                return self._status(409, "AlreadyExists", f'{plural} "{obj["metadata"]["name"]}" already exists')
            return self._send(201, store.put(prefix, plural, obj, ns))
        current = store.get(prefix, plural, name, ns)
        if method == "PATCH":
            ctype = self.headers.get("Content-Type") or ""
            if current is None and "apply-patch" not in ctype:
                return self._status(404, "NotFound", f'{plural} "{name}" not found')
            patch = self._body()
            if isinstance(patch, list):  # a JSON patch: labctl sends none; refuse loudly rather than guess
                return self._status(415, "UnsupportedMediaType", "json-patch is not simulated")
            merged = merge_patch(copy.deepcopy(current or {"metadata": {"name": name}}), patch)
            return self._send(200, store.put(prefix, plural, merged, ns))
        if current is None:
            return self._status(404, "NotFound", f'{plural} "{name}" not found')
        if method == "GET":
            return self._send(200, current)
        if method == "PUT":
            return self._send(200, store.put(prefix, plural, self._body(), ns))
        if method == "DELETE":
            store.delete(prefix, plural, name, ns)
            return self._send(200, {"kind": "Status", "status": "Success"})
        return self._status(405, "MethodNotAllowed", method)

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_PATCH(self):
        self._handle("PATCH")

    def do_PUT(self):
        self._handle("PUT")

    def do_DELETE(self):
        self._handle("DELETE")
