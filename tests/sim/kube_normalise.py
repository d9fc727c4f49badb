"""What the fake API server does to an object before it stores it, because the real one does (`normalise`).

A check that compares its own object with the live one would never converge otherwise:
- resource quantities in their canonical form (`canonical_quantity`: `1024Mi` → `1Gi`, `0.5` → `500m`);
- defaults: the Namespace name label, workload replicas and revisionHistoryLimit, Service type, ports, clusterIP and
  nodePort allocation, a PVC's default StorageClass (`default_storage_class`), a Secret's `stringData` into `data`;
- the validation errors a real server gives (422): invalid quantities, a selector not matching the template,
  immutable fields, NodePorts taken or out of range, CRD and APIService names, CertificateSigningRequests.
"""

from __future__ import annotations

import base64
import ipaddress
import random
import re
from fractions import Fraction

from tests.sim.kube_resources import ApiError, ApiResource, invalid
from tests.sim.kube_store import Store, establish

# ---- quantities: the API server stores them in canonical form ------------------------------------------------------

_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?\d+)?$")
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_DECIMAL_SUFFIX = {v: k for k, v in _DECIMAL.items()}
_BINARY_SUFFIX = {v: k for k, v in _BINARY.items()}


def canonical_quantity(value) -> str:
    """A resource.Quantity as the API server writes it back (apimachinery's CanonicalizeBytes): `1024Mi` → `1Gi`,
    `1.5` → `1500m`, `1000` → `1k`, `0.5Gi` → `512Mi`, a JSON number → its string. Raises ValueError for what the
    server refuses (e.g. `512MB`)."""
    text = str(value) if not isinstance(value, float) else repr(value)
    if isinstance(value, bool):
        raise ValueError(text)
    m = _QUANTITY.match(text.strip())
    if not m:
        raise ValueError(text)
    number, suffix = Fraction(m[1]), m[2] or ""
    if suffix in _BINARY:
        amount, fmt = number * 1024 ** _BINARY[suffix], "binary"
    elif suffix[:1] in ("e", "E"):
        amount, fmt = number * Fraction(10) ** int(suffix[1:]), "exponent"
    else:
        amount, fmt = number * Fraction(10) ** _DECIMAL[suffix], "decimal"
    if amount == 0:
        return "0"
    if fmt == "binary" and (-1024 < amount < 1024 or amount.denominator != 1):
        fmt = "decimal"  # apimachinery: avoids rounding (and confusion) below 1Ki or for fractions
    if fmt == "binary":
        mantissa, exp = int(amount), 0
        while mantissa % 1024 == 0 and exp < 6:
            mantissa, exp = mantissa // 1024, exp + 1
        return f"{mantissa}{_BINARY_SUFFIX.get(exp, '')}"
    exp = 0
    while amount.denominator != 1:
        amount, exp = amount * 10, exp - 1
    if exp < -9:  # nano is the finest precision; the server rounds up
        amount, exp = Fraction(-(-amount.numerator // 10 ** (-9 - exp))), -9
    mantissa = int(amount)
    while mantissa % 10 == 0:
        mantissa, exp = mantissa // 10, exp + 1
    mantissa *= 10 ** (exp % 3)
    exp -= exp % 3
    if fmt == "exponent":
        return f"{mantissa}e{exp}" if exp else str(mantissa)
    return f"{mantissa}{_DECIMAL_SUFFIX[exp]}" if exp in _DECIMAL_SUFFIX else f"{mantissa}e{exp}"


def _canonical_map(node: dict | None, field: str, errors: list) -> None:
    if not isinstance(node, dict):
        return
    for key, value in list(node.items()):
        try:
            node[key] = canonical_quantity(value)
        except ValueError:
            errors.append((f"{field}[{key}]", f'Invalid value: "{value}": quantities must match the regular '
                                              "expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"))


def _pod_spec_quantities(spec: dict | None, field: str, errors: list) -> None:
    if not isinstance(spec, dict):
        return
    for key in ("initContainers", "containers", "ephemeralContainers"):
        for i, container in enumerate(spec.get(key) or []):
            resources = container.get("resources") if isinstance(container, dict) else None
            for part in ("requests", "limits"):
                _canonical_map((resources or {}).get(part), f"{field}.{key}[{i}].resources.{part}", errors)
    for i, volume in enumerate(spec.get("volumes") or []):
        empty = volume.get("emptyDir") if isinstance(volume, dict) else None
        if isinstance(empty, dict) and "sizeLimit" in empty:
            holder = {"sizeLimit": empty["sizeLimit"]}
            _canonical_map(holder, f"{field}.volumes[{i}].emptyDir", errors)
            empty["sizeLimit"] = holder["sizeLimit"]
    _canonical_map(spec.get("overhead"), f"{field}.overhead", errors)


def canonical_quantities(group: str, plural: str, obj: dict) -> list[tuple[str, str]]:
    """Canonicalise every resource quantity of a built-in object in place; returns the invalid ones."""
    errors: list[tuple[str, str]] = []
    spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else None
    if spec is None:
        return errors
    if (group, plural) == ("", "pods"):
        _pod_spec_quantities(spec, "spec", errors)
    elif group in ("apps", "batch") and plural != "controllerrevisions":
        template = spec.get("jobTemplate", {}).get("spec", {}).get("template") if plural == "cronjobs" \
            else spec.get("template")
        if isinstance(template, dict):
            _pod_spec_quantities(template.get("spec"), "spec.template.spec", errors)
        for i, claim in enumerate(spec.get("volumeClaimTemplates") or []):
            for part in ("requests", "limits"):
                _canonical_map(((claim.get("spec") or {}).get("resources") or {}).get(part),
                               f"spec.volumeClaimTemplates[{i}].spec.resources.{part}", errors)
    elif (group, plural) == ("", "persistentvolumeclaims"):
        for part in ("requests", "limits"):
            _canonical_map((spec.get("resources") or {}).get(part), f"spec.resources.{part}", errors)
    elif (group, plural) == ("", "persistentvolumes"):
        _canonical_map(spec.get("capacity"), "spec.capacity", errors)
    elif (group, plural) == ("", "resourcequotas"):
        _canonical_map(spec.get("hard"), "spec.hard", errors)
    elif (group, plural) == ("", "limitranges"):
        for i, limit in enumerate(spec.get("limits") or []):
            for part in ("max", "min", "default", "defaultRequest", "maxLimitRequestRatio"):
                _canonical_map(limit.get(part), f"spec.limits[{i}].{part}", errors)
    return errors


# ---- defaults and validation, per kind ----------------------------------------------------------------------------

def normalise(store: Store, res: ApiResource, obj: dict, old: dict | None) -> None:
    """Defaults, canonical forms and validation of the kinds where a real server's differ from what was sent.
    Raises ApiError 422 like the real server."""
    name = obj["metadata"]["name"]
    errors = [] if res.custom else canonical_quantities(res.group, res.plural, obj)
    key = (res.group, res.plural)
    if key == ("", "namespaces"):
        obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = name
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        obj["status"] = (old or {}).get("status") or {"phase": "Active"}
    elif key in (("", "secrets"), ("", "configmaps")):
        if key == ("", "secrets"):
            string = obj.pop("stringData", None) or {}
            if string:
                obj["data"] = {**(obj.get("data") or {}),
                               **{k: base64.b64encode(str(v).encode()).decode() for k, v in string.items()}}
            obj.setdefault("type", "Opaque")
            if old is not None and obj["type"] != old.get("type"):
                errors.append(("type", "Invalid value: field is immutable"))
        if old is not None and old.get("immutable"):
            for field in ("data", "binaryData"):
                if (obj.get(field) or {}) != (old.get(field) or {}):
                    errors.append((field, "Forbidden: field is immutable when `immutable` is set"))
    elif key in (("apps", "deployments"), ("apps", "statefulsets"), ("apps", "daemonsets"),
                 ("apps", "replicasets")):
        spec = obj.setdefault("spec", {})
        if res.plural != "daemonsets":
            spec.setdefault("replicas", 1)
        spec.setdefault("revisionHistoryLimit", 10)
        selector = (spec.get("selector") or {}).get("matchLabels")
        labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        if not spec.get("selector"):
            errors.append(("spec.selector", "Required value"))
        elif selector and any(labels.get(k) != v for k, v in selector.items()):
            errors.append(("spec.template.metadata.labels", f"Invalid value: {labels}: `selector` does not match "
                                                            "template `labels`"))
        if old is not None and (old.get("spec") or {}).get("selector") != spec.get("selector"):
            errors.append(("spec.selector", "Invalid value: field is immutable"))
    elif key == ("", "services"):
        errors += _service(store, obj, old)
    elif key == ("", "pods") and old is None:
        obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
    elif key == ("", "persistentvolumeclaims") and old is None:
        spec = obj.setdefault("spec", {})
        if "storageClassName" not in spec:  # the DefaultStorageClass admission plugin, at create only
            default = default_storage_class(store)
            if default:
                spec["storageClassName"] = default
        obj.setdefault("status", {}).setdefault("phase", "Pending")
    elif key == ("apiextensions.k8s.io", "customresourcedefinitions"):
        spec = obj.get("spec") or {}
        plural, group = (spec.get("names") or {}).get("plural"), spec.get("group")
        if name != f"{plural}.{group}":
            errors.append(("metadata.name", f'Invalid value: "{name}": must be spec.names.plural+"."+spec.group'))
        versions = spec.get("versions") or []
        if sum(bool(v.get("storage")) for v in versions) != 1:
            errors.append(("spec.versions", "Invalid value: must have exactly one version marked as storage "
                                            "version"))
        if spec.get("scope") not in ("Namespaced", "Cluster"):
            errors.append(("spec.scope", f'Unsupported value: "{spec.get("scope")}": supported values: '
                                         '"Cluster", "Namespaced"'))
        if old is not None and (old.get("spec") or {}).get("scope") != spec.get("scope"):
            errors.append(("spec.scope", "Invalid value: field is immutable"))
        if not errors:
            establish(obj)
    elif key == ("apiregistration.k8s.io", "apiservices"):
        spec = obj.get("spec") or {}
        if name != f"{spec.get('version')}.{spec.get('group')}":
            errors.append(("metadata.name", f'Invalid value: "{name}": must be `spec.version+"."+spec.group`'))
    elif key == ("certificates.k8s.io", "certificatesigningrequests"):
        errors += _csr(obj)
    if errors:
        raise invalid(res, name, errors)


def default_storage_class(store: Store) -> str | None:
    for sc in store.list("apis/storage.k8s.io/v1", "storageclasses"):
        annotations = sc["metadata"].get("annotations") or {}
        if annotations.get("storageclass.kubernetes.io/is-default-class") == "true":
            return sc["metadata"]["name"]
    return None


def _service(store: Store, obj: dict, old: dict | None) -> list[tuple[str, str]]:
    """Service defaults, the clusterIP and nodePort allocators, and their errors."""
    errors = []
    spec = obj.setdefault("spec", {})
    old_spec = (old or {}).get("spec") or {}
    kind = spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    if kind != "ExternalName":
        spec.setdefault("internalTrafficPolicy", "Cluster")
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        if old_spec.get("clusterIP") and spec.get("clusterIP", old_spec["clusterIP"]) != old_spec["clusterIP"]:
            errors.append(("spec.clusterIPs[0]", "Invalid value: field is immutable"))
        spec["clusterIP"] = spec.get("clusterIP") or old_spec.get("clusterIP") or _allocate_ip(store)
        spec["clusterIPs"] = [spec["clusterIP"]]
    if kind in ("NodePort", "LoadBalancer"):
        spec.setdefault("externalTrafficPolicy", "Cluster")
    taken = {p.get("nodePort"): s["metadata"] for s in store.list("api/v1", "services")
             if s["metadata"]["uid"] != (old or {}).get("metadata", {}).get("uid")
             for p in (s.get("spec") or {}).get("ports") or [] if p.get("nodePort")}
    low, high = store.node_ports
    old_ports = {(p.get("name"), p.get("port")): p.get("nodePort") for p in old_spec.get("ports") or []}
    mine: set[int] = set()
    for i, port in enumerate(spec.get("ports") or []):
        port.setdefault("protocol", "TCP")
        if kind != "ExternalName":
            port.setdefault("targetPort", port.get("port"))
        if kind in ("NodePort", "LoadBalancer"):
            wanted = port.get("nodePort") or old_ports.get((port.get("name"), port.get("port")))
            if wanted is None:
                free = [n for n in range(low, high + 1) if n not in taken and n not in mine]
                wanted = random.choice(free)
            elif not low <= wanted <= high:
                errors.append((f"spec.ports[{i}].nodePort", f"Invalid value: {wanted}: provided port is not in the "
                                                            f"valid range. The range of valid ports is {low}-{high}"))
            elif wanted in taken or wanted in mine:
                errors.append((f"spec.ports[{i}].nodePort", f"Invalid value: {wanted}: provided port is already "
                                                            "allocated"))
            port["nodePort"] = wanted
            mine.add(wanted)
        elif port.get("nodePort"):
            errors.append((f"spec.ports[{i}].nodePort", f"Forbidden: may not be used when `type` is '{kind}'"))
    return errors


def _allocate_ip(store: Store) -> str:
    network = ipaddress.ip_network(store.service_cidr)
    used = {(s.get("spec") or {}).get("clusterIP") for s in store.list("api/v1", "services")}
    first = int(network.network_address)
    for _ in range(1000):
        candidate = str(ipaddress.ip_address(first + random.randrange(11, min(network.num_addresses - 1, 60000))))
        if candidate not in used:
            return candidate
    raise ApiError(500, "InternalError", "the service IP range is full")


def _csr(obj: dict) -> list[tuple[str, str]]:
    from cryptography import x509

    errors = []
    spec = obj.get("spec") or {}
    try:
        x509.load_pem_x509_csr(base64.b64decode(spec.get("request") or ""))
    except ValueError:
        errors.append(("spec.request", "Invalid value: []byte{...}: PEM block type must be CERTIFICATE REQUEST"))
    if not spec.get("signerName"):
        errors.append(("spec.signerName", "Required value"))
    if not spec.get("usages"):
        errors.append(("spec.usages", "Required value"))
    types = [c.get("type") for c in (obj.get("status") or {}).get("conditions") or []]
    if "Approved" in types and "Denied" in types:
        errors.append(("status.conditions", 'Invalid value: "Denied": Approved and Denied conditions are mutually '
                                            "exclusive"))
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") in ("Approved", "Denied") and c.get("status") != "True":
            errors.append(("status.conditions", f'Unsupported value: "{c.get("status")}": supported values: "True"'))
    return errors
