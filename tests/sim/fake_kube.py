"""A small fake Kubernetes API server for the simulated lab: the real kubernetes client talks to it over HTTP(S).

A generic REST server over an in-memory store (`Store`, the "etcd"), faithful where labctl could be wrong:

- Discovery: `/api`, `/api/v1`, `/apis`, `/apis/<group>`, `/apis/<group>/<version>` list the built-in resources
  (`BUILTIN`), every served version of every CustomResourceDefinition, and the groups of aggregated APIServices.
- CRDs: a CRD is Established the moment it is stored (as the real apiextensions server does within a second) and
  its resources are served from then on; a custom resource whose CRD does not exist is 404 "the server could not
  find the requested resource"; deleting a CRD deletes its custom resources and stops serving them.
- Writes: POST (409 when it exists, `generateName`), PUT, PATCH (merge, strategic as merge — refused for custom
  resources like the real server —, RFC 6902 json-patch, server-side apply), DELETE (a Status; a Namespace takes
  its objects with it, a CRD its custom resources). A namespaced object in a namespace that does not exist is 404
  `namespaces "x" not found`. A write naming a resourceVersion other than the current one is 409 Conflict.
  `metadata.generation` starts at 1 and goes up when anything but metadata and status changes. Subresources:
  `status` (the main resource ignores status, the subresource takes only status), `scale`, `approval` (CSRs: only
  the conditions), `eviction` (pods).
- Server-side apply: JSON-merge of the applied object (lists replaced), `metadata.managedFields` per manager and
  operation (lists are atomic fields), 409 on a conflict with another manager unless `force=true`. Unlike the real
  thing, a field dropped from a later apply is not removed.
- What the API server itself normalises, because a check comparing its own object with the live one would never
  converge otherwise: resource quantities in their canonical form (`1024Mi` → `1Gi`, `0.5` → `500m`, `1` → "1"),
  a Secret's `stringData` into `data`, defaults (replicas, Service type/ports/clusterIP/nodePort allocation,
  namespace name label), and validation errors a real server would give (NodePort taken or out of range, invalid
  quantities, selector not matching the template, CRD/APIService names, immutable fields).
- Aggregated APIs: an APIService with a `service` routes its group/version to a handler registered in
  `FakeKube.aggregated` while the APIService is Available; otherwise 503 like the real aggregator.
- Server-side printing: a GET that accepts `as=Table` (what `kubectl get` asks for) gets a meta.k8s.io/v1 Table
  for the kinds in `PRINTERS` (Node, StorageClass, CertificateSigningRequest, APIService: the real server's
  columns, so `kubectl get nodes -o wide` shows status, roles, addresses and runtime, `kubectl get sc` `(default)`);
  for any other kind the plain object or list, which kubectl prints as NAME and AGE.

Not simulated: controllers (the simulated lab adds its own: tests/sim/sim_cluster.py, sim_controllers.py), watch
(405 — poll instead), admission webhooks, finalizers (deletion is immediate), garbage collection by ownerReferences.

Optional TLS with a generated CA and a server certificate for given IP SANs, so the simulated lab can test what
happens when a node's address changes. Over TLS the server authenticates clients as kube-apiserver's x509
authenticator does (`--client-ca-file` = the cluster CA, as kubeadm sets it): the client certificate's CN is the
user and its O entries the groups (`identity`); a client without a certificate is `system:anonymous`, which may read
only /healthz, /livez, /readyz and /version (the system:public-info-viewer role) and gets 403 Forbidden elsewhere,
worded as the real authorizer does. One difference: a certificate from another CA is refused in the TLS handshake
(Python's ssl verifies what it requests), where the real server completes the handshake and answers 401
Unauthorized; either way the client fails. Plain HTTP stands for an authenticated admin (the old insecure port).

The pieces, each in its own module: tests/sim/kube_resources.py (the resource table, CRDs as objects, errors),
kube_store.py (the store and selectors), kube_requests.py (the REST semantics of one request, `write_object`),
kube_patch.py (merge and JSON patch, managed fields), kube_normalise.py (quantities, defaults, validation),
kube_tables.py (server-side printing), kube_certs.py (the CA and certificates). This module is the server: routing,
discovery, aggregated APIs, HTTP(S).
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from tests.sim.kube_certs import ADMIN, CertificateAuthority, User, admin_client_certificate
from tests.sim.kube_requests import ApiRequest
from tests.sim.kube_resources import APISERVICE_PREFIX, APISERVICES, NOT_FOUND, ApiError, version_priority
from tests.sim.kube_store import Store

Aggregated = Callable[[str, list[str], dict[str, list[str]]], tuple[int, dict]]
ANONYMOUS: User = ("system:anonymous", ("system:unauthenticated",))
PUBLIC_PATHS = ("/healthz", "/livez", "/readyz", "/version")  # system:public-info-viewer, bound to anonymous too


class FakeKube:
    """One fake API server for one cluster. `serve()` is the whole API, the HTTP handler only carries it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, tls_sans: list[str] | None = None,
                 workdir: Path | None = None):
        self.store = Store()
        self.store.ensure_namespaces()
        self.host = host
        self.fail: Callable[[str, str], int | None] | None = None  # (method, path) -> status to fail with
        self.on_evict: Callable[[dict], None] | None = None
        # (group, version) → handler(method, path parts after the version, query) → (status, body), served while
        # the APIService `<version>.<group>` is Available (e.g. metrics.k8s.io from the simulated metrics-server)
        self.aggregated: dict[tuple[str, str], Aggregated] = {}
        # (namespace, service) → handler(method, path after /proxy) → (status, body): the API server's service proxy
        # (/api/v1/namespaces/<ns>/services/[scheme:]<name>[:port]/proxy/<path>), e.g. sealed-secrets' /v1/cert.pem;
        # a service with no handler is 404 `services "<name>" not found`
        self.proxied: dict[tuple[str, str], Callable[[str, str], tuple[int, object]]] = {}
        handler = type("Handler", (ApiHandler,), {"kube": self})
        self.server = _Listener((host, port), handler)
        self.port = self.server.server_address[1]
        self.ca_pem: bytes | None = None
        self.client_cert: tuple[bytes, bytes] | None = None  # (cert, key) kubeconfig() authenticates with over TLS
        self.ca: CertificateAuthority | None = None  # the CA of the optional TLS (server and client certificates)
        if tls_sans is not None:
            assert workdir is not None, "TLS needs a directory for the key and certificates"
            self._enable_tls(tls_sans, workdir)
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
        entry: dict = {"server": self.url}
        user: dict = {"token": "sim"}
        if self.ca_pem:
            entry["certificate-authority-data"] = base64.b64encode(self.ca_pem).decode()
        if self.client_cert:
            user = {"client-certificate-data": base64.b64encode(self.client_cert[0]).decode(),
                    "client-key-data": base64.b64encode(self.client_cert[1]).decode()}
        return {
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": cluster, "cluster": entry}],
            "users": [{"name": f"{cluster}-admin", "user": user}],
            "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": f"{cluster}-admin"}}],
            "current-context": cluster,
        }

    def _enable_tls(self, sans: list[str], workdir: Path) -> None:
        self.ca = ca = CertificateAuthority.create("sim-kubernetes-ca")
        cert_pem, key_pem = ca.issue("kube-apiserver", sans)
        self.client_cert = admin_client_certificate(ca)
        self.serve_tls(workdir, "server", cert_pem, key_pem, ca.cert_pem)

    def serve_tls(self, workdir: Path, name: str, cert_pem: bytes, key_pem: bytes, ca_pem: bytes) -> None:
        """HTTPS from now on with this certificate (sent with its CA's); key and chain are kept in `workdir` as
        `<name>.key` and `<name>.crt`. Client certificates are asked for and verified against the same CA (kubeadm
        gives kube-apiserver `--client-ca-file=/etc/kubernetes/pki/ca.crt`, the CA that signed its own). One context
        for the server: every connection shares it."""
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / f"{name}.crt").write_bytes(cert_pem + ca_pem)
        (workdir / f"{name}.key").write_bytes(key_pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(workdir / f"{name}.crt", workdir / f"{name}.key")
        context.load_verify_locations(cadata=ca_pem.decode())
        # OPTIONAL: a client without a certificate is anonymous (see `serve`); one whose certificate this CA did not
        # sign fails the handshake.
        context.verify_mode = ssl.CERT_OPTIONAL
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.ca_pem = ca_pem

    # -- the API -----------------------------------------------------------------------------------------------
    def serve(self, method: str, path: str, query: dict[str, list[str]], headers, raw: bytes,
              user: User = ADMIN) -> tuple[int, object]:
        """One request from `user` → (HTTP status, JSON body or text)."""
        try:
            return self._serve(method, path, query, headers, raw, user)
        except ApiError as exc:
            return exc.code, exc.body()

    def _serve(self, method, path, query, headers, raw, user=ADMIN):
        parts = [p for p in path.split("/") if p]
        if user == ANONYMOUS and path.rstrip("/") not in PUBLIC_PATHS:
            raise self._forbidden(method, path, parts, user[0])
        if path in ("/healthz", "/livez", "/readyz"):
            return 200, "ok"
        if path == "/version":
            return 200, {"major": "1", "minor": "35", "gitVersion": "v1.35.6", "platform": "linux/arm64"}
        if method == "GET" and parts == ["api"]:
            return 200, {"kind": "APIVersions", "versions": ["v1"],
                         "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                                         "serverAddress": f"{self.host}:{self.port}"}]}
        if method == "GET" and parts == ["apis"]:
            return 200, {"kind": "APIGroupList", "apiVersion": "v1",
                         "groups": [_group(g, vs) for g, vs in self._groups().items()]}
        if parts[:1] == ["apis"] and len(parts) >= 3 and (answer := self._aggregated(method, parts, query)):
            return answer
        if method == "GET" and len(parts) == 2 and parts[0] == "apis":
            versions = self._groups().get(parts[1])
            if not versions:
                raise ApiError(404, "NotFound", NOT_FOUND, {})
            return 200, {"kind": "APIGroup", "apiVersion": "v1", **_group(parts[1], versions)}
        if method == "GET" and (parts == ["api", "v1"] or (len(parts) == 3 and parts[0] == "apis")):
            prefix = "/".join(parts)
            listed = [r for r in self.store.resources() if r.prefix == prefix]
            if not listed:
                raise ApiError(404, "NotFound", NOT_FOUND, {})
            return 200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": listed[0].api_version,
                         "resources": [e for r in listed for e in r.discovery()]}
        if len(parts) >= 7 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "services" \
                and parts[6] == "proxy":
            return self._service_proxy(method, parts[3], parts[5], "/" + "/".join(parts[7:]))
        route = self._route(parts)
        if route is None:
            raise ApiError(404, "NotFound", NOT_FOUND, {})
        return ApiRequest(self.store, method, *route, query, headers, raw, self, user).run()

    def _service_proxy(self, method: str, namespace: str, service: str, path: str) -> tuple[int, object]:
        """The service proxy: `service` is `[scheme:]name[:port]` (k8s.io/apimachinery net.SplitSchemeNamePort)."""
        pieces = service.split(":")
        name = pieces[1] if len(pieces) == 3 or (len(pieces) == 2 and pieces[0] in ("http", "https")) else pieces[0]
        handler = self.proxied.get((namespace, name))
        if handler is None:
            raise ApiError(404, "NotFound", f'services "{name}" not found', {"name": name, "kind": "services"})
        status, body = handler(method, path)
        if status == 503:
            raise ApiError(503, "ServiceUnavailable", str(body), {"name": name, "kind": "services"})
        if status == 404 and str(body).startswith("services "):
            raise ApiError(404, "NotFound", str(body), {"name": name, "kind": "services"})
        return status, body

    def _forbidden(self, method: str, path: str, parts: list[str], name: str) -> ApiError:
        """403 as the authorizer words it (apiserver endpoints/handlers/responsewriters forbiddenMessage)."""
        route = self._route(parts)
        if route is None:
            return ApiError(403, "Forbidden", f'forbidden: User "{name}" cannot {method.lower()} path "{path}"', {})
        res, ns, obj, sub = route
        verb = {"GET": "get" if obj else "list", "POST": "create", "PUT": "update", "PATCH": "patch",
                "DELETE": "delete" if obj else "deletecollection"}.get(method, method.lower())
        where = f'in the namespace "{ns}"' if ns else "at the cluster scope"
        what = f'{res.qualified} "{obj}"' if obj else res.qualified
        resource = f"{res.plural}/{sub}" if sub else res.plural
        return ApiError(403, "Forbidden", f'{what} is forbidden: User "{name}" cannot {verb} resource "{resource}" '
                                          f'in API group "{res.group}" {where}',
                        {"name": obj or "", "group": res.group, "kind": res.plural})

    def _groups(self) -> dict[str, list[str]]:
        """group → its versions, preferred first (built-ins, CRDs, aggregated APIServices)."""
        groups: dict[str, set[str]] = {}
        for res in self.store.resources():
            if res.group:
                groups.setdefault(res.group, set()).add(res.version)
        for svc in self.store.list(APISERVICE_PREFIX, APISERVICES):
            spec = svc.get("spec") or {}
            if spec.get("service") and spec.get("group"):
                groups.setdefault(spec["group"], set()).add(spec["version"])
        return {g: sorted(vs, key=version_priority) for g, vs in groups.items()}

    def _aggregated(self, method, parts, query):
        """A group/version an APIService with a service answers: its handler while Available, else 503."""
        svc = self.store.get(APISERVICE_PREFIX, APISERVICES, f"{parts[2]}.{parts[1]}")
        if svc is None or not (svc.get("spec") or {}).get("service"):
            return None
        available = any(c.get("type") == "Available" and c.get("status") == "True"
                        for c in (svc.get("status") or {}).get("conditions") or [])
        handler = self.aggregated.get((parts[1], parts[2]))
        if not available or handler is None:
            raise ApiError(503, "ServiceUnavailable", "the server is currently unable to handle the request",
                           {"group": parts[1], "kind": parts[3] if len(parts) > 3 else ""})
        return handler(method, parts[3:], query)

    def _route(self, parts: list[str]):
        """Path parts → (resource, namespace or None, name or None, subresource or None), None if no such route."""
        if parts[:1] == ["api"] and len(parts) >= 3 and parts[1] == "v1":
            prefix, rest = "api/v1", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 4:
            prefix, rest = "/".join(parts[:3]), parts[3:]
        else:
            return None
        ns = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            inner = self.store.resource(prefix, rest[2])
            if inner is not None and inner.namespaced:
                ns, rest = rest[1], rest[2:]
        if not 1 <= len(rest) <= 3:
            return None
        res = self.store.resource(prefix, rest[0])
        if res is None or (ns is not None and not res.namespaced):
            return None
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if name is not None and res.namespaced and ns is None:
            return None  # a namespaced object is only addressed inside its namespace
        if sub is not None and sub not in res.subresources:
            return None
        return res, ns, name, sub


def _group(name: str, versions: list[str]) -> dict:
    entries = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": entries, "preferredVersion": dict(entries[0])}


# ---- HTTP ----------------------------------------------------------------------------------------------------------

class _Listener(ThreadingHTTPServer):
    # The listen backlog the real server has: Go listens with the kernel's somaxconn (net/sock_linux.go,
    # maxListenerBacklog reads /proc/sys/net/core/somaxconn). socketserver's default of 5 drops the SYNs of a client
    # that opens a dozen connections at once, and each dropped SYN costs that request a 1 s retransmission.
    request_queue_size = socket.SOMAXCONN
    daemon_threads = True


class ApiHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 around `FakeKube.serve`: records each request in the store and applies `FakeKube.fail` first."""

    kube: FakeKube
    protocol_version = "HTTP/1.1"
    # TCP_NODELAY, as the real API server has it (Go's net package sets it on every TCP connection: net.TCPConn
    # SetNoDelay, "the default is true"). Without it the headers and the body go as two small writes and Nagle's
    # algorithm holds the body until the client's delayed ACK: ~40 ms added to every request.
    disable_nagle_algorithm = True

    def log_message(self, *args):  # quiet: tests read the store, not the access log
        pass

    def _send(self, status: int, body) -> None:
        if isinstance(body, str):
            data, ctype = body.encode(), "text/plain; charset=utf-8"
        else:
            data, ctype = json.dumps(body).encode(), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _status(self, code: int, reason: str, message: str) -> None:
        self._send(code, ApiError(code, reason, message).body())

    def _read_body(self) -> bytes:
        # Read every request's body, used or not: leftover bytes would corrupt the next request on a kept-alive
        # connection.
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self, method: str) -> None:
        raw = self._read_body()
        url = urlparse(self.path)
        self.kube.store.requests.append((method, url.path))
        if self.kube.fail and (code := self.kube.fail(method, url.path)):
            return self._status(code, "InternalError", "injected failure")
        status, body = self.kube.serve(method, url.path, parse_qs(url.query), self.headers, raw, self.identity())
        self._send(status, body)

    def identity(self) -> User:
        """Who sent the request: over TLS, the verified client certificate's CN (user) and O entries (groups),
        plus system:authenticated, as kube-apiserver's x509 authenticator maps them; anonymous without one."""
        if not isinstance(self.connection, ssl.SSLSocket):
            return ADMIN
        cert = self.connection.getpeercert()
        if not cert:
            return ANONYMOUS
        subject = [pair for rdn in cert.get("subject", ()) for pair in rdn]
        name = next((v for k, v in subject if k == "commonName"), "")
        return name, (*(v for k, v in subject if k == "organizationName"), "system:authenticated")

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
