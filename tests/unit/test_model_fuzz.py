"""clusters.json validation under hostile and broken input (property-based, hypothesis).

Whatever the text, `load` either returns a Lab or raises ConfigError whose message is bounded — never another
exception (an `internal error` at the CLI). The run is seeded (derandomize) and sized to ≥ 2000 cases.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from labctl import host, model, validation
from labctl.errors import ConfigError

# One small valid lab: every mutation below starts from it.
BASE = {
    "base_image": "ghcr.io/cirruslabs/ubuntu:latest",
    "ssh_user": "admin",
    "ssh_password": "admin",
    "provider": {"type": "tart", "tart": {"network": "shared", "ip_wait_seconds": 120}},
    "versions": {"kubernetes": "1.35.6", "containerd": "1.7.28", "cilium": "1.19.6", "helm": "3.20.2"},
    "clusters": [
        {"name": "dev", "pod_cidr": "10.20.0.0/16", "service_cidr": "10.97.0.0/16",
         "stacks": ["rbac", {"name": "demo", "chart": "redis", "repo": "https://charts.example.com",
                             "version": "1.2.3", "values": {"a": {"b": [1, 2]}}}],
         "cilium": {"hubble": True, "cluster_id": 1},
         "nodes": [
             {"name": "dev-master", "role": "master", "cpu": 2, "memory": 4096, "disk": 20,
              "labels": {"tier": "control"}},
             {"name": "dev-worker1", "role": "worker", "cpu": 2, "memory": 8192, "disk": 20,
              "taints": [{"key": "gpu", "value": "yes", "effect": "NoSchedule"}]},
         ]},
    ],
}

# Values the fuzzing found (or that break things of the same kind): control characters, a trailing newline,
# other scripts' digits, `~user` of no user, numbers beyond any tool's argument type, huge strings.
HOSTILE_STRINGS = ["", " ", "a\x00b", "dev\n", "1.35.6\n", "1.35.\u0666", "\u0661.35.6", "~nosuchuser-fz/key",
                   "~", "../../etc/passwd", "a" * 70, "A" * 5000, "10.0.0.0/8\n", "::1/128", "1.36.0", "1.99.0",
                   "1.29.1", "2.0.0", "-a-", "x/y/z", "ns.example.com/" + "k" * 64, "\u202e", "\ud7ff", "NaN"]
HOSTILE_INTS = [0, -1, 1, 2, 20, 65535, 65536, 10**30, -(10**30), 2**63, 2**64, 31235, 17592186044416]
KEYS = ["name", "role", "cpu", "memory", "disk", "labels", "taints", "key", "value", "effect", "stacks", "nodes",
        "clusters", "versions", "kubernetes", "provider", "type", "tart", "qemu", "ssh_key", "ssh_user",
        "base_image", "pod_cidr", "service_cidr", "cilium", "cluster_id", "chart", "repo", "version", "manifests",
        "requires", "values", "ip_wait_seconds", "kernel", "initrd", "append", "leases", "bridge", "x\n", ""]

scalars = st.one_of(
    st.none(), st.booleans(), st.sampled_from(HOSTILE_INTS), st.integers(), st.floats(allow_nan=True),
    st.sampled_from(HOSTILE_STRINGS), st.text(max_size=20),
    st.text(alphabet=st.sampled_from("aZ09-._/~\n\x00 \u0660\u0966:"), max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)),
    max_leaves=12,
)


def _paths(value, loc=()):
    """Every location in a JSON tree (the root too), as key/index tuples."""
    yield loc
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*loc, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*loc, i))


def _set(tree, loc, value):
    if not loc:
        return value
    parent = tree
    for part in loc[:-1]:
        parent = parent[part]
    parent[loc[-1]] = value
    return tree


@st.composite
def documents(draw) -> str:
    """A clusters.json text: BASE with a few subtrees replaced, keys added or duplicated, and some text damage."""
    tree = json.loads(json.dumps(BASE))
    for _ in range(draw(st.integers(1, 4))):
        loc = draw(st.sampled_from(list(_paths(tree))))
        if draw(st.booleans()) and loc and isinstance(_get(tree, loc[:-1]), dict):
            _get(tree, loc[:-1])[draw(st.sampled_from(KEYS))] = draw(values)  # a new (or replaced) key
        else:
            tree = _set(tree, loc, draw(values))
    text = json.dumps(tree, ensure_ascii=draw(st.booleans()))
    damage = draw(st.sampled_from(["none", "none", "duplicate", "deep", "cut", "byte", "many"]))
    if damage == "duplicate":  # a key named twice in one object (json would keep the last silently)
        at = text.find('"name"')
        text = text[:at] + '"name": "x", ' + text[at:] if at > 0 else text
    elif damage == "deep":
        depth = draw(st.sampled_from([99, 101, 1000, 5000]))
        text = text.replace('"admin"', "[" * depth + "]" * depth, 1)
    elif damage == "cut":
        text = text[: draw(st.integers(0, len(text)))]
    elif damage == "byte":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(["\x00", "\n", "{", "]", '"', "\\", "\udcff", "1e999"])) + text[at:]
    elif damage == "many":  # thousands of copies of a cluster: every name and range clashes
        tree = json.loads(json.dumps(BASE))
        tree["clusters"] = tree["clusters"] * draw(st.integers(2, 600))
        text = json.dumps(tree)
    return text


def _leaves(value, where=""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(v, f"{where}[{i}]")
    else:
        yield where, value


def _get(tree, loc):
    for part in loc:
        tree = tree[part]
    return tree


WORK = Path(tempfile.mkdtemp(prefix="labctl-fuzz-"))


@pytest.mark.slow
@settings(max_examples=2000, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(documents())
def test_validation_never_fails_with_anything_but_a_config_error(text):
    path = WORK / "clusters.json"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        lab = model.load(path)
    except ConfigError as exc:
        assert exc.problems, "a ConfigError names at least one problem"
        # bounded output: at most MAX_SHOWN lines of at most MAX_LINE characters, plus the header and a count
        assert len(exc.message) <= (ConfigError.MAX_SHOWN + 2) * (ConfigError.MAX_LINE + 1) + len(str(path)) + 100
        return
    # nothing slips through: no control character in any field (Helm values aside), ASCII-digit versions, and
    # numbers within what Tart's arguments take
    for where, value in _leaves(lab.model_dump(mode="json", exclude={"clusters": {"__all__": {"stacks"}}})):
        if isinstance(value, str):
            assert not any(ord(c) < 32 or ord(c) == 127 for c in value), where
        elif isinstance(value, int) and not isinstance(value, bool):
            assert -1 < value <= model.TART_MEMORY_MAX_MIB, where
    assert all(model.VERSION.match(v) and v.isascii() for v in lab.versions.model_dump().values())
    # what `validate` does with a valid lab must not fail either
    validation.support_problems(lab)
    validation.warnings(lab)
    host.budget(lab, host.Host("Darwin", "arm64", cpus=8, memory_mib=16384))
    for _, node in lab.nodes:
        model.node_hash(lab, node)
