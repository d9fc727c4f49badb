"""The REST semantics of the fake API server on its store: one `ApiRequest` per resource request.

Reads (lists filtered by selectors, Tables for `kubectl get`), writes (POST with `generateName`, PUT, merge /
strategic-as-merge / JSON patch, server-side apply with field ownership and its conflicts), DELETE, and the
subresources `status`, `approval`, `scale` and `eviction`. Every write goes through `ApiRequest.write`: identity and
status kept, `normalise` (tests/sim/kube_normalise.py), generation, managedFields; a no-op write stores nothing.
`write_object` is that write path without HTTP, for the simulated lab's own actors (Helm, kubectl, controllers).
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from tests.sim import kube_tables
from tests.sim.kube_certs import ADMIN, User
from tests.sim.kube_normalise import normalise
from tests.sim.kube_patch import (
    fields_v1,
    json_patch,
    leaf_paths,
    merge_patch,
    overlaps,
    owned_part,
    paths_of,
    value_at,
)
from tests.sim.kube_resources import (
    KEEP_STATUS_ON_CREATE,
    NO_GENERATION,
    NOT_FOUND,
    ApiError,
    ApiResource,
    invalid,
    not_found,
)
from tests.sim.kube_store import Store, selected, timestamp

if TYPE_CHECKING:
    from tests.sim.fake_kube import FakeKube

GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # apiserver's generateName suffix alphabet


class ApiRequest:
    """One resource request: the REST semantics of the real API server, on the store."""

    def __init__(self, store: Store, method: str, res: ApiResource, ns: str | None, name: str | None,
                 sub: str | None, query: dict[str, list[str]], headers, raw: bytes, kube: FakeKube | None = None,
                 user: User = ADMIN):
        self.kube, self.store, self.method, self.user = kube, store, method, user
        self.res, self.ns, self.name, self.sub = res, ns, name, sub
        self.query, self.headers, self.raw = query, headers, raw

    def q(self, key: str, default: str = "") -> str:
        return (self.query.get(key) or [default])[0]

    @property
    def ctype(self) -> str:
        return (self.headers.get("Content-Type") or "application/json").split(";")[0].strip().lower()

    @property
    def manager(self) -> str:
        """fieldManager, or what the real server derives from the User-Agent (up to its first '/')."""
        agent = self.headers.get("User-Agent") or "unknown"
        return self.q("fieldManager") or agent.split("/", 1)[0]

    def body(self):
        text = self.raw or b"{}"
        try:
            if "yaml" in self.ctype:
                import yaml

                body = yaml.safe_load(text) or {}
            else:
                body = json.loads(text)
        except ValueError as exc:
            raise ApiError(400, "BadRequest", f"the body of the request was in an unknown format: {exc}") from None
        if not isinstance(body, dict | list):  # e.g. a JSON document that is a string: JSON encoded twice
            raise ApiError(400, "BadRequest", "couldn't get version/kind; json parse error: json: cannot unmarshal "
                                              f"{type(body).__name__.replace('str', 'string')} into Go value of type "
                                              'struct { APIVersion string "json:\\"apiVersion,omitempty\\""; Kind '
                                              'string "json:\\"kind,omitempty\\"" }')
        return body

    def run(self):
        with self.store.lock:
            if self.name is None:
                return self.collection()
            if self.sub == "eviction":
                return self.evict()
            if self.sub == "scale":
                return self.scale()
            if self.method == "GET":
                current = self.current(required=True)
                return 200, self.table([current]) if self.wants_table() else self.view(current)
            if self.method == "PUT":
                return self.put()
            if self.method == "PATCH":
                return self.patch()
            if self.method == "DELETE" and self.sub is None:
                return self.delete()
            raise ApiError(405, "MethodNotAllowed", f"the server does not allow this method on the requested "
                                                    f"resource ({self.method})")

    # -- reading --------------------------------------------------------------------------------------------------
    def current(self, required: bool = False) -> dict | None:
        obj = self.store.get(self.res.prefix, self.res.plural, self.name, self.ns or "")
        if obj is None and required:
            raise not_found(self.res, self.name)
        return obj

    def view(self, obj: dict, in_list: bool = False) -> dict:
        out = copy.deepcopy(obj)
        if self.res.custom:
            out["apiVersion"] = self.res.api_version  # served at the version asked for
        elif in_list:  # a real list of built-in objects carries apiVersion/kind only once, on the list
            out.pop("apiVersion", None)
            out.pop("kind", None)
        return out

    def collection(self):
        if self.method == "GET":
            if self.q("watch") in ("1", "true"):
                raise ApiError(405, "MethodNotAllowed", "watch is not simulated: poll instead")
            try:
                items = [self.view(o, in_list=True) for o in self.store.list(self.res.prefix, self.res.plural, self.ns)
                         if selected(o, self.query)]
            except ValueError as exc:
                raise ApiError(400, "BadRequest", str(exc)) from None
            if self.wants_table():
                return 200, self.table(items)
            if kube_tables.wants_metadata(self.headers):
                return 200, kube_tables.metadata_list(items, self.store.version)
            return 200, {"kind": f"{self.res.kind}List", "apiVersion": self.res.api_version,
                         "metadata": {"resourceVersion": str(self.store.version)}, "items": items}
        if self.method == "POST":
            if self.res.namespaced and self.ns is None:
                raise ApiError(404, "NotFound", NOT_FOUND, {})
            return self.create()
        if self.method == "DELETE":
            for obj in self.store.list(self.res.prefix, self.res.plural, self.ns):
                if selected(obj, self.query):
                    self.store.delete(self.res.prefix, self.res.plural, obj["metadata"]["name"],
                                      obj["metadata"].get("namespace", ""))
            return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
        raise ApiError(405, "MethodNotAllowed", f"the server does not allow this method on the requested resource "
                                                f"({self.method})")

    def wants_table(self) -> bool:
        return kube_tables.wants_table(self.res, self.headers)

    def table(self, objects: list[dict]) -> dict:
        include = self.q("includeObject", "PartialObjectMetadata")
        return kube_tables.table(self.res, objects, include, self.store.version)

    # -- writing --------------------------------------------------------------------------------------------------
    def check_namespace(self, obj: dict, exists: bool = True) -> None:
        meta = obj.setdefault("metadata", {})
        if self.res.namespaced:
            if meta.get("namespace") and meta["namespace"] != self.ns:
                raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the namespace "
                                                  "sent on the request")
            if exists and self.store.get("api/v1", "namespaces", self.ns) is None:
                raise ApiError(404, "NotFound", f'namespaces "{self.ns}" not found',
                               {"name": self.ns, "kind": "namespaces"})

    def check_version(self, body: dict, current: dict | None) -> None:
        wanted = (body.get("metadata") or {}).get("resourceVersion") if isinstance(body, dict) else None
        if wanted and current is not None and current["metadata"].get("resourceVersion") != wanted:
            raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {self.res.qualified} "{self.name}": '
                                            "the object has been modified; please apply your changes to the latest "
                                            "version and try again",
                           {"name": self.name, "group": self.res.group, "kind": self.res.plural})

    def create(self):
        obj = self.body()
        if not isinstance(obj, dict):
            raise ApiError(400, "BadRequest", "the body of the request was in an unknown format")
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + "".join(random.choice(GENERATE_ALPHABET) for _ in range(5))
        if not meta.get("name"):
            raise invalid(self.res, "", [("metadata.name", "Required value: name or generateName is required")])
        self.name = meta["name"]
        self.check_namespace(obj)
        if self.current() is not None:
            raise ApiError(409, "AlreadyExists", f'{self.res.qualified} "{self.name}" already exists',
                           {"name": self.name, "group": self.res.group, "kind": self.res.plural})
        if (self.res.group, self.res.plural) == ("certificates.k8s.io", "certificatesigningrequests"):
            # the requester's identity, set by the server from whoever authenticated (FakeKube: the client certificate)
            obj.setdefault("spec", {}).update(username=self.user[0], groups=list(self.user[1]))
        return 201, self.view(self.write(obj, None, "Update"))

    def put(self):
        body = self.body()
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body of the request was in an unknown format")
        current = self.current(required=True)
        self.check_name(body)
        self.check_namespace(body, exists=False)
        self.check_version(body, current)
        return 200, self.view(self.write(self.for_subresource(body, current), current, "Update"))

    def patch(self):
        current = self.current()
        ctype = self.ctype
        patch = self.body()
        if ctype == "application/apply-patch+yaml":
            return self.apply(patch, current)
        if current is None:
            raise not_found(self.res, self.name)
        if ctype == "application/json-patch+json":
            if not isinstance(patch, list):
                raise ApiError(400, "BadRequest", "json: cannot unmarshal object into Go value of type "
                                                  "jsonpatch.Patch")
            try:
                merged = json_patch(current, patch)
            except ValueError as exc:
                raise ApiError(422, "Invalid", str(exc)) from None
        elif ctype in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            if ctype.startswith("application/strategic") and self.res.custom:
                raise ApiError(415, "UnsupportedMediaType", "the body of the request was in an unknown format - "
                                                            "accepted media types include: application/json-patch+json,"
                                                            " application/merge-patch+json, "
                                                            "application/apply-patch+yaml")
            if not isinstance(patch, dict):
                raise ApiError(400, "BadRequest", "the body of the request was in an unknown format")
            self.check_version(patch, current)
            merged = merge_patch(copy.deepcopy(current), patch)  # strategic merge: approximated by a merge patch
        else:
            raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - "
                                                        f"unsupported media type {ctype}")
        self.check_name(merged)
        return 200, self.view(self.write(self.for_subresource(merged, current), current, "Update"))

    def apply(self, body, current):
        if not self.q("fieldManager"):
            raise ApiError(400, "BadRequest", 'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required '
                                              "value: is required for apply patch")
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body of the request was in an unknown format")
        for field, want in (("apiVersion", self.res.api_version), ("kind", self.res.kind)):
            if not body.get(field):
                raise ApiError(400, "BadRequest", f"{field} must be set")
            if body[field] != want:
                raise ApiError(400, "BadRequest", f"the {field} in the data ({body[field]}) does not match the "
                                                  f"expected {field} ({want})")
        self.check_name(body)
        self.check_version(body, current)
        if current is None and self.sub is not None:
            raise not_found(self.res, self.name)
        self.check_namespace(body, exists=current is None)
        force = self.q("force") in ("true", "1")
        owned = owned_part(body, self.sub is not None, "status" in self.res.subresources)
        applied = leaf_paths(owned)
        if current is not None and not force:
            conflicts = []
            for entry in current["metadata"].get("managedFields") or []:
                if entry.get("manager") == self.manager and entry.get("operation") == "Apply":
                    continue
                if entry.get("subresource", "") != (self.sub or ""):
                    continue
                for path in paths_of(entry.get("fieldsV1")):
                    if any(overlaps(path, mine) and value_at(current, path) != value_at(body, path)
                           for mine in applied):
                        conflicts.append(f'conflict with "{entry["manager"]}" using {entry.get("apiVersion")}: '
                                         f'.{".".join(path)}')
            if conflicts:
                raise ApiError(409, "Conflict", f"Apply failed with {len(conflicts)} conflict"
                                                f"{'s' if len(conflicts) > 1 else ''}: " + "\n".join(conflicts),
                               {"name": self.name, "group": self.res.group, "kind": self.res.plural})
        merged = merge_patch(copy.deepcopy(current or {}), body)
        status = (201 if current is None else 200)
        return status, self.view(self.write(self.for_subresource(merged, current), current, "Apply", applied))

    def check_name(self, body: dict) -> None:
        named = (body.get("metadata") or {}).get("name")
        if named and named != self.name:
            raise ApiError(400, "BadRequest", f"the name of the object ({named}) does not match the name on the URL "
                                              f"({self.name})")
        body.setdefault("metadata", {})["name"] = self.name

    def for_subresource(self, new: dict, current: dict | None) -> dict:
        """A status write takes only the status; an approval only the conditions; the main resource keeps the
        status it had (when there is a status subresource)."""
        if self.sub is None or current is None:
            return new
        out = copy.deepcopy(current)
        if self.sub == "status":
            out["status"] = new.get("status")
        elif self.sub == "approval":
            status = out.setdefault("status", {})
            status["conditions"] = (new.get("status") or {}).get("conditions") or []
        return out

    def delete(self):
        current = self.current(required=True)
        self.store.delete(self.res.prefix, self.res.plural, self.name, self.ns or "")
        return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                     "details": {"name": self.name, "group": self.res.group, "kind": self.res.plural,
                                 "uid": current["metadata"].get("uid")}}

    def evict(self):
        if self.method != "POST":
            raise ApiError(405, "MethodNotAllowed", "evictions are created with POST")
        pod = self.current(required=True)
        if self.kube and self.kube.on_evict:
            self.kube.on_evict(pod)
        self.store.delete(self.res.prefix, self.res.plural, self.name, self.ns or "")
        return 201, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}

    def scale(self):
        current = self.current(required=True)
        if self.method in ("PUT", "PATCH"):
            body = self.body()
            if self.method == "PATCH":
                if self.ctype not in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
                    raise ApiError(415, "UnsupportedMediaType", f"unsupported media type {self.ctype} for scale")
                body = merge_patch({"spec": {"replicas": current.get("spec", {}).get("replicas", 1)}}, body)
            replicas = (body.get("spec") or {}).get("replicas")
            if not isinstance(replicas, int) or replicas < 0:
                raise invalid(self.res, self.name, [("spec.replicas", "Invalid value: must be a non-negative "
                                                                      "integer")])
            new = copy.deepcopy(current)
            new.setdefault("spec", {})["replicas"] = replicas
            current = self.write(new, current, "Update")
        meta = current["metadata"]
        selector = ((current.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        return 200, {"kind": "Scale", "apiVersion": "autoscaling/v1",
                     "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion",
                                                       "creationTimestamp") if k in meta},
                     "spec": {"replicas": (current.get("spec") or {}).get("replicas", 1)},
                     "status": {"replicas": (current.get("status") or {}).get("replicas", 0),
                                "selector": ",".join(f"{k}={v}" for k, v in selector.items())}}

    def write(self, new: dict, old: dict | None, operation: str, applied: set[tuple] | None = None) -> dict:
        """Everything the API server does to a valid write before it is stored."""
        res = self.res
        new = copy.deepcopy(new)
        meta = new.setdefault("metadata", {})
        meta["name"] = self.name
        if res.namespaced:
            meta["namespace"] = self.ns
        else:
            meta.pop("namespace", None)
        new["apiVersion"] = res.api_version
        new["kind"] = res.kind
        has_status = "status" in res.subresources
        if old is not None:
            for key in ("uid", "creationTimestamp"):
                if key in old["metadata"]:
                    meta[key] = old["metadata"][key]
            if self.sub is None and has_status:
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
                else:
                    new.pop("status", None)
        elif has_status and (res.group, res.plural) not in KEEP_STATUS_ON_CREATE:
            new["status"] = {}
        meta.pop("deletionTimestamp", None)
        normalise(self.store, res, new, old)
        if (res.group, res.plural) not in NO_GENERATION:
            generation = 1 if old is None else old["metadata"].get("generation", 1)
            if old is not None and _spec_part(new) != _spec_part(old):
                generation += 1
            meta["generation"] = generation
        else:
            meta.pop("generation", None)
        meta["managedFields"] = self.managed_fields(new, old, operation, applied)
        meta.pop("resourceVersion", None)
        if old is not None and _unchanged(new, old):
            return old  # a no-op write: the real server stores nothing, the resourceVersion stays
        return self.store.put(res.prefix, res.plural, new, self.ns or "")

    def managed_fields(self, new: dict, old: dict | None, operation: str, applied: set[tuple] | None) -> list[dict]:
        has_status = "status" in self.res.subresources
        status_only = self.sub is not None
        sub = self.sub or ""
        if applied is None:  # an update owns what it changed
            before = leaf_paths(owned_part(old or {}, status_only, has_status))
            after = owned_part(new, status_only, has_status)
            changed = {p for p in leaf_paths(after) if p not in before or value_at(old, p) != value_at(new, p)}
        else:
            changed = applied
        entries = []
        mine = None
        for entry in copy.deepcopy((old or {}).get("metadata", {}).get("managedFields") or []):
            same = (entry.get("manager") == self.manager and entry.get("operation") == operation
                    and entry.get("subresource", "") == sub)
            paths = paths_of(entry.get("fieldsV1"))
            if same:
                mine = entry
                continue
            if entry.get("subresource", "") == sub:
                paths = {p for p in paths if not any(overlaps(p, c) for c in changed)}
                paths = {p for p in paths if value_at(new, p) is not None}
            if paths:
                entry["fieldsV1"] = fields_v1(paths)
                entries.append(entry)
        if operation == "Update" and mine is not None:
            changed |= {p for p in paths_of(mine.get("fieldsV1")) if value_at(new, p) is not None}
        if changed:
            entry = {"manager": self.manager, "operation": operation, "apiVersion": self.res.api_version,
                     "time": timestamp(), "fieldsType": "FieldsV1", "fieldsV1": fields_v1(changed)}
            if sub:
                entry["subresource"] = sub
            entries.append(entry)
        return entries


def _unchanged(new: dict, old: dict) -> bool:
    def bare(obj):
        obj = copy.deepcopy(obj)
        meta = obj.get("metadata", {})
        meta.pop("resourceVersion", None)
        for entry in meta.get("managedFields") or []:
            entry.pop("time", None)
        return obj

    return bare(new) == bare(old)


def write_object(store: Store, prefix: str, plural: str, obj: dict, manager: str, namespace: str = "",
                 replace: Callable[[dict, dict], dict] | None = None, operation: str = "Update") -> dict:
    """Create or update `obj` as a client's write through the API would (defaults, validation, generation,
    managedFields under `manager`, namespace must exist), without HTTP: for the simulated lab's own actors (Helm,
    kubectl, controllers). `replace(current, obj)` makes the updated object (default: `obj` as a PUT);
    `operation` "Apply" records it as a server-side apply of `obj`. Raises ApiError."""
    res = store.resource(prefix, plural)
    if res is None:
        raise not_found(None, obj["metadata"]["name"])
    ns = (namespace or obj["metadata"].get("namespace") or "default") if res.namespaced else None
    req = ApiRequest(store, "PUT", res, ns, obj["metadata"]["name"], None, {"fieldManager": [manager]}, {}, b"")
    applied = leaf_paths(owned_part(obj, False, "status" in res.subresources)) if operation == "Apply" else None
    with store.lock:
        current = req.current()
        if current is None:
            obj = copy.deepcopy(obj)
            req.check_namespace(obj)
            return req.write(obj, None, operation, applied)
        return req.write(replace(current, obj) if replace else obj, current, operation, applied)


def _spec_part(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}
