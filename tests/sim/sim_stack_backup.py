"""Velero's validation of its BackupStorageLocations in a simulated cluster (a CONTROLLERS entry,
tests/sim/sim_stack_controllers.py).

While the Velero server runs (its Deployment ready), it checks each location in its namespace the way the AWS
object-store plugin's HeadBucket does and records the verdict in the location's status: phase Available, or
Unavailable with a message in Velero's words ("BackupStorageLocation \"<name>\" is unavailable: …"). Available needs
all of:
- the s3Url's host `<service>.<namespace>.svc` to resolve: that Service exists, or the Helm release of that name is
  deployed there (the sim renders no chart; the MinIO chart names its S3 Service after the release,
  reference/charts/minio/workloads.txt: Service velero/minio port 9000);
- a ready workload of that name behind it (MinIO's Deployment or StatefulSet);
- credentials: the Secret and key the location names, an AWS credentials file with both keys;
- those credentials being MinIO's login (the root user and password of the Secret its release was given in
  `existingSecret`) and the bucket being one the release's `buckets` made (the chart's post-install Job).
The messages follow the AWS SDK v2 errors the plugin passes on (dial errors, 403 Forbidden, 404 NotFound, missing
credentials); their exact wording is modelled, not copied from a run.
"""

from __future__ import annotations

import base64
import configparser
from urllib.parse import urlsplit

from tests.sim.kube_resources import APPS
from tests.sim.kube_store import timestamp
from tests.sim.sim_stack_controllers import CONTROLLERS

VELERO = "apis/velero.io/v1"
BSLS = "backupstoragelocations"


def _ready(obj: dict | None) -> bool:
    return obj is not None and (obj.get("status") or {}).get("readyReplicas", 0) >= \
        (obj.get("spec") or {}).get("replicas", 1)


def _secret(store, namespace: str, name: str) -> dict[str, str] | None:
    obj = store.get("api/v1", "secrets", name, namespace)
    if obj is None:
        return None
    return {k: base64.b64decode(v).decode(errors="replace") for k, v in (obj.get("data") or {}).items()}


def _release_values(cluster, namespace: str, release: str) -> dict | None:
    from tests.sim.sim_helm import decode_release

    secrets = cluster._release_secrets(namespace, release)
    if not secrets or secrets[-1]["metadata"]["labels"].get("status") != "deployed":
        return None
    return decode_release(secrets[-1]).get("config") or {}


def verdict(cluster, bsl: dict) -> tuple[str, str]:
    """(phase, message) Velero would record for this location now."""
    store = cluster.store
    spec = bsl.get("spec") or {}
    config = spec.get("config") or {}
    bucket = (spec.get("objectStorage") or {}).get("bucket", "")
    url = config.get("s3Url", "")
    head = f"operation error S3: HeadBucket, https response error StatusCode: {{}}, RequestID: , HostID: , " \
           f"request send failed, Head \"{url.rstrip('/')}/{bucket}\": {{}}"
    name = bsl["metadata"]["name"]

    def unavailable(why: str) -> tuple[str, str]:
        return "Unavailable", f"BackupStorageLocation \"{name}\" is unavailable: rpc error: code = Unknown desc = {why}"

    host = urlsplit(url).hostname or ""
    parts = host.split(".")
    if len(parts) < 3 or parts[2] != "svc":
        return unavailable(head.format(0, f"dial tcp: lookup {host}: no such host"))
    service, namespace = parts[0], parts[1]
    values = _release_values(cluster, namespace, service)
    if store.get("api/v1", "services", service, namespace) is None and values is None:
        return unavailable(head.format(0, f"dial tcp: lookup {host} on 10.96.0.10:53: no such host"))
    workload = store.get(APPS, "deployments", service, namespace) or store.get(APPS, "statefulsets", service, namespace)
    if not _ready(workload):
        return unavailable(head.format(0, f"dial tcp {host}:9000: connect: connection refused"))
    ref = spec.get("credential") or {}
    data = _secret(store, bsl["metadata"]["namespace"], ref.get("name", "")) if ref else None
    parser = configparser.ConfigParser()
    try:
        parser.read_string((data or {}).get(ref.get("key", ""), ""))
    except configparser.Error:
        parser = configparser.ConfigParser()
    key_id = parser.get("default", "aws_access_key_id", fallback="")
    secret = parser.get("default", "aws_secret_access_key", fallback="")
    if not key_id or not secret:
        return unavailable("operation error S3: HeadBucket, get identity: get credentials: failed to refresh cached "
                           "credentials, no EC2 IMDS role found")
    login = _secret(store, namespace, (values or {}).get("existingSecret", "")) or {}
    if (key_id, secret) != (login.get("rootUser"), login.get("rootPassword")):
        return unavailable(head.format(403, "api error Forbidden: Forbidden").replace("request send failed, ", ""))
    if bucket not in {b.get("name") for b in (values or {}).get("buckets") or [] if isinstance(b, dict)}:
        return unavailable(head.format(404, "api error NotFound: Not Found").replace("request send failed, ", ""))
    return "Available", ""


def velero(cluster) -> None:
    store = cluster.store
    for bsl in store.list(VELERO, BSLS) if store.resource(VELERO, BSLS) is not None else []:
        namespace = bsl["metadata"]["namespace"]
        if not _ready(store.get(APPS, "deployments", "velero", namespace)):
            continue  # no Velero server running: nobody validates
        phase, message = verdict(cluster, bsl)
        status = bsl.get("status") or {}
        if status.get("phase") == phase and status.get("message", "") == message:
            continue
        bsl["status"] = {"phase": phase, "lastValidationTime": timestamp(), **({"message": message} if message else {})}
        store.put(VELERO, BSLS, bsl, namespace)


CONTROLLERS.append(velero)
