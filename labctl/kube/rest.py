"""One HTTPS connection pool to one cluster's API server, built from a kubeconfig: the Kube facade's transport.

Why not the `kubernetes` package: its first use in a fresh process costs 0.9-1.1 s on the 2-core test machine
(importing the package and its configuration loader ~0.3 s, then the generated `CoreV1Api`/`AppsV1Api` modules and
their pydantic validators ~0.6 s; measured with `python -X importtime` and a timed first request against
tests/sim/fake_kube.py), and that landed on the critical path of `status` and of `install`'s init. labctl asks the
API by path and reads plain JSON anyway, so the generated classes bought nothing. urllib3 (the library the
kubernetes client itself sends requests with) costs ~0.05 s to import and configure; the first request then costs
what the server takes to answer.

What this reads of a kubeconfig (the current context, else the first): the cluster's `server`,
`certificate-authority-data` / `certificate-authority`, `insecure-skip-tls-verify` and `tls-server-name` (the name
sent as SNI and verified in the certificate instead of the server's host: an HA cluster's host kubeconfig names
labctl's forwarder on 127.0.0.1, labctl/apiproxy.py), and the user's client
certificate (`client-certificate-data` + `client-key-data`, or the file forms) and/or `token` / `tokenFile`:
what kubeadm's admin.conf (and so labctl's own kubeconfigs) and the simulated lab's hold. Exec and auth-provider
plugins are refused with a KubeError naming the file (labctl never writes them).

Retries follow urllib3's (and so the kubernetes client's) default — up to 3 on connection and read errors — unless
the caller asks otherwise; `status` asks for 0 so that a hung API server costs one timeout per question.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import LabctlError

USER_AGENT = "labctl"
# Connections per API server. The pool blocks at this size: more threads than connections wait for one to come free
# instead of each opening (and, urllib3's default, then discarding) a connection of its own, a TLS handshake with a
# client certificate on both sides every time. status once made 265 requests on 89 connections that way.
POOL_SIZE = 8
# What a list asks for when only names and labels are wanted (the metadata-only list kubectl and controllers use;
# Kubernetes API concepts, "Receiving resources as Tables"/PartialObjectMetadataList). Plain JSON after the comma
# is the fallback a server that cannot serve it answers with.
METADATA_ONLY = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"


class ConfigError(LabctlError):
    """The kubeconfig cannot be used to reach its API server (raised as a KubeError by the facade)."""


@dataclass
class Response:
    status: int
    reason: str
    data: bytes

    def json(self) -> Any:
        return json.loads(self.data or b"{}")

    def message(self) -> str:
        """The API's own message for an error (a Status object's `message`), else the body's text."""
        text = self.data.decode(errors="replace")
        try:
            body = json.loads(text)
        except ValueError:
            return text
        return body.get("message", text) if isinstance(body, dict) else text


def _named(items: list[dict] | None, name: str | None) -> dict:
    for item in items or []:
        if item.get("name") == name:
            return item
    return (items or [{}])[0]


def _pem(entry: dict, data_key: str, file_key: str, base: Path) -> bytes | None:
    if entry.get(data_key):
        return base64.b64decode(entry[data_key])
    if entry.get(file_key):
        return (base / Path(entry[file_key]).expanduser()).read_bytes()
    return None


class RestClient:
    """Requests to the API server one kubeconfig names. Thread-safe (urllib3's pool is); one per kubeconfig version.

    Raises ConfigError from the constructor when the kubeconfig lacks a server or uses an auth plugin."""

    def __init__(self, config: dict[str, Any], source: Path, retries: int | None = None):
        import ssl

        import urllib3

        context = _named(config.get("contexts"), config.get("current-context")).get("context") or {}
        cluster = _named(config.get("clusters"), context.get("cluster")).get("cluster") or {}
        user = _named(config.get("users"), context.get("user")).get("user") or {}
        self.server = str(cluster.get("server") or "").rstrip("/")
        if not self.server.startswith(("https://", "http://")):
            raise ConfigError(f"{source} names no API server (clusters[].cluster.server)")
        if user.get("exec") or user.get("auth-provider"):
            raise ConfigError(f"{source} authenticates through a plugin (exec/auth-provider), which labctl does not run")
        base = source.parent
        self.headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        token = user.get("token") or (Path(user["tokenFile"]).read_text().strip() if user.get("tokenFile") else None)
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        pool: dict[str, Any] = {"maxsize": POOL_SIZE, "block": True,
                                "retries": urllib3.Retry.DEFAULT if retries is None else retries}
        if self.server.startswith("https://"):
            ssl_context = ssl.create_default_context()
            ca = _pem(cluster, "certificate-authority-data", "certificate-authority", base)
            if cluster.get("insecure-skip-tls-verify"):
                ssl_context.check_hostname = False
                ssl_context.verify_mode = ssl.CERT_NONE
            elif ca:
                ssl_context = ssl.create_default_context(cadata=ca.decode())
            cert = _pem(user, "client-certificate-data", "client-certificate", base)
            key = _pem(user, "client-key-data", "client-key", base)
            if cert and key:
                _load_client_cert(ssl_context, cert, key)
            pool["ssl_context"] = ssl_context
            if cluster.get("tls-server-name"):
                pool["server_hostname"] = cluster["tls-server-name"]
        self._pool = urllib3.PoolManager(**pool)

    def request(self, method: str, path: str, query: list[tuple[str, str]] | None = None, body: Any = None,
                content_type: str | None = None, timeout: float = 15.0, accept: str | None = None) -> Response:
        """One request → Response (any HTTP status). `timeout`: seconds for the whole request (connect + answer);
        `accept`: another Accept header (e.g. METADATA_ONLY).
        Connection, TLS and timeout failures raise urllib3's errors (urllib3.exceptions.HTTPError)."""
        from urllib.parse import urlencode

        import urllib3

        url = self.server + path + (f"?{urlencode(query)}" if query else "")
        headers = dict(self.headers)
        if accept:
            headers["Accept"] = accept
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()  # valid for JSON, merge-patch and apply-patch+yaml (JSON is YAML)
            headers["Content-Type"] = content_type or "application/json"
        response = self._pool.request(method, url, body=payload, headers=headers,
                                      timeout=urllib3.Timeout(total=timeout), redirect=False)
        return Response(response.status, response.reason or "", response.data)

    def close(self) -> None:
        self._pool.clear()


def _load_client_cert(context, cert: bytes, key: bytes) -> None:
    """Python's ssl loads a certificate and key only from files: they go to a private directory (0700, files 0600)
    that is removed as soon as they are loaded."""
    where = tempfile.mkdtemp(prefix="labctl-kube-")
    try:
        paths = []
        for name, data in (("client.crt", cert), ("client.key", key)):
            path = os.path.join(where, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            paths.append(path)
        context.load_cert_chain(*paths)
    finally:
        shutil.rmtree(where, ignore_errors=True)
