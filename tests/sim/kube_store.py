"""The fake API server's store, its "etcd" (`Store`), and what lives next to it.

- `Store`: objects by (prefix, plural, namespace, name), thread-safe, counting every request. Its raw writes keep
  the bookkeeping a reader expects (uid, creationTimestamp, resourceVersion, generation, apiVersion/kind) and nothing
  else: no validation, no defaults (that is the API: tests/sim/kube_requests.py). It serves the kinds of every CRD
  it holds, which it Established at once (`establish`).
- `selected`: the label and field selectors a list or a deletecollection is filtered by.
- `namespace_object`, `timestamp`: a Namespace as the server makes it; now, as the server writes a time.
"""

from __future__ import annotations

import copy
import datetime
import re
import threading
import uuid

from tests.sim.kube_resources import BUILTIN, BUILTIN_BY_PATH, CRD_PREFIX, CRDS, KNOWN_CRDS, NO_GENERATION, ApiResource

SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


def timestamp() -> str:
    """Now, as the API server writes a time (RFC 3339, UTC, whole seconds)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Store:
    """Objects by (prefix, plural, namespace, name), thread-safe; counts every request for assertions.

    The raw writes here (`put`, `delete`) are etcd, not the API: no validation, no defaults, no namespace check —
    tests and the simulated controllers write through them. They keep the bookkeeping a reader expects (uid,
    creationTimestamp, resourceVersion, apiVersion/kind), establish a CRD when one is stored, and serve its kinds.
    A custom resource served at several versions is kept once, under its CRD's storage version."""

    def __init__(self, service_cidr: str = "10.96.0.0/12", node_ports: tuple[int, int] = (30000, 32767)):
        self.objects: dict[tuple[str, str, str, str], dict] = {}
        self.lock = threading.RLock()
        self.requests: list[tuple[str, str]] = []
        self.version = 1
        self.service_cidr = service_cidr
        self.node_ports = node_ports
        self._custom: dict[tuple[str, str], ApiResource] | None = None  # rebuilt after a CRD changes
        self._storage: dict[tuple[str, str], str] = {}  # (group, plural) → the storage version's prefix

    # -- what is served ------------------------------------------------------------------------------------------
    def _served(self) -> dict[tuple[str, str], ApiResource]:
        with self.lock:
            if self._custom is None:
                custom, storage = {}, {}
                for (p, pl, _, _), crd in sorted(self.objects.items()):
                    if (p, pl) != (CRD_PREFIX, CRDS):
                        continue
                    spec = crd.get("spec") or {}
                    names, group = spec.get("names") or {}, spec.get("group", "")
                    for v in spec.get("versions") or []:
                        res = ApiResource(group, v["name"], names["plural"], names["kind"],
                                          spec.get("scope") == "Namespaced", tuple(names.get("shortNames") or ()),
                                          tuple(s for s in ("scale", "status") if s in (v.get("subresources") or {})),
                                          tuple(names.get("categories") or ()), names.get("singular", ""), True)
                        if v.get("storage"):
                            storage[(group, names["plural"])] = res.prefix
                        if v.get("served", True):
                            custom[(res.prefix, res.plural)] = res
                self._rekey(storage)
                self._custom, self._storage = custom, storage
            return self._custom

    def _rekey(self, storage: dict[tuple[str, str], str]) -> None:
        """A CRD whose storage version changed: its objects move under the new one (a storage migration)."""
        for (group, plural), prefix in storage.items():
            old = self._storage.get((group, plural))
            if old and old != prefix:
                for key in [k for k in self.objects if k[0] == old and k[1] == plural]:
                    self.objects[(prefix, plural, key[2], key[3])] = self.objects.pop(key)

    def resources(self) -> list[ApiResource]:
        return [*BUILTIN, *self._served().values()]

    def resource(self, prefix: str, plural: str) -> ApiResource | None:
        return BUILTIN_BY_PATH.get((prefix, plural)) or self._served().get((prefix, plural))

    def resource_for(self, api_version: str, kind: str) -> ApiResource | None:
        return next((r for r in self.resources() if r.api_version == api_version and r.kind == kind), None)

    def _key_prefix(self, prefix: str, plural: str) -> str:
        res = self.resource(prefix, plural)
        if res is not None and res.custom:
            return self._storage.get((res.group, plural), prefix)
        return prefix

    # -- objects ----------------------------------------------------------------------------------------------
    def put(self, prefix: str, plural: str, obj: dict, namespace: str = "") -> dict:
        with self.lock:
            res = self.resource(prefix, plural)
            if res is None and (prefix, plural) in KNOWN_CRDS:
                self.put(CRD_PREFIX, CRDS, copy.deepcopy(KNOWN_CRDS[(prefix, plural)]))
                res = self.resource(prefix, plural)
            if res is None:
                raise KeyError(f"{prefix}/{plural} is not served (no such built-in, no CRD for it)")
            meta = obj.setdefault("metadata", {})
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", timestamp())
            if res.namespaced:
                meta["namespace"] = namespace or meta.get("namespace") or "default"
            if (res.group, res.plural) not in NO_GENERATION:
                meta.setdefault("generation", 1)
            self.version += 1
            meta["resourceVersion"] = str(self.version)
            obj.setdefault("apiVersion", res.api_version)
            obj.setdefault("kind", res.kind)
            if (prefix, plural) == (CRD_PREFIX, CRDS):
                establish(obj)
                self._custom = None
            self.objects[(self._key_prefix(prefix, plural), plural, meta.get("namespace", ""), meta["name"])] = obj
            return obj

    def get(self, prefix: str, plural: str, name: str, namespace: str = "") -> dict | None:
        with self.lock:
            return self.objects.get((self._key_prefix(prefix, plural), plural, namespace, name))

    def list(self, prefix: str, plural: str, namespace: str | None = None) -> list[dict]:
        with self.lock:
            prefix = self._key_prefix(prefix, plural)
            return [o for (p, pl, ns, _), o in sorted(self.objects.items())
                    if p == prefix and pl == plural and (namespace is None or ns == namespace)]

    def delete(self, prefix: str, plural: str, name: str, namespace: str = "") -> dict | None:
        with self.lock:
            gone = self.objects.pop((self._key_prefix(prefix, plural), plural, namespace, name), None)
            if gone is not None:
                self.version += 1
            if gone is not None and (prefix, plural) == (CRD_PREFIX, CRDS):
                # the CRD's custom resources go with it (the real server deletes them before the CRD)
                spec = gone.get("spec") or {}
                plural_ = (spec.get("names") or {}).get("plural")
                prefixes = {f"apis/{spec.get('group')}/{v['name']}" for v in spec.get("versions") or []}
                for key in [k for k in self.objects if k[1] == plural_ and k[0] in prefixes]:
                    del self.objects[key]
                self._custom = None
            if gone is not None and (prefix, plural) == ("api/v1", "namespaces"):
                for key in [k for k in self.objects if k[2] == name and (r := self.resource(k[0], k[1]))
                            and r.namespaced]:
                    del self.objects[key]
            return gone

    def ensure_namespaces(self, names=SYSTEM_NAMESPACES) -> None:
        """The namespaces kube-apiserver creates at its first start."""
        with self.lock:
            for name in names:
                if self.get("api/v1", "namespaces", name) is None:
                    self.put("api/v1", "namespaces", namespace_object(name))


def namespace_object(name: str, labels: dict | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {**(labels or {}), "kubernetes.io/metadata.name": name}},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}


def establish(crd: dict) -> None:
    """What the apiextensions server does at once for a valid CRD: names accepted, Established."""
    spec = crd.get("spec") or {}
    names = dict(spec.get("names") or {})
    if names.get("kind"):
        names.setdefault("singular", names["kind"].lower())
        names.setdefault("listKind", f"{names['kind']}List")
    status = crd.get("status") or {}
    crd["status"] = status
    since = {c.get("type"): c.get("lastTransitionTime") for c in status.get("conditions") or []
             if c.get("status") == "True"}
    status["acceptedNames"] = names
    status["conditions"] = [
        {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found",
         "lastTransitionTime": since.get("NamesAccepted") or timestamp()},
        {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
         "message": "the initial names have been accepted",
         "lastTransitionTime": since.get("Established") or timestamp()},
    ]
    stored = [v["name"] for v in spec.get("versions") or [] if v.get("storage")]
    status["storedVersions"] = sorted(set(status.get("storedVersions") or []) | set(stored))


def _labels_match(labels: dict, selector: str) -> bool:
    """A label selector, equality- and set-based: `a=b`, `a==b`, `a!=b`, `a`, `!a`, `a in (x,y)`, `a notin (x)`.
    Raises ValueError when it does not parse."""
    terms, depth, current = [], 0, ""
    for ch in selector:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += ch
    terms.append(current)
    for term in filter(None, (t.strip() for t in terms)):
        if m := re.fullmatch(r"(\S+)\s+(in|notin)\s+\(([^)]*)\)", term):
            values = {v.strip() for v in m[3].split(",") if v.strip()}
            inside = m[1] in labels and labels[m[1]] in values
            if inside != (m[2] == "in"):
                return False
        elif m := re.fullmatch(r"([^\s!=]+)\s*(==|=|!=)\s*([^\s!=]*)", term):
            if (labels.get(m[1]) == m[3]) != (m[2] != "!="):
                return False
        elif m := re.fullmatch(r"(!?)([^\s!=()]+)", term):
            if (m[2] in labels) == bool(m[1]):
                return False
        else:
            raise ValueError(f"unable to parse requirement: {term!r}")
    return True


def selected(obj: dict, query: dict[str, list[str]]) -> bool:
    """Whether `obj` passes a list's labelSelector and fieldSelector. Raises ValueError when one does not parse."""
    labels = obj.get("metadata", {}).get("labels") or {}
    for sel in query.get("labelSelector", []):
        if not _labels_match(labels, sel):
            return False
    for sel in query.get("fieldSelector", []):
        for term in filter(None, sel.split(",")):
            m = re.fullmatch(r"([^!=]+)(==|=|!=)(.*)", term)
            if not m:
                raise ValueError(f"invalid field selector {term!r}")
            node = obj
            for part in m[1].split("."):
                node = node.get(part, {}) if isinstance(node, dict) else {}
            if (node == m[3]) == (m[2] == "!="):
                return False
    return True
