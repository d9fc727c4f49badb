"""The write formats of the fake API server and server-side apply's bookkeeping.

- `merge_patch` (RFC 7386; strategic merge patches are approximated by it), `json_patch` (RFC 6902).
- managedFields as sets of field paths: `owned_part` (what a write sets), `leaf_paths` (lists and empty maps are
  atomic leaves), `fields_v1` / `paths_of` (to and from the FieldsV1 form), `overlaps`, `value_at`.

tests/sim/kube_requests.py applies them to the stored objects.
"""

from __future__ import annotations

import copy


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


def json_patch(doc, ops: list) -> dict:
    """RFC 6902 (add, remove, replace, move, copy, test) on a copy of `doc`. Raises ValueError when an operation
    does not apply."""
    doc = copy.deepcopy(doc)

    def pointer(text: str) -> list[str]:
        if text == "":
            return []
        if not text.startswith("/"):
            raise ValueError(f"invalid JSON pointer {text!r}")
        return [p.replace("~1", "/").replace("~0", "~") for p in text[1:].split("/")]

    def parent(path: list[str]):
        node = doc
        for part in path[:-1]:
            node = node[int(part)] if isinstance(node, list) else node[part]
        return node, path[-1]

    def get(path: list[str]):
        node = doc
        for part in path:
            node = node[int(part)] if isinstance(node, list) else node[part]
        return node

    def add(path, value):
        node, key = parent(path)
        if isinstance(node, list):
            node.insert(len(node) if key == "-" else int(key), value)
        else:
            node[key] = value

    def remove(path):
        node, key = parent(path)
        if isinstance(node, list):
            return node.pop(int(key))
        return node.pop(key)

    for op in ops:
        try:
            kind, path = op["op"], pointer(op["path"])
            if kind == "add":
                add(path, copy.deepcopy(op["value"]))
            elif kind == "remove":
                remove(path)
            elif kind == "replace":
                remove(path)
                add(path, copy.deepcopy(op["value"]))
            elif kind == "move":
                add(path, remove(pointer(op["from"])))
            elif kind == "copy":
                add(path, copy.deepcopy(get(pointer(op["from"]))))
            elif kind == "test":
                if get(path) != op["value"]:
                    raise ValueError(f"testing value {op['path']} failed")
            else:
                raise ValueError(f"unexpected kind of operation {kind!r}")
        except (KeyError, IndexError, TypeError) as exc:
            raise ValueError(f"jsonpatch {op.get('op')} operation does not apply: doc is missing path: "
                             f"{op.get('path')}: {exc}") from None
    return doc


_IDENTITY = {"name", "namespace", "uid", "resourceVersion", "creationTimestamp", "generation", "managedFields",
             "selfLink", "deletionTimestamp", "generateName"}


def owned_part(obj: dict, status_only: bool, has_status: bool) -> dict:
    """The fields a write sets, for ownership: never the identity; status for a status write, else all but it."""
    if status_only:
        return {"status": obj.get("status")} if "status" in obj else {}
    out = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind") and not (has_status and k == "status")}
    if isinstance(out.get("metadata"), dict):
        out["metadata"] = {k: v for k, v in out["metadata"].items() if k not in _IDENTITY}
        if not out["metadata"]:
            del out["metadata"]
    return out


def leaf_paths(node, prefix: tuple = ()) -> set[tuple]:
    """Field paths down to values; lists (and empty maps) are atomic leaves."""
    if isinstance(node, dict) and node:
        out: set[tuple] = set()
        for key, value in node.items():
            out |= leaf_paths(value, (*prefix, key))
        return out
    return {prefix} if prefix else set()


def fields_v1(paths: set[tuple]) -> dict:
    out: dict = {}
    for path in sorted(paths):
        node = out
        for key in path:
            node = node.setdefault(f"f:{key}", {})
    return out


def paths_of(fields: dict, prefix: tuple = ()) -> set[tuple]:
    out: set[tuple] = set()
    for key, value in (fields or {}).items():
        if not key.startswith("f:"):
            continue
        path = (*prefix, key[2:])
        out |= paths_of(value, path) if value else {path}
    return out


def overlaps(a: tuple, b: tuple) -> bool:
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def value_at(obj, path: tuple):
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj
